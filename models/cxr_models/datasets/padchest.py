"""Reader for PadChest (feeds the view classifier).

Layout::

    ROOT/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv   (or the only *.csv in ROOT)
    ROOT/<ImageDir>/<ImageID>    16-bit PNG  (or ROOT/<ImageID>)

Projection -> view: PA, AP and AP_horizontal are ``frontal``; L is ``lateral``; COSTAL (rib
views, not a chest PA/lateral) is ``other``. EXCLUDE, UNK, empty and any other value carry no
usable view and are skipped, with one warning giving the count per value. Sites usually hold
only some of the image zip parts, so images missing on disk are skipped with one warning
giving the count. A row without an ImageID or StudyID, or a repeated ImageID, raises a
ValueError naming the file, line and value.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from cxr_models.datasets.csvio import read_rows
from cxr_models.records import ImageRecord

logger = logging.getLogger(__name__)

DEFAULT_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
REQUIRED_COLUMNS: tuple[str, ...] = ("ImageID", "StudyID", "Projection")
PROJECTION_VIEWS: dict[str, str] = {
    "PA": "frontal",
    "AP": "frontal",
    "AP_HORIZONTAL": "frontal",
    "L": "lateral",
    "COSTAL": "other",
}


def find_padchest_csv(root: Path) -> Path:
    """The PadChest label CSV of ``root``: the official name, else the only ``*.csv`` there."""
    root = Path(root)
    official = root / DEFAULT_CSV
    if official.is_file():
        return official
    candidates = sorted(p for p in root.glob("*.csv") if p.is_file())
    if len(candidates) != 1:
        raise ValueError(
            f"root {root} must hold {DEFAULT_CSV} or exactly one *.csv, found {[p.name for p in candidates]}"
        )
    return candidates[0]


def projection_view(projection: str) -> str | None:
    """View for a PadChest ``Projection`` value, or None when the image should be skipped."""
    return PROJECTION_VIEWS.get(projection.strip().upper())


def _normalise_dir(value: str) -> str:
    """``ImageDir`` as a folder name: pandas exports may write ``7.0`` for folder ``7``."""
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else value


class _Listing:
    """Names of files per folder, each folder listed once."""

    def __init__(self) -> None:
        self._names: dict[Path, frozenset[str]] = {}

    def contains(self, folder: Path, name: str) -> bool:
        if folder not in self._names:
            self._names[folder] = frozenset(p.name for p in folder.iterdir()) if folder.is_dir() else frozenset()
        return name in self._names[folder]


def read_padchest(root: Path, *, csv_path: Path | None = None) -> list[ImageRecord]:
    """Records of PadChest images present on disk with a usable projection, sorted by study then image."""
    root = Path(root)
    csv_path = Path(csv_path) if csv_path is not None else find_padchest_csv(root)
    listing = _Listing()
    records: list[ImageRecord] = []
    seen: dict[str, int] = {}
    skipped_projection: Counter[str] = Counter()
    missing = 0
    for row in read_rows(csv_path, required=REQUIRED_COLUMNS):
        image_id = row.require("ImageID")
        if image_id in seen:
            raise row.error("ImageID", image_id, f"repeats the image of line {seen[image_id]}")
        seen[image_id] = row.line
        study_id = row.require("StudyID")
        view = projection_view(row.get("Projection"))
        if view is None:
            skipped_projection[row.get("Projection") or "<empty>"] += 1
            continue
        image_dir = row.get("ImageDir")
        folders = [root / image_dir, root / _normalise_dir(image_dir), root] if image_dir else [root]
        path = next((folder / image_id for folder in folders if listing.contains(folder, image_id)), None)
        if path is None:
            missing += 1
            continue
        records.append(ImageRecord(image_id=image_id, path=path, study_id=study_id, view=view))
    if skipped_projection:
        logger.warning("%s: skipped images without a usable projection: %s", csv_path, dict(skipped_projection))
    if missing:
        logger.warning("%s: skipped %d image(s) missing under %s", csv_path, missing, root)
    records.sort(key=lambda r: (r.study_id or "", r.image_id))
    logger.info("%s: %d PadChest image(s)", root, len(records))
    return records
