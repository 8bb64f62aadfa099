"""Train the study classifier (negative / typical / indeterminate / atypical) on whole studies.

``python -m cxr_models.train.study --data DIR --out DIR [--lungs-weights W --opacity-weights W]``.
Each frontal image of a labelled study becomes the 128x128 crop stack of
:mod:`cxr_models.inference.study` (image, lung mask, opacity probability, coordinates).

Train/serve consistency: with ``--lungs-weights`` / ``--opacity-weights`` (a trainer checkpoint
or a shipped fp16 state dict) the lung masks, crops and opacity probabilities come from the
upstream models' PREDICTIONS, exactly as the service computes them; the shipped study model is
trained this way. Without them the ground-truth masks stand in (lung mask from the dataset,
opacity probability = the ground-truth opacity mask), which is fine for development but gives a
model that has never seen imperfect upstream inputs. The inputs are computed once into the cache
(the key includes the weights files' hashes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import argparse
import json
import logging
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxr_models.datasets import load_image, load_lung_mask, load_opacity_mask
from cxr_models.evaluation.metrics import macro_auc_ovr, roc_auc
from cxr_models.inference.crop import decide_crop
from cxr_models.inference.lungs import LungSegmenter
from cxr_models.inference.opacity import OpacitySegmenter
from cxr_models.inference.study import StudyImageInput, crop_channels, network_input
from cxr_models.nets.common import load_weights_file
from cxr_models.nets.study import INPUT_SIZE, build_study
from cxr_models.records import STUDY_LABELS, ImageRecord
from cxr_models.train.augment import acquisition, acquisition_from_args, AffineJitter, IntensityJitter, jitter_intensity, random_affine, warp
from cxr_models.train.cache import cached_arrays
from cxr_models.devices import resolve_device
from cxr_models.train.common import add_common_args
from cxr_models.train.data import from_uint8, read_args_records, record_ids, split_records, study_of, to_uint8
from cxr_models.train.engine import Defaults, configure_logging, fit, setup_run
from cxr_models.train.lung_source import file_digest

if TYPE_CHECKING:
    from cxr_models.train.acquisition import AcquisitionJitter

logger = logging.getLogger(__name__)

PREPROCESS_VERSION = 1
DEFAULTS = Defaults(epochs=25, batch_size=16, lr=3e-3, weight_decay=1e-3)
AFFINE = AffineJitter(scale=(0.93, 1.07), shift=0.03, rotate_degrees=4.0, flip_probability=0.5)
INTENSITY = IntensityJitter()
LABEL_SMOOTHING = 0.05


# Study label codes beyond the STUDY_LABELS indices: a real "abnormal" label (not negative, class unknown).
NOT_NEGATIVE = -1


def select_records(records: list[ImageRecord]) -> list[ImageRecord]:
    """Frontal images of studies with a study label, or with a real normal/abnormal label."""
    return [r for r in records if r.view == "frontal" and (r.study_label is not None or r.abnormal is not None)]


def label_code(record: ImageRecord) -> int:
    """The training target of a record: a STUDY_LABELS index, or NOT_NEGATIVE.

    Real labels are never relabelled as SIIM categories: "No Finding" is negative for pneumonia
    (index 0), and an abnormal image says only that the study is not negative.
    """
    if record.study_label is not None:
        return STUDY_LABELS.index(record.study_label)
    if record.abnormal is None:
        raise ValueError(f"record {record.image_id!r} has neither a study label nor a normal/abnormal label")
    return NOT_NEGATIVE if record.abnormal else STUDY_LABELS.index("negative")


def partial_label_loss(logits: torch.Tensor, codes: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy on known classes; ``-log(1 - P(negative))`` for NOT_NEGATIVE targets, averaged over the batch."""
    known = codes >= 0
    total = logits.new_zeros(())
    if known.any():
        total = total + F.cross_entropy(
            logits[known], codes[known], label_smoothing=label_smoothing, reduction="sum"
        )
    if (~known).any():
        rows = logits[~known]
        negative = STUDY_LABELS.index("negative")
        others = torch.cat([rows[:, :negative], rows[:, negative + 1 :]], dim=1)
        total = total + (torch.logsumexp(rows, dim=1) - torch.logsumexp(others, dim=1)).sum()
    return total / max(len(codes), 1)


