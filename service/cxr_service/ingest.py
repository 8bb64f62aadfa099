"""Ingest of CR/DX instances: accept what real modalities send, reject the rest with a reason.

Every instance of a study goes through :func:`ingest_file`, :func:`ingest_bytes` or
:func:`ingest_dataset` and comes out either as an :class:`IngestedImage` (display array plus a
header-only dataset for the result writers) or as a :class:`Rejected` with a short, specific
reason. Nothing raises for bad input, so one bad instance never blocks the rest of its study.

Decisions:

* SOP classes analysed: CR Image Storage and DX Image Storage (For Presentation / For
  Processing). The SOP class governs: a CR/DX SOP class with another or no Modality is
  analysed with a logged warning (the view filter downstream decides whether it is a chest
  image). An instance without SOPClassUID is analysed when its Modality is CR or DX.
* Secondary Capture, SR, presentation states, SEG and key object selection are what this
  project writes back into the PACS, so they are rejected; Secondary Capture is rejected even
  with Modality CR or DX (digitised films are not supported). A reason names what rules the
  instance out: the SOP class when there is one (``not a CR/DX image (SOP Class Secondary
  Capture Image Storage)``, ``not an image for analysis (SOP Class Basic Text SR Storage)``),
  the Modality only for an instance without SOPClassUID.
* UIDs must be valid (:func:`cxr_service.uids.uid_problem`: no leading zeros, digits and dots,
  at most 64 characters); a rejection never carries an invalid UID, so an instance with an
  invalid StudyInstanceUID is attributed to no study.
* The grey-level transform is checked before decoding: a RescaleSlope that is zero, infinite
  or NaN (or a non-finite RescaleIntercept, WindowCenter or WindowWidth) is an "unusable
  grey-level transform", never an image for the models to call "not a chest radiograph";
  neither is an image whose every pixel displays the same grey ("blank image").
* Rows and Columns are checked against :class:`IngestLimits` from the header before any
  pixel data is decoded, so a decompression bomb is never allocated.
* Patient names and IDs are never logged: log lines name the SOP Instance UID (or, when the
  instance has none, its source label).
"""

from __future__ import annotations

import argparse
import copy
import io
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    ColorSoftcopyPresentationStateStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedSRStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ExtensibleSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    KeyObjectSelectionDocumentStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameSingleBitSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from cxr_models.imaging import display_array
from cxr_service.logs import configure_logging
from cxr_service.uids import uid_problem

logger = logging.getLogger(__name__)

_SIGN_CORRECTED_SYNTAXES = frozenset(JPEG2000TransferSyntaxes) | frozenset(JPEGLSTransferSyntaxes)

MiB = 1024 * 1024

#: Key of :func:`group_by_study` for rejections that carry no StudyInstanceUID (unreadable
#: files, instances missing the attribute). It cannot collide with a UID, which holds only
#: digits and dots.
NO_STUDY_KEY = "<no StudyInstanceUID>"

ANALYSIS_SOP_CLASSES: frozenset[str] = frozenset(
    {
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        DigitalXRayImageStorageForProcessing,
    }
)
ANALYSIS_MODALITIES: frozenset[str] = frozenset({"CR", "DX"})
# What cxr itself writes back (and other non-image objects a PACS forwards with a study).
OUTPUT_SOP_CLASSES: frozenset[str] = frozenset(
    {
        SecondaryCaptureImageStorage,
        MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        MultiFrameSingleBitSecondaryCaptureImageStorage,
        MultiFrameTrueColorSecondaryCaptureImageStorage,
        GrayscaleSoftcopyPresentationStateStorage,
        ColorSoftcopyPresentationStateStorage,
        SegmentationStorage,
        BasicTextSRStorage,
        EnhancedSRStorage,
        ComprehensiveSRStorage,
        Comprehensive3DSRStorage,
        ExtensibleSRStorage,
        KeyObjectSelectionDocumentStorage,
    }
)
OUTPUT_MODALITIES: frozenset[str] = frozenset({"SR", "PR", "SEG", "KO", "DOC"})
#: Image SOP classes among them: "not a CR/DX image"; the others are "not an image for analysis".
SECONDARY_CAPTURE_SOP_CLASSES: frozenset[str] = frozenset(
    {
        SecondaryCaptureImageStorage,
        MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        MultiFrameSingleBitSecondaryCaptureImageStorage,
        MultiFrameTrueColorSecondaryCaptureImageStorage,
    }
)
UID_KEYWORDS: tuple[str, ...] = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

