"""Heatmaps: the heatmap SEGs and the SC colour layer (cxr_service.writers.heatmap), over the
small synthetic CRs of test_writers, and the whole path (models → result → files) on a
PhantomCXR study.

Every heatmap SEG is written to disk, read back with pydicom and highdicom, and checked against
the map that went in; dciodvfy must report no errors.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from cxr_service import codes
from cxr_service.engine import AnalysisEngine
from cxr_service.heatmaps import ATTRIBUTION, OPACITY, Heatmap, HeatmapOptions
from cxr_service.pipeline import Folder, InstanceSource, Requester, StudyRequest, ingest_instance, run_study
from cxr_service.results import StudyResult
from cxr_service.uids import KIND_GSPS, KIND_HEATMAP, KIND_SC, KIND_SEG, KIND_SR, derive_uid, instance_uid, patient_scope
from cxr_service.writers import write_all
from cxr_service.writers.heatmap import (
    BAND_COLOURS,
    BAND_EDGES,
    MAX_FRACTIONAL_VALUE,
    SC_LAYER_ALPHA,
    SERIES_NUMBERS,
    band_labels,
    colour_layer,
    heatmap_series_uid,
)
from tests.service.test_writers import (  # noqa: F401 - fixtures
    AP_UID,
    PA_UID,
    displays,
    file_bytes,
    full_sources,
    headers,
    make_result,
    read_seg,
)

ON = HeatmapOptions(seg=True)


def _ramp(shape: tuple[int, int]) -> np.ndarray:
    """Values rising from 0 (left) to 1 (right): every band is a vertical stripe."""
    return np.broadcast_to(np.linspace(0.0, 1.0, shape[1], dtype=np.float32), shape).copy()


def _blob(shape: tuple[int, int], centre: tuple[float, float]) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.exp(-(((yy - centre[0]) / 15.0) ** 2 + ((xx - centre[1]) / 12.0) ** 2)).astype(np.float32)


def with_heatmaps(result: StudyResult) -> StudyResult:
    """``result`` whose analysed images carry an opacity ramp and an attribution blob."""
    images = []
    for image in result.images:
        if image.analysed:
            shape = image.lung_mask.shape
            image = dataclasses.replace(
                image,
                heatmaps=(
                    Heatmap(name=OPACITY, values=_ramp(shape), description="opacity probability"),
                    Heatmap(
                        name=ATTRIBUTION,
                        values=_blob(shape, (shape[0] * 0.4, shape[1] * 0.3)),
                        description="Integrated Gradients of abnormal, relative x P 0.90",
                        method="integrated_gradients",
                    ),
                ),
            )
        images.append(image)
    return dataclasses.replace(result, images=tuple(images))


@pytest.fixture(scope="module")
def result() -> StudyResult:
    return with_heatmaps(make_result())


@pytest.fixture(scope="module")
def heatmap_files(result, headers, displays, tmp_path_factory) -> list[Path]:
    outputs = write_all(result, headers, displays, heatmaps=ON)
    assert not outputs.problems
    folder = tmp_path_factory.mktemp("heatmaps")
    paths = []
    for index, ds in enumerate(outputs.datasets[KIND_HEATMAP]):
        path = folder / f"heatmap{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dciodvfy_errors(path: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy (Debian dicom3tools) is required: make system-deps")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


# --- the pieces ------------------------------------------------------------------------------------


def test_band_labels_follow_the_edges() -> None:
    values = np.array([[0.0, 0.19999, 0.2, 0.39, 0.4, 0.6, 0.79, 0.8, 1.0]], dtype=np.float32)
    assert band_labels(values).tolist() == [[0, 0, 1, 1, 2, 3, 3, 4, 4]]
    assert BAND_EDGES == (0.2, 0.4, 0.6, 0.8) and len(BAND_COLOURS) == len(BAND_EDGES)


def test_heatmaps_are_checked() -> None:
    ok = np.zeros((4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="name must be one of"):
        Heatmap(name="lungs", values=ok, description="x")
    with pytest.raises(ValueError, match="2-D float32"):
        Heatmap(name=OPACITY, values=ok.astype(np.float64), description="x")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        Heatmap(name=OPACITY, values=ok + 1.5, description="x")
    with pytest.raises(ValueError, match="needs its method"):
        Heatmap(name=ATTRIBUTION, values=ok, description="x")
    with pytest.raises(ValueError, match="needs its method"):
        Heatmap(name=OPACITY, values=ok, description="x", method="grad_cam")
    with pytest.raises(ValueError, match="sc_layer must be one of"):
        HeatmapOptions(sc_layer="lungs")  # type: ignore[arg-type]
    assert not HeatmapOptions().wanted and not HeatmapOptions().needs_attribution
    assert HeatmapOptions(sc_layer="opacity").wanted and not HeatmapOptions(sc_layer="opacity").needs_attribution
    assert HeatmapOptions(sc_layer="attribution").needs_attribution and ON.needs_attribution


def test_colour_layer_tints_only_the_bands() -> None:
    grey = np.full((2, 3, 3), 100, dtype=np.uint8)
    values = np.array([[0.0, 0.1, 0.3], [0.5, 0.7, 1.0]], dtype=np.float32)
    out = colour_layer(grey, values)
    assert (out[0, :2] == 100).all(), "under the first band edge nothing changes"
    for (r, c), band in (((0, 2), 0), ((1, 0), 1), ((1, 1), 2), ((1, 2), 3)):
        weight = values[r, c] * SC_LAYER_ALPHA
        expected = np.rint(100 * (1 - weight) + np.asarray(BAND_COLOURS[band]) * weight)
        np.testing.assert_array_equal(out[r, c], expected.astype(np.uint8))
    with pytest.raises(ValueError, match="values have shape"):
        colour_layer(grey, values[:, :2])


# --- the heatmap SEGs --------------------------------------------------------------------------------


def test_two_heatmap_segs_per_analysed_image_each_in_its_own_series(result, heatmap_files, headers) -> None:
    assert len(heatmap_files) == 2 * len(result.analysed_images)
    seen_series = set()
    for path in heatmap_files:
        ds = pydicom.dcmread(path)
        source_uid = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        name = OPACITY if int(ds.SeriesNumber) == SERIES_NUMBERS[OPACITY] else ATTRIBUTION
        image = next(i for i in result.images if i.sop_instance_uid == source_uid)
        with patient_scope(str(ds.PatientID)):  # output UIDs are derived for the study's patient too
            assert ds.SeriesInstanceUID == heatmap_series_uid(image, name, model_version=result.algorithm.version)
            assert ds.SOPInstanceUID == instance_uid(source_uid=source_uid, model_version=result.algorithm.version, kind=f"{KIND_HEATMAP}/{name}")
        assert ds.StudyInstanceUID == result.study_instance_uid and ds.PatientID == headers[source_uid].PatientID
        assert ds.Modality == "SEG" and ds.InstanceNumber == 1
        assert ds.SeriesDescription.startswith("CXR AI HEATMAP") and "DEMO WEIGHTS" in ds.SeriesDescription
        seen_series.add(ds.SeriesInstanceUID)
    assert len(seen_series) == len(heatmap_files), "one series per image and map (OHIF shows one SEG per series)"


def test_heatmap_segs_read_back_as_the_bands_of_the_map(result, heatmap_files) -> None:
    for path in heatmap_files:
        seg = read_seg(path)
        assert seg.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, "nothing for Orthanc to transcode"
        assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "OCCUPANCY"
        assert int(seg.MaximumFractionalValue) == MAX_FRACTIONAL_VALUE
        source_uid = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        image = next(i for i in result.images if i.sop_instance_uid == source_uid)
        name = OPACITY if int(seg.SeriesNumber) == SERIES_NUMBERS[OPACITY] else ATTRIBUTION
        heatmap = next(h for h in image.heatmaps if h.name == name)
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[source_uid], combine_segments=False, rescale_fractional=False
        )[0]
        assert set(np.unique(pixels)) <= {0, MAX_FRACTIONAL_VALUE}, "only 0 and the maximum: OHIF 3.13 shows it"
        expected = band_labels(heatmap.values)
        for k in range(len(BAND_EDGES)):
            np.testing.assert_array_equal(pixels[..., k] == MAX_FRACTIONAL_VALUE, expected == k + 1)
        assert (pixels[..., :] > 0).sum(axis=-1).max() <= 1, "the bands do not overlap"
        for k, item in enumerate(seg.SegmentSequence):
            colour = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
            assert np.abs(np.subtract(colour, BAND_COLOURS[k])).max() <= 2
            category, kind = item.SegmentedPropertyCategoryCodeSequence[0], item.SegmentedPropertyTypeCodeSequence[0]
            if name == OPACITY:
                assert (category.CodeValue, kind.CodeValue) == (
                    codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE.value,
                    codes.OPACITY.value,
                )
            else:
                assert (category.CodeValue, category.CodingSchemeDesignator) == ("130401", "DCM")
                assert (kind.CodeValue, kind.CodingSchemeDesignator) == ("130404", "DCM")
            with patient_scope(str(seg.PatientID)):
                assert item.TrackingUID == derive_uid(
                    source_uid=source_uid, model_version=result.algorithm.version, kind=f"{KIND_HEATMAP}/{name}/{k + 1}"
                )


def test_heatmap_segs_carry_the_geometry_ohif_needs_and_no_frame_of_reference(heatmap_files, headers) -> None:
    """As the lung and opacity SEG: the source's Imager Pixel Spacing (it has no Pixel Spacing)
    as Pixel Measures and the pixel grid's orientation, without a frame of reference."""
    for path in heatmap_files:
        ds = pydicom.dcmread(path)
        source = headers[ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID]
        shared = ds.SharedFunctionalGroupsSequence[0]
        assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [float(v) for v in source.ImagerPixelSpacing]
        assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert len(ds.PerFrameFunctionalGroupsSequence) == len(BAND_EDGES)
        for frame in ds.PerFrameFunctionalGroupsSequence:
            assert frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert "FrameOfReferenceUID" not in ds
        assert (int(ds.Rows), int(ds.Columns)) == (int(source.Rows), int(source.Columns))


