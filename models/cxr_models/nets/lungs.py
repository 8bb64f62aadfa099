"""Lung segmentation network: whole image at 256x256 in, one lung logit map out."""

from __future__ import annotations

import segmentation_models_pytorch as smp

from cxr_models.nets.unet import resnet_unet

INPUT_SIZE = 256
ENCODER_WIDTHS = (32, 64, 128, 256)
DECODER_CHANNELS = (64, 32, 16, 8)


def build_lungs() -> smp.Unet:
    """The shipped lung U-Net (half-width ResNet18 encoder to layer3, small decoder)."""
    return resnet_unet(widths=ENCODER_WIDTHS, decoder_channels=DECODER_CHANNELS)
