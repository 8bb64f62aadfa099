"""The typed result of analysing one study, and its JSON document.

The writers in :mod:`cxr_service.writers` and the API take a :class:`StudyResult`; nothing in
here holds tensors. Boxes are in ORIGINAL pixel coordinates of the source image (``x`` along
columns, ``y`` along rows, see :class:`cxr_models.records.Box`). Masks are boolean numpy arrays
in the original image size and are left out of equality and hashing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from cxr_models.inference.reasons import REASON_LATERAL, REASON_NOT_CHEST
from cxr_models.records import STUDY_LABELS, VIEWS, Box

from cxr_service.heatmaps import Heatmap

if TYPE_CHECKING:
    from cxr_service.triage import Triage

logger = logging.getLogger(__name__)

# REASON_*: reasons the pipeline itself gives, re-exported (ingest gives others).
__all__ = [
    "REASON_LATERAL",
    "REASON_NOT_CHEST",
    "AlgorithmInfo",
    "ImageResult",
    "Opacity",
    "StudyResult",
    "to_result_json",
]

_BOX_DECIMALS = 1
_PROBABILITY_DECIMALS = 4
_PERCENT_DECIMALS = 2
_OOD_DECIMALS = 4
_TIMING_DECIMALS = 1


@dataclass(frozen=True)
class AlgorithmInfo:
    """Identification of the algorithm that produced a result (IHE AIR contributing equipment)."""

    name: str
    version: str
    model_uids: Mapping[str, str]
    manufacturer: str = "cxr open-source project"
    demo_weights: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError(f"name must not be empty, got {self.name!r}")
        if not self.version:
            raise ValueError(f"version must not be empty, got {self.version!r}")

    def __hash__(self) -> int:
        # The generated hash cannot hash the mapping; this one agrees with the generated
        # equality, so the writers can key what they build once per algorithm by it.
        return hash((self.name, self.version, tuple(sorted(self.model_uids.items())), self.manufacturer, self.demo_weights))


@dataclass(frozen=True)
class Opacity:
    """One detected opacity: a box in original pixel coordinates and its score in [0, 1]."""

    box: Box
    score: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score must be in [0, 1], got {self.score!r}")


@dataclass(frozen=True)
class ImageResult:
    """Result for one source image; ``analysed`` is False for skipped images, with ``reason``.

    ``ood_score`` is the out-of-distribution score (None when the weights have no OOD model or the
    image never reached the models); ``crop_fallback`` is True only when the weights manifest
    enables the whole-image fallback and the lung mask was implausible.
    """

    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    view: str | None  # None only for images rejected before the view filter ran
    view_probabilities: Mapping[str, float]
    analysed: bool
    reason: str | None = None
    ood_score: float | None = None
    lung_box: Box | None = None
    crop_fallback: bool = False
    opacities: tuple[Opacity, ...] = ()
    opacity_percent: float | None = None
    lung_mask: np.ndarray | None = field(default=None, compare=False, hash=False, repr=False)
    opacity_mask: np.ndarray | None = field(default=None, compare=False, hash=False, repr=False)
    # The image's heatmaps (cxr_service.heatmaps), only when an output asks for them.
    heatmaps: tuple[Heatmap, ...] = field(default=(), compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.view is None and self.analysed:
            raise ValueError("view is required for an analysed image, got None")
        if self.view is not None and self.view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS} or None, got {self.view!r}")
        if not self.analysed and not self.reason:
            raise ValueError(f"reason is required for a skipped image, got {self.reason!r}")
        if self.analysed and self.reason is not None:
            raise ValueError(f"reason must be None for an analysed image, got {self.reason!r}")
        if not self.analysed and self.opacities:
            raise ValueError(f"a skipped image cannot have opacities, got {len(self.opacities)}")
        if self.ood_score is not None and not (np.isfinite(self.ood_score) and self.ood_score >= 0.0):
            raise ValueError(f"ood_score must be a finite number >= 0, got {self.ood_score!r}")
        if self.opacity_percent is not None and not 0.0 <= self.opacity_percent <= 100.0:
            raise ValueError(f"opacity_percent must be in [0, 100], got {self.opacity_percent!r}")
        for name in ("lung_mask", "opacity_mask"):
            mask = getattr(self, name)
            if mask is not None and (mask.ndim != 2 or mask.dtype != np.bool_):
                raise ValueError(f"{name} must be a 2-D bool array, got {mask.dtype} {mask.shape}")


@dataclass(frozen=True)
class StudyResult:
    """Result for one study: the study class (None when no image was analysed) and its images.

    ``unattributed`` holds the reasons of the study's instances that had no SOP Instance UID
    (they cannot be referenced, but the SR still says that they were not analysed). ``triage``
    is the study's reading priority (:func:`cxr_service.triage.assess`), set by the pipeline.
    """

    study_instance_uid: str
    algorithm: AlgorithmInfo
    study_label: str | None
    study_probabilities: Mapping[str, float] | None
    images: tuple[ImageResult, ...]
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    unattributed: tuple[str, ...] = ()
    triage: Triage | None = None

    def __post_init__(self) -> None:
        if self.study_label is not None and self.study_label not in STUDY_LABELS:
            raise ValueError(f"study_label must be one of {STUDY_LABELS}, got {self.study_label!r}")
        if self.study_probabilities is not None:
            unknown = set(self.study_probabilities) - set(STUDY_LABELS)
            if unknown:
                raise ValueError(f"study_probabilities has unknown labels {sorted(unknown)}")
        uids = [image.sop_instance_uid for image in self.images]
        if len(set(uids)) != len(uids):
            raise ValueError(f"images must have distinct SOP Instance UIDs, got {uids}")

    @property
    def analysed_images(self) -> tuple[ImageResult, ...]:
        return tuple(image for image in self.images if image.analysed)

    @property
    def skipped_images(self) -> tuple[ImageResult, ...]:
        return tuple(image for image in self.images if not image.analysed)


def _box_json(box: Box | None) -> list[float] | None:
    if box is None:
        return None
    return [round(float(v), _BOX_DECIMALS) for v in box.as_list()]


def _probabilities_json(probabilities: Mapping[str, float] | None) -> dict[str, float] | None:
    if probabilities is None:
        return None
    return {key: round(float(value), _PROBABILITY_DECIMALS) for key, value in probabilities.items()}


def _image_json(image: ImageResult) -> dict[str, Any]:
    return {
        "sop_instance_uid": image.sop_instance_uid,
        "view": image.view,
        "view_probabilities": _probabilities_json(image.view_probabilities),
        "analysed": image.analysed,
        "reason": image.reason,
        "ood_score": None if image.ood_score is None else round(float(image.ood_score), _OOD_DECIMALS),
        "lung_box": _box_json(image.lung_box),
        "opacities": [
            {"box": _box_json(o.box), "score": round(float(o.score), _PROBABILITY_DECIMALS)}
            for o in image.opacities
        ],
        "opacity_percent": (
            None if image.opacity_percent is None else round(float(image.opacity_percent), _PERCENT_DECIMALS)
        ),
    }


def to_result_json(result: StudyResult, *, outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The result document served by the API: rounded so that two runs are byte-identical.

    ``outputs`` describes the DICOM objects written (e.g. kind → list of SOP Instance UIDs) and
    is copied as given.
    """
    return {
        "study_instance_uid": result.study_instance_uid,
        "model_version": result.algorithm.version,
        "study": {
            "label": result.study_label,
            "probabilities": _probabilities_json(result.study_probabilities),
        },
        "images": [_image_json(image) for image in result.images],
        "outputs": dict(outputs),
        "timings_ms": {key: round(float(value), _TIMING_DECIMALS) for key, value in result.timings_ms.items()},
        "triage": None if result.triage is None else result.triage.to_json(),
    }
