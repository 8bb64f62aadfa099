"""Evaluation metrics as pure NumPy functions: detection AP, segmentation overlap, classification, regression.

Conventions (each is tested on hand-computed cases in ``tests/models/test_metrics.py``):

* Undefined values are ``None`` (never NaN), so they survive ``json.dump`` and read as "n/a".
* Detection AP is PASCAL VOC 2010+ all-point interpolated AP at IoU > 0.5, the metric of the
  SIIM-FISABIO-RSNA COVID-19 Detection challenge (see :func:`average_precision`, :func:`siim_map`).
* Segmentation overlap with an empty mask is defined explicitly (see :func:`dice`), and dataset
  summaries keep empty-ground-truth images apart (see :func:`summarize_segmentation`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata, spearmanr

from cxr_models.records import STUDY_LABELS, Box, ScoredBox

logger = logging.getLogger(__name__)

# Class keys of the challenge's six APs: four study-level classes and two image-level classes.
SIIM_IMAGE_CLASSES: tuple[str, ...] = ("opacity", "none")


# --------------------------------------------------------------------------- detection


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes; 0.0 when both have zero area."""
    inter = a.clip(b)
    inter_area = 0.0 if inter is None else inter.area
    union = a.area + b.area - inter_area
    if union <= 0.0:
        return 0.0
    return inter_area / union


@dataclass(frozen=True)
class PrecisionRecall:
    """Average precision with the curve behind it.

    ``precision``/``recall``/``thresholds`` hold one point per distinct score, highest score first
    (the raw, non-interpolated curve, for plotting). ``ap`` is None when it is undefined.
    """

    ap: float | None
    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray
    n_truth: int
    n_predictions: int


def _pr_from_ranked(scores: np.ndarray, hits: np.ndarray, *, n_truth: int) -> PrecisionRecall:
    """VOC all-point AP from scored predictions flagged true/false positive.

    Predictions with equal scores form one operating point (precision and recall are taken after
    the whole tied group), so the result does not depend on the order of tied predictions.
    """
    n_pred = int(scores.size)
    empty = np.zeros(0, dtype=np.float64)
    if n_truth == 0 and n_pred == 0:
        return PrecisionRecall(None, empty, empty, empty, n_truth=0, n_predictions=0)
    if n_truth == 0:
        # Every prediction is a false positive; recall is 0/0, AP is defined as 0.
        thresholds = np.unique(scores)[::-1]
        zeros = np.zeros(thresholds.size, dtype=np.float64)
        return PrecisionRecall(0.0, zeros, zeros.copy(), thresholds, n_truth=0, n_predictions=n_pred)
    if n_pred == 0:
        return PrecisionRecall(0.0, empty, empty, empty, n_truth=n_truth, n_predictions=0)

    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    tp = np.cumsum(hits[order].astype(np.float64))
    fp = np.cumsum((~hits[order]).astype(np.float64))
    # Last index of each tied-score group.
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp, fp, thresholds = tp[last], fp[last], s[last]
    recall = tp / n_truth
    precision = tp / (tp + fp)

    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope (monotone non-increasing)
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    ap = float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    return PrecisionRecall(ap, precision, recall, thresholds, n_truth=n_truth, n_predictions=n_pred)


def _match_image(predictions: Sequence[ScoredBox], truth: Sequence[Box], *, iou_threshold: float) -> np.ndarray:
    """TP flags for one image's predictions (in the given order), VOC-devkit greedy matching.

    Predictions are visited by descending score (ties keep their given order); each takes the
    ground-truth box it overlaps most. It is a true positive when that IoU exceeds the threshold
    and that box is not matched yet; otherwise (a duplicate, or too little overlap) a false positive.
    """
    hits = np.zeros(len(predictions), dtype=bool)
    if not truth:
        return hits
    matched = np.zeros(len(truth), dtype=bool)
    order = sorted(range(len(predictions)), key=lambda i: -predictions[i].score)
    for i in order:
        overlaps = [iou(predictions[i].box, g) for g in truth]
        best = int(np.argmax(overlaps))
        if overlaps[best] > iou_threshold and not matched[best]:
            matched[best] = True
            hits[i] = True
    return hits


