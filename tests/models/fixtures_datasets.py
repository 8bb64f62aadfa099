"""Builders of tiny datasets in the public on-disk layouts, for reader and trainer tests.

Each ``build_*`` writes real files (DICOM via pydicom with file meta, PNG via PIL) under
``root`` and returns ``root``. ``tiny_*`` functions build a small default dataset whose
contents the reader tests check by hand.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from cxr_models.records import SIIM_STUDY_COLUMNS, STUDY_LABELS

SIZE = 32


def gradient_pixels(rows: int = SIZE, columns: int = SIZE, *, bits: int = 12) -> np.ndarray:
    """A uint16 ramp (darker top-left, brighter bottom-right) so images are not constant."""
    ramp = np.add.outer(np.arange(rows), np.arange(columns)).astype(np.float64)
    return (ramp / max(ramp.max(), 1.0) * (2**bits - 1)).astype(np.uint16)


def write_dicom(
    path: Path,
    *,
    sop_instance_uid: str,
    study_instance_uid: str,
    series_instance_uid: str,
    pixels: np.ndarray | None = None,
    view_position: str = "PA",
    photometric: str = "MONOCHROME2",
) -> Path:
    """A minimal valid CR image (Explicit VR Little Endian, 16-bit allocated, 12 stored)."""
    arr = gradient_pixels() if pixels is None else np.asarray(pixels, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = series_instance_uid
    ds.Modality = "CR"
    ds.PatientName = "TEST^READER"
    ds.PatientID = "TEST"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "cxr tests"
    ds.PatientOrientation = ["P", "F"]
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.ViewPosition = view_position
    ds.BodyPartExamined = "CHEST"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    """A greyscale PNG (uint8 or uint16 array)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)
    return path


def write_mask_png(path: Path, mask: np.ndarray) -> Path:
    """A 0/255 uint8 PNG of a boolean mask."""
    return write_png(path, np.asarray(mask, dtype=bool).astype(np.uint8) * 255)


def box_mask(boxes: Sequence[tuple[int, int, int, int]], *, size: int = SIZE) -> np.ndarray:
    """Bool mask of integer ``(x0, y0, x1, y1)`` rectangles (x1/y1 exclusive)."""
    mask = np.zeros((size, size), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]], *, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------- SIIM / PhantomCXR


@dataclass(frozen=True)
class SiimImage:
    """One image of a SIIM-layout fixture; ``boxes`` are ``(x0, y0, x1, y1)``."""

    sop: str
    study: str
    series: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    view: str = "frontal"
    listed: bool = True  # in train_image_level.csv (frontal chest images only)
    write_file: bool = True
    opacity_percent: float | None = None


def siim_label(boxes: Sequence[tuple[float, float, float, float]]) -> str:
    if not boxes:
        return "none 1 0 0 1 1"
    return " ".join(f"opacity 1 {x0:g} {y0:g} {x1:g} {y1:g}" for x0, y0, x1, y1 in boxes)


