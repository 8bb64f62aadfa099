"""Out-of-distribution score, fit_ood, and the pipeline's "know when not to answer" rules,
on the shipped view weights and small PhantomCXR data."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_models.datasets import load_image
from cxr_models.datasets.sources import as_sources, read_sources
from cxr_models.evaluation import fit_ood
from cxr_models.inference.crop import implausibility_reason
from cxr_models.inference.lungs import LungPrediction
from cxr_models.inference.ood import RIDGE, GaussianScorer, OODDetector, fit_gaussian, ledoit_wolf, load_ood
from cxr_models.inference.pipeline import Analyzer
from cxr_models.inference.reasons import REASON_NOT_CHEST, out_of_distribution
from cxr_models.inference.view import FEATURES_NAME, ViewClassifier
from cxr_models.nets.common import normalise
from cxr_models.weights import MANIFEST_NAME, WeightsError, default_weights_dir, load_manifest, load_state_dict

CPU = torch.device("cpu")
OOD_REASON = re.compile(r"^image unlike the training data \(score \d+\.\d\d, limit \d+\.\d\d\)$")


# --- the Gaussian ------------------------------------------------------------------------------


def _anisotropic(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.linspace(0.2, 3.0, dim)
    mixing = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    return (rng.normal(size=(n, dim)) * scales) @ mixing.T + rng.normal(size=dim)


def test_ledoit_wolf_matches_its_definition() -> None:
    x = _anisotropic(30, 6, seed=0)
    centred = x - x.mean(axis=0)
    n, dim = centred.shape
    sample = centred.T @ centred / n
    mu = np.trace(sample) / dim
    d2 = np.linalg.norm(sample - mu * np.eye(dim), "fro") ** 2 / dim
    b2_bar = sum(np.linalg.norm(np.outer(v, v) - sample, "fro") ** 2 for v in centred) / n**2 / dim
    expected_shrinkage = min(b2_bar, d2) / d2
    covariance, shrinkage = ledoit_wolf(centred)
    assert shrinkage == pytest.approx(expected_shrinkage, rel=1e-9)
    np.testing.assert_allclose(covariance, (1 - expected_shrinkage) * sample + expected_shrinkage * mu * np.eye(dim))
    assert 0.0 < shrinkage < 1.0
    # Many samples of an anisotropic Gaussian need little shrinkage, few samples need much.
    assert ledoit_wolf(_anisotropic(5000, 6, seed=1) - _anisotropic(5000, 6, seed=1).mean(0))[1] < 0.05
    few = _anisotropic(8, 40, seed=2)
    assert ledoit_wolf(few - few.mean(0))[1] > 0.3
    with pytest.raises(ValueError, match="N >= 2"):
        ledoit_wolf(np.zeros((1, 3)))


def test_scores_are_mahalanobis_per_dimension() -> None:
    x = _anisotropic(50, 5, seed=3)
    scorer = fit_gaussian(x)
    covariance, _ = ledoit_wolf(x - x.mean(axis=0))
    covariance += RIDGE * np.trace(covariance) / 5 * np.eye(5)
    y = _anisotropic(7, 5, seed=4) * 2.0
    direct = np.array([np.sqrt((v - x.mean(0)) @ np.linalg.inv(covariance) @ (v - x.mean(0)) / 5) for v in y])
    np.testing.assert_allclose(scorer.scores(y), direct, rtol=1e-8)
    assert scorer.n_fit == 50 and scorer.dim == 5
    by_hand = GaussianScorer(mean=np.zeros(2), precision=np.eye(2), n_fit=2, shrinkage=0.0)
    assert by_hand.scores(np.array([[3.0, 4.0]]))[0] == pytest.approx(5.0 / np.sqrt(2.0))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        by_hand.scores(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        fit_gaussian(np.array([[0.0, np.nan], [1.0, 2.0]]))


def test_state_dict_round_trips_through_torch_save(tmp_path: Path) -> None:
    x = _anisotropic(40, 8, seed=5)
    scorer = fit_gaussian(x)
    state = scorer.state_dict()
    assert state["mean"].dtype == torch.float32 and state["precision"].dtype == torch.float32
    torch.save(state, tmp_path / "ood.pt")
    loaded = GaussianScorer.from_state_dict(torch.load(tmp_path / "ood.pt", weights_only=True))
    assert loaded.features == FEATURES_NAME and loaded.n_fit == 40
    np.testing.assert_allclose(loaded.scores(x), scorer.scores(x), rtol=1e-4)


def test_detector_reason_text() -> None:
    detector = OODDetector(scorer=GaussianScorer(np.zeros(1), np.eye(1), 2, 0.0), threshold=1.5)
    assert detector.reason(1.5) is None
    assert detector.reason(2.345) == "image unlike the training data (score 2.35, limit 1.50)"
    with pytest.raises(ValueError, match="threshold"):
        OODDetector(scorer=detector.scorer, threshold=0.0)


# --- the view features -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def view() -> ViewClassifier:
    return ViewClassifier.from_state_dict(load_state_dict("view"), device=CPU)


def test_view_features_are_the_penultimate_layer_of_the_same_pass(view: ViewClassifier) -> None:
    rng = np.random.default_rng(0)
    images = [rng.random((150, 130), dtype=np.float32), rng.random((90, 200), dtype=np.float32)]
    predictions = view.predict(images)
    from cxr_models.inference.view import view_input

    batch = normalise(torch.from_numpy(np.stack([view_input(i) for i in images])[:, None]))
    with torch.inference_mode():
        trunk = view.model.trunk(batch).numpy()
        logits = view.model(batch)  # no hook: the network's own output
    probabilities = torch.softmax(logits, dim=1).numpy()
    for k, p in enumerate(predictions):
        assert p.features is not None and p.features.shape == (view.model.head.in_features,)
        np.testing.assert_allclose(p.features, trunk[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(list(p.probabilities.values()), probabilities[k], atol=1e-6)
    assert not view.model.head._forward_pre_hooks, "the hook is removed after each batch"
    np.testing.assert_allclose(view.features(images), trunk, rtol=1e-5, atol=1e-6)


# --- fit_ood on PhantomCXR ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """14 small studies, about a third of them non-chest ("other") radiographs."""
    from cxr_models.phantom.generate import generate_dataset

    root = tmp_path_factory.mktemp("phantom_mixed") / "data"
    return generate_dataset(root, n_studies=14, seed=6, size_range=(256, 320), other_fraction=0.3, workers=1)


@pytest.fixture(scope="module")
def weights_with_ood(phantom_mixed: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the shipped weights plus ood.pt fitted on ``phantom_mixed`` by the real CLI."""
    folder = tmp_path_factory.mktemp("weights")
    for entry in load_manifest()["models"].values():
        shutil.copy(default_weights_dir() / entry["file"], folder / entry["file"])
    shutil.copy(default_weights_dir() / MANIFEST_NAME, folder / MANIFEST_NAME)
    args = fit_ood.get_args_parser().parse_args(
        ["--data", f"{phantom_mixed},name=phantom", "--val-fraction", "0.4", "--weights", str(folder),
         "--device", "cpu", "--no-progress", "--write-manifest"]
    )  # fmt: skip
    report = fit_ood.main(args)
    return folder, report


