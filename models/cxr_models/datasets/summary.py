"""Counts of what a reader finds in a dataset folder: check a local copy before training.

``python -m cxr_models.datasets.summary --data ROOT [--format auto]``
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from cxr_models.datasets import FORMATS, read_dataset
from cxr_models.records import ImageRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSummary:
    images: int
    studies: int
    views: dict[str, int]
    box_annotated: int
    with_opacity_boxes: int
    boxes: int
    lung_masks: int
    opacity_masks: int
    study_labels: dict[str, int]


def summarize(records: list[ImageRecord]) -> DatasetSummary:
    """Counts over ``records`` (images, studies, views, boxes, masks, study labels per study)."""
    labels: dict[str, str] = {}
    for record in records:
        if record.study_id is not None and record.study_label is not None:
            labels[record.study_id] = record.study_label
    annotated = [r for r in records if r.boxes is not None]
    return DatasetSummary(
        images=len(records),
        studies=len({r.study_id if r.study_id is not None else r.image_id for r in records}),
        views=dict(sorted(Counter(r.view or "unknown" for r in records).items())),
        box_annotated=len(annotated),
        with_opacity_boxes=sum(1 for r in annotated if r.boxes),
        boxes=sum(len(r.boxes or ()) for r in annotated),
        lung_masks=sum(1 for r in records if r.lung_mask),
        opacity_masks=sum(1 for r in records if r.opacity_mask),
        study_labels=dict(sorted(Counter(labels.values()).items())),
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset root")
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="dataset layout")
    return parser


def main(args: argparse.Namespace) -> DatasetSummary:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = summarize(read_dataset(args.data, format=args.format))
    print(json.dumps(asdict(summary), indent=2))
    return summary


if __name__ == "__main__":
    main(get_args_parser().parse_args())
