"""Pointing game: does a heatmap's maximum fall inside the true opacity?

``python -m cxr_models.evaluation.pointing_game --data PATH[,format=F] [--data ...] --out DIR
[--target abnormal|predicted] [--split all|train|val] [--weights DIR] [--device auto] [--limit N]
[--no-progress]``

For every frontal image that the models analyse and whose reference opacity mask is not empty,
each heatmap is scored with the pointing-game rule (Zhang et al., "Top-down neural attention by
excitation backprop", ECCV 2016, without their 15-pixel tolerance): a hit when the heatmap's
maximum lies inside the mask. When several pixels share the maximum, the hit counts as the share
of them inside the mask (the expected hit of a random tie break), so a uniform map (every pixel a
maximum) scores exactly the share of the image the mask covers: that is the chance level a
heatmap must beat. The maps scored:

- ``integrated_gradients`` and ``grad_cam``: the two attributions of the study classifier
  (:mod:`cxr_models.inference.attribution`, target ``--target``), computed from the same model
  inputs as the pipeline's;
- ``opacity``: the opacity model's probability map (``ImagePrediction.opacity_probability``).

Two chance levels are reported: ``uniform`` (a uniform map over the image: |mask| / |image|) and
``uniform_crop`` (a uniform map over the lung crop both heatmaps are confined to:
|mask ∩ crop| / |crop|), with the one-sided p-value of the observed hits under each (the number of
hits of independent images with those per-image chances is Poisson-binomial). Writes
``pointing_game.json`` (totals and one row per image) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_models.evaluation.evaluate import add_data_args, group_studies, limit_studies, parse_sources, select_records

logger = logging.getLogger(__name__)

MAPS: tuple[str, ...] = ("integrated_gradients", "grad_cam", "opacity")
CHANCES: tuple[str, ...] = ("uniform", "uniform_crop")
# Pixels within this fraction of the maximum (of the map's range) count as the maximum.
TIE_TOLERANCE = 1e-6
RESULT_NAME = "pointing_game.json"


def maximum_pixels(heatmap: np.ndarray) -> np.ndarray:
    """Boolean mask of the pixels at the heatmap's maximum (ties within :data:`TIE_TOLERANCE`)."""
    heat = np.asarray(heatmap, dtype=np.float64)
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {heat.shape}")
    if not np.isfinite(heat).all():
        raise ValueError("heatmap has non-finite values")
    top, bottom = float(heat.max()), float(heat.min())
    return heat >= top - TIE_TOLERANCE * max(top - bottom, abs(top), 1e-12)


def hit(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """The pointing-game hit of one heatmap on one reference mask: the share of the heatmap's
    maximum pixels inside the mask (1 or 0 for a single maximum). ValueError for an empty mask
    or shapes that differ."""
    mask = np.asarray(mask, dtype=bool)
    if np.shape(heatmap) != mask.shape:
        raise ValueError(f"heatmap has shape {np.shape(heatmap)}, mask has shape {mask.shape}")
    if not mask.any():
        raise ValueError("the reference mask is empty: nothing to point at")
    top = maximum_pixels(heatmap)
    return float(np.count_nonzero(top & mask)) / float(np.count_nonzero(top))


def chance(mask: np.ndarray, support: np.ndarray | None = None) -> float:
    """The hit of a uniform map over ``support`` (default: the whole image): |mask ∩ support| / |support|."""
    mask = np.asarray(mask, dtype=bool)
    support = np.ones_like(mask) if support is None else np.asarray(support, dtype=bool)
    if support.shape != mask.shape:
        raise ValueError(f"support has shape {support.shape}, mask has shape {mask.shape}")
    n = int(np.count_nonzero(support))
    if n == 0:
        raise ValueError("the support of the uniform map is empty")
    return float(np.count_nonzero(mask & support)) / n


def at_least_probability(chances: Sequence[float], observed: float) -> float:
    """P(X >= observed) for X the number of successes of independent trials with success
    probabilities ``chances`` (Poisson-binomial, exact). ``observed`` may be fractional (tie
    shares); it is rounded up to a whole number of hits, so the p-value is never too small."""
    k = math.ceil(observed - 1e-9)
    distribution = np.zeros(len(chances) + 1)
    distribution[0] = 1.0
    for n, p in enumerate(chances, start=1):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"chances must lie in [0, 1], got {p}")
        distribution[1 : n + 1] = distribution[1 : n + 1] * (1.0 - p) + distribution[:n] * p
        distribution[0] *= 1.0 - p
    return float(min(1.0, max(0.0, distribution[max(k, 0) :].sum())))


@dataclass(frozen=True)
class ImageScore:
    """One image's hits (map name → hit) and chance levels (name → probability)."""

    image_id: str
    study_id: str
    hits: Mapping[str, float]
    chances: Mapping[str, float]
    mask_fraction: float


def summarize(scores: Sequence[ImageScore]) -> dict[str, Any]:
    """Hit rate of each map, the chance levels, each map's p-value against each chance level and
    how often it beats them (map → {"hit_rate", "hits", "p_vs_<chance>"}; "chance" → means)."""
    n = len(scores)
    summary: dict[str, Any] = {"n_images": n, "n_studies": len({s.study_id for s in scores})}
    if n == 0:
        return summary
    summary["chance"] = {c: float(np.mean([s.chances[c] for s in scores])) for c in CHANCES}
    maps = sorted({m for s in scores for m in s.hits})
    for name in maps:
        hits = [s.hits[name] for s in scores]
        entry: dict[str, Any] = {"hit_rate": float(np.mean(hits)), "hits": float(np.sum(hits))}
        for c in CHANCES:
            entry[f"p_vs_{c}"] = at_least_probability([s.chances[c] for s in scores], float(np.sum(hits)))
            entry[f"beats_{c}"] = entry["hit_rate"] > summary["chance"][c]
        summary[name] = entry
    return summary


