"""Hand-computed cases for every metric in cxr_models.evaluation.metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cxr_models.evaluation.metrics import (
    MaskOverlap,
    accuracy,
    average_precision,
    boxes_per_image,
    confusion_matrix,
    counts_at_threshold,
    dice,
    iou,
    iou_mask,
    macro_auc_ovr,
    mae,
    mean_defined,
    none_scores,
    ranking_average_precision,
    roc_auc,
    roc_curve,
    siim_map,
    spearman,
    summarize_segmentation,
)
from cxr_models.records import VIEWS, Box, ScoredBox

G1 = Box(0, 0, 10, 10)
FAR = Box(50, 50, 60, 60)


def sb(box: Box, score: float) -> ScoredBox:
    return ScoredBox(box=box, score=score)


# ------------------------------------------------------------------ IoU


def test_iou_hand_computed() -> None:
    assert iou(G1, Box(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou(G1, G1) == pytest.approx(1.0)
    assert iou(G1, FAR) == 0.0
    assert iou(Box(1, 1, 1, 1), Box(1, 1, 1, 1)) == 0.0


# ------------------------------------------------------------------ detection AP


def test_ap_three_predictions_on_paper() -> None:
    # Two images, one GT box each. Ranked: TP (0.9), FP (0.8), TP (0.7).
    # recall 0.5, 0.5, 1.0; precision 1, 0.5, 2/3; envelope 1 up to r=0.5, 2/3 up to r=1.
    # AP = 0.5·1 + 0.5·2/3 = 5/6.
    preds = [[sb(G1, 0.9)], [sb(FAR, 0.8), sb(G1, 0.7)]]
    truth = [[G1], [G1]]
    result = average_precision(preds, truth)
    assert result.ap == pytest.approx(5 / 6)
    np.testing.assert_allclose(result.recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(result.precision, [1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(result.thresholds, [0.9, 0.8, 0.7])
    assert (result.n_truth, result.n_predictions) == (2, 3)


def test_ap_envelope_with_missed_box() -> None:
    # 3 GT boxes, ranked TP, FP, FP, TP, one GT never found.
    # recall 1/3,1/3,1/3,2/3; precision 1, 1/2, 1/3, 1/2 -> AP = 1/3·1 + 1/3·1/2 = 1/2.
    g2, g3 = Box(20, 20, 30, 30), Box(40, 0, 48, 8)
    preds = [[sb(G1, 0.9), sb(FAR, 0.8), sb(Box(70, 70, 80, 80), 0.7), sb(g2, 0.6)]]
    result = average_precision(preds, [[G1, g2, g3]])
    assert result.ap == pytest.approx(0.5)


def test_ap_interpolates_precision_envelope() -> None:
    # 3 images with one GT each, ranked TP, FP, TP, TP: recall 1/3, 1/3, 2/3, 1;
    # precision 1, 1/2, 2/3, 3/4. The envelope lifts the 2/3 at recall 2/3 to 3/4:
    # AP = 1/3·1 + 1/3·3/4 + 1/3·3/4 = 5/6 (without interpolation it would be 0.8056).
    preds = [[sb(G1, 0.9), sb(FAR, 0.8)], [sb(G1, 0.7)], [sb(G1, 0.6)]]
    result = average_precision(preds, [[G1], [G1], [G1]])
    assert result.ap == pytest.approx(5 / 6)


def test_ap_duplicate_detection_is_false_positive() -> None:
    result = average_precision([[sb(G1, 0.9), sb(Box(0, 0, 10, 9), 0.8)]], [[G1]])
    np.testing.assert_allclose(result.precision, [1.0, 0.5])
    np.testing.assert_allclose(result.recall, [1.0, 1.0])
    assert result.ap == pytest.approx(1.0)


def test_ap_iou_must_exceed_threshold() -> None:
    half = Box(0, 0, 10, 20)  # IoU with G1 exactly 100/200 = 0.5
    assert iou(half, G1) == pytest.approx(0.5)
    assert average_precision([[sb(half, 0.9)]], [[G1]]).ap == 0.0
    assert average_precision([[sb(half, 0.9)]], [[G1]], iou_threshold=0.4).ap == pytest.approx(1.0)


def test_ap_voc_matching_takes_best_overlap_even_if_matched() -> None:
    # p2 overlaps G1 most (0.905) and g2 less (0.739); G1 is already taken by p1 -> p2 is a FP
    # (VOC devkit rule), so recall stops at 0.5 and AP = 0.5.
    g2 = Box(2, 0, 12, 10)
    p2 = Box(0.5, 0, 10.5, 10)
    assert iou(p2, G1) > iou(p2, g2) > 0.5
    result = average_precision([[sb(G1, 0.9), sb(p2, 0.8)]], [[G1, g2]])
    assert result.ap == pytest.approx(0.5)


def test_ap_tied_scores_form_one_operating_point() -> None:
    # A TP and a FP with equal scores on two images, 2 GT: one point at recall 0.5, precision 0.5,
    # whatever the order -> AP 0.25 (sorting ties TP-first would give 0.5, FP-first 0.25).
    a = average_precision([[sb(G1, 0.5)], [sb(FAR, 0.5)]], [[G1], [G1]])
    b = average_precision([[sb(FAR, 0.5)], [sb(G1, 0.5)]], [[G1], [G1]])
    assert a.ap == pytest.approx(0.25)
    assert b.ap == pytest.approx(0.25)


def test_ap_edge_cases() -> None:
    nothing = average_precision([[], []], [[], []])
    assert nothing.ap is None
    assert average_precision([[]], [[G1]]).ap == 0.0
    no_truth = average_precision([[sb(G1, 0.9), sb(FAR, 0.3)]], [[]])
    assert no_truth.ap == 0.0
    assert no_truth.n_predictions == 2
    with pytest.raises(ValueError, match="same images"):
        average_precision([[]], [[], []])
    with pytest.raises(ValueError, match="iou_threshold"):
        average_precision([[]], [[]], iou_threshold=1.5)


def test_ranking_ap_and_none_scores() -> None:
    # TP, FP, TP, FP with 2 positives -> 0.5·1 + 0.5·2/3.
    result = ranking_average_precision([0.9, 0.8, 0.7, 0.6], [True, False, True, False])
    assert result.ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert ranking_average_precision([0.9, 0.1], [False, False]).ap is None
    assert none_scores([[sb(G1, 0.9), sb(FAR, 0.3)], [], [sb(G1, 0.2)]]) == pytest.approx([0.1, 1.0, 0.8])


def test_siim_map_is_six_class_mean_and_two_thirds_weighting() -> None:
    study = {"negative": 0.6, "typical": 0.9, "indeterminate": 0.3, "atypical": 0.2}
    value = siim_map(study, opacity_ap=0.5, none_ap=0.8)
    assert value == pytest.approx(3.3 / 6)
    assert value == pytest.approx(2 / 3 * np.mean(list(study.values())) + 1 / 3 * np.mean([0.5, 0.8]))
    # A class absent from the ground truth (None) is left out of the mean.
    assert siim_map({**study, "atypical": None}, opacity_ap=0.5, none_ap=0.8) == pytest.approx(3.1 / 5)
    assert siim_map({}, opacity_ap=None, none_ap=None) is None
    with pytest.raises(ValueError, match="covid"):
        siim_map({"covid": 0.5}, opacity_ap=0.5, none_ap=0.5)


def test_mean_defined() -> None:
    assert mean_defined([1.0, None, 0.0]) == pytest.approx(0.5)
    assert mean_defined([None]) is None


# ------------------------------------------------------------------ segmentation


def _mask(cells: list[tuple[int, int]], shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for r, c in cells:
        m[r, c] = True
    return m


def test_dice_and_iou_of_known_masks() -> None:
    pred = _mask([(0, 0), (0, 1), (1, 0), (1, 1)])  # 4 px
    truth = _mask([(0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)])  # 6 px, 3 shared
    assert dice(pred, truth) == pytest.approx(0.6)
    assert iou_mask(pred, truth) == pytest.approx(3 / 7)
    assert dice(pred.astype(np.uint8) * 255, truth) == pytest.approx(0.6)


def test_empty_mask_conventions() -> None:
    empty = np.zeros((4, 4), dtype=bool)
    some = _mask([(1, 1)])
    assert dice(empty, empty) == 1.0
    assert dice(empty, empty, empty=0.5) == 0.5
    assert iou_mask(empty, empty) == 1.0
    assert dice(some, empty) == 0.0
    assert dice(empty, some) == 0.0
    assert iou_mask(empty, some) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        dice(empty, np.zeros((3, 4), dtype=bool))


def test_summarize_segmentation_keeps_empty_truth_apart() -> None:
    overlaps = [
        MaskOverlap(intersection=3, predicted=4, truth=6),  # dice 0.6
        MaskOverlap(intersection=0, predicted=0, truth=0),  # empty, agreed
        MaskOverlap(intersection=0, predicted=5, truth=0),  # empty, false alarm
        MaskOverlap(intersection=8, predicted=8, truth=8),  # dice 1
    ]
    s = summarize_segmentation(overlaps)
    assert (s.n_images, s.n_nonempty, s.n_empty) == (4, 2, 2)
    assert s.dice_nonempty == pytest.approx(0.8)
    assert s.iou_nonempty == pytest.approx((3 / 7 + 1.0) / 2)
    assert s.empty_agreement == pytest.approx(0.5)
    assert s.dice_all == pytest.approx((0.6 + 1.0 + 0.0 + 1.0) / 4)
    assert s.dice_pooled == pytest.approx(22 / 31)
    nothing = summarize_segmentation([])
    assert nothing.dice_nonempty is None and nothing.empty_agreement is None and nothing.dice_pooled is None


# ------------------------------------------------------------------ classification


def test_accuracy() -> None:
    assert accuracy(["a", "b", "c"], ["a", "c", "c"]) == pytest.approx(2 / 3)
    assert accuracy(["a", "b"], ["a", None]) == pytest.approx(0.5)
    assert accuracy([], []) is None
    with pytest.raises(ValueError, match="equal length"):
        accuracy(["a"], [])


def test_confusion_matrix() -> None:
    m = confusion_matrix(
        ["frontal", "frontal", "lateral", "other"], ["frontal", "lateral", "lateral", "frontal"], VIEWS
    )
    np.testing.assert_array_equal(m, [[1, 1, 0], [0, 1, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="'oblique'"):
        confusion_matrix(["oblique"], ["frontal"], VIEWS)
    with pytest.raises(ValueError, match="'oblique'"):
        confusion_matrix(["frontal"], ["oblique"], VIEWS)


def test_roc_auc_hand_computed_with_ties() -> None:
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    # Positives 0.5, 0.9; negatives 0.5, 0.5: pairs 0.5/0.5/1/1 -> 3/4.
    assert roc_auc([0.5, 0.5, 0.5, 0.9], [False, True, False, True]) == pytest.approx(0.75)
    assert roc_auc([0.2, 0.9], [False, True]) == 1.0
    assert roc_auc([0.9, 0.2], [False, True]) == 0.0
    assert roc_auc([0.2, 0.9], [True, True]) is None
    assert roc_auc([0.2, 0.9], [False, False]) is None


def test_roc_auc_matches_pair_counting() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=40).astype(float)  # many ties
    positives = rng.random(40) < 0.4
    pos, neg = scores[positives], scores[~positives]
    pairs = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    assert roc_auc(scores, positives) == pytest.approx(pairs / (pos.size * neg.size))


def test_roc_curve_points_and_area() -> None:
    curve = roc_curve([0.9, 0.5, 0.5, 0.1], [True, True, False, False])
    np.testing.assert_allclose(curve.tpr, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(curve.fpr, [0.0, 0.0, 0.5, 1.0])
    assert math.isinf(curve.thresholds[0])
    np.testing.assert_allclose(curve.thresholds[1:], [0.9, 0.5, 0.1])
    assert curve.auc == pytest.approx(0.875)
    assert float(np.trapezoid(curve.tpr, curve.fpr)) == pytest.approx(curve.auc)
    assert roc_curve([0.3, 0.4], [True, True]).auc is None


def test_macro_auc_ovr_hand_computed() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    labels = ["a", "a", "b", "c"]
    # a: 3/4, b: 2/3, c: 1 -> mean 29/36.
    assert macro_auc_ovr(probs, labels, ["a", "b", "c"]) == pytest.approx((0.75 + 2 / 3 + 1.0) / 3)
    # A class without positives is left out.
    with_d = np.hstack([probs, np.zeros((4, 1))])
    assert macro_auc_ovr(with_d, labels, ["a", "b", "c", "d"]) == pytest.approx((0.75 + 2 / 3 + 1.0) / 3)
    assert macro_auc_ovr(probs[:1], ["a"], ["a", "b", "c"]) is None
    with pytest.raises(ValueError, match="shape"):
        macro_auc_ovr(probs, labels, ["a", "b"])
    with pytest.raises(ValueError, match="'z'"):
        macro_auc_ovr(probs, ["a", "a", "b", "z"], ["a", "b", "c"])


# ------------------------------------------------------------------ regression


def test_mae() -> None:
    assert mae([1.0, 2.0, 3.0], [2.0, 2.0, 5.0]) == pytest.approx(1.0)
    assert mae([], []) is None
    with pytest.raises(ValueError, match="equal length"):
        mae([1.0], [1.0, 2.0])


def test_results_are_json_safe() -> None:
    result = average_precision([[]], [[]])
    json.dumps({"ap": result.ap, "auc": roc_auc([1.0], [True])}, allow_nan=False)


# ------------------------------------------------------------------ reporting threshold


def test_boxes_per_negative_image_at_a_threshold() -> None:
    negatives = [[sb(FAR, 0.9), sb(G1, 0.3)], [], [sb(FAR, 0.29)]]
    # score >= threshold is shown: 0.3 counts at 0.3, 0.29 does not.
    assert boxes_per_image(negatives, threshold=0.3) == pytest.approx(2 / 3)
    assert boxes_per_image(negatives, threshold=0.0) == pytest.approx(1.0)
    assert boxes_per_image(negatives, threshold=0.95) == 0.0
    assert boxes_per_image([], threshold=0.3) is None


def test_counts_at_threshold_match_like_ap() -> None:
    # Image 0: a duplicate of G1 (lower score) is a false positive; image 1: a box below threshold is dropped.
    preds = [[sb(G1, 0.9), sb(Box(0, 0, 10, 9), 0.8)], [sb(G1, 0.2)], [sb(FAR, 0.7)]]
    truth = [[G1], [G1], []]
    at = counts_at_threshold(preds, truth, threshold=0.5)
    assert (at.n_predictions, at.true_positives, at.n_truth) == (3, 1, 2)
    assert at.recall == pytest.approx(0.5) and at.precision == pytest.approx(1 / 3)
    low = counts_at_threshold(preds, truth, threshold=0.1)
    assert low.recall == pytest.approx(1.0)
    none = counts_at_threshold([[]], [[]], threshold=0.5)
    assert none.recall is None and none.precision is None
    with pytest.raises(ValueError, match="same images"):
        counts_at_threshold([[]], [], threshold=0.5)


# ------------------------------------------------------------------ rank correlation


def test_spearman_hand_computed() -> None:
    # Ranks x 1 2 3 4, y 1 3 2 4: d² = 0 1 1 0, ρ = 1 − 6·2 / (4·15) = 0.8.
    c = spearman([10.0, 20.0, 30.0, 40.0], [0.0, 5.0, 2.0, 8.0])
    assert c.rho == pytest.approx(0.8) and c.n == 4
    assert c.p_value is not None and 0.0 < c.p_value < 1.0
    # Ties take mid-ranks: x ranks 1 2.5 2.5 4 against y 1 2 3 4 -> Pearson of the ranks.
    tied = spearman([1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
    assert tied.rho == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])
    assert spearman([3.0, 1.0, 2.0], [30.0, 10.0, 20.0]).rho == pytest.approx(1.0)
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]).rho == pytest.approx(-1.0)


def test_spearman_undefined_cases() -> None:
    assert spearman([], []).rho is None
    assert spearman([1.0], [2.0]).rho is None
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]).rho is None  # constant side: no ranking
    two = spearman([1.0, 2.0], [5.0, 3.0])
    assert two.rho == pytest.approx(-1.0) and two.p_value is None  # scipy gives no p-value for two pairs
    with pytest.raises(ValueError, match="equal length"):
        spearman([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        spearman([1.0, math.nan], [1.0, 2.0])
