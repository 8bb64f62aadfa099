"""Transfer check: how well do lung and view weights do on one part of some data sources?

    python -m cxr_models.evaluation.transfer --data ../shared/realcxr/covid-chestxray-dataset --split val \\
        --lungs NAME=PATH [--lungs NAME=PATH ...] [--view NAME=PATH ...]

Judges PhantomCXR changes by the real-validation score of models trained on synthetic data
only (the transfer ablation): each ``--lungs`` weights file gets its mean Dice over the frontal
images with a lung mask, each ``--view`` file its accuracy and per-view recall over the images
with a view. Prints one JSON object; ``--out FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cxr_models.datasets import load_image, load_lung_mask
from cxr_models.datasets.sources import as_sources, read_sources
from cxr_models.devices import resolve_device
from cxr_models.nets.common import load_weights_file
from cxr_models.records import VIEWS, ImageRecord
from cxr_models.train.data import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, SPLITS, select_split

logger = logging.getLogger(__name__)


def named_path(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` (or a bare path, named after its parent folder)."""
    name, sep, path = text.partition("=")
    if not sep:
        return Path(text).parent.name or text, Path(text)
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    total = int(predicted.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * float((predicted & truth).sum()) / total


def lung_dice(weights: Path, records: list[ImageRecord], *, device: str) -> dict[str, Any]:
    from cxr_models.inference.lungs import LungSegmenter

    segmenter = LungSegmenter.from_state_dict(load_weights_file(weights), device=resolve_device(device))
    scores = []
    for record in records:
        image = load_image(record)
        truth = load_lung_mask(record, shape=image.shape)
        assert truth is not None
        scores.append(dice(segmenter.predict([image])[0].mask, truth))
    return {"dice": float(np.mean(scores)) if scores else None, "n": len(scores)}


def view_accuracy(weights: Path, records: list[ImageRecord], *, device: str) -> dict[str, Any]:
    from cxr_models.inference.view import ViewClassifier

    classifier = ViewClassifier.from_state_dict(load_weights_file(weights), device=resolve_device(device))
    predicted = [p.label for p in classifier.predict([load_image(r) for r in records])] if records else []
    truth = [r.view for r in records]
    out: dict[str, Any] = {
        "accuracy": float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)])) if records else None,
        "n": len(records),
    }
    for view in VIEWS:
        rows = [p == t for p, t in zip(predicted, truth, strict=True) if t == view]
        if rows:
            out[f"recall_{view}"] = float(np.mean(rows))
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Lung Dice / view accuracy of weights files on a data split")
    parser.add_argument("--data", action="append", required=True, metavar="SPEC", help="data source (repeatable)")
    parser.add_argument("--split", choices=SPLITS, default="val")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    parser.add_argument("--split-seed", type=int, default=DEFAULT_SPLIT_SEED)
    parser.add_argument("--lungs", type=named_path, action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--view", type=named_path, action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    if not args.lungs and not args.view:
        raise ValueError("give at least one --lungs or --view weights file")
    records = select_split(
        read_sources(as_sources(args.data)), split=args.split, val_fraction=args.val_fraction, split_seed=args.split_seed
    )
    lung_records = [r for r in records if r.view == "frontal" and r.lung_mask]
    view_records = [r for r in records if r.view is not None]
    result: dict[str, Any] = {
        "data": list(args.data), "split": args.split, "val_fraction": args.val_fraction, "split_seed": args.split_seed,
        "lungs": {name: lung_dice(path, lung_records, device=args.device) for name, path in args.lungs},
        "view": {name: view_accuracy(path, view_records, device=args.device) for name, path in args.view},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(get_args_parser().parse_args())
