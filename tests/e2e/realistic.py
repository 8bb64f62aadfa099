"""Chest radiographs for the viewer tests, stored the way a DX modality sends them (Digital X-Ray
Image Storage - For Presentation, a VOI window, Imager Pixel Spacing, their own patient and UIDs):

- :func:`real_looking_chest`, generated here (no image of a real patient): a PhantomCXR PA frontal
  at detector resolution put through the acquisition chain of :mod:`cxr_models.train.acquisition`
  (detector blur and quantum noise, CR-style unsharp masking, CLAHE-like local contrast,
  burned-in markers), MONOCHROME1, 12 bits stored, Imager Pixel Spacing 0.143 mm;
- :func:`nih_chest`, a real radiograph: one NIH ChestX-ray14 PNG of the real radiograph pack
  (``shared/realcxr``, :func:`realcxr_root`; licence: public, NIH Clinical Center), read at test
  time and never copied into the repository, wrapped as it is (MONOCHROME2, 8 bits stored,
  the Imager Pixel Spacing of its original scan scaled to the PNG's grid). :func:`nih_candidates`
  lists, in a fixed order, the frontal PA images it may be.

Both go through :func:`write_chest_dx`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from cxr_models.imaging import read_image_display
from cxr_models.train.acquisition import AcquisitionJitter, jitter_acquisition

logger = logging.getLogger(__name__)

# The chain every image gets (each effect at probability 1), with ranges a hospital CR/DX shows.
CHAIN = AcquisitionJitter.only(
    "blur",
    "noise",
    "unsharp",
    "clahe",
    "annotation",
    probability=1.0,
    blur_sigma=(0.6, 0.8),
    noise_sigma=(0.006, 0.008),
    unsharp_amount=(0.6, 0.8),
    clahe_blend=(0.5, 0.6),
    annotation_count=(2, 2),
)
PIXEL_SPACING_MM = 0.143
UID_PREFIX = "1.2.826.0.1.3680043.8.498."
REPO = Path(__file__).resolve().parents[2]
# NIH ChestX-ray14 in the real radiograph pack (shared/realcxr/README.md).
NIH_DIR = "chestxray14"
NIH_CSV = "Data_Entry_2017_v2020.csv"
RSNA_MATCHED_CSV = "rsna_matched_images.csv"
# The most an original scan's width/height may differ from 1 for nih_candidates: the public PNGs
# were resized to a square grid, so only a square original keeps square pixels (OHIF would show
# others stretched, and the viewer test maps the SEG onto the screenshot with one scale).
MAX_ASPECT_DEVIATION = 0.01


@dataclass(frozen=True)
class Patient:
    """Who and when, for :func:`write_chest_dx`."""

    name: str
    id: str
    birth_date: str
    sex: str
    accession: str
    study_date: str
    study_time: str
    age: str = ""


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _uid(sources: Sequence[str], what: str) -> str:
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[*sources, what])


def write_chest_dx(
    path: Path,
    stored: np.ndarray,
    *,
    uid_sources: Sequence[str],
    patient: Patient,
    photometric: str,
    bits_stored: int,
    window: tuple[float, float],
    spacing_mm: tuple[float, float],
    manufacturer: str,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY"),
    comments: str | None = None,
) -> Path:
    """Write ``stored`` (uint8 or uint16 stored values, one frame) as a chest PA DX For
    Presentation at ``path``. ``window`` is (centre, width); ``spacing_mm`` (row, column) is
    written as Imager Pixel Spacing and Pixel Spacing; UIDs derive from ``uid_sources``."""
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if stored.ndim != 2 or stored.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"stored must be a 2-D uint8 or uint16 array, got {stored.dtype} {stored.shape}")
    rows, columns = stored.shape
    allocated = 8 * stored.dtype.itemsize

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(uid_sources, "sop")
    ds.StudyInstanceUID = _uid(uid_sources, "study")
    ds.SeriesInstanceUID = _uid(uid_sources, "series")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient.name
    ds.PatientID = patient.id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    if patient.age:
        ds.PatientAge = patient.age
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = patient.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = patient.study_time
    ds.AccessionNumber = patient.accession
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "XR CHEST PA"
    ds.SeriesDescription = "CHEST PA"
    ds.Modality = "DX"
    ds.Manufacturer = manufacturer
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImageType = list(image_type)
    if comments:
        ds.ImageComments = comments
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = [_code("43799004", "SCT", "Thorax")]
    ds.ViewCodeSequence = [_code("399348003", "SCT", "postero-anterior")]
    ds.PositionerType = "NONE"
    ds.DetectorType = "SCINTILLATOR"
    ds.AcquisitionContextSequence = []
    ds.ImagerPixelSpacing = list(spacing_mm)
    ds.PixelSpacing = list(spacing_mm)
    ds.PixelIntensityRelationship = "LOG"
    # MONOCHROME1 here: low values are shown white, and white is dense (less beam intensity).
    ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, bits_stored, bits_stored - 1, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = window
    # DX For Presentation: MONOCHROME1 goes with INVERSE, MONOCHROME2 with IDENTITY (one inversion).
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.BurnedInAnnotation = "YES"
    ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def real_looking_chest(out_dir: Path, *, seed: int = 20260101, side: int = 2000) -> Path:
    """Write one real-looking frontal chest DX into ``out_dir`` and return its path."""
    from cxr_models.phantom.generate import generate_dataset

    root = generate_dataset(out_dir / "phantom", n_studies=6, seed=seed, size_range=(side, side + 100), other_fraction=0.0, workers=1)
    frontal = next(
        path
        for path in sorted(root.rglob("*.dcm"))
        if str(pydicom.dcmread(path, stop_before_pixels=True).get("ViewPosition", "")) == "PA"
    )
    display = read_image_display(frontal)
    generator = torch.Generator().manual_seed(seed)
    jittered = jitter_acquisition(torch.from_numpy(display)[None, None], jitter=CHAIN, generator=generator)[0, 0].numpy()
    # MONOCHROME1: low values are shown white, and white is dense.
    stored = np.rint((1.0 - np.clip(jittered, 0.0, 1.0)) * 4095.0).astype(np.uint16)
    patient = Patient(
        name="REALLOOKING^CHEST",
        id=f"RL{seed}",
        birth_date="19580412",
        sex="M",
        accession=f"RLA{seed}",
        study_date="20260105",
        study_time="083012",
    )
    return write_chest_dx(
        out_dir / "real-looking-chest.dcm",
        stored,
        uid_sources=("cxr real-looking test image", str(seed)),
        patient=patient,
        photometric="MONOCHROME1",
        bits_stored=12,
        window=(2048, 4096),
        spacing_mm=(PIXEL_SPACING_MM, PIXEL_SPACING_MM),
        manufacturer="cxr test detector",
    )


def realcxr_root() -> Path:
    """Where the real radiograph pack is: ``CXR_REALCXR``, else ``<repo>/../shared/realcxr``."""
    return Path(os.environ.get("CXR_REALCXR", REPO / ".." / "shared" / "realcxr"))


def nih_candidates(root: Path) -> list[str]:
    """Image Index of the pack's NIH images a viewer test may use, sorted: View Position PA,
    Finding Labels with Pneumonia and RSNA Target 1 (an opacity box), so that the opacity and
    attribution maps have bands to show (a normal study's attribution is faint: it is scaled by
    P(abnormal)), and a square original scan (:data:`MAX_ASPECT_DEVIATION`)."""
    nih = Path(root) / NIH_DIR
    with (nih / RSNA_MATCHED_CSV).open(newline="") as fh:
        opacity = {row["Image Index"] for row in csv.DictReader(fh) if row["Target"] == "1"}
    names = []
    with (nih / NIH_CSV).open(newline="") as fh:
        for row in csv.DictReader(fh):
            width, height = int(row["OriginalImage[Width"]), int(row["Height]"])
            if (
                row["View Position"] == "PA"
                and "Pneumonia" in row["Finding Labels"].split("|")
                and row["Image Index"] in opacity
                and abs(width / height - 1.0) <= MAX_ASPECT_DEVIATION
            ):
                names.append(row["Image Index"])
    return sorted(names)


def nih_png(root: Path, name: str) -> Path:
    """The PNG of NIH image ``name`` in the pack (``chestxray14/images/<name>``)."""
    path = Path(root) / NIH_DIR / "images" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: NIH image {name} is listed in {NIH_CSV} but not in the pack")
    return path


def nih_chest(out_dir: Path, root: Path, name: str) -> Path:
    """Wrap the pack's NIH ChestX-ray14 image ``name`` as a chest PA DX in ``out_dir``; return its path.

    The PNG's 8-bit grey values are the stored values (MONOCHROME2, white = dense), with the
    window 127.5/255 that shows them as they are (the analysis then sees value / 255, as from
    the PNG). Imager Pixel Spacing is the original scan's (``OriginalImagePixelSpacing``) times
    its size over the PNG's. The patient is the NIH Patient ID; dates are the test's.
    """
    with (Path(root) / NIH_DIR / NIH_CSV).open(newline="") as fh:
        row = next((r for r in csv.DictReader(fh) if r["Image Index"] == name), None)
    if row is None:
        raise ValueError(f"{name} is not in {Path(root) / NIH_DIR / NIH_CSV}")
    with Image.open(nih_png(root, name)) as img:
        if img.mode != "L":
            raise ValueError(f"{name}: expected an 8-bit grey PNG, got mode {img.mode}")
        stored = np.asarray(img, dtype=np.uint8)
    rows, columns = stored.shape
    spacing = (
        float(row["y]"]) * int(row["Height]"]) / rows,
        float(row["OriginalImagePixelSpacing[x"]) * int(row["OriginalImage[Width"]) / columns,
    )
    spacing_mm = (round(spacing[0], 6), round(spacing[1], 6))
    age = row["Patient Age"].strip()
    patient = Patient(
        name="NIH^CHESTXRAY14",
        id=f"NIH{row['Patient ID']}",
        birth_date="",
        sex=row["Patient Gender"] if row["Patient Gender"] in ("M", "F") else "O",
        age=f"{int(age):03d}Y" if age.isdigit() else "",
        accession=f"NIH{Path(name).stem.replace('_', '')}",
        study_date="20260106",
        study_time="091500",
    )
    logger.info("NIH image %s: %d x %d, spacing %s mm", name, columns, rows, spacing_mm)
    return write_chest_dx(
        out_dir / f"nih-{Path(name).stem}.dcm",
        stored,
        uid_sources=("cxr NIH ChestX-ray14 test image", name),
        patient=patient,
        photometric="MONOCHROME2",
        bits_stored=8,
        window=(127.5, 255.0),
        spacing_mm=spacing_mm,
        manufacturer="",
        image_type=("DERIVED", "SECONDARY"),
        comments=f"NIH ChestX-ray14 {name} (NIH Clinical Center, public; Wang et al., CVPR 2017), wrapped for a test",
    )
