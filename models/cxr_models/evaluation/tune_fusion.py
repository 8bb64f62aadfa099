"""Choose the Weighted Box Fusion settings on a validation set (never the test set).

``python -m cxr_models.evaluation.tune_fusion --data data/val [--data PATH[,format=F] ...]
[--split val] [--val-fraction 0.2] [--split-seed 0] [--weights DIR] [--write-manifest]`` runs the
two detectors once over the frontal images with a box annotation (``boxes`` not None), then scores
every combination of detector weights, IoU threshold and confidence rule by mAP@50 against the
ground-truth boxes, and prints them best first. The chosen setting is written into the weights
manifest (``"fusion"``) with ``--write-manifest``, where
:class:`cxr_models.inference.pipeline.Analyzer` reads it.

``--split`` picks the part of the shared patient-hash split (default: the validation part, so real
sources are tuned on what the trainers held out); a single PhantomCXR folder such as ``data/val`` is
a separately generated validation set and is used whole, as before, unless ``--split`` is given.
"""

from __future__ import annotations

import argparse
import itertools
import logging
from collections.abc import Sequence
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
from cxr_models.evaluation.metrics import average_precision
from cxr_models.inference.detection import CONF_TYPES, fuse_boxes
from cxr_models.records import Box, ScoredBox

logger = logging.getLogger(__name__)

WEIGHT_GRID: tuple[tuple[float, float], ...] = ((1, 1), (1, 1.5), (1, 2), (1, 3), (1.5, 1), (2, 1))
IOU_GRID: tuple[float, ...] = (0.4, 0.5, 0.55, 0.6, 0.7)


@dataclass(frozen=True)
class FusionSetting:
    weights: tuple[float, float]
    iou_thr: float
    conf_type: str


@dataclass(frozen=True)
class Scored:
    setting: FusionSetting
    map50: float


def score_settings(
    per_image: Sequence[tuple[Sequence[ScoredBox], Sequence[ScoredBox], tuple[int, int]]],
    truth: Sequence[Sequence[Box]],
    *,
    settings: Sequence[FusionSetting],
) -> list[Scored]:
    """mAP@50 of each fusion setting over the images (best first)."""
    scored = []
    for setting in settings:
        fused = [
            fuse_boxes([a, b], shape=shape, weights=setting.weights, iou_thr=setting.iou_thr, conf_type=setting.conf_type)
            for a, b, shape in per_image
        ]
        scored.append(Scored(setting, float(average_precision(fused, truth).ap)))
    return sorted(scored, key=lambda s: -s.map50)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Choose the WBF settings on a validation set")
    add_data_args(
        parser, default_split=None,
        split_help="part of the shared patient-hash split to tune on (default: val; a single PhantomCXR folder: all)",
    )
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: shipped)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--write-manifest", action="store_true", help="record the best setting in the manifest")
    return parser


def command_line(args: argparse.Namespace, sources: Sequence[Any], split: str, *, default_split: str) -> str:
    """The command that reproduces the tuning (``--data DIR`` alone for a whole PhantomCXR folder)."""
    from cxr_models.datasets.sources import describe

    parts = ["python -m cxr_models.evaluation.tune_fusion", describe(sources)]
    if args.split is not None or split != default_split:
        parts.append(f"--split {split}")
    if split != "all":
        parts.append(f"--val-fraction {args.val_fraction:g} --split-seed {args.split_seed}")
    if args.weights is not None:
        parts.append(f"--weights {args.weights}")
    return " ".join([*parts, "--write-manifest"])


def main(args: argparse.Namespace) -> list[Scored]:
    from cxr_models.datasets import load_image
    from cxr_models.inference.pipeline import Analyzer
    from cxr_models.weights import default_weights_dir
    from cxr_models.weights.export import read_or_create_manifest, write_manifest

    analyzer = Analyzer.load(weights_dir=args.weights, device=args.device)
    sources = parse_sources(args.data, default_format=args.format)
    split = resolve_tuning_split(args.split, sources)
    records, _ = select_records(sources, split=split, val_fraction=args.val_fraction, split_seed=args.split_seed)
    # Only frontal images with a box annotation have a say (a record with boxes None has no truth).
    records = [r for r in records if r.view in (None, "frontal") and r.boxes is not None]
    per_image, truth = [], []
    for recs in group_studies(records).values():
        images = [load_image(r) for r in recs]
        prediction = analyzer.analyze_study(images)
        for record, image, pred in zip(recs, images, prediction.images, strict=True):
            if not pred.analysed:
                continue
            by = pred.opacities_by_detector
            per_image.append((by.get("detector_a", ()), by.get("detector_b", ()), image.shape))
            truth.append(record.boxes or ())
    singles = {
        name: float(average_precision([p[i] for p in per_image], truth).ap) for i, name in enumerate(("detector_a", "detector_b"))
    }
    grid = [FusionSetting(w, i, c) for w, i, c in itertools.product(WEIGHT_GRID, IOU_GRID, CONF_TYPES)]
    scored = score_settings(per_image, truth, settings=grid)
    print(f"{len(per_image)} analysed images; single detectors: " + ", ".join(f"{k} {v:.4f}" for k, v in singles.items()))
    for s in scored[:15]:
        print(f"mAP@50 {s.map50:.4f}  weights {s.setting.weights}  iou {s.setting.iou_thr}  conf {s.setting.conf_type}")
    if args.write_manifest:
        weights_dir = args.weights or default_weights_dir()
        manifest = read_or_create_manifest(weights_dir)
        best = scored[0]
        specs = [s.spec() for s in sources]
        default_split = resolve_tuning_split(None, sources)
        manifest["fusion"] = {
            **asdict(best.setting),
            "weights": list(best.setting.weights),
            "validation_map50": round(best.map50, 4),
            "validation_single_map50": {k: round(v, 4) for k, v in singles.items()},
            # One source: its spec, as before ("data/val"); several: the list of specs.
            "validation_data": specs[0] if len(specs) == 1 else specs,
            "validation_images": len(per_image),
            "split": split_info(split, val_fraction=args.val_fraction, split_seed=args.split_seed),
            "command": command_line(args, sources, split, default_split=default_split),
        }
        path = write_manifest(weights_dir, manifest)
        print(f"wrote the fusion setting into {path}")
    return scored


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(get_args_parser().parse_args())
