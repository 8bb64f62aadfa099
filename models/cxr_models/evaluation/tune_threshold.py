"""Choose the fused-box reporting threshold on validation data (never the test set).

``python -m cxr_models.evaluation.tune_threshold --data PATH[,format=F] [--data ...] [--split val]
[--val-fraction 0.2] [--split-seed 0] [--max-false-per-negative 0.5] [--weights DIR]
[--write-manifest]``

The analyser runs over the frontal images with a box annotation of the chosen split part: the
known negatives (``boxes == ()``, annotated as having no opacity) and the positives. Images it does
not analyse (taken for another view, or refused) show no box, as in ``cxr evaluate``. The rule
(:func:`choose_threshold`, pure) picks the **lowest** candidate score at which the fused boxes with
score ≥ it average at most ``--max-false-per-negative`` per negative image; candidates are every
distinct box score rounded down to 0.01, plus the grid point just above the highest score on a
negative image (showing no false box at all), so a threshold always exists. The lowest such score
keeps the most true boxes, since both false boxes and recall only fall as the threshold rises.

It prints the choice as JSON; ``--write-manifest`` stores it as the manifest's
``"reporting_threshold"`` (``"score"`` is what the service and ``cxr evaluate`` read).

By default the validation part of the shared patient-hash split is used; a single PhantomCXR
folder (a separately generated validation set) is used whole unless ``--split`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cxr_models.evaluation.evaluate import (
    add_data_args,
    group_studies,
    parse_sources,
    resolve_tuning_split,
    select_records,
    split_info,
)
from cxr_models.evaluation.metrics import boxes_per_image, counts_at_threshold
from cxr_models.records import Box, ImageRecord, ScoredBox

logger = logging.getLogger(__name__)

DEFAULT_MAX_FALSE_PER_NEGATIVE = 0.5
GRID_STEP = 0.01
_DECIMALS = 2


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen reporting threshold and what it gives on the tuning images."""

    score: float
    max_false_per_negative: float
    false_per_negative: float
    recall: float | None
    n_negative_images: int
    n_positive_images: int
    n_truth_boxes: int
    n_true_boxes_found: int
    n_candidates: int


def _floor_to_grid(score: float) -> float:
    """The grid point at or just below ``score`` (float noise aside, never above it)."""
    value = round(math.floor(score / GRID_STEP + 1e-9) * GRID_STEP, _DECIMALS)
    while value > score:
        value = round(value - GRID_STEP, _DECIMALS)
    return value


def candidate_thresholds(scores: Iterable[float], *, negative_scores: Iterable[float] = ()) -> list[float]:
    """Ascending candidates: each score rounded down to 0.01, plus the grid point just above the
    highest negative-image score (where no false box is left). ``[0.0]`` when there is no box at all."""
    candidates = {_floor_to_grid(float(s)) for s in scores}
    negatives = [float(s) for s in negative_scores]
    candidates |= {_floor_to_grid(s) for s in negatives}
    if negatives:
        top = max(negatives)
        above = round(_floor_to_grid(top) + GRID_STEP, _DECIMALS)
        while above <= top:
            above = round(above + GRID_STEP, _DECIMALS)
        candidates.add(above)
    return sorted(candidates) or [0.0]


def choose_threshold(
    negatives: Sequence[Sequence[ScoredBox]],
    positives: Sequence[tuple[Sequence[ScoredBox], Sequence[Box]]],
    *,
    max_false_per_negative: float = DEFAULT_MAX_FALSE_PER_NEGATIVE,
    iou_threshold: float = 0.5,
) -> ThresholdChoice:
    """The lowest candidate threshold whose false boxes per negative image are ≤ the budget.

    ``negatives`` are the fused boxes of each known-negative image, ``positives`` the fused boxes
    and reference boxes of each image with opacity. A box is reported when its score is ≥ the
    threshold; recall counts reference boxes matched at IoU > ``iou_threshold`` (as mAP@50 does).
    """
    if not max_false_per_negative >= 0.0:
        raise ValueError(f"max_false_per_negative must be >= 0, got {max_false_per_negative!r}")
    if not negatives:
        raise ValueError("no known-negative image (boxes == ()): false boxes per negative image are unmeasurable")
    negative_scores = [b.score for boxes in negatives for b in boxes]
    positive_scores = [b.score for boxes, _ in positives for b in boxes]
    candidates = candidate_thresholds(positive_scores, negative_scores=negative_scores)
    chosen, false_rate = None, math.inf
    for threshold in candidates:
        false_rate = float(boxes_per_image(negatives, threshold=threshold))
        if false_rate <= max_false_per_negative + 1e-12:
            chosen = threshold
            break
    if chosen is None:  # cannot happen: the top candidate leaves no false box
        raise AssertionError("no candidate threshold meets the budget")
    at = counts_at_threshold(
        [boxes for boxes, _ in positives], [truth for _, truth in positives],
        threshold=chosen, iou_threshold=iou_threshold,
    )
    return ThresholdChoice(
        score=chosen,
        max_false_per_negative=float(max_false_per_negative),
        false_per_negative=false_rate,
        recall=at.recall,
        n_negative_images=len(negatives),
        n_positive_images=len(positives),
        n_truth_boxes=at.n_truth,
        n_true_boxes_found=at.true_positives,
        n_candidates=len(candidates),
    )


