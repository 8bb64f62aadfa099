"""View stage: frontal / lateral / other for each image, from the whole image at 128x128."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cxr_models.imaging import resize
from cxr_models.inference.inputs import BatchedStage, check_image, network_batch
from cxr_models.nets.common import model_from_state_dict
from cxr_models.nets.view import INPUT_SIZE, build_view
from cxr_models.records import VIEWS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewPrediction:
    label: str
    probabilities: dict[str, float]


def view_input(image: np.ndarray) -> np.ndarray:
    """The network input of one display image: the whole image resized to 128x128 (display range)."""
    return resize(check_image(image, name="image"), height=INPUT_SIZE, width=INPUT_SIZE)


class ViewClassifier(BatchedStage):
    """Classifies each image as one of VIEWS."""

    default_batch_size = 32

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, device: torch.device = torch.device("cpu")) -> ViewClassifier:
        return cls(model_from_state_dict(build_view, state, device=device), device=device)

    def predict(self, images: Sequence[np.ndarray]) -> list[ViewPrediction]:
        inputs = [view_input(image) for image in images]
        predictions: list[ViewPrediction] = []
        with torch.inference_mode():
            for start in range(0, len(inputs), self.batch_size):
                batch = network_batch(inputs[start : start + self.batch_size], device=self.device)
                probabilities = torch.softmax(self.model(batch).float(), dim=1).cpu().numpy()
                for row in probabilities:
                    predictions.append(
                        ViewPrediction(
                            label=VIEWS[int(np.argmax(row))],
                            probabilities={view: float(p) for view, p in zip(VIEWS, row, strict=True)},
                        )
                    )
        return predictions