def test_fit_ood_writes_ood_pt_and_its_manifest_entry(weights_with_ood: tuple[Path, dict], capsys) -> None:
    folder, report = weights_with_ood
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    entry = manifest["ood"]
    from cxr_models.weights import sha256_of

    assert entry["file"] == "ood.pt" and entry["sha256"] == sha256_of(folder / "ood.pt")
    assert entry["features"] == "view penultimate (global average pool)"
    assert entry["threshold"] == report["threshold"] > 0
    assert "0.99 quantile" in entry["threshold_rule"] and "validation" in entry["threshold_rule"]
    fitted = entry["fitted_on"]
    assert fitted["train_frontal"] >= 2 and fitted["val_frontal"] >= 1
    assert fitted["train_frontal_by_source"] == {"phantom": fitted["train_frontal"]}
    assert entry["command"].startswith("python -m cxr_models.evaluation.fit_ood --data ")
    assert "name=phantom" in entry["command"] and entry["command"].endswith("--write-manifest")
    assert entry["view_uid"] == manifest["models"]["view"]["uid"]
    rates = entry["rejection_rate"]
    assert 0.0 <= rates["val_frontal"] <= 0.5
    if fitted["val_other"]:
        assert rates["val_other"] == 1.0
    assert fitted["all_other"] >= 1 and rates["all_other"] == 1.0  # non-chest images of both parts
    # The other manifest keys are untouched.
    assert manifest["models"] == load_manifest()["models"]


