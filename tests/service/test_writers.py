"""DICOM writers: SR / GSPS / SEG / SC from a hand-built StudyResult over small synthetic CRs.

Every output is written to disk, read back with pydicom and highdicom and compared with what
went in; dicom3tools ``dciodvfy`` must report no errors, dcmtk ``dsrdump`` must read the SR and
``dcmpschk`` must pass the GSPS (tests needing a tool skip when it is not installed).
"""

from __future__ import annotations

import copy
import datetime
import dataclasses
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from cxr_models.imaging import display_array
from cxr_models.records import Box
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

from cxr_service import codes
from cxr_service.results import REASON_LATERAL, AlgorithmInfo, ImageResult, Opacity, StudyResult, to_result_json
from cxr_service.uids import KIND_GSPS, KIND_SC, KIND_SEG, KIND_SR, derive_uid, patient_scope, series_uid
from cxr_service.writers import write_all, write_gsps, write_sc, write_seg, write_sr
from cxr_service.writers.common import finalize, rectangle
from cxr_service.writers.sources import writable_source
from cxr_service.writers.sc import output_shape, render

STUDY_UID = "1.2.826.0.1.3680043.8.498.77001"
MODEL_VERSION = "0.1.0-demo"
PA_UID, AP_UID, LAT_UID = (f"1.2.826.0.1.3680043.8.498.7700{i}1" for i in (2, 3, 4))
PA_SHAPE, AP_SHAPE, LAT_SHAPE = (200, 160), (180, 150), (190, 170)
PA_OPACITIES = (Opacity(Box(30.0, 60.0, 70.0, 100.0), 0.8734), Opacity(Box(90.5, 70.25, 130.0, 120.0), 0.4211))
AP_OPACITIES = (Opacity(Box(0.0, 5.0, 40.0, 50.0), 0.61),)
STUDY_PROBABILITIES = {"negative": 0.1, "typical": 0.7, "indeterminate": 0.15, "atypical": 0.05}
PA_OOD_SCORE = 0.812345  # the AP image has none (weights without an OOD model)


def make_cr(*, sop_uid: str, photometric: str, shape: tuple[int, int], view: str, seed: int) -> Dataset:
    """A small 12-bit CR with window, imager pixel spacing and the usual patient/study attributes."""
    rows, columns = shape
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = sop_uid.rsplit(".", 1)[0] + ".9" + sop_uid.rsplit(".", 1)[1]
    ds.PatientName = "Phantom^Chest"
    ds.PatientID = "CXR0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC0001"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = "CR"
    ds.Manufacturer = "Phantom Imaging"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.PatientOrientation = ["L", "F"] if view != "LL" else ["A", "F"]
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4000
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.PixelData = np.random.default_rng(seed).integers(0, 4096, size=shape, dtype=np.uint16).tobytes()
    return ds


def box_mask(shape: tuple[int, int], box: Box) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[int(box.y0) : int(box.y1), int(box.x0) : int(box.x1)] = True
    return mask


def make_result(*, demo_weights: bool = True, model_version: str = MODEL_VERSION) -> StudyResult:
    algorithm = AlgorithmInfo(
        name="cxr",
        version=model_version,
        model_uids={"view": "2.25.11", "lungs": "2.25.12", "detector": "2.25.13", "study": "2.25.14"},
        demo_weights=demo_weights,
    )
    pa_lungs = Box(20.0, 40.0, 140.0, 170.0)
    pa = ImageResult(
        sop_instance_uid=PA_UID,
        series_instance_uid="1.2.3.1",
        sop_class_uid=ComputedRadiographyImageStorage,
        view="frontal",
        view_probabilities={"frontal": 0.97, "lateral": 0.02, "other": 0.01},
        analysed=True,
        reason=None,
        ood_score=PA_OOD_SCORE,
        lung_box=pa_lungs,
        crop_fallback=False,
        opacities=PA_OPACITIES,
        opacity_percent=12.3456,
        lung_mask=box_mask(PA_SHAPE, pa_lungs),
        opacity_mask=box_mask(PA_SHAPE, Box(30.0, 60.0, 70.0, 100.0)),
    )
    ap = ImageResult(
        sop_instance_uid=AP_UID,
        series_instance_uid="1.2.3.2",
        sop_class_uid=ComputedRadiographyImageStorage,
        view="frontal",
        view_probabilities={"frontal": 0.9, "lateral": 0.05, "other": 0.05},
        analysed=True,
        lung_box=None,
        crop_fallback=True,
        opacities=AP_OPACITIES,
        opacity_percent=0.0,
        lung_mask=box_mask(AP_SHAPE, Box(10.0, 20.0, 140.0, 170.0)),
        opacity_mask=np.zeros(AP_SHAPE, dtype=bool),
    )
    lateral = ImageResult(
        sop_instance_uid=LAT_UID,
        series_instance_uid="1.2.3.3",
        sop_class_uid=ComputedRadiographyImageStorage,
        view="lateral",
        view_probabilities={"frontal": 0.1, "lateral": 0.88, "other": 0.02},
        analysed=False,
        reason=REASON_LATERAL,
        ood_score=6.54321,
    )
    return StudyResult(
        study_instance_uid=STUDY_UID,
        algorithm=algorithm,
        study_label="typical",
        study_probabilities=STUDY_PROBABILITIES,
        images=(pa, ap, lateral),
        timings_ms={"total": 1234.5678, "detector": 10.04},
    )


@pytest.fixture(scope="module")
def full_sources() -> dict[str, Dataset]:
    images = (
        make_cr(sop_uid=PA_UID, photometric="MONOCHROME2", shape=PA_SHAPE, view="PA", seed=0),
        make_cr(sop_uid=AP_UID, photometric="MONOCHROME1", shape=AP_SHAPE, view="AP", seed=1),
        make_cr(sop_uid=LAT_UID, photometric="MONOCHROME2", shape=LAT_SHAPE, view="LL", seed=2),
    )
    return {ds.SOPInstanceUID: ds for ds in images}


