"""Bootstrap intervals: coverage of known statistics, seeding, undefined resamples, paired AP differences."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_models.evaluation.intervals import (
    BootstrapSettings,
    ap_difference_statistic,
    ap_statistic,
    auc_statistic,
    bootstrap_interval,
    mean_statistic,
    spearman_statistic,
)
from cxr_models.evaluation.metrics import average_precision, average_precision_of, match_images
from cxr_models.records import Box, ScoredBox

TRUTH = Box(10, 10, 30, 30)
MISS = Box(60, 60, 80, 80)


def test_match_images_gives_the_same_ap_as_average_precision() -> None:
    preds = [
        (ScoredBox(TRUTH, 0.9), ScoredBox(MISS, 0.8)),
        (ScoredBox(MISS, 0.7),),
        (ScoredBox(Box(11, 11, 31, 31), 0.4), ScoredBox(Box(12, 12, 31, 31), 0.3)),
    ]
    truth = [(TRUTH,), (), (TRUTH,)]
    matches = match_images(preds, truth)
    assert [m.n_truth for m in matches] == [1, 0, 1]
    assert matches[0].hits.tolist() == [True, False]
    assert matches[2].hits.tolist() == [True, False]  # the second box duplicates the first
    assert average_precision_of(matches).ap == pytest.approx(average_precision(preds, truth).ap)
    # An image repeated counts twice, as a bootstrap resample needs.
    assert average_precision_of([matches[1], matches[1]]).ap == 0.0
    with pytest.raises(ValueError, match="same images"):
        match_images(preds, truth[:2])


def test_mean_interval_covers_the_normal_approximation() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(loc=5.0, scale=2.0, size=400)
    interval = bootstrap_interval(mean_statistic(values), len(values), settings=BootstrapSettings(resamples=2000))
    assert interval is not None
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert interval.low < values.mean() < interval.high
    assert interval.high - interval.low == pytest.approx(2 * half_width, rel=0.15)
    assert interval.defined == interval.resamples == 2000


def test_intervals_are_seeded() -> None:
    values = np.arange(30, dtype=float)
    first = bootstrap_interval(mean_statistic(values), 30, settings=BootstrapSettings(resamples=200, seed=3))
    again = bootstrap_interval(mean_statistic(values), 30, settings=BootstrapSettings(resamples=200, seed=3))
    other = bootstrap_interval(mean_statistic(values), 30, settings=BootstrapSettings(resamples=200, seed=4))
    assert first == again
    assert first != other


def test_no_interval_without_enough_defined_resamples() -> None:
    # Defined only when a resample starts with item 0: about 1 resample in 10.
    rare = bootstrap_interval(lambda index: 1.0 if index[0] == 0 else None, 10, settings=BootstrapSettings())
    assert rare is None
    # One positive among 40: about 1 - (39/40)^40 = 64 % of the resamples keep it and define the AUC.
    scores = np.linspace(0, 1, 40)
    single = bootstrap_interval(auc_statistic(scores, [True] + [False] * 39), 40, settings=BootstrapSettings())
    assert single is not None and 0.5 * single.resamples < single.defined < 0.8 * single.resamples
    assert bootstrap_interval(mean_statistic([1.0]), 1, settings=BootstrapSettings()) is None
    assert bootstrap_interval(mean_statistic([1.0, 2.0]), 2, settings=BootstrapSettings(resamples=0)) is None
    # A separable AUC: every defined resample gives 1.0.
    interval = bootstrap_interval(auc_statistic(scores, scores > 0.5), 40, settings=BootstrapSettings(resamples=300))
    assert interval is not None and interval.low == interval.high == 1.0


def test_settings_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="resamples"):
        BootstrapSettings(resamples=-1)
    with pytest.raises(ValueError, match="level"):
        BootstrapSettings(level=1.0)


def test_paired_difference_sees_a_better_detector() -> None:
    # 30 images with one opacity each: detector "good" finds 25 of them first, "poor" 10, at the same scores.
    truth = [(TRUTH,)] * 30
    good = [(ScoredBox(TRUTH if i < 25 else MISS, 0.9),) for i in range(30)]
    poor = [(ScoredBox(TRUTH if i < 10 else MISS, 0.9),) for i in range(30)]
    good_m, poor_m = match_images(good, truth), match_images(poor, truth)
    settings = BootstrapSettings(resamples=500)
    diff = bootstrap_interval(ap_difference_statistic(good_m, poor_m), 30, settings=settings)
    assert diff is not None and diff.low > 0
    same = bootstrap_interval(ap_difference_statistic(good_m, good_m), 30, settings=settings)
    assert same is not None and same.low == same.high == 0.0
    ap = bootstrap_interval(ap_statistic(good_m), 30, settings=settings)
    assert ap is not None and ap.low <= average_precision(good, truth).ap <= ap.high
    with pytest.raises(ValueError, match="same images"):
        ap_difference_statistic(good_m, poor_m[:5])


def test_spearman_interval_of_six_pairs_is_wide() -> None:
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    y = [2.0, 1.0, 4.0, 3.0, 6.0, 5.0]  # ρ = 0.83 from six pairs
    interval = bootstrap_interval(spearman_statistic(x, y), 6, settings=BootstrapSettings())
    assert interval is not None
    assert interval.high - interval.low > 0.4
