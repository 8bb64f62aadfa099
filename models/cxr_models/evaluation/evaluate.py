"""``cxr evaluate``: run the analyser over a labelled dataset and write metrics.json and report.md.

``python -m cxr_models.evaluation.evaluate --data PATH[,format=F][,weight=W] [--data ...] --out DIR
[--split all|train|val] [--val-fraction 0.2] [--split-seed 0] [--reporting-threshold S]
[--weights DIR] [--baseline-weights DIR] [--bootstrap 1000] [--format auto] [--limit N]
[--device auto] [--no-progress]``

``--data`` repeats to evaluate several sources at once (see :mod:`cxr_models.datasets.sources`);
``--split`` keeps only one part of the shared patient-hash split of
:func:`cxr_models.train.data.select_split`, so ``--split val`` measures on exactly the images the
trainers held out.

The pure part is :func:`measure` (records + per-study outcomes -> metrics, curves and the bootstrap
statistics behind the 95 % intervals; :func:`compute_metrics` without the statistics), and
:func:`compare_measurements` pairs two measurements of the same records. The I/O part
(:func:`evaluate_dataset`) reads the images, runs the analyser study by study, and reduces
each prediction right away to a :class:`StudyOutcome` (masks become overlap counts), so memory does
not grow with full-size masks over a large dataset.

Which images count where (``frontal`` means the reference view is ``frontal`` or unknown; every
supported box/mask dataset is a frontal-only collection):

* view accuracy: every image with a reference view;
* lung Dice: frontal images with a non-empty reference lung mask;
* opacity APs and the ``none`` AP: frontal images with a box annotation (``boxes`` not None);
* opacity % MAE and severity ROC: frontal images with a reference opacity % and a predicted one;
* opacity Dice: frontal images with a reference opacity mask;
* study metrics: studies with a reference label;
* per-view recall (``view_accuracy_<view>``): images whose reference view is that view;
* normal/abnormal AUC: studies where some image carries ``abnormal`` (the study is abnormal when
  any image is), scored by 1 − P(negative) of the study classifier;
* opacity % Spearman ρ: frontal images with a reference ``severity`` and a predicted opacity %;
* false boxes per negative image: frontal images annotated as having no opacity (``boxes == ()``),
  counting fused boxes with score ≥ the reporting threshold;
* analysed rate and reasons: every frontal image.

Every metric uses only the records that carry its label (a record with ``boxes`` None adds nothing
to mAP, one with ``abnormal`` None nothing to the AUC); ``metrics["n"]`` holds the images (or
studies) each metric used and ``metrics["n_positive"]`` their positives.

A frontal image the models did not analyse (predicted non-frontal, or refused) still counts: no
boxes, an empty mask. A labelled study without any predicted frontal image scores 0 for every class
(ranked last, wrong class) and 0 for "abnormal" (nothing reported) rather than being dropped.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_models.evaluation.intervals import (
    DEFAULT_RESAMPLES,
    BootstrapSettings,
    Statistic,
    ap_difference_statistic,
    ap_statistic,
    auc_statistic,
    bootstrap_interval,
    dice_statistic,
    difference_statistic,
    macro_auc_statistic,
    mean_statistic,
    spearman_statistic,
)
from cxr_models.evaluation.metrics import (
    ImageMatches,
    MaskOverlap,
    PrecisionRecall,
    accuracy,
    average_precision_of,
    boxes_per_image,
    confusion_matrix,
    counts_at_threshold,
    macro_auc_ovr,
    mae,
    mask_overlap,
    match_images,
    mean_defined,
    none_scores,
    ranking_average_precision,
    roc_auc,
    roc_curve,
    siim_map,
    spearman,
    summarize_segmentation,
)
from cxr_models.evaluation.report import ConfusionData, ReportCurves, comparison_rows, summary_rows, write_report
from cxr_models.records import STUDY_LABELS, VIEWS, ImageRecord, ScoredBox
from cxr_models.train.data import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, SPLITS, select_split

if TYPE_CHECKING:
    from cxr_models.datasets.sources import DataSource
    from cxr_models.inference.pipeline import Analyzer, ImagePrediction, StudyPrediction

logger = logging.getLogger(__name__)

DETECTORS: tuple[str, ...] = ("detector_a", "detector_b")
# Reference opacity % cut points for the severity ROC: any opacity, and severe (≥ 25 % of the lungs).
# (metric suffix, plot label, cut point, whether the cut point itself is positive)
SEVERITY_CUTS: tuple[tuple[str, str, float, bool], ...] = (
    ("any", "opacity > 0 %", 0.0, False),
    ("severe", "opacity ≥ 25 %", 25.0, True),
)
# Fused-box score from which a box is shown to the reader, when the manifest has no "reporting_threshold".
DEFAULT_REPORTING_THRESHOLD = 0.3
# Name of the generator manifest PhantomCXR writes into each dataset it generates
# (cxr_models.phantom.generate.MANIFEST; not imported so this module stays light).
PHANTOM_MANIFEST = "phantom.json"
SUMMARY_KEYS: tuple[str, ...] = (
    "view_accuracy",
    "view_accuracy_frontal",
    "view_accuracy_lateral",
    "analysed_rate",
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
    "normal_abnormal_auc",
    "opacity_percent_spearman",
    "false_boxes_per_negative",
    "opacity_recall_at_reporting_threshold",
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
    reason: str | None = None


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


def _study_abnormal(records: Sequence[ImageRecord]) -> bool | None:
    """Abnormal when any image is, normal when some image is normal and none abnormal, else unknown."""
    flags = [r.abnormal for r in records if r.abnormal is not None]
    if not flags:
        return None
    return any(flags)


def reason_prefix(outcome: ImageOutcome) -> str:
    """Why an image was not analysed, as the part of its reason before the details: before the first
    ':' or ' (' (``no plausible lung fields: ...``, ``image unlike the training data (score ...)``).

    Without a reason (an analyser that does not give one) a frontal the view model took for
    another view reads ``predicted <view>``.
    """
    if outcome.reason:
        head = re.split(r":| \(", outcome.reason, maxsplit=1)[0].strip()
        return head or outcome.reason
    if outcome.view != "frontal":
        return f"predicted {outcome.view}"
    return "unknown"


def reporting_threshold_of(manifest: Mapping[str, Any] | None, override: float | None = None) -> float:
    """The fused-box reporting threshold: ``override``, else the manifest's
    ``"reporting_threshold"``/``"score"``, else :data:`DEFAULT_REPORTING_THRESHOLD`."""
    if override is not None:
        return float(override)
    chosen = (manifest or {}).get("reporting_threshold")
    if isinstance(chosen, Mapping) and chosen.get("score") is not None:
        return float(chosen["score"])
    return DEFAULT_REPORTING_THRESHOLD


def _source_name(record: ImageRecord) -> str:
    return record.source if record.source is not None else "unknown"


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
        reason=getattr(prediction, "reason", None),
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


def _detection_matches(
    pairs: Sequence[tuple[ImageRecord, ImageOutcome]],
    select: BoxSource,
) -> list[ImageMatches] | None:
    """Each image's boxes ``select(outcome)`` (None = this source was not produced for the image)
    matched against its reference boxes.

    None when no analysed image produced the source (e.g. the ablation was not run).
    """
    produced = [select(o) for _, o in pairs]
    if not any(p is not None for (_, o), p in zip(pairs, produced, strict=True) if o.analysed):
        return None
    preds = [() if p is None else p for p in produced]
    return match_images(preds, [r.boxes or () for r, _ in pairs])


@dataclass(frozen=True)
class Measurement:
    """What :func:`measure` gives: the metrics, the report curves, and each interval metric's
    bootstrap statistic with its number of units (images, studies or pairs, in record order, so
    two measurements of the same records resample the same units)."""

    metrics: dict[str, Any]
    curves: ReportCurves
    statistics: dict[str, tuple[Statistic, int]]


def compute_metrics(
    records: Sequence[ImageRecord],
    predictions: Mapping[str, StudyOutcome],
    *,
    reporting_threshold: float = DEFAULT_REPORTING_THRESHOLD,
    bootstrap: BootstrapSettings | None = None,
) -> tuple[dict[str, Any], ReportCurves]:
    """The metrics and report curves of :func:`measure`."""
    measurement = measure(records, predictions, reporting_threshold=reporting_threshold, bootstrap=bootstrap)
    return measurement.metrics, measurement.curves


def measure(
    records: Sequence[ImageRecord],
    predictions: Mapping[str, StudyOutcome],
    *,
    reporting_threshold: float = DEFAULT_REPORTING_THRESHOLD,
    bootstrap: BootstrapSettings | None = None,
) -> Measurement:
    """Every metric and plot input from the records and the per-study outcomes.

    ``predictions`` maps :func:`study_key` to the study's outcome, whose images follow the order of
    :func:`group_studies`. ``reporting_threshold`` is the fused-box score from which a box is shown
    (false boxes per negative image and recall at that threshold). ``bootstrap`` sets the
    resampling of the intervals (:mod:`cxr_models.evaluation.intervals`; default 1000 resamples,
    seed 0). Returns the flat metrics dictionary (scalars at the top level, sample counts under
    ``"n"``, positives under ``"n_positive"``, 95 % intervals ``[low, high]`` under ``"ci"``, with
    the paired differences ``opacity_map50_minus_detector_a`` etc., dataset counts under
    ``"counts"`` and ``"counts_by_source"``) and the curves for the report.
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
    n_pos: dict[str, int] = {}
    curves: dict[str, Any] = {}

    # View: overall accuracy and the recall of each reference view.
    viewed = [(r.view, o.view) for r, o in pairs if r.view is not None]
    metrics["view_accuracy"] = accuracy([t for t, _ in viewed], [p for _, p in viewed])
    n["view_accuracy"] = len(viewed)
    for view in VIEWS:
        of_view = [p for t, p in viewed if t == view]
        metrics[f"view_accuracy_{view}"] = accuracy([view] * len(of_view), of_view)
        n[f"view_accuracy_{view}"] = n_pos[f"view_accuracy_{view}"] = len(of_view)
    if viewed:
        curves["view_confusion"] = ConfusionData(
            VIEWS, confusion_matrix([t for t, _ in viewed], [p for _, p in viewed], VIEWS)
        )

    frontal = [(r, o) for r, o in pairs if _is_frontal(r)]

    # Which frontal images the models analysed, and why not the others.
    metrics["analysed_rate"] = mean_defined([1.0 if o.analysed else 0.0 for _, o in frontal])
    n["analysed_rate"] = len(frontal)
    n_pos["analysed_rate"] = sum(1 for _, o in frontal if o.analysed)
    reasons = Counter(reason_prefix(o) for _, o in frontal if not o.analysed)
    metrics["not_analysed_reasons"] = dict(sorted(reasons.items()))

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
    n_reference_boxes = sum(len(r.boxes or ()) for r, _ in annotated)
    detection_matches: dict[str, list[ImageMatches]] = {}
    for key, (label, select) in sources.items():
        matches = _detection_matches(annotated, select) if annotated else None
        result = None if matches is None else average_precision_of(matches)
        if matches is not None:
            detection_matches[key] = matches
        metrics[key] = None if result is None else result.ap
        n[key] = len(annotated)
        n_pos[key] = n_reference_boxes
        if result is not None:
            opacity_pr[label] = result
    positives_none = [len(r.boxes or ()) == 0 for r, _ in annotated]
    none_result = ranking_average_precision(none_scores([o.opacities for _, o in annotated]), positives_none)
    metrics["none_ap"] = none_result.ap
    n["none_ap"] = len(annotated)
    n_pos["none_ap"] = int(sum(positives_none))

    # What a reader sees at the reporting threshold: false boxes on known negatives, recall on the rest.
    shown = [o.opacities if o.analysed else () for _, o in annotated]
    negatives = [boxes for (r, _), boxes in zip(annotated, shown, strict=True) if r.boxes == ()]
    metrics["reporting_threshold"] = float(reporting_threshold)
    metrics["false_boxes_per_negative"] = boxes_per_image(negatives, threshold=reporting_threshold)
    n["false_boxes_per_negative"] = len(negatives)
    n_pos["false_boxes_per_negative"] = sum(
        1 for boxes in negatives if any(b.score >= reporting_threshold for b in boxes)
    )
    at_threshold = counts_at_threshold(shown, [r.boxes or () for r, _ in annotated], threshold=reporting_threshold)
    metrics["opacity_recall_at_reporting_threshold"] = at_threshold.recall
    metrics["opacity_precision_at_reporting_threshold"] = at_threshold.precision
    n["opacity_recall_at_reporting_threshold"] = len(annotated) - len(negatives)
    n_pos["opacity_recall_at_reporting_threshold"] = at_threshold.n_truth
    n["opacity_precision_at_reporting_threshold"] = len(annotated)
    n_pos["opacity_precision_at_reporting_threshold"] = at_threshold.n_predictions

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
        n[f"study_ap_{c}"] = n_pos[f"study_ap_{c}"] = int(sum(positives))
        if labelled:
            study_roc[c] = roc_curve(probs[:, k], positives)
    metrics["study_map"] = mean_defined(list(study_aps.values()))
    metrics["study_macro_auc"] = macro_auc_ovr(probs, labels, STUDY_LABELS) if labelled else None
    metrics["study_accuracy"] = accuracy(labels, [o.label for _, o in labelled])
    n["study_map"] = n["study_macro_auc"] = n["study_accuracy"] = len(labelled)

    # Normal vs abnormal per study: 1 - P(negative); a study without a frontal prediction scores 0.
    with_abnormal = [(flag, o) for flag, o in ((_study_abnormal(recs), predictions[key]) for key, recs in groups.items())
                     if flag is not None]
    abnormal_truth = [flag for flag, _ in with_abnormal]
    p_abnormal = [
        0.0 if o.probabilities is None else 1.0 - float(o.probabilities.get("negative", 0.0)) for _, o in with_abnormal
    ]
    metrics["normal_abnormal_auc"] = roc_auc(p_abnormal, abnormal_truth) if with_abnormal else None
    n["normal_abnormal_auc"] = len(with_abnormal)
    n_pos["normal_abnormal_auc"] = int(sum(abnormal_truth))
    normal_abnormal_roc = roc_curve(p_abnormal, abnormal_truth) if with_abnormal else None
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

    # Opacity % against the covid-severity geographic extent score (0-8): a rank correlation.
    with_severity = [(r, o) for r, o in frontal if r.severity is not None]
    severity_pairs = [(float(r.severity), o.opacity_percent) for r, o in with_severity if o.opacity_percent is not None]
    severity_truth = np.array([t for t, _ in severity_pairs], dtype=np.float64)
    severity_pred = np.array([p for _, p in severity_pairs], dtype=np.float64)
    correlation = spearman(severity_pred, severity_truth)
    metrics["opacity_percent_spearman"] = correlation.rho
    metrics["opacity_percent_spearman_p"] = correlation.p_value
    metrics["opacity_percent_spearman_n"] = correlation.n
    n["opacity_percent_spearman"] = n["opacity_percent_spearman_p"] = correlation.n

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

    # Uncertainty: bootstrap intervals of the headline figures and of the paired AP differences.
    settings = bootstrap if bootstrap is not None else BootstrapSettings()
    lung_nonempty = [o.lung_overlap for _, o in frontal if o.lung_overlap is not None and o.lung_overlap.truth > 0]
    statistics: dict[str, tuple[Statistic, int]] = {
        "view_accuracy": (mean_statistic([float(t == p) for t, p in viewed]), len(viewed)),
        "lung_dice": (dice_statistic(lung_nonempty), len(lung_nonempty)),
        **{key: (ap_statistic(m), len(m)) for key, m in detection_matches.items()},
        "false_boxes_per_negative": (
            mean_statistic([sum(1 for b in boxes if b.score >= reporting_threshold) for boxes in negatives]),
            len(negatives),
        ),
        "normal_abnormal_auc": (auc_statistic(p_abnormal, abnormal_truth), len(with_abnormal)),
        "study_macro_auc": (macro_auc_statistic(probs, labels, STUDY_LABELS), len(labelled)),
        # Every frontal image with a score (NaN where no opacity % was predicted; a resample drops those).
        "opacity_percent_spearman": (
            spearman_statistic(
                [np.nan if o.opacity_percent is None else o.opacity_percent for _, o in with_severity],
                [float(r.severity) for r, _ in with_severity],
            ),
            len(with_severity),
        ),
    }
    differences: dict[str, tuple[Statistic, int]] = {}
    ensemble = detection_matches.get("opacity_map50")
    for other in ("opacity_map50_detector_a", "opacity_map50_detector_b", "opacity_map50_no_crop"):
        if ensemble is not None and other in detection_matches:
            differences[f"opacity_map50_minus_{other.removeprefix('opacity_map50_')}"] = (
                ap_difference_statistic(ensemble, detection_matches[other]),
                len(ensemble),
            )
    intervals = {}
    for key, (statistic, n_items) in {**statistics, **differences}.items():
        interval = bootstrap_interval(statistic, n_items, settings=settings)
        if interval is not None:
            intervals[key] = interval.as_list()
    metrics["ci"] = intervals
    metrics["ci_method"] = settings.describe() if settings.resamples else "none (--bootstrap 0)"

    view_counts = Counter(r.view or "unknown" for r, _ in pairs)
    class_counts = Counter(labels)
    metrics["n"] = n
    metrics["n_positive"] = n_pos
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
        "images_known_negative": len(negatives),
        "frontal_images": len(frontal),
        "frontal_images_not_analysed": len(frontal) - sum(1 for _, o in frontal if o.analysed),
        "studies_with_abnormal_label": len(with_abnormal),
        "abnormal_studies": int(sum(abnormal_truth)),
        "abnormal_labelled_studies_without_frontal_prediction": sum(1 for _, o in with_abnormal if o.probabilities is None),
        "images_with_severity": len(with_severity),
        "images_with_severity_without_predicted_opacity_percent": len(with_severity) - len(severity_pairs),
    }
    metrics["counts_by_source"] = counts_by_source(pairs)
    report_curves = ReportCurves(
        opacity_pr=opacity_pr,
        view_confusion=curves.get("view_confusion"),
        study_confusion=curves.get("study_confusion"),
        study_roc=study_roc,
        severity_roc=severity_roc,
        opacity_percent_truth=truth_pct if measured else None,
        opacity_percent_predicted=pred_pct if measured else None,
        normal_abnormal_roc=normal_abnormal_roc,
        severity_truth=severity_truth if severity_pairs else None,
        severity_predicted=severity_pred if severity_pairs else None,
        severity_spearman=correlation.rho,
    )
    return Measurement(metrics=metrics, curves=report_curves, statistics=statistics)