# Suffixes of files that are never DICOM; skipped when walking a folder.
NON_DICOM_SUFFIXES: frozenset[str] = frozenset(
    {
        ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp",
        ".json", ".txt", ".csv", ".md", ".xml", ".html", ".htm", ".pdf",
        ".py", ".log", ".yaml", ".yml", ".zip", ".gz", ".tar", ".npz", ".npy", ".pt",
    }
)
_BULK_TAGS = frozenset(
    {
        0x7FE00010,  # PixelData
        0x7FE00008,  # FloatPixelData
        0x7FE00009,  # DoubleFloatPixelData
    }
)
_PIXEL_DATA_TAG_BYTES = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
_MAX_MESSAGE = 160
# Display range (of [0, 1]) below which an image shows nothing: less than one 8-bit grey level.
_BLANK_RANGE = 1.0 / 255.0


@dataclass(frozen=True)
class IngestLimits:
    """Bounds on what ingest accepts; checked from the header before decoding."""

    max_pixels: int = 64_000_000
    min_side: int = 64
    max_side: int = 16384
    max_file_bytes: int = 512 * MiB

    def __post_init__(self) -> None:
        for name in ("max_pixels", "min_side", "max_side", "max_file_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) must not exceed max_side ({self.max_side})")


@dataclass(frozen=True, eq=False)
class IngestedImage:
    """A CR/DX image ready for analysis.

    ``display`` is float32 in [0, 1] with white = dense; ``dataset`` is the header without
    pixel data (patient, study, series and image attributes) for the result writers.
    Instances compare by identity (they hold an array).
    ``view_position`` and ``body_part_examined`` are the raw header values, informative only.
    """

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    modality: str
    rows: int
    columns: int
    photometric_interpretation: str
    bits_stored: int
    pixel_spacing_mm: tuple[float, float] | None
    pixel_spacing_source: str | None
    view_position: str
    body_part_examined: str
    display: np.ndarray
    dataset: Dataset
    transfer_syntax_uid: str


@dataclass(frozen=True)
class Rejected:
    """An instance that cannot be analysed, with a short human-readable reason."""

    sop_instance_uid: str | None
    study_instance_uid: str | None
    source: str
    reason: str
    series_instance_uid: str | None = None
    sop_class_uid: str | None = None


IngestResult = IngestedImage | Rejected


def ingest_file(path: Path | str, *, limits: IngestLimits = IngestLimits()) -> IngestResult:
    """Ingest one file; never raises for bad content (a missing file raises FileNotFoundError)."""
    path = Path(path)
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        return _reject(source=path.name, reason=f"file too large: {size} bytes (limit {limits.max_file_bytes})")
    return ingest_bytes(path.read_bytes(), source=path.name, limits=limits)


def ingest_bytes(data: bytes, *, source: str, limits: IngestLimits = IngestLimits()) -> IngestResult:
    """Ingest one DICOM file held in memory (Part 10, or a bare dataset without preamble)."""
    if len(data) > limits.max_file_bytes:
        return _reject(source=source, reason=f"file too large: {len(data)} bytes (limit {limits.max_file_bytes})")
    if not data:
        return _reject(source=source, reason="empty file")
    read = _read_dataset(data, source=source)
    if isinstance(read, Rejected):
        return read
    if "PixelData" not in read and any(tag in data for tag in _PIXEL_DATA_TAG_BYTES):
        return _truncated_pixel_data(data, source=source)
    cut = _cut_short(read)
    if cut is not None:
        return _reject(source=source, header=read, reason=f"truncated file (pixel data {cut[0]} of {cut[1]} bytes)")
    # The dataset is ingest's own: its pixel data bytes are dropped as soon as they are decoded.
    return _ingest(read, source=source, limits=limits, owned=True)


