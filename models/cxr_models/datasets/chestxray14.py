"""Reader for the NIH ChestX-ray14 layout, with RSNA Pneumonia boxes matched onto it.

Layout::

    ROOT/Data_Entry_2017_v2020.csv      Image Index,Finding Labels,...,Patient ID,...,View Position,...
                                        (or the older Data_Entry_2017.csv)
    ROOT/images/<Image Index>           PNG (the public release: images_001/images/... , found
                                        by a recursive search when not under ROOT/images/)
    ROOT/BBox_List_2017.csv             Image Index,Finding Label,Bbox [x,y,w,h],,,   (optional)
    ROOT/rsna_matched_images.csv        Image Index,Target                            (optional)
    ROOT/rsna_lung_opacity_boxes.csv    Image Index,x,y,width,height                  (optional)

Every NIH image is its own study (``study_id`` = Image Index without suffix) and frontal (View
Position PA or AP; other values are skipped with one warning giving the count per value).
``patient_id`` is the NIH Patient ID. ``abnormal`` is False for Finding Labels "No Finding" and
True otherwise.

Boxes, x/y/width/height on the 1024 x 1024 grid of the public release, are scaled to the
actual image size (width/1024, height/1024, read lazily from the file header):

- RSNA-matched images (``rsna_matched_images.csv``): Target 0 means RSNA found no opacity
  (``boxes == ()``); Target 1 takes the image's rows of ``rsna_lung_opacity_boxes.csv``. RSNA is
  the box source for these images; their NIH boxes are ignored.
- Other images: the opacity boxes of ``BBox_List_2017.csv`` (Finding Label Pneumonia, Infiltrate,
  Infiltration or Consolidation); without such boxes, ``boxes == ()`` when Finding Labels is
  exactly "No Finding" and ``boxes is None`` (unknown) otherwise. NIH boxes of other findings
  (Cardiomegaly, Mass, ...) are not opacities and are not used.

There are no lung masks. Malformed rows (a repeated image, a non-numeric coordinate, a Target
other than 0/1, Target 1 without boxes, RSNA boxes of an image that is not Target 1) raise a
ValueError naming the file, line and value. Rows whose image file is missing are skipped with
one warning giving the count (sites often hold only some of the release's image folders).
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from cxr_models.datasets.csvio import read_rows
from cxr_models.records import Box, ImageRecord

logger = logging.getLogger(__name__)

DATA_ENTRY_CSV = "Data_Entry_2017_v2020.csv"
OLD_DATA_ENTRY_CSV = "Data_Entry_2017.csv"
DATA_ENTRY_NAMES: tuple[str, ...] = (DATA_ENTRY_CSV, OLD_DATA_ENTRY_CSV)
BBOX_CSV = "BBox_List_2017.csv"
RSNA_MATCHED_CSV = "rsna_matched_images.csv"
RSNA_BOXES_CSV = "rsna_lung_opacity_boxes.csv"
IMAGES_DIR = "images"
NO_FINDING = "No Finding"
FRONTAL_POSITIONS = frozenset({"PA", "AP"})
# NIH BBox_List finding labels that mark a lung opacity (the list says "Infiltrate").
OPACITY_FINDINGS = frozenset({"Pneumonia", "Infiltrate", "Infiltration", "Consolidation"})
GRID = 1024.0
LICENCE = "NIH ChestX-ray14 (public, no restrictions; cite Wang et al. CVPR 2017)"
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})

# (x, y, width, height) on the 1024 grid of the public release.
_GridBox = tuple[float, float, float, float]


def find_data_entry(root: Path) -> Path | None:
    """The label CSV of a ChestX-ray14 folder (v2020 name first), or None."""
    for name in DATA_ENTRY_NAMES:
        if (Path(root) / name).is_file():
            return Path(root) / name
    return None


def _grid_box(path: Path, line: int, values: Iterable[str]) -> _GridBox:
    numbers: list[float] = []
    for name, value in zip(("x", "y", "width", "height"), values, strict=True):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{path}, line {line}: box {name} {value!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{path}, line {line}: box {name} {value!r} is not finite")
        numbers.append(number)
    x, y, w, h = numbers
    if w < 0 or h < 0:
        raise ValueError(f"{path}, line {line}: box width/height ({w:g}, {h:g}) is negative")
    return x, y, w, h


def read_nih_boxes(path: Path) -> dict[str, list[_GridBox]]:
    """Image Index -> opacity boxes (1024 grid) of ``BBox_List_2017.csv``.

    The header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,``: the four numbers sit in
    columns 2..5 under one name, so the file is read by position.
    """
    boxes: dict[str, list[_GridBox]] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        names = [name.strip() for name in next(reader, [])]
        if names[:2] != ["Image Index", "Finding Label"]:
            raise ValueError(f"{path}: header must start with 'Image Index,Finding Label', found {names}")
        for cells in reader:
            values = [cell.strip() for cell in cells]
            if not any(values):
                continue
            line = reader.line_num
            if len(values) < 6 or any(values[6:]):
                raise ValueError(f"{path}, line {line}: expected 6 cells (image, label, x, y, w, h), got {values!r}")
            image, label = values[0], values[1]
            if not image:
                raise ValueError(f"{path}, line {line}: empty Image Index")
            box = _grid_box(path, line, values[2:6])
            if label in OPACITY_FINDINGS:
                boxes.setdefault(image, []).append(box)
    return boxes


def read_rsna_matched(root: Path) -> dict[str, tuple[_GridBox, ...]]:
    """Image Index -> RSNA boxes (1024 grid) of the matched images; ``()`` for Target 0."""
    matched_path = root / RSNA_MATCHED_CSV
    targets: dict[str, int] = {}
    lines: dict[str, int] = {}
    for row in read_rows(matched_path, required=("Image Index", "Target")):
        image = row.require("Image Index")
        target = row.float_or_none("Target")
        if target not in (0.0, 1.0):
            raise row.error("Target", row.get("Target"), "is not 0 or 1")
        if image in targets:
            raise row.error("Image Index", image, f"repeats the image of line {lines[image]}")
        targets[image], lines[image] = int(target), row.line
    boxes: dict[str, list[_GridBox]] = {}
    boxes_path = root / RSNA_BOXES_CSV
    if boxes_path.is_file():
        for row in read_rows(boxes_path, required=("Image Index", "x", "y", "width", "height")):
            image = row.require("Image Index")
            if targets.get(image) != 1:
                problem = "has Target 0" if image in targets else f"is not in {RSNA_MATCHED_CSV}"
                raise row.error("Image Index", image, f"has RSNA boxes but {problem}")
            values = [row.require(column) for column in ("x", "y", "width", "height")]
            boxes.setdefault(image, []).append(_grid_box(boxes_path, row.line, values))
    out: dict[str, tuple[_GridBox, ...]] = {}
    for image, target in targets.items():
        if target == 1 and image not in boxes:
            raise ValueError(
                f"{matched_path}, line {lines[image]}: image {image} has Target 1 but no rows in {boxes_path}"
            )
        out[image] = tuple(boxes.get(image, ()))
    return out


def _scale(boxes: Iterable[_GridBox], path: Path) -> tuple[Box, ...]:
    with Image.open(path) as img:  # lazy: reads the header only
        width, height = img.size
    sx, sy = width / GRID, height / GRID
    return tuple(Box(x * sx, y * sy, (x + w) * sx, (y + h) * sy) for x, y, w, h in boxes)


class _ImageIndex:
    """File name -> path: ``ROOT/images/`` first, then one recursive search of ROOT if needed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        folder = root / IMAGES_DIR
        self.direct = frozenset(p.name for p in folder.iterdir()) if folder.is_dir() else frozenset()
        self._recursive: dict[str, Path] | None = None

    def find(self, name: str) -> Path | None:
        if name in self.direct:
            return self.root / IMAGES_DIR / name
        if self._recursive is None:
            self._recursive = {}
            duplicates = 0
            for path in sorted(self.root.rglob("*")):
                if path.suffix.lower() not in _IMAGE_SUFFIXES or not path.is_file():
                    continue
                if path.name in self._recursive:
                    duplicates += 1
                    continue
                self._recursive[path.name] = path
            if duplicates:
                logger.warning("%s: %d image file name(s) found more than once; using the first", self.root, duplicates)
        return self._recursive.get(name)