def compare_measurements(
    current: Measurement, baseline: Measurement, *, bootstrap: BootstrapSettings | None = None
) -> dict[str, dict[str, Any]]:
    """Per interval metric: these weights' value, the baseline's, their difference and its paired
    95 % interval (the same resampled units for both; both measurements must be of the same records).

    A metric undefined on either side is left out.
    """
    settings = bootstrap if bootstrap is not None else BootstrapSettings()
    out: dict[str, dict[str, Any]] = {}
    for key, (statistic, n_items) in current.statistics.items():
        if key not in baseline.statistics:
            continue
        base_statistic, base_n = baseline.statistics[key]
        if base_n != n_items:
            raise ValueError(f"metric {key!r}: {n_items} units here, {base_n} in the baseline: not the same records")
        value, base_value = current.metrics.get(key), baseline.metrics.get(key)
        if value is None or base_value is None:
            continue
        interval = bootstrap_interval(difference_statistic(statistic, base_statistic), n_items, settings=settings)
        out[key] = {
            "value": value,
            "baseline": base_value,
            "difference": value - base_value,
            "ci": None if interval is None else interval.as_list(),
        }
    return out


def counts_by_source(pairs: Sequence[tuple[ImageRecord, ImageOutcome]]) -> dict[str, dict[str, int]]:
    """Per data source: how many images, studies and labels of each kind it brought."""
    out: dict[str, dict[str, int]] = {}
    studies: dict[str, set[str]] = {}
    for record, outcome in pairs:
        name = _source_name(record)
        row = out.setdefault(name, dict.fromkeys(SOURCE_COUNT_KEYS, 0))
        studies.setdefault(name, set()).add(study_key(record))
        row["images"] += 1
        frontal = _is_frontal(record)
        row["frontal"] += int(frontal)
        row["analysed"] += int(frontal and outcome.analysed)
        row["with_view"] += int(record.view is not None)
        row["with_boxes"] += int(frontal and record.boxes is not None)
        row["known_negative"] += int(frontal and record.boxes == ())
        row["reference_boxes"] += len(record.boxes or ()) if frontal else 0
        row["with_abnormal"] += int(record.abnormal is not None)
        row["abnormal"] += int(record.abnormal is True)
        row["with_severity"] += int(frontal and record.severity is not None)
        row["with_study_label"] += int(record.study_label is not None)
        row["with_opacity_percent"] += int(frontal and record.opacity_percent is not None)
        row["with_lung_mask"] += int(frontal and bool(record.lung_mask))
    for name, row in out.items():
        row["studies"] = len(studies[name])
    return dict(sorted(out.items()))