@pytest.fixture(scope="module")
def headers(full_sources: dict[str, Dataset]) -> dict[str, Dataset]:
    """Source headers as the service keeps them: no pixel data."""
    out = {}
    for uid, ds in full_sources.items():
        header = Dataset({tag: element for tag, element in ds.items() if element.keyword != "PixelData"})
        header.file_meta = ds.file_meta
        out[uid] = header
    return out


@pytest.fixture(scope="module")
def displays(full_sources: dict[str, Dataset]) -> dict[str, np.ndarray]:
    return {uid: display_array(ds) for uid, ds in full_sources.items()}


@pytest.fixture(scope="module")
def result() -> StudyResult:
    return make_result()


@pytest.fixture(scope="module")
def written(result, headers, displays, tmp_path_factory) -> dict[str, list[Path]]:
    """Every output written once to disk: kind → file paths."""
    folder = tmp_path_factory.mktemp("outputs")
    paths: dict[str, list[Path]] = {}
    for kind, datasets in write_all(result, headers, displays).datasets.items():
        for index, ds in enumerate(datasets):
            path = folder / f"{kind}{index}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.setdefault(kind, []).append(path)
    return paths


def all_paths(written: dict[str, list[Path]]) -> Iterator[Path]:
    for paths in written.values():
        yield from paths


def iter_items(ds: Dataset) -> Iterator[Dataset]:
    """``ds`` and every nested sequence item."""
    yield ds
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                yield from iter_items(item)


def code_of(item: Dataset, keyword: str = "ConceptNameCodeSequence") -> tuple[str, str]:
    code = item[keyword][0]
    return code.CodeValue, code.CodingSchemeDesignator


def children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence", []))


def find_child(item: Dataset, code) -> Dataset:
    matches = [c for c in children(item) if code_of(c) == (code.value, code.scheme_designator)]
    assert len(matches) == 1, f"expected one {code.meaning} under {code_of(item)}, got {len(matches)}"
    return matches[0]


def file_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def run_tool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which(args[0]) is None:
        pytest.skip(f"{args[0]} is not installed")
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


# --- result document and UIDs -------------------------------------------------------------------


def test_result_json_document_is_rounded_and_stable(result):
    outputs = {"sr": ["2.25.1"], "gsps": []}
    doc = to_result_json(result, outputs=outputs)
    assert list(doc) == ["study_instance_uid", "model_version", "study", "images", "outputs", "timings_ms", "triage"]
    assert doc["triage"] is None  # set by the pipeline (cxr_service.triage)
    assert doc["model_version"] == MODEL_VERSION
    assert doc["study"] == {"label": "typical", "probabilities": STUDY_PROBABILITIES}
    pa, ap, lateral = doc["images"]
    assert pa["opacities"] == [
        {"box": [30.0, 60.0, 70.0, 100.0], "score": 0.8734},
        {"box": [90.5, 70.2, 130.0, 120.0], "score": 0.4211},
    ]
    assert pa["lung_box"] == [20.0, 40.0, 140.0, 170.0] and pa["opacity_percent"] == 12.35
    assert ap["lung_box"] is None and ap["analysed"] is True and ap["reason"] is None
    assert pa["ood_score"] == 0.8123 and ap["ood_score"] is None
    assert list(pa) == [
        "sop_instance_uid", "view", "view_probabilities", "analysed", "reason", "ood_score", "lung_box", "opacities",
        "opacity_percent",
    ]  # fmt: skip
    assert lateral == {
        "sop_instance_uid": LAT_UID,
        "view": "lateral",
        "view_probabilities": {"frontal": 0.1, "lateral": 0.88, "other": 0.02},
        "analysed": False,
        "reason": "lateral view",
        "ood_score": 6.5432,
        "lung_box": None,
        "opacities": [],
        "opacity_percent": None,
    }
    assert doc["outputs"] == outputs and doc["timings_ms"] == {"total": 1234.6, "detector": 10.0}
    again = to_result_json(make_result(), outputs=outputs)
    assert json.dumps(doc, sort_keys=True) == json.dumps(again, sort_keys=True)


def test_result_rejects_inconsistent_images():
    with pytest.raises(ValueError, match="reason"):
        ImageResult(LAT_UID, "1.2", ComputedRadiographyImageStorage, "lateral", {}, analysed=False)
    with pytest.raises(ValueError, match="view"):
        ImageResult(LAT_UID, "1.2", ComputedRadiographyImageStorage, "oblique", {}, analysed=True)
    with pytest.raises(ValueError, match="score"):
        Opacity(Box(0, 0, 1, 1), 1.5)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ood_score"):
            ImageResult(LAT_UID, "1.2", ComputedRadiographyImageStorage, "lateral", {}, analysed=False, reason="x", ood_score=bad)


def test_derived_uids_are_deterministic_valid_and_distinct():
    uid = derive_uid(source_uid=PA_UID, model_version=MODEL_VERSION, kind="x")
    assert uid == derive_uid(source_uid=PA_UID, model_version=MODEL_VERSION, kind="x")
    assert uid.startswith("2.25.") and UID(uid).is_valid
    others = {
        derive_uid(source_uid=PA_UID, model_version=MODEL_VERSION, kind="x", index=1),
        derive_uid(source_uid=PA_UID, model_version=MODEL_VERSION, kind="y"),
        derive_uid(source_uid=PA_UID, model_version="0.2.0", kind="x"),
        derive_uid(source_uid=AP_UID, model_version=MODEL_VERSION, kind="x"),
    }
    assert uid not in others and len(others) == 4
    with pytest.raises(ValueError, match="index"):
        derive_uid(source_uid=PA_UID, model_version=MODEL_VERSION, kind="x", index=-1)