def siim_boxes_cell(boxes: Sequence[tuple[float, float, float, float]]) -> str:
    if not boxes:
        return ""
    return repr([{"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0} for x0, y0, x1, y1 in boxes])


CATALOGUE_HEADER = (
    "sop_instance_uid,study_instance_uid,series_instance_uid,path,view,view_position,body_part_examined,"
    "rows,columns,pixel_spacing_mm,photometric_interpretation,bits_stored,opacity_percent,study_label,lesion_kinds"
).split(",")


def build_siim(
    root: Path,
    images: Sequence[SiimImage],
    *,
    study_labels: Mapping[str, str],
    phantom: bool = False,
    label_column: bool = True,
    bom: bool = False,
) -> Path:
    """Write a SIIM-FISABIO-RSNA layout; ``phantom`` adds images.csv and masks/ like PhantomCXR.

    ``study_labels`` maps chest study UIDs to STUDY_LABELS names (written to the study CSV);
    with ``label_column=False`` the ``label`` cells stay empty so only ``boxes`` carries boxes.
    """
    image_rows = []
    catalogue_rows = []
    for image in images:
        relative = Path("train") / image.study / image.series / f"{image.sop}.dcm"
        if image.write_file:
            write_dicom(
                root / relative,
                sop_instance_uid=image.sop,
                study_instance_uid=image.study,
                series_instance_uid=image.series,
                view_position="PA" if image.view == "frontal" else "LL",
            )
        if image.listed:
            label = siim_label(image.boxes) if label_column else ""
            image_rows.append([f"{image.sop}_image", siim_boxes_cell(image.boxes), label, image.study])
        if phantom:
            percent = "" if image.opacity_percent is None else f"{image.opacity_percent:g}"
            catalogue_rows.append(
                [image.sop, image.study, image.series, relative.as_posix(), image.view,
                 "PA" if image.view == "frontal" else "LL", "CHEST", SIZE, SIZE, 0.5, "MONOCHROME2", 12,
                 percent, study_labels.get(image.study, ""), "ground_glass" if image.boxes else ""]
            )  # fmt: skip
            if image.view == "frontal":
                write_mask_png(root / "masks" / f"{image.sop}_lung.png", box_mask([(2, 2, 14, 30), (18, 2, 30, 30)]))
                opacity = [(round(x0), round(y0), round(x1), round(y1)) for x0, y0, x1, y1 in image.boxes]
                write_mask_png(root / "masks" / f"{image.sop}_opacity.png", box_mask(opacity))
    write_csv(root / "train_image_level.csv", ["id", "boxes", "label", "StudyInstanceUID"], image_rows, bom=bom)
    study_rows = [
        [f"{study}_study", *(int(label == name) for name in STUDY_LABELS)]
        for study, label in sorted(study_labels.items())
    ]
    write_csv(root / "train_study_level.csv", ["id", *SIIM_STUDY_COLUMNS], study_rows, bom=bom)
    if phantom:
        write_csv(root / "images.csv", CATALOGUE_HEADER, catalogue_rows, bom=bom)
    return root


TINY_SIIM_IMAGES: tuple[SiimImage, ...] = (
    SiimImage("1.2.3.1.1", "1.2.3.1", "1.2.3.1.9", boxes=((2, 3, 10, 12), (15, 4, 30, 20)), opacity_percent=12.5),
    SiimImage("1.2.3.1.2", "1.2.3.1", "1.2.3.1.9", view="lateral", listed=False),
    SiimImage("1.2.3.2.1", "1.2.3.2", "1.2.3.2.9", opacity_percent=0.0),
    SiimImage("1.2.3.3.1", "1.2.3.3", "1.2.3.3.9", boxes=((5.5, 6.5, 20.25, 28.0),), write_file=False),
    SiimImage("1.2.3.4.1", "1.2.3.4", "1.2.3.4.9", view="other", listed=False),
)
TINY_SIIM_LABELS: dict[str, str] = {"1.2.3.1": "typical", "1.2.3.2": "negative", "1.2.3.3": "indeterminate"}


def tiny_siim(root: Path, *, phantom: bool = False, label_column: bool = True, bom: bool = False) -> Path:
    """Four chest images in three studies plus one non-chest image; one DICOM file missing.

    Without ``phantom`` only the three listed frontal images count (two on disk).
    """
    images = TINY_SIIM_IMAGES if phantom else tuple(i for i in TINY_SIIM_IMAGES if i.listed)
    return build_siim(root, images, study_labels=TINY_SIIM_LABELS, phantom=phantom, label_column=label_column, bom=bom)


# --------------------------------------------------------------------------- RSNA Pneumonia


def build_rsna(
    root: Path,
    patients: Mapping[str, Sequence[tuple[float, float, float, float]]],
    *,
    missing_files: Sequence[str] = (),
    class_info: bool = True,
) -> Path:
    """RSNA Pneumonia layout; ``patients`` maps patientId to its ``(x, y, width, height)`` boxes."""
    rows: list[list[object]] = []
    classes: list[list[object]] = []
    for patient, boxes in patients.items():
        if boxes:
            rows += [[patient, x, y, w, h, 1] for x, y, w, h in boxes]
            classes += [[patient, "Lung Opacity"] for _ in boxes]
        else:
            rows.append([patient, "", "", "", "", 0])
            classes.append([patient, "Normal"])
        if patient not in missing_files:
            write_dicom(
                root / "stage_2_train_images" / f"{patient}.dcm",
                sop_instance_uid=f"1.2.4.{len(rows)}",
                study_instance_uid="1.2.4",
                series_instance_uid="1.2.4.0",
            )
    write_csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], rows)
    if class_info:
        write_csv(root / "stage_2_detailed_class_info.csv", ["patientId", "class"], classes)
    return root


TINY_RSNA: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "p-b": ((1.0, 2.0, 10.0, 5.0), (12.5, 3.0, 4.0, 20.0)),
    "p-a": (),
    "p-c": ((0.0, 0.0, 8.0, 8.0),),
}


def tiny_rsna(root: Path) -> Path:
    """Three patients (two with boxes, one negative); p-c has no DICOM file."""
    return build_rsna(root, TINY_RSNA, missing_files=("p-c",))


# --------------------------------------------------------------------------- lung masks

