"""Bootstrap confidence intervals of the evaluation's metrics.

The real validation part is small (tens of images with opacity boxes, six with a severity
score), so a point figure alone says little. Each interval is a percentile bootstrap over the
metric's own unit: images for the detection and segmentation figures, studies for the study-level
AUCs, image pairs for the Spearman ρ. A paired difference (ensemble against one detector, lung
crop against none) resamples the same images for both sides, so it answers "is A above B" rather
than comparing two independent intervals.

Resamples where a statistic is undefined (e.g. an AUC over a resample with one class only) are
left out; when fewer than :data:`MIN_DEFINED_FRACTION` of them define it, there is no interval.
The resampling is seeded, so an evaluation's intervals are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cxr_models.evaluation.metrics import (
    ImageMatches,
    MaskOverlap,
    average_precision_of,
    macro_auc_ovr,
    roc_auc,
    spearman,
)

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
DEFAULT_SEED = 0
# An interval needs the statistic defined on at least this fraction of the resamples.
MIN_DEFINED_FRACTION = 0.5

# A statistic of the items chosen by an index array (indices may repeat); None where undefined.
Statistic = Callable[[np.ndarray], "float | None"]


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval: ``low``/``high`` at ``level``, from ``defined`` of ``resamples`` draws."""

    low: float
    high: float
    level: float
    resamples: int
    defined: int

    def as_list(self) -> list[float]:
        return [self.low, self.high]


@dataclass(frozen=True)
class BootstrapSettings:
    """How many resamples, at which level, from which seed (0 resamples: no intervals)."""

    resamples: int = DEFAULT_RESAMPLES
    level: float = DEFAULT_LEVEL
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        if self.resamples < 0:
            raise ValueError(f"resamples must be >= 0, got {self.resamples}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {self.level}")

    def describe(self) -> str:
        return (
            f"percentile bootstrap, {self.resamples} resamples (seed {self.seed}), level {self.level:g}; "
            "resampling images (detection, false boxes, lung Dice, view), studies (AUCs) or pairs (Spearman ρ)"
        )


def bootstrap_interval(statistic: Statistic, n_items: int, *, settings: BootstrapSettings) -> Interval | None:
    """The percentile interval of ``statistic`` over ``settings.resamples`` resamples of ``n_items`` items.

    None with fewer than two items, no resamples, or a statistic defined on too few resamples.
    """
    if n_items < 2 or settings.resamples == 0:
        return None
    rng = np.random.default_rng(settings.seed)
    values = []
    for _ in range(settings.resamples):
        value = statistic(rng.integers(0, n_items, size=n_items))
        if value is not None and np.isfinite(value):
            values.append(float(value))
    if len(values) < MIN_DEFINED_FRACTION * settings.resamples:
        return None
    tail = (1.0 - settings.level) / 2.0
    low, high = np.quantile(np.asarray(values), [tail, 1.0 - tail])
    return Interval(
        low=float(low), high=float(high), level=settings.level, resamples=settings.resamples, defined=len(values)
    )


# --------------------------------------------------------------------------- statistics over resamples


def ap_statistic(matches: Sequence[ImageMatches]) -> Statistic:
    """VOC AP of the resampled images."""

    def statistic(index: np.ndarray) -> float | None:
        return average_precision_of([matches[i] for i in index]).ap

    return statistic


def ap_difference_statistic(first: Sequence[ImageMatches], second: Sequence[ImageMatches]) -> Statistic:
    """AP of ``first`` minus AP of ``second`` over the same resampled images (a paired difference)."""
    if len(first) != len(second):
        raise ValueError(f"first and second must match the same images, got {len(first)} and {len(second)}")
    return difference_statistic(ap_statistic(first), ap_statistic(second))


def difference_statistic(first: Statistic, second: Statistic) -> Statistic:
    """``first`` minus ``second`` on the same resample (undefined where either is)."""

    def statistic(index: np.ndarray) -> float | None:
        a, b = first(index), second(index)
        return None if a is None or b is None else a - b

    return statistic


def mean_statistic(values: Sequence[float]) -> Statistic:
    """Mean of the resampled values (accuracy of 0/1 flags, false boxes per image, per-image Dice)."""
    array = np.asarray(values, dtype=np.float64)

    def statistic(index: np.ndarray) -> float | None:
        return float(array[index].mean())

    return statistic


def dice_statistic(overlaps: Sequence[MaskOverlap]) -> Statistic:
    """Mean per-image Dice of the resampled non-empty ground-truth masks."""
    return mean_statistic([o.dice() for o in overlaps])


def auc_statistic(scores: Sequence[float], positives: Sequence[bool]) -> Statistic:
    """ROC AUC of the resampled (score, label) pairs; undefined on a resample with one class."""
    s = np.asarray(scores, dtype=np.float64)
    p = np.asarray(positives, dtype=bool)

    def statistic(index: np.ndarray) -> float | None:
        return roc_auc(s[index], p[index])

    return statistic


def macro_auc_statistic(probabilities: np.ndarray, labels: Sequence[str], classes: Sequence[str]) -> Statistic:
    """Macro one-vs-rest AUC of the resampled studies (classes absent from a resample left out)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    label_array = np.asarray(labels, dtype=object)

    def statistic(index: np.ndarray) -> float | None:
        return macro_auc_ovr(probs[index], list(label_array[index]), classes)

    return statistic


def spearman_statistic(x: Sequence[float], y: Sequence[float]) -> Statistic:
    """Spearman ρ of the resampled pairs, pairs with a NaN left out; undefined where a side is constant."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"x and y must have the same length, got {a.size} and {b.size}")

    def statistic(index: np.ndarray) -> float | None:
        xs, ys = a[index], b[index]
        keep = np.isfinite(xs) & np.isfinite(ys)
        return spearman(xs[keep], ys[keep]).rho

    return statistic
