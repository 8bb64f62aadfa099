"""Reader for the RSNA Pneumonia Detection Challenge layout.

Layout::

    ROOT/stage_2_train_labels.csv           patientId,x,y,width,height,Target (one row per box)
    ROOT/stage_2_train_images/<patientId>.dcm
    ROOT/stage_2_detailed_class_info.csv    patientId,class   (optional)

One frontal image per patient, so ``study_id`` is the patient id. ``Target`` 0 rows (empty
coordinates) mean "annotated, no opacity": ``boxes == ()``. The dataset has no 4-class COVID
label, so ``study_label`` is None. When the detailed class file is there it is cross-checked:
"Lung Opacity" must go with Target 1 and only with it.

Malformed rows (non-numeric coordinates, Target 1 without a box, a patient with both Target 0
and 1) raise a ValueError naming the file, line and value: the challenge CSVs are clean, so such
a row means a damaged copy. Patients whose DICOM file is missing are skipped with one warning
giving the count.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cxr_models.datasets.csvio import read_rows
from cxr_models.records import Box, ImageRecord

logger = logging.getLogger(__name__)

LABELS_CSV = "stage_2_train_labels.csv"
IMAGES_DIR = "stage_2_train_images"
CLASS_INFO_CSV = "stage_2_detailed_class_info.csv"
OPACITY_CLASS = "Lung Opacity"
_COORDS = ("x", "y", "width", "height")


def read_detailed_classes(path: Path) -> dict[str, str]:
    """patientId -> class of ``stage_2_detailed_class_info.csv`` (rows repeat per box)."""
    classes: dict[str, str] = {}
    for row in read_rows(path, required=("patientId", "class")):
        patient = row.require("patientId")
        value = row.require("class")
        if patient in classes and classes[patient] != value:
            raise row.error("class", value, f"contradicts class {classes[patient]!r} given earlier for {patient}")
        classes[patient] = value
    return classes


def _read_labels(path: Path) -> dict[str, tuple[Box, ...]]:
    boxes: dict[str, list[Box]] = {}
    negative: set[str] = set()
    for row in read_rows(path, required=("patientId", *_COORDS, "Target")):
        patient = row.require("patientId")
        target = row.float_or_none("Target")
        if target == 0.0:
            if patient in boxes:
                raise row.error("Target", row.get("Target"), f"is 0 but {patient} has Target 1 rows")
            negative.add(patient)
            continue
        if target != 1.0:
            raise row.error("Target", row.get("Target"), "is not 0 or 1")
        if patient in negative:
            raise row.error("Target", row.get("Target"), f"is 1 but {patient} has a Target 0 row")
        coords: list[float] = []
        for column in _COORDS:
            value = row.float_or_none(column)
            if value is None:
                raise row.error(column, row.get(column), "is empty in a Target 1 row")
            coords.append(value)
        x, y, w, h = coords
        if w < 0 or h < 0:
            raise row.error("width" if w < 0 else "height", row.get("width" if w < 0 else "height"), "is negative")
        boxes.setdefault(patient, []).append(Box(x, y, x + w, y + h))
    out = {patient: tuple(found) for patient, found in boxes.items()}
    out.update({patient: () for patient in negative})
    return out


def read_rsna_pneumonia(root: Path) -> list[ImageRecord]:
    """Records of an RSNA Pneumonia Detection training folder, sorted by patient id."""
    root = Path(root)
    labels_path = root / LABELS_CSV
    if not labels_path.is_file():
        raise ValueError(f"root {root} has no {LABELS_CSV}; not an RSNA Pneumonia layout")
    labels = _read_labels(labels_path)
    classes_path = root / CLASS_INFO_CSV
    if classes_path.is_file():
        for patient, value in read_detailed_classes(classes_path).items():
            if patient in labels and (value == OPACITY_CLASS) != bool(labels[patient]):
                raise ValueError(
                    f"{classes_path}: class {value!r} of {patient} contradicts its "
                    f"{len(labels[patient])} box(es) in {labels_path}"
                )
    images = root / IMAGES_DIR
    present = frozenset(p.name for p in images.iterdir()) if images.is_dir() else frozenset()
    records: list[ImageRecord] = []
    missing = 0
    for patient in sorted(labels):
        name = f"{patient}.dcm"
        if name not in present:
            logger.debug("%s: no DICOM file for patient %s", root, patient)
            missing += 1
            continue
        records.append(
            ImageRecord(image_id=patient, path=images / name, study_id=patient, view="frontal", boxes=labels[patient])
        )
    if missing:
        logger.warning("%s: skipped %d patient(s) whose DICOM file is missing from %s", root, missing, images)
    logger.info("%s: %d RSNA Pneumonia image(s)", root, len(records))
    return records