class StudyInputBuilder:
    """Builds each image's crop stack, from upstream predictions or from ground-truth masks.

    Picklable (it holds paths); the upstream models are loaded on first use in each process.
    """

    def __init__(self, *, lungs_weights: Path | None, opacity_weights: Path | None, device: str) -> None:
        self.lungs_weights = lungs_weights
        self.opacity_weights = opacity_weights
        self.device = device
        self._lungs: LungSegmenter | None = None
        self._opacity: OpacitySegmenter | None = None

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_lungs": None, "_opacity": None}

    def _lung_segmenter(self) -> LungSegmenter:
        if self._lungs is None:
            assert self.lungs_weights is not None
            state = load_weights_file(self.lungs_weights)
            self._lungs = LungSegmenter.from_state_dict(state, device=resolve_device(self.device))
        return self._lungs

    def _opacity_segmenter(self) -> OpacitySegmenter:
        if self._opacity is None:
            assert self.opacity_weights is not None
            state = load_weights_file(self.opacity_weights)
            self._opacity = OpacitySegmenter.from_state_dict(state, device=resolve_device(self.device))
        return self._opacity

    def study_input(self, record: ImageRecord) -> StudyImageInput:
        image = load_image(record)
        if self.lungs_weights is not None:
            lungs = self._lung_segmenter().predict([image])[0].mask
        else:
            lungs = load_lung_mask(record, shape=image.shape)
            if lungs is None:
                raise ValueError(f"record {record.image_id!r} has no lung mask; pass --lungs-weights")
        crop = decide_crop(lungs, shape=image.shape).box
        if self.opacity_weights is not None:
            prediction = self._opacity_segmenter().predict([image], crops=[crop], lung_masks=[lungs])[0]
            opacity = prediction.probability
        else:
            mask = load_opacity_mask(record, shape=image.shape)
            if mask is None:
                raise ValueError(f"record {record.image_id!r} has no opacity mask; pass --opacity-weights")
            opacity = mask.astype(np.float32)
        return StudyImageInput(image=image, lung_mask=lungs, opacity_probability=opacity, crop=crop)

    def __call__(self, record: ImageRecord) -> dict[str, np.ndarray]:
        return {"channels": to_uint8(crop_channels(self.study_input(record)))}


def group_studies(records: list[ImageRecord]) -> tuple[list[list[int]], np.ndarray]:
    """Row indices of each study's images (studies in first-seen order) and the study labels."""
    rows: dict[str, list[int]] = defaultdict(list)
    labels: dict[str, int] = {}
    negative = STUDY_LABELS.index("negative")
    for index, record in enumerate(records):
        key = f"{record.source or ''}|{study_of(record)}"
        rows[key].append(index)
        code = label_code(record)
        previous = labels.setdefault(key, code)
        if previous == code:
            continue
        if record.study_label is None and {previous, code} == {negative, NOT_NEGATIVE}:
            labels[key] = NOT_NEGATIVE  # a real study is abnormal when any of its images is
            continue
        raise ValueError(f"study {key!r} has conflicting labels {previous!r} and {code!r}")
    order = list(rows)
    return [rows[k] for k in order], np.array([labels[k] for k in order], dtype=np.int64)


