"""Out-of-distribution score: how unlike the training chest radiographs an image looks.

The features are the view network's penultimate layer (global average pool of its trunk) on the
view input, taken from the view stage's own forward pass (:mod:`cxr_models.inference.view`). A
Gaussian is fitted on the features of the training part's frontal chest images: their mean and
their Ledoit-Wolf shrunk covariance (Ledoit & Wolf 2004, "A well-conditioned estimator for
large-dimensional covariance matrices"). An image's score is its Mahalanobis distance to that
Gaussian per feature dimension, ``sqrt(d^2 / D)``: about 1 for a typical training image,
larger the less alike. An image scoring above the manifest's threshold is not analysed, with the
reason ``image unlike the training data (score S, limit T)``.

The fitted Gaussian is the weights file ``ood.pt`` (``torch.save`` of float32 tensors ``mean``
and ``precision`` plus metadata), recorded with its sha256 under the manifest key ``"ood"`` by
``python -m cxr_models.evaluation.fit_ood`` (which also chooses the threshold on validation
images). Without an ``"ood"`` entry the pipeline computes no score.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_models.inference.reasons import out_of_distribution
from cxr_models.inference.view import FEATURES_NAME
from cxr_models.weights import WeightsError, load_ood_state

logger = logging.getLogger(__name__)

OOD_FILE = "ood.pt"
# Added to the covariance diagonal, relative to the mean feature variance, so that constant
# (dead) feature channels keep it invertible.
RIDGE = 1e-6


def ledoit_wolf(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """The Ledoit-Wolf shrunk covariance of ``centred`` (N, D) samples and its shrinkage in [0, 1].

    With ``S`` the sample covariance (divided by N) and ``m = tr(S) / D``, the estimate is
    ``(1 - s) S + s m I`` with ``s = min(b2, d2) / d2``, ``d2 = ||S - m I||_F^2 / D`` and
    ``b2 = (sum_k ||x_k||^4 / N - ||S||_F^2) / (N D)`` (the lemma 3.3 estimator of
    sum_k ||x_k x_k^T - S||_F^2 / (N^2 D)).
    """
    x = np.asarray(centred, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need an (N, D) array with N >= 2 samples, got shape {x.shape}")
    n, dim = x.shape
    sample = x.T @ x / n
    mu = float(np.trace(sample)) / dim
    d2 = float(np.sum((sample - mu * np.eye(dim)) ** 2)) / dim
    b2 = (float(np.sum(np.sum(x**2, axis=1) ** 2)) / n - float(np.sum(sample**2))) / (n * dim)
    shrinkage = 0.0 if d2 <= 0.0 else min(max(b2, 0.0), d2) / d2
    return (1.0 - shrinkage) * sample + shrinkage * mu * np.eye(dim), float(shrinkage)


@dataclass(frozen=True, eq=False)
class GaussianScorer:
    """A Gaussian over feature vectors; :meth:`scores` is ``sqrt(Mahalanobis^2 / D)``."""

    mean: np.ndarray
    precision: np.ndarray
    n_fit: int
    shrinkage: float
    features: str = FEATURES_NAME

    def __post_init__(self) -> None:
        if self.mean.ndim != 1 or self.precision.shape != (self.mean.size, self.mean.size):
            raise ValueError(f"mean (D,) and precision (D, D) do not fit: {self.mean.shape}, {self.precision.shape}")

    @property
    def dim(self) -> int:
        return int(self.mean.size)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The score of each row of ``features`` (N, D) as a float64 (N,) array."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must have shape (N, {self.dim}), got {x.shape}")
        d = x - self.mean
        squared = np.einsum("ij,jk,ik->i", d, self.precision.astype(np.float64), d)
        return np.sqrt(np.maximum(squared, 0.0) / self.dim)

    def state_dict(self) -> dict[str, Any]:
        """What ``ood.pt`` holds: float32 tensors ``mean`` and ``precision`` and the metadata."""
        return {
            "mean": torch.from_numpy(np.asarray(self.mean, dtype=np.float32)),
            "precision": torch.from_numpy(np.asarray(self.precision, dtype=np.float32)),
            "dim": self.dim,
            "n_fit": int(self.n_fit),
            "shrinkage": float(self.shrinkage),
            "features": self.features,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> GaussianScorer:
        missing = {"mean", "precision", "n_fit", "shrinkage"} - set(state)
        if missing:
            raise ValueError(f"OOD state lacks {sorted(missing)}")
        return cls(
            mean=state["mean"].double().numpy(),
            precision=state["precision"].double().numpy(),
            n_fit=int(state["n_fit"]),
            shrinkage=float(state["shrinkage"]),
            features=str(state.get("features", FEATURES_NAME)),
        )


def fit_gaussian(features: np.ndarray, *, name: str = FEATURES_NAME) -> GaussianScorer:
    """Mean and Ledoit-Wolf precision of ``features`` (N, D), N >= 2."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need an (N, D) array of N >= 2 feature vectors, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or infinite values")
    mean = x.mean(axis=0)
    covariance, shrinkage = ledoit_wolf(x - mean)
    scale = float(np.trace(covariance)) / x.shape[1]
    covariance = covariance + RIDGE * (scale if scale > 0 else 1.0) * np.eye(x.shape[1])
    precision = np.linalg.inv(covariance)
    precision = (precision + precision.T) / 2.0
    logger.info("OOD Gaussian: %d samples, %d dimensions, shrinkage %.3f", x.shape[0], x.shape[1], shrinkage)
    return GaussianScorer(mean=mean, precision=precision, n_fit=int(x.shape[0]), shrinkage=shrinkage, features=name)


@dataclass(frozen=True, eq=False)
class OODDetector:
    """A fitted Gaussian and the score above which an image is not analysed."""

    scorer: GaussianScorer
    threshold: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.threshold) or self.threshold <= 0:
            raise ValueError(f"threshold must be a positive number, got {self.threshold!r}")

    def scores(self, features: np.ndarray) -> np.ndarray:
        return self.scorer.scores(features)

    def reason(self, score: float) -> str | None:
        """``image unlike the training data (...)`` when ``score`` is above the threshold, else None."""
        return out_of_distribution(score, self.threshold) if score > self.threshold else None


def load_ood(manifest: Mapping[str, Any], *, weights_dir: Path | None = None) -> OODDetector | None:
    """The detector of the manifest's ``"ood"`` entry (sha256 checked), or None without one.

    The entry names the view model its features came from (``view_uid``); a manifest whose view
    model is another one is refused (the Gaussian would describe features the pipeline no longer
    computes): rerun ``fit_ood`` after exporting a new view model.
    """
    loaded = load_ood_state(weights_dir=weights_dir, manifest=dict(manifest))
    if loaded is None:
        return None
    entry, state = loaded
    view_uid = manifest.get("models", {}).get("view", {}).get("uid")
    if entry.get("view_uid") is not None and entry["view_uid"] != view_uid:
        raise WeightsError(
            f"the OOD Gaussian {entry['file']} was fitted on view model {entry['view_uid']}, the manifest's view "
            f"model is {view_uid}: rerun python -m cxr_models.evaluation.fit_ood --write-manifest"
        )
    scorer = GaussianScorer.from_state_dict(state)
    if scorer.features != FEATURES_NAME:
        raise WeightsError(f"OOD file {entry['file']} was fitted on {scorer.features!r}, the pipeline gives {FEATURES_NAME!r}")
    try:
        threshold = float(entry["threshold"])
        return OODDetector(scorer=scorer, threshold=threshold)
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"manifest 'ood' entry has no valid threshold: {exc}") from None
