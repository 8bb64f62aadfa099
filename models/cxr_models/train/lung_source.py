"""Lung masks for training crops: the record's own mask, else the lung model's prediction.

Real datasets without lung masks (ChestX-ray14, RSNA) still train the crop-based models on the
crops that inference will use: the lung U-Net predicts their masks (``--lungs-weights``), as the
study trainer already does. Picklable (it holds a path); the model loads on first use in each
process. The weights' sha256 goes into cache keys, so new lung weights rebuild the caches.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from cxr_models.datasets import load_lung_mask
from cxr_models.records import ImageRecord

logger = logging.getLogger(__name__)


def file_digest(path: Path | None) -> str | None:
    """sha256 of a file, None for no file."""
    if path is None:
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class LungMaskSource:
    """Ground-truth lung masks where records have them, predicted ones (``weights``) elsewhere."""

    def __init__(self, *, weights: Path | None, device: str = "cpu") -> None:
        self.weights = weights
        self.device = device
        self.digest = file_digest(weights)
        self._segmenter = None

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_segmenter": None}

    def _predict(self, image: np.ndarray) -> np.ndarray:
        if self._segmenter is None:
            from cxr_models.inference.lungs import LungSegmenter
            from cxr_models.devices import resolve_device
            from cxr_models.nets.common import load_weights_file

            assert self.weights is not None
            self._segmenter = LungSegmenter.from_state_dict(
                load_weights_file(self.weights), device=resolve_device(self.device)
            )
        return self._segmenter.predict([image])[0].mask

    def available(self, record: ImageRecord) -> bool:
        """Whether a mask can be had for ``record``."""
        return bool(record.lung_mask) or self.weights is not None

    def mask(self, record: ImageRecord, image: np.ndarray) -> np.ndarray | None:
        """The record's lung mask at the image's shape, else the prediction, else None."""
        own = load_lung_mask(record, shape=image.shape)
        if own is not None:
            return own
        if self.weights is None:
            return None
        return self._predict(image)
