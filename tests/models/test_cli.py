"""The model-side CLI: a user's input error ends a command with one line and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_models.cli import COMMANDS, dispatch
from tests.models.fixtures_datasets import tiny_siim


def _usage(message: str) -> None:
    raise AssertionError(f"usage shown: {message}")


def test_missing_dataset_folder_is_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(SystemExit) as exit_info:
        dispatch(COMMANDS, ["evaluate", "--data", str(missing), "--out", str(tmp_path / "out")], prog="cxr", usage=_usage)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == f"cxr evaluate: error: dataset root {missing} is not a directory"
    assert "Traceback" not in err


def test_unknown_layout_and_missing_manifest_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        dispatch(COMMANDS, ["train", "study", "--data", str(unknown), "--out", str(tmp_path / "o")], prog="cxr", usage=_usage)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cxr train study: error: no known dataset layout under {unknown}")
    assert len(err.strip().splitlines()) == 1

    data = tiny_siim(tmp_path / "siim", phantom=True)
    empty = tmp_path / "weights"
    empty.mkdir()
    argv = ["evaluate", "--data", str(data), "--out", str(tmp_path / "out"), "--baseline-weights", str(empty), "--no-progress"]
    with pytest.raises(SystemExit) as exit_info:
        dispatch(COMMANDS, argv, prog="cxr", usage=_usage)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"cxr evaluate: error: no manifest.json in weights_dir {empty}"