def test_non_chest_images_score_above_the_threshold(weights_with_ood: tuple[Path, dict], phantom_mixed: Path, view) -> None:
    folder, report = weights_with_ood
    analyzer_ood = Analyzer.load(weights_dir=folder, device="cpu").ood
    assert analyzer_ood is not None and analyzer_ood.threshold == report["threshold"]
    records = read_sources(as_sources([f"{phantom_mixed},name=phantom"]))
    others = [r for r in records if r.view == "other"]
    frontals = [r for r in records if r.view == "frontal"]
    assert others and frontals
    other_scores = analyzer_ood.scores(view.features([load_image(r) for r in others]))
    frontal_scores = analyzer_ood.scores(view.features([load_image(r) for r in frontals]))
    assert np.all(other_scores > analyzer_ood.threshold), (other_scores, analyzer_ood.threshold)
    assert np.median(frontal_scores) < analyzer_ood.threshold < np.min(other_scores)


# --- the pipeline ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> Analyzer:
    return Analyzer.load(device="cpu")


@pytest.fixture(scope="module")
def chests(phantom_mixed: Path) -> list[np.ndarray]:
    records = read_sources(as_sources([f"{phantom_mixed},name=phantom"]))
    return [load_image(r) for r in records if r.view == "frontal"][:4]


def _with(analyzer: Analyzer, **changes) -> Analyzer:  # noqa: ANN003 - Analyzer constructor keywords
    parts = dict(
        view=analyzer.view, lungs=analyzer.lungs, detection=analyzer.detection, opacity=analyzer.opacity,
        study=analyzer.study, manifest=analyzer.manifest, device=analyzer.device, ood=analyzer.ood,
        crop_fallback=analyzer.crop_fallback,
    )  # fmt: skip
    return Analyzer(**{**parts, **changes})


def test_without_an_ood_entry_no_score_is_computed(shipped: Analyzer, chests: list[np.ndarray]) -> None:
    manifest = {k: v for k, v in shipped.manifest.items() if k != "ood"}
    assert load_ood(manifest, weights_dir=default_weights_dir()) is None
    bare = _with(shipped, manifest=manifest, ood=None)
    assert shipped.crop_fallback is False
    prediction = bare.analyze_study(chests[:1])
    assert prediction.images[0].analysed and prediction.images[0].ood_score is None
    assert prediction.images[0].reason is None and not prediction.images[0].crop_fallback


def test_an_image_over_the_limit_is_not_analysed(shipped: Analyzer, chests: list[np.ndarray], view) -> None:
    scorer = fit_gaussian(view.features(chests[2:]))
    a, b = scorer.scores(view.features(chests[:2]))
    low, high = (0, 1) if a < b else (1, 0)
    limit = float((a + b) / 2)
    analyzer = _with(shipped, ood=OODDetector(scorer=scorer, threshold=limit))
    prediction = analyzer.analyze_study(chests[:2])
    kept, refused = prediction.images[low], prediction.images[high]
    assert kept.analysed and kept.reason is None and kept.ood_score == pytest.approx(min(a, b))
    assert not refused.analysed and refused.view == "frontal" and refused.ood_score == pytest.approx(max(a, b))
    assert refused.reason == out_of_distribution(refused.ood_score, limit)
    assert OOD_REASON.match(refused.reason)
    assert refused.reason == f"image unlike the training data (score {max(a, b):.2f}, limit {limit:.2f})"
    assert refused.opacities == () and refused.opacity_percent is None and refused.lung_mask is None
    assert prediction.label is not None and "ood" in prediction.timings_ms


def test_non_chest_keeps_the_view_reason_and_gets_its_score(weights_with_ood, phantom_mixed: Path) -> None:
    folder, _ = weights_with_ood
    analyzer = Analyzer.load(weights_dir=folder, device="cpu")
    records = read_sources(as_sources([f"{phantom_mixed},name=phantom"]))
    other = next(r for r in records if r.view == "other")
    prediction = analyzer.analyze_study([load_image(other)])
    (image,) = prediction.images
    assert image.view == "other" and image.reason == REASON_NOT_CHEST and not image.analysed
    assert image.ood_score is not None and image.ood_score > analyzer.ood.threshold
    assert prediction.label is None


