"""The reporting-threshold rule on hand-made scored boxes, and tune_threshold end to end on a stub analyser."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cxr_models.evaluation import tune_fusion, tune_threshold
from cxr_models.evaluation.tune_threshold import candidate_thresholds, choose_threshold, get_args_parser, main
from cxr_models.records import Box, ScoredBox
from tests.models.fixtures_datasets import tiny_siim

B = Box(10, 10, 50, 50)
C = Box(60, 60, 90, 90)
D = Box(0, 60, 30, 90)
FAR = Box(100, 100, 120, 120)


def sb(box: Box, score: float) -> ScoredBox:
    return ScoredBox(box, score)


# Four known negatives with false boxes at 0.9, 0.6, 0.4 and 0.35 (one image has none).
NEGATIVES = [[sb(FAR, 0.9)], [sb(FAR, 0.6), sb(B, 0.4)], [sb(C, 0.35)], []]
# Three positives: B found at 0.8 (plus a false 0.5), C found at 0.45, D found only at 0.2.
POSITIVES = [
    ([sb(B, 0.8), sb(FAR, 0.5)], [B]),
    ([sb(C, 0.45)], [C]),
    ([sb(D, 0.2)], [D]),
]


def test_candidates_round_down_and_add_a_point_above_the_top_negative() -> None:
    got = candidate_thresholds([0.537, 0.3, 0.2], negative_scores=[0.91, 0.57])
    assert got == [0.2, 0.3, 0.53, 0.57, 0.91, 0.92]
    for score, candidate in ((0.537, 0.53), (0.57, 0.57), (0.3, 0.3)):
        assert candidate <= score  # a box scoring s is reported at its own candidate
    assert candidate_thresholds([], negative_scores=[1.0])[-1] > 1.0
    assert candidate_thresholds([]) == [0.0]


def test_lowest_threshold_within_the_false_box_budget() -> None:
    choice = choose_threshold(NEGATIVES, POSITIVES, max_false_per_negative=0.5)
    # At 0.45 two false boxes (0.9, 0.6) on four negatives = 0.5; at 0.4 it would be 0.75.
    assert choice.score == pytest.approx(0.45)
    assert choice.false_per_negative == pytest.approx(0.5)
    # B (0.8) and C (0.45 >= 0.45) are reported, D (0.2) is not.
    assert choice.recall == pytest.approx(2 / 3)
    assert (choice.n_negative_images, choice.n_positive_images, choice.n_truth_boxes) == (4, 3, 3)
    assert choice.n_true_boxes_found == 2


def test_budget_extremes() -> None:
    none_allowed = choose_threshold(NEGATIVES, POSITIVES, max_false_per_negative=0.0)
    assert none_allowed.score == pytest.approx(0.91) and none_allowed.false_per_negative == 0.0
    assert none_allowed.recall == 0.0
    generous = choose_threshold(NEGATIVES, POSITIVES, max_false_per_negative=1.0)
    assert generous.score == pytest.approx(0.2) and generous.recall == pytest.approx(1.0)
    assert generous.false_per_negative == pytest.approx(1.0)
    quarter = choose_threshold(NEGATIVES, POSITIVES, max_false_per_negative=0.25)
    assert quarter.score == pytest.approx(0.8)  # one false box (0.9) left; 0.8 is the lowest such candidate
    assert quarter.recall == pytest.approx(1 / 3)


def test_clean_negatives_keep_the_lowest_score() -> None:
    choice = choose_threshold([[], []], POSITIVES, max_false_per_negative=0.0)
    assert choice.score == pytest.approx(0.2) and choice.false_per_negative == 0.0 and choice.recall == 1.0


def test_rule_rejects_unmeasurable_or_bad_budgets() -> None:
    with pytest.raises(ValueError, match="known-negative"):
        choose_threshold([], POSITIVES)
    with pytest.raises(ValueError, match="max_false_per_negative"):
        choose_threshold(NEGATIVES, POSITIVES, max_false_per_negative=-0.1)


# ------------------------------------------------------------------ end to end on a stub analyser


class _StubAnalyzer:
    """Every frontal-looking image gets one box at (2, 3, 10, 12) scoring 0.7 and one far box scoring 0.4."""

    def __init__(self, manifest: dict) -> None:
        self.manifest = manifest
        self.images = 0

    def analyze_study(self, images: list[np.ndarray], *, no_crop_ablation: bool = False) -> SimpleNamespace:
        self.images += len(images)
        boxes = (ScoredBox(Box(2, 3, 10, 12), 0.7), ScoredBox(Box(20, 20, 30, 30), 0.4))
        preds = tuple(SimpleNamespace(analysed=True, opacities=boxes) for _ in images)
        return SimpleNamespace(label=None, probabilities=None, images=preds)


def test_tune_threshold_writes_the_manifest_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import cxr_models.inference.pipeline as pipeline

    root = tiny_siim(tmp_path / "siim", phantom=True)
    weights = tmp_path / "weights"
    weights.mkdir()
    fusion = {"weights": [1, 1.5], "iou_thr": 0.55, "conf_type": "max", "validation_map50": 0.7}
    (weights / "manifest.json").write_text(json.dumps({"version": "stub", "models": {}, "fusion": fusion}))
    analyzer = _StubAnalyzer(json.loads((weights / "manifest.json").read_text()))
    monkeypatch.setattr(pipeline.Analyzer, "load", classmethod(lambda cls, **kw: analyzer))
    args = get_args_parser().parse_args(
        ["--data", str(root), "--split", "all", "--weights", str(weights), "--write-manifest", "--no-progress"]
    )
    assert args.max_false_per_negative == 0.5
    choice = main(args)
    # Frontal images with boxes: study 1's (two reference boxes) and study 2's known negative.
    assert analyzer.images == 2
    assert (choice.n_negative_images, choice.n_positive_images) == (1, 1)
    # The negative shows boxes at 0.7 and 0.4: at most 0.5 false boxes per negative needs > 0.7.
    assert choice.score == pytest.approx(0.71) and choice.false_per_negative == 0.0
    printed = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert printed["threshold"] == pytest.approx(0.71) and printed["split"]["split"] == "all"
    block = json.loads((weights / "manifest.json").read_text())["reporting_threshold"]
    assert set(block) >= {
        "score", "max_false_per_negative", "false_per_negative", "recall", "n_negative_images",
        "n_positive_images", "validation_data", "split", "command",
    }
    assert block["score"] == pytest.approx(0.71) and block["max_false_per_negative"] == 0.5
    assert block["validation_data"] == [str(root)]
    assert block["split"] == {"split": "all", "val_fraction": 0.2, "split_seed": 0}
    assert block["command"].startswith(f"python -m cxr_models.evaluation.tune_threshold --data {root} --split all")
    assert block["fusion"] == {"weights": [1, 1.5], "iou_thr": 0.55, "conf_type": "max"}
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest["fusion"] == fusion and manifest["version"] == "stub"  # the rest is kept


def test_tuners_default_to_the_validation_part(tmp_path: Path) -> None:
    args = get_args_parser().parse_args(["--data", "a", "--data", "b,format=siim"])
    assert (args.data, args.split, args.val_fraction, args.split_seed) == (["a", "b,format=siim"], None, 0.2, 0)
    fusion_args = tune_fusion.get_args_parser().parse_args(["--data", "data/val"])
    assert fusion_args.split is None and fusion_args.data == ["data/val"]
    # A plain PhantomCXR folder is used whole, and its command stays the one recorded before.
    phantom = tmp_path / "val"
    phantom.mkdir()
    (phantom / "phantom.json").write_text("{}")
    sources = tune_threshold.parse_sources([str(phantom)])
    split = tune_threshold.resolve_tuning_split(None, sources)
    assert split == "all"
    assert tune_fusion.command_line(fusion_args, sources, split, default_split=split) == (
        f"python -m cxr_models.evaluation.tune_fusion --data {phantom} --write-manifest"
    )
    real_args = tune_fusion.get_args_parser().parse_args(["--data", str(tmp_path / "nih"), "--split", "val"])
    real = tune_threshold.parse_sources(real_args.data)
    assert tune_fusion.command_line(real_args, real, "val", default_split="val") == (
        f"python -m cxr_models.evaluation.tune_fusion --data {tmp_path / 'nih'} --split val "
        "--val-fraction 0.2 --split-seed 0 --write-manifest"
    )