class StudyTask:
    # mean of the 4-class macro AUC (where SIIM-style labels exist) and the normal/abnormal AUC
    metric = "selection"
    higher_is_better = True

    def __init__(
        self, *, channels: np.ndarray, studies: list[list[int]], labels: np.ndarray, n_train: int,
        val_batch_size: int = 64,
    ) -> None:
        self.channels = channels
        self.studies = studies
        self.labels = labels
        self.n_train = n_train
        self.val_batch_size = val_batch_size
        self.acquisition: AcquisitionJitter | None = None

    @property
    def train_size(self) -> int:
        return self.n_train

    def _batch(self, study_ids: np.ndarray, *, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [row for s in study_ids for row in self.studies[s]]
        index = [k for k, s in enumerate(study_ids) for _ in self.studies[s]]
        x = torch.from_numpy(from_uint8(self.channels[np.array(rows)])).to(device)
        return x, torch.tensor(index, device=device)

    def loss(
        self, model: torch.nn.Module, indices: np.ndarray, *, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        x, study_index = self._batch(indices, device=device)
        x = warp(x, random_affine(len(x), jitter=AFFINE, generator=generator), size=INPUT_SIZE)
        x = torch.cat([jitter_intensity(x[:, :1], jitter=INTENSITY, generator=generator), x[:, 1:]], dim=1)
        x = acquisition(x, jitter=self.acquisition, generator=generator)
        logits = model(network_input(x), study_index, len(indices)).float()
        target = torch.from_numpy(self.labels[indices]).to(device)
        return partial_label_loss(logits, target, label_smoothing=LABEL_SMOOTHING)

    def validate(self, model: torch.nn.Module, *, device: torch.device) -> dict[str, float]:
        val = np.arange(self.n_train, len(self.studies))
        if val.size == 0:
            return {}
        probabilities, total_loss = [], 0.0
        with torch.inference_mode():
            for start in range(0, val.size, self.val_batch_size):
                chunk = val[start : start + self.val_batch_size]
                x, study_index = self._batch(chunk, device=device)
                logits = model(network_input(x), study_index, len(chunk)).float()
                target = torch.from_numpy(self.labels[chunk]).to(device)
                total_loss += float(partial_label_loss(logits, target)) * len(chunk)
                probabilities.append(torch.softmax(logits, dim=1).cpu().numpy())
        probs = np.concatenate(probabilities)
        truth = self.labels[val]
        known = truth >= 0
        metrics: dict[str, float] = {"loss": total_loss / val.size}
        if known.any():
            metrics["accuracy"] = float((probs[known].argmax(1) == truth[known]).mean())
        auc = macro_auc_ovr(probs[known], [STUDY_LABELS[k] for k in truth[known]], STUDY_LABELS) if known.any() else None
        if auc is not None:
            metrics["macro_auc"] = auc
        negative = STUDY_LABELS.index("negative")
        abnormal_auc = roc_auc((1.0 - probs[:, negative]).tolist(), (truth != negative).tolist())
        if abnormal_auc is not None:
            metrics["normal_abnormal_auc"] = abnormal_auc
        parts = [metrics[k] for k in ("macro_auc", "normal_abnormal_auc") if k in metrics]
        if parts:
            metrics["selection"] = float(np.mean(parts))
        return metrics


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the 4-class study classifier.")
    add_common_args(parser)
    parser.add_argument(
        "--lungs-weights", type=Path, default=None,
        help="lung model checkpoint or fp16 state dict: train on its predicted masks (default: ground truth)",
    )
    parser.add_argument(
        "--opacity-weights", type=Path, default=None,
        help="opacity model checkpoint or fp16 state dict: train on its probabilities (default: ground truth)",
    )
    return parser


def main(args: argparse.Namespace) -> None:
    configure_logging()
    device = setup_run(args)
    split = split_records(
        select_records(read_args_records(args)),
        val_fraction=args.val_fraction, seed=args.seed, limit=args.limit, split_seed=args.split_seed,
    )
    ground_truth = [n for n, w in (("lung masks", args.lungs_weights), ("opacity", args.opacity_weights)) if w is None]
    if ground_truth:
        logger.warning(
            "study inputs use ground-truth %s; the shipped model is trained on upstream predictions",
            " and ".join(ground_truth),
        )
    builder = StudyInputBuilder(
        lungs_weights=args.lungs_weights, opacity_weights=args.opacity_weights, device=str(device)
    )
    records = split.records
    arrays = cached_arrays(
        args.out / "cache", name="study", version=PREPROCESS_VERSION,
        params={
            "size": INPUT_SIZE,
            "lungs_weights": file_digest(args.lungs_weights),
            "opacity_weights": file_digest(args.opacity_weights),
        },
        items=records, ids=record_ids(records), build=builder, workers=args.workers,
        disable_progress=args.no_progress,
    )
    train_studies, train_labels = group_studies(split.train)
    val_studies, val_labels = group_studies(split.val)
    offset = len(split.train)
    studies = train_studies + [[row + offset for row in rows] for rows in val_studies]
    labels = np.concatenate([train_labels, val_labels])
    logger.info(
        "study classes (train): %s, not negative (real abnormal): %d",
        {c: int((train_labels == k).sum()) for k, c in enumerate(STUDY_LABELS)}, int((train_labels == NOT_NEGATIVE).sum()),
    )
    task = StudyTask(channels=arrays["channels"], studies=studies, labels=labels, n_train=len(train_studies))
    weights = [split.train[rows[0]].weight for rows in train_studies]
    task.sample_weights = None if len(set(weights)) <= 1 else np.array(weights, dtype=np.float64)
    task.acquisition = acquisition_from_args(args)
    extra = {"lungs_weights": file_digest(args.lungs_weights), "opacity_weights": file_digest(args.opacity_weights)}
    result = fit(args, task=task, model=build_study(), defaults=DEFAULTS, device=device, extra=extra)
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
