"""DICOM files of PhantomCXR images, written with pydicom.

CR Image Storage or Digital X-Ray Image Storage - For Presentation, Explicit VR Little Endian,
16 bits allocated with 10-16 stored, a window that displays the image, and the modules each IOD
requires (DX: presentation intent, detector, anatomy imaged with its code, acquisition context).
MONOCHROME1 is written for CR only: a DX For Presentation MONOCHROME1 image must carry an
INVERSE Presentation LUT Shape, which readers handle inconsistently.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

from cxr_models.phantom.study import GENERATOR_VERSION, PhantomImage, PhantomStudy

logger = logging.getLogger(__name__)

SOP_CLASSES = {"CR": ComputedRadiographyImageStorage, "DX": DigitalXRayImageStorageForPresentation}
# SNOMED CT codes of the imaged regions (DX Anatomy Imaged)
_ANATOMY = {
    "CHEST": ("51185008", "Chest"),
    "THORAX": ("51185008", "Chest"),
    "PECHO": ("51185008", "Chest"),
    "ABDOMEN": ("818983003", "Abdomen"),
    "HAND": ("85562004", "Hand"),
    "SKULL": ("89546000", "Skull"),
    "KNEE": ("72696002", "Knee"),
    "FOREARM": ("14975008", "Forearm"),
}
_PAIRED = {"HAND", "KNEE", "FOREARM"}


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    return item


def build_dataset(study: PhantomStudy, image: PhantomImage) -> FileDataset:
    """The complete dataset (with file meta) of one image of ``study``."""
    acq = image.acquisition
    sop_class = SOP_CLASSES[acq.modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = image.sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PHANTOMCXR_{GENERATOR_VERSION.replace('.', '')}"
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = image.sop_instance_uid
    ds.InstanceCreationDate = study.study_date
    ds.InstanceCreationTime = study.study_time
    ds.ImageType = ["ORIGINAL", "PRIMARY"]

    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.patient_birth_date
    ds.PatientSex = study.patient_sex

    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"{study.study_index % 10**8}"
    ds.AccessionNumber = study.accession_number
    ds.StudyDescription = f"XR {study.body_part}"

    ds.Modality = acq.modality
    ds.SeriesInstanceUID = image.series_instance_uid
    ds.SeriesNumber = image.series_number
    ds.SeriesDescription = f"{acq.body_part} {acq.view_position}"
    ds.SeriesDate = study.study_date
    ds.SeriesTime = study.study_time
    ds.BodyPartExamined = acq.body_part
    ds.ViewPosition = acq.view_position
    paired = study.body_part in _PAIRED
    if acq.modality == "CR" and paired:
        ds.Laterality = "R"

    ds.Manufacturer = acq.manufacturer
    ds.ManufacturerModelName = acq.model
    ds.SoftwareVersions = GENERATOR_VERSION

    ds.InstanceNumber = image.instance_number
    ds.PatientOrientation = list(acq.patient_orientation)
    ds.ContentDate = study.study_date
    ds.ContentTime = study.study_time
    ds.AcquisitionDate = study.study_date
    ds.AcquisitionTime = study.study_time
    ds.BurnedInAnnotation = "YES" if acq.burned_in_annotation else "NO"
    ds.LossyImageCompression = "00"

    ds.KVP = f"{acq.kvp:.1f}"
    micro = int(round(acq.exposure_mas * 1000))
    ds.Exposure = int(round(micro / 1000))
    ds.ExposureInuAs = micro
    ds.DistanceSourceToDetector = f"{acq.sid:.1f}"
    ds.ImagerPixelSpacing = [f"{acq.pixel_spacing:.6f}", f"{acq.pixel_spacing:.6f}"]

    rows, cols = image.pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = acq.photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = acq.bits_stored
    ds.HighBit = acq.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.WindowCenter = f"{acq.window_center:.2f}"
    ds.WindowWidth = f"{acq.window_width:.2f}"
    ds.WindowCenterWidthExplanation = "PHANTOMCXR DEFAULT"

    if acq.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = -1
        ds.PresentationLUTShape = "IDENTITY"
        ds.DetectorType = "SCINTILLATOR"
        ds.PositionerType = ""
        ds.Grid = "FOCUSED" if acq.grid else "NONE"
        ds.ImageLaterality = "R" if paired else "U"
        code, meaning = _ANATOMY.get(study.body_part, _ANATOMY["CHEST"])
        ds.AnatomicRegionSequence = Sequence([_code(code, meaning)])
        ds.AcquisitionContextSequence = Sequence([])
        ds.PixelSpacing = [f"{acq.pixel_spacing / acq.magnification:.6f}"] * 2
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = "Estimated magnification at the mid-plane"
        ds.EstimatedRadiographicMagnificationFactor = f"{acq.magnification:.4f}"

    pixels = np.ascontiguousarray(image.pixels, dtype="<u2")
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def write_dicom(path: Path, study: PhantomStudy, image: PhantomImage) -> Path:
    """Write ``image`` of ``study`` to ``path`` (parents created); returns the path."""
    ds = build_dataset(study, image)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
