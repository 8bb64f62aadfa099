"""Study classifier network: per frontal image a multi-channel crop stack, mean-pooled per study.

Input channels (128x128, the lung crop): display image, lung mask, opacity probability, and two
coordinate channels (x and y in [-1, 1] across the crop) so laterality, peripheral/central and
upper/lower position stay visible after global pooling. Output: 4 logits in STUDY_LABELS order.
"""

from __future__ import annotations

import torch
from torch import nn

from cxr_models.nets.trunk import ResidualTrunk
from cxr_models.records import STUDY_LABELS

INPUT_SIZE = 128
CHANNELS: tuple[str, ...] = ("image", "lung_mask", "opacity_probability", "x", "y")


class StudyNet(nn.Module):
    """Per-image residual trunk, features averaged over each study's images, then a linear head."""

    def __init__(self, *, num_classes: int = len(STUDY_LABELS), dropout: float = 0.3) -> None:
        super().__init__()
        self.trunk = ResidualTrunk(in_channels=len(CHANNELS), stem_channels=24, widths=(32, 64, 96, 128))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.trunk.out_features, num_classes)

    def forward(self, images: torch.Tensor, study_index: torch.Tensor, num_studies: int) -> torch.Tensor:
        """Logits (num_studies, classes) from images (N, C, H, W) and each image's study index (N,)."""
        if images.shape[0] != study_index.shape[0]:
            raise ValueError(
                f"study_index has {study_index.shape[0]} entries for {images.shape[0]} images"
            )
        features = self.trunk(images)
        sums = features.new_zeros(num_studies, features.shape[1]).index_add_(0, study_index, features)
        counts = torch.bincount(study_index, minlength=num_studies).clamp_min(1).to(features.dtype)
        return self.head(self.dropout(sums / counts[:, None]))


def build_study() -> StudyNet:
    """The shipped study classifier."""
    return StudyNet()
