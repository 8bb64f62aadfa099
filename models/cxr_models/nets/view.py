"""View classifier network: the whole image at 128x128 in, logits over VIEWS out."""

from __future__ import annotations

import torch
from torch import nn

from cxr_models.nets.trunk import ResidualTrunk
from cxr_models.records import VIEWS

INPUT_SIZE = 128


class ViewNet(nn.Module):
    """A tiny ResNet-style classifier (the research used VGG19; this one is ~0.3 M parameters)."""

    def __init__(self, *, num_classes: int = len(VIEWS), dropout: float = 0.2) -> None:
        super().__init__()
        self.trunk = ResidualTrunk(in_channels=1, stem_channels=16, widths=(24, 48, 96, 128))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.trunk.out_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.trunk(x)))


def build_view() -> ViewNet:
    """The shipped view classifier."""
    return ViewNet()
