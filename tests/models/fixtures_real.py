"""Miniatures of the real-radiograph layouts (NIH ChestX-ray14 + RSNA boxes, covid-chestxray-dataset).

Every image is generated here (tiny synthetic PNG/JPEG); the CSV and JSON files use the header
lines of the public files, with rows written for the generated images. ``tiny_*`` builders
write a default miniature whose expected records the reader tests spell out.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------- images


def ramp(height: int, width: int) -> np.ndarray:
    """uint8 ramp, darker top-left, brighter bottom-right."""
    values = np.add.outer(np.arange(height), np.arange(width)).astype(np.float64)
    return (values / max(values.max(), 1.0) * 255).astype(np.uint8)


def write_image(path: Path, *, mode: str = "L", height: int = 16, width: int = 16, fmt: str | None = None) -> Path:
    """A generated image in PIL ``mode`` ("L", "I;16", "RGB", "RGBA", "P", "LA"), grey content.

    ``fmt`` forces the file format ("PNG"/"JPEG") whatever the suffix, as in the covid
    collection where some ``.jpg`` files hold PNG data.
    """
    grey = ramp(height, width)
    if mode == "I;16":
        img = Image.fromarray(grey.astype(np.uint16) * 257)
    elif mode == "P":
        # Reversed grey palette: index i shows grey 255 - i, so reading the indices is wrong.
        img = Image.new("P", (width, height))
        img.putdata((255 - grey).flatten().tolist())
        img.putpalette([v for i in range(256) for v in (255 - i,) * 3])
        img.info["transparency"] = bytes([255] * 255 + [0])  # tRNS: index 255 transparent
    else:
        img = Image.fromarray(grey).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or ("JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
    if fmt == "JPEG":
        img.save(path, format="JPEG", quality=95)
    else:
        img.save(path, format="PNG", **({"transparency": img.info["transparency"]} if mode == "P" else {}))
    return path


def write_lines(
    path: Path, header_line: str, rows: Sequence[Sequence[object]], *, comments: Sequence[str] = ()
) -> Path:
    """A CSV file with ``comments`` lines, a raw ``header_line`` (as the public file spells it) and rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        for line in comments:
            fh.write(line + "\n")
        fh.write(header_line + "\n")
        csv.writer(fh, lineterminator="\n").writerows(rows)
    return path


# --------------------------------------------------------------------------- NIH ChestX-ray14

DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
RSNA_BOXES_HEADER = "Image Index,x,y,width,height"
RSNA_MATCHED_HEADER = "Image Index,Target"


@dataclass(frozen=True)
class NihImage:
    """One image of a ChestX-ray14 miniature; boxes are ``(x, y, w, h)`` on the 1024 grid."""

    name: str
    labels: str
    patient: int
    view: str = "PA"
    size: tuple[int, int] = (32, 32)  # width, height
    rsna_target: int | None = None  # None: not RSNA-matched
    rsna_boxes: tuple[tuple[float, float, float, float], ...] = ()
    nih_boxes: tuple[tuple[str, tuple[float, float, float, float]], ...] = ()  # (Finding Label, box)
    write_file: bool = True
    folder: str = "images"  # nested layouts: "images_001/images"


def build_chestxray14(root: Path, images: Sequence[NihImage], *, old_name: bool = False) -> Path:
    """ChestX-ray14 layout with the NIH label/box CSVs and the RSNA matched/box CSVs.

    ``old_name`` writes ``Data_Entry_2017.csv`` with the older file's trailing empty column.
    """
    entry_rows: list[list[object]] = []
    bbox_rows: list[list[object]] = []
    matched_rows: list[list[object]] = []
    rsna_rows: list[list[object]] = []
    for index, image in enumerate(images):
        entry = [image.name, image.labels, index, image.patient, 40 + index, "F" if index % 2 else "M", image.view,
                 2500, 2048, 0.168, 0.168]  # fmt: skip
        entry_rows.append([*entry, ""] if old_name else entry)
        bbox_rows += [[image.name, label, *box] for label, box in image.nih_boxes]
        if image.rsna_target is not None:
            matched_rows.append([image.name, image.rsna_target])
            rsna_rows += [[image.name, *box] for box in image.rsna_boxes]
        if image.write_file:
            width, height = image.size
            write_image(root / image.folder / image.name, height=height, width=width)
    if old_name:
        write_lines(root / "Data_Entry_2017.csv", DATA_ENTRY_HEADER + ",", entry_rows)
    else:
        write_lines(root / "Data_Entry_2017_v2020.csv", DATA_ENTRY_HEADER, entry_rows)
    write_lines(root / "BBox_List_2017.csv", BBOX_HEADER, bbox_rows)
    write_lines(root / "rsna_matched_images.csv", RSNA_MATCHED_HEADER, matched_rows)
    write_lines(root / "rsna_lung_opacity_boxes.csv", RSNA_BOXES_HEADER, rsna_rows)
    return root