@dataclass(frozen=True)
class ImageMatches:
    """One image's predictions matched against its ground truth: scores, TP flags, ground-truth count.

    Matching is per image, so the AP of any set of images (a bootstrap resample included) follows
    from these without matching again (:func:`average_precision_of`).
    """

    scores: np.ndarray
    hits: np.ndarray
    n_truth: int


def match_images(
    predictions: Sequence[Sequence[ScoredBox]],
    truth: Sequence[Sequence[Box]],
    *,
    iou_threshold: float = 0.5,
) -> list[ImageMatches]:
    """Each image's :class:`ImageMatches` (see :func:`average_precision` for the matching rule)."""
    if len(predictions) != len(truth):
        raise ValueError(
            f"predictions and truth must list the same images, got {len(predictions)} and {len(truth)}"
        )
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    return [
        ImageMatches(
            scores=np.asarray([float(p.score) for p in preds], dtype=np.float64),
            hits=_match_image(preds, gts, iou_threshold=iou_threshold),
            n_truth=len(gts),
        )
        for preds, gts in zip(predictions, truth, strict=True)
    ]


def average_precision_of(matches: Sequence[ImageMatches]) -> PrecisionRecall:
    """VOC AP over the images whose :class:`ImageMatches` are given (an image may repeat)."""
    if not matches:
        return _pr_from_ranked(np.zeros(0, dtype=np.float64), np.zeros(0, dtype=bool), n_truth=0)
    scores = np.concatenate([m.scores for m in matches])
    hits = np.concatenate([m.hits for m in matches])
    return _pr_from_ranked(scores, hits, n_truth=sum(m.n_truth for m in matches))


def average_precision(
    predictions: Sequence[Sequence[ScoredBox]],
    truth: Sequence[Sequence[Box]],
    *,
    iou_threshold: float = 0.5,
) -> PrecisionRecall:
    """PASCAL VOC (2010+) all-point interpolated average precision over a set of images.

    ``predictions[i]`` and ``truth[i]`` are the predicted and ground-truth boxes of image ``i``.
    Matching is per image (see :func:`_match_image`): greedy by descending score, a ground-truth
    box is matched at most once, IoU must be > ``iou_threshold`` (the challenge's "IoU > 0.5").
    All predictions are then ranked by score; AP is the area under the precision envelope
    (precision made monotone non-increasing in recall), summed where recall changes.

    Edge cases, by definition:

    * no ground truth and no predictions: AP is undefined, ``ap`` is None;
    * ground truth but no predictions: 0.0;
    * predictions but no ground truth: 0.0 (every prediction is a false positive).
    """
    return average_precision_of(match_images(predictions, truth, iou_threshold=iou_threshold))


def boxes_at_threshold(boxes: Sequence[ScoredBox], threshold: float) -> list[ScoredBox]:
    """The boxes a reader is shown at a reporting threshold: score ≥ ``threshold``."""
    return [b for b in boxes if b.score >= threshold]


def boxes_per_image(predictions: Sequence[Sequence[ScoredBox]], *, threshold: float) -> float | None:
    """Mean number of boxes with score ≥ ``threshold`` per image; None when there is no image.

    Over images known to hold no opacity (ground truth ``()``) every such box is a false one, so this
    is the false boxes per negative image a reader would see at that reporting threshold.
    """
    if not predictions:
        return None
    return float(np.mean([len(boxes_at_threshold(p, threshold)) for p in predictions]))


@dataclass(frozen=True)
class ThresholdCounts:
    """Box counts at one reporting threshold: kept predictions, true positives and ground-truth boxes."""

    n_predictions: int
    true_positives: int
    n_truth: int

    @property
    def recall(self) -> float | None:
        return None if self.n_truth == 0 else self.true_positives / self.n_truth

    @property
    def precision(self) -> float | None:
        return None if self.n_predictions == 0 else self.true_positives / self.n_predictions


