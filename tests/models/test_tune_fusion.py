"""WBF settings chosen on validation data, and the analyser reading them from the manifest."""

from __future__ import annotations

from cxr_models.evaluation.tune_fusion import FusionSetting, score_settings
from cxr_models.inference.pipeline import fusion_settings
from cxr_models.records import Box, ScoredBox


def test_scoring_prefers_the_setting_that_trusts_the_better_detector() -> None:
    truth = [[Box(10, 10, 50, 50)], [Box(60, 60, 90, 90)]]
    # Detector A ranks a false box highest in image 0; detector B gets both right.
    a = [[ScoredBox(Box(100, 100, 120, 120), 0.9), ScoredBox(Box(10, 10, 50, 50), 0.5)], [ScoredBox(Box(60, 60, 90, 90), 0.6)]]
    b = [[ScoredBox(Box(11, 11, 50, 50), 0.8)], [ScoredBox(Box(60, 61, 90, 90), 0.7)]]
    per_image = [(a[i], b[i], (128, 128)) for i in range(2)]
    settings = [FusionSetting((3.0, 1.0), 0.55, "avg"), FusionSetting((1.0, 3.0), 0.55, "avg")]
    scored = score_settings(per_image, truth, settings=settings)
    assert scored[0].setting.weights == (1.0, 3.0)
    assert scored[0].map50 > scored[1].map50


def test_manifest_fusion_settings_reach_the_ensemble() -> None:
    assert fusion_settings({}) == {}
    got = fusion_settings({"fusion": {"weights": [1, 1.5], "iou_thr": 0.55, "conf_type": "max"}})
    assert got == {"weights": (1.0, 1.5), "iou_thr": 0.55, "conf_type": "max"}


def test_shipped_ensemble_beats_the_better_single_detector_on_real_validation_images() -> None:
    from cxr_models.weights import load_manifest

    manifest = load_manifest()
    real = manifest["evaluation_real"]["metrics"]
    assert real["opacity_map50"] > max(real["opacity_map50_detector_a"], real["opacity_map50_detector_b"])
    fusion = manifest["fusion"]
    assert fusion["split"]["split"] == "val", "fusion must be chosen on the validation part"
    assert any("chestxray14" in spec for spec in fusion["validation_data"])