def ingest_dataset(ds: Dataset, *, source: str, limits: IngestLimits = IngestLimits()) -> IngestResult:
    """Ingest a dataset already in memory (e.g. received by a C-STORE SCP)."""
    return _ingest(ds, source=source, limits=limits)


def ingest_paths(paths: Sequence[Path], *, limits: IngestLimits = IngestLimits()) -> list[IngestResult]:
    """Ingest every DICOM candidate under ``paths`` (files or folders), in walk order."""
    return [ingest_file(p, limits=limits) for p in iter_dicom_paths(paths)]


def iter_dicom_paths(paths: Sequence[Path]) -> Iterator[Path]:
    """Files named in ``paths`` and, recursively and sorted, the files inside named folders.

    Inside folders, hidden entries, DICOMDIR and files with obviously non-DICOM suffixes
    (images, JSON, text...) are skipped; every other file is yielded, so files that fail to
    parse are still reported by ingest. Files named directly are always yielded.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from _walk(path)
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"paths: {str(path)!r} is neither a file nor a folder")


def group_by_study(items: Iterable[IngestResult]) -> dict[str, list[IngestResult]]:
    """Group results by StudyInstanceUID, keeping first-seen study order and input order.

    Rejections without a StudyInstanceUID go under :data:`NO_STUDY_KEY`.
    """
    groups: dict[str, list[IngestResult]] = {}
    for item in items:
        key = item.study_instance_uid or NO_STUDY_KEY
        groups.setdefault(key, []).append(item)
    return groups


def _walk(folder: Path) -> Iterator[Path]:
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _walk(entry)
        elif entry.is_file():
            if entry.suffix.lower() in NON_DICOM_SUFFIXES or entry.name.upper() == "DICOMDIR":
                logger.debug("skipping non-DICOM file %s", entry.name)
                continue
            yield entry


def _read_dataset(data: bytes, *, source: str) -> Dataset | Rejected:
    """Parse bytes as DICOM Part 10, falling back to a bare dataset without preamble."""
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        pass  # no preamble/DICM prefix: some modalities and exports write bare datasets
    except EOFError:
        return _reject(source=source, reason="truncated file")
    except Exception as exc:  # noqa: BLE001 - third-party parser on untrusted bytes
        return _reject(source=source, reason=f"unreadable DICOM file: {_describe(exc)}")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        looks_like_dicom = any(kw in ds for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"))
    except Exception:  # noqa: BLE001 - forced parse of arbitrary bytes may fail in any way
        looks_like_dicom = False
    if not looks_like_dicom:
        return _reject(source=source, reason="not a DICOM file")
    return ds


def _cut_short(ds: Dataset) -> tuple[int, int] | None:
    """(bytes read, bytes declared) when the file ends inside its native pixel data element.

    pydicom keeps what it could read of the value; its declared length is still on the raw
    element (read before anything touches it), and tells a truncated file from a complete file
    whose pixel data is simply too short for Rows x Columns.
    """
    if "PixelData" not in ds:
        return None
    raw = ds.get_item(0x7FE00010)
    declared = getattr(raw, "length", None)
    value = getattr(raw, "value", None)
    if not isinstance(declared, int) or declared == 0xFFFFFFFF or not isinstance(value, bytes):
        return None
    return (len(value), declared) if len(value) < declared else None


def _truncated_pixel_data(data: bytes, *, source: str) -> Rejected:
    """Reject a file whose pixel data element runs past the end of the file.

    pydicom drops everything it was reading when it meets the end of the file inside an
    element, so the header is read again, stopping before the pixel data, for the UIDs.
    """
    header: Dataset | None
    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - the file is already known to be damaged
        header = None
    return _reject(source=source, reason="truncated file (pixel data incomplete)", header=header)


def _ingest(ds: Dataset, *, source: str, limits: IngestLimits, owned: bool = False) -> IngestResult:
    """Ingest ``ds``; with ``owned`` (nobody else holds it) its encoded pixel data is released
    once decoded, so a large image never holds its file, its decoded array and its display
    array at once."""
    sop_uid = _text(ds, "SOPInstanceUID") or None
    study_uid = _text(ds, "StudyInstanceUID") or None

    reason = _header_problem(ds, limits=limits)
    if reason is not None:
        return _reject(source=source, header=ds, reason=reason)
    assert sop_uid is not None and study_uid is not None  # checked by _header_problem

    transfer_syntax = _transfer_syntax(ds)
    if transfer_syntax is None:
        return _reject(source=source, header=ds, reason="missing TransferSyntaxUID for compressed pixel data")
    decoder = _decoder(transfer_syntax)
    if isinstance(decoder, str):
        return _reject(source=source, header=ds, reason=decoder)
    if not transfer_syntax.is_encapsulated:
        reason = _native_length_problem(ds)
        if reason is not None:
            return _reject(source=source, header=ds, reason=reason)

    # pydicom clears the bits above Bits Stored of every syntax but JPEG 2000 and JPEG-LS (whose
    # decoders correct the sign instead), on a copy of native pixel data. The display transform
    # ignores those bits itself, through its lookup table: native pixels are read in place.
    unused_bits_set = transfer_syntax not in _SIGN_CORRECTED_SYNTAXES
    try:
        # The decoder, not ds.pixel_array: nothing is cached on the caller's dataset and a
        # dataset without file meta decodes with the inferred transfer syntax.
        pixels, _ = decoder.as_array(ds, view_only=True, correct_unused_bits=not unused_bits_set)
    except Exception as exc:  # noqa: BLE001 - decoders (pydicom, pylibjpeg, pyjpegls, openjpeg) raise many types
        return _reject(source=source, header=ds, reason=f"corrupt pixel data: {_describe(exc)}")
    if owned:
        del ds.PixelData
    rows, columns = int(ds.Rows), int(ds.Columns)
    if pixels.shape != (rows, columns):
        return _reject(
            source=source, header=ds, reason=f"decoded pixel array shape {pixels.shape} does not match {rows} x {columns}"
        )
    try:
        display = display_array(ds, pixels, unused_bits_set=unused_bits_set)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        return _reject(source=source, header=ds, reason=f"unusable grey-level transform: {_describe(exc)}")
    del pixels
    # NaN and infinities show in the minimum or maximum: two reductions, no full-size mask.
    lowest, highest = float(display.min()), float(display.max())
    if not (math.isfinite(lowest) and math.isfinite(highest)):
        return _reject(source=source, header=ds, reason="unusable grey-level transform: non-finite display values")
    if highest - lowest < _BLANK_RANGE:
        return _reject(source=source, header=ds, reason="blank image (every pixel displays the same grey level)")

    sop_class = _sop_class(ds) or ""
    modality = _text(ds, "Modality").upper()
    if modality not in ANALYSIS_MODALITIES:
        logger.warning(
            "SOPInstanceUID %s: Modality %r on a %s instance; analysing it (view filter decides)",
            sop_uid,
            modality,
            UID(sop_class).name if sop_class else "SOP-class-less",
        )
    spacing, spacing_source = _pixel_spacing(ds, sop_uid=sop_uid)
    image = IngestedImage(
        sop_instance_uid=sop_uid,
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        study_instance_uid=study_uid,
        sop_class_uid=sop_class,
        modality=modality,
        rows=rows,
        columns=columns,
        photometric_interpretation=_text(ds, "PhotometricInterpretation").upper(),
        bits_stored=int(ds.BitsStored),
        pixel_spacing_mm=spacing,
        pixel_spacing_source=spacing_source,
        view_position=_text(ds, "ViewPosition"),
        body_part_examined=_text(ds, "BodyPartExamined"),
        display=display,
        dataset=_header_only(ds),
        transfer_syntax_uid=str(transfer_syntax),
    )
    logger.debug(
        "ingested SOPInstanceUID %s: %d x %d, %s, %d bits, %s",
        sop_uid,
        columns,
        rows,
        image.photometric_interpretation,
        image.bits_stored,
        transfer_syntax.name,
    )
    return image


def _header_problem(ds: Dataset, *, limits: IngestLimits) -> str | None:
    """Reason the header rules out analysis, checked before any pixel data is touched."""
    reason = _sop_class_problem(ds)
    if reason is not None:
        return reason
    for keyword in UID_KEYWORDS:
        if not _text(ds, keyword):
            return f"missing {keyword}"
    for keyword in UID_KEYWORDS:
        problem = uid_problem(_text(ds, keyword))
        if problem is not None:
            return f"invalid {keyword} ({problem})"
    if "PixelData" not in ds:
        for keyword in ("FloatPixelData", "DoubleFloatPixelData"):
            if keyword in ds:
                return f"unsupported float pixel data ({keyword})"
        return "no pixel data"
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if not photometric:
        return "missing PhotometricInterpretation"
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return f"colour image (PhotometricInterpretation {photometric})"
    samples = _int(ds, "SamplesPerPixel")
    if samples not in (None, 1):
        return f"colour image (SamplesPerPixel {samples})"
    frames = _int(ds, "NumberOfFrames")
    if frames is not None and frames > 1:
        return f"multi-frame image (NumberOfFrames {frames})"
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    for keyword, value in (("Rows", rows), ("Columns", columns)):
        if value is None:
            return f"missing {keyword}"
        if value <= 0:
            return f"invalid image size ({keyword} {value})"
    assert rows is not None and columns is not None
    if rows * columns > limits.max_pixels:
        return f"image too large: {columns} x {rows} pixels (limit {limits.max_pixels})"
    if max(rows, columns) > limits.max_side:
        return f"image too large: {columns} x {rows} pixels (side limit {limits.max_side})"
    if min(rows, columns) < limits.min_side:
        return f"image too small: {columns} x {rows} pixels"
    allocated, stored = _int(ds, "BitsAllocated"), _int(ds, "BitsStored")
    if allocated is None:
        return "missing BitsAllocated"
    if allocated not in (8, 16):
        return f"unsupported bit depth (BitsAllocated {allocated})"
    if stored is None:
        return "missing BitsStored"
    if stored > allocated:
        return f"invalid bit depth (BitsStored {stored} exceeds BitsAllocated {allocated})"
    if stored < 8:
        return f"unsupported bit depth (BitsStored {stored}, at least 8 needed)"
    representation = _int(ds, "PixelRepresentation")
    if representation not in (0, 1):
        return f"unsupported PixelRepresentation {representation}"
    return _grey_transform_problem(ds)


def _grey_transform_problem(ds: Dataset) -> str | None:
    """An unusable Modality LUT (rescale) or window, found from the header.

    A zero, infinite or NaN RescaleSlope maps every pixel to one value or to no number at all;
    the models would see a blank image and call it "not a chest radiograph". The rescale is
    what applies when there is no Modality LUT Sequence (which replaces it), and a window is
    checked only where it is given.
    """
    checks: list[tuple[str, bool]] = [("WindowCenter", False), ("WindowWidth", False)]
    if not ("ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence) > 0):
        checks = [("RescaleSlope", True), ("RescaleIntercept", False), *checks]
    for keyword, nonzero in checks:
        if keyword not in ds:
            continue
        values = _floats(ds, keyword)
        if values is None:
            return f"unusable grey-level transform: unreadable {keyword}"
        for value in values:
            if not math.isfinite(value) or (nonzero and value == 0.0):
                return f"unusable grey-level transform: {keyword} {value:g}"
    return None


def _floats(ds: Dataset, keyword: str) -> list[float] | None:
    """The numeric values of ``keyword`` (one or many), or None when one is not a number."""
    try:
        value = ds[keyword].value
        if value is None or value == "":
            return []
        items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
        return [float(v) for v in items]
    except (TypeError, ValueError, OverflowError) as exc:
        logger.debug("unreadable %s (%s)", keyword, type(exc).__name__)
        return None


def _sop_class_problem(ds: Dataset) -> str | None:
    """Why the SOP class (or, without one, the Modality) rules the instance out.

    The SOP class governs, so the reason names it whenever there is one: a Secondary Capture
    with Modality DX is refused for being a Secondary Capture, not for its Modality.
    """
    sop_class = _sop_class(ds)
    modality = _text(ds, "Modality").upper()
    if sop_class in ANALYSIS_SOP_CLASSES:
        return None
    if sop_class:
        name = UID(sop_class).name
        if sop_class in OUTPUT_SOP_CLASSES and sop_class not in SECONDARY_CAPTURE_SOP_CLASSES:
            return f"not an image for analysis (SOP Class {name})"
        return f"not a CR/DX image (SOP Class {name})"
    if modality in OUTPUT_MODALITIES:
        return f"not an image for analysis (Modality {modality}, no SOP Class)"
    if modality not in ANALYSIS_MODALITIES:
        return f"not a CR/DX image (Modality {modality}, no SOP Class)" if modality else "not a CR/DX image (no SOP Class, no Modality)"
    return None  # Modality CR/DX without SOPClassUID: analysed, SOP class reported empty


def _transfer_syntax(ds: Dataset) -> UID | None:
    """The dataset's transfer syntax, inferred from how it was read when file meta lacks it."""
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None and "TransferSyntaxUID" in file_meta:
        return UID(str(file_meta.TransferSyntaxUID))
    if ds["PixelData"].is_undefined_length:
        return None
    implicit, little = ds.original_encoding
    if little is False:
        return ExplicitVRBigEndian
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def _decoder(transfer_syntax: UID) -> Decoder | str:
    """The pixel data decoder for ``transfer_syntax``, or the reason there is none."""
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        return f"unsupported transfer syntax {transfer_syntax.name}"
    if not decoder.is_available:
        return f"unsupported transfer syntax {transfer_syntax.name} (no decoder installed)"
    return decoder


