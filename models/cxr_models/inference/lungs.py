"""Lung stage: a lung mask per frontal image in original pixels.

The whole image is resized to 256x256; the logit map's probabilities are resized back to the
original grid (bilinear), thresholded at 0.5, reduced to the two largest connected components
(the two lungs) and hole-filled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from cxr_models.imaging import resize
from cxr_models.inference.inputs import BatchedStage, check_image, network_batch
from cxr_models.nets.common import model_from_state_dict
from cxr_models.nets.lungs import INPUT_SIZE, build_lungs

logger = logging.getLogger(__name__)

THRESHOLD = 0.5
# Components smaller than this fraction of the image are noise, not a lung.
MIN_COMPONENT_FRACTION = 0.002


@dataclass(frozen=True)
class LungPrediction:
    """``mask``: bool, original size; ``probability_max``: the highest lung probability in the image."""

    mask: np.ndarray
    probability_max: float


def lung_input(image: np.ndarray) -> np.ndarray:
    """The network input of one display image: the whole image resized to 256x256 (display range)."""
    return resize(check_image(image, name="image"), height=INPUT_SIZE, width=INPUT_SIZE)


def clean_lung_mask(mask: np.ndarray) -> np.ndarray:
    """Keep the two largest connected components (above a noise floor) and fill their holes."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.argsort(sizes)[::-1][:2]
    keep = keep[sizes[keep] >= MIN_COMPONENT_FRACTION * mask.size]
    cleaned = np.isin(labels, keep + 1)
    return ndimage.binary_fill_holes(cleaned)


def cleaned_probability(probability: np.ndarray) -> np.ndarray:
    """The lung probability map with :func:`clean_lung_mask` applied at the network resolution.

    In the holes of the kept components the probability is raised just above the threshold; in
    the kept components and the one-pixel ring around them (bilinear reach) it is left as is, so
    upsampling and thresholding draws the same boundary as upsampling the raw map would;
    elsewhere (removed specks) it is 0.
    Cleaning 256x256 instead of the full image removes most of the stage's time on large images.
    """
    kept = clean_lung_mask(probability >= THRESHOLD)
    ring = ndimage.binary_dilation(kept) & ~kept
    filled_hole = kept & (probability < THRESHOLD)
    out = np.where(kept | ring, probability, 0.0)
    out[filled_hole] = THRESHOLD + 0.01
    return out.astype(np.float32)


class LungSegmenter(BatchedStage):
    """Segments the lungs of frontal images."""

    default_batch_size = 16

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, device: torch.device = torch.device("cpu")) -> LungSegmenter:
        return cls(model_from_state_dict(build_lungs, state, device=device), device=device)

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Lung probabilities at the network resolution, (N, 256, 256) float32."""
        inputs = [lung_input(image) for image in images]
        out = np.zeros((len(inputs), INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(inputs), self.batch_size):
                batch = network_batch(inputs[start : start + self.batch_size], device=self.device)
                logits = self.model(batch).float()
                out[start : start + len(batch)] = torch.sigmoid(logits)[:, 0].cpu().numpy()
        return out

    def predict(self, images: Sequence[np.ndarray]) -> list[LungPrediction]:
        probabilities = self.probabilities(images)
        predictions = []
        for image, probability in zip(images, probabilities, strict=True):
            height, width = np.shape(image)
            cleaned = cleaned_probability(probability)
            mask = resize(cleaned, height=height, width=width) >= THRESHOLD
            predictions.append(LungPrediction(mask=mask, probability_max=float(probability.max())))
        return predictions
