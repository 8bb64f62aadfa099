"""Ingest of CR/DX instances against the DICOM test corpus (tests/corpus.py)."""

from __future__ import annotations

import io
import logging
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from cxr_service import ingest
from cxr_service.ingest import (
    NO_STUDY_KEY,
    IngestedImage,
    IngestLimits,
    Rejected,
    group_by_study,
    ingest_bytes,
    ingest_dataset,
    ingest_file,
    ingest_paths,
    iter_dicom_paths,
)
from tests.corpus import (
    ANALYSABLE_CASES,
    DCMTK_CASES,
    MALFORMED_CASES,
    PATIENT_IDENTIFIERS,
    REFERENCE_CASE,
    CorpusCase,
    base_image,
    build_corpus,
)

# pydicom warns (and logs) when it meets the end of the truncated JPEG 2000 file; that is the case under test.
pytestmark = [
    pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning"),
    # The invalid UIDs and numbers under test are set on purpose; pydicom warns about each.
    pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning"),
]

SEED = 0
Corpus = dict[str, CorpusCase]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ingest_corpus")


@pytest.fixture(scope="module")
def corpus(corpus_dir: Path) -> Corpus:
    return {case.name: case for case in build_corpus(corpus_dir, seed=SEED)}


@pytest.fixture(scope="module")
def reference_display(corpus: Corpus) -> np.ndarray:
    result = ingest_file(corpus[REFERENCE_CASE].path)
    assert isinstance(result, IngestedImage), result
    return result.display


def _case(corpus: Corpus, name: str) -> CorpusCase:
    if name not in corpus:
        if name in DCMTK_CASES and shutil.which("dcmcjpeg") is None:
            pytest.skip("dcmtk's dcmcjpeg is not installed; JPEG process 1/2/4/14 cases not built")
        raise AssertionError(f"corpus lacks case {name!r}")
    return corpus[name]


def test_corpus_has_every_case(corpus: Corpus) -> None:
    expected = set(ANALYSABLE_CASES) | set(MALFORMED_CASES)
    if shutil.which("dcmcjpeg") is None:
        expected -= set(DCMTK_CASES)
    assert set(corpus) == expected
    assert all(case.path.is_file() for case in corpus.values())
    assert {n for n, c in corpus.items() if c.expect_analysable} == expected - set(MALFORMED_CASES)


@pytest.mark.parametrize("name", ANALYSABLE_CASES)
def test_analysable_case_matches_expected_display(
    corpus: Corpus, reference_display: np.ndarray, name: str
) -> None:
    case = _case(corpus, name)
    result = ingest_file(case.path)
    assert isinstance(result, IngestedImage), f"{name}: {result}"
    display = result.display
    assert display.dtype == np.float32
    assert display.shape == (result.rows, result.columns) == reference_display.shape
    assert float(display.min()) >= 0.0 and float(display.max()) <= 1.0

    diff = np.abs(display - np.load(case.expected_display))
    if case.max_diff is not None:
        assert float(diff.max()) < case.max_diff, f"{name}: max abs diff {diff.max():.5f}"
    if case.mean_diff is not None:
        assert float(diff.mean()) < case.mean_diff, f"{name}: mean abs diff {diff.mean():.5f}"
    if case.original_max_diff is not None:
        to_original = float(np.abs(display - reference_display).max())
        assert to_original < case.original_max_diff, f"{name}: {to_original:.5f} from the original"


@pytest.mark.parametrize("name", ANALYSABLE_CASES)
def test_analysable_case_shows_the_same_anatomy(
    corpus: Corpus, reference_display: np.ndarray, name: str
) -> None:
    """Lungs darker than the mediastinum (MONOCHROME1, signed, rescaled: not inverted or wrapped)."""
    base = base_image(seed=SEED)
    result = ingest_file(_case(corpus, name).path)
    assert isinstance(result, IngestedImage), f"{name}: {result}"
    lungs = float(result.display[base.lungs].mean())
    mediastinum = float(result.display[base.mediastinum].mean())
    assert lungs + 0.2 < mediastinum, f"{name}: lungs {lungs:.3f}, mediastinum {mediastinum:.3f}"
    correlation = np.corrcoef(result.display.ravel(), reference_display.ravel())[0, 1]
    assert correlation > 0.95, f"{name}: correlation with the original {correlation:.3f}"


