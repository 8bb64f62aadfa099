"""The shipped demo weights: manifest complete and honest, files intact, `cxr evaluate` runs on them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_models.inference.pipeline import Analyzer
from cxr_models.weights import MODEL_NAMES, default_weights_dir, load_manifest, sha256_of

REQUIRED_METRICS = (
    "view_accuracy",
    "lung_dice",
    "opacity_map50",
    "opacity_map50_detector_a",
    "opacity_map50_detector_b",
    "opacity_map50_no_crop",
    "study_map",
    "study_macro_auc",
    "opacity_percent_mae",
)


def test_manifest_lists_every_model_with_provenance_and_metrics() -> None:
    manifest = load_manifest()
    assert manifest["demo"] is True and "not for clinical use" in manifest["notice"].lower()
    assert set(manifest["models"]) == set(MODEL_NAMES)
    total = 0
    for name, entry in manifest["models"].items():
        path = default_weights_dir() / entry["file"]
        assert sha256_of(path) == entry["sha256"], name
        assert path.stat().st_size == entry["bytes"]
        total += entry["bytes"]
        assert entry["uid"].startswith("2.25.")
        assert entry["training_command"].startswith("cxr train ")
        assert entry["data"]["seed"] == 1 and entry["data"]["command"].startswith("cxr phantom generate")
        assert entry["input_size"] and entry["classes"] and entry["architecture"]
        assert entry["metrics"], f"{name}: no measured metrics recorded"
        # trained on real radiographs as well, each source with its image count and licences
        formats = {source["format"] for source in entry["data"]["sources"]}
        assert formats & {"chestxray14", "covidcxr"}, f"{name}: no real training source recorded"
        assert all(source["images"] > 0 and source["licences"] for source in entry["data"]["sources"])
        assert "0.1.0-demo" in entry["init_from"]
    ood = manifest["ood"]
    assert sha256_of(default_weights_dir() / ood["file"]) == ood["sha256"]
    total += ood["bytes"]
    assert total <= 60 * 1024 * 1024
    evaluation = manifest["evaluation"]
    assert evaluation["data"]["seed"] == 9001 and evaluation["command"].startswith("cxr evaluate")
    assert all(key in evaluation["metrics"] for key in REQUIRED_METRICS)
    real = manifest["evaluation_real"]
    assert real["command"].startswith("cxr evaluate") and real["data"]["split"]["split"] == "val"
    assert all(key in real["metrics"] for key in REQUIRED_REAL_METRICS)
    # with their bootstrap intervals, each around its figure
    for block in (evaluation, real):
        for key in ("opacity_map50", "lung_dice", "view_accuracy"):
            low, high = block["metrics"]["ci"][key]
            assert low <= block["metrics"][key] <= high, key
    # every threshold was chosen on the validation part
    assert manifest["reporting_threshold"]["split"]["split"] == "val"
    assert manifest["reporting_threshold"]["max_false_per_negative"] == 0.5
    assert manifest["fusion"]["split"]["split"] == "val"


REQUIRED_REAL_METRICS = (
    "view_accuracy",
    "view_accuracy_frontal",
    "view_accuracy_lateral",
    "lung_dice",
    "opacity_map50",
    "opacity_map50_detector_a",
    "opacity_map50_detector_b",
    "false_boxes_per_negative",
    "opacity_percent_spearman",
    "normal_abnormal_auc",
)


def test_model_card_says_not_for_clinical_use() -> None:
    card = (Path(__file__).resolve().parents[2] / "models" / "MODEL_CARD.md").read_text()
    assert "Not for clinical use" in card and "synthetic" in card


def test_analyzer_loads_shipped_weights_and_rejects_a_tampered_file(tmp_path: Path) -> None:
    analyzer = Analyzer.load(device="cpu")
    assert analyzer.version == load_manifest()["version"]
    for entry in load_manifest()["models"].values():
        (tmp_path / entry["file"]).write_bytes((default_weights_dir() / entry["file"]).read_bytes())
    (tmp_path / "manifest.json").write_text((default_weights_dir() / "manifest.json").read_text())
    view = tmp_path / load_manifest()["models"]["view"]["file"]
    data = bytearray(view.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the tensor data
    view.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="sha256"):
        Analyzer.load(weights_dir=tmp_path, device="cpu")


def test_cxr_evaluate_on_shipped_weights(phantom_small: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_service.cli", "evaluate", "--data", str(phantom_small), "--out", str(out), "--device", "cpu", "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in REQUIRED_METRICS:
        assert key in metrics
    assert 0.0 <= metrics["view_accuracy"] <= 1.0 and 0.0 <= metrics["lung_dice"] <= 1.0
    report = (out / "report.md").read_text()
    assert "Not for clinical use" in report
    assert list(out.glob("*.png"))