LEFT_LUNG = (2, 4, 14, 28)  # x0, y0, x1, y1
RIGHT_LUNG = (18, 4, 30, 28)


def build_lung_masks(
    root: Path,
    *,
    variant: str,
    names: Sequence[str] = ("img_a", "img_b", "img_c"),
    unmasked: Sequence[str] = ("img_c",),
    image_suffix: str = ".png",
) -> Path:
    """Image + lung-mask folders: ``montgomery``, ``shenzhen``, ``generic`` or ``generic_lr``.

    Masks are LEFT_LUNG and RIGHT_LUNG rectangles (split across two files for montgomery and
    generic_lr); images named in ``unmasked`` get no mask, or only the left one where split.
    """
    if variant not in ("montgomery", "shenzhen", "generic", "generic_lr"):
        raise ValueError(f"variant must be montgomery, shenzhen, generic or generic_lr, got {variant!r}")
    image_dir = root / ("images" if variant.startswith("generic") else "CXR_png")
    for name in names:
        write_png(image_dir / f"{name}{image_suffix}", (gradient_pixels(bits=8)).astype(np.uint8))
        left, right = box_mask([LEFT_LUNG]), box_mask([RIGHT_LUNG])
        both = left | right
        if variant == "montgomery":
            write_mask_png(root / "ManualMask" / "leftMask" / f"{name}.png", left)
            if name not in unmasked:
                write_mask_png(root / "ManualMask" / "rightMask" / f"{name}.png", right)
        elif variant == "generic_lr":
            write_mask_png(root / "masks" / "left" / f"{name}.png", left)
            if name not in unmasked:
                write_mask_png(root / "masks" / "right" / f"{name}.png", right)
        elif name in unmasked:
            (root / ("mask" if variant == "shenzhen" else "masks")).mkdir(parents=True, exist_ok=True)
        elif variant == "shenzhen":
            write_mask_png(root / "mask" / f"{name}_mask.png", both)
        else:
            write_mask_png(root / "masks" / f"{name}.png", both)
    return root


# --------------------------------------------------------------------------- PadChest


@dataclass(frozen=True)
class PadchestImage:
    image_id: str
    study_id: str
    projection: str
    image_dir: str = "0"
    write_file: bool = True
    at_root: bool = False  # file at ROOT/<ImageID> instead of ROOT/<ImageDir>/<ImageID>


PADCHEST_HEADER = ["", "ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "MethodProjection", "Labels"]


def build_padchest(
    root: Path,
    images: Sequence[PadchestImage],
    *,
    csv_name: str = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
) -> Path:
    """PadChest layout: a label CSV (with pandas' unnamed index column) and 16-bit PNGs."""
    rows = []
    for index, image in enumerate(images):
        rows.append([index, image.image_id, image.image_dir, image.study_id, f"pat-{image.study_id}",
                     image.projection, "Manual review of DICOM fields", "['normal']"])  # fmt: skip
        if image.write_file:
            folder = root if image.at_root else root / image.image_dir
            write_png(folder / image.image_id, gradient_pixels(bits=16))
    write_csv(root / csv_name, PADCHEST_HEADER, rows)
    return root


TINY_PADCHEST: tuple[PadchestImage, ...] = (
    PadchestImage("s2_pa.png", "s2", "PA"),
    PadchestImage("s2_l.png", "s2", "L"),
    PadchestImage("s1_ap.png", "s1", "AP_horizontal", image_dir="1", at_root=True),
    PadchestImage("s3_costal.png", "s3", "COSTAL"),
    PadchestImage("s4_exclude.png", "s4", "EXCLUDE"),
    PadchestImage("s5_unk.png", "s5", "UNK"),
    PadchestImage("s6_missing.png", "s6", "PA", write_file=False),
)


def tiny_padchest(root: Path) -> Path:
    """Seven rows: four usable images on disk (PA, L, AP_horizontal at ROOT, COSTAL), two
    unusable projections, one missing file."""
    return build_padchest(root, TINY_PADCHEST)


__all__ = [
    "LEFT_LUNG",
    "RIGHT_LUNG",
    "TINY_PADCHEST",
    "TINY_RSNA",
    "TINY_SIIM_IMAGES",
    "TINY_SIIM_LABELS",
    "PadchestImage",
    "SiimImage",
    "box_mask",
    "build_lung_masks",
    "build_padchest",
    "build_rsna",
    "build_siim",
    "gradient_pixels",
    "siim_boxes_cell",
    "siim_label",
    "tiny_padchest",
    "tiny_rsna",
    "tiny_siim",
    "write_csv",
    "write_dicom",
    "write_mask_png",
    "write_png",
]
