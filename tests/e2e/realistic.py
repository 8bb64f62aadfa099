"""A real-looking chest radiograph for the viewer tests, generated here (no image of a real
patient, nothing from ``shared/realcxr``): a PhantomCXR PA frontal at detector resolution put
through the acquisition chain of :mod:`cxr_models.train.acquisition` (detector blur and quantum
noise, CR-style unsharp masking, CLAHE-like local contrast, burned-in markers), stored the way a
DX modality sends it: Digital X-Ray Image Storage - For Presentation, MONOCHROME1, 12 bits
stored, a VOI window, Imager Pixel Spacing 0.143 mm, its own patient and UIDs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from cxr_models.imaging import read_image_display
from cxr_models.train.acquisition import AcquisitionJitter, jitter_acquisition

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


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _uid(seed: int, what: str) -> str:
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=["cxr real-looking test image", str(seed), what])


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
    rows, columns = stored.shape

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(seed, "sop")
    ds.StudyInstanceUID = _uid(seed, "study")
    ds.SeriesInstanceUID = _uid(seed, "series")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "REALLOOKING^CHEST"
    ds.PatientID = f"RL{seed}"
    ds.PatientBirthDate = "19580412"
    ds.PatientSex = "M"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260105"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "083012"
    ds.AccessionNumber = f"RLA{seed}"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "XR CHEST PA"
    ds.SeriesDescription = "CHEST PA"
    ds.Modality = "DX"
    ds.Manufacturer = "cxr test detector"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
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
    ds.ImagerPixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PresentationLUTShape = "INVERSE"
    ds.BurnedInAnnotation = "YES"
    ds.LossyImageCompression = "00"
    ds.PixelData = stored.tobytes()
    path = out_dir / "real-looking-chest.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
