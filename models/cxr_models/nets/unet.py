"""The small segmentation-models-pytorch U-Net used by the lung and opacity models.

The encoder is timm's ResNet18 layout (BasicBlocks, 2-2-2 stages used) at reduced width through
smp's ``tu-`` encoders, truncated after the third stage (``encoder_depth=4``): about twice as
fast as the full-width ResNet18 on the CPU, which is what lets both U-Nets train in minutes.
"""

from __future__ import annotations

import logging

import segmentation_models_pytorch as smp

logger = logging.getLogger(__name__)

ENCODER = "tu-resnet18"


def resnet_unet(*, widths: tuple[int, int, int, int], decoder_channels: tuple[int, ...]) -> smp.Unet:
    """A 1-channel-in, 1-logit-out ``smp.Unet`` with a randomly initialised ResNet18-like encoder.

    ``widths`` are the channels of the four ResNet stages (the stem has ``widths[0]``); one
    decoder stage per entry of ``decoder_channels`` (the encoder depth).
    """
    if len(widths) != 4 or min(widths) < 1:
        raise ValueError(f"widths must be 4 positive stage widths, got {widths}")
    return smp.Unet(
        encoder_name=ENCODER,
        encoder_weights=None,
        encoder_depth=len(decoder_channels),
        decoder_channels=decoder_channels,
        in_channels=1,
        classes=1,
        channels=widths,
        stem_width=widths[0],
    )