@pytest.mark.parametrize("name", MALFORMED_CASES)
def test_malformed_case_gets_its_specific_reason(corpus: Corpus, name: str) -> None:
    case = corpus[name]
    result = ingest_file(case.path)
    assert isinstance(result, Rejected), f"{name} was accepted"
    assert case.reason_contains is not None
    assert case.reason_contains in result.reason, f"{name}: {result.reason!r}"
    assert result.reason[0].islower(), result.reason
    assert result.source == case.path.name
    assert result.study_instance_uid == case.study_instance_uid
    if name != "garbage":
        assert result.sop_instance_uid is not None
        assert result.sop_instance_uid == pydicom.dcmread(case.path, stop_before_pixels=True).SOPInstanceUID
    else:
        assert result.sop_instance_uid is None


def test_reasons_are_distinct(corpus: Corpus) -> None:
    reasons = {name: ingest_file(corpus[name].path) for name in MALFORMED_CASES}
    assert all(isinstance(r, Rejected) for r in reasons.values())
    texts = [r.reason for r in reasons.values() if isinstance(r, Rejected)]
    assert len(set(texts)) == len(texts), texts


def test_header_fields(corpus: Corpus) -> None:
    original = ingest_file(corpus[REFERENCE_CASE].path)
    assert isinstance(original, IngestedImage)
    assert original.pixel_spacing_mm == (0.8, 0.8)
    assert original.pixel_spacing_source == "ImagerPixelSpacing"
    assert original.modality == "CR"
    assert original.sop_class_uid == pydicom.uid.ComputedRadiographyImageStorage
    assert original.photometric_interpretation == "MONOCHROME2"
    assert original.bits_stored == 12
    assert original.view_position == "PA"
    assert original.body_part_examined == "CHEST"
    assert original.transfer_syntax_uid == ExplicitVRLittleEndian
    header = original.dataset
    assert "PixelData" not in header
    assert header.StudyInstanceUID == original.study_instance_uid
    assert header.SeriesInstanceUID == original.series_instance_uid
    assert str(header.PatientName) and header.AccessionNumber
    assert header.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian

    zero = ingest_file(corpus["pixel_spacing_zero"].path)
    assert isinstance(zero, IngestedImage)
    assert zero.pixel_spacing_mm is None and zero.pixel_spacing_source is None

    pecho = ingest_file(corpus["body_part_pecho"].path)
    assert isinstance(pecho, IngestedImage)
    assert (pecho.body_part_examined, pecho.modality) == ("PECHO", "DX")

    mono1 = ingest_file(corpus["monochrome1"].path)
    assert isinstance(mono1, IngestedImage) and mono1.photometric_interpretation == "MONOCHROME1"

    for name in ("jpeg2000_lossless", "jpegls_near_lossless", "rle_lossless"):
        result = ingest_file(corpus[name].path)
        assert isinstance(result, IngestedImage)
        header = pydicom.dcmread(corpus[name].path, stop_before_pixels=True)
        assert result.transfer_syntax_uid == header.file_meta.TransferSyntaxUID


def test_non_ascii_patient_name_is_kept_in_the_header(corpus: Corpus) -> None:
    result = ingest_file(corpus["non_ascii_patient"].path)
    assert isinstance(result, IngestedImage)
    assert str(result.dataset.PatientName) == "Müller^Zoë"
    assert result.study_instance_uid == corpus["non_ascii_patient"].study_instance_uid


