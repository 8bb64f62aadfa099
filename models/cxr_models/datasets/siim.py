"""Reader for the SIIM-FISABIO-RSNA COVID-19 layout, and PhantomCXR, which extends it.

Layout::

    ROOT/train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    ROOT/train_image_level.csv   id,boxes,label,StudyInstanceUID   (id = "<SOP>_image")
    ROOT/train_study_level.csv   id,<SIIM_STUDY_COLUMNS...>         (id = "<Study>_study", one-hot)

Boxes come from ``label`` ("opacity <conf> x0 y0 x1 y1 ..." or "none 1 0 0 1 1"), which is
authoritative; the ``boxes`` column (a Python literal list of ``{'x','y','width','height'}``
dicts, read with :func:`ast.literal_eval`) is used only when ``label`` is empty. Every image of
``train_image_level.csv`` is frontal and annotated (``boxes == ()`` when it has no opacity).

PhantomCXR adds ``ROOT/images.csv`` (every image, including lateral and non-chest ones, with
its view, path and opacity percentage) and ``ROOT/masks/<SOP>_lung.png`` /
``ROOT/masks/<SOP>_opacity.png``. Images not in ``train_image_level.csv`` get ``boxes=None``.

Malformed rows raise a ValueError naming the file, line and value: the competition CSVs and
the generator's CSVs are clean, so a bad row means a corrupted copy, not known noise. Images
whose DICOM file is missing are skipped with one warning giving the count (sites often hold a
partial copy).
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass
from pathlib import Path

from cxr_models.datasets.csvio import Row, read_rows
from cxr_models.records import SIIM_STUDY_COLUMNS, STUDY_LABELS, VIEWS, Box, ImageRecord

logger = logging.getLogger(__name__)

IMAGE_LEVEL_CSV = "train_image_level.csv"
STUDY_LEVEL_CSV = "train_study_level.csv"
CATALOGUE_CSV = "images.csv"
MASKS_DIR = "masks"
_IMAGE_SUFFIX = "_image"
_STUDY_SUFFIX = "_study"
_BOX_KEYS = ("x", "y", "width", "height")


@dataclass(frozen=True)
class _ImageLevel:
    study_id: str
    boxes: tuple[Box, ...]
    line: int


@dataclass(frozen=True)
class _CatalogueEntry:
    study_id: str
    path: Path
    view: str
    opacity_percent: float | None
    study_label: str | None
    line: int


def _strip_suffix(value: str, suffix: str) -> str:
    return value[: -len(suffix)] if value.endswith(suffix) else value


def _make_box(text: str, coords: tuple[float, float, float, float]) -> Box:
    try:
        return Box(*coords)
    except ValueError:
        raise ValueError(f"{text!r} describes a box with negative extent {coords}") from None


def parse_label(label: str) -> tuple[Box, ...]:
    """Boxes of a SIIM ``label`` cell: groups of ``<class> <confidence> x0 y0 x1 y1``.

    ``none`` groups carry no box; a ValueError names the label when it is malformed.
    """
    tokens = label.split()
    if len(tokens) % 6 != 0:
        raise ValueError(f"label {label!r} is not a sequence of '<class> <conf> x0 y0 x1 y1' groups")
    boxes: list[Box] = []
    for start in range(0, len(tokens), 6):
        name = tokens[start].lower()
        try:
            numbers = [float(t) for t in tokens[start + 1 : start + 6]]
        except ValueError:
            raise ValueError(f"label {label!r} has a non-numeric confidence or coordinate") from None
        if name == "none":
            continue
        if name != "opacity":
            raise ValueError(f"label {label!r} has unknown class {tokens[start]!r} (expected 'opacity' or 'none')")
        x0, y0, x1, y1 = numbers[1:]
        boxes.append(_make_box(label, (x0, y0, x1, y1)))
    return tuple(boxes)


def parse_boxes(boxes: str) -> tuple[Box, ...]:
    """Boxes of a SIIM ``boxes`` cell: a Python literal list of x/y/width/height dicts (or empty)."""
    if not boxes.strip() or boxes.strip().lower() == "nan":
        return ()
    try:
        value = ast.literal_eval(boxes.strip())
    except (ValueError, SyntaxError):
        raise ValueError(f"boxes {boxes!r} is not a Python literal list of dicts") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, dict) for item in value):
        raise ValueError(f"boxes {boxes!r} is not a list of dicts")
    out: list[Box] = []
    for item in value:
        if any(key not in item for key in _BOX_KEYS):
            raise ValueError(f"boxes {boxes!r} has a box without all of the keys {_BOX_KEYS}")
        try:
            x, y, w, h = (float(item[key]) for key in _BOX_KEYS)
        except (TypeError, ValueError):
            raise ValueError(f"boxes {boxes!r} has a non-numeric box value") from None
        out.append(_make_box(boxes, (x, y, x + w, y + h)))
    return tuple(out)


def _row_boxes(row: Row) -> tuple[Box, ...]:
    """Boxes of an image-level row: ``label`` when present, else ``boxes``."""
    try:
        return parse_label(row.get("label")) if row.get("label") else parse_boxes(row.get("boxes"))
    except ValueError as exc:
        raise ValueError(f"{row.path}, line {row.line}: {exc}") from None


def _read_image_level(path: Path) -> dict[str, _ImageLevel]:
    entries: dict[str, _ImageLevel] = {}
    for row in read_rows(path, required=("id", "StudyInstanceUID")):
        sop = _strip_suffix(row.require("id"), _IMAGE_SUFFIX)
        if sop in entries:
            raise row.error("id", row.get("id"), f"repeats the image of line {entries[sop].line}")
        entries[sop] = _ImageLevel(study_id=row.require("StudyInstanceUID"), boxes=_row_boxes(row), line=row.line)
    return entries


def _read_study_level(path: Path) -> dict[str, str]:
    labels: dict[str, str] = {}
    for row in read_rows(path, required=("id", *SIIM_STUDY_COLUMNS)):
        study = _strip_suffix(row.require("id"), _STUDY_SUFFIX)
        hot = []
        for column, label in zip(SIIM_STUDY_COLUMNS, STUDY_LABELS, strict=True):
            value = row.float_or_none(column)
            if value not in (None, 0.0, 1.0):
                raise row.error(column, row.get(column), "is not 0 or 1")
            if value == 1.0:
                hot.append(label)
        if len(hot) != 1:
            raise ValueError(f"{path}, line {row.line}: study {study!r} must have exactly one label set, got {hot}")
        if study in labels and labels[study] != hot[0]:
            raise row.error("id", row.get("id"), f"repeats a study with a different label ({labels[study]!r})")
        labels[study] = hot[0]
    return labels


def _read_catalogue(path: Path, root: Path) -> dict[str, _CatalogueEntry]:
    entries: dict[str, _CatalogueEntry] = {}
    for row in read_rows(path, required=("sop_instance_uid", "study_instance_uid", "path", "view")):
        sop = row.require("sop_instance_uid")
        if sop in entries:
            raise row.error("sop_instance_uid", sop, f"repeats the image of line {entries[sop].line}")
        view = row.require("view").lower()
        if view not in VIEWS:
            raise row.error("view", row.get("view"), f"is not one of {VIEWS}")
        label = row.get("study_label").lower() or None
        if label is not None and label not in STUDY_LABELS:
            raise row.error("study_label", row.get("study_label"), f"is not one of {STUDY_LABELS}")
        entries[sop] = _CatalogueEntry(
            study_id=row.require("study_instance_uid"),
            path=root / row.require("path"),
            view=view,
            opacity_percent=row.float_or_none("opacity_percent"),
            study_label=label,
            line=row.line,
        )
    return entries


def _index_dicoms(folder: Path) -> dict[str, Path]:
    """SOP Instance UID (file stem) -> path for ``folder/<study>/<series>/<sop>.dcm``."""
    index: dict[str, Path] = {}
    for path in sorted(folder.glob("*/*/*.dcm")):
        if path.stem in index:
            logger.warning("%s: %s also found at %s; keeping the first", folder, path.stem, index[path.stem])
            continue
        index[path.stem] = path
    return index


def _mask_files(root: Path) -> frozenset[str]:
    folder = root / MASKS_DIR
    return frozenset(p.name for p in folder.iterdir()) if folder.is_dir() else frozenset()


def read_siim(root: Path) -> list[ImageRecord]:
    """Records of a SIIM-FISABIO-RSNA (or PhantomCXR) training folder, sorted by study then image."""
    root = Path(root)
    image_level_path = root / IMAGE_LEVEL_CSV
    if not image_level_path.is_file():
        raise ValueError(f"root {root} has no {IMAGE_LEVEL_CSV}; not a SIIM-FISABIO-RSNA layout")
    image_level = _read_image_level(image_level_path)
    study_level_path = root / STUDY_LEVEL_CSV
    study_labels = _read_study_level(study_level_path) if study_level_path.is_file() else {}
    catalogue_path = root / CATALOGUE_CSV
    catalogue = _read_catalogue(catalogue_path, root) if catalogue_path.is_file() else {}
    index = _index_dicoms(root / "train") if any(sop not in catalogue for sop in image_level) else {}
    masks = _mask_files(root)

    records: list[ImageRecord] = []
    missing = 0
    for sop in sorted(image_level.keys() | catalogue.keys()):
        level = image_level.get(sop)
        entry = catalogue.get(sop)
        path = entry.path if entry is not None else index.get(sop)
        if path is None or not path.is_file():
            logger.debug("%s: no DICOM file for image %s (expected %s)", root, sop, path)
            missing += 1
            continue
        if level is None:
            assert entry is not None
            study_id = entry.study_id
        else:
            study_id = level.study_id
        if level is not None and entry is not None:
            if entry.study_id != level.study_id:
                raise ValueError(
                    f"{catalogue_path}, line {entry.line}: study {entry.study_id!r} of image {sop} differs from "
                    f"{level.study_id!r} in {image_level_path}, line {level.line}"
                )
            if entry.view != "frontal":
                raise ValueError(
                    f"{catalogue_path}, line {entry.line}: image {sop} has view {entry.view!r} but "
                    f"{image_level_path}, line {level.line} lists it as a frontal image"
                )
        study_label = study_labels.get(study_id)
        if entry is not None and entry.study_label is not None:
            if study_label is not None and study_label != entry.study_label:
                raise ValueError(
                    f"{catalogue_path}, line {entry.line}: study_label {entry.study_label!r} of image {sop} "
                    f"differs from {study_label!r} in {study_level_path}"
                )
            study_label = entry.study_label
        lung = f"{sop}_lung.png"
        opacity = f"{sop}_opacity.png"
        records.append(
            ImageRecord(
                image_id=sop,
                path=path,
                study_id=study_id,
                view=entry.view if entry is not None else "frontal",
                boxes=level.boxes if level is not None else None,
                lung_mask=(root / MASKS_DIR / lung,) if lung in masks else None,
                opacity_mask=(root / MASKS_DIR / opacity,) if opacity in masks else None,
                opacity_percent=entry.opacity_percent if entry is not None else None,
                study_label=study_label,
            )
        )
    if missing:
        logger.warning("%s: skipped %d image(s) whose DICOM file is missing", root, missing)
    records.sort(key=lambda r: (r.study_id or "", r.image_id))
    logger.info("%s: %d SIIM-layout image(s)", root, len(records))
    return records


def read_siim_unlabelled(root: Path, *, folder: str = "test") -> list[ImageRecord]:
    """Records of ``ROOT/<folder>/<Study>/<Series>/<SOP>.dcm`` without labels (``boxes=None``).

    SIIM's test images are frontal chest radiographs like its training images.
    """
    root = Path(root)
    directory = root / folder
    if not directory.is_dir():
        raise ValueError(f"root {root} has no {folder}/ folder of unlabelled SIIM images")
    records = [
        ImageRecord(image_id=sop, path=path, study_id=path.parent.parent.name, view="frontal")
        for sop, path in _index_dicoms(directory).items()
    ]
    records.sort(key=lambda r: (r.study_id or "", r.image_id))
    logger.info("%s: %d unlabelled image(s)", directory, len(records))
    return records