# --- SR ------------------------------------------------------------------------------------------


def test_sr_round_trip_content(written, result):
    ds = pydicom.dcmread(written[KIND_SR][0])
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    assert isinstance(hd.sr.srread(written[KIND_SR][0]), hd.sr.Comprehensive3DSR)
    assert ds.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage and ds.Modality == "SR"
    assert ds.StudyInstanceUID == STUDY_UID and ds.PatientID == "CXR0001"
    assert ds.SeriesDescription.startswith("CXR AI SR") and "DEMO" in ds.SeriesDescription
    assert ds.InstanceCreationDate == "20240102" and ds.ContentTime == "101500"

    groups = sr.content.get_planar_roi_measurement_groups()
    opacity_groups = [g for g in groups if g.finding_type == hd.sr.CodedConcept.from_code(codes.OPACITY)]
    lung_groups = [g for g in groups if g.finding_type == hd.sr.CodedConcept.from_code(codes.LUNG)]
    assert len(opacity_groups) == len(PA_OPACITIES) + len(AP_OPACITIES) and len(lung_groups) == 2

    expected = [(PA_UID, o) for o in PA_OPACITIES] + [(AP_UID, o) for o in AP_OPACITIES]
    for group, (uid, opacity) in zip(opacity_groups, expected):
        roi = group.roi
        assert roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        points = np.asarray(roi.value)
        assert points.shape == (5, 2) and np.array_equal(points[0], points[-1])
        np.testing.assert_allclose(points, rectangle(opacity.box))
        assert roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uid
        (certainty,) = group.get_measurements(name=codes.CERTAINTY_OF_FINDING)
        assert certainty.value == pytest.approx(opacity.score) and certainty.unit.value == "1"

    pa_lungs, ap_lungs = lung_groups
    np.testing.assert_allclose(np.asarray(pa_lungs.roi.value), rectangle(Box(20.0, 40.0, 140.0, 170.0)))
    # crop fallback: the lung region is the whole AP image
    np.testing.assert_allclose(np.asarray(ap_lungs.roi.value), rectangle(Box(0.0, 0.0, 150.0, 180.0)))
    (percent,) = pa_lungs.get_measurements(name=codes.OPACITY_PERCENT_OF_LUNG)
    assert percent.value == pytest.approx(12.3456) and percent.unit.value == "%"
    (view,) = pa_lungs.get_qualitative_evaluations(name=codes.IMAGE_VIEW)
    assert view.value == hd.sr.CodedConcept.from_code(codes.FRONTAL_VIEW)
    (frontal,) = pa_lungs.get_measurements(name=codes.FRONTAL_VIEW)
    assert frontal.value == pytest.approx(0.97)
    (ood,) = pa_lungs.get_measurements(name=codes.OOD_SCORE)
    assert ood.value == pytest.approx(PA_OOD_SCORE) and ood.unit.value == "1" and ood.unit.scheme_designator == "UCUM"
    assert codes.OOD_SCORE.scheme_designator == "99CXR" and codes.OOD_SCORE.meaning == "Out-of-distribution score"
    assert ap_lungs.get_measurements(name=codes.OOD_SCORE) == []  # no score computed, no item

    root = ds.ContentSequence
    (derived,) = [c for c in root if code_of(c) == ("126011", "DCM")]
    study_group = find_child(derived, codes.MEASUREMENT_GROUP)
    appearance = find_child(study_group, codes.COVID_APPEARANCE)
    assert code_of(appearance, "ConceptCodeSequence") == ("CXR003", "99CXR")
    for label, code in codes.STUDY_LABEL_CODES.items():
        value = find_child(study_group, code).MeasuredValueSequence[0].NumericValue
        assert float(value) == pytest.approx(STUDY_PROBABILITIES[label])
    images = [c for c in children(study_group) if c.ValueType == "IMAGE"]
    sources = {c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for c in images}
    assert sources == {PA_UID, AP_UID}

    (evaluations,) = [c for c in root if code_of(c) == ("C0034375", "UMLS")]
    not_analysed = [c for c in children(evaluations) if code_of(c) == ("CXR009", "99CXR")]
    reasons = [
        (text.TextValue, text.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for text in not_analysed
    ]
    assert reasons == [("lateral view", LAT_UID)]
    demo = [c for c in children(evaluations) if code_of(c) == ("CXR010", "99CXR")]
    assert len(demo) == 1 and "NOT FOR CLINICAL USE" in demo[0].TextValue

    device = sr.content.get_observer_contexts(observer_type=pydicom.sr.codedict.codes.DCM.Device)
    assert len(device) == 1 and device[0].observer_identifying_attributes.name == "cxr"


def test_sr_matches_what_ohif_dicom_sr_parses(written):
    """OHIF reads the Image Library and the Imaging Measurements; every group there must be a
    planar ROI with Tracking Identifier, Tracking UID and a referenced SCOORD, else it throws."""
    ds = pydicom.dcmread(written[KIND_SR][0])
    assert code_of(ds) == ("126000", "DCM") and ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    root = ds.ContentSequence
    library = [c for c in root if code_of(c) == ("111028", "DCM")]
    assert len(library) == 1
    (measurements,) = [c for c in root if code_of(c) == ("126010", "DCM")]
    groups = children(measurements)
    assert len(groups) == 5
    for group in groups:
        assert code_of(group) == ("125007", "DCM")
        items = children(group)
        assert [c.TextValue for c in items if code_of(c) == ("112039", "DCM")]
        assert [c.UID for c in items if code_of(c) == ("112040", "DCM") and c.ValueType == "UIDREF"]
        scoords = [c for c in items if c.ValueType == "SCOORD"]
        assert len(scoords) == 1 and scoords[0].GraphicType == "POLYLINE"
        data = np.asarray(scoords[0].GraphicData, dtype=float).reshape(-1, 2)
        assert data.shape == (5, 2) and np.array_equal(data[0], data[-1])
        assert scoords[0].ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID in (PA_UID, AP_UID)
        # NUMs without a ContentSequence are only safe next to a SCOORD (TID 1410 path in OHIF)
        assert all(c.ValueType != "NUM" or scoords for c in items)


def test_sr_tools_accept_it(written):
    sr_path = written[KIND_SR][0]
    dump = run_tool("dsrdump", str(sr_path))
    assert dump.returncode == 0, dump.stderr
    assert "Imaging Measurement Report" in dump.stdout and "Not analysed" in dump.stdout


# --- GSPS ----------------------------------------------------------------------------------------


def test_gsps_round_trip(written, result, headers):
    paths = written[KIND_GSPS]
    assert len(paths) == 2
    for path, image in zip(paths, result.analysed_images):
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == pydicom.uid.GrayscaleSoftcopyPresentationStateStorage
        source = headers[image.sop_instance_uid]
        (series,) = ds.ReferencedSeriesSequence
        assert series.ReferencedImageSequence[0].ReferencedSOPInstanceUID == image.sop_instance_uid
        expected_shape = "INVERSE" if source.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
        assert ds.PresentationLUTShape == expected_shape
        (voi,) = ds.SoftcopyVOILUTSequence
        assert float(voi.WindowCenter) == 2048.0 and float(voi.WindowWidth) == 4000.0
        assert ds.BodyPartExamined == "CHEST" and ds.GraphicLayerSequence[0].GraphicLayer == "CXR_AI"
        (annotation,) = ds.GraphicAnnotationSequence
        assert annotation.GraphicLayer == "CXR_AI"
        graphics = list(annotation.get("GraphicObjectSequence", []))
        assert len(graphics) == len(image.opacities)
        for graphic, opacity in zip(graphics, image.opacities):
            assert graphic.GraphicType == "POLYLINE" and graphic.GraphicAnnotationUnits == "PIXEL"
            assert graphic.NumberOfGraphicPoints == 5
            points = np.asarray(graphic.GraphicData, dtype=float).reshape(5, 2)
            np.testing.assert_allclose(points, rectangle(opacity.box))
        texts = [t.UnformattedTextValue for t in annotation.TextObjectSequence]
        assert texts[0].startswith("AI RESULT - NOT FOR DIAGNOSIS: typical")
        assert texts[1:] == [f"opacity {o.score:.2f}" for o in image.opacities]
    mono1 = pydicom.dcmread(paths[1])
    assert headers[AP_UID].PhotometricInterpretation == "MONOCHROME1" and mono1.PresentationLUTShape == "INVERSE"


def test_gsps_passes_dcmpschk(written):
    for path in written[KIND_GSPS]:
        check = run_tool("dcmpschk", str(path))
        assert check.returncode == 0 and "Test passed" in check.stdout + check.stderr, check.stdout + check.stderr


# --- SEG -----------------------------------------------------------------------------------------


def read_seg(path: Path) -> hd.seg.Segmentation:
    """highdicom 0.28's reader requires Slice Thickness beside Pixel Spacing in Pixel Measures,
    which DICOM does not for a SEG without a frame of reference (CP 1426): a projection image
    has no slice thickness. Checked here, then given one for the reader."""
    ds = pydicom.dcmread(path)
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert "SliceThickness" not in measures and "FrameOfReferenceUID" not in ds
    measures.SliceThickness = 1
    return hd.seg.Segmentation.from_dataset(ds)


def test_seg_round_trip(written, result):
    paths = written[KIND_SEG]
    assert len(paths) == 2
    for path, image in zip(paths, result.analysed_images):
        seg = read_seg(path)
        assert seg.SegmentationType == "BINARY" and seg.number_of_segments == 2
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[image.sop_instance_uid], combine_segments=False
        )
        assert pixels.shape == (1, *image.lung_mask.shape, 2)
        assert np.array_equal(pixels[0, ..., 0].astype(bool), image.lung_mask)
        assert np.array_equal(pixels[0, ..., 1].astype(bool), image.opacity_mask)
        lungs, opacity = seg.get_segment_description(1), seg.get_segment_description(2)
        assert lungs.segmented_property_type == hd.sr.CodedConcept.from_code(codes.LUNG)
        assert opacity.segmented_property_type == hd.sr.CodedConcept.from_code(codes.OPACITY)
        assert lungs.algorithm_identification[0].AlgorithmName == "cxr"
        assert lungs.algorithm_identification[0].AlgorithmVersion == MODEL_VERSION
        assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == image.sop_instance_uid
        # OHIF 3.13 opens a SEG only with a Pixel Measures item: the source's Imager Pixel Spacing.
        measures = pydicom.dcmread(path).SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        assert [float(v) for v in measures.PixelSpacing] == [0.2, 0.2]