def _native_length_problem(ds: Dataset) -> str | None:
    """Uncompressed pixel data too short for Rows x Columns, found before the decoder sees it.

    (A file that ends inside the element is a "truncated file", found by :func:`_cut_short`.)
    """
    expected = int(ds.Rows) * int(ds.Columns) * (int(ds.BitsAllocated) // 8)
    actual = len(ds.PixelData)
    if actual < expected:
        return f"short pixel data ({actual} of {expected} bytes for {int(ds.Columns)} x {int(ds.Rows)} pixels)"
    return None


def _pixel_spacing(ds: Dataset, *, sop_uid: str) -> tuple[tuple[float, float] | None, str | None]:
    """Row/column spacing in mm from ImagerPixelSpacing, else PixelSpacing, when both values are > 0."""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        if keyword not in ds:
            continue
        try:
            value = ds[keyword].value
            values = [float(v) for v in (value if isinstance(value, (list, tuple, MultiValue)) else [value])]
        except (TypeError, ValueError) as exc:
            logger.warning("SOPInstanceUID %s: unreadable %s (%s)", sop_uid, keyword, _describe(exc))
            continue
        if len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values):
            return (values[0], values[1]), keyword
        logger.info("SOPInstanceUID %s: ignoring %s %s", sop_uid, keyword, values)
    return None, None


