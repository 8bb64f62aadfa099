"""DICOM test corpus for ingest: one chest image written in every encoding real modalities send.

Nothing is committed: :func:`build_corpus` writes the files into a folder (a pytest tmp dir)
and returns a :class:`CorpusCase` per file. The anatomy comes from PhantomCXR
(:func:`cxr_models.phantom.generate.render_study`) when it is available, else from a small
numpy-drawn chest (dark lungs, bright mediastinum and spine) so the corpus never depends on it.

Each analysable case carries an expected display array (``<name>.expected.npy``) computed here
with plain numpy from the stored values and the grey-level attributes the case was written
with, independently of :mod:`cxr_models.imaging`, plus the tolerance it must be met with.
JPEG cases made with dcmtk's ``dcmcjpeg`` are left out when the tool is missing; their names
are in :data:`DCMTK_CASES` so tests can skip them by name.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MPEG2MPML,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

logger = logging.getLogger(__name__)

PATIENT_NAME = "Kowalczyk^Agnieszka"
PATIENT_ID = "PID-84921-X"
NON_ASCII_PATIENT_NAME = "Müller^Zoë"
NON_ASCII_PATIENT_ID = "PID-55107-Q"
#: A Japanese patient in ISO 2022 IR 87 with an empty first Specific Character Set value, as
#: Japanese modalities write it (alphabetic = ideographic = phonetic component groups).
JAPANESE_CHARACTER_SET = ["", "ISO 2022 IR 87"]
JAPANESE_PATIENT_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"
JAPANESE_PATIENT_ID = "PID-31337-J"
#: Strings that must never show up in logs.
PATIENT_IDENTIFIERS: tuple[str, ...] = (
    PATIENT_NAME,
    "Kowalczyk",
    "Agnieszka",
    PATIENT_ID,
    NON_ASCII_PATIENT_NAME,
    "Müller",
    "Zoë",
    NON_ASCII_PATIENT_ID,
    "山田",
    "Yamada",
    JAPANESE_PATIENT_ID,
)

BITS = 12  # bits stored of the original image
TOP = 2**BITS - 1
REFERENCE_CASE = "original"
DCMTK_CASES: tuple[str, ...] = ("jpeg_baseline_8bit", "jpeg_extended_12bit", "jpeg_lossless_p14", "jpeg_lossless_sv1")
#: Every case :func:`build_corpus` writes (the DCMTK_CASES only when dcmcjpeg is installed).
ANALYSABLE_CASES: tuple[str, ...] = (
    REFERENCE_CASE,
    "implicit_vr_little_endian",
    "explicit_vr_big_endian",
    "deflated_explicit_vr_little_endian",
    "monochrome1",
    "presentation_lut_inverse",
    "monochrome1_presentation_lut_inverse",
    "bits_stored_8",
    "bits_stored_10",
    "bits_stored_14",
    "bits_stored_16",
    "signed_16",
    "rescale_slope_intercept",
    "window_multi_valued",
    "rescale_then_window",
    "modality_lut_sequence",
    "voi_lut_sequence",
    "pixel_spacing_zero",
    "body_part_pecho",
    "non_ascii_patient",
    # Hostile headers the outputs must not copy (writers/sources.py): still analysed.
    "window_width_zero",
    "invalid_header_values",
    "japanese_iso2022_empty_first_value",
    "rle_lossless",
    "rle_lossless_signed_16",
    "jpeg2000_lossless",
    "jpeg2000_lossless_monochrome1",
    "jpeg2000_lossy",
    "jpegls_lossless",
    "jpegls_lossless_signed_16",
    "jpegls_near_lossless",
    *DCMTK_CASES,
)
MALFORMED_CASES: tuple[str, ...] = (
    "no_pixel_data",
    "rgb",
    "multi_frame",
    "ct_modality",
    "structured_report",
    "decompression_bomb",
    "one_pixel",
    "truncated",
    "truncated_jpeg2000",
    "garbage",
    "corrupt_jpeg2000",
    "unsupported_transfer_syntax",
    "missing_study_uid",
    # Rejected at ingest; a study made only of such images still gets an SR with their reasons.
    "short_pixel_data",
    "bits_stored_over_allocated",
    "rows_zero",
    "ybr_full",
    "float_pixel_data",
    "secondary_capture_dx",
)
#: Cases whose headers the writers must repair or leave out of the outputs (see HOSTILE_HEADERS).
HOSTILE_HEADER_CASES: tuple[str, ...] = (
    "window_width_zero",
    "invalid_header_values",
    "japanese_iso2022_empty_first_value",
    "pixel_spacing_zero",
)
#: Attributes of ``invalid_header_values`` that are invalid as written (dates with separators or
#: out of range, strings over their VR's length, a person name in the retired form, a
#: lower-case code string, a Patient Sex outside M/F/O, one value where two are required).
INVALID_HEADER_VALUES: dict[str, object] = {
    "StudyDate": "2024-01-05",
    "StudyTime": "25:61:00",
    "PatientBirthDate": "19581399",
    "AccessionNumber": "ACC-2024-0000012345",
    "StudyID": "STUDY-000000000012",
    "ReferringPhysicianName": "House, Gregory",
    "InstitutionName": "Szpital Wojewódzki im. Jana Pawla II w Krakowie, Oddzial Radiologii i Diagnostyki Obrazowej",
    "PatientSex": "female",
    "BodyPartExamined": "chest",
    "PatientOrientation": "L",
}
LOSSY_MEAN_DIFF = 0.02
EXACT_MAX_DIFF = 1e-3


@dataclass(frozen=True)
class CorpusCase:
    """One corpus file and what ingest must make of it.

    Analysable cases name an ``expected_display`` (.npy) to match with ``max_diff`` (largest
    absolute difference) and/or ``mean_diff`` (mean absolute difference, lossy codecs), and
    ``original_max_diff``, how far their display may be from the original's (rounding of a
    requantisation; None where the case windows the image differently or is lossy).
    Malformed cases give a fragment ``reason_contains`` of the rejection reason.
    """

    name: str
    path: Path
    expect_analysable: bool
    reason_contains: str | None
    expected_display: Path | None = None
    max_diff: float | None = None
    mean_diff: float | None = None
    original_max_diff: float | None = None
    study_instance_uid: str | None = None


@dataclass(frozen=True, eq=False)
class BaseImage:
    """The anatomy every variant shows: 12-bit MONOCHROME2 values and two reference regions."""

    values: np.ndarray  # uint16, 0..TOP, white = dense
    lungs: np.ndarray  # bool
    mediastinum: np.ndarray  # bool
    source: str  # "phantom" or "numpy"


@dataclass(frozen=True)
class _Ids:
    study: str
    series: str
    seed: int

    def instance(self, name: str) -> str:
        return generate_uid(entropy_srcs=[f"cxr-corpus-{self.seed}-instance-{name}"])


def build_corpus(out_dir: Path, *, seed: int = 0) -> list[CorpusCase]:
    """Write the corpus into ``out_dir`` and describe every file written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = base_image(seed=seed)
    ids = _Ids(
        study=generate_uid(entropy_srcs=[f"cxr-corpus-{seed}-study"]),
        series=generate_uid(entropy_srcs=[f"cxr-corpus-{seed}-series"]),
        seed=seed,
    )
    builder = _Builder(out_dir=out_dir, base=base, ids=ids)
    builder.analysable_cases()
    builder.hostile_header_cases()
    builder.compressed_cases()
    builder.dcmtk_cases()
    builder.malformed_cases()
    return builder.cases


