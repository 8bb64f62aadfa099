"""Opacity detectors: architectures, crop geometry, WBF ensemble, trainer (resume, pseudo-labels)."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxr_models.evaluation.metrics import match_images
from cxr_models.inference.detection import (
    DetectionEnsemble,
    OpacityDetector,
    fuse_boxes,
    outputs_to_boxes,
)
from cxr_models.nets.detectors import INPUT_SIZE, build_detector, build_detector_a, build_detector_b
from cxr_models.records import Box, ScoredBox
from cxr_models.train import detector as trainer

BUDGET_BYTES = 10 * 1024 * 1024


def _close(box: Box, expected: tuple[float, float, float, float], *, tol: float = 1e-3) -> bool:
    return bool(np.allclose(box.as_list(), expected, atol=tol))


# --------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("arch", ["a", "b"])
def test_fp16_state_dict_within_budget(arch: str, tmp_path: Path) -> None:
    model = build_detector(arch)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path = tmp_path / f"detector_{arch}.pt"
    torch.save(state, path)
    assert path.stat().st_size <= BUDGET_BYTES
    # The fp16 file loads back into the architecture the builder makes.
    OpacityDetector.from_state_dict(torch.load(path), arch=arch, device=torch.device("cpu"))


def test_architectures_differ_and_take_grey_320_inputs() -> None:
    a, b = build_detector_a(), build_detector_b()
    assert type(a).__name__ == "FasterRCNN" and type(b).__name__ == "FCOS"
    for model in (a, b):
        assert model.transform.min_size == (INPUT_SIZE,) and model.transform.max_size == INPUT_SIZE
        assert model.transform.image_mean == [0.5] and model.transform.image_std == [0.25]
        model.eval()
        with torch.inference_mode():
            out = model([torch.rand(1, INPUT_SIZE, INPUT_SIZE)])
        assert out[0]["boxes"].shape[1] == 4 and len(out[0]["boxes"]) <= 20
    with pytest.raises(ValueError, match="arch"):
        build_detector("c")


# --------------------------------------------------------------------------- geometry


def test_label_refinement_clips_box_to_lung_rectangle() -> None:
    crop = Box(100.0, 50.0, 420.0, 370.0)  # 320 x 320: crop pixels = original pixels shifted
    inside = Box(200.0, 100.0, 260.0, 180.0)
    sticking_out = Box(80.0, 100.0, 160.0, 200.0)  # 20 px left of the lung rectangle
    outside = Box(10.0, 10.0, 60.0, 40.0)  # vanishes
    sliver = Box(419.0, 100.0, 440.0, 200.0)  # 1 px wide after clipping: dropped
    targets = trainer.crop_targets([inside, sticking_out, outside, sliver], crop, size=320)
    assert len(targets) == 2
    assert _close(targets[0], (100.0, 50.0, 160.0, 130.0))
    assert _close(targets[1], (0.0, 50.0, 60.0, 150.0))


def test_label_refinement_scales_into_resized_crop() -> None:
    crop = Box(0.0, 0.0, 640.0, 480.0)  # x scale 0.5, y scale 2/3
    targets = trainer.crop_targets([Box(600.0, 30.0, 700.0, 150.0)], crop, size=320)
    assert len(targets) == 1 and _close(targets[0], (300.0, 20.0, 320.0, 100.0))


def test_outputs_map_back_to_original_pixels_at_crop_offset() -> None:
    crop = Box(100.0, 50.0, 420.0, 210.0)  # 320 wide, 160 high: y scale 0.5
    output = {
        "boxes": torch.tensor([[32.0, 64.0, 96.0, 128.0], [0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 50.0, 50.0]]),
        "scores": torch.tensor([0.9, 0.01, 0.7]),
        "labels": torch.tensor([1, 1, 0]),  # last: background label, dropped
    }
    boxes = outputs_to_boxes(output, crop, score_threshold=0.05, max_boxes=20)
    assert len(boxes) == 1
    assert boxes[0].score == pytest.approx(0.9)
    assert _close(boxes[0].box, (132.0, 82.0, 196.0, 114.0))


class _FixedOutput(nn.Module):
    """Returns one fixed box per input, and records the inputs it saw."""

    def __init__(self, box: list[float], score: float) -> None:
        super().__init__()
        self.box, self.score = box, score
        self.seen: list[torch.Tensor] = []

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.seen.extend(images)
        return [
            {"boxes": torch.tensor([self.box]), "scores": torch.tensor([self.score]), "labels": torch.tensor([1])}
            for _ in images
        ]


def test_detector_predict_returns_original_coordinates() -> None:
    model = _FixedOutput([160.0, 160.0, 320.0, 240.0], 0.8)
    detector = OpacityDetector(model, name="detector_a", device=torch.device("cpu"))
    image = np.zeros((600, 800), dtype=np.float32)
    image[100:300, 200:600] = 1.0
    crop = Box(200.0, 100.0, 600.0, 300.0)  # 400 x 200 -> 320 x 320
    [boxes] = detector.predict([image], crops=[crop])
    assert _close(boxes[0].box, (400.0, 200.0, 600.0, 250.0))
    # The detector saw the crop (all ones) at 320 x 320, not the whole image.
    assert model.seen[0].shape == (1, INPUT_SIZE, INPUT_SIZE)
    assert float(model.seen[0].min()) == pytest.approx(1.0)


def test_flipped_prediction_is_unflipped_into_original_coordinates() -> None:
    model = _FixedOutput([0.0, 0.0, 80.0, 160.0], 0.8)  # box in the (flipped) input's left part
    detector = OpacityDetector(model, name="detector_b", device=torch.device("cpu"))
    inputs = np.zeros((1, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    inputs[0, :, :10] = 1.0  # bright strip at the left edge of the unflipped input
    crop = Box(100.0, 0.0, 420.0, 320.0)
    [boxes] = detector.predict_inputs(inputs, crops=[crop], flip=True)
    assert float(model.seen[0][0, :, -10:].min()) == pytest.approx(1.0)  # the model saw it on the right
    assert _close(boxes[0].box, (100.0 + 240.0, 0.0, 100.0 + 320.0, 160.0))


def test_ensemble_flip_tta_fuses_four_lists() -> None:
    cpu = torch.device("cpu")
    # A box symmetric about the crop's vertical axis is found at the same place with and without flip.
    det_a = OpacityDetector(_FixedOutput([120.0, 0.0, 200.0, 100.0], 0.8), name="detector_a", device=cpu)
    det_b = OpacityDetector(_FixedOutput([0.0, 200.0, 40.0, 300.0], 0.4), name="detector_b", device=cpu)
    ensemble = DetectionEnsemble(det_a, det_b, flip_tta=True)
    [pred] = ensemble.predict([np.zeros((320, 320), dtype=np.float32)], crops=[Box(0.0, 0.0, 320.0, 320.0)])
    assert len(pred.by_detector["detector_a"]) == 1 and pred.by_detector["detector_a"][0].score == pytest.approx(0.8)
    # detector_b's box moves to the other side when flipped: two boxes, each seen in one of b's two runs.
    assert sorted(round(b.box.x0) for b in pred.by_detector["detector_b"]) == [0, 280]
    scores = sorted(round(b.score, 4) for b in pred.boxes)
    assert scores == [0.1, 0.1, 0.4]  # a: 2 of 4 lists at 0.8 -> 0.4; each b box: 1 of 4 at 0.4 -> 0.1


# --------------------------------------------------------------------------- WBF


def test_wbf_fuses_overlapping_boxes_to_weighted_average_and_keeps_lone_box() -> None:
    shape = (400, 500)
    a = (ScoredBox(Box(100.0, 100.0, 200.0, 200.0), 0.8), ScoredBox(Box(300.0, 300.0, 350.0, 380.0), 0.5))
    b = (ScoredBox(Box(110.0, 110.0, 210.0, 210.0), 0.4),)  # IoU with a[0] = 8100 / 11900 = 0.68
    fused = fuse_boxes([a, b], shape=shape, weights=(1.0, 1.0))  # default conf_type "avg"
    assert len(fused) == 2
    pair, lone = fused
    corner0 = (0.8 * 100.0 + 0.4 * 110.0) / 1.2  # score-weighted corners
    corner1 = (0.8 * 200.0 + 0.4 * 210.0) / 1.2
    assert _close(pair.box, (corner0, corner0, corner1, corner1), tol=0.05)
    assert pair.score == pytest.approx(0.6, abs=1e-4)  # mean of the pair
    assert _close(lone.box, (300.0, 300.0, 350.0, 380.0), tol=0.05)  # a lone box keeps its position...
    assert lone.score == pytest.approx(0.25, abs=1e-4)  # ...and gets half its score (1 of 2 detectors)

    maxed = fuse_boxes([a, b], shape=shape, weights=(1.0, 1.0), conf_type="max")
    assert [round(s.score, 4) for s in maxed] == [0.8, 0.5]  # "max": a lone box keeps its score
    assert _close(maxed[0].box, (corner0, corner0, corner1, corner1), tol=0.05)


def test_wbf_keeps_separate_boxes_apart_and_handles_empty() -> None:
    a = (ScoredBox(Box(0.0, 0.0, 50.0, 50.0), 0.9),)
    b = (ScoredBox(Box(60.0, 60.0, 100.0, 100.0), 0.7),)
    fused = fuse_boxes([a, b], shape=(100, 100), weights=(1.0, 1.0))
    assert [round(f.score, 4) for f in fused] == [0.45, 0.35]
    assert _close(fused[0].box, (0.0, 0.0, 50.0, 50.0), tol=0.01) and _close(fused[1].box, (60.0, 60.0, 100.0, 100.0), tol=0.01)
    assert fuse_boxes([(), ()], shape=(100, 100), weights=(1.0, 1.0)) == ()
    with pytest.raises(ValueError, match="conf_type"):
        fuse_boxes([a, b], shape=(100, 100), weights=(1.0, 1.0), conf_type="median")


def test_ensemble_predict_reports_each_detector_and_fuses() -> None:
    cpu = torch.device("cpu")
    det_a = OpacityDetector(_FixedOutput([0.0, 0.0, 160.0, 160.0], 0.6), name="detector_a", device=cpu)
    det_b = OpacityDetector(_FixedOutput([16.0, 16.0, 176.0, 176.0], 0.6), name="detector_b", device=cpu)
    ensemble = DetectionEnsemble(det_a, det_b)
    image = np.zeros((640, 640), dtype=np.float32)
    [pred] = ensemble.predict([image], crops=[Box(0.0, 0.0, 640.0, 640.0)])
    assert set(pred.by_detector) == {"detector_a", "detector_b"}
    assert _close(pred.by_detector["detector_a"][0].box, (0.0, 0.0, 320.0, 320.0))
    assert _close(pred.by_detector["detector_b"][0].box, (32.0, 32.0, 352.0, 352.0))
    assert len(pred.boxes) == 1 and _close(pred.boxes[0].box, (16.0, 16.0, 336.0, 336.0), tol=0.1)
    with pytest.raises(ValueError, match="crops"):
        ensemble.predict([image], crops=[])


# --------------------------------------------------------------------------- pseudo-labels


class _TeacherStub:
    """Returns pre-set detections per call, in the OpacityDetector.predict signature."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores

    def predict(self, images: list[np.ndarray], *, crops: list[Box]) -> list[tuple[ScoredBox, ...]]:
        return [
            (ScoredBox(Box(1.0, 2.0, 30.0, 40.0), s), ScoredBox(Box(50.0, 50.0, 60.0, 60.0), s / 4))
            for s, _ in zip(self.scores, images, strict=True)
        ]