def read_chestxray14(root: Path) -> list[ImageRecord]:
    """Records of a ChestX-ray14 folder (frontal images on disk), sorted by study id."""
    root = Path(root)
    entry_path = find_data_entry(root)
    if entry_path is None:
        raise ValueError(
            f"root {root} has neither {DATA_ENTRY_CSV} nor {OLD_DATA_ENTRY_CSV}; not a ChestX-ray14 layout"
        )
    rsna = read_rsna_matched(root) if (root / RSNA_MATCHED_CSV).is_file() else None
    if rsna is None and (root / RSNA_BOXES_CSV).is_file():
        logger.warning("%s: %s without %s; RSNA boxes ignored", root, RSNA_BOXES_CSV, RSNA_MATCHED_CSV)
    nih_boxes = read_nih_boxes(root / BBOX_CSV) if (root / BBOX_CSV).is_file() else {}
    index = _ImageIndex(root)

    records: list[ImageRecord] = []
    seen: dict[str, int] = {}
    other_views: Counter[str] = Counter()
    missing = 0
    required = ("Image Index", "Finding Labels", "Patient ID", "View Position")
    for row in read_rows(entry_path, required=required):
        name = row.require("Image Index")
        if name in seen:
            raise row.error("Image Index", name, f"repeats the image of line {seen[name]}")
        seen[name] = row.line
        position = row.get("View Position").upper()
        if position not in FRONTAL_POSITIONS:
            other_views[row.get("View Position")] += 1
            continue
        path = index.find(name)
        if path is None:
            missing += 1
            continue
        findings = row.get("Finding Labels")
        no_finding = findings == NO_FINDING
        boxes: tuple[Box, ...] | None
        if rsna is not None and name in rsna:
            boxes = _scale(rsna[name], path) if rsna[name] else ()
        elif name in nih_boxes:
            boxes = _scale(nih_boxes[name], path)
        elif no_finding:
            boxes = ()
        else:
            boxes = None
        records.append(
            ImageRecord(
                image_id=name,
                path=path,
                study_id=Path(name).stem,
                view="frontal",
                boxes=boxes,
                patient_id=row.require("Patient ID"),
                abnormal=(not no_finding) if findings else None,
                licence=LICENCE,
            )
        )
    if other_views:
        logger.warning(
            "%s: skipped %d image(s) whose View Position is not PA/AP: %s",
            root, sum(other_views.values()), dict(sorted(other_views.items())),
        )  # fmt: skip
    if missing:
        logger.warning("%s: skipped %d image(s) whose file is missing", root, missing)
    if rsna is not None:
        unlisted = len(rsna.keys() - seen.keys())
        if unlisted:
            logger.warning("%s: %d image(s) of %s are not in %s", root, unlisted, RSNA_MATCHED_CSV, entry_path.name)
    records.sort(key=lambda r: (r.study_id or "", r.image_id))
    logger.info("%s: %d ChestX-ray14 image(s)", root, len(records))
    return records