SOURCE_COUNT_KEYS: tuple[str, ...] = (
    "images",
    "studies",
    "frontal",
    "analysed",
    "with_view",
    "with_boxes",
    "known_negative",
    "reference_boxes",
    "with_abnormal",
    "abnormal",
    "with_severity",
    "with_study_label",
    "with_opacity_percent",
    "with_lung_mask",
)


# --------------------------------------------------------------------------- data selection (shared with the tuners)


def add_data_args(parser: argparse.ArgumentParser, *, default_split: str | None, split_help: str) -> None:
    """``--data`` (repeatable specs), ``--format`` and the shared split options."""
    parser.add_argument(
        "--data", action="append", required=True, metavar="PATH[,format=F][,weight=W][,name=N]",
        help="a dataset root (PhantomCXR or a supported layout); repeat to use several sources",
    )
    parser.add_argument("--format", default="auto", help="default dataset layout of the --data sources (auto: detected)")
    parser.add_argument("--split", choices=SPLITS, default=default_split, help=split_help)
    parser.add_argument(
        "--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
        help="fraction of patients in the validation part (the trainers' patient-hash split)",
    )
    parser.add_argument("--split-seed", type=int, default=DEFAULT_SPLIT_SEED, help="seed of the patient hash")


def parse_sources(data: Any, *, default_format: str = "auto") -> list[DataSource]:
    """``--data`` values (paths, specs or sources) as :class:`DataSource` objects."""
    from cxr_models.datasets.sources import as_sources

    return as_sources(data, default_format=default_format)


