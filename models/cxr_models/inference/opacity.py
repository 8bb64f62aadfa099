"""Opacity stage: an opacity probability map per frontal image, from its lung crop.

The crop (from :func:`cxr_models.inference.crop.decide_crop`) is resized to 256x256; the
probability map is pasted back into the original grid (0 outside the crop). ``mask`` is the
probability thresholded at 0.5; ``percent`` = 100 * |mask & lung| / |lung| (0 for an empty lung).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cxr_models.inference.crop import crop_and_resize, paste_crop
from cxr_models.inference.inputs import BatchedStage, check_image, check_lengths, network_batch
from cxr_models.nets.common import model_from_state_dict
from cxr_models.nets.opacity import INPUT_SIZE, build_opacity
from cxr_models.records import Box

logger = logging.getLogger(__name__)

THRESHOLD = 0.5


@dataclass(frozen=True)
class OpacityPrediction:
    """``probability``: float32, original size, 0 outside the crop; ``mask``: bool; ``percent`` of the lungs."""

    probability: np.ndarray
    mask: np.ndarray
    percent: float


def opacity_input(image: np.ndarray, crop: Box) -> np.ndarray:
    """The network input: the crop of the display image resized to 256x256 (display range)."""
    return crop_and_resize(check_image(image, name="image"), crop, size=INPUT_SIZE)


def opacity_percent(mask: np.ndarray, lung_mask: np.ndarray) -> float:
    """100 * |mask & lung| / |lung|; 0 when the lung mask is empty."""
    lung = lung_mask.astype(bool, copy=False)
    lung_pixels = int(lung.sum())
    if lung_pixels == 0:
        return 0.0
    return 100.0 * float(np.count_nonzero(mask & lung)) / lung_pixels


class OpacitySegmenter(BatchedStage):
    """Segments lung opacities inside each image's lung crop."""

    default_batch_size = 16

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], *, device: torch.device = torch.device("cpu")
    ) -> OpacitySegmenter:
        return cls(model_from_state_dict(build_opacity, state, device=device), device=device)

    def crop_probabilities(self, images: Sequence[np.ndarray], *, crops: Sequence[Box]) -> np.ndarray:
        """Opacity probabilities at the network resolution, (N, 256, 256) float32, crop coordinates."""
        check_lengths(images=images, crops=crops)
        inputs = [opacity_input(image, crop) for image, crop in zip(images, crops, strict=True)]
        out = np.zeros((len(inputs), INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(inputs), self.batch_size):
                batch = network_batch(inputs[start : start + self.batch_size], device=self.device)
                out[start : start + len(batch)] = torch.sigmoid(self.model(batch).float())[:, 0].cpu().numpy()
        return out

    def predict(
        self, images: Sequence[np.ndarray], *, crops: Sequence[Box], lung_masks: Sequence[np.ndarray]
    ) -> list[OpacityPrediction]:
        check_lengths(images=images, crops=crops, lung_masks=lung_masks)
        for index, (image, lung_mask) in enumerate(zip(images, lung_masks, strict=True)):
            if np.shape(lung_mask) != np.shape(image):
                raise ValueError(
                    f"lung_masks[{index}] has shape {np.shape(lung_mask)}, image has shape {np.shape(image)}"
                )
        crop_probabilities = self.crop_probabilities(images, crops=crops)
        predictions = []
        for image, crop, lung_mask, crop_probability in zip(images, crops, lung_masks, crop_probabilities, strict=True):
            probability = paste_crop(crop_probability, crop, shape=np.shape(image))
            mask = probability >= THRESHOLD
            predictions.append(
                OpacityPrediction(probability=probability, mask=mask, percent=opacity_percent(mask, lung_mask))
            )
        return predictions