# --- SC ------------------------------------------------------------------------------------------


def test_sc_is_capped_rgb_with_burned_in_results(written, result, displays):
    paths = written[KIND_SC]
    assert len(paths) == 2
    ds = pydicom.dcmread(paths[0])
    assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3 and ds.BurnedInAnnotation == "YES"
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == PA_UID and "demo weights" in ds.ImageComments
    pixels = ds.pixel_array
    assert pixels.shape == (*PA_SHAPE, 3)
    # the opacity box outline is red where the grey display has equal channels
    box = PA_OPACITIES[0].box
    assert tuple(pixels[int(box.y0) + 10, int(box.x0)]) == (255, 64, 64)
    assert tuple(pixels[150, int(box.x1) + 30]) != (255, 64, 64)
    # lung outline in green, banner text in yellow at the top left
    assert tuple(pixels[120, 20]) == (64, 224, 64)
    assert np.any(np.all(pixels[:40, :100] == (255, 255, 0), axis=-1))

    pa = result.analysed_images[0]
    small = render(pa, displays[PA_UID], result=result, max_side=64)
    assert small.shape == (64, 51, 3) and output_shape(3000, 2500, max_side=2048) == (2048, 1707)
    assert output_shape(100, 80, max_side=2048) == (100, 80)


def test_sc_pixel_data_is_the_rendered_image(result, headers, displays):
    """The SC is built on a one-pixel placeholder and given the canvas's Rows, Columns and bytes
    afterwards: the same dataset as highdicom builds from the whole rendered array."""
    pa = result.analysed_images[0]
    sc = write_sc(result, headers, displays)[0]
    pixels = render(pa, displays[PA_UID], result=result)
    assert (sc.Rows, sc.Columns) == pixels.shape[:2] and sc.PixelData == pixels.tobytes()

    def build(array: np.ndarray) -> hd.sc.SCImage:
        return hd.sc.SCImage.from_ref_dataset(
            ref_dataset=headers[PA_UID],
            pixel_array=array,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid="1.2.3.4.5",
            series_number=1,
            sop_instance_uid="1.2.3.4.6",
            instance_number=1,
            manufacturer="cxr",
            patient_orientation=("L", "F"),
            content_date=datetime.date(2030, 1, 2),
            content_time=datetime.time(3, 4, 5),
        )

    whole = build(pixels)
    placeholder = build(np.zeros((1, 1, 3), dtype=np.uint8))
    placeholder.Rows, placeholder.Columns = pixels.shape[:2]
    placeholder.PixelData = pixels.tobytes()
    for ds in (whole, placeholder):  # highdicom stamps its clock's time
        finalize(ds, created=datetime.datetime(2030, 1, 2, 3, 4, 5))
    assert file_bytes(placeholder) == file_bytes(whole)