TINY_NIH: tuple[NihImage, ...] = (
    # RSNA Target 1, 512 px: RSNA boxes halved; its NIH Pneumonia box is ignored.
    NihImage("00000001_000.png", "Infiltration|Pneumonia", 1, view="AP", size=(512, 512), rsna_target=1,
             rsna_boxes=((100.0, 200.0, 300.0, 400.0), (600.0, 220.0, 250.0, 380.0)),
             nih_boxes=(("Pneumonia", (10.0, 10.0, 20.0, 20.0)),)),
    # RSNA Target 0 of the same patient: known negative although NIH says Pneumonia.
    NihImage("00000001_001.png", "Pneumonia", 1, rsna_target=0),
    # Not matched, NIH "No Finding": known negative.
    NihImage("00000002_000.png", "No Finding", 2),
    # Not matched, NIH Pneumonia box (used) and Cardiomegaly box (not an opacity); 256 x 128 image.
    NihImage("00000003_000.png", "Cardiomegaly|Pneumonia", 3, view="AP", size=(256, 128),
             nih_boxes=(("Cardiomegaly", (300.0, 500.0, 400.0, 400.0)), ("Pneumonia", (512.0, 256.0, 128.0, 512.0)))),
    # Not matched, abnormal, only a non-opacity NIH box: unknown (None).
    NihImage("00000004_000.png", "Effusion|Pneumonia", 4, nih_boxes=(("Effusion", (700.0, 600.0, 100.0, 100.0)),)),
    # Not a frontal view: skipped with a warning.
    NihImage("00000005_000.png", "No Finding", 5, view="LL"),
    # File missing: skipped with a warning.
    NihImage("00000006_000.png", "No Finding", 6, write_file=False),
)  # fmt: skip


def tiny_chestxray14(root: Path, *, nested: bool = False, old_name: bool = False) -> Path:
    """Seven rows, five usable images (see TINY_NIH); ``nested`` spreads the images over
    ``images_001/images`` and ``images_002/images`` as the full public release does."""
    images = TINY_NIH
    if nested:
        images = tuple(
            NihImage(**{**image.__dict__, "folder": f"images_00{1 + i % 2}/images"}) for i, image in enumerate(images)
        )
    return build_chestxray14(root, images, old_name=old_name)


# --------------------------------------------------------------------------- covid-chestxray-dataset

METADATA_HEADER = (
    "patientid,offset,sex,age,finding,survival,intubated,intubation_present,went_icu,in_icu,"
    "needed_supplemental_O2,extubated,temperature,pO2_saturation,leukocyte_count,neutrophil_count,"
    "lymphocyte_count,view,modality,date,location,folder,filename,doi,url,license,clinical_notes,other_notes,"
)
SEVERITY_COMMENTS = (
    "## COVID-19 Pneumonia Severity Scores (Mean of 3 expert raters),,",
    "## License: CC BY-SA Creative Commons Attribution-ShareAlike,,",
    "## Citation: Joseph Paul Cohen et al. Predicting COVID-19 Pneumonia Severity on Chest X-Ray with Deep "
    "Learning. May 2020 http://arxiv.org/abs/2005.11856.,,",
    "## geographic_extent_mean: The extent of lung involvement by ground glass opacity or consolidation for "
    "each lung. The total extent score ranged from 0 to 8.,,",
    "## opacity_mean: The degree of opacity. The total opacity score ranged from 0 to 6.,,",
)
SEVERITY_HEADER = "filename,geographic_mean,opacity_mean"
IMAGE_SIZES_HEADER = "filename,original_width,original_height,width,height"


@dataclass(frozen=True)
class CovidRow:
    """One metadata row of a covid-chestxray-dataset miniature and the image written for it."""

    patientid: str
    offset: str
    finding: str
    view: str
    filename: str
    modality: str = "X-ray"
    folder: str = "images"
    license: str = ""
    mode: str = "RGB"  # PIL mode of the generated image
    fmt: str | None = None  # file format when it differs from the suffix
    mask: bool = False
    severity: float | None = None
    write_file: bool = True


