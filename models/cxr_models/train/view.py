"""Train the view classifier (frontal / lateral / other) on every image that has a view.

``python -m cxr_models.train.view --data DIR --out DIR``. Input: the whole display image resized
to 128x128 (:func:`cxr_models.inference.view.view_input`); augmentation: small affine warps with
horizontal flips and intensity jitter; loss: cross-entropy with light label smoothing;
validation metric: accuracy on held-out studies. Rare classes ('other' is ~10 % of PhantomCXR)
get larger loss weights (inverse square root of their training frequency).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import argparse
import json
import logging
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from cxr_models.datasets import load_image
from cxr_models.inference.view import view_input
from cxr_models.nets.common import normalise
from cxr_models.nets.view import INPUT_SIZE, build_view
from cxr_models.records import VIEWS, ImageRecord
from cxr_models.train.augment import acquisition, acquisition_from_args, AffineJitter, IntensityJitter, jitter_intensity, random_affine, warp
from cxr_models.train.common import add_common_args
from cxr_models.train.data import from_uint8, load_split_arrays, sample_weights, to_uint8
from cxr_models.train.engine import Defaults, configure_logging, fit, setup_run

if TYPE_CHECKING:
    from cxr_models.train.acquisition import AcquisitionJitter

logger = logging.getLogger(__name__)

PREPROCESS_VERSION = 1
DEFAULTS = Defaults(epochs=15, batch_size=64, lr=4e-3)
AFFINE = AffineJitter(scale=(0.85, 1.15), shift=0.06, rotate_degrees=8.0, flip_probability=0.5)
INTENSITY = IntensityJitter()
LABEL_SMOOTHING = 0.05


def select_records(records: list[ImageRecord]) -> list[ImageRecord]:
    """Images with a known view."""
    return [r for r in records if r.view is not None]


def preprocess(record: ImageRecord) -> dict[str, np.ndarray]:
    return {"image": to_uint8(view_input(load_image(record)))}


def class_weights(labels: np.ndarray, *, num_classes: int) -> torch.Tensor:
    """Loss weights proportional to 1 / sqrt(class frequency), mean 1 over the classes present."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1.0)), 0.0)
    present = counts > 0
    weights[present] /= weights[present].mean()
    return torch.tensor(weights, dtype=torch.float32)


class ViewTask:
    metric = "accuracy"
    higher_is_better = True

    def __init__(self, *, images: np.ndarray, labels: np.ndarray, n_train: int, val_batch_size: int = 128) -> None:
        self.images = images
        self.labels = labels
        self.n_train = n_train
        self.val_batch_size = val_batch_size
        self.class_weights = class_weights(labels[:n_train], num_classes=len(VIEWS))
        self.acquisition: AcquisitionJitter | None = None

    @property
    def train_size(self) -> int:
        return self.n_train

    def _inputs(self, indices: np.ndarray, *, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(from_uint8(self.images[indices]))[:, None].to(device)

    def loss(
        self, model: torch.nn.Module, indices: np.ndarray, *, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        x = self._inputs(indices, device=device)
        x = warp(x, random_affine(len(indices), jitter=AFFINE, generator=generator), size=INPUT_SIZE)
        x = jitter_intensity(x, jitter=INTENSITY, generator=generator)
        x = acquisition(x, jitter=self.acquisition, generator=generator)
        target = torch.from_numpy(self.labels[indices]).to(device)
        logits = model(normalise(x)).float()
        weights = self.class_weights.to(device)
        return F.cross_entropy(logits, target, weight=weights, label_smoothing=LABEL_SMOOTHING)

    def validate(self, model: torch.nn.Module, *, device: torch.device) -> dict[str, float]:
        val = np.arange(self.n_train, len(self.labels))
        if val.size == 0:
            return {}
        correct, total_loss = 0, 0.0
        with torch.inference_mode():
            for start in range(0, val.size, self.val_batch_size):
                indices = val[start : start + self.val_batch_size]
                logits = model(normalise(self._inputs(indices, device=device))).float()
                target = torch.from_numpy(self.labels[indices]).to(device)
                total_loss += float(F.cross_entropy(logits, target, reduction="sum"))
                correct += int((logits.argmax(dim=1) == target).sum())
        return {"accuracy": correct / val.size, "loss": total_loss / val.size}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the view classifier (frontal / lateral / other).")
    return add_common_args(parser)


def main(args: argparse.Namespace) -> None:
    configure_logging()
    device = setup_run(args)
    split, arrays = load_split_arrays(
        args, name="view", version=PREPROCESS_VERSION, params={"size": INPUT_SIZE},
        select=select_records, build=preprocess,
    )
    records = split.records
    labels = np.array([VIEWS.index(r.view) for r in records], dtype=np.int64)
    counts = {view: int((labels == k).sum()) for k, view in enumerate(VIEWS)}
    logger.info("view classes: %s", counts)
    task = ViewTask(images=arrays["image"], labels=labels, n_train=len(split.train))
    task.sample_weights = sample_weights(split.train)
    task.acquisition = acquisition_from_args(args)
    result = fit(args, task=task, model=build_view(), defaults=DEFAULTS, device=device)
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
