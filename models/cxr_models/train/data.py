"""Record selection helpers shared by the trainers: patient-disjoint split, training limit, pixel packing.

The split is a property of the data, not of a training run: a record is in the validation part
when a hash of ``(split seed, source, patient)`` falls below the validation fraction. Every
trainer, ``cxr evaluate`` and every threshold tuner therefore see the same validation images,
whatever subset of the records each of them selects, and no patient is on both sides.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr_models.records import ImageRecord

logger = logging.getLogger(__name__)

DEFAULT_VAL_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 0
SPLITS: tuple[str, ...] = ("all", "train", "val")


@dataclass(frozen=True)
class Split:
    train: list[ImageRecord]
    val: list[ImageRecord]

    @property
    def records(self) -> list[ImageRecord]:
        """Training then validation records: the order of the preprocessing cache."""
        return [*self.train, *self.val]


def study_of(record: ImageRecord) -> str:
    """The study of a record, or the image itself when the study is unknown."""
    return record.study_id if record.study_id is not None else record.image_id


def patient_of(record: ImageRecord) -> str:
    """The split group of a record: its source and patient (else study, else image)."""
    person = record.patient_id if record.patient_id is not None else study_of(record)
    return f"{record.source or ''}|{person}"


def in_validation(record: ImageRecord, *, val_fraction: float, split_seed: int = DEFAULT_SPLIT_SEED) -> bool:
    """Whether the record's patient is in the validation part (a stable hash, see the module doc)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    digest = hashlib.sha256(f"{split_seed}|{patient_of(record)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < val_fraction


def select_split(
    records: Sequence[ImageRecord], *, split: str, val_fraction: float, split_seed: int = DEFAULT_SPLIT_SEED
) -> list[ImageRecord]:
    """The records of one part: ``all``, ``train`` or ``val``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return list(records)
    want = split == "val"
    return [r for r in records if in_validation(r, val_fraction=val_fraction, split_seed=split_seed) == want]


def split_records(
    records: Sequence[ImageRecord],
    *,
    val_fraction: float,
    seed: int,
    limit: int | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
) -> Split:
    """Patient-disjoint train/validation parts; ``limit`` keeps a ``seed``-ed random subset of the training images."""
    if not records:
        raise ValueError("records is empty: the dataset has no usable images for this model")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    flags = [in_validation(r, val_fraction=val_fraction, split_seed=split_seed) for r in records]
    train = [r for r, v in zip(records, flags, strict=True) if not v]
    val = [r for r, v in zip(records, flags, strict=True) if v]
    if limit is not None and len(train) > limit:
        keep = set(random.Random(seed).sample(range(len(train)), limit))
        train = [r for i, r in enumerate(train) if i in keep]
    logger.info("split: %d training and %d validation images", len(train), len(val))
    return Split(train=train, val=val)


def read_args_records(args: argparse.Namespace) -> list[ImageRecord]:
    """Every record of the ``--data`` sources (``--format`` is the default layout)."""
    from cxr_models.datasets.sources import as_sources, read_sources

    return read_sources(as_sources(args.data, default_format=args.format))


def sample_weights(records: Sequence[ImageRecord]) -> np.ndarray | None:
    """Per-record sampling weights, or None when they are all equal (plain shuffling)."""
    weights = np.array([r.weight for r in records], dtype=np.float64)
    if weights.size and not weights.sum() > 0:
        raise ValueError("every training record has weight 0 (weight=0 sources are for validation only)")
    if weights.size == 0 or np.all(weights == weights[0]):
        return None
    return weights


def record_ids(records: Sequence[ImageRecord]) -> list[str]:
    """Cache identity of records: image id and file path."""
    return [f"{r.image_id}|{r.path}" for r in records]


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Display-range floats ([0, 1]) packed into uint8."""
    return np.clip(np.rint(np.asarray(values, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def from_uint8(values: np.ndarray) -> np.ndarray:
    """uint8 packed display values back to float32 in [0, 1]."""
    return np.asarray(values, dtype=np.float32) / 255.0


def load_split_arrays(
    args: argparse.Namespace,
    *,
    name: str,
    version: int,
    params: dict[str, Any],
    select: Callable[[list[ImageRecord]], list[ImageRecord]],
    build: Callable[[ImageRecord], dict[str, np.ndarray]],
) -> tuple[Split, dict[str, np.ndarray]]:
    """The trainers' common start: read ``args.data``, keep what ``select`` wants, split by study,
    and preprocess the split's records with ``build`` into the cache under ``args.out / "cache"``."""
    from cxr_models.train.cache import cached_arrays

    split = split_records(
        select(read_args_records(args)),
        val_fraction=args.val_fraction, seed=args.seed, limit=args.limit, split_seed=args.split_seed,
    )
    arrays = cached_arrays(
        args.out / "cache", name=name, version=version, params=params,
        items=split.records, ids=record_ids(split.records), build=build, workers=args.workers,
        disable_progress=args.no_progress,
    )
    return split, arrays