@functools.lru_cache(maxsize=4)
def base_image(*, seed: int = 0) -> BaseImage:
    """The corpus anatomy: PhantomCXR when importable, else the numpy-drawn chest."""
    try:
        from cxr_models.phantom.generate import render_study
    except ImportError:
        logger.info("PhantomCXR not available; drawing the corpus chest with numpy")
        return _numpy_chest(seed=seed)
    return _phantom_chest(render_study, seed=seed)


def robust_display(values: np.ndarray) -> np.ndarray:
    """Expected display without a window: 0.5/99.5 percentiles stretched to [0, 1]."""
    v = values.astype(np.float64)
    lo, hi = np.percentile(v, [0.5, 99.5])
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def window_display(values: np.ndarray, *, center: float, width: float) -> np.ndarray:
    """Expected display through a linear window (``center +- width / 2``)."""
    v = values.astype(np.float64)
    return np.clip((v - (center - width / 2.0)) / width, 0.0, 1.0).astype(np.float32)


def _phantom_chest(render_study: Callable[..., Any], *, seed: int) -> BaseImage:
    study = render_study(seed=seed, study_index=0, size_range=(384, 512), label="negative")
    frontal = next((image for image in study.images if image.view == "frontal"), None)
    if frontal is None or frontal.lung_mask is None:
        raise ValueError(f"PhantomCXR study for seed {seed} has no frontal chest image with lung masks")
    display = np.asarray(frontal.display, dtype=np.float64)
    lo, hi = float(display.min()), float(display.max())
    values = np.round((display - lo) / max(hi - lo, 1e-9) * TOP).astype(np.uint16)
    lungs = np.asarray(frontal.lung_mask, dtype=bool)
    return BaseImage(values=values, lungs=lungs, mediastinum=_mediastinum_from(lungs), source="phantom")