def build_covid_cxr(root: Path, rows: Sequence[CovidRow], *, extra_severity: Sequence[tuple[str, float]] = ()) -> Path:
    """covid-chestxray-dataset layout: metadata.csv, images, V7 masks, severity CSV, COCO json."""
    columns = METADATA_HEADER.split(",")
    metadata: list[list[object]] = []
    severity_rows: list[list[object]] = []
    sizes: list[list[object]] = []
    written: set[str] = set()
    for row in rows:
        cells = dict.fromkeys(columns, "")
        cells.update(
            patientid=row.patientid, offset=row.offset, sex="M", age="50", finding=row.finding, view=row.view,
            modality=row.modality, date="2020", location="Somewhere", folder=row.folder, filename=row.filename,
            url="https://example.org/case", license=row.license, clinical_notes="generated, notes, with commas",
        )  # fmt: skip
        metadata.append([cells[name] for name in columns])
        if row.filename in written:
            continue
        written.add(row.filename)
        if row.write_file:
            write_image(root / (row.folder or "images") / row.filename, mode=row.mode, height=12, width=16, fmt=row.fmt)
            sizes.append([row.filename, 16, 12, 16, 12])
        if row.mask:
            mask = np.zeros((12, 16), dtype=np.uint8)
            mask[2:10, 1:7] = 255
            mask[2:10, 9:15] = 255
            (root / "masks_v7labs").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / "masks_v7labs" / f"{row.filename}.png")
        if row.severity is not None:
            severity_rows.append([row.filename, row.severity, min(row.severity, 6.0)])
    severity_rows += [[name, score, min(score, 6.0)] for name, score in extra_severity]
    write_lines(root / "metadata.csv", METADATA_HEADER, metadata)
    write_lines(root / "image_sizes.csv", IMAGE_SIZES_HEADER, sizes)
    write_lines(root / "annotations" / "covid-severity-scores.csv", SEVERITY_HEADER, severity_rows,
                comments=SEVERITY_COMMENTS)  # fmt: skip
    coco = {
        "info": {"description": "generated"},
        "licenses": [{"id": 1, "name": "Attribution License", "url": "https://creativecommons.org/licenses/by/4.0/"}],
        "categories": [{"id": 1, "name": "Right Lung"}, {"id": 2, "name": "Left Lung"}],
        "images": [{"id": 1, "file_name": rows[0].filename, "width": 16, "height": 12}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 6, 8], "area": 48}],
    }
    (root / "annotations" / "imageannotation_ai_lung_bounding_boxes.json").write_text(json.dumps(coco))
    return root


TINY_COVID: tuple[CovidRow, ...] = (
    # Patient 2, day 0: PA (RGB JPEG, mask, severity) and lateral (grey PNG, mask) form one study.
    CovidRow("2", "0", "COVID-19", "PA", "p2_pa.jpeg", license="CC BY-NC-SA 4.0", mask=True, severity=3.7),
    CovidRow("2", "0", "COVID-19", "L", "p2_l.png", mode="L", mask=True),
    # One image filed under patients 10 and 7 (RGBA PNG data in a .jpg file): one record, group "7".
    CovidRow("10", "5", "Pneumonia", "PA", "shared.jpg", license="CC BY 4.0", mode="RGBA", fmt="PNG", mask=True,
             severity=1.0),
    CovidRow("7", "5", "Pneumonia", "PA", "shared.jpg", license="CC BY 4.0", mode="RGBA", fmt="PNG", mask=True,
             severity=1.0),
    # Patient 10 again, no offset, palette PNG, no mask, No Finding.
    CovidRow("10", "", "No Finding", "AP Supine", "p10_ap.png", mode="P"),
    # Patient 11: a CT row (skipped) and an AP Erect 16-bit grey PNG with finding "todo".
    CovidRow("11", "2", "COVID-19", "Axial", "p11_ct.jpg", modality="CT"),
    CovidRow("11", "3", "todo", "AP Erect", "p11_erect.png", mode="I;16", folder=""),
    # An X-ray with a view that is not PA/AP/L (skipped), and a row whose file is missing.
    CovidRow("12", "1", "COVID-19", "Coronal", "p12_coronal.png", mode="L"),
    CovidRow("13", "0", "COVID-19", "PA", "p13_missing.jpg", write_file=False, severity=2.0),
)  # fmt: skip


def tiny_covid_cxr(root: Path) -> Path:
    """Nine metadata rows, five images read (see TINY_COVID), a severity row of an absent image."""
    return build_covid_cxr(root, TINY_COVID, extra_severity=(("not-in-this-copy.png", 5.3),))


__all__ = [
    "BBOX_HEADER",
    "DATA_ENTRY_HEADER",
    "METADATA_HEADER",
    "SEVERITY_COMMENTS",
    "TINY_COVID",
    "TINY_NIH",
    "CovidRow",
    "NihImage",
    "build_chestxray14",
    "build_covid_cxr",
    "ramp",
    "tiny_chestxray14",
    "tiny_covid_cxr",
    "write_image",
    "write_lines",
]