def counts_at_threshold(
    predictions: Sequence[Sequence[ScoredBox]],
    truth: Sequence[Sequence[Box]],
    *,
    threshold: float,
    iou_threshold: float = 0.5,
) -> ThresholdCounts:
    """True positives among the boxes with score ≥ ``threshold``, matched as in :func:`average_precision`
    (per image, greedy by score, IoU > ``iou_threshold``, each ground-truth box once)."""
    if len(predictions) != len(truth):
        raise ValueError(
            f"predictions and truth must list the same images, got {len(predictions)} and {len(truth)}"
        )
    n_pred = tp = n_truth = 0
    for preds, gts in zip(predictions, truth, strict=True):
        kept = boxes_at_threshold(preds, threshold)
        n_pred += len(kept)
        n_truth += len(gts)
        tp += int(_match_image(kept, gts, iou_threshold=iou_threshold).sum())
    return ThresholdCounts(n_predictions=n_pred, true_positives=tp, n_truth=n_truth)


def ranking_average_precision(scores: Sequence[float], positives: Sequence[bool]) -> PrecisionRecall:
    """VOC AP when every item carries exactly one full-image "box" with a score.

    This is the challenge's study-level classes and the image-level ``none`` class: the prediction
    box always matches the full-image ground-truth box when the item is positive, so AP reduces to
    ranking the items by score. Every item is scored, so "predictions but no ground truth" means the
    class is absent from the data: ``ap`` is then None (not 0.0), and the class is left out of a
    mean, as the challenge averages over the classes present in the ground truth.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    if s.shape != pos.shape or s.ndim != 1:
        raise ValueError(f"scores and positives must be 1-D of equal length, got {s.shape} and {pos.shape}")
    n_truth = int(pos.sum())
    if n_truth == 0:
        empty = np.zeros(0, dtype=np.float64)
        return PrecisionRecall(None, empty, empty, empty, n_truth=0, n_predictions=int(s.size))
    return _pr_from_ranked(s, pos, n_truth=n_truth)


def none_scores(opacities: Sequence[Sequence[ScoredBox]]) -> list[float]:
    """Per image ``none`` score: 1 − the highest opacity score, 1.0 when there is no box."""
    return [1.0 - max((b.score for b in boxes), default=0.0) for boxes in opacities]


def mean_defined(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not None; None when none is defined."""
    defined = [v for v in values if v is not None]
    if not defined:
        return None
    return float(np.mean(defined))


def siim_map(study_aps: Mapping[str, float | None], *, opacity_ap: float | None, none_ap: float | None) -> float | None:
    """The SIIM-FISABIO-RSNA COVID-19 Detection challenge metric: mean AP over its six classes.

    The challenge evaluation page (kaggle.com/competitions/siim-covid19-detection/overview/evaluation)
    scores "the standard PASCAL VOC 2010 mean Average Precision (mAP) at IoU > 0.5" over study-level
    predictions (``negative``, ``typical``, ``indeterminate``, ``atypical``, each a full-image box with
    the class confidence) and image-level predictions (``opacity`` boxes and a ``none`` full-image box).
    The six classes weigh equally (third-place write-up, discussion 240363, and the open re-implementation
    openai/mle-bench ``mlebench/competitions/siim-covid19-detection/grade.py``), which is the same
    as the often-quoted 2/3 · study mAP + 1/3 · image mAP, since 4 of the 6 classes are study-level:
    (4·study_map + 2·image_map) / 6. Classes whose AP is undefined (absent from the ground truth) are
    left out of the mean, as in those re-implementations; None when no class is defined.
    """
    unknown = set(study_aps) - set(STUDY_LABELS)
    if unknown:
        raise ValueError(f"study_aps has keys outside {STUDY_LABELS}: {sorted(unknown)}")
    values = [study_aps.get(c) for c in STUDY_LABELS] + [opacity_ap, none_ap]
    return mean_defined(values)


# --------------------------------------------------------------------------- segmentation


@dataclass(frozen=True)
class MaskOverlap:
    """Pixel counts of one predicted/ground-truth mask pair; enough for Dice and IoU."""

    intersection: int
    predicted: int
    truth: int

    def dice(self, *, empty: float = 1.0) -> float:
        if self.predicted == 0 and self.truth == 0:
            return empty
        return 2.0 * self.intersection / (self.predicted + self.truth)

    def iou(self, *, empty: float = 1.0) -> float:
        if self.predicted == 0 and self.truth == 0:
            return empty
        return self.intersection / (self.predicted + self.truth - self.intersection)


