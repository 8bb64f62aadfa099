"""`cxr analyze` end to end, through the real CLI, shipped demo weights and DICOM validators."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from cxr_models.inference.pipeline import Analyzer
from cxr_models.phantom.generate import generate_dataset
from cxr_models.weights import MANIFEST_NAME, default_weights_dir, load_manifest
from cxr_service.analysis import REPORT_MIN_SCORE, algorithm_info, analyze_study, report_min_score
from cxr_service.ingest import ingest_file
from cxr_service.settings import Settings
from tests.corpus import HOSTILE_HEADER_CASES, MALFORMED_CASES, REFERENCE_CASE, build_corpus

CXR = [sys.executable, "-m", "cxr_service.cli", "analyze"]


def run_analyze(paths: list[Path], out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CXR, *map(str, paths), "--out", str(out), "--device", "cpu"], capture_output=True, text=True, timeout=600)


def without_timings(document: dict) -> dict:
    return {k: v for k, v in document.items() if k != "timings_ms"}


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PhantomCXR chest study with boxes, and a lateral image when one is drawn."""
    root = generate_dataset(
        tmp_path_factory.mktemp("phantom") / "data", n_studies=8, seed=4242, size_range=(448, 576), other_fraction=0.0, workers=1
    )
    rows = [line.split(",") for line in (root / "images.csv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    col = {name: i for i, name in enumerate(header)}
    by_study: dict[str, list[list[str]]] = {}
    for row in rows:
        by_study.setdefault(row[col["study_instance_uid"]], []).append(row)
    labelled = [s for s, r in by_study.items() if r[0][col["study_label"]] in ("typical", "atypical", "indeterminate")]
    with_lateral = [s for s in labelled if any(r[col["view"]] == "lateral" for r in by_study[s])]
    study = (with_lateral or labelled)[0]
    return root / "train" / study


@pytest.fixture(scope="module")
def first_run(study_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("analyze1")
    proc = run_analyze([study_dir], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = out / study_dir.name
    return folder, json.loads((folder / "result.json").read_text())


def test_result_json_document(first_run: tuple[Path, dict], study_dir: Path) -> None:
    folder, doc = first_run
    assert doc["study_instance_uid"] == study_dir.name
    assert doc["model_version"].endswith("-demo")
    assert doc["study"]["label"] in ("negative", "typical", "indeterminate", "atypical")
    assert abs(sum(doc["study"]["probabilities"].values()) - 1.0) < 1e-3
    n_files = len(list(study_dir.rglob("*.dcm")))
    assert len(doc["images"]) == n_files
    analysed = [i for i in doc["images"] if i["analysed"]]
    assert analysed, "the frontal image must be analysed"
    for image in doc["images"]:
        assert set(image) == {
            "sop_instance_uid", "view", "view_probabilities", "analysed", "reason", "ood_score", "lung_box", "opacities",
            "opacity_percent",
        }  # fmt: skip
        if "ood" in load_manifest():
            assert isinstance(image["ood_score"], float) and image["ood_score"] >= 0.0
        else:
            assert image["ood_score"] is None  # the shipped weights have no OOD model
        if image["analysed"]:
            assert image["view"] == "frontal" and image["reason"] is None
            assert 0.0 <= image["opacity_percent"] <= 100.0
            for opacity in image["opacities"]:
                x0, y0, x1, y1 = opacity["box"]
                assert 0 <= x0 < x1 and 0 <= y0 < y1 and 0.0 <= opacity["score"] <= 1.0
        else:
            assert image["reason"] in ("lateral view", "not a chest radiograph")
    assert {"view", "lungs", "detection", "opacity", "study", "ingest", "writers"} <= set(doc["timings_ms"])
    assert doc["outputs"]["sr"]["files"] == ["sr.dcm"]
    assert len(doc["outputs"]["gsps"]["files"]) == len(analysed)


def test_every_output_validates_and_round_trips(first_run: tuple[Path, dict]) -> None:
    folder, doc = first_run
    files = [folder / "sr.dcm", *sorted((folder / "gsps").glob("*.dcm")), *sorted((folder / "seg").glob("*.dcm")), *sorted((folder / "sc").glob("*.dcm"))]
    analysed = [i for i in doc["images"] if i["analysed"]]
    assert len(files) == 1 + 3 * len(analysed)
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy (Debian dicom3tools) is required: make system-deps")
    for path in files:
        proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path.relative_to(folder)}: {errors}"
    dump = subprocess.run(["dsrdump", str(folder / "sr.dcm")], capture_output=True, text=True)
    assert dump.returncode == 0 and "Imaging Measurement Report" in dump.stdout

    sr = hd.sr.srread(folder / "sr.dcm")
    n_boxes = sum(len(i["opacities"]) for i in analysed)
    regions = [ds for ds in _walk(sr) if getattr(ds, "GraphicType", None) == "POLYLINE"]
    assert len(regions) == n_boxes + len(analysed)  # one outline per opacity plus one lung outline per image
    for region in regions:
        points = list(region.GraphicData)
        assert len(points) == 10 and points[:2] == points[-2:]
    for path in (folder / "seg").glob("*.dcm"):
        # Read with pydicom: highdicom 0.28's reader wants a Slice Thickness that a projection
        # image's SEG does not have (tests/service/test_writers.py::read_seg).
        seg = pydicom.dcmread(path)
        assert len(seg.SegmentSequence) == 2
        assert "PixelMeasuresSequence" in seg.SharedFunctionalGroupsSequence[0], "OHIF opens a SEG only with one"
    for path in (folder / "gsps").glob("*.dcm"):
        gsps = pydicom.dcmread(path)
        assert gsps.SOPClassUID == pydicom.uid.GrayscaleSoftcopyPresentationStateStorage
    for path in (folder / "sc").glob("*.dcm"):
        sc = pydicom.dcmread(path)
        assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.ndim == 3


def _walk(ds: pydicom.Dataset):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _walk(item)


def test_same_input_twice_gives_same_uids_and_result(first_run: tuple[Path, dict], study_dir: Path, tmp_path: Path) -> None:
    folder, doc = first_run
    proc = run_analyze([study_dir], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((tmp_path / study_dir.name / "result.json").read_text())
    assert without_timings(again) == without_timings(doc)
    assert (tmp_path / study_dir.name / "sr.dcm").read_bytes() == (folder / "sr.dcm").read_bytes()


def test_compressed_copy_gives_same_result(first_run: tuple[Path, dict], study_dir: Path, tmp_path: Path) -> None:
    _, doc = first_run
    copy = tmp_path / "j2k"
    copy.mkdir()
    for path in sorted(study_dir.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
        ds.save_as(copy / path.name)
    out = tmp_path / "out"
    proc = run_analyze([copy], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    compressed = json.loads((out / study_dir.name / "result.json").read_text())
    assert compressed["study"]["label"] == doc["study"]["label"]
    by_uid = {image["sop_instance_uid"]: image for image in compressed["images"]}
    assert set(by_uid) == {image["sop_instance_uid"] for image in doc["images"]}
    for a in doc["images"]:
        b = by_uid[a["sop_instance_uid"]]
        assert a["view"] == b["view"]
        if a["analysed"]:
            assert abs(a["opacity_percent"] - b["opacity_percent"]) <= 0.05
            assert len(a["opacities"]) == len(b["opacities"])
            for oa, ob in zip(a["opacities"], b["opacities"], strict=True):
                assert np.allclose(oa["box"], ob["box"], atol=0.2) and abs(oa["score"] - ob["score"]) <= 1e-3
    for label, p in doc["study"]["probabilities"].items():
        assert abs(p - compressed["study"]["probabilities"][label]) <= 1e-3


def test_each_malformed_file_gets_its_reason_and_the_study_is_still_analysed(tmp_path: Path) -> None:
    cases = {case.name: case for case in build_corpus(tmp_path / "corpus", seed=3)}
    folder = tmp_path / "study"
    folder.mkdir()
    hostile = [n for n in HOSTILE_HEADER_CASES if cases[n].study_instance_uid == cases[REFERENCE_CASE].study_instance_uid]
    chosen = [REFERENCE_CASE, *[n for n in MALFORMED_CASES if n in cases]]
    for name in [*chosen, *hostile]:
        shutil.copy(cases[name].path, folder / f"{name}.dcm")
    out = tmp_path / "out"
    proc = run_analyze([folder], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study_uid = cases[REFERENCE_CASE].study_instance_uid
    doc = json.loads((out / study_uid / "result.json").read_text())
    by_uid = {image["sop_instance_uid"]: image for image in doc["images"]}
    reference = pydicom.dcmread(cases[REFERENCE_CASE].path, stop_before_pixels=True)
    assert by_uid[reference.SOPInstanceUID]["analysed"] is True
    unattributed = json.loads((out / "not_analysed.json").read_text()) if (out / "not_analysed.json").exists() else []
    assert all(set(u) == {"source", "sop_instance_uid", "reason"} for u in unattributed + doc["not_attributed"])
    reasons = [i["reason"] for i in doc["images"] if not i["analysed"]] + [u["reason"] for u in unattributed + doc["not_attributed"]]
    for name in chosen[1:]:
        fragment = cases[name].reason_contains
        assert any(fragment in reason for reason in reasons), f"{name}: no reason containing {fragment!r} in {reasons}"
    # Hostile headers are analysed and repaired or left out of the outputs: all pass dciodvfy.
    for name in hostile:
        assert by_uid[pydicom.dcmread(cases[name].path, stop_before_pixels=True).SOPInstanceUID]["analysed"], name
    assert doc["not_written"] == []
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy (Debian dicom3tools) is required: make system-deps")
    for path in sorted((out / study_uid).rglob("*.dcm")):
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        assert not [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")], path.name


def test_exit_status_is_nonzero_only_when_nothing_could_be_analysed(tmp_path: Path) -> None:
    cases = {case.name: case for case in build_corpus(tmp_path / "corpus", seed=5)}
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ("garbage", "no_pixel_data", "rgb"):
        shutil.copy(cases[name].path, folder / f"{name}.dcm")
    proc = run_analyze([folder], tmp_path / "out")
    assert proc.returncode == 1
    assert "not analysed" in proc.stdout
    # Nothing analysed, yet the study gets an SR naming each image's reason (from their headers).
    study = tmp_path / "out" / cases["rgb"].study_instance_uid
    doc = json.loads((study / "result.json").read_text())
    assert doc["outputs"]["sr"]["files"] == ["sr.dcm"] and doc["origin"] == "cli" and doc["job_id"] is None
    assert doc["summary"].startswith("0 of 2 images analysed; not analysed: ")
    texts = [str(item.TextValue) for item in _walk(pydicom.dcmread(study / "sr.dcm")) if item.get("ValueType") == "TEXT"]
    for name in ("no_pixel_data", "rgb"):
        assert any(cases[name].reason_contains in text for text in texts), name


def test_reporting_threshold_comes_from_the_manifest_unless_set() -> None:
    assert report_min_score({"models": {}}) == REPORT_MIN_SCORE == 0.3
    assert report_min_score({"reporting_threshold": {"score": 0.42, "rule": "F1 on validation"}}) == 0.42
    assert report_min_score({"reporting_threshold": {"score": 0.42}}, 0.1) == 0.1
    assert report_min_score({}, 0.0) == 0.0
    with pytest.raises(ValueError, match="min_score"):
        report_min_score({}, 1.5)
    with pytest.raises(RuntimeError, match="reporting_threshold"):
        report_min_score({"reporting_threshold": {"score": "high"}})
    assert Settings(environment="development").min_score is None
    assert Settings(environment="development", min_score=0.5).min_score == 0.5


def test_analysis_reports_opacities_from_the_manifest_threshold(study_dir: Path, tmp_path: Path) -> None:
    """In process: a manifest "reporting_threshold" replaces 0.3, an explicit min_score wins."""
    manifest = load_manifest()
    for entry in [*manifest["models"].values(), *([manifest["ood"]] if "ood" in manifest else [])]:
        (tmp_path / entry["file"]).symlink_to(default_weights_dir() / entry["file"])
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({**manifest, "reporting_threshold": {"score": 0.6}}))
    analyzer = Analyzer.load(weights_dir=tmp_path, device="cpu")
    items = [ingest_file(path) for path in sorted(study_dir.rglob("*.dcm"))]
    uid = study_dir.name

    def scores(min_score: float | None) -> list[float]:
        study = analyze_study(items, study_instance_uid=uid, analyzer=analyzer, algorithm=algorithm_info(manifest), min_score=min_score)
        return [o.score for image in study.result.analysed_images for o in image.opacities]

    from_manifest, everything = scores(None), scores(0.0)
    assert all(s >= 0.6 for s in from_manifest)
    assert len(from_manifest) == sum(1 for s in everything if s >= 0.6)
    assert len(everything) > len(from_manifest), "the phantom study should have boxes below 0.6"