def test_bad_images_do_not_block_their_study(corpus: Corpus, corpus_dir: Path) -> None:
    (corpus_dir / "notes.json").write_text("{}")
    results = ingest_paths([corpus_dir])
    assert len(results) == len(corpus)  # the .npy and .json files were skipped
    groups = group_by_study(results)
    main_study = corpus[REFERENCE_CASE].study_instance_uid
    assert main_study is not None
    in_main = groups[main_study]
    accepted = [r for r in in_main if isinstance(r, IngestedImage)]
    rejected = [r for r in in_main if isinstance(r, Rejected)]
    main_cases = [c for c in corpus.values() if c.study_instance_uid == main_study]
    assert len(accepted) == sum(c.expect_analysable for c in main_cases)
    assert len(rejected) == sum(not c.expect_analysable for c in main_cases) > 5
    assert {r.source for r in groups[NO_STUDY_KEY]} == {"garbage.dcm", "missing_study_uid.dcm"}
    own_studies = {corpus[n].study_instance_uid for n in ("non_ascii_patient", "japanese_iso2022_empty_first_value")}
    assert set(groups) == {main_study, *own_studies, NO_STUDY_KEY}


def test_group_by_study_keeps_input_order() -> None:
    items = [
        Rejected(sop_instance_uid="1.1", study_instance_uid="2.2", source="a", reason="no pixel data"),
        Rejected(sop_instance_uid=None, study_instance_uid=None, source="b", reason="not a DICOM file"),
        Rejected(sop_instance_uid="1.3", study_instance_uid="2.1", source="c", reason="no pixel data"),
        Rejected(sop_instance_uid="1.4", study_instance_uid="2.2", source="d", reason="no pixel data"),
    ]
    groups = group_by_study(items)
    assert list(groups) == ["2.2", NO_STUDY_KEY, "2.1"]
    assert [r.source for r in groups["2.2"]] == ["a", "d"]


def test_bomb_is_rejected_without_decoding_or_allocating(
    corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse_to_decode(*args: object, **kwargs: object) -> tuple[np.ndarray, dict[str, object]]:
        raise AssertionError("pixel data of the bomb was decoded")

    monkeypatch.setattr(Decoder, "as_array", refuse_to_decode)
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(refuse_to_decode))
    tracemalloc.start()
    try:
        result = ingest_file(corpus["decompression_bomb"].path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(result, Rejected)
    assert result.reason == "image too large: 30000 x 30000 pixels (limit 64000000)"
    assert peak < 20 * 1024 * 1024, f"peak {peak} bytes while rejecting the bomb"


def test_side_and_file_limits(corpus: Corpus) -> None:
    path = corpus[REFERENCE_CASE].path
    header = pydicom.dcmread(path, stop_before_pixels=True)
    rows, columns = int(header.Rows), int(header.Columns)
    wide = ingest_file(path, limits=IngestLimits(max_side=columns - 1))
    assert isinstance(wide, Rejected)
    assert wide.reason == f"image too large: {columns} x {rows} pixels (side limit {columns - 1})"
    small = ingest_file(path, limits=IngestLimits(min_side=max(rows, columns) + 1))
    assert isinstance(small, Rejected) and small.reason == f"image too small: {columns} x {rows} pixels"
    big = ingest_file(path, limits=IngestLimits(max_file_bytes=1000))
    assert isinstance(big, Rejected) and big.reason.startswith("file too large:") and big.sop_instance_uid is None
    assert isinstance(ingest_bytes(b"", source="empty"), Rejected)
    with pytest.raises(ValueError, match="max_pixels"):
        IngestLimits(max_pixels=0)
    with pytest.raises(ValueError, match="min_side"):
        IngestLimits(min_side=100, max_side=50)


def test_bytes_and_dataset_entry_points(corpus: Corpus, reference_display: np.ndarray) -> None:
    path = corpus[REFERENCE_CASE].path
    from_bytes = ingest_bytes(path.read_bytes(), source="upload-1")
    assert isinstance(from_bytes, IngestedImage)
    assert np.array_equal(from_bytes.display, reference_display)

    ds = pydicom.dcmread(path)
    from_dataset = ingest_dataset(ds, source="c-store")
    assert isinstance(from_dataset, IngestedImage)
    assert np.array_equal(from_dataset.display, reference_display)
    assert "PixelData" in ds  # the caller's dataset is left as it was

    del ds.file_meta  # a dataset as a network stack may hand it over, without file meta
    bare = ingest_dataset(ds, source="c-store")
    assert isinstance(bare, IngestedImage)
    assert np.array_equal(bare.display, reference_display)

    # The file was cut short; handed over as a dataset, only its pixel data is seen to be short.
    no_pixels = pydicom.dcmread(corpus["truncated"].path)
    result = ingest_dataset(no_pixels, source="c-store")
    assert isinstance(result, Rejected) and result.reason.startswith("short pixel data (")


@pytest.mark.parametrize("syntax", ["explicit little endian", "explicit big endian", "RLE"])
def test_bits_above_bits_stored_are_ignored(corpus: Corpus, reference_display: np.ndarray, syntax: str) -> None:
    """A modality may leave anything in the bits above Bits Stored (PS3.5 8.1.1); ingest reads
    native pixel data in place and ignores them, as pydicom's correction of a copy would."""
    ds = pydicom.dcmread(corpus[REFERENCE_CASE].path)
    bits_stored = int(ds.BitsStored)
    assert bits_stored < int(ds.BitsAllocated) == 16
    noise = np.random.default_rng(7).integers(0, 1 << (16 - bits_stored), ds.pixel_array.shape, dtype=np.uint16)
    raw = ds.pixel_array | (noise << bits_stored).astype(np.uint16)
    if syntax == "RLE":
        ds.BitsStored, ds.HighBit = 16, 15  # pydicom's encoder refuses values above Bits Stored
        ds.compress(RLELossless, raw)
        ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
        data = _as_file(ds)
    elif syntax == "explicit big endian":
        ds.PixelData = raw.astype(">u2").tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True, implicit_vr=False, little_endian=False)
        data = buffer.getvalue()
    else:
        ds.PixelData = raw.tobytes()
        data = _as_file(ds)
    result = ingest_bytes(data, source=syntax)
    assert isinstance(result, IngestedImage), result
    np.testing.assert_array_equal(result.display, reference_display)


