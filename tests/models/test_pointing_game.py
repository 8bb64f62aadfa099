"""The pointing-game rule of cxr_models.evaluation.pointing_game (pure functions, no models)."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_models.evaluation.pointing_game import (
    ImageScore,
    at_least_probability,
    chance,
    crop_support,
    hit,
    maximum_pixels,
    summarize,
)
from cxr_models.records import Box


def _mask(shape=(10, 10), box=(2, 3, 5, 7)) -> np.ndarray:
    y0, x0, y1, x1 = box
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_a_single_maximum_hits_or_misses() -> None:
    mask = _mask()
    heat = np.zeros((10, 10), dtype=np.float32)
    heat[3, 4] = 0.9
    assert hit(heat, mask) == 1.0
    heat[8, 8] = 1.0  # the maximum moves outside the mask
    assert hit(heat, mask) == 0.0
    # Negative values and an offset change nothing: only where the maximum is counts.
    assert hit(heat * 5.0 - 3.0, mask) == 0.0


def test_ties_count_as_the_share_inside_and_a_uniform_map_scores_chance() -> None:
    mask = _mask()  # 3 x 4 = 12 of 100 pixels
    heat = np.zeros((10, 10))
    heat[2, 3] = heat[9, 9] = 1.0  # one of two maxima inside
    assert hit(heat, mask) == 0.5
    uniform = np.full((10, 10), 0.25)
    assert hit(uniform, mask) == pytest.approx(0.12) == pytest.approx(chance(mask))
    assert hit(np.zeros((10, 10)), mask) == pytest.approx(0.12), "an all-zero map points nowhere in particular"
    # Within the tie tolerance is a tie; beyond it is not.
    heat = np.zeros((10, 10))
    heat[2, 3], heat[9, 9] = 1.0, 1.0 - 1e-9
    assert hit(heat, mask) == 0.5
    heat[9, 9] = 0.999
    assert hit(heat, mask) == 1.0
    assert maximum_pixels(heat).sum() == 1


def test_chance_over_a_support_and_the_crop_support() -> None:
    mask = _mask()
    support = crop_support((10, 10), Box(3.0, 2.0, 7.0, 6.0))  # x 3-7, y 2-6: 16 pixels, mask covers 3 x 4 of them
    assert support.sum() == 16
    assert chance(mask, support) == pytest.approx(12 / 16)
    assert crop_support((10, 10), None).all()
    with pytest.raises(ValueError, match="support of the uniform map is empty"):
        chance(mask, np.zeros((10, 10), dtype=bool))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="reference mask is empty"):
        hit(np.ones((4, 4)), np.zeros((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="shape"):
        hit(np.ones((4, 4)), np.ones((4, 5), dtype=bool))
    with pytest.raises(ValueError, match="non-finite"):
        hit(np.full((4, 4), np.nan), np.ones((4, 4), dtype=bool))


def test_at_least_probability_is_the_poisson_binomial_tail() -> None:
    assert at_least_probability([0.5, 0.5], 2) == pytest.approx(0.25)
    assert at_least_probability([0.5, 0.5], 1) == pytest.approx(0.75)
    assert at_least_probability([0.1, 0.2, 0.3], 0) == pytest.approx(1.0)
    # Fractional hits round up: 1.5 hits need at least 2.
    assert at_least_probability([0.5, 0.5], 1.5) == pytest.approx(0.25)
    p = [0.1, 0.2, 0.3]
    exact_three = 0.1 * 0.2 * 0.3
    assert at_least_probability(p, 3) == pytest.approx(exact_three)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        at_least_probability([1.5], 1)


def test_summary_compares_each_map_with_both_chance_levels() -> None:
    scores = [
        ImageScore(image_id=f"i{k}", study_id=f"s{k // 2}", hits={"a": 1.0, "b": 0.0},
                   chances={"uniform": 0.1, "uniform_crop": 0.2}, mask_fraction=0.1)
        for k in range(4)
    ]  # fmt: skip
    summary = summarize(scores)
    assert summary["n_images"] == 4 and summary["n_studies"] == 2
    assert summary["chance"] == {"uniform": pytest.approx(0.1), "uniform_crop": pytest.approx(0.2)}
    assert summary["a"]["hit_rate"] == 1.0 and summary["a"]["beats_uniform"] and summary["a"]["beats_uniform_crop"]
    assert summary["a"]["p_vs_uniform"] == pytest.approx(0.1**4)
    assert summary["b"]["hit_rate"] == 0.0 and not summary["b"]["beats_uniform"]
    assert summary["b"]["p_vs_uniform"] == pytest.approx(1.0)
    assert summarize([]) == {"n_images": 0, "n_studies": 0}
