"""Fit the out-of-distribution Gaussian of the pipeline and choose its threshold on validation images.

``python -m cxr_models.evaluation.fit_ood --data SPEC [--data SPEC ...] [--val-fraction 0.2]
[--split-seed 0] [--weights DIR] [--quantile 0.99] [--device auto] [--write-manifest]``

``--data`` takes ``PATH[,format=F][,weight=W][,name=N]`` specs (:mod:`cxr_models.datasets.sources`)
and the records are split into train and validation parts by the shared patient hash of
:func:`cxr_models.train.data.select_split` (the trainers' split). The Gaussian
(:mod:`cxr_models.inference.ood`) is fitted on the view network's penultimate features of the
TRAIN part's frontal chest images (``record.view == "frontal"``) of every source; the threshold is
the ``--quantile`` of the scores of the VALIDATION part's frontal images (real and synthetic
together). The printed JSON reports how many validation frontal, lateral and ``other`` (non-chest)
images score above it, and how many lateral and ``other`` images of both parts do (they are never
fitted on). ``--write-manifest`` writes ``ood.pt`` into the weights folder and records it,
its sha256 and the report under the manifest key ``"ood"``, where
:class:`cxr_models.inference.pipeline.Analyzer` reads it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cxr_models.datasets.sources import DataSource, as_sources, describe, read_sources, source_argument
from cxr_models.inference.ood import OOD_FILE, GaussianScorer, fit_gaussian
from cxr_models.inference.view import FEATURES_NAME, ViewClassifier
from cxr_models.records import VIEWS, ImageRecord
from cxr_models.train.data import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, select_split
from cxr_models.weights import OOD_KEY, default_weights_dir, load_manifest, load_state_dict, sha256_of

logger = logging.getLogger(__name__)

DEFAULT_QUANTILE = 0.99
CHUNK = 64


def _chunks(items: Sequence[ImageRecord], size: int) -> Iterator[Sequence[ImageRecord]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def view_features(
    classifier: ViewClassifier, records: Sequence[ImageRecord], *, progress: bool = False, desc: str = "features"
) -> tuple[np.ndarray, list[str]]:
    """The penultimate view features (N, D) of ``records`` and the view the model predicts for each."""
    from cxr_models.datasets import load_image

    features: list[np.ndarray] = []
    labels: list[str] = []
    bar = tqdm(total=len(records), desc=desc, disable=not progress)
    for chunk in _chunks(records, CHUNK):
        predictions = classifier.predict([load_image(r) for r in chunk])
        for p in predictions:
            if p.features is None:
                raise ValueError("the view network gives no penultimate features")
            features.append(p.features)
            labels.append(p.label)
        bar.update(len(chunk))
    bar.close()
    dim = int(getattr(getattr(classifier.model, "head", None), "in_features", 0))
    return (np.stack(features) if features else np.zeros((0, dim), np.float32)), labels


def rejection_rate(scores: np.ndarray, threshold: float) -> float | None:
    """Fraction of ``scores`` above ``threshold`` (None for no scores)."""
    return None if scores.size == 0 else float(np.mean(scores > threshold))


def _by_source(records: Sequence[ImageRecord]) -> dict[str, int]:
    return dict(sorted(Counter(r.source or "" for r in records).items()))


def fit_and_report(
    records: Sequence[ImageRecord],
    classifier: ViewClassifier,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    split_seed: int = DEFAULT_SPLIT_SEED,
    quantile: float = DEFAULT_QUANTILE,
    progress: bool = False,
) -> tuple[GaussianScorer, dict[str, Any]]:
    """Fit on the train part's frontal images, threshold on the validation part's; the report
    holds the threshold, the counts and the rejection rates (see the module doc)."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    train = select_split(records, split="train", val_fraction=val_fraction, split_seed=split_seed)
    val = select_split(records, split="val", val_fraction=val_fraction, split_seed=split_seed)
    train_frontal = [r for r in train if r.view == "frontal"]
    val_by_view = {view: [r for r in val if r.view == view] for view in VIEWS}
    if len(train_frontal) < 2:
        raise ValueError(f"the train part has {len(train_frontal)} frontal image(s); at least 2 are needed")
    if not val_by_view["frontal"]:
        raise ValueError("the validation part has no frontal image to choose the threshold on")
    fit_features, _ = view_features(classifier, train_frontal, progress=progress, desc="train frontal")
    scorer = fit_gaussian(fit_features, name=FEATURES_NAME)
    scores: dict[str, np.ndarray] = {}
    predicted: dict[str, list[str]] = {}
    for view, part in val_by_view.items():
        feats, predicted[view] = view_features(classifier, part, progress=progress, desc=f"val {view}")
        scores[view] = scorer.scores(feats) if len(part) else np.zeros(0)
    # Rounded as recorded, so the rates below are those of the recorded threshold.
    threshold = round(float(np.quantile(scores["frontal"], quantile)), 4)
    rates: dict[str, Any] = {f"val_{view}": rejection_rate(scores[view], threshold) for view in VIEWS}
    # Lateral and non-chest images are never fitted on: those of the train part are fair tests too.
    train_unfitted = {view: [r for r in train if r.view == view] for view in ("lateral", "other")}
    for view, part in train_unfitted.items():
        feats, _ = view_features(classifier, part, progress=progress, desc=f"train {view}")
        both = np.concatenate([scores[view], scorer.scores(feats) if len(part) else np.zeros(0)])
        rates[f"all_{view}"] = rejection_rate(both, threshold)
    # Not analysed at all (view not frontal, or out of distribution), as the pipeline decides it.
    refused = {
        f"val_{view}": (
            None
            if not len(part)
            else float(np.mean([(label != "frontal") or (s > threshold) for label, s in zip(predicted[view], scores[view], strict=True)]))
        )
        for view, part in val_by_view.items()
    }
    frontal_by_source = {
        source: rejection_rate(
            np.array([s for r, s in zip(val_by_view["frontal"], scores["frontal"], strict=True) if (r.source or "") == source]),
            threshold,
        )
        for source in _by_source(val_by_view["frontal"])
    }
    report = {
        "features": FEATURES_NAME,
        "dim": scorer.dim,
        "shrinkage": round(scorer.shrinkage, 6),
        "threshold": threshold,
        "threshold_rule": (
            f"{quantile:g} quantile of the OOD scores of the validation part's frontal images "
            f"(patient-hash split, val fraction {val_fraction:g}, split seed {split_seed})"
        ),
        "fitted_on": {
            "train_frontal": len(train_frontal),
            "train_frontal_by_source": _by_source(train_frontal),
            "val_frontal": len(val_by_view["frontal"]),
            "val_frontal_by_source": _by_source(val_by_view["frontal"]),
            "val_lateral": len(val_by_view["lateral"]),
            "val_other": len(val_by_view["other"]),
            "all_lateral": len(val_by_view["lateral"]) + len(train_unfitted["lateral"]),
            "all_other": len(val_by_view["other"]) + len(train_unfitted["other"]),
            "val_fraction": val_fraction,
            "split_seed": split_seed,
        },
        "rejection_rate": {**rates, "val_frontal_by_source": frontal_by_source},
        "not_analysed_rate_view_or_ood": refused,
        "score_quantiles": {
            view: {q: round(float(np.quantile(s, float(q))), 4) for q in ("0.5", "0.9", "0.99")}
            for view, s in scores.items()
            if s.size
        },
    }
    return scorer, report