def test_bare_dataset_without_preamble_is_read(corpus: Corpus, reference_display: np.ndarray) -> None:
    ds = pydicom.dcmread(corpus[REFERENCE_CASE].path)
    buffer = io.BytesIO()
    bare = pydicom.Dataset(ds)  # no preamble, no file meta: a bare dataset
    pydicom.dcmwrite(buffer, bare, implicit_vr=False, little_endian=True)
    data = buffer.getvalue()
    assert b"DICM" not in data[:256]
    result = ingest_bytes(data, source="bare")
    assert isinstance(result, IngestedImage), result
    assert np.array_equal(result.display, reference_display)


def test_sop_class_decides_over_modality(corpus: Corpus, caplog: pytest.LogCaptureFixture) -> None:
    ds = pydicom.dcmread(corpus[REFERENCE_CASE].path)
    ds.Modality = "OT"
    with caplog.at_level(logging.WARNING, logger=ingest.__name__):
        result = ingest_dataset(ds, source="odd-modality")
    assert isinstance(result, IngestedImage) and result.modality == "OT"
    assert "Modality 'OT'" in caplog.text

    ds = pydicom.dcmread(corpus[REFERENCE_CASE].path)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    result = ingest_dataset(ds, source="secondary-capture")
    assert isinstance(result, Rejected) and result.reason == "not a CR/DX image (SOP Class Secondary Capture Image Storage)"