def collect_boxes(
    analyzer: Any, records: Sequence[ImageRecord], *, show_progress: bool = False
) -> tuple[list[tuple[ScoredBox, ...]], list[tuple[tuple[ScoredBox, ...], tuple[Box, ...]]]]:
    """Fused boxes of the known-negative and the positive frontal images (a refused image shows none)."""
    from cxr_models.datasets import load_image
    from cxr_models.train.common import progress

    annotated = [r for r in records if r.view in (None, "frontal") and r.boxes is not None]
    negatives: list[tuple[ScoredBox, ...]] = []
    positives: list[tuple[tuple[ScoredBox, ...], tuple[Box, ...]]] = []
    groups = group_studies(annotated)
    for recs in progress(groups.values(), desc="tune threshold", total=len(groups), disable=not show_progress):
        prediction = analyzer.analyze_study([load_image(r) for r in recs])
        for record, pred in zip(recs, prediction.images, strict=True):
            boxes = tuple(pred.opacities) if pred.analysed else ()
            if record.boxes == ():
                negatives.append(boxes)
            else:
                positives.append((boxes, tuple(record.boxes or ())))
    return negatives, positives


def manifest_entry(
    choice: ThresholdChoice, *, sources: Sequence[Any], split: dict[str, Any], command: str, fusion: Any = None
) -> dict[str, Any]:
    """The manifest's ``"reporting_threshold"`` block."""
    entry = {
        "score": choice.score,
        "max_false_per_negative": choice.max_false_per_negative,
        "false_per_negative": round(choice.false_per_negative, 4),
        "recall": None if choice.recall is None else round(choice.recall, 4),
        "n_negative_images": choice.n_negative_images,
        "n_positive_images": choice.n_positive_images,
        "n_truth_boxes": choice.n_truth_boxes,
        "validation_data": [s.spec() for s in sources],
        "split": split,
        "command": command,
    }
    if isinstance(fusion, dict):  # the WBF setting the threshold was chosen under
        entry["fusion"] = {k: fusion[k] for k in ("weights", "iou_thr", "conf_type") if k in fusion}
    return entry


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Choose the reporting threshold of fused opacity boxes on validation data")
    add_data_args(
        parser, default_split=None,
        split_help="part of the shared patient-hash split to tune on (default: val; a single PhantomCXR folder: all)",
    )
    parser.add_argument(
        "--max-false-per-negative", type=float, default=DEFAULT_MAX_FALSE_PER_NEGATIVE,
        help="most false boxes per known-negative image the threshold may let through",
    )
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: shipped)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--write-manifest", action="store_true", help="record the threshold in the weights manifest")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def command_line(args: argparse.Namespace, sources: Sequence[Any], split: str) -> str:
    from cxr_models.datasets.sources import describe

    parts = [
        "python -m cxr_models.evaluation.tune_threshold", describe(sources),
        f"--split {split} --val-fraction {args.val_fraction:g} --split-seed {args.split_seed}",
        f"--max-false-per-negative {args.max_false_per_negative:g}",
    ]
    if args.weights is not None:
        parts.append(f"--weights {args.weights}")
    return " ".join([*parts, "--write-manifest"])


def main(args: argparse.Namespace) -> ThresholdChoice:
    from cxr_models.inference.pipeline import Analyzer
    from cxr_models.weights import default_weights_dir
    from cxr_models.weights.export import read_or_create_manifest, write_manifest

    sources = parse_sources(args.data, default_format=args.format)
    split = resolve_tuning_split(args.split, sources)
    records, n_read = select_records(sources, split=split, val_fraction=args.val_fraction, split_seed=args.split_seed)
    analyzer = Analyzer.load(weights_dir=args.weights, device=args.device)
    negatives, positives = collect_boxes(analyzer, records, show_progress=not args.no_progress)
    choice = choose_threshold(negatives, positives, max_false_per_negative=args.max_false_per_negative)
    split_record = split_info(split, val_fraction=args.val_fraction, split_seed=args.split_seed)
    print(json.dumps({
        "threshold": choice.score,
        **{k: v for k, v in asdict(choice).items() if k != "score"},
        "data": [s.spec() for s in sources],
        "split": split_record,
        "n_records_read": n_read,
        "n_records_in_split": len(records),
    }, indent=2))
    if args.write_manifest:
        weights_dir = args.weights or default_weights_dir()
        manifest = read_or_create_manifest(weights_dir)
        manifest["reporting_threshold"] = manifest_entry(
            choice, sources=sources, split=split_record, command=command_line(args, sources, split),
            fusion=manifest.get("fusion"),
        )
        path = write_manifest(weights_dir, manifest)
        print(f"wrote the reporting threshold {choice.score:g} into {path}")
    return choice


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(get_args_parser().parse_args())