def _header_only(ds: Dataset) -> Dataset:
    """A deep copy of the dataset without pixel data, keeping file meta and character set."""
    header = Dataset()
    for elem in ds:
        if elem.tag not in _BULK_TAGS:
            header.add(copy.deepcopy(elem))
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None:
        header.file_meta = copy.deepcopy(file_meta)
    implicit, little = ds.original_encoding
    if implicit is not None and little is not None:
        header.set_original_encoding(implicit, little, ds.original_character_set)
    return header


def _sop_class(ds: Dataset) -> str | None:
    value = _text(ds, "SOPClassUID")
    if value:
        return value
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None and "MediaStorageSOPClassUID" in file_meta:
        return str(file_meta.MediaStorageSOPClassUID).strip() or None
    return None


def _text(ds: Dataset, keyword: str) -> str:
    """A header value as stripped text ('' when missing or unreadable); first value if multi-valued."""
    try:
        value = ds.get(keyword)
    except (ValueError, TypeError, KeyError) as exc:
        logger.warning("unreadable %s (%s)", keyword, type(exc).__name__)
        return ""
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else ""
    return str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    text = _text(ds, keyword)
    if not text:
        return None
    try:
        return int(float(text))
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    message = " ".join(str(exc).split()) or type(exc).__name__
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def _reject(*, source: str, reason: str, header: Dataset | None = None) -> Rejected:
    """A rejection carrying whatever identifying UIDs ``header`` has (never patient data)."""

    def uid(keyword: str) -> str | None:
        # An invalid UID is never passed on: it could not name the instance or study elsewhere.
        value = _text(header, keyword) if header is not None else ""
        return value if value and uid_problem(value) is None else None

    sop_uid = uid("SOPInstanceUID")
    if sop_uid:
        logger.warning("rejected SOPInstanceUID %s: %s", sop_uid, reason)
    else:
        logger.warning("rejected %s: %s", source, reason)
    return Rejected(
        sop_instance_uid=sop_uid,
        study_instance_uid=uid("StudyInstanceUID"),
        source=source,
        reason=reason,
        series_instance_uid=uid("SeriesInstanceUID"),
        sop_class_uid=(_sop_class(header) if header is not None else None),
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Ingest DICOM files or folders and report, per study, what would be analysed and why not the rest."
    )
    parser.add_argument("paths", type=Path, nargs="+", help="DICOM files or folders (searched recursively)")
    defaults = IngestLimits()
    parser.add_argument("--max-pixels", type=int, default=defaults.max_pixels, help="largest Rows x Columns accepted")
    parser.add_argument("--min-side", type=int, default=defaults.min_side, help="smallest Rows or Columns accepted")
    parser.add_argument("--max-side", type=int, default=defaults.max_side, help="largest Rows or Columns accepted")
    parser.add_argument(
        "--max-file-mib", type=int, default=defaults.max_file_bytes // MiB, help="largest file size in MiB"
    )
    return parser


def main(args: argparse.Namespace) -> None:
    limits = IngestLimits(
        max_pixels=args.max_pixels,
        min_side=args.min_side,
        max_side=args.max_side,
        max_file_bytes=args.max_file_mib * MiB,
    )
    results = ingest_paths(args.paths, limits=limits)
    for study, items in group_by_study(results).items():
        accepted = sum(isinstance(item, IngestedImage) for item in items)
        print(f"study {study}: {accepted} of {len(items)} instance(s) analysable")
        for item in items:
            if isinstance(item, IngestedImage):
                spacing = "unknown"
                if item.pixel_spacing_mm is not None:
                    spacing = "{:.3f} x {:.3f} mm".format(*item.pixel_spacing_mm)
                print(
                    f"  ok       {item.sop_instance_uid} {item.modality} {item.columns} x {item.rows} "
                    f"{item.photometric_interpretation} {item.bits_stored} bits, spacing {spacing}, "
                    f"{UID(item.transfer_syntax_uid).name}"
                )
            else:
                print(f"  rejected {item.sop_instance_uid or item.source}: {item.reason}")


if __name__ == "__main__":
    configure_logging(os.environ.get("CXR_LOG_LEVEL", "WARNING"))
    main(get_args_parser().parse_args())