# --- every output --------------------------------------------------------------------------------


def test_dciodvfy_reports_no_errors(written):
    for path in all_paths(written):
        check = run_tool("dciodvfy", str(path))
        errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"


def test_outputs_are_deterministic(result, headers, displays):
    first = write_all(result, headers, displays).datasets
    second = write_all(make_result(), headers, displays).datasets
    for kind in (KIND_SR, KIND_GSPS, KIND_SEG, KIND_SC):
        assert len(first[kind]) == len(second[kind]) > 0
        for a, b in zip(first[kind], second[kind]):
            assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
            assert file_bytes(a) == file_bytes(b), kind
        with patient_scope("CXR0001"):  # output UIDs are derived for the study's patient too
            expected = series_uid(study_uid=STUDY_UID, model_version=MODEL_VERSION, kind=kind)
        assert {ds.SeriesInstanceUID for ds in first[kind]} == {expected}
    uids = [ds.SOPInstanceUID for datasets in first.values() for ds in datasets]
    assert len(set(uids)) == len(uids)
    newer = write_sr(make_result(model_version="0.2.0"), headers)
    assert newer.SOPInstanceUID != first[KIND_SR][0].SOPInstanceUID
    assert newer.SeriesInstanceUID != first[KIND_SR][0].SeriesInstanceUID


def test_outputs_written_later_leave_earlier_ones_as_they_were(result, headers, displays):
    """Contributing equipment, algorithm identification and observation context are shared by
    every output of an algorithm (built once): writing more outputs, with other algorithms and
    creation times too, changes none of the bytes of those written before."""
    first = write_all(result, headers, displays).datasets
    before = {kind: [file_bytes(ds) for ds in datasets] for kind, datasets in first.items()}
    write_all(make_result(), headers, displays)
    write_all(make_result(), headers, displays, created=datetime.datetime(2031, 5, 6, 7, 8, 9))
    write_all(make_result(demo_weights=False), headers, displays)
    write_sr(make_result(model_version="0.2.0"), headers)
    assert {kind: [file_bytes(ds) for ds in datasets] for kind, datasets in first.items()} == before
    in_sr = {id(item) for item in first[KIND_SR][0].ContributingEquipmentSequence}
    assert any(id(item) in in_sr for ds in first[KIND_GSPS] for item in ds.ContributingEquipmentSequence)


def test_private_codes_are_declared(written):
    used_anywhere = False
    for path in all_paths(written):
        ds = pydicom.dcmread(path)
        designators = {item.CodingSchemeDesignator for item in iter_items(ds) if "CodingSchemeDesignator" in item}
        declared = {item.CodingSchemeDesignator: item for item in ds.get("CodingSchemeIdentificationSequence", [])}
        if codes.CXR_SCHEME_DESIGNATOR in designators:
            used_anywhere = True
            item = declared[codes.CXR_SCHEME_DESIGNATOR]
            assert item.CodingSchemeName and item.CodingSchemeResponsibleOrganization
        assert designators <= {"DCM", "SCT", "LN", "UCUM", "UMLS", "RFC5646", "99CXR"}, path.name
    assert used_anywhere


def test_algorithm_is_identified_as_contributing_equipment(written, result):
    for path in all_paths(written):
        ds = pydicom.dcmread(path)
        assert ds.Manufacturer == result.algorithm.manufacturer and ds.SeriesNumber and ds.InstanceNumber
        ours = [i for i in ds.ContributingEquipmentSequence if i.Manufacturer == result.algorithm.manufacturer]
        assert {i.DeviceSerialNumber for i in ours} >= set(result.algorithm.model_uids.values())
        algorithm_items = [i for i in ours if "DeviceUID" in i]
        assert len(algorithm_items) == 1 and algorithm_items[0].ManufacturerModelName == result.algorithm.name
        for item in ours:
            assert code_of(item, "PurposeOfReferenceCodeSequence") == ("109102", "DCM")
            assert item.SoftwareVersions == MODEL_VERSION and item.ManufacturerModelName.startswith("cxr")


