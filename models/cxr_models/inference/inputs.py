"""Argument checks and batching shared by the inference stages."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cxr_models.devices import to_device
from cxr_models.nets.common import normalise


def check_image(image: np.ndarray, *, name: str) -> np.ndarray:
    """``image`` as a 2-D float32 display array; ValueError naming ``name`` otherwise."""
    array = np.asarray(image)
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 2:
        raise ValueError(f"{name} must be a 2-D image of at least 2x2 pixels, got shape {array.shape}")
    return array.astype(np.float32, copy=False)


def check_lengths(**sequences: Sequence[object]) -> int:
    """The common length of the named sequences; ValueError listing the lengths otherwise."""
    lengths = {name: len(seq) for name, seq in sequences.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arguments must have the same length, got {lengths}")
    return next(iter(lengths.values()), 0)


def network_batch(arrays: Sequence[np.ndarray], *, device: torch.device) -> torch.Tensor:
    """Stack display arrays ((H, W) or (C, H, W)) into a normalised (N, C, H, W) float32 tensor."""
    stacked = np.stack([a if a.ndim == 3 else a[None] for a in arrays]).astype(np.float32, copy=False)
    return normalise(to_device(torch.from_numpy(stacked), device))


class BatchedStage:
    """A network in eval mode on ``device``, run ``batch_size`` images at a time."""

    default_batch_size = 16

    def __init__(self, model: torch.nn.Module, *, device: torch.device, batch_size: int | None = None) -> None:
        batch_size = self.default_batch_size if batch_size is None else batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