def mask_overlap(pred: np.ndarray, truth: np.ndarray) -> MaskOverlap:
    """Overlap counts of two masks of the same shape (non-zero = inside)."""
    p = np.asarray(pred).astype(bool, copy=False)
    t = np.asarray(truth).astype(bool, copy=False)
    if p.shape != t.shape:
        raise ValueError(f"pred and truth must have the same shape, got {p.shape} and {t.shape}")
    return MaskOverlap(intersection=int(np.count_nonzero(p & t)), predicted=int(p.sum()), truth=int(t.sum()))


def dice(pred: np.ndarray, truth: np.ndarray, *, empty: float = 1.0) -> float:
    """Dice coefficient 2|P∩T| / (|P|+|T|) of two masks.

    Both masks empty: ``empty`` (default 1.0, a correct "nothing there"); exactly one empty: 0.0.
    Averaging this per image over a set where many ground truths are empty mixes two different
    questions (is there opacity? where is it?) and lets a model that predicts nothing score well
    (the pitfall the opacity-segmentation literature warns about); :func:`summarize_segmentation`
    therefore reports Dice over non-empty ground truth apart from the empty-case agreement.
    """
    return mask_overlap(pred, truth).dice(empty=empty)


def iou_mask(pred: np.ndarray, truth: np.ndarray, *, empty: float = 1.0) -> float:
    """Jaccard index |P∩T| / |P∪T| of two masks, with the same empty-mask convention as :func:`dice`."""
    return mask_overlap(pred, truth).iou(empty=empty)


@dataclass(frozen=True)
class SegmentationSummary:
    """Dataset-level segmentation figures, empty-ground-truth images kept apart.

    ``dice_nonempty``/``iou_nonempty``: mean per-image Dice/IoU over images whose ground truth is
    non-empty (``n_nonempty`` of them). ``empty_agreement``: fraction of the ``n_empty`` images with
    an empty ground truth whose prediction is empty too. ``dice_all``: mean per-image Dice over all
    images with the both-empty = 1.0 convention (shown for comparison only). ``dice_pooled``:
    2·ΣI / (ΣP + ΣT) over all pixels of all images. Each is None when it has no image.
    """

    n_images: int
    n_nonempty: int
    n_empty: int
    dice_nonempty: float | None
    iou_nonempty: float | None
    empty_agreement: float | None
    dice_all: float | None
    dice_pooled: float | None


def summarize_segmentation(overlaps: Sequence[MaskOverlap]) -> SegmentationSummary:
    """Aggregate per-image overlaps into a :class:`SegmentationSummary`."""
    nonempty = [o for o in overlaps if o.truth > 0]
    empty = [o for o in overlaps if o.truth == 0]
    total_i = sum(o.intersection for o in overlaps)
    total_pt = sum(o.predicted + o.truth for o in overlaps)
    return SegmentationSummary(
        n_images=len(overlaps),
        n_nonempty=len(nonempty),
        n_empty=len(empty),
        dice_nonempty=mean_defined([o.dice() for o in nonempty]),
        iou_nonempty=mean_defined([o.iou() for o in nonempty]),
        empty_agreement=mean_defined([1.0 if o.predicted == 0 else 0.0 for o in empty]),
        dice_all=mean_defined([o.dice(empty=1.0) for o in overlaps]),
        dice_pooled=None if not overlaps else (1.0 if total_pt == 0 else 2.0 * total_i / total_pt),
    )


# --------------------------------------------------------------------------- classification


def accuracy(labels: Sequence[str], predictions: Sequence[str | None]) -> float | None:
    """Fraction of predictions equal to the label (a None prediction counts as wrong); None when empty."""
    if len(labels) != len(predictions):
        raise ValueError(f"labels and predictions must have equal length, got {len(labels)} and {len(predictions)}")
    if not labels:
        return None
    return float(np.mean([p == t for t, p in zip(labels, predictions, strict=True)]))


