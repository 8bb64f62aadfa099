"""Opacity segmentation network: the lung crop at 256x256 in, one opacity logit map out."""

from __future__ import annotations

import segmentation_models_pytorch as smp

from cxr_models.nets.unet import resnet_unet

INPUT_SIZE = 256
ENCODER_WIDTHS = (32, 64, 128, 256)
DECODER_CHANNELS = (64, 32, 16, 8)


def build_opacity() -> smp.Unet:
    """The shipped opacity U-Net: a ResNet18-like encoder (half width, to layer3) as in the opacity paper."""
    return resnet_unet(widths=ENCODER_WIDTHS, decoder_channels=DECODER_CHANNELS)
