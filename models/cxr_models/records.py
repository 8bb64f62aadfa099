"""Small frozen record types shared by the dataset readers, trainers and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

VIEWS: tuple[str, ...] = ("frontal", "lateral", "other")
STUDY_LABELS: tuple[str, ...] = ("negative", "typical", "indeterminate", "atypical")
# Column names of the SIIM-FISABIO-RSNA ``train_study_level.csv``, in STUDY_LABELS order.
SIIM_STUDY_COLUMNS: tuple[str, ...] = (
    "Negative for Pneumonia",
    "Typical Appearance",
    "Indeterminate Appearance",
    "Atypical Appearance",
)


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixel coordinates of the original image.

    ``x`` runs along columns and ``y`` along rows; ``x1``/``y1`` are exclusive edges.
    """

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        if not (self.x1 >= self.x0 and self.y1 >= self.y0):
            raise ValueError(f"box has negative extent: {self!r}")

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return self.width * self.height

    def as_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]

    def clip(self, other: "Box") -> "Box | None":
        """The intersection with ``other``, or None when they do not overlap."""
        x0, y0 = max(self.x0, other.x0), max(self.y0, other.y0)
        x1, y1 = min(self.x1, other.x1), min(self.y1, other.y1)
        if x1 <= x0 or y1 <= y0:
            return None
        return Box(x0, y0, x1, y1)


@dataclass(frozen=True)
class ScoredBox:
    """A predicted box with its confidence in [0, 1]."""

    box: Box
    score: float


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset, as a reader found it on disk.

    ``boxes`` is None when the image carries no box annotation at all and ``()`` when it
    is annotated as having no opacity. ``lung_mask``/``opacity_mask`` list mask files whose
    union is the mask (Montgomery keeps left and right lungs apart).

    Labels of real datasets that are not SIIM categories keep their own fields:
    ``abnormal`` is True/False where the source says abnormal/normal ("No Finding") and None
    where it says nothing; ``severity`` is the covid-severity geographic extent score (0-8,
    mean of three raters). ``patient_id`` groups images of one person for patient-disjoint
    splits (None: the study, else the image, stands for the patient). ``source`` names the
    data source the record came from and ``weight`` is its sampling weight in training;
    ``licence`` is the image's licence where the source gives one per image.
    """

    image_id: str
    path: Path
    study_id: str | None = None
    view: str | None = None
    boxes: tuple[Box, ...] | None = None
    lung_mask: tuple[Path, ...] | None = None
    opacity_mask: tuple[Path, ...] | None = None
    opacity_percent: float | None = None
    study_label: str | None = None
    patient_id: str | None = None
    abnormal: bool | None = None
    severity: float | None = None
    source: str | None = None
    weight: float = 1.0
    licence: str | None = None

    def __post_init__(self) -> None:
        if not self.weight >= 0.0:
            raise ValueError(f"weight must be >= 0, got {self.weight!r}")
        if self.view is not None and self.view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {self.view!r}")
        if self.study_label is not None and self.study_label not in STUDY_LABELS:
            raise ValueError(f"study_label must be one of {STUDY_LABELS}, got {self.study_label!r}")