def write_ood_weights(weights_dir: Path, scorer: GaussianScorer, *, info: dict[str, Any]) -> dict[str, Any]:
    """Write ``ood.pt`` into ``weights_dir`` and record it under the manifest's ``"ood"`` key.

    ``info`` must hold ``threshold``; the entry gets ``file``, ``sha256``, ``bytes``, ``features``
    and the view model's UID (the features' model) on top. Returns the entry.
    """
    from cxr_models.weights.export import read_or_create_manifest, write_manifest

    if "threshold" not in info:
        raise ValueError("info must hold the threshold")
    weights_dir.mkdir(parents=True, exist_ok=True)
    target = weights_dir / OOD_FILE
    tmp = target.with_suffix(".pt.tmp")
    torch.save(scorer.state_dict(), tmp)
    os.replace(tmp, target)
    manifest = read_or_create_manifest(weights_dir)
    entry = {
        **info,
        "file": target.name,
        "sha256": sha256_of(target),
        "bytes": target.stat().st_size,
        "features": scorer.features,
        "view_uid": manifest.get("models", {}).get("view", {}).get("uid"),
    }
    manifest[OOD_KEY] = entry
    write_manifest(weights_dir, manifest)
    logger.info("wrote %s (sha256 %s) and its manifest entry, threshold %.4f", target, entry["sha256"][:12], entry["threshold"])
    return entry


def command_line(sources: Sequence[DataSource], args: argparse.Namespace) -> str:
    """The command that reproduces this fit."""
    parts = ["python -m cxr_models.evaluation.fit_ood", describe(sources)]
    if args.format != "auto":
        parts.append(f"--format {args.format}")
    parts.append(f"--val-fraction {args.val_fraction:g} --split-seed {args.split_seed} --quantile {args.quantile:g}")
    if args.weights is not None:
        parts.append(f"--weights {args.weights}")
    parts.append("--write-manifest")
    return " ".join(parts)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Fit the OOD Gaussian on training frontals and threshold it on validation frontals")
    parser.add_argument(
        "--data", action="append", type=source_argument, required=True, metavar="SPEC",
        help="PATH[,format=F][,weight=W][,name=N]; repeat for several sources",
    )  # fmt: skip
    parser.add_argument("--format", default="auto", help="default layout of the --data sources")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    parser.add_argument("--split-seed", type=int, default=DEFAULT_SPLIT_SEED)
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: shipped)")
    parser.add_argument("--quantile", type=float, default=DEFAULT_QUANTILE, help="of the validation frontal scores")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--write-manifest", action="store_true", help="write ood.pt and the manifest's \"ood\" entry")
    parser.add_argument("--no-progress", action="store_true", help="disable the progress bars")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    from cxr_models.devices import resolve_device

    weights_dir = args.weights or default_weights_dir()
    manifest = load_manifest(weights_dir)
    device = resolve_device(args.device)
    classifier = ViewClassifier.from_state_dict(load_state_dict("view", weights_dir=weights_dir, manifest=manifest), device=device)
    sources = as_sources(args.data, default_format=args.format)
    records = read_sources(sources)
    scorer, report = fit_and_report(
        records, classifier, val_fraction=args.val_fraction, split_seed=args.split_seed, quantile=args.quantile,
        progress=not args.no_progress,
    )  # fmt: skip
    report["command"] = command_line(sources, args)
    print(json.dumps(report, indent=2))
    if args.write_manifest:
        entry = write_ood_weights(weights_dir, scorer, info=report)
        print(f"wrote {weights_dir / entry['file']} and the manifest's {OOD_KEY!r} entry")
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(get_args_parser().parse_args())