def score_image(
    *, image_id: str, study_id: str, heatmaps: Mapping[str, np.ndarray], truth: np.ndarray, crop_support: np.ndarray
) -> ImageScore:
    """The pointing-game hits of each heatmap and both chance levels for one image."""
    return ImageScore(
        image_id=image_id,
        study_id=study_id,
        hits={name: hit(heat, truth) for name, heat in heatmaps.items()},
        chances={"uniform": chance(truth), "uniform_crop": chance(truth, crop_support)},
        mask_fraction=float(np.mean(truth)),
    )


def crop_support(shape: tuple[int, int], box: Any | None) -> np.ndarray:
    """Boolean mask of the lung-crop rectangle (the whole image without one)."""
    support = np.zeros(shape, dtype=bool)
    if box is None:
        support[:] = True
        return support
    y0, y1 = int(round(box.y0)), int(round(box.y1))
    x0, x1 = int(round(box.x0)), int(round(box.x1))
    support[y0:y1, x0:x1] = True
    return support


def run_pointing_game(
    data: Any,
    *,
    target: str = "abnormal",
    weights: Path | None = None,
    device: str = "auto",
    split: str = "all",
    val_fraction: float = 0.2,
    split_seed: int = 0,
    limit: int | None = None,
    show_progress: bool = True,
    analyzer: Any | None = None,
) -> dict[str, Any]:
    """Run the analyser over the data and score every heatmap of :data:`MAPS` (module docstring)."""
    from cxr_models.datasets import load_image, load_opacity_mask
    from cxr_models.inference.attribution import attribute
    from cxr_models.inference.study import StudyImageInput
    from cxr_models.records import Box
    from cxr_models.train.common import progress

    sources = parse_sources(data)
    records, _ = select_records(sources, split=split, val_fraction=val_fraction, split_seed=split_seed)
    groups = limit_studies(group_studies(records), limit)
    if analyzer is None:
        from cxr_models.inference.pipeline import Analyzer

        analyzer = Analyzer.load(weights_dir=weights, device=device)
    scores: list[ImageScore] = []
    excluded = {"not_frontal_reference": 0, "no_reference_opacity": 0, "not_analysed": 0}
    for key, recs in progress(groups.items(), desc="pointing game", total=len(groups), disable=not show_progress):
        images = [load_image(r) for r in recs]
        prediction = analyzer.analyze_study(images)
        analysed = [(i, p) for i, p in enumerate(prediction.images) if p.analysed]
        attributions: dict[int, dict[str, np.ndarray]] = {i: {} for i, _ in analysed}
        if analysed:
            inputs = [
                StudyImageInput(
                    image=images[i],
                    lung_mask=p.lung_mask,
                    opacity_probability=p.opacity_probability,
                    crop=p.lung_box or Box(0.0, 0.0, float(images[i].shape[1]), float(images[i].shape[0])),
                )
                for i, p in analysed
            ]
            for method in ("integrated_gradients", "grad_cam"):
                result = attribute(analyzer.study, inputs, method=method, target=target)
                for (i, _), m in zip(analysed, result.maps, strict=True):
                    attributions[i][method] = m
        for index, (record, image, pred) in enumerate(zip(recs, images, prediction.images, strict=True)):
            if record.view not in (None, "frontal"):
                excluded["not_frontal_reference"] += 1
                continue
            truth = load_opacity_mask(record, shape=image.shape)
            if truth is None or not truth.any():
                excluded["no_reference_opacity"] += 1
                continue
            if not pred.analysed or pred.opacity_probability is None:
                excluded["not_analysed"] += 1
                continue
            scores.append(
                score_image(
                    image_id=record.image_id,
                    study_id=key,
                    heatmaps={**attributions[index], "opacity": pred.opacity_probability},
                    truth=truth,
                    crop_support=crop_support(image.shape, pred.lung_box),
                )
            )
    summary = summarize(scores)
    return {
        "target": target,
        "model_version": str(dict(analyzer.manifest).get("version")),
        "data": [s.spec() for s in sources],
        "split": split,
        "rule": "hit = share of the heatmap's maximum pixels inside the reference opacity mask (no tolerance)",
        "summary": summary,
        "excluded": excluded,
        "images": [asdict(s) for s in scores],
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Pointing game of the Grad-CAM and opacity heatmaps")
    add_data_args(parser, default_split="all", split_help="which part of the shared patient-hash split (default: all)")
    parser.add_argument("--out", type=Path, required=True, help=f"output folder for {RESULT_NAME}")
    parser.add_argument("--target", choices=("abnormal", "predicted"), default="abnormal", help="the Grad-CAM target")
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: shipped weights)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images (whole studies, in order)")
    parser.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run_pointing_game(
        args.data,
        target=args.target,
        weights=args.weights,
        device=args.device,
        split=args.split,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        limit=args.limit,
        show_progress=not args.no_progress,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / RESULT_NAME
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    summary = result["summary"]
    print(f"pointing game over {summary['n_images']} images of {summary['n_studies']} studies (target {args.target})")
    for name, level in summary.get("chance", {}).items():
        print(f"  chance ({name}): {level:.3f}")
    for name in MAPS:
        if name in summary:
            entry = summary[name]
            print(
                f"  {name}: hit rate {entry['hit_rate']:.3f} ({entry['hits']:.1f} hits); p vs uniform "
                f"{entry['p_vs_uniform']:.2g}, vs uniform over the crop {entry['p_vs_uniform_crop']:.2g}"
            )
    print(f"excluded: {result['excluded']}; wrote {path}")
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