def _mediastinum_from(lungs: np.ndarray) -> np.ndarray:
    """The band between the lungs over their middle third of height."""
    rows = np.flatnonzero(lungs.any(axis=1))
    cols = np.flatnonzero(lungs.any(axis=0))
    mask = np.zeros(lungs.shape, dtype=bool)
    if rows.size == 0:
        return mask
    top, bottom = rows[0], rows[-1]
    r0, r1 = top + (bottom - top) // 3, top + 2 * (bottom - top) // 3
    centre = (cols[0] + cols[-1]) // 2
    half = max(2, (cols[-1] - cols[0]) // 20)
    mask[r0:r1, centre - half : centre + half] = True
    return mask & ~lungs


def _lung_ellipses(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    lungs = np.zeros(shape, dtype=bool)
    for cx in (0.31 * w, 0.69 * w):
        lungs |= ((xx - cx) / (0.15 * w)) ** 2 + ((yy - 0.47 * h) / (0.30 * h)) ** 2 <= 1.0
    return lungs


def _numpy_chest(*, seed: int) -> BaseImage:
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(400, 480)), int(rng.integers(384, 448))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.full((h, w), 250.0)
    body = ((xx - w / 2) / (0.46 * w)) ** 2 + ((yy - 0.55 * h) / (0.52 * h)) ** 2 <= 1.0
    img[body] = 2300.0
    lungs = _lung_ellipses((h, w))
    img[lungs] = 900.0
    for k in range(8):  # ribs: bright arcs over the lungs
        arc = np.abs(yy - (0.2 * h + k * 0.075 * h) - 0.00035 * (xx - w / 2) ** 2 / (w / 512)) < 0.012 * h
        img[arc & lungs] += 600.0
    mediastinum_band = body & (np.abs(xx - w / 2) < 0.09 * w) & (yy > 0.15 * h)
    img[mediastinum_band] = 3300.0
    img[(np.abs(xx - w / 2) < 0.03 * w) & body] = 3700.0  # spine
    img += rng.normal(0.0, 40.0, size=img.shape)
    values = np.clip(np.round(img), 0, TOP).astype(np.uint16)
    mediastinum = (np.abs(xx - w / 2) < 0.07 * w) & (yy > 0.35 * h) & (yy < 0.6 * h) & ~lungs
    return BaseImage(values=values, lungs=lungs, mediastinum=mediastinum, source="numpy")


class _Builder:
    """Writes cases and collects their descriptions."""

    def __init__(self, *, out_dir: Path, base: BaseImage, ids: _Ids) -> None:
        self.out_dir = out_dir
        self.base = base
        self.ids = ids
        self.cases: list[CorpusCase] = []
        self.expected: dict[str, Path] = {}

    # -- datasets ---------------------------------------------------------------------------

    def dataset(self, name: str, *, sop_class: UID = ComputedRadiographyImageStorage, modality: str = "CR") -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        sop_uid = self.ids.instance(name)
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = self.ids.study
        ds.SeriesInstanceUID = self.ids.series
        ds.Modality = modality
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = "19580314"
        ds.PatientSex = "F"
        ds.StudyDate = "20240105"
        ds.StudyTime = "101500"
        ds.AccessionNumber = f"ACC{self.ids.seed:05d}"
        ds.StudyID = "1"
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber = 1
        ds.InstanceNumber = len(self.cases) + 1
        ds.Manufacturer = "cxr test corpus"
        ds.BodyPartExamined = "CHEST"
        ds.ViewPosition = "PA"
        ds.PatientOrientation = ["L", "F"]
        ds.ImagerPixelSpacing = [0.8, 0.8]
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        return ds

    def image(
        self,
        name: str,
        stored: np.ndarray,
        *,
        bits_stored: int,
        photometric: str = "MONOCHROME2",
        sop_class: UID = ComputedRadiographyImageStorage,
        modality: str = "CR",
    ) -> Dataset:
        ds = self.dataset(name, sop_class=sop_class, modality=modality)
        _set_pixels(ds, stored, bits_stored=bits_stored, photometric=photometric)
        return ds

    # -- bookkeeping -------------------------------------------------------------------------

    def write(self, name: str, ds: Dataset, *, transfer_syntax: UID | None = None) -> Path:
        if transfer_syntax is not None:
            ds.file_meta.TransferSyntaxUID = transfer_syntax
        if transfer_syntax == ExplicitVRBigEndian:
            ds.PixelData = _big_endian_pixels(ds)
        path = self.out_dir / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path

    def analysable(
        self,
        name: str,
        path: Path,
        expected: np.ndarray | str,
        *,
        max_diff: float | None = EXACT_MAX_DIFF,
        mean_diff: float | None = None,
        original_max_diff: float | None = EXACT_MAX_DIFF,
        study: str | None = None,
    ) -> None:
        if isinstance(expected, str):
            expected_path = self.expected[expected]
        else:
            expected_path = self.out_dir / f"{name}.expected.npy"
            np.save(expected_path, expected.astype(np.float32))
        self.expected[name] = expected_path
        self.cases.append(
            CorpusCase(
                name=name,
                path=path,
                expect_analysable=True,
                reason_contains=None,
                expected_display=expected_path,
                max_diff=max_diff,
                mean_diff=mean_diff,
                original_max_diff=original_max_diff,
                study_instance_uid=study or self.ids.study,
            )
        )

    def malformed(self, name: str, path: Path, reason: str, *, study: str | None) -> None:
        self.cases.append(
            CorpusCase(name=name, path=path, expect_analysable=False, reason_contains=reason, study_instance_uid=study)
        )

    # -- cases ------------------------------------------------------------------------------

    def analysable_cases(self) -> None:
        v = self.base.values

        name = REFERENCE_CASE
        self.analysable(name, self.write(name, self.image(name, v, bits_stored=BITS)), robust_display(v))
        for name, ts in (
            ("implicit_vr_little_endian", ImplicitVRLittleEndian),
            ("explicit_vr_big_endian", ExplicitVRBigEndian),
            ("deflated_explicit_vr_little_endian", DeflatedExplicitVRLittleEndian),
        ):
            path = self.write(name, self.image(name, v, bits_stored=BITS), transfer_syntax=ts)
            self.analysable(name, path, REFERENCE_CASE)

        inverted = (TOP - v).astype(np.uint16)
        name = "monochrome1"
        ds = self.image(name, inverted, bits_stored=BITS, photometric="MONOCHROME1")
        self.analysable(name, self.write(name, ds), REFERENCE_CASE)
        name = "presentation_lut_inverse"
        ds = self.image(name, inverted, bits_stored=BITS)
        ds.PresentationLUTShape = "INVERSE"
        self.analysable(name, self.write(name, ds), REFERENCE_CASE)
        # DX For Presentation writes MONOCHROME1 together with INVERSE: one inversion, not two.
        name = "monochrome1_presentation_lut_inverse"
        ds = self.image(name, inverted, bits_stored=BITS, photometric="MONOCHROME1")
        ds.PresentationLUTShape = "INVERSE"
        self.analysable(name, self.write(name, ds), REFERENCE_CASE)

        for bits in (8, 10, 14, 16):
            name = f"bits_stored_{bits}"
            stored = np.round(v.astype(np.float64) * (2**bits - 1) / TOP).astype(np.uint8 if bits == 8 else np.uint16)
            if bits > BITS:
                stored = (v.astype(np.uint32) << (bits - BITS)).astype(np.uint16)
            # Requantising to fewer bits moves values by up to half a step of the new depth
            # (and the percentiles with them).
            rounding = 1.5 * (TOP / (2**bits - 1)) / _robust_range(v) if bits < BITS else 0.0
            self.analysable(
                name,
                self.write(name, self.image(name, stored, bits_stored=bits)),
                robust_display(stored),
                original_max_diff=max(EXACT_MAX_DIFF, rounding),
            )

        name = "signed_16"
        signed = (v.astype(np.int32) * 16 - 32768).astype(np.int16)
        self.analysable(name, self.write(name, self.image(name, signed, bits_stored=16)), REFERENCE_CASE)

        name = "rescale_slope_intercept"
        ds = self.image(name, ((v.astype(np.int32) + 1024) * 2).astype(np.uint16), bits_stored=14)
        ds.RescaleSlope = "0.5"
        ds.RescaleIntercept = "-1024"
        ds.RescaleType = "US"
        self.analysable(name, self.write(name, ds), REFERENCE_CASE)

        lo, hi = (round(float(x), 1) for x in np.percentile(v, [10, 95]))
        center, width = round((lo + hi) / 2, 1), round(hi - lo, 1)
        windowed = window_display(v, center=center, width=width)
        name = "window_multi_valued"
        ds = self.image(name, v, bits_stored=BITS)
        ds.WindowCenter = [center, 2048]
        ds.WindowWidth = [width, 4096]
        ds.WindowCenterWidthExplanation = ["CHEST", "FULL"]
        self.analysable(name, self.write(name, ds), windowed, original_max_diff=None)

        name = "rescale_then_window"
        ds = self.image(name, ((v.astype(np.int32) + 1024) * 2).astype(np.uint16), bits_stored=14)
        ds.RescaleSlope = "0.5"
        ds.RescaleIntercept = "-1024"
        ds.RescaleType = "US"
        ds.WindowCenter = center
        ds.WindowWidth = width
        self.analysable(name, self.write(name, ds), windowed, original_max_diff=None)

        name = "modality_lut_sequence"
        lut = np.round(65535.0 * np.sqrt(np.arange(TOP + 1) / TOP)).astype(np.uint16)
        stored = np.round(TOP * (v.astype(np.float64) / TOP) ** 2).astype(np.uint16)
        ds = self.image(name, stored, bits_stored=BITS)
        ds.ModalityLUTSequence = [_lut_item(lut, first=0, extra={"ModalityLUTType": "US"})]
        # Squaring into 12 bits and the 16-bit square-root LUT lose up to a few original units.
        lost = float(np.abs(lut[stored].astype(np.float64) * TOP / 65535.0 - v).max()) + 0.5
        self.analysable(
            name, self.write(name, ds), robust_display(lut[stored]), original_max_diff=1.5 * lost / _robust_range(v)
        )

        name = "voi_lut_sequence"
        voi = np.round(65535.0 * np.clip((np.arange(TOP + 1) - lo) / (hi - lo), 0.0, 1.0) ** 0.8).astype(np.uint16)
        ds = self.image(name, v, bits_stored=BITS)
        ds.VOILUTSequence = [_lut_item(voi, first=0, extra={"LUTExplanation": "CHEST"})]
        self.analysable(name, self.write(name, ds), (voi[v] / 65535.0).astype(np.float32), original_max_diff=None)

        name = "pixel_spacing_zero"
        ds = self.image(name, v, bits_stored=BITS)
        del ds.ImagerPixelSpacing
        ds.PixelSpacing = [0, 0]
        self.analysable(name, self.write(name, ds), REFERENCE_CASE)

        name = "body_part_pecho"
        ds = self.image(name, v, bits_stored=BITS, sop_class=DigitalXRayImageStorageForPresentation, modality="DX")
        ds.BodyPartExamined = "PECHO"
        ds.PresentationIntentType = "FOR PRESENTATION"
        self.analysable(name, self.write(name, ds), REFERENCE_CASE)

        name = "non_ascii_patient"
        ds = self.image(name, v, bits_stored=BITS)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = NON_ASCII_PATIENT_NAME
        ds.PatientID = NON_ASCII_PATIENT_ID
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"cxr-corpus-{self.ids.seed}-study-non-ascii"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"cxr-corpus-{self.ids.seed}-series-non-ascii"])
        self.analysable(name, self.write(name, ds), REFERENCE_CASE, study=ds.StudyInstanceUID)

    def hostile_header_cases(self) -> None:
        """Images ingest accepts whose headers are invalid where our outputs would copy them."""
        v = self.base.values

        name = "window_width_zero"  # display_array ignores it; a GSPS may not carry it
        ds = self.image(name, v, bits_stored=BITS)
        ds.WindowCenter = 2048
        ds.WindowWidth = 0
        self.analysable(name, self.write(name, ds), REFERENCE_CASE)

        name = "invalid_header_values"
        ds = self.image(name, v, bits_stored=BITS)
        ds.SpecificCharacterSet = "ISO_IR 100"
        with _unvalidated():
            for keyword, value in INVALID_HEADER_VALUES.items():
                setattr(ds, keyword, value)
            path = self.write(name, ds)
        self.analysable(name, path, REFERENCE_CASE)

        name = "japanese_iso2022_empty_first_value"
        ds = self.image(name, v, bits_stored=BITS)
        ds.SpecificCharacterSet = JAPANESE_CHARACTER_SET
        ds.PatientName = JAPANESE_PATIENT_NAME
        ds.PatientID = JAPANESE_PATIENT_ID
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"cxr-corpus-{self.ids.seed}-study-japanese"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"cxr-corpus-{self.ids.seed}-series-japanese"])
        self.analysable(name, self.write(name, ds), REFERENCE_CASE, study=ds.StudyInstanceUID)

    def compressed_cases(self) -> None:
        v = self.base.values
        signed = (v.astype(np.int32) * 16 - 32768).astype(np.int16)
        inverted = (TOP - v).astype(np.uint16)
        specs: list[tuple[str, UID, np.ndarray, int, str, dict[str, object], bool]] = [
            ("rle_lossless", RLELossless, v, BITS, "MONOCHROME2", {}, False),
            ("rle_lossless_signed_16", RLELossless, signed, 16, "MONOCHROME2", {}, False),
            ("jpeg2000_lossless", JPEG2000Lossless, v, BITS, "MONOCHROME2", {}, False),
            ("jpeg2000_lossless_monochrome1", JPEG2000Lossless, inverted, BITS, "MONOCHROME1", {}, False),
            ("jpeg2000_lossy", JPEG2000, v, BITS, "MONOCHROME2", {"j2k_cr": [15]}, True),
            ("jpegls_lossless", JPEGLSLossless, v, BITS, "MONOCHROME2", {}, False),
            ("jpegls_lossless_signed_16", JPEGLSLossless, signed, 16, "MONOCHROME2", {}, False),
            ("jpegls_near_lossless", JPEGLSNearLossless, v, BITS, "MONOCHROME2", {"jls_error": 3}, True),
        ]
        for name, ts, stored, bits, photometric, options, lossy in specs:
            ds = self.image(name, stored, bits_stored=bits, photometric=photometric)
            ds.compress(ts, **options)
            if lossy:
                ds.LossyImageCompression = "01"
                path = self.write(name, ds)
                self.analysable(
                    name, path, REFERENCE_CASE, max_diff=None, mean_diff=LOSSY_MEAN_DIFF, original_max_diff=None
                )
            else:
                self.analysable(name, self.write(name, ds), REFERENCE_CASE)

    def dcmtk_cases(self) -> None:
        """JPEG process 1, 2/4 and 14 (SV1 too) written by dcmtk's dcmcjpeg."""
        tool = shutil.which("dcmcjpeg")
        if tool is None:
            logger.warning("dcmcjpeg not found; corpus lacks %s", ", ".join(DCMTK_CASES))
            return
        v = self.base.values
        v8 = np.round(v.astype(np.float64) * 255 / TOP).astype(np.uint8)
        for name, option, stored, bits, lossy in (
            ("jpeg_baseline_8bit", "+eb", v8, 8, True),
            ("jpeg_extended_12bit", "+ee", v, BITS, True),
            ("jpeg_lossless_p14", "+el", v, BITS, False),
            ("jpeg_lossless_sv1", "+e1", v, BITS, False),
        ):
            source = self.write(f"{name}.uncompressed", self.image(name, stored, bits_stored=bits))
            path = self.out_dir / f"{name}.dcm"
            subprocess.run([tool, option, str(source), str(path)], check=True, capture_output=True)
            source.unlink()
            if lossy:
                self.analysable(
                    name, path, robust_display(stored), max_diff=None, mean_diff=LOSSY_MEAN_DIFF, original_max_diff=None
                )
            else:
                self.analysable(name, path, REFERENCE_CASE)

    def malformed_cases(self) -> None:
        v = self.base.values
        study = self.ids.study

        name = "no_pixel_data"
        ds = self.dataset(name)
        ds.Rows, ds.Columns = v.shape
        self.malformed(name, self.write(name, ds), "no pixel data", study=study)

        name = "rgb"
        ds = self.dataset(name)
        rgb = np.repeat((v >> 4).astype(np.uint8)[..., None], 3, axis=2)
        ds.Rows, ds.Columns = v.shape
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = "RGB"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = rgb.tobytes()
        self.malformed(name, self.write(name, ds), "colour image (PhotometricInterpretation RGB)", study=study)

        name = "multi_frame"
        ds = self.image(name, v, bits_stored=BITS)
        ds.NumberOfFrames = 3
        ds.PixelData = np.stack([v, v, v]).tobytes()
        self.malformed(name, self.write(name, ds), "multi-frame image (NumberOfFrames 3)", study=study)

        name = "ct_modality"
        ds = self.image(name, v, bits_stored=BITS, sop_class=CTImageStorage, modality="CT")
        self.malformed(name, self.write(name, ds), "not a CR/DX image (SOP Class CT Image Storage)", study=study)

        name = "structured_report"
        ds = self.dataset(name, sop_class=BasicTextSRStorage, modality="SR")
        for keyword in ("ImagerPixelSpacing", "PatientOrientation", "ViewPosition", "ImageType"):
            delattr(ds, keyword)
        ds.ValueType = "CONTAINER"
        self.malformed(name, self.write(name, ds), "not an image for analysis (SOP Class Basic Text SR Storage)", study=study)

        name = "decompression_bomb"
        ds = self.image(name, v[:8, :8], bits_stored=BITS)
        ds.Rows, ds.Columns = 30000, 30000
        self.malformed(name, self.write(name, ds), "image too large: 30000 x 30000 pixels", study=study)

        name = "one_pixel"
        ds = self.image(name, v[:1, :1], bits_stored=BITS)
        self.malformed(name, self.write(name, ds), "image too small: 1 x 1 pixels", study=study)

        name = "truncated"
        full = self.write(name, self.image(name, v, bits_stored=BITS)).read_bytes()
        path = self.out_dir / f"{name}.dcm"
        path.write_bytes(full[: len(full) - v.nbytes // 2])
        self.malformed(name, path, "truncated file", study=study)

        name = "truncated_jpeg2000"
        ds = self.image(name, v, bits_stored=BITS)
        ds.compress(JPEG2000Lossless)
        full = self.write(name, ds).read_bytes()
        path.with_name(f"{name}.dcm").write_bytes(full[: len(full) - 200])
        self.malformed(name, path.with_name(f"{name}.dcm"), "truncated file", study=study)

        name = "garbage"
        path = self.out_dir / f"{name}.dcm"
        path.write_bytes(np.random.default_rng(self.ids.seed).integers(0, 256, size=4096, dtype=np.uint8).tobytes())
        self.malformed(name, path, "not a DICOM file", study=None)

        name = "corrupt_jpeg2000"
        ds = self.image(name, v, bits_stored=BITS)
        ds.compress(JPEG2000Lossless)
        frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
        for i in range(4, 44):  # flip the SIZ marker segment: image size and components
            frame[i] ^= 0xFF
        ds.PixelData = encapsulate([bytes(frame)])
        self.malformed(name, self.write(name, ds), "corrupt pixel data", study=study)

        name = "unsupported_transfer_syntax"
        ds = self.image(name, v, bits_stored=BITS)
        ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
        ds["PixelData"].VR = "OB"
        path = self.write(name, ds, transfer_syntax=MPEG2MPML)
        self.malformed(name, path, f"unsupported transfer syntax {MPEG2MPML.name}", study=study)

        name = "missing_study_uid"
        ds = self.image(name, v, bits_stored=BITS)
        del ds.StudyInstanceUID
        self.malformed(name, self.write(name, ds), "missing StudyInstanceUID", study=None)

        name = "short_pixel_data"  # a complete file whose pixel data is half of Rows x Columns
        ds = self.image(name, v, bits_stored=BITS)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        self.malformed(name, self.write(name, ds), "short pixel data", study=study)

        name = "bits_stored_over_allocated"
        ds = self.image(name, (v >> 4).astype(np.uint8), bits_stored=8)
        ds.BitsStored, ds.HighBit = 16, 15
        self.malformed(name, self.write(name, ds), "invalid bit depth (BitsStored 16 exceeds BitsAllocated 8)", study=study)

        name = "rows_zero"
        ds = self.image(name, v, bits_stored=BITS)
        ds.Rows = 0
        self.malformed(name, self.write(name, ds), "invalid image size (Rows 0)", study=study)

        name = "ybr_full"
        ds = self.dataset(name)
        ds.Rows, ds.Columns = v.shape
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.PhotometricInterpretation = "YBR_FULL"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.repeat((v >> 4).astype(np.uint8)[..., None], 3, axis=2).tobytes()
        self.malformed(name, self.write(name, ds), "colour image (PhotometricInterpretation YBR_FULL)", study=study)

        name = "float_pixel_data"
        ds = self.dataset(name)
        ds.Rows, ds.Columns = v.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 1, "MONOCHROME2", 32
        ds.FloatPixelData = (v.astype("<f4") / TOP).tobytes()
        self.malformed(name, self.write(name, ds), "unsupported float pixel data", study=study)

        name = "secondary_capture_dx"  # refused for its SOP class, whatever its Modality says
        ds = self.image(name, v, bits_stored=BITS, sop_class=SecondaryCaptureImageStorage, modality="DX")
        self.malformed(
            name, self.write(name, ds), "not a CR/DX image (SOP Class Secondary Capture Image Storage)", study=study
        )


@contextlib.contextmanager
def _unvalidated() -> Iterator[None]:
    """Let pydicom set and write invalid values (a hospital's modality wrote them)."""
    previous = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        yield
    finally:
        config.settings.writing_validation_mode = previous


def _set_pixels(ds: Dataset, stored: np.ndarray, *, bits_stored: int, photometric: str) -> None:
    if stored.ndim != 2:
        raise ValueError(f"stored must be a 2-D array, got shape {stored.shape}")
    allocated = 8 if stored.dtype.itemsize == 1 else 16
    if not 1 <= bits_stored <= allocated:
        raise ValueError(f"bits_stored must be in 1..{allocated} for {stored.dtype}, got {bits_stored}")
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if np.issubdtype(stored.dtype, np.signedinteger) else 0
    ds.PixelData = np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<")).tobytes()


def _big_endian_pixels(ds: Dataset) -> bytes:
    dtype = np.dtype(f"{'i' if ds.PixelRepresentation else 'u'}{ds.BitsAllocated // 8}")
    return np.frombuffer(ds.PixelData, dtype=dtype.newbyteorder("<")).astype(dtype.newbyteorder(">")).tobytes()


def _lut_item(lut: np.ndarray, *, first: int, extra: dict[str, str]) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(lut) % 65536, first, 16]
    item.add_new("LUTData", "OW", lut.astype("<u2").tobytes())
    for keyword, value in extra.items():
        setattr(item, keyword, value)
    return item


def _robust_range(values: np.ndarray) -> float:
    lo, hi = np.percentile(values.astype(np.float64), [0.5, 99.5])
    return float(hi - lo)