def test_study_without_analysed_images(headers, tmp_path):
    """A lateral (header known) and a CT rejected at ingest (no header): only an SR is written,
    with a "Not analysed" entry referencing each."""
    lateral = make_result().images[2]
    rejected = ImageResult(
        sop_instance_uid="1.2.826.0.1.3680043.8.498.77009",
        series_instance_uid="1.2.826.0.1.3680043.8.498.77008",
        sop_class_uid=pydicom.uid.CTImageStorage,
        view=None,
        view_probabilities={},
        analysed=False,
        reason="SOP class CT Image Storage is not CR/DX",
    )
    only_lateral = StudyResult(
        study_instance_uid=STUDY_UID,
        algorithm=make_result(demo_weights=False).algorithm,
        study_label=None,
        study_probabilities=None,
        images=(lateral, rejected),
    )
    outputs = write_all(only_lateral, {LAT_UID: headers[LAT_UID]}, {}).datasets
    assert [len(outputs[k]) for k in (KIND_SR, KIND_GSPS, KIND_SEG, KIND_SC)] == [1, 0, 0, 0]
    sr = outputs[KIND_SR][0]
    assert sr.SeriesDescription == "CXR AI SR"
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    read_back = pydicom.dcmread(path)
    assert hd.sr.Comprehensive3DSR.from_dataset(read_back).content.get_planar_roi_measurement_groups() == []
    texts = [item.TextValue for item in iter_items(read_back) if item.get("ValueType") == "TEXT"]
    not_analysed = [
        item.TextValue
        for item in iter_items(read_back)
        if "ConceptNameCodeSequence" in item and code_of(item) == ("CXR009", "99CXR")
    ]
    assert not_analysed == ["lateral view", rejected.reason]
    assert not any("NOT FOR CLINICAL USE" in text for text in texts)
    references = {
        item.ValueType: item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in iter_items(read_back)
        if item.get("RelationshipType") == "INFERRED FROM"
    }
    assert references == {"IMAGE": LAT_UID, "COMPOSITE": rejected.sop_instance_uid}
    check = run_tool("dciodvfy", str(path))
    assert not [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]


def test_missing_source_header_is_named(result, headers):
    partial = {uid: ds for uid, ds in headers.items() if uid != AP_UID}
    with pytest.raises(ValueError, match=AP_UID):
        write_gsps(result, partial)
    with pytest.raises(ValueError, match="shape"):
        bad = make_result()
        wrong = {uid: np.zeros((10, 10), np.float32) for uid in (PA_UID, AP_UID)}
        write_sc(bad, headers, wrong)
    assert write_seg(result, headers)[0].SOPInstanceUID != write_seg(result, headers)[1].SOPInstanceUID


def test_dx_sources_with_sparse_headers_and_voi_lut(tmp_path):
    """DX sources without Body Part Examined, Patient Orientation or Accession Number, one with a
    12-bit VOI LUT (OW) instead of a window: outputs stay valid and keep the source VOI."""
    sources = {}
    for uid, photometric, shape, view, seed in (
        (PA_UID, "MONOCHROME2", PA_SHAPE, "PA", 0),
        (AP_UID, "MONOCHROME1", AP_SHAPE, "AP", 1),
        (LAT_UID, "MONOCHROME2", LAT_SHAPE, "LL", 2),
    ):
        ds = make_cr(sop_uid=uid, photometric=photometric, shape=shape, view=view, seed=seed)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
        ds.Modality = "DX"
        for keyword in ("BodyPartExamined", "PatientOrientation", "AccessionNumber", "ReferringPhysicianName"):
            delattr(ds, keyword)
        if uid == AP_UID:
            del ds.WindowCenter, ds.WindowWidth
            lut = Dataset()
            lut.LUTDescriptor = [4096, 0, 12]
            lut.add(DataElement(0x00283006, "OW", np.arange(4096, dtype="<u2").tobytes()))
            ds.VOILUTSequence = [lut]
        path = tmp_path / f"{uid}.dcm"
        ds.save_as(path, enforce_file_format=True)
        sources[uid] = pydicom.dcmread(path)
    displays = {uid: display_array(ds) for uid, ds in sources.items()}
    base = make_result()
    dx_images = tuple(
        dataclasses.replace(image, sop_class_uid=DigitalXRayImageStorageForPresentation) for image in base.images
    )
    result = dataclasses.replace(base, images=dx_images)
    before = {uid: copy.deepcopy(ds) for uid, ds in sources.items()}
    outputs = write_all(result, sources, displays).datasets
    assert sources == before  # the writers never modify the caller's datasets
    for kind, datasets in outputs.items():
        for index, ds in enumerate(datasets):
            path = tmp_path / f"{kind}{index}.dcm"
            ds.save_as(path, enforce_file_format=True)
            check = run_tool("dciodvfy", str(path))
            errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
            assert not errors, f"{kind}{index}: {errors}"
    gsps = outputs[KIND_GSPS][1]
    assert gsps.PresentationLUTShape == "INVERSE" and gsps.BodyPartExamined == "CHEST"
    (lut,) = gsps.SoftcopyVOILUTSequence[0].VOILUTSequence
    assert list(lut.LUTDescriptor) == [4096, 0, 16]
    data = np.frombuffer(lut.LUTData, dtype="<u2") if isinstance(lut.LUTData, bytes) else np.asarray(lut.LUTData)
    assert data[0] == 0 and data[-1] == 65535 and data[2048] == round(2048 * 65535 / 4095)
    assert outputs[KIND_SC][0].PatientOrientation in (None, "", [])