def confusion_matrix(labels: Sequence[str], predictions: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Counts with rows = true class and columns = predicted class, both in ``classes`` order."""
    if len(labels) != len(predictions):
        raise ValueError(f"labels and predictions must have equal length, got {len(labels)} and {len(predictions)}")
    index = {c: i for i, c in enumerate(classes)}
    if len(index) != len(classes):
        raise ValueError(f"classes must be distinct, got {list(classes)}")
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(labels, predictions, strict=True):
        if t not in index:
            raise ValueError(f"label {t!r} is not one of classes {list(classes)}")
        if p not in index:
            raise ValueError(f"prediction {p!r} is not one of classes {list(classes)}")
        matrix[index[t], index[p]] += 1
    return matrix


def _binary_inputs(scores: Sequence[float], positives: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    if s.ndim != 1 or s.shape != pos.shape:
        raise ValueError(f"scores and positives must be 1-D of equal length, got {s.shape} and {pos.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return s, pos


def roc_auc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Area under the ROC curve as the Mann–Whitney U statistic, ties counting one half.

    AUC = (R₊ − n₊(n₊+1)/2) / (n₊·n₋) with R₊ the sum of mid-ranks of the positives, i.e. the
    probability that a random positive scores above a random negative (+½ for a tie).
    None when there is no positive or no negative.
    """
    s, pos = _binary_inputs(scores, positives)
    n_pos = int(pos.sum())
    n_neg = int(pos.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s, method="average")
    u = float(ranks[pos].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


@dataclass(frozen=True)
class RocCurve:
    """ROC points from the strictest threshold to the loosest, starting at (0, 0) and ending at (1, 1)."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float | None


def roc_curve(scores: Sequence[float], positives: Sequence[bool]) -> RocCurve:
    """ROC curve with one point per distinct score ("score ≥ threshold" is called positive).

    ``thresholds[0]`` is +inf (nothing called positive). When either class is absent the rates of
    that class are undefined; they are reported as zeros and ``auc`` is None.
    """
    s, pos = _binary_inputs(scores, positives)
    n_pos = int(pos.sum())
    n_neg = int(pos.size - n_pos)
    order = np.argsort(-s, kind="stable")
    s_sorted, p_sorted = s[order], pos[order]
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1] if s_sorted.size else np.zeros(0, dtype=int)
    tp = np.cumsum(p_sorted)[last].astype(np.float64)
    fp = np.cumsum(~p_sorted)[last].astype(np.float64)
    tpr = np.r_[0.0, tp / n_pos] if n_pos else np.zeros(tp.size + 1)
    fpr = np.r_[0.0, fp / n_neg] if n_neg else np.zeros(fp.size + 1)
    thresholds = np.r_[np.inf, s_sorted[last]]
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds, auc=roc_auc(s, pos))


def macro_auc_ovr(probabilities: np.ndarray, labels: Sequence[str], classes: Sequence[str]) -> float | None:
    """Mean one-vs-rest AUC over the classes that have both positives and negatives among ``labels``.

    ``probabilities`` is (n_samples, n_classes) in ``classes`` order. None when no class qualifies.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(labels), len(classes)):
        raise ValueError(
            f"probabilities must have shape (len(labels), len(classes)) = {(len(labels), len(classes))}, "
            f"got {probs.shape}"
        )
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not in classes {list(classes)}")
    aucs = [roc_auc(probs[:, k], [lab == c for lab in labels]) for k, c in enumerate(classes)]
    return mean_defined(aucs)


# --------------------------------------------------------------------------- regression


@dataclass(frozen=True)
class Correlation:
    """A rank correlation with its two-sided p-value (None where undefined) and the number of pairs."""

    rho: float | None
    p_value: float | None
    n: int


def spearman(x: Sequence[float], y: Sequence[float]) -> Correlation:
    """Spearman's ρ (Pearson correlation of the mid-ranks) and scipy's two-sided p-value.

    ``rho`` is None with fewer than two pairs or when either side is constant (no ranking);
    ``p_value`` is None where scipy gives none (NaN, e.g. with two pairs).
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("x and y must be finite")
    n = int(a.size)
    if n < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return Correlation(rho=None, p_value=None, n=n)
    result = spearmanr(a, b)
    rho, p = float(result.statistic), float(result.pvalue)
    return Correlation(rho=rho, p_value=None if not np.isfinite(p) else p, n=n)



def mae(predicted: Sequence[float], truth: Sequence[float]) -> float | None:
    """Mean absolute error; None when there is no pair."""
    p = np.asarray(predicted, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 1:
        raise ValueError(f"predicted and truth must be 1-D of equal length, got {p.shape} and {t.shape}")
    if p.size == 0:
        return None
    return float(np.mean(np.abs(p - t)))
