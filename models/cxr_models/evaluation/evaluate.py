"""``cxr evaluate``: run the analyser over a labelled dataset and write metrics.json and report.md.

``python -m cxr_models.evaluation.evaluate --data DIR --out DIR [--weights DIR] [--format auto]
[--limit N] [--device auto] [--no-progress]``

The pure part is :func:`compute_metrics` (records + per-study outcomes -> metrics and curves). The
I/O part (:func:`evaluate_dataset`) reads the images, runs the analyser study by study, and reduces
each prediction right away to a :class:`StudyOutcome` (masks become overlap counts), so memory does
not grow with full-size masks over a large dataset.

Which images count where (``frontal`` means the reference view is ``frontal`` or unknown; every
supported box/mask dataset is a frontal-only collection):

* view accuracy: every image with a reference view;
* lung Dice: frontal images with a non-empty reference lung mask;
* opacity APs and the ``none`` AP: frontal images with a box annotation (``boxes`` not None);
* opacity % MAE and severity ROC: frontal images with a reference opacity % and a predicted one;
* opacity Dice: frontal images with a reference opacity mask;
* study metrics: studies with a reference label.

A frontal image the models did not analyse (predicted non-frontal) still counts: no boxes, an empty
mask. A labelled study without any predicted frontal image scores 0 for every class (ranked last,
wrong class) rather than being dropped.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_models.evaluation.metrics import (
    MaskOverlap,
    PrecisionRecall,
    accuracy,
    average_precision,
    confusion_matrix,
    macro_auc_ovr,
    mae,
    mask_overlap,
    mean_defined,
    none_scores,
    ranking_average_precision,
    roc_auc,
    roc_curve,
    siim_map,
    summarize_segmentation,
)
from cxr_models.evaluation.report import ConfusionData, ReportCurves, summary_rows, write_report
from cxr_models.records import STUDY_LABELS, VIEWS, ImageRecord, ScoredBox

if TYPE_CHECKING:
    from cxr_models.inference.pipeline import Analyzer, ImagePrediction, StudyPrediction

logger = logging.getLogger(__name__)

DETECTORS: tuple[str, ...] = ("detector_a", "detector_b")
# Reference opacity % cut points for the severity ROC: any opacity, and severe (≥ 25 % of the lungs).
# (metric suffix, plot label, cut point, whether the cut point itself is positive)
SEVERITY_CUTS: tuple[tuple[str, str, float, bool], ...] = (
    ("any", "opacity > 0 %", 0.0, False),
    ("severe", "opacity ≥ 25 %", 25.0, True),
)
SUMMARY_KEYS: tuple[str, ...] = (
    "view_accuracy",
    "lung_dice",
    "opacity_map50",
    "opacity_map50_detector_a",
    "opacity_map50_detector_b",
    "opacity_map50_no_crop",
    "none_ap",
    "study_map",
    "study_macro_auc",
    "siim_map",
    "opacity_percent_mae",
    "opacity_dice",
    "crop_fallback_rate",
)


@dataclass(frozen=True)
class ImageOutcome:
    """What the metrics need from one image's prediction; masks reduced to overlap counts.

    ``lung_overlap``/``opacity_overlap`` are None when the image has no reference mask.
    """

    view: str
    analysed: bool
    crop_fallback: bool
    opacities: tuple[ScoredBox, ...]
    opacities_by_detector: Mapping[str, tuple[ScoredBox, ...]]
    opacities_no_crop: tuple[ScoredBox, ...] | None
    opacity_percent: float | None
    lung_overlap: MaskOverlap | None = None
    opacity_overlap: MaskOverlap | None = None


# Picks one box source of an image outcome; None when that source was not produced for the image.
BoxSource = Callable[[ImageOutcome], tuple[ScoredBox, ...] | None]


@dataclass(frozen=True)
class StudyOutcome:
    """A study's predicted class and probabilities (None without a frontal image) and its images' outcomes."""

    label: str | None
    probabilities: Mapping[str, float] | None
    images: tuple[ImageOutcome, ...]


@dataclass(frozen=True)
class EvaluationResult:
    metrics: dict[str, Any]
    curves: ReportCurves
    manifest: dict[str, Any]


# --------------------------------------------------------------------------- grouping


def study_key(record: ImageRecord) -> str:
    """The study an image belongs to; an image without a study id is a study of its own."""
    return record.study_id if record.study_id is not None else record.image_id


def group_studies(records: Sequence[ImageRecord]) -> dict[str, list[ImageRecord]]:
    """Records grouped by study, studies sorted by key and images by image id (a stable order)."""
    groups: dict[str, list[ImageRecord]] = {}
    for record in sorted(records, key=lambda r: (study_key(r), r.image_id, str(r.path))):
        groups.setdefault(study_key(record), []).append(record)
    return groups


def limit_studies(groups: Mapping[str, list[ImageRecord]], limit: int | None) -> dict[str, list[ImageRecord]]:
    """Whole studies in order while the image count stays within ``limit`` (the first study always)."""
    if limit is None:
        return dict(groups)
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    kept: dict[str, list[ImageRecord]] = {}
    total = 0
    for key, recs in groups.items():
        if kept and total + len(recs) > limit:
            break
        kept[key] = recs
        total += len(recs)
    return kept


def _study_reference_label(key: str, records: Sequence[ImageRecord]) -> str | None:
    labels = {r.study_label for r in records if r.study_label is not None}
    if len(labels) > 1:
        raise ValueError(f"study {key!r} has conflicting study_label values {sorted(labels)}")
    return labels.pop() if labels else None


def _is_frontal(record: ImageRecord) -> bool:
    return record.view in (None, "frontal")


# --------------------------------------------------------------------------- prediction -> outcome


def _overlap(predicted: np.ndarray | None, truth: np.ndarray | None) -> MaskOverlap | None:
    if truth is None:
        return None
    if predicted is None:
        return MaskOverlap(intersection=0, predicted=0, truth=int(np.count_nonzero(truth)))
    return mask_overlap(predicted, truth)


def image_outcome(
    prediction: ImagePrediction,
    *,
    lung_truth: np.ndarray | None = None,
    opacity_truth: np.ndarray | None = None,
) -> ImageOutcome:
    """Reduce one :class:`ImagePrediction` against its reference masks (same shape as the prediction's)."""
    return ImageOutcome(
        view=prediction.view,
        analysed=bool(prediction.analysed),
        crop_fallback=bool(prediction.crop_fallback),
        opacities=tuple(prediction.opacities),
        opacities_by_detector={k: tuple(v) for k, v in prediction.opacities_by_detector.items()},
        opacities_no_crop=None if prediction.opacities_no_crop is None else tuple(prediction.opacities_no_crop),
        opacity_percent=None if prediction.opacity_percent is None else float(prediction.opacity_percent),
        lung_overlap=_overlap(prediction.lung_mask, lung_truth),
        opacity_overlap=_overlap(prediction.opacity_mask, opacity_truth),
    )


def study_outcome(
    prediction: StudyPrediction,
    *,
    lung_truth: Sequence[np.ndarray | None],
    opacity_truth: Sequence[np.ndarray | None],
) -> StudyOutcome:
    """Reduce a :class:`StudyPrediction`; ``lung_truth``/``opacity_truth`` are aligned with its images."""
    n = len(prediction.images)
    if len(lung_truth) != n or len(opacity_truth) != n:
        raise ValueError(
            f"lung_truth ({len(lung_truth)}) and opacity_truth ({len(opacity_truth)}) must match the "
            f"prediction's {n} images"
        )
    images = tuple(
        image_outcome(p, lung_truth=lt, opacity_truth=ot)
        for p, lt, ot in zip(prediction.images, lung_truth, opacity_truth, strict=True)
    )
    probabilities = None if prediction.probabilities is None else dict(prediction.probabilities)
    return StudyOutcome(label=prediction.label, probabilities=probabilities, images=images)


# --------------------------------------------------------------------------- metrics


def _detection_ap(
    pairs: Sequence[tuple[ImageRecord, ImageOutcome]],
    select: BoxSource,
) -> PrecisionRecall | None:
    """AP of the boxes ``select(outcome)`` returns (None = this source was not produced for the image).

    None when no analysed image produced the source (e.g. the ablation was not run).
    """
    produced = [select(o) for _, o in pairs]
    if not any(p is not None for (_, o), p in zip(pairs, produced, strict=True) if o.analysed):
        return None
    preds = [() if p is None else p for p in produced]
    return average_precision(preds, [r.boxes or () for r, _ in pairs])


def compute_metrics(
    records: Sequence[ImageRecord],
    predictions: Mapping[str, StudyOutcome],
) -> tuple[dict[str, Any], ReportCurves]:
    """Every metric and plot input from the records and the per-study outcomes.

    ``predictions`` maps :func:`study_key` to the study's outcome, whose images follow the order of
    :func:`group_studies`. Returns the flat metrics dictionary (scalars at the top level, sample
    counts under ``"n"``, dataset counts under ``"counts"``) and the curves for the report.
    """
    groups = group_studies(records)
    pairs: list[tuple[ImageRecord, ImageOutcome]] = []
    studies: list[tuple[str, str | None, StudyOutcome]] = []
    for key, recs in groups.items():
        if key not in predictions:
            raise ValueError(f"predictions has no entry for study {key!r}")
        outcome = predictions[key]
        if len(outcome.images) != len(recs):
            raise ValueError(
                f"study {key!r}: prediction has {len(outcome.images)} images, the records {len(recs)}"
            )
        pairs.extend(zip(recs, outcome.images, strict=True))
        studies.append((key, _study_reference_label(key, recs), outcome))

    metrics: dict[str, Any] = {}
    n: dict[str, int] = {}
    curves: dict[str, Any] = {}

    # View.
    viewed = [(r.view, o.view) for r, o in pairs if r.view is not None]
    metrics["view_accuracy"] = accuracy([t for t, _ in viewed], [p for _, p in viewed])
    n["view_accuracy"] = len(viewed)
    if viewed:
        curves["view_confusion"] = ConfusionData(
            VIEWS, confusion_matrix([t for t, _ in viewed], [p for _, p in viewed], VIEWS)
        )

    frontal = [(r, o) for r, o in pairs if _is_frontal(r)]

    # Lungs.
    lung = summarize_segmentation([o.lung_overlap for _, o in frontal if o.lung_overlap is not None])
    metrics["lung_dice"] = lung.dice_nonempty
    metrics["lung_iou"] = lung.iou_nonempty
    n["lung_dice"] = n["lung_iou"] = lung.n_nonempty

    # Detection.
    annotated = [(r, o) for r, o in frontal if r.boxes is not None]
    sources: dict[str, tuple[str, BoxSource]] = {
        "opacity_map50": ("ensemble", lambda o: o.opacities if o.analysed else None),
        "opacity_map50_detector_a": ("detector A", lambda o: o.opacities_by_detector.get("detector_a")),
        "opacity_map50_detector_b": ("detector B", lambda o: o.opacities_by_detector.get("detector_b")),
        "opacity_map50_no_crop": ("ensemble, no crop", lambda o: o.opacities_no_crop),
    }
    opacity_pr: dict[str, PrecisionRecall] = {}
    for key, (label, select) in sources.items():
        result = _detection_ap(annotated, select) if annotated else None
        metrics[key] = None if result is None else result.ap
        n[key] = len(annotated)
        if result is not None:
            opacity_pr[label] = result
    positives_none = [len(r.boxes or ()) == 0 for r, _ in annotated]
    none_result = ranking_average_precision(none_scores([o.opacities for _, o in annotated]), positives_none)
    metrics["none_ap"] = none_result.ap
    n["none_ap"] = len(annotated)

    # Study class.
    labelled = [(lab, o) for _, lab, o in studies if lab is not None]
    labels = [lab for lab, _ in labelled]
    probs = np.array(
        [[(o.probabilities or {}).get(c, 0.0) for c in STUDY_LABELS] for _, o in labelled], dtype=np.float64
    ).reshape(len(labelled), len(STUDY_LABELS))
    study_aps: dict[str, float | None] = {}
    study_roc = {}
    for k, c in enumerate(STUDY_LABELS):
        positives = [lab == c for lab in labels]
        study_aps[c] = ranking_average_precision(probs[:, k], positives).ap
        metrics[f"study_ap_{c}"] = study_aps[c]
        n[f"study_ap_{c}"] = int(sum(positives))
        if labelled:
            study_roc[c] = roc_curve(probs[:, k], positives)
    metrics["study_map"] = mean_defined(list(study_aps.values()))
    metrics["study_macro_auc"] = macro_auc_ovr(probs, labels, STUDY_LABELS) if labelled else None
    metrics["study_accuracy"] = accuracy(labels, [o.label for _, o in labelled])
    n["study_map"] = n["study_macro_auc"] = n["study_accuracy"] = len(labelled)
    classified = [(lab, o.label) for lab, o in labelled if o.label is not None]
    if classified:
        curves["study_confusion"] = ConfusionData(
            STUDY_LABELS, confusion_matrix([t for t, _ in classified], [p for _, p in classified], STUDY_LABELS)
        )
    metrics["image_map"] = mean_defined([metrics["opacity_map50"], metrics["none_ap"]])
    metrics["siim_map"] = siim_map(study_aps, opacity_ap=metrics["opacity_map50"], none_ap=metrics["none_ap"])

    # Opacity % (severity).
    with_percent = [(r, o) for r, o in frontal if r.opacity_percent is not None]
    measured = [(float(r.opacity_percent), o.opacity_percent) for r, o in with_percent if o.opacity_percent is not None]
    truth_pct = np.array([t for t, _ in measured], dtype=np.float64)
    pred_pct = np.array([p for _, p in measured], dtype=np.float64)
    metrics["opacity_percent_mae"] = mae(pred_pct, truth_pct)
    n["opacity_percent_mae"] = len(measured)
    severity_roc = {}
    for name, title, cut, inclusive in SEVERITY_CUTS:
        positives = truth_pct >= cut if inclusive else truth_pct > cut
        metrics[f"opacity_percent_auc_{name}"] = roc_auc(pred_pct, positives)
        n[f"opacity_percent_auc_{name}"] = len(measured)
        if measured:
            severity_roc[title] = roc_curve(pred_pct, positives)

    # Opacity masks.
    opacity = summarize_segmentation([o.opacity_overlap for _, o in frontal if o.opacity_overlap is not None])
    metrics["opacity_dice"] = opacity.dice_nonempty
    metrics["opacity_empty_agreement"] = opacity.empty_agreement
    metrics["opacity_dice_all"] = opacity.dice_all
    metrics["opacity_dice_pooled"] = opacity.dice_pooled
    n["opacity_dice"] = opacity.n_nonempty
    n["opacity_empty_agreement"] = opacity.n_empty
    n["opacity_dice_all"] = n["opacity_dice_pooled"] = opacity.n_images

    # Lung crop.
    analysed = [o for _, o in pairs if o.analysed]
    metrics["crop_fallback_rate"] = mean_defined([1.0 if o.crop_fallback else 0.0 for o in analysed])
    n["crop_fallback_rate"] = len(analysed)

    view_counts = Counter(r.view or "unknown" for r, _ in pairs)
    class_counts = Counter(labels)
    metrics["n"] = n
    metrics["counts"] = {
        "images": len(pairs),
        "studies": len(studies),
        "labelled_studies": len(labelled),
        "images_by_view": {v: view_counts.get(v, 0) for v in (*VIEWS, "unknown")},
        "studies_by_class": {c: class_counts.get(c, 0) for c in STUDY_LABELS},
        "images_with_box_annotation": len(annotated),
        "reference_boxes": sum(len(r.boxes or ()) for r, _ in annotated),
        "images_with_lung_mask": lung.n_images,
        "images_with_opacity_mask": opacity.n_images,
        "images_with_opacity_percent": len(with_percent),
        "images_without_predicted_opacity_percent": len(with_percent) - len(measured),
        "analysed_images": len(analysed),
        "crop_fallbacks": sum(1 for o in analysed if o.crop_fallback),
        "labelled_studies_without_frontal_prediction": sum(1 for _, o in labelled if o.probabilities is None),
    }
    report_curves = ReportCurves(
        opacity_pr=opacity_pr,
        view_confusion=curves.get("view_confusion"),
        study_confusion=curves.get("study_confusion"),
        study_roc=study_roc,
        severity_roc=severity_roc,
        opacity_percent_truth=truth_pct if measured else None,
        opacity_percent_predicted=pred_pct if measured else None,
    )
    return metrics, report_curves


# --------------------------------------------------------------------------- I/O


def evaluate_dataset(
    data: Path,
    *,
    weights: Path | None = None,
    data_format: str = "auto",
    limit: int | None = None,
    device: str = "auto",
    show_progress: bool = True,
    analyzer: Analyzer | None = None,
) -> EvaluationResult:
    """Read the dataset, run the analyser on every study and compute the metrics.

    ``analyzer`` defaults to ``Analyzer.load(weights_dir=weights, device=device)``; pass one to reuse
    loaded models (any object with ``manifest`` and ``analyze_study(images, no_crop_ablation=...)``).
    The dataset readers and the analyser are imported here, not at module level, so the pure
    metric code imports without the model stack.
    """
    from cxr_models.datasets import load_image, load_lung_mask, load_opacity_mask, read_dataset
    from cxr_models.train.common import progress

    records = read_dataset(Path(data), format=data_format)
    if not records:
        raise ValueError(f"data {str(data)!r} holds no image records (format {data_format!r})")
    groups = limit_studies(group_studies(records), limit)
    kept = [r for recs in groups.values() for r in recs]
    logger.info("evaluating %d images in %d studies from %s", len(kept), len(groups), data)

    if analyzer is None:
        from cxr_models.inference.pipeline import Analyzer

        analyzer = Analyzer.load(weights_dir=weights, device=device)
    outcomes: dict[str, StudyOutcome] = {}
    for key, recs in progress(groups.items(), desc="evaluate", total=len(groups), disable=not show_progress):
        images = [load_image(r) for r in recs]
        prediction = analyzer.analyze_study(images, no_crop_ablation=True)
        if len(prediction.images) != len(images):
            raise RuntimeError(f"study {key!r}: analyser returned {len(prediction.images)} results for {len(images)} images")
        lung_truth = [load_lung_mask(r, shape=img.shape) for r, img in zip(recs, images, strict=True)]
        opacity_truth = [load_opacity_mask(r, shape=img.shape) for r, img in zip(recs, images, strict=True)]
        outcomes[key] = study_outcome(prediction, lung_truth=lung_truth, opacity_truth=opacity_truth)

    metrics, curves = compute_metrics(kept, outcomes)
    manifest = dict(analyzer.manifest)
    metrics["model_version"] = manifest.get("version")
    metrics["data"] = {"root": str(data), "format": data_format, "limit": limit}
    return EvaluationResult(metrics=metrics, curves=curves, manifest=manifest)


def _json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_metrics(out_dir: Path, metrics: Mapping[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "metrics.json"
    path.write_text(json.dumps(_json_ready(metrics), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate the cxr models on a labelled dataset")
    parser.add_argument("--data", type=Path, required=True, help="dataset root (PhantomCXR or a supported layout)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for metrics.json, report.md and plots")
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: shipped weights)")
    parser.add_argument("--format", default="auto", help="dataset layout: auto, siim, rsna, lungmasks, padchest")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images (whole studies, in order)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = evaluate_dataset(
        args.data,
        weights=args.weights,
        data_format=args.format,
        limit=args.limit,
        device=args.device,
        show_progress=not args.no_progress,
    )
    metrics_path = write_metrics(args.out, result.metrics)
    report_path = write_report(args.out, result.metrics, result.curves, manifest=result.manifest)
    counts = result.metrics["counts"]
    print(f"cxr evaluate: {counts['images']} images, {counts['studies']} studies, weights {result.metrics['model_version']}")
    rows = summary_rows(result.metrics, SUMMARY_KEYS)
    width = max(len(title) for title, _ in rows)
    for title, value in rows:
        print(f"  {title:<{width}}  {value}")
    print(f"wrote {metrics_path} and {report_path}")
    return result.metrics


if __name__ == "__main__":
    main(get_args_parser().parse_args())
