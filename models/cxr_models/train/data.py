"""Record selection helpers shared by the trainers: study split, training limit, pixel packing."""

from __future__ import annotations

import argparse
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr_models.records import ImageRecord
from cxr_models.train.common import split_by_study

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    train: list[ImageRecord]
    val: list[ImageRecord]

    @property
    def records(self) -> list[ImageRecord]:
        """Training then validation records: the order of the preprocessing cache."""
        return [*self.train, *self.val]


def study_of(record: ImageRecord) -> str:
    """The grouping key of a record: its study, or the image itself when the study is unknown."""
    return record.study_id if record.study_id is not None else record.image_id


def split_records(
    records: Sequence[ImageRecord], *, val_fraction: float, seed: int, limit: int | None = None
) -> Split:
    """Held-out studies for validation; ``limit`` keeps a seeded random subset of the training images."""
    if not records:
        raise ValueError("records is empty: the dataset has no usable images for this model")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    train_ids, _ = split_by_study([study_of(r) for r in records], val_fraction=val_fraction, seed=seed)
    train = [r for r in records if study_of(r) in train_ids]
    val = [r for r in records if study_of(r) not in train_ids]
    if limit is not None and len(train) > limit:
        keep = set(random.Random(seed).sample(range(len(train)), limit))
        train = [r for i, r in enumerate(train) if i in keep]
    logger.info("split: %d training and %d validation images", len(train), len(val))
    return Split(train=train, val=val)


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
    from cxr_models.datasets import read_dataset
    from cxr_models.train.cache import cached_arrays

    split = split_records(
        select(read_dataset(args.data, format=args.format)),
        val_fraction=args.val_fraction, seed=args.seed, limit=args.limit,
    )
    arrays = cached_arrays(
        args.out / "cache", name=name, version=version, params=params,
        items=split.records, ids=record_ids(split.records), build=build, workers=args.workers,
        disable_progress=args.no_progress,
    )
    return split, arrays