def is_phantom_source(source: DataSource) -> bool:
    """Whether the source is a PhantomCXR folder (it holds the generator's ``phantom.json``)."""
    return (Path(source.root) / PHANTOM_MANIFEST).is_file()


def resolve_tuning_split(split: str | None, sources: Sequence[DataSource]) -> str:
    """The split a tuner uses: ``split`` when given; by default the validation part, except for a
    single PhantomCXR source, which is a separately generated validation set and used whole."""
    if split is not None:
        return split
    if len(sources) == 1 and is_phantom_source(sources[0]):
        return "all"
    return "val"


def split_info(split: str, *, val_fraction: float, split_seed: int) -> dict[str, Any]:
    """How the records were selected, as recorded in metrics.json and the manifest."""
    return {"split": split, "val_fraction": val_fraction, "split_seed": split_seed}


def select_records(
    sources: Sequence[DataSource], *, split: str, val_fraction: float, split_seed: int
) -> tuple[list[ImageRecord], int]:
    """The records of ``split`` over every source, and how many records the sources hold in all."""
    from cxr_models.datasets.sources import read_sources

    everything = read_sources(sources)
    chosen = select_split(everything, split=split, val_fraction=val_fraction, split_seed=split_seed)
    logger.info("split %s: %d of %d images", split, len(chosen), len(everything))
    return chosen, len(everything)


