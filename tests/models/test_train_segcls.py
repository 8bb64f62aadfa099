"""Trainers of the view, lung, opacity and study models: plumbing on a tiny phantom, helpers by hand."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_models.datasets import read_dataset
from cxr_models.nets.common import fp16_state_dict
from cxr_models.nets.lungs import build_lungs
from cxr_models.nets.opacity import build_opacity
from cxr_models.records import Box, ImageRecord
from cxr_models.train.augment import box_affine, warp
from cxr_models.train.cache import cached_arrays
from cxr_models.train.data import split_records, study_of
from cxr_models.train.engine import epoch_batches
from cxr_models.train.opacity import jitter_boxes
from cxr_models.train.segmentation_common import bce_dice_loss, dice_scores, percent_of_lungs
from cxr_models.train.study import group_studies

TRAINERS = ("view", "lungs", "opacity", "study")
CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "args", "epoch", "step"}


def _train(name: str, data: Path, out: Path, *extra: str) -> None:
    module = importlib.import_module(f"cxr_models.train.{name}")
    argv = ["--data", str(data), "--out", str(out), "--batch-size", "2", "--epochs", "3", "--threads", "1",
            "--no-progress", "--val-fraction", "0.25", "--seed", "7", *extra]  # fmt: skip
    module.main(module.get_args_parser().parse_args(argv))


def _adam_steps(checkpoint: dict) -> set[int]:
    return {int(s["step"]) for s in checkpoint["optimizer"]["state"].values()}


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_runs_checkpoints_and_resumes(name: str, phantom_small: Path, tmp_path: Path) -> None:
    out = tmp_path / name
    _train(name, phantom_small, out, "--max-steps", "2")
    first = torch.load(out / "checkpoint.pt", weights_only=False)
    assert CHECKPOINT_KEYS <= set(first)
    assert first["step"] == 2 and first["epoch"] >= 1
    assert first["scheduler"] is not None and first["args"]["max_steps"] == 2
    assert _adam_steps(first) == {2}
    assert (out / "model_best.pt").is_file()
    weights = torch.load(out / "weights_fp16.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    caches = sorted((out / "cache").iterdir())
    assert len(caches) == 1
    logged = _log(out)
    assert logged[-1]["step"] == 2 and all(np.isfinite(r["train_loss"]) for r in logged)

    _train(name, phantom_small, out, "--max-steps", "4", "--resume", str(out / "checkpoint.pt"))
    second = torch.load(out / "checkpoint.pt", weights_only=False)
    assert second["step"] == 4
    assert second["epoch"] > first["epoch"]
    # Adam's per-parameter step counters continue from the restored optimizer state.
    assert _adam_steps(second) == {4}
    assert sorted((out / "cache").iterdir()) == caches, "resume must reuse the preprocessing cache"
    assert [r["epoch"] for r in _log(out)] == list(range(1, second["epoch"] + 1))


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_is_deterministic(name: str, phantom_small: Path, tmp_path: Path) -> None:
    states = []
    for run in ("a", "b"):
        _train(name, phantom_small, tmp_path / run, "--max-steps", "2")
        states.append(torch.load(tmp_path / run / "checkpoint.pt", weights_only=False)["model"])
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    _train(name, phantom_small, tmp_path / "c", "--max-steps", "2", "--seed", "8")
    other = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=False)["model"]
    assert any(not torch.equal(states[0][k], other[k]) for k in other if other[k].is_floating_point())


def test_study_trainer_uses_upstream_predictions(phantom_small: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    lungs, opacity = tmp_path / "lungs_fp16.pt", tmp_path / "opacity.pt"
    torch.save(fp16_state_dict(build_lungs()), lungs)
    torch.save({"model": build_opacity().state_dict()}, opacity)  # trainer checkpoint layout
    _train("study", phantom_small, tmp_path / "gt", "--max-steps", "1")
    _train("study", phantom_small, tmp_path / "pred", "--max-steps", "1",
           "--lungs-weights", str(lungs), "--opacity-weights", str(opacity))  # fmt: skip
    checkpoint = torch.load(tmp_path / "pred" / "checkpoint.pt", weights_only=False)
    assert checkpoint["extra"]["lungs_weights"] is not None and checkpoint["extra"]["opacity_weights"] is not None
    gt_cache = next((tmp_path / "gt" / "cache").iterdir())
    pred_cache = next((tmp_path / "pred" / "cache").iterdir())
    assert gt_cache.name != pred_cache.name
    gt = np.load(gt_cache / "channels.npy")
    pred = np.load(pred_cache / "channels.npy")
    assert gt.shape == pred.shape and gt.shape[1:] == (3, 128, 128)
    assert not np.array_equal(gt[:, 1:], pred[:, 1:]), "masks must come from the random upstream models"


def test_split_keeps_studies_whole(phantom_small: Path) -> None:
    records = read_dataset(phantom_small)
    split = split_records(records, val_fraction=0.3, seed=1)
    assert split.val and split.train
    assert not {study_of(r) for r in split.train} & {study_of(r) for r in split.val}
    assert len(split.records) == len(records)
    limited = split_records(records, val_fraction=0.3, seed=1, limit=3)
    assert len(limited.train) == 3 and limited.val == split.val


def test_group_studies_rejects_conflicting_labels(tmp_path: Path) -> None:
    records = [
        ImageRecord("a", tmp_path / "a.dcm", study_id="s1", view="frontal", study_label="typical"),
        ImageRecord("b", tmp_path / "b.dcm", study_id="s2", view="frontal", study_label="negative"),
        ImageRecord("c", tmp_path / "c.dcm", study_id="s1", view="frontal", study_label="typical"),
    ]
    rows, labels = group_studies(records)
    assert rows == [[0, 2], [1]] and labels.tolist() == [1, 0]
    bad = [*records, ImageRecord("d", tmp_path / "d.dcm", study_id="s2", view="frontal", study_label="atypical")]
    with pytest.raises(ValueError, match="conflicting labels"):
        group_studies(bad)


def test_cache_builds_once_and_keys_on_ids(tmp_path: Path) -> None:
    calls: list[int] = []

    def build(item: int) -> dict[str, np.ndarray]:
        calls.append(item)
        return {"x": np.full((2, 2), item, dtype=np.uint8)}

    kwargs = {"name": "t", "version": 1, "params": {"size": 2}, "build": build}
    first = cached_arrays(tmp_path, items=[1, 2, 3], ids=["a", "b", "c"], **kwargs)
    assert first["x"][:, 0, 0].tolist() == [1, 2, 3]
    again = cached_arrays(tmp_path, items=[1, 2, 3], ids=["a", "b", "c"], **kwargs)
    assert calls == [1, 2, 3] and again["x"][2, 1, 1] == 3
    cached_arrays(tmp_path, items=[1, 2], ids=["a", "b"], **kwargs)
    assert calls == [1, 2, 3, 1, 2]
    with pytest.raises(ValueError, match="same length"):
        cached_arrays(tmp_path, items=[1], ids=["a", "b"], **kwargs)


def test_epoch_batches_partition_without_singletons() -> None:
    batches = epoch_batches(9, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [4, 5]
    assert sorted(np.concatenate(batches).tolist()) == list(range(9))


def test_bce_dice_loss_handles_empty_targets() -> None:
    empty = torch.zeros(2, 1, 8, 8)
    confident_negative = bce_dice_loss(torch.full_like(empty, -12.0), empty)
    confident_positive = bce_dice_loss(torch.full_like(empty, 12.0), empty)
    assert torch.isfinite(confident_negative) and confident_negative < 0.01
    assert confident_positive > 10
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, 2:6, 2:6] = 1
    perfect = bce_dice_loss(torch.where(target > 0, 12.0, -12.0), target)
    assert perfect < 0.01


def test_dice_and_percent_by_hand() -> None:
    truth = torch.zeros(3, 4, 4, dtype=torch.bool)
    pred = torch.zeros(3, 4, 4, dtype=torch.bool)
    truth[0, :2] = True  # 8 pixels
    pred[0, :1] = True  # 4 pixels, all inside
    pred[1, 0, 0] = True  # empty truth, one false positive
    scores = dice_scores(pred, truth)
    assert scores.tolist() == pytest.approx([2 * 4 / 12, 0.0, 1.0])
    lungs = torch.zeros(3, 4, 4, dtype=torch.bool)
    lungs[0] = True
    lungs[1, :, :2] = True
    assert percent_of_lungs(pred, lungs).tolist() == pytest.approx([25.0, 12.5, 0.0])


def test_box_affine_resamples_the_box() -> None:
    region = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    regions = torch.tensor([[10.0, 20.0, 18.0, 28.0]])  # the region's 8x8 pixels in original coordinates
    boxes = torch.tensor([[12.0, 24.0, 16.0, 28.0]])  # columns 2..5, rows 4..7 of the region
    theta = box_affine(boxes, regions=regions, flip=torch.ones(1))
    out = warp(region, theta, size=4, mode="nearest")
    assert torch.equal(out[0, 0], region[0, 0, 4:8, 2:6])
    flipped = warp(region, box_affine(boxes, regions=regions, flip=-torch.ones(1)), size=4, mode="nearest")
    assert torch.equal(flipped[0, 0], region[0, 0, 4:8, 2:6].flip(-1))


def test_jitter_boxes_stay_in_region_and_move() -> None:
    crop = Box(20.0, 30.0, 120.0, 130.0)
    crops = torch.tensor([crop.as_list()] * 64)
    regions = torch.tensor([[10.0, 25.0, 130.0, 140.0]] * 64)
    moved = jitter_boxes(crops, regions=regions, generator=torch.Generator().manual_seed(0))
    assert (moved[:, 0] >= 10).all() and (moved[:, 1] >= 25).all()
    assert (moved[:, 2] <= 130).all() and (moved[:, 3] <= 140).all()
    assert (moved - crops).abs().max() <= 5.0 + 1e-4  # CROP_JITTER (5 %) of a 100 px box
    assert (moved - crops).abs().max() > 1.0


def test_view_class_weights_favour_rare_classes() -> None:
    from cxr_models.train.view import class_weights

    weights = class_weights(np.array([0, 0, 0, 0, 1]), num_classes=3)
    # 1/sqrt(4) = 0.5 and 1/sqrt(1) = 1, scaled to mean 1 over the two present classes; absent class 0.
    assert weights.tolist() == pytest.approx([2 / 3, 4 / 3, 0.0])