def test_pseudo_label_keeps_confident_boxes_only(phantom_small: Path) -> None:
    from cxr_models.datasets import read_dataset

    records = [r for r in read_dataset(phantom_small) if r.view == "frontal"][:2]
    unlabelled = [dataclasses.replace(r, boxes=None) for r in records]
    out = trainer.pseudo_label(_TeacherStub([0.9, 0.3]), unlabelled, threshold=0.5)  # type: ignore[arg-type]
    assert [r.image_id for r in out] == [records[0].image_id]
    assert out[0].boxes == (Box(1.0, 2.0, 30.0, 40.0),)
    assert records[0].opacity_mask is not None and out[0].opacity_mask is None  # no annotation leaks in


# --------------------------------------------------------------------------- training samples


def test_box_mask_fills_boxes() -> None:
    mask = trainer.box_mask([Box(10.0, 20.0, 30.0, 25.0)], size=40)
    assert mask.sum() == 20 * 5 and mask[20:25, 10:30].all()


def test_training_samples_keep_boxes_and_opacity_map_aligned(phantom_small: Path, tmp_path: Path) -> None:
    from cxr_models.datasets import read_dataset

    records = [r for r in trainer.labelled_frontal(read_dataset(phantom_small)) if r.boxes]
    assert records, "the phantom fixture should hold frontal images with opacity boxes"
    cache = trainer.build_cache(records, root=tmp_path / "cache", disable_progress=True)
    assert all(item.has_mask for item in cache.items)
    dataset = trainer.DetectionTrainSet(
        cache, [r.boxes for r in records], aug=trainer.Augment(whole_fraction=0.5), no_crop=False, seed=3
    )
    inside = total = 0.0
    for epoch in range(3):  # different jitter / flips / whole-image draws
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            sample = dataset[i]
            assert sample.image.shape == (1, INPUT_SIZE, INPUT_SIZE) and sample.opacity.shape == (INPUT_SIZE, INPUT_SIZE)
            assert 0.0 <= float(sample.image.min()) and float(sample.image.max()) <= 1.0
            boxes = [Box(*b) for b in sample.target["boxes"].tolist()]
            covered = torch.from_numpy(trainer.box_mask(boxes) > 0)
            inside += float(sample.opacity[covered].sum())
            total += float(sample.opacity.sum())
    # The opacity map follows the same crop, jitter and flip as the boxes: nearly all of it lies inside them.
    assert total > 0 and inside / total > 0.9


