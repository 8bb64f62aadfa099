"""compute_metrics on a hand-built set of records and predictions, and the report it feeds."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cxr_models.evaluation.evaluate import (
    StudyOutcome,
    compute_metrics,
    evaluate_dataset,
    get_args_parser,
    group_studies,
    limit_studies,
    study_outcome,
    write_metrics,
)
from cxr_models.evaluation.report import REPORT_NAME, write_report
from cxr_models.records import Box, ImageRecord, ScoredBox
from tests.models.fixtures_datasets import tiny_siim

B1 = Box(10, 10, 30, 30)
B2 = Box(40, 40, 60, 60)
FAR = Box(70, 0, 90, 20)
SHAPE = (10, 10)


def _rect(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros(SHAPE, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def _image(**kw: object) -> SimpleNamespace:
    """A stand-in with the attributes of cxr_models.inference.pipeline.ImagePrediction."""
    base = dict(
        view="frontal",
        view_probabilities={},
        analysed=True,
        lung_mask=None,
        lung_box=None,
        crop_fallback=False,
        opacities=(),
        opacities_by_detector={"detector_a": (), "detector_b": ()},
        opacities_no_crop=(),
        opacity_mask=None,
        opacity_percent=None,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def _not_analysed(view: str) -> SimpleNamespace:
    return _image(view=view, analysed=False, opacities_by_detector={}, opacities_no_crop=None)


def _records() -> list[ImageRecord]:
    p = Path("unused.dcm")
    return [
        # Study S1 (typical): a frontal with one box, masks and opacity %, and a lateral.
        ImageRecord("i1", p, study_id="S1", view="frontal", boxes=(B1,), lung_mask=(p,), opacity_mask=(p,),
                    opacity_percent=10.0, study_label="typical"),
        ImageRecord("i2", p, study_id="S1", view="lateral", study_label="typical"),
        # Study S2 (negative): an unknown-view image annotated as having no opacity.
        ImageRecord("i3", p, study_id="S2", view=None, boxes=(), opacity_mask=(p,), opacity_percent=0.0,
                    study_label="negative"),
        # Study S3 (typical): a frontal the model takes for a lateral.
        ImageRecord("i4", p, study_id="S3", view="frontal", boxes=(B2,), opacity_mask=(p,), opacity_percent=30.0,
                    study_label="typical"),
    ]


def _outcomes() -> dict[str, StudyOutcome]:
    s1 = SimpleNamespace(
        label="typical",
        probabilities={"negative": 0.1, "typical": 0.7, "indeterminate": 0.1, "atypical": 0.1},
        images=(
            _image(
                lung_mask=_rect(2, 8, 2, 6),  # 24 px inside the 36 px reference -> Dice 48/60
                opacities=(ScoredBox(B1, 0.9),),
                opacities_by_detector={"detector_a": (ScoredBox(B1, 0.8),), "detector_b": (ScoredBox(FAR, 0.6),)},
                opacities_no_crop=(ScoredBox(B1, 0.7),),
                opacity_mask=_rect(0, 1, 0, 4),  # 2 of 4 px shared -> Dice 0.5
                opacity_percent=12.0,
            ),
            _not_analysed("lateral"),
        ),
    )
    s2 = SimpleNamespace(
        label="negative",
        probabilities={"negative": 0.6, "typical": 0.2, "indeterminate": 0.1, "atypical": 0.1},
        images=(
            _image(
                crop_fallback=True,
                opacities=(ScoredBox(FAR, 0.4),),
                opacity_mask=np.zeros(SHAPE, dtype=bool),
                opacity_percent=2.0,
            ),
        ),
    )
    s3 = SimpleNamespace(label=None, probabilities=None, images=(_not_analysed("lateral"),))
    return {
        "S1": study_outcome(s1, lung_truth=[_rect(2, 8, 2, 8), None], opacity_truth=[_rect(0, 1, 2, 6), None]),
        "S2": study_outcome(s2, lung_truth=[None], opacity_truth=[np.zeros(SHAPE, dtype=bool)]),
        "S3": study_outcome(s3, lung_truth=[None], opacity_truth=[_rect(0, 1, 0, 3)]),
    }


REQUIRED_KEYS = (
    "view_accuracy",
    "lung_dice",
    "opacity_map50",
    "opacity_map50_detector_a",
    "opacity_map50_detector_b",
    "opacity_map50_no_crop",
    "study_map",
    "study_macro_auc",
    "opacity_percent_mae",
    "siim_map",
    "none_ap",
    "opacity_dice",
)


def test_compute_metrics_hand_computed() -> None:
    metrics, curves = compute_metrics(_records(), _outcomes())
    for key in REQUIRED_KEYS:
        assert key in metrics, key
    # Views: i1 right, i2 right, i3 has no reference view, i4 wrong.
    assert metrics["view_accuracy"] == pytest.approx(2 / 3)
    assert metrics["n"]["view_accuracy"] == 3
    np.testing.assert_array_equal(curves.view_confusion.matrix, [[1, 1, 0], [0, 1, 0], [0, 0, 0]])
    assert metrics["lung_dice"] == pytest.approx(0.8)
    # Ensemble over i1 (1 GT), i3 (0 GT), i4 (1 GT, not analysed): TP 0.9, FP 0.4 -> AP 0.5.
    assert metrics["opacity_map50"] == pytest.approx(0.5)
    assert metrics["opacity_map50_detector_a"] == pytest.approx(0.5)
    assert metrics["opacity_map50_detector_b"] == 0.0
    assert metrics["opacity_map50_no_crop"] == pytest.approx(0.5)
    # none: i4 1.0 (negative), i3 0.6 (positive), i1 0.1 -> AP 0.5.
    assert metrics["none_ap"] == pytest.approx(0.5)
    # Studies: S1 typical, S2 negative, S3 typical without a frontal prediction (scores 0).
    assert metrics["study_ap_negative"] == pytest.approx(1.0)
    assert metrics["study_ap_typical"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert metrics["study_ap_indeterminate"] is None
    assert metrics["study_map"] == pytest.approx((1.0 + 0.5 + 0.5 * 2 / 3) / 2)
    assert metrics["study_macro_auc"] == pytest.approx(0.75)
    assert metrics["study_accuracy"] == pytest.approx(2 / 3)
    assert metrics["siim_map"] == pytest.approx((1.0 + 0.5 + 0.5 * 2 / 3 + 0.5 + 0.5) / 4)
    # Opacity %: i1 |12-10|, i3 |2-0|; i4 has no predicted value.
    assert metrics["opacity_percent_mae"] == pytest.approx(2.0)
    assert metrics["opacity_percent_auc_any"] == pytest.approx(1.0)
    assert metrics["opacity_percent_auc_severe"] is None
    assert metrics["counts"]["images_without_predicted_opacity_percent"] == 1
    # Opacity Dice: i1 0.5, i4 0 (not analysed, empty prediction); i3 empty and agreed.
    assert metrics["opacity_dice"] == pytest.approx(0.25)
    assert metrics["opacity_empty_agreement"] == pytest.approx(1.0)
    assert metrics["crop_fallback_rate"] == pytest.approx(0.5)
    counts = metrics["counts"]
    assert (counts["images"], counts["studies"], counts["labelled_studies"]) == (4, 3, 3)
    assert counts["studies_by_class"] == {"negative": 1, "typical": 2, "indeterminate": 0, "atypical": 0}
    assert counts["labelled_studies_without_frontal_prediction"] == 1
    assert set(curves.opacity_pr) == {"ensemble", "detector A", "detector B", "ensemble, no crop"}
    np.testing.assert_array_equal(curves.study_confusion.matrix.sum(), 2)


def test_no_crop_ablation_absent_is_undefined() -> None:
    outcomes = _outcomes()
    s1 = outcomes["S1"]
    stripped = [type(im)(**{**im.__dict__, "opacities_no_crop": None}) for im in s1.images]
    outcomes["S1"] = StudyOutcome(s1.label, s1.probabilities, tuple(stripped))
    s2 = outcomes["S2"]
    outcomes["S2"] = StudyOutcome(
        s2.label, s2.probabilities, tuple(type(im)(**{**im.__dict__, "opacities_no_crop": None}) for im in s2.images)
    )
    metrics, curves = compute_metrics(_records(), outcomes)
    assert metrics["opacity_map50_no_crop"] is None
    assert "ensemble, no crop" not in curves.opacity_pr


def test_compute_metrics_rejects_misaligned_predictions() -> None:
    outcomes = _outcomes()
    del outcomes["S2"]
    with pytest.raises(ValueError, match="'S2'"):
        compute_metrics(_records(), outcomes)
    outcomes = _outcomes()
    outcomes["S1"] = StudyOutcome("typical", None, outcomes["S1"].images[:1])
    with pytest.raises(ValueError, match="'S1'"):
        compute_metrics(_records(), outcomes)


def test_study_outcome_checks_alignment() -> None:
    pred = SimpleNamespace(label=None, probabilities=None, images=(_not_analysed("other"),))
    with pytest.raises(ValueError, match="lung_truth"):
        study_outcome(pred, lung_truth=[], opacity_truth=[None])


def test_grouping_and_limit() -> None:
    p = Path("x.png")
    records = [
        ImageRecord("b2", p, study_id="B"),
        ImageRecord("a1", p, study_id="A"),
        ImageRecord("b1", p, study_id="B"),
        ImageRecord("solo", p),
    ]
    groups = group_studies(records)
    assert list(groups) == ["A", "B", "solo"]
    assert [r.image_id for r in groups["B"]] == ["b1", "b2"]
    assert list(limit_studies(groups, 2)) == ["A"]
    assert list(limit_studies(groups, 3)) == ["A", "B"]
    assert list(limit_studies({"B": groups["B"]}, 1)) == ["B"]
    with pytest.raises(ValueError, match="limit"):
        limit_studies(groups, 0)


def test_write_report_and_metrics(tmp_path: Path) -> None:
    metrics, curves = compute_metrics(_records(), _outcomes())
    metrics["model_version"] = "test-1"
    metrics["data"] = {"root": "/data/phantom", "format": "auto", "limit": None}
    manifest = {"version": "test-1", "models": {"view": {"arch": "resnet", "bytes": 123}}}
    out = tmp_path / "eval"
    report = write_report(out, metrics, curves, manifest=manifest)
    assert report == out / REPORT_NAME
    text = report.read_text(encoding="utf-8")
    assert "Not for clinical use" in text
    assert "test-1" in text and "arch=resnet" in text
    assert "/data/phantom" in text
    assert "Opacity AP@0.5 (ensemble) (`opacity_map50`) | 0.5000 | 3 |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "(`" in line]
    assert len(rows) >= 20
    for row in rows:  # a definition's own "|" (as in |P∩T|) is escaped, so every row has 4 cells
        assert row.replace("\\|", "").count("|") == 5, row
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(
        [
            "opacity_pr.png",
            "confusion_view.png",
            "confusion_study.png",
            "roc_study.png",
            "roc_opacity_percent.png",
            "opacity_percent_scatter.png",
        ]
    )
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
        assert f"]({name})" in text
    path = write_metrics(out, metrics)
    loaded = json.loads(path.read_text())
    assert loaded["opacity_map50"] == pytest.approx(0.5)
    assert loaded["opacity_percent_auc_severe"] is None


def test_args_parser_defaults() -> None:
    args = get_args_parser().parse_args(["--data", "d", "--out", "o"])
    assert (args.format, args.device, args.limit, args.weights, args.no_progress) == ("auto", "auto", None, None, False)


class _ConstantAnalyzer:
    """Says the same thing about every image: frontal, whole image lung, one box, no opacity."""

    manifest = {"version": "const-0", "models": {}}

    def __init__(self) -> None:
        self.calls: list[int] = []

    def analyze_study(self, images: list[np.ndarray], *, no_crop_ablation: bool = False) -> SimpleNamespace:
        assert no_crop_ablation
        self.calls.append(len(images))
        box = (ScoredBox(Box(2, 3, 10, 12), 0.9),)
        preds = tuple(
            _image(
                lung_mask=np.ones(img.shape, dtype=bool),
                opacities=box,
                opacities_by_detector={"detector_a": box, "detector_b": ()},
                opacities_no_crop=box,
                opacity_mask=np.zeros(img.shape, dtype=bool),
                opacity_percent=0.0,
            )
            for img in images
        )
        probabilities = {"negative": 0.4, "typical": 0.3, "indeterminate": 0.2, "atypical": 0.1}
        return SimpleNamespace(label="negative", probabilities=probabilities, images=preds)


def test_evaluate_dataset_reads_tiny_phantom_layout(tmp_path: Path) -> None:
    root = tiny_siim(tmp_path / "siim", phantom=True)
    analyzer = _ConstantAnalyzer()
    result = evaluate_dataset(root, analyzer=analyzer, show_progress=False)
    m = result.metrics
    # Records on disk: study 1 (frontal + lateral), study 2 (frontal, no box), study 4 (other).
    assert sorted(analyzer.calls) == [1, 1, 2]
    assert m["counts"]["images"] == 4
    assert m["view_accuracy"] == pytest.approx(0.5)
    # Reference lungs: two 12x28 rectangles (672 px) in 32x32; predicted all 1024 px.
    assert m["lung_dice"] == pytest.approx(2 * 672 / (672 + 1024))
    # The box matches one of study 1's two boxes; the same box on study 2 is a tied FP -> 0.5·0.5.
    assert m["opacity_map50"] == pytest.approx(0.25)
    assert m["opacity_map50_detector_b"] == 0.0
    assert m["opacity_percent_mae"] == pytest.approx(12.5 / 2)
    assert m["opacity_dice"] == 0.0 and m["opacity_empty_agreement"] == 1.0
    # Both labelled studies get the same probabilities: every class AP is a tie at 0.5.
    assert m["study_map"] == pytest.approx(0.5)
    assert m["study_macro_auc"] == pytest.approx(0.5)
    assert m["model_version"] == "const-0"
    limited = evaluate_dataset(root, analyzer=_ConstantAnalyzer(), limit=2, show_progress=False)
    assert limited.metrics["counts"]["images"] == 2
    out = tmp_path / "out"
    write_metrics(out, m)
    write_report(out, m, result.curves, manifest=result.manifest)
    assert json.loads((out / "metrics.json").read_text())["view_accuracy"] == pytest.approx(0.5)
    assert (out / "opacity_pr.png").stat().st_size > 0
