"""Study stage: negative / typical / indeterminate / atypical from a study's frontal images.

Each frontal image becomes a 128x128 stack over its lung crop (display image, lung mask,
opacity probability, x and y coordinate channels); the network averages per-image features over
the study. The shipped model is trained on the upstream models' predicted lung masks and
opacity probabilities (see :mod:`cxr_models.train.study`), the inputs it sees in service.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cxr_models.devices import to_device
from cxr_models.inference.crop import crop_and_resize
from cxr_models.inference.inputs import check_image
from cxr_models.nets.common import model_from_state_dict, normalise
from cxr_models.nets.study import INPUT_SIZE, build_study
from cxr_models.records import STUDY_LABELS, Box

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyImageInput:
    """One frontal image of a study with its upstream results, all arrays in original size."""

    image: np.ndarray
    lung_mask: np.ndarray
    opacity_probability: np.ndarray
    crop: Box


@dataclass(frozen=True)
class StudyPrediction:
    label: str
    probabilities: dict[str, float]


def crop_channels(item: StudyImageInput) -> np.ndarray:
    """(3, 128, 128) float32 in [0, 1]: image, lung mask and opacity probability over the crop."""
    image = check_image(item.image, name="image")
    for name in ("lung_mask", "opacity_probability"):
        if np.shape(getattr(item, name)) != image.shape:
            raise ValueError(f"{name} has shape {np.shape(getattr(item, name))}, image has shape {image.shape}")
    channels = [
        crop_and_resize(image, item.crop, size=INPUT_SIZE),
        crop_and_resize(np.asarray(item.lung_mask, dtype=np.float32), item.crop, size=INPUT_SIZE),
        crop_and_resize(np.asarray(item.opacity_probability, dtype=np.float32), item.crop, size=INPUT_SIZE),
    ]
    return np.clip(np.stack(channels), 0.0, 1.0)


def coordinate_channels(size: int = INPUT_SIZE) -> np.ndarray:
    """(2, size, size) float32: x (columns) and y (rows) of each pixel centre in [-1, 1]."""
    centres = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    return np.stack([np.broadcast_to(centres[None, :], (size, size)), np.broadcast_to(centres[:, None], (size, size))])


def network_input(channels: torch.Tensor) -> torch.Tensor:
    """Normalised (N, 5, H, W) network input from display-range crop channels (N, 3, H, W)."""
    coords = torch.from_numpy(coordinate_channels(channels.shape[-1])).to(channels.device, channels.dtype)
    return torch.cat([normalise(channels), coords.expand(channels.shape[0], -1, -1, -1)], dim=1)


class StudyClassifier:
    """Classifies whole studies into STUDY_LABELS."""

    def __init__(self, model: torch.nn.Module, *, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, device: torch.device = torch.device("cpu")) -> StudyClassifier:
        return cls(model_from_state_dict(build_study, state, device=device), device=device)

    def predict(self, studies: Sequence[Sequence[StudyImageInput]]) -> list[StudyPrediction]:
        if not studies:
            return []
        stacks: list[np.ndarray] = []
        study_index: list[int] = []
        for index, study in enumerate(studies):
            if len(study) == 0:
                raise ValueError(f"studies[{index}] has no images; a study needs at least one frontal image")
            for item in study:
                stacks.append(crop_channels(item))
                study_index.append(index)
        with torch.inference_mode():
            channels = to_device(torch.from_numpy(np.stack(stacks)), self.device)
            logits = self.model(
                network_input(channels), torch.tensor(study_index, device=self.device), len(studies)
            )
            probabilities = torch.softmax(logits.float(), dim=1).cpu().numpy()
        return [
            StudyPrediction(
                label=STUDY_LABELS[int(np.argmax(row))],
                probabilities={label: float(p) for label, p in zip(STUDY_LABELS, row, strict=True)},
            )
            for row in probabilities
        ]