def test_positive_weight_boosts_images_with_boxes_only() -> None:
    from types import SimpleNamespace

    records = [SimpleNamespace(boxes=b) for b in ((Box(0.0, 0.0, 5.0, 5.0),), (), (Box(1.0, 1.0, 4.0, 4.0),) * 2)]
    assert trainer.boost_positives(records, None, factor=1.0) is None  # type: ignore[arg-type]
    assert trainer.boost_positives(records, None, factor=3.0).tolist() == [3.0, 1.0, 3.0]  # type: ignore[arg-type]
    source = np.array([10.0, 10.0, 1.0])  # e.g. a real source of weight 10 and a synthetic one of weight 1
    assert trainer.boost_positives(records, source, factor=2.0).tolist() == [20.0, 10.0, 2.0]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive-weight"):
        trainer.boost_positives(records, None, factor=0.0)  # type: ignore[arg-type]
    args = trainer.get_args_parser().parse_args(["--arch", "a", "--data", "d", "--out", "o"])
    assert args.positive_weight == 1.0


def test_per_source_map50_weighs_each_source_alike() -> None:
    hit, miss = Box(10.0, 10.0, 30.0, 30.0), Box(60.0, 60.0, 80.0, 80.0)
    # Three synthetic images found, one real image missed, one real known negative.
    truth = [(hit,), (hit,), (hit,), (hit,), ()]
    predictions = [(ScoredBox(hit, 0.9),)] * 3 + [(ScoredBox(miss, 0.8),), ()]
    sources = ["mix", "mix", "mix", "ChestX-ray14", "ChestX-ray14"]
    out = trainer.per_source_map50(match_images(predictions, truth), sources=sources)
    assert out["map50_mix"] == pytest.approx(1.0)
    assert out["map50_chestx_ray14"] == 0.0
    assert out["map50_source_mean"] == pytest.approx(0.5)  # pooled over the images it would be 0.75
    # A source without any reference box has no AP and does not enter the mean.
    no_box = match_images(predictions[:3] + [()], truth[:3] + [()])
    assert set(trainer.per_source_map50(no_box, sources=["mix"] * 3 + ["neg"])) == {"map50_mix", "map50_source_mean"}
    with pytest.raises(ValueError, match="same images"):
        trainer.per_source_map50(match_images(predictions, truth), sources=sources[:2])
    assert trainer.source_key("covid-chestxray-dataset") == "covid_chestxray_dataset"
    args = trainer.get_args_parser().parse_args(["--arch", "b", "--data", "d", "--out", "o"])
    assert args.select_by == "map50"
    with pytest.raises(ValueError, match="select_by"):
        trainer.DetectorTask(
            dataset=None, val_cache=None, val_truth=[], arch="b", no_crop=False, validate_whole=False, aux=None,  # type: ignore[arg-type]
            sample_weights=None, select_by="loss",
        )