# --- source headers: repaired or left out, never copied invalid ------------------------------

# Every ISO 2022 character set of PS3.3 C.12.1.1.2 with a patient name in its script.
ISO_2022_NAMES = {
    "ISO 2022 IR 6": "Smith^John",
    "ISO 2022 IR 13": "ﾔﾏﾀﾞ^ﾀﾛｳ",
    "ISO 2022 IR 87": "Yamada^Tarou=山田^太郎=やまだ^たろう",
    "ISO 2022 IR 149": "Hong^Gildong=洪^吉洞=홍^길동",
    "ISO 2022 IR 58": "Zhang^XiaoDong=张^小东",
    "ISO 2022 IR 100": "Müller^Zoë",
    "ISO 2022 IR 101": "Dvořák^Antonín",
    "ISO 2022 IR 109": "Ġużeppi^Ħelu",
    "ISO 2022 IR 110": "Bērziņš^Jānis",
    "ISO 2022 IR 126": "Παπαδόπουλος^Γιώργος",
    "ISO 2022 IR 127": "قباني^نزار",
    "ISO 2022 IR 138": "שרון^דבורה",
    "ISO 2022 IR 144": "Иванов^Пётр",
    "ISO 2022 IR 148": "Öztürk^Şükrü",
    "ISO 2022 IR 166": "สมชาย^ใจดี",
}
# Multi-byte sets cannot be value 1 (they need the default repertoire as G0).
_MULTI_BYTE = ("ISO 2022 IR 87", "ISO 2022 IR 149", "ISO 2022 IR 58")


@pytest.mark.parametrize("empty_first", [False, True], ids=["first-value-given", "first-value-empty"])
@pytest.mark.parametrize("term", list(ISO_2022_NAMES))
def test_every_iso_2022_character_set_round_trips_through_every_output(term, empty_first, tmp_path):
    name = ISO_2022_NAMES[term]
    first = "" if empty_first else ("ISO 2022 IR 6" if term in _MULTI_BYTE else None)
    charset = [term] if first is None else [first, term]
    sources, displays = {}, {}
    for uid, photometric, shape, view, seed in (
        (PA_UID, "MONOCHROME2", PA_SHAPE, "PA", 0),
        (AP_UID, "MONOCHROME1", AP_SHAPE, "AP", 1),
        (LAT_UID, "MONOCHROME2", LAT_SHAPE, "LL", 2),
    ):
        ds = make_cr(sop_uid=uid, photometric=photometric, shape=shape, view=view, seed=seed)
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.ReferringPhysicianName = name
        path = tmp_path / f"source-{uid}.dcm"
        ds.save_as(path, enforce_file_format=True)
        sources[uid] = pydicom.dcmread(path)
        assert str(sources[uid].PatientName) == name, f"the source itself does not round-trip in {charset}"
        displays[uid] = display_array(sources[uid])
    outputs = write_all(make_result(), sources, displays)
    assert not outputs.problems
    kinds = {kind: len(datasets) for kind, datasets in outputs.datasets.items()}
    assert kinds == {KIND_SR: 1, KIND_GSPS: 2, KIND_SEG: 2, KIND_SC: 2}
    for kind, datasets in outputs.datasets.items():
        for index, ds in enumerate(datasets):
            path = tmp_path / f"{kind}{index}.dcm"
            ds.save_as(path, enforce_file_format=True)
            back = pydicom.dcmread(path)
            assert str(back.PatientName) == name and str(back.ReferringPhysicianName) == name, (kind, charset)
            assert back.get("SpecificCharacterSet") == ("ISO_IR 192" if not name.isascii() else None), (kind, charset)


def _header(**values) -> Dataset:
    ds = make_cr(sop_uid=PA_UID, photometric="MONOCHROME2", shape=PA_SHAPE, view="PA", seed=0)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    with _unvalidated():
        ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


class _unvalidated:
    """pydicom writes what a hospital's modality wrote."""

    def __enter__(self) -> None:
        self.previous = pydicom.config.settings.writing_validation_mode
        pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE

    def __exit__(self, *exc: object) -> None:
        pydicom.config.settings.writing_validation_mode = self.previous


@pytest.mark.parametrize(
    ("values", "expected", "action"),
    [
        ({"StudyDate": "2024-01-05"}, {"StudyDate": "20240105"}, "repaired"),
        ({"StudyTime": "10:15:00"}, {"StudyTime": "101500"}, "repaired"),
        ({"StudyDate": "20241399"}, {"StudyDate": None}, "left out"),
        ({"StudyTime": "256199"}, {"StudyTime": None}, "left out"),
        ({"PatientBirthDate": "1958"}, {"PatientBirthDate": None}, "left out"),
        ({"AccessionNumber": "A" * 20}, {"AccessionNumber": None}, "left out"),
        ({"StudyID": "S" * 17}, {"StudyID": None}, "left out"),
        ({"PatientName": "DOE, JOHN"}, {"PatientName": "DOE, JOHN^"}, "repaired"),
        ({"PatientName": "A^B^C^D^E^F"}, {"PatientName": None}, "left out"),
        ({"PatientName": "X" * 65 + "^Y"}, {"PatientName": None}, "left out"),
        ({"ReferringPhysicianName": "Dr. Who\\Dr. No"}, {"ReferringPhysicianName": None}, "left out"),
        ({"PatientSex": "female"}, {"PatientSex": None}, "left out"),
        ({"BodyPartExamined": "chest"}, {"BodyPartExamined": "CHEST"}, "repaired"),
        ({"PatientOrientation": "L"}, {"PatientOrientation": None}, "left out"),
        ({"ImagerPixelSpacing": [0, 0]}, {"ImagerPixelSpacing": None}, "left out"),
        ({"PixelSpacing": [-0.2, 0.2]}, {"PixelSpacing": None}, "left out"),
        ({"WindowWidth": 0}, {"WindowWidth": None, "WindowCenter": None}, "left out"),
        ({"WindowCenter": [100, 200], "WindowWidth": [0, 50]}, {"WindowWidth": "50", "WindowCenter": "200"}, "repaired"),
        ({"InstitutionName": "x" * 65}, {"InstitutionName": None}, "left out"),
    ],
)
def test_invalid_source_attributes_are_repaired_or_left_out(values, expected, action, caplog):
    checked = writable_source(_header(**values))
    for keyword, value in expected.items():
        got = checked.dataset.get(keyword)
        assert (None if got is None else str(got)) == value, (keyword, got)
    assert any(r.action == action for r in checked.repairs), checked.repairs
    for repair in checked.repairs:  # reasons never quote the value (it may identify the patient)
        for value in values.values():
            assert str(value) not in repair.reason