def test_iter_dicom_paths(tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    keep = [tmp_path / "IM0001", nested / "x.dcm", nested / "y.bin"]
    for path in keep:
        path.write_bytes(b"x")
    for skipped in ("preview.png", "meta.json", ".DS_Store", "DICOMDIR"):
        (tmp_path / skipped).write_bytes(b"x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "IM0002").write_bytes(b"x")
    explicit = tmp_path / "preview.png"
    assert list(iter_dicom_paths([tmp_path])) == keep
    assert list(iter_dicom_paths([explicit])) == [explicit]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list(iter_dicom_paths([tmp_path / "nowhere"]))
    results = ingest_paths([tmp_path])
    assert [r.reason for r in results if isinstance(r, Rejected)] == ["not a DICOM file"] * 3


def test_logs_never_name_the_patient(
    corpus: Corpus, corpus_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        results = ingest_paths([corpus_dir])
    assert sum(isinstance(r, Rejected) for r in results) == len(MALFORMED_CASES)
    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "rejected SOPInstanceUID" in text  # the rejections were logged at all
    for identifier in PATIENT_IDENTIFIERS:
        assert identifier not in text, f"log names the patient: {identifier!r}"
    for result in results:
        if isinstance(result, Rejected):
            assert not any(identifier in result.reason for identifier in PATIENT_IDENTIFIERS)


def test_cli_reports_per_study(corpus: Corpus, corpus_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ingest.main(ingest.get_args_parser().parse_args([str(corpus_dir)]))
    out = capsys.readouterr().out
    study = corpus[REFERENCE_CASE].study_instance_uid
    analysable = sum(c.expect_analysable for c in corpus.values() if c.study_instance_uid == study)
    assert f"study {study}: {analysable} of " in out
    assert "rejected garbage.dcm: not a DICOM file" in out
    assert not any(identifier in out for identifier in PATIENT_IDENTIFIERS)


def _variant(corpus: Corpus, **attributes: object) -> pydicom.Dataset:
    """The reference image with ``attributes`` set (None: deleted)."""
    ds = pydicom.dcmread(corpus[REFERENCE_CASE].path)
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if "SOPClassUID" in attributes:
        if attributes["SOPClassUID"] is None:
            del ds.file_meta.MediaStorageSOPClassUID
        else:
            ds.file_meta.MediaStorageSOPClassUID = attributes["SOPClassUID"]
    return ds


def _as_file(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        # The SOP class governs: a DX Secondary Capture is refused for being a Secondary Capture.
        ({"SOPClassUID": SecondaryCaptureImageStorage, "Modality": "DX"}, "not a CR/DX image (SOP Class Secondary Capture Image Storage)"),
        ({"SOPClassUID": SecondaryCaptureImageStorage, "Modality": "CR"}, "not a CR/DX image (SOP Class Secondary Capture Image Storage)"),
        ({"SOPClassUID": CTImageStorage, "Modality": "CT"}, "not a CR/DX image (SOP Class CT Image Storage)"),
        ({"SOPClassUID": CTImageStorage, "Modality": "DX"}, "not a CR/DX image (SOP Class CT Image Storage)"),
        ({"SOPClassUID": GrayscaleSoftcopyPresentationStateStorage, "Modality": "DX"}, "not an image for analysis (SOP Class Grayscale Softcopy Presentation State Storage)"),
        ({"SOPClassUID": None, "Modality": "CT"}, "not a CR/DX image (Modality CT, no SOP Class)"),
        ({"SOPClassUID": None, "Modality": "SR"}, "not an image for analysis (Modality SR, no SOP Class)"),
        ({"Rows": 0}, "invalid image size (Rows 0)"),
        ({"Columns": None}, "missing Columns"),
        ({"BitsAllocated": 8, "BitsStored": 12}, "invalid bit depth (BitsStored 12 exceeds BitsAllocated 8)"),
        ({"BitsStored": 6}, "unsupported bit depth (BitsStored 6, at least 8 needed)"),
        ({"PhotometricInterpretation": "YBR_FULL"}, "colour image (PhotometricInterpretation YBR_FULL)"),
        ({"RescaleSlope": "inf", "RescaleIntercept": "0"}, "unusable grey-level transform: RescaleSlope inf"),
        ({"RescaleSlope": "1e999", "RescaleIntercept": "0"}, "unusable grey-level transform: RescaleSlope inf"),
        ({"RescaleSlope": "NaN", "RescaleIntercept": "0"}, "unusable grey-level transform: RescaleSlope nan"),
        ({"RescaleSlope": "0", "RescaleIntercept": "0"}, "unusable grey-level transform: RescaleSlope 0"),
        ({"RescaleSlope": "1", "RescaleIntercept": "-inf"}, "unusable grey-level transform: RescaleIntercept -inf"),
        ({"WindowCenter": "2048", "WindowWidth": "inf"}, "unusable grey-level transform: WindowWidth inf"),
        ({"SOPInstanceUID": "1.2.03.4"}, "invalid SOPInstanceUID (component 3 has a leading zero (03))"),
        ({"StudyInstanceUID": "1.2.3.04"}, "invalid StudyInstanceUID (component 4 has a leading zero (04))"),
        ({"SeriesInstanceUID": "1.2..4"}, "invalid SeriesInstanceUID (component 3 is empty)"),
    ],
)
def test_rejection_reason_names_what_is_wrong(corpus: Corpus, attributes: dict[str, object], reason: str) -> None:
    ds = _variant(corpus, **attributes)
    result = ingest_dataset(ds, source="variant")
    assert isinstance(result, Rejected), f"{attributes} was accepted"
    assert result.reason == reason
    # The same through a file (which needs Rows, Columns and a SOP class to be written).
    if not {"Rows", "Columns"} & set(attributes) and attributes.get("SOPClassUID", "") is not None:
        from_file = ingest_bytes(_as_file(ds), source="variant.dcm")
        assert isinstance(from_file, Rejected) and from_file.reason == reason


def test_a_rejection_never_carries_an_invalid_uid(corpus: Corpus) -> None:
    """An invalid StudyInstanceUID attributes the instance to no study; an invalid
    SOPInstanceUID leaves it to be reported by its source label."""
    study = ingest_dataset(_variant(corpus, StudyInstanceUID="1.2.03.4"), source="bad-study.dcm")
    assert isinstance(study, Rejected) and study.study_instance_uid is None and study.sop_instance_uid is not None
    assert list(group_by_study([study])) == [NO_STUDY_KEY]
    sop = ingest_dataset(_variant(corpus, SOPInstanceUID="1.2.03.4"), source="bad-sop.dcm")
    assert isinstance(sop, Rejected) and sop.sop_instance_uid is None and sop.study_instance_uid == corpus[REFERENCE_CASE].study_instance_uid


def test_modality_lut_sequence_replaces_an_unusable_rescale(corpus: Corpus) -> None:
    ds = pydicom.dcmread(corpus["modality_lut_sequence"].path)
    ds.RescaleSlope, ds.RescaleIntercept = "0", "0"  # ignored: the Modality LUT Sequence applies
    assert isinstance(ingest_dataset(ds, source="lut"), IngestedImage)


def test_short_pixel_data_and_truncated_file_are_told_apart(corpus: Corpus) -> None:
    ds = _variant(corpus)
    expected = len(ds.PixelData)
    ds.PixelData = ds.PixelData[:1000]
    short = ingest_bytes(_as_file(ds), source="short.dcm")
    columns, rows = int(ds.Columns), int(ds.Rows)
    assert isinstance(short, Rejected)
    assert short.reason == f"short pixel data (1000 of {expected} bytes for {columns} x {rows} pixels)"
    full = corpus[REFERENCE_CASE].path.read_bytes()
    cut = ingest_bytes(full[:-1000], source="cut.dcm")
    assert isinstance(cut, Rejected) and cut.reason == f"truncated file (pixel data {expected - 1000} of {expected} bytes)"


def test_float_pixel_data_and_blank_images(corpus: Corpus) -> None:
    ds = _variant(corpus, PixelData=None)
    ds.FloatPixelData = np.zeros(16, dtype=np.float32).tobytes()
    result = ingest_dataset(ds, source="float")
    assert isinstance(result, Rejected) and result.reason == "unsupported float pixel data (FloatPixelData)"
    ds = _variant(corpus)
    ds.PixelData = np.full((int(ds.Rows), int(ds.Columns)), 1234, dtype=np.uint16).tobytes()
    blank = ingest_dataset(ds, source="blank")
    assert isinstance(blank, Rejected) and blank.reason == "blank image (every pixel displays the same grey level)"