# --------------------------------------------------------------------------- trainer


def _train(arch: str, data: Path, out: Path, *extra: str) -> dict:
    args = trainer.get_args_parser().parse_args(
        ["--arch", arch, "--data", str(data), "--out", str(out), "--threads", "1", "--no-progress",
         "--batch-size", "2", "--val-fraction", "0.25", *extra]
    )
    return trainer.main(args)


@pytest.mark.parametrize("arch", ["a", "b"])
def test_trainer_runs_and_resumes(arch: str, phantom_small: Path, tmp_path: Path) -> None:
    out = tmp_path / f"run_{arch}"
    first = _train(arch, phantom_small, out, "--epochs", "1", "--max-steps", "2", "--select-by", "map50_source_mean")
    assert first["epochs"] == 1 and first["steps"] == 2 and first["metric"] == "map50_source_mean"
    logged = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
    assert logged["val_map50_source_mean"] == pytest.approx(logged[f"val_map50_{trainer.source_key(phantom_small.name)}"])
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert {"model", "optimizer", "scheduler", "args", "epoch", "step"} <= set(checkpoint)
    assert checkpoint["args"]["arch"] == arch and checkpoint["epoch"] == 1
    assert "auxiliary" in checkpoint["extra"]  # the training-only opacity head resumes too
    assert (out / "model_best.pt").is_file()
    assert [p.name.split("-")[0] for p in (out / "cache").iterdir()] == ["detector", "detector"]

    second = _train(arch, phantom_small, out, "--epochs", "2", "--max-steps", "4", "--resume", str(out / "checkpoint.pt"))
    assert second["epochs"] == 2 and second["steps"] == 4
    lines = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in lines] == [1, 2]
    assert all(np.isfinite(entry["train_loss"]) and "train_loss_aux_opacity" in entry for entry in lines)
    resumed = torch.load(out / "checkpoint.pt", weights_only=False)
    assert resumed["step"] == 4 and resumed["epoch"] == 2
    build_detector(arch).load_state_dict(resumed["model"])


def test_trainer_pseudo_round_adds_images(phantom_small: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(phantom_small, data)
    level = data / "train_image_level.csv"
    with level.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
        fieldnames = list(rows[0].keys())
    # Unlabel the images of the first two studies: they keep their catalogue entry (frontal, boxes None).
    studies = sorted({r["StudyInstanceUID"] for r in rows})[:2]
    kept = [r for r in rows if r["StudyInstanceUID"] not in studies]
    n_unlabelled = len(rows) - len(kept)
    with level.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(kept)

    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in build_detector_a().state_dict().items()}, teacher)
    base = _train("a", data, tmp_path / "base", "--epochs", "1", "--max-steps", "1")
    pseudo = _train(
        "a", data, tmp_path / "pseudo", "--epochs", "1", "--max-steps", "1",
        "--pseudo-data", str(data), "--teacher", str(teacher), "--pseudo-threshold", "0.1",
    )
    assert base["pseudo_images"] == 0
    assert 0 < pseudo["pseudo_images"] <= n_unlabelled
    assert pseudo["train_images"] == base["train_images"] + pseudo["pseudo_images"]