def test_heatmap_segs_pass_dciodvfy(heatmap_files) -> None:
    for path in heatmap_files:
        assert not dciodvfy_errors(path), path.name


def test_heatmaps_are_deterministic_and_change_nothing_else(result, headers, displays) -> None:
    first = write_all(result, headers, displays, heatmaps=ON).datasets
    second = write_all(with_heatmaps(make_result()), headers, displays, heatmaps=ON).datasets
    without = write_all(result, headers, displays).datasets
    assert [file_bytes(ds) for ds in first[KIND_HEATMAP]] == [file_bytes(ds) for ds in second[KIND_HEATMAP]]
    assert KIND_HEATMAP not in without, "no heatmap SEG unless asked for"
    for kind in (KIND_SR, KIND_GSPS, KIND_SEG, KIND_SC):
        assert [file_bytes(ds) for ds in first[kind]] == [file_bytes(ds) for ds in without[kind]], kind


def test_an_unwritable_heatmap_is_reported_and_the_others_written(result, headers, displays) -> None:
    pa = next(i for i in result.images if i.sop_instance_uid == PA_UID)
    wrong = dataclasses.replace(
        pa, heatmaps=(Heatmap(name=OPACITY, values=np.zeros((5, 5), dtype=np.float32), description="opacity probability"),)
    )
    broken = dataclasses.replace(result, images=tuple(wrong if i is pa else i for i in result.images))
    outputs = write_all(broken, headers, displays, heatmaps=ON)
    assert [(p.kind, p.sop_instance_uid) for p in outputs.problems] == [(KIND_HEATMAP, PA_UID)]
    assert "shape" in outputs.problems[0].reason
    referenced = {ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID for ds in outputs.datasets[KIND_HEATMAP]}
    assert referenced == {AP_UID} and len(outputs.datasets[KIND_SC]) == 2


