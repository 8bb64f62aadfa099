"""View stage: frontal / lateral / other for each image, from the whole image at 128x128.

Each prediction also carries the network's penultimate features (the trunk's global average
pool, the input of the linear head) of the same forward pass, for the out-of-distribution score
(:mod:`cxr_models.inference.ood`): the network runs once per image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr_models.imaging import resize
from cxr_models.inference.inputs import BatchedStage, check_image, network_batch
from cxr_models.nets.common import model_from_state_dict
from cxr_models.nets.view import INPUT_SIZE, build_view
from cxr_models.records import VIEWS

logger = logging.getLogger(__name__)

# The view network's penultimate layer, as recorded in the manifest's "ood" entry.
FEATURES_NAME = "view penultimate (global average pool)"


@dataclass(frozen=True)
class ViewPrediction:
    """The view label and probabilities; ``features``: float32 (D,) penultimate features, or None
    when the network has no linear ``head`` to take them from."""

    label: str
    probabilities: dict[str, float]
    features: np.ndarray | None = field(default=None, compare=False, repr=False)


def view_input(image: np.ndarray) -> np.ndarray:
    """The network input of one display image: the whole image resized to 128x128 (display range)."""
    return resize(check_image(image, name="image"), height=INPUT_SIZE, width=INPUT_SIZE)


class _HeadInput:
    """A forward pre-hook that keeps the input of the head (the penultimate features)."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.value = args[0].detach()


class ViewClassifier(BatchedStage):
    """Classifies each image as one of VIEWS."""

    default_batch_size = 32

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, device: torch.device = torch.device("cpu")) -> ViewClassifier:
        return cls(model_from_state_dict(build_view, state, device=device), device=device)

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and the head's input (None without a linear ``head``), from one forward pass."""
        head = getattr(self.model, "head", None)
        if not isinstance(head, nn.Linear):
            return self.model(batch), None
        hook = _HeadInput()
        handle = head.register_forward_pre_hook(hook)
        try:
            logits = self.model(batch)
        finally:
            handle.remove()
        return logits, hook.value

    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The penultimate features of ``images`` as a float32 (N, D) array."""
        predictions = self.predict(images)
        if any(p.features is None for p in predictions):
            raise ValueError(f"the view network {type(self.model).__name__} has no linear head to take features from")
        dim = int(getattr(getattr(self.model, "head", None), "in_features", 0))
        return np.stack([p.features for p in predictions]) if predictions else np.zeros((0, dim), np.float32)

    def predict(self, images: Sequence[np.ndarray]) -> list[ViewPrediction]:
        inputs = [view_input(image) for image in images]
        predictions: list[ViewPrediction] = []
        with torch.inference_mode():
            for start in range(0, len(inputs), self.batch_size):
                batch = network_batch(inputs[start : start + self.batch_size], device=self.device)
                logits, features = self._forward(batch)
                probabilities = torch.softmax(logits.float(), dim=1).cpu().numpy()
                feats = None if features is None else features.float().cpu().numpy()
                for k, row in enumerate(probabilities):
                    predictions.append(
                        ViewPrediction(
                            label=VIEWS[int(np.argmax(row))],
                            probabilities={view: float(p) for view, p in zip(VIEWS, row, strict=True)},
                            features=None if feats is None else feats[k].copy(),
                        )
                    )
        return predictions