def test_identifying_uids_and_patient_id_are_copied_unchanged_with_a_warning():
    long_id = "P" * 70  # over LO's 64, but Orthanc files the outputs under PatientID + StudyInstanceUID
    checked = writable_source(_header(PatientID=long_id))
    assert checked.dataset.PatientID == long_id
    assert [(r.keyword, r.action) for r in checked.repairs] == [("PatientID", "copied unchanged")]
    assert checked.dataset.SOPInstanceUID == PA_UID


def test_a_clean_header_needs_no_repair_and_a_checked_one_stays_checked(headers):
    for ds in headers.values():
        assert writable_source(ds).repairs == ()
    dirty = writable_source(_header(StudyDate="2024-01-05", WindowWidth=0, PatientName="DOE, JOHN"))
    assert dirty.repairs and writable_source(dirty.dataset).repairs == ()


def test_one_image_that_cannot_be_written_leaves_the_others_outputs(result, headers, displays, monkeypatch):
    """A writer that raises on one image's GSPS: that GSPS is reported, everything else written."""
    import cxr_service.writers as writers

    real = writers.gsps_for_image

    def broken(result, image, sources, *, number, created):
        if image.sop_instance_uid == AP_UID:
            raise ValueError(f"unwritable header of {sources[image.sop_instance_uid].PatientName}")
        return real(result, image, sources, number=number, created=created)

    monkeypatch.setattr(writers, "gsps_for_image", broken)
    outputs = write_all(result, headers, displays)
    assert [len(outputs.datasets[k]) for k in (KIND_SR, KIND_GSPS, KIND_SEG, KIND_SC)] == [1, 1, 2, 2]
    (problem,) = outputs.problems
    assert (problem.kind, problem.sop_instance_uid) == (KIND_GSPS, AP_UID)
    assert "ValueError" in problem.reason and "Phantom" not in problem.reason  # the patient name is blanked out


def test_iso_2022_ir_58_escape_sequences_are_read_and_written():
    """pydicom 3.0 keeps the ESC $ ) A designation in decoded GB 2312 text (cxr_service.charsets)."""
    from pydicom.charset import convert_encodings
    from pydicom.valuerep import PersonName

    encoded = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab"  # PS3.5 Annex K.2, example 1
    encodings = convert_encodings(["", "ISO 2022 IR 58"])
    assert str(PersonName(encoded, encodings=encodings)) == "Zhang^XiaoDong=张^小东"
    assert PersonName("Zhang^XiaoDong=张^小东").encode(encodings) == encoded


def test_sc_lung_outline_is_the_mask_minus_its_double_scipy_erosion():
    """The SC's outline (array shifts on the mask packed eight columns to a byte) is scipy's two-pixel one,
    masks touching the image border and one-row masks included."""
    from scipy import ndimage

    from cxr_service.writers.sc import _outline

    rng = np.random.default_rng(7)
    for index in range(150):
        rows, columns = (int(v) for v in rng.integers(1, 40, 2))
        mask = ndimage.binary_dilation(rng.random((rows, columns)) > 0.8, iterations=int(rng.integers(0, 3)))
        if index % 5 == 0:
            mask[:] = True
        expected = mask & ~ndimage.binary_erosion(mask, iterations=2)
        assert np.array_equal(_outline(mask), expected), index


def test_memoized_iod_lookups_give_highdicoms_answers():
    """writers.common memoizes highdicom's is_attribute_in_iod (same answers, same errors)."""
    import highdicom._standard_utils as standard

    import cxr_service.writers.common  # noqa: F401 - installs the memoized lookup

    memoized = standard.is_attribute_in_iod
    assert getattr(memoized, "cxr_memoized", False)
    original = memoized.__wrapped__
    sop_classes = [
        pydicom.uid.ComputedRadiographyImageStorage,
        pydicom.uid.DigitalXRayImageStorageForPresentation,
        pydicom.uid.Comprehensive3DSRStorage,
        pydicom.uid.SegmentationStorage,
        pydicom.uid.SecondaryCaptureImageStorage,
        pydicom.uid.GrayscaleSoftcopyPresentationStateStorage,
    ]
    for sop_class in sop_classes:
        for attribute in ("PixelData", "NumberOfFrames", "ContentDate", "ContentTime", "FloatPixelData", "PatientName"):
            for exclude in (None, ["IconImageSequence"]):
                for _ in range(2):
                    assert memoized(attribute, sop_class, exclude_path_elements=exclude) == original(
                        attribute, sop_class, exclude_path_elements=exclude
                    )
    with pytest.raises(KeyError):
        memoized("PixelData", "1.2.3.4.5.6.7")