# --- the Secondary Capture colour layer ----------------------------------------------------------


def test_sc_colour_layer_blends_the_chosen_map_under_the_graphics(result, headers, displays) -> None:
    plain = write_all(result, headers, displays).datasets[KIND_SC]
    layered = write_all(result, headers, displays, heatmaps=HeatmapOptions(sc_layer="opacity")).datasets[KIND_SC]
    assert KIND_HEATMAP not in write_all(result, headers, displays, heatmaps=HeatmapOptions(sc_layer="opacity")).datasets
    for a, b in zip(plain, layered, strict=True):
        image = next(i for i in result.images if i.sop_instance_uid == a.SourceImageSequence[0].ReferencedSOPInstanceUID)
        values = image.heatmaps[0].values  # the opacity ramp: left columns under 0.2, right columns red
        before, after = a.pixel_array.astype(int), b.pixel_array.astype(int)
        assert before.shape == after.shape == (*values.shape, 3)
        differs = (before != after).any(axis=-1)
        # The legend line is added to the banner (top left); below it, nothing under the first edge changes.
        below_banner = np.zeros_like(differs)
        below_banner[values.shape[0] // 2 :, :] = True
        assert not (differs & below_banner)[:, values[0] < BAND_EDGES[0]].any(), "no colour under the first band edge"
        right = values[0] >= BAND_EDGES[-1]
        grey_pixels = (before[..., 0] == before[..., 1]) & (before[..., 1] == before[..., 2])
        red_band = grey_pixels & right[None, :]
        assert red_band.sum() > 100
        assert (after[red_band][:, 0] - after[red_band][:, 2]).mean() > 60, "red over the 0.8-1.0 band"
    attribution = write_all(result, headers, displays, heatmaps=HeatmapOptions(sc_layer="attribution")).datasets[KIND_SC]
    assert [file_bytes(ds) for ds in attribution] != [file_bytes(ds) for ds in layered]


# --- the whole path -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> AnalysisEngine:
    return AnalysisEngine.create(weights_dir=None, device="cpu", min_score=None, max_pixels=64_000_000, heatmaps=ON)


def test_a_phantom_study_gets_its_heatmaps_from_the_models(phantom_studies, engine, tmp_path: Path) -> None:
    study_uid, paths = next((u, p) for u, p in sorted(phantom_studies.items()) if len(p) >= 2)
    instances = [ingest_instance(InstanceSource(label=p.name, path=p), limits=engine.limits) for p in paths]
    request = StudyRequest(study_instance_uid=study_uid, requester=Requester.CLI, destination=Folder(tmp_path))
    run = run_study(request, instances, engine=engine)
    document = run.document
    analysed = [i for i in document["images"] if i["analysed"]]
    assert analysed, "the phantom study has an analysed frontal image"
    heatmap = document["outputs"]["heatmap"]
    assert len(heatmap["files"]) == 2 * len(analysed) == len(set(heatmap["series_instance_uids"]))
    assert document["timings_ms"]["attribution"] > 0 and not document["not_written"]
    folder = tmp_path / study_uid
    assert json.loads((folder / "result.json").read_text())["outputs"]["heatmap"] == heatmap
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in paths}
    for name in heatmap["files"]:
        path = folder / name
        assert not dciodvfy_errors(path), name
        seg = read_seg(path)
        source_uid = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        assert source_uid in sources
        source = pydicom.dcmread(sources[source_uid], stop_before_pixels=True)
        assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns), "the original pixel grid"
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[source_uid], combine_segments=False, rescale_fractional=False)
        assert set(np.unique(pixels)) <= {0, MAX_FRACTIONAL_VALUE}
        if int(seg.SeriesNumber) == SERIES_NUMBERS[ATTRIBUTION]:
            assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "130404"
    # The same study again: the same files, byte for byte.
    again = tmp_path / "again"
    run_study(
        StudyRequest(study_instance_uid=study_uid, requester=Requester.CLI, destination=Folder(again)), instances, engine=engine
    )
    for name in heatmap["files"]:
        assert (folder / name).read_bytes() == (again / study_uid / name).read_bytes()
