"""The transfer check scores lung and view weights on a data split."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from cxr_models.evaluation import transfer
from cxr_models.weights import default_weights_dir


def test_dice_rule() -> None:
    a = np.zeros((4, 4), dtype=bool)
    assert transfer.dice(a, a) == 1.0
    b = a.copy()
    b[:2] = True
    assert transfer.dice(b, a) == 0.0 and transfer.dice(b, b) == 1.0


def test_named_paths() -> None:
    assert transfer.named_path("phantom=runs/x/weights.pt") == ("phantom", Path("runs/x/weights.pt"))
    assert transfer.named_path("runs/lungs/weights.pt") == ("lungs", Path("runs/lungs/weights.pt"))
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=PATH"):
        transfer.named_path("=x")


def test_transfer_scores_the_shipped_weights_on_a_phantom_split(phantom_small: Path, tmp_path: Path) -> None:
    weights = default_weights_dir()
    args = transfer.get_args_parser().parse_args([
        "--data", str(phantom_small), "--split", "all",
        "--lungs", f"shipped={weights / 'lungs.pt'}", "--view", f"shipped={weights / 'view.pt'}",
        "--out", str(tmp_path / "t.json"),
    ])
    result = transfer.main(args)
    assert result["lungs"]["shipped"]["n"] > 0 and result["lungs"]["shipped"]["dice"] > 0.8
    assert result["view"]["shipped"]["accuracy"] > 0.8 and "recall_frontal" in result["view"]["shipped"]
    assert (tmp_path / "t.json").is_file()
    with pytest.raises(ValueError, match="at least one"):
        transfer.main(transfer.get_args_parser().parse_args(["--data", str(phantom_small)]))