class _BlobForSecond:
    """The real lung stage, except that the second image of a call gets one round blob."""

    def __init__(self, real) -> None:  # noqa: ANN001 - a LungSegmenter
        self.real = real

    def predict(self, images):  # noqa: ANN001, ANN201
        out = self.real.predict(images)
        if len(out) > 1:
            h, w = images[1].shape
            yy, xx = np.mgrid[:h, :w]
            blob = ((yy - h / 2) / (0.35 * h)) ** 2 + ((xx - w / 2) / (0.3 * w)) ** 2 <= 1.0
            out[1] = LungPrediction(mask=blob, probability_max=1.0)
        return out


def test_implausible_lung_mask_is_not_analysed_and_the_other_image_is(shipped: Analyzer, chests: list[np.ndarray]) -> None:
    analyzer = _with(shipped, lungs=_BlobForSecond(shipped.lungs))
    prediction = analyzer.analyze_study(chests[:2])
    good, bad = prediction.images
    assert good.analysed and good.reason is None and good.lung_box is not None and not good.crop_fallback
    assert not bad.analysed and bad.view == "frontal"
    detail = implausibility_reason(bad.lung_mask)
    assert detail is not None and bad.reason == f"no plausible lung fields: {detail}"
    assert bad.reason.startswith("no plausible lung fields: one lung field, not two")
    assert bad.opacities == () and bad.opacity_percent is None
    # The study class comes from the analysed image alone.
    alone = shipped.analyze_study(chests[:1])
    assert prediction.probabilities == pytest.approx(alone.probabilities, abs=1e-6)


def test_crop_fallback_manifest_key_analyses_the_whole_image(shipped: Analyzer, chests: list[np.ndarray], tmp_path) -> None:
    analyzer = _with(shipped, lungs=_BlobForSecond(shipped.lungs), crop_fallback=True, ood=None)
    _, bad = analyzer.analyze_study(chests[:2]).images
    assert bad.analysed and bad.reason is None and bad.crop_fallback and bad.lung_box is None
    assert bad.crop_reason is not None and bad.crop_reason.startswith("one lung field")
    # The manifest key is read by Analyzer.load.
    manifest = load_manifest()
    for entry in [*manifest["models"].values(), *([manifest["ood"]] if "ood" in manifest else [])]:
        (tmp_path / entry["file"]).symlink_to(default_weights_dir() / entry["file"])
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({**manifest, "crop_fallback": True}))
    assert Analyzer.load(weights_dir=tmp_path, device="cpu").crop_fallback is True
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({**manifest, "crop_fallback": "yes"}))
    with pytest.raises(WeightsError, match="crop_fallback"):
        Analyzer.load(weights_dir=tmp_path, device="cpu")


def test_ood_file_is_checked(weights_with_ood: tuple[Path, dict], tmp_path: Path) -> None:
    folder, _ = weights_with_ood
    for path in folder.iterdir():
        (tmp_path / path.name).symlink_to(path)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    (tmp_path / MANIFEST_NAME).unlink()
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({**manifest, "ood": {**manifest["ood"], "sha256": "0" * 64}}))
    with pytest.raises(WeightsError, match="sha256"):
        Analyzer.load(weights_dir=tmp_path, device="cpu")
    stale = {**manifest, "ood": {**manifest["ood"], "view_uid": "2.25.1"}}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(stale))
    with pytest.raises(WeightsError, match="rerun"):
        Analyzer.load(weights_dir=tmp_path, device="cpu")
    no_threshold = {**manifest, "ood": {k: v for k, v in manifest["ood"].items() if k != "threshold"}}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(no_threshold))
    with pytest.raises(WeightsError, match="threshold"):
        Analyzer.load(weights_dir=tmp_path, device="cpu")


def test_view_predictions_without_features_are_refused(shipped: Analyzer, chests: list[np.ndarray], view) -> None:
    class _NoFeatures:
        def predict(self, images):  # noqa: ANN001, ANN201
            return [replace(p, features=None) for p in view.predict(images)]

    scorer = fit_gaussian(view.features(chests))
    analyzer = _with(shipped, view=_NoFeatures(), ood=OODDetector(scorer=scorer, threshold=5.0))
    with pytest.raises(ValueError, match="features"):
        analyzer.analyze_study(chests[:1])
