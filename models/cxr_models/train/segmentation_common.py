"""What the lung and opacity U-Net trainers share: BCE + Dice loss, Dice scores, the task skeleton.

The Dice term is computed over the whole batch (not per image), so images with an empty target
(no opacity) contribute through BCE and the batch's false positives without a 0/0 Dice.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from cxr_models.nets.common import normalise
from cxr_models.train.augment import acquisition

if TYPE_CHECKING:
    from cxr_models.train.acquisition import AcquisitionJitter

logger = logging.getLogger(__name__)

DICE_SMOOTH = 1.0


@dataclass(frozen=True)
class SegmentationBatch:
    """Network inputs (display range) and targets, (N, 1, S, S); ``lungs`` only for opacity."""

    inputs: torch.Tensor
    targets: torch.Tensor
    lungs: torch.Tensor | None = None


def bce_dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus (1 - soft Dice over the batch)."""
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    probabilities = torch.sigmoid(logits)
    intersection = (probabilities * targets).sum()
    dice = (2.0 * intersection + DICE_SMOOTH) / (probabilities.sum() + targets.sum() + DICE_SMOOTH)
    return bce + (1.0 - dice)


def dice_scores(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-image Dice of boolean masks (N, ...); 1 where both are empty."""
    p = predicted.flatten(1).float()
    t = truth.flatten(1).float()
    intersection = (p * t).sum(1)
    total = p.sum(1) + t.sum(1)
    return torch.where(total > 0, 2.0 * intersection / total.clamp_min(1.0), torch.ones_like(total))


def percent_of_lungs(masks: torch.Tensor, lungs: torch.Tensor) -> torch.Tensor:
    """Per-image 100 * |mask & lung| / |lung| of boolean masks (N, ...); 0 for an empty lung."""
    lung = lungs.flatten(1).float()
    inside = (masks.flatten(1).float() * lung).sum(1)
    area = lung.sum(1)
    return torch.where(area > 0, 100.0 * inside / area.clamp_min(1.0), torch.zeros_like(area))


class SegmentationTask(ABC):
    """Loss and validation of a 1-logit U-Net; subclasses build (augmented) batches from their cache.

    Dataset indices ``[0, n_train)`` are the training images, the rest the validation images.
    Validation reports the mean Dice and, when batches carry lungs, the opacity % MAE.
    """

    metric: str
    higher_is_better: bool
    threshold = 0.5
    acquisition: "AcquisitionJitter | None" = None  # real-acquisition jitter of the training inputs

    def __init__(self, *, n_train: int, n_total: int, val_batch_size: int = 16) -> None:
        self.n_train = n_train
        self.n_total = n_total
        self.val_batch_size = val_batch_size

    @property
    def train_size(self) -> int:
        return self.n_train

    @abstractmethod
    def make_batch(
        self, indices: np.ndarray, *, generator: torch.Generator | None, device: torch.device
    ) -> SegmentationBatch:
        """The batch of dataset ``indices``, augmented when ``generator`` is given."""

    def loss(
        self, model: torch.nn.Module, indices: np.ndarray, *, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        batch = self.make_batch(indices, generator=generator, device=device)
        inputs = acquisition(batch.inputs, jitter=self.acquisition, generator=generator)
        return bce_dice_loss(model(normalise(inputs)).float(), batch.targets)

    def validate(self, model: torch.nn.Module, *, device: torch.device) -> dict[str, float]:
        val = np.arange(self.n_train, self.n_total)
        if val.size == 0:
            return {}
        losses, dices, errors = [], [], []
        with torch.inference_mode():
            for start in range(0, val.size, self.val_batch_size):
                batch = self.make_batch(val[start : start + self.val_batch_size], generator=None, device=device)
                logits = model(normalise(batch.inputs)).float()
                losses.append(float(bce_dice_loss(logits, batch.targets)) * len(logits))
                predicted = torch.sigmoid(logits) >= self.threshold
                truth = batch.targets >= 0.5
                dices.append(dice_scores(predicted, truth).cpu())
                if batch.lungs is not None:
                    lungs = batch.lungs >= 0.5
                    difference = percent_of_lungs(predicted, lungs) - percent_of_lungs(truth, lungs)
                    errors.append(difference.abs().cpu())
        metrics = {"loss": sum(losses) / val.size, "dice": float(torch.cat(dices).mean())}
        if errors:
            metrics["percent_mae"] = float(torch.cat(errors).mean())
        return metrics
