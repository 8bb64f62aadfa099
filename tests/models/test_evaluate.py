"""compute_metrics on a hand-built set of records and predictions, and the report it feeds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cxr_models.evaluation.evaluate import (
    DEFAULT_REPORTING_THRESHOLD,
    ImageOutcome,
    StudyOutcome,
    compare_measurements,
    compute_metrics,
    evaluate_dataset,
    get_args_parser,
    group_studies,
    limit_studies,
    main,
    measure,
    reason_prefix,
    reporting_threshold_of,
    resolve_tuning_split,
    study_outcome,
    write_metrics,
)
from cxr_models.datasets.sources import DataSource
from cxr_models.evaluation.intervals import BootstrapSettings
from cxr_models.train.data import in_validation, select_split
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
                    opacity_percent=10.0, study_label="typical", abnormal=True, severity=4.0),
        ImageRecord("i2", p, study_id="S1", view="lateral", study_label="typical"),
        # Study S2 (negative): an unknown-view image annotated as having no opacity.
        ImageRecord("i3", p, study_id="S2", view=None, boxes=(), opacity_mask=(p,), opacity_percent=0.0,
                    study_label="negative", abnormal=False, severity=0.0),
        # Study S3 (typical): a frontal the model takes for a lateral.
        ImageRecord("i4", p, study_id="S3", view="frontal", boxes=(B2,), opacity_mask=(p,), opacity_percent=30.0,
                    study_label="typical", severity=6.0),
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
    # Per-view recall: i1 right and i4 wrong among frontals; i2 the only lateral.
    assert metrics["view_accuracy_frontal"] == pytest.approx(0.5)
    assert metrics["view_accuracy_lateral"] == pytest.approx(1.0)
    assert metrics["view_accuracy_other"] is None and metrics["n"]["view_accuracy_other"] == 0
    # Frontal images i1, i3 (unknown view), i4: i4 was taken for a lateral.
    assert metrics["analysed_rate"] == pytest.approx(2 / 3)
    assert metrics["not_analysed_reasons"] == {"predicted lateral": 1}
    # Abnormal: S1 (i1 True) p = 1 - 0.1, S2 (i3 False) p = 1 - 0.6; S3 has no abnormal label.
    assert metrics["normal_abnormal_auc"] == pytest.approx(1.0)
    assert (metrics["n"]["normal_abnormal_auc"], metrics["n_positive"]["normal_abnormal_auc"]) == (2, 1)
    # Severity: i1 (12 %, 4) and i3 (2 %, 0); i4 has a severity but no predicted opacity %.
    assert metrics["opacity_percent_spearman"] == pytest.approx(1.0)
    assert metrics["opacity_percent_spearman_n"] == 2
    assert metrics["opacity_percent_spearman_p"] is None
    assert metrics["counts"]["images_with_severity_without_predicted_opacity_percent"] == 1
    # Reporting threshold 0.3 (default): i3 is the only known negative and shows FAR at 0.4.
    assert metrics["reporting_threshold"] == pytest.approx(0.3)
    assert metrics["false_boxes_per_negative"] == pytest.approx(1.0)
    assert (metrics["n"]["false_boxes_per_negative"], metrics["n_positive"]["false_boxes_per_negative"]) == (1, 1)
    # Reference boxes B1 (found at 0.9) and B2 (i4 not analysed): recall 1/2; shown boxes 0.9, 0.4: precision 1/2.
    assert metrics["opacity_recall_at_reporting_threshold"] == pytest.approx(0.5)
    assert metrics["opacity_precision_at_reporting_threshold"] == pytest.approx(0.5)
    assert metrics["n_positive"]["opacity_map50"] == 2 and metrics["n_positive"]["none_ap"] == 1
    assert metrics["counts_by_source"]["unknown"]["images"] == 4
    assert metrics["counts_by_source"]["unknown"]["known_negative"] == 1
    strict, _ = compute_metrics(_records(), _outcomes(), reporting_threshold=0.5)
    assert strict["false_boxes_per_negative"] == 0.0 and strict["n_positive"]["false_boxes_per_negative"] == 0


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
    assert "Opacity AP@0.5 (ensemble) (`opacity_map50`) | 0.5000 | 0.000 to 1.000 | 3 | 2 |" in text
    assert "**Data:** `/data/phantom` — all records" in text
    assert "### Per data source" in text and "| unknown | 4 |" in text
    assert "- predicted lateral: 1" in text
    assert "(`normal_abnormal_auc`) | 1.0000 | 1.000 to 1.000 | 2 | 1 |" in text
    assert "(`false_boxes_per_negative`) | 1.0000 |  | 1 | 1 |" in text  # one negative: no interval
    rows = [line for line in text.splitlines() if line.startswith("| ") and "(`" in line]
    assert len(rows) >= 20
    for row in rows:  # a definition's own "|" (as in |P∩T|) is escaped, so every row has 6 cells
        assert row.replace("\\|", "").count("|") == 7, row
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(
        [
            "opacity_pr.png",
            "confusion_view.png",
            "confusion_study.png",
            "roc_study.png",
            "roc_opacity_percent.png",
            "opacity_percent_scatter.png",
            "roc_normal_abnormal.png",
            "opacity_percent_severity.png",
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
    assert loaded["ci"]["opacity_map50"] == [0.0, 1.0]
    assert "### Paired differences" in text
    assert "| ensemble AP@0.5 − detector B AP@0.5 | 0.000 to 1.000 |" in text
    assert "percentile bootstrap, 1000 resamples (seed 0)" in text


def test_args_parser_defaults() -> None:
    args = get_args_parser().parse_args(["--data", "d", "--out", "o"])
    assert (args.format, args.device, args.limit, args.weights, args.no_progress) == ("auto", "auto", None, None, False)
    assert (args.data, args.split, args.val_fraction, args.split_seed) == (["d"], "all", 0.2, 0)
    assert args.reporting_threshold is None
    assert args.bootstrap == 1000
    args = get_args_parser().parse_args(
        ["--data", "a,weight=2", "--data", "b", "--out", "o", "--split", "val", "--reporting-threshold", "0.6",
         "--bootstrap", "0"]
    )
    assert (args.data, args.split, args.reporting_threshold, args.bootstrap) == (["a,weight=2", "b"], "val", 0.6, 0)


def test_bootstrap_zero_gives_no_intervals() -> None:
    metrics, _ = compute_metrics(_records(), _outcomes(), bootstrap=BootstrapSettings(resamples=0))
    assert metrics["ci"] == {}
    assert metrics["ci_method"] == "none (--bootstrap 0)"
    seeded, _ = compute_metrics(_records(), _outcomes(), bootstrap=BootstrapSettings(resamples=200, seed=5))
    again, _ = compute_metrics(_records(), _outcomes(), bootstrap=BootstrapSettings(resamples=200, seed=5))
    assert seeded["ci"] == again["ci"] and seeded["ci"]


def test_reporting_threshold_from_override_manifest_or_default() -> None:
    manifest = {"reporting_threshold": {"score": 0.62, "max_false_per_negative": 0.5}}
    assert reporting_threshold_of({}) == DEFAULT_REPORTING_THRESHOLD == 0.3
    assert reporting_threshold_of(manifest) == pytest.approx(0.62)
    assert reporting_threshold_of(manifest, 0.4) == pytest.approx(0.4)


def test_tuning_split_defaults_to_validation_except_a_lone_phantom_folder(tmp_path: Path) -> None:
    phantom = tmp_path / "val"
    phantom.mkdir()
    (phantom / "phantom.json").write_text("{}")
    real = DataSource(tmp_path / "real")
    assert resolve_tuning_split(None, [DataSource(phantom)]) == "all"
    assert resolve_tuning_split(None, [real]) == "val"
    assert resolve_tuning_split(None, [DataSource(phantom), real]) == "val"
    assert resolve_tuning_split("val", [DataSource(phantom)]) == "val"


def _one_image_study(image: SimpleNamespace, negative: float | None) -> StudyOutcome:
    probabilities = None if negative is None else {
        "negative": negative, "typical": 1.0 - negative, "indeterminate": 0.0, "atypical": 0.0
    }
    pred = SimpleNamespace(label=None if negative is None else "negative", probabilities=probabilities, images=(image,))
    return study_outcome(pred, lung_truth=[None], opacity_truth=[None])


def test_each_metric_uses_only_the_records_that_carry_its_label() -> None:
    p = Path("unused.png")
    records = [
        ImageRecord("a1", p, view="frontal", boxes=(B1,), abnormal=True, source="synthetic"),
        ImageRecord("a2", p, view="frontal", boxes=(), abnormal=False, source="synthetic"),
        # Real records: r1 carries no label at all, r2 only abnormal and severity, r3 is a known negative.
        ImageRecord("r1", p, view="frontal", source="real"),
        ImageRecord("r2", p, view="frontal", abnormal=True, severity=3.0, source="real"),
        ImageRecord("r3", p, view="frontal", boxes=(), source="real"),
    ]
    outcomes = {
        "a1": _one_image_study(_image(opacities=(ScoredBox(B1, 0.9),)), 0.2),
        "a2": _one_image_study(_image(opacities=(ScoredBox(FAR, 0.5),)), 0.7),
        # A confident false box and P(negative) 0 on r1 would hurt AP and AUC if r1 counted.
        "r1": _one_image_study(_image(opacities=(ScoredBox(FAR, 0.95),)), 0.0),
        "r2": _one_image_study(_image(opacities=(ScoredBox(B2, 0.8),), opacity_percent=20.0), 0.5),
        "r3": _one_image_study(
            _image(analysed=False, reason="not a chest radiograph: ood score 0.97", opacities_by_detector={},
                   opacities_no_crop=None),
            None,
        ),
    }
    metrics, curves = compute_metrics(records, outcomes)
    n, pos = metrics["n"], metrics["n_positive"]
    odd = ImageOutcome(view="frontal", analysed=False, crop_fallback=False, opacities=(), opacities_by_detector={},
                       opacities_no_crop=None, opacity_percent=None,
                       reason="image unlike the training data (score 3.20, limit 2.10)")
    assert reason_prefix(odd) == "image unlike the training data"
    assert reason_prefix(dataclasses.replace(odd, reason="no plausible lung fields: mask too small")) == (
        "no plausible lung fields"
    )
    assert reason_prefix(dataclasses.replace(odd, reason=None, view="other")) == "predicted other"
    # mAP over a1, a2, r3 (boxes not None): TP 0.9 then FP 0.5 -> 1.0; r1's 0.95 box is not counted.
    assert metrics["opacity_map50"] == pytest.approx(1.0)
    assert (n["opacity_map50"], pos["opacity_map50"]) == (3, 1)
    assert metrics["opacity_map50_detector_a"] == 0.0  # no detector boxes in these stand-ins, one truth box
    # AUC over a1 (T, 0.8), a2 (F, 0.3), r2 (T, 0.5); r1 and r3 have abnormal None.
    assert metrics["normal_abnormal_auc"] == pytest.approx(1.0)
    assert (n["normal_abnormal_auc"], pos["normal_abnormal_auc"]) == (3, 2)
    # Known negatives a2 (one box at 0.5 >= 0.3) and r3 (refused: no box).
    assert metrics["false_boxes_per_negative"] == pytest.approx(0.5)
    assert (n["false_boxes_per_negative"], pos["false_boxes_per_negative"]) == (2, 1)
    # One severity pair: ρ undefined, and so is its curve's statistic.
    assert metrics["opacity_percent_spearman"] is None and metrics["opacity_percent_spearman_n"] == 1
    assert curves.severity_truth is not None and curves.severity_truth.tolist() == [3.0]
    assert metrics["analysed_rate"] == pytest.approx(4 / 5)
    assert metrics["not_analysed_reasons"] == {"not a chest radiograph": 1}
    assert metrics["view_accuracy"] == pytest.approx(1.0) and n["view_accuracy"] == 5
    # Study metrics: no record has a study label.
    assert metrics["study_map"] is None and n["study_map"] == 0
    by_source = metrics["counts_by_source"]
    assert list(by_source) == ["real", "synthetic"]
    assert by_source["real"]["images"] == 3 and by_source["real"]["with_boxes"] == 1
    assert by_source["real"]["known_negative"] == 1 and by_source["real"]["analysed"] == 2
    assert by_source["real"]["with_abnormal"] == 1 and by_source["real"]["with_severity"] == 1
    assert by_source["synthetic"]["reference_boxes"] == 1 and by_source["synthetic"]["abnormal"] == 1


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


def test_cxr_evaluate_split_val_evaluates_only_validation_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cxr_models.inference.pipeline as pipeline
    from cxr_models.datasets.sources import as_sources, read_sources

    root = tiny_siim(tmp_path / "siim", phantom=True)
    records = read_sources(as_sources([str(root)]))
    # A split seed that puts some but not all of the three studies into the validation part.
    seed = next(
        s for s in range(100)
        if 0 < len(select_split(records, split="val", val_fraction=0.5, split_seed=s)) < len(records)
    )
    val = select_split(records, split="val", val_fraction=0.5, split_seed=seed)
    analyzer = _ConstantAnalyzer()
    analyzer.manifest = {"version": "const-0", "models": {}, "reporting_threshold": {"score": 0.95}}
    monkeypatch.setattr(pipeline.Analyzer, "load", classmethod(lambda cls, **kw: analyzer))
    out = tmp_path / "out"
    args = get_args_parser().parse_args(
        ["--data", str(root), "--out", str(out), "--split", "val", "--val-fraction", "0.5",
         "--split-seed", str(seed), "--no-progress"]
    )
    metrics = main(args)
    assert metrics["counts"]["images"] == len(val) < len(records)
    assert sum(analyzer.calls) == len(val)
    assert all(in_validation(r, val_fraction=0.5, split_seed=seed) for r in val)
    assert metrics["counts_by_source"]["siim"]["images"] == len(val)
    data = json.loads((out / "metrics.json").read_text())["data"]
    assert (data["split"], data["val_fraction"], data["split_seed"]) == ("val", 0.5, seed)
    assert data["images_read"] == len(records) and data["sources"][0]["images"] == len(val)
    # The manifest's reporting threshold (0.95) is above the constant box (0.9): no false box.
    assert metrics["reporting_threshold"] == pytest.approx(0.95)
    assert metrics["reporting_threshold_from"] == "manifest"
    if metrics["n"]["false_boxes_per_negative"]:
        assert metrics["false_boxes_per_negative"] == 0.0
    report = (out / "report.md").read_text()
    assert f"`{root}` — the validation part (`--split val`" in report
    assert f"split seed {seed})" in report


def test_record_real_metrics_beside_the_synthetic_ones(tmp_path: Path) -> None:
    from cxr_models.weights import default_weights_dir
    from cxr_models.weights.record import evaluation_key, get_args_parser as record_parser, main as record_main

    weights = tmp_path / "weights"
    weights.mkdir()
    shipped = json.loads((default_weights_dir() / "manifest.json").read_text())
    (weights / "manifest.json").write_text(json.dumps(shipped))
    metrics, _ = compute_metrics(_records(), _outcomes())
    metrics["data"] = {
        "sources": [{"spec": "/real/chestxray14", "name": "chestxray14", "format": "auto", "images": 4}],
        "split": "val", "val_fraction": 0.2, "split_seed": 0, "format": "auto", "limit": None,
    }
    path = write_metrics(tmp_path / "eval_real", metrics)
    command = "cxr evaluate --data /real/chestxray14 --split val --out runs/eval_real"
    record_main(record_parser().parse_args(
        ["--key", "metrics_real", "--metrics", str(path), "--command", command, "--weights-dir", str(weights)]
    ))
    manifest = json.loads((weights / "manifest.json").read_text())
    # The synthetic block and every model's synthetic metrics are untouched.
    assert manifest["evaluation"] == shipped["evaluation"]
    for name, entry in manifest["models"].items():
        assert entry["metrics"] == shipped["models"][name]["metrics"], name
    real = manifest["evaluation_real"]
    assert real["command"] == command
    assert real["data"] == {"sources": ["/real/chestxray14"], "split": {"split": "val", "val_fraction": 0.2, "split_seed": 0}}
    assert real["ensemble"]["false_boxes_per_negative"] == pytest.approx(1.0)
    assert manifest["models"]["study"]["metrics_real"]["normal_abnormal_auc"] == pytest.approx(1.0)
    assert manifest["models"]["view"]["metrics_real"]["view_accuracy_frontal"] == pytest.approx(0.5)
    assert evaluation_key("metrics") == "evaluation"
    with pytest.raises(ValueError, match="metrics_"):
        evaluation_key("real")
    with pytest.raises(SystemExit):  # the synthetic block needs its PhantomCXR seed
        record_main(record_parser().parse_args(["--metrics", str(path), "--command", "x", "--weights-dir", str(weights)]))


class _BoxlessAnalyzer(_ConstantAnalyzer):
    """As _ConstantAnalyzer, without any opacity box."""

    manifest = {"version": "boxless-0", "models": {}}

    def analyze_study(self, images: list[np.ndarray], *, no_crop_ablation: bool = False) -> SimpleNamespace:
        result = super().analyze_study(images, no_crop_ablation=no_crop_ablation)
        empty = {"detector_a": (), "detector_b": ()}
        images_out = tuple(
            _image(**{**vars(p), "opacities": (), "opacities_by_detector": empty, "opacities_no_crop": ()})
            for p in result.images
        )
        return SimpleNamespace(label=result.label, probabilities=result.probabilities, images=images_out)


def test_baseline_weights_give_paired_differences(tmp_path: Path) -> None:
    root = tiny_siim(tmp_path / "siim", phantom=True)
    baseline = _BoxlessAnalyzer()
    result = evaluate_dataset(root, analyzer=_ConstantAnalyzer(), baseline_analyzer=baseline, show_progress=False)
    assert sorted(baseline.calls) == [1, 1, 2]  # the baseline ran on the same studies
    comparison = result.metrics["comparison"]
    assert comparison["baseline_version"] == "boxless-0" and comparison["baseline_weights"] is None
    ap = comparison["metrics"]["opacity_map50"]
    assert (ap["value"], ap["baseline"]) == (pytest.approx(0.25), 0.0)
    assert ap["difference"] == pytest.approx(0.25)
    # Same lungs on both sides: no difference on any resample.
    assert comparison["metrics"]["lung_dice"]["difference"] == 0.0
    assert comparison["metrics"]["lung_dice"]["ci"] == [0.0, 0.0]
    out = tmp_path / "out"
    text = write_report(out, result.metrics, result.curves, manifest=result.manifest).read_text(encoding="utf-8")
    assert "## Against the baseline weights" in text
    assert "| Opacity AP@0.5 (ensemble) | 0.2500 | 0.0000 | +0.2500 |" in text
    # Measurements of different records cannot be paired: the hand-built records with and without study S3.
    full = measure(_records(), _outcomes())
    fewer = [r for r in _records() if r.study_id != "S3"]
    partial = measure(fewer, {k: v for k, v in _outcomes().items() if k != "S3"})
    with pytest.raises(ValueError, match="not the same records"):
        compare_measurements(full, partial)
