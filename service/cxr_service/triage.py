"""Triage: a study's reading priority from its results, in one pure function (:func:`assess`).

Two figures of the result decide it:

- the highest score of the opacities reported on the study's analysed images;
- the probability that the study is abnormal, ``1 - P(negative)`` of the study classifier.

Each has an *urgent* and a *priority* threshold (settings ``CXR_TRIAGE_*``). A study is
``urgent`` when either figure reaches its urgent threshold, else ``priority`` when either reaches
its priority threshold, else ``routine``. A study none of whose images could be analysed has no
figures: it is ``unassessed``, which the worklist puts after ``priority`` and before ``routine``
(the algorithm cannot vouch that it is routine).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr_service.results import StudyResult
    from cxr_service.settings import Settings

_DECIMALS = 4


class Priority(StrEnum):
    URGENT = "urgent"
    PRIORITY = "priority"
    UNASSESSED = "unassessed"
    ROUTINE = "routine"


#: Worklist order: a lower rank is read first.
RANK: Mapping[Priority, int] = {Priority.URGENT: 0, Priority.PRIORITY: 1, Priority.UNASSESSED: 2, Priority.ROUTINE: 3}


def at_least(priority: Priority | str, level: Priority | str) -> bool:
    """Whether ``priority`` is ``level`` or more pressing (``unassessed`` is below ``priority``)."""
    return RANK[Priority(priority)] <= RANK[Priority(level)]


@dataclass(frozen=True)
class TriageThresholds:
    """Thresholds in [0, 1]; each priority threshold is at most its urgent one."""

    urgent_opacity: float = 0.8
    urgent_abnormal: float = 0.95
    priority_opacity: float = 0.5
    priority_abnormal: float = 0.7

    def __post_init__(self) -> None:
        for name in ("urgent_opacity", "urgent_abnormal", "priority_opacity", "priority_abnormal"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        for kind in ("opacity", "abnormal"):
            urgent, priority = getattr(self, f"urgent_{kind}"), getattr(self, f"priority_{kind}")
            if priority > urgent:
                raise ValueError(f"priority_{kind} ({priority}) must not exceed urgent_{kind} ({urgent})")

    @classmethod
    def from_settings(cls, settings: Settings) -> TriageThresholds:
        return cls(
            urgent_opacity=settings.triage_urgent_opacity,
            urgent_abnormal=settings.triage_urgent_abnormal,
            priority_opacity=settings.triage_priority_opacity,
            priority_abnormal=settings.triage_priority_abnormal,
        )

    def to_json(self) -> dict[str, float]:
        return {
            "urgent_opacity": self.urgent_opacity,
            "urgent_abnormal": self.urgent_abnormal,
            "priority_opacity": self.priority_opacity,
            "priority_abnormal": self.priority_abnormal,
        }


@dataclass(frozen=True)
class Triage:
    """The priority of a study, the two figures it was decided from (None: not available) and
    the reasons (which threshold each figure reached)."""

    priority: Priority
    max_opacity_score: float | None
    abnormal_probability: float | None
    reasons: tuple[str, ...]
    thresholds: TriageThresholds

    def to_json(self) -> dict[str, Any]:
        return {
            "priority": str(self.priority),
            "max_opacity_score": self.max_opacity_score,
            "abnormal_probability": self.abnormal_probability,
            "reasons": list(self.reasons),
            "thresholds": self.thresholds.to_json(),
        }


def decide(
    max_opacity_score: float | None, abnormal_probability: float | None, thresholds: TriageThresholds, *, analysed: bool
) -> Triage:
    """The rule itself, on the two figures (see the module docstring)."""
    if not analysed:
        return Triage(Priority.UNASSESSED, None, None, ("no image of the study could be analysed",), thresholds)
    score = None if max_opacity_score is None else round(float(max_opacity_score), _DECIMALS)
    abnormal = None if abnormal_probability is None else round(float(abnormal_probability), _DECIMALS)
    for priority, opacity_limit, abnormal_limit in (
        (Priority.URGENT, thresholds.urgent_opacity, thresholds.urgent_abnormal),
        (Priority.PRIORITY, thresholds.priority_opacity, thresholds.priority_abnormal),
    ):
        reasons = []
        if score is not None and score >= opacity_limit:
            reasons.append(f"highest opacity score {score:.2f} >= {opacity_limit:.2f} ({priority} opacity threshold)")
        if abnormal is not None and abnormal >= abnormal_limit:
            reasons.append(f"abnormal probability {abnormal:.2f} >= {abnormal_limit:.2f} ({priority} abnormal threshold)")
        if reasons:
            return Triage(priority, score, abnormal, tuple(reasons), thresholds)
    return Triage(Priority.ROUTINE, score, abnormal, ("below every priority threshold",), thresholds)


def assess(result: StudyResult, thresholds: TriageThresholds) -> Triage:
    """The triage of a study result: its highest reported opacity score over the analysed images
    (None when none was reported) and 1 - P(negative) (None without study probabilities)."""
    analysed = result.analysed_images
    scores = [opacity.score for image in analysed for opacity in image.opacities]
    probabilities = result.study_probabilities or {}
    negative = probabilities.get("negative")
    return decide(
        max(scores) if scores else None,
        None if negative is None else 1.0 - float(negative),
        thresholds,
        analysed=bool(analysed),
    )