# --------------------------------------------------------------------------- I/O


def evaluate_dataset(
    data: Any,
    *,
    weights: Path | None = None,
    data_format: str = "auto",
    limit: int | None = None,
    device: str = "auto",
    show_progress: bool = True,
    analyzer: Analyzer | None = None,
    split: str = "all",
    val_fraction: float = DEFAULT_VAL_FRACTION,
    split_seed: int = DEFAULT_SPLIT_SEED,
    reporting_threshold: float | None = None,
    half_precision: bool = False,
    bootstrap: BootstrapSettings | None = None,
    baseline_weights: Path | None = None,
    baseline_analyzer: Analyzer | None = None,
) -> EvaluationResult:
    """Read the data sources, keep the ``split`` part, run the analyser on every study and compute the metrics.

    ``data`` is one or several paths or ``PATH[,format=F][,weight=W]`` specs (``data_format`` is
    their default layout). ``reporting_threshold`` overrides the manifest's. ``analyzer`` defaults
    to ``Analyzer.load(weights_dir=weights, device=device, half_precision=half_precision)``; pass one to reuse loaded models (any
    object with ``manifest`` and ``analyze_study(images, no_crop_ablation=...)``). The dataset
    readers and the analyser are imported here, not at module level, so the pure metric code
    imports without the model stack.

    ``baseline_weights`` (or a loaded ``baseline_analyzer``) runs a second set of weights on the
    same studies; ``metrics["comparison"]`` then gives, per interval metric, both values, their
    difference and its paired bootstrap interval (:func:`compare_measurements`).
    """
    from cxr_models.datasets import load_image, load_lung_mask, load_opacity_mask
    from cxr_models.train.common import progress

    sources = parse_sources(data, default_format=data_format)
    records, n_read = select_records(sources, split=split, val_fraction=val_fraction, split_seed=split_seed)
    if not records:
        raise ValueError(
            f"data {[s.spec() for s in sources]} holds no image records in split {split!r} "
            f"(format {data_format!r}, {n_read} records in all)"
        )
    groups = limit_studies(group_studies(records), limit)
    kept = [r for recs in groups.values() for r in recs]
    logger.info("evaluating %d images in %d studies from %s", len(kept), len(groups), ", ".join(s.spec() for s in sources))

    if analyzer is None:
        from cxr_models.inference.pipeline import Analyzer

        analyzer = Analyzer.load(weights_dir=weights, device=device, half_precision=half_precision)
    if baseline_analyzer is None and baseline_weights is not None:
        from cxr_models.inference.pipeline import Analyzer

        baseline_analyzer = Analyzer.load(weights_dir=baseline_weights, device=device, half_precision=half_precision)
    manifest = dict(analyzer.manifest)
    threshold = reporting_threshold_of(manifest, reporting_threshold)
    runs = {"current": analyzer} if baseline_analyzer is None else {"current": analyzer, "baseline": baseline_analyzer}
    outcomes: dict[str, dict[str, StudyOutcome]] = {name: {} for name in runs}
    for key, recs in progress(groups.items(), desc="evaluate", total=len(groups), disable=not show_progress):
        images = [load_image(r) for r in recs]
        lung_truth = [load_lung_mask(r, shape=img.shape) for r, img in zip(recs, images, strict=True)]
        opacity_truth = [load_opacity_mask(r, shape=img.shape) for r, img in zip(recs, images, strict=True)]
        for name, run in runs.items():
            prediction = run.analyze_study(images, no_crop_ablation=True)
            if len(prediction.images) != len(images):
                raise RuntimeError(
                    f"study {key!r}: {name} analyser returned {len(prediction.images)} results for {len(images)} images"
                )
            outcomes[name][key] = study_outcome(prediction, lung_truth=lung_truth, opacity_truth=opacity_truth)

    measured = measure(kept, outcomes["current"], reporting_threshold=threshold, bootstrap=bootstrap)
    metrics, curves = measured.metrics, measured.curves
    if baseline_analyzer is not None:
        base_manifest = dict(baseline_analyzer.manifest)
        baseline = measure(
            kept, outcomes["baseline"], reporting_threshold=reporting_threshold_of(base_manifest, reporting_threshold),
            bootstrap=bootstrap,
        )
        metrics["comparison"] = {
            "baseline_weights": None if baseline_weights is None else str(baseline_weights),
            "baseline_version": base_manifest.get("version"),
            "baseline_reporting_threshold": baseline.metrics["reporting_threshold"],
            "metrics": compare_measurements(measured, baseline, bootstrap=bootstrap),
        }
    metrics["model_version"] = manifest.get("version")
    metrics["half_precision"] = bool(getattr(analyzer, "half_precision", False))
    if reporting_threshold is not None:
        metrics["reporting_threshold_from"] = "--reporting-threshold"
    elif isinstance(manifest.get("reporting_threshold"), Mapping):
        metrics["reporting_threshold_from"] = "manifest"
    else:
        metrics["reporting_threshold_from"] = "default"
    evaluated = Counter(_source_name(r) for r in kept)
    data_info: dict[str, Any] = {
        "sources": [
            {"spec": s.spec(), "name": s.label, "format": s.format, "images": evaluated.get(s.label, 0)} for s in sources
        ],
        "format": data_format,
        "limit": limit,
        **split_info(split, val_fraction=val_fraction, split_seed=split_seed),
        "images_read": n_read,
    }
    if len(sources) == 1:
        data_info = {"root": str(sources[0].root), **data_info}
    metrics["data"] = data_info
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
    parser = argparse.ArgumentParser(description="Evaluate the cxr models on labelled data")
    add_data_args(
        parser, default_split="all",
        split_help="which part of the shared patient-hash split to evaluate (default: all records)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder for metrics.json, report.md and plots")
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: shipped weights)")
    parser.add_argument(
        "--reporting-threshold", type=float, default=None,
        help=f"fused-box score from which boxes are reported (default: the manifest's, else {DEFAULT_REPORTING_THRESHOLD})",
    )
    parser.add_argument("--limit", type=int, default=None, help="at most this many images (whole studies, in order)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--half-precision", action="store_true",
        help="run the models under float16 autocast, as CXR_HALF_PRECISION does (recorded in metrics.json)",
    )
    parser.add_argument(
        "--bootstrap", type=int, default=DEFAULT_RESAMPLES, metavar="N",
        help=f"bootstrap resamples of the 95%% intervals in metrics.json and report.md (default {DEFAULT_RESAMPLES}; 0: none)",
    )
    parser.add_argument(
        "--baseline-weights", type=Path, default=None, metavar="DIR",
        help="also run these weights on the same studies and report each metric's difference with a paired interval",
    )
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
        split=args.split,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        reporting_threshold=args.reporting_threshold,
        half_precision=args.half_precision,
        bootstrap=BootstrapSettings(resamples=args.bootstrap),
        baseline_weights=args.baseline_weights,
    )
    metrics_path = write_metrics(args.out, result.metrics)
    report_path = write_report(args.out, result.metrics, result.curves, manifest=result.manifest)
    counts = result.metrics["counts"]
    data = result.metrics["data"]
    print(
        f"cxr evaluate: {counts['images']} images, {counts['studies']} studies (split {data['split']}), "
        f"weights {result.metrics['model_version']}, reporting threshold {result.metrics['reporting_threshold']:g}"
    )
    rows = summary_rows(result.metrics, SUMMARY_KEYS)
    width = max(len(title) for title, _ in rows)
    for title, value in rows:
        print(f"  {title:<{width}}  {value}")
    compared = comparison_rows(result.metrics)
    if compared:
        print(f"  against {result.metrics['comparison']['baseline_weights']}: difference (95 % CI)")
        for title, _, _, difference, interval in compared:
            print(f"  {title:<{width}}  {difference}  ({interval or 'no interval'})")
    print(f"wrote {metrics_path} and {report_path}")
    return result.metrics


if __name__ == "__main__":
    main(get_args_parser().parse_args())
