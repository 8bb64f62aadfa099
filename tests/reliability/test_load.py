"""Load: a burst of 200 studies C-STOREd into Orthanc (with the cxr plugin) is analysed in full,
none lost. The figures (latency, throughput, peak RSS) are printed; bench/load.py runs the same
with its own defaults and 2 Redis workers for the scaling figure."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def test_burst_of_200_studies_none_lost(capsys: pytest.CaptureFixture[str]) -> None:
    from e2e import run

    args = argparse.Namespace(studies=200, size=(512, 576), backend="sqlite", workers=1, stable_age=2, seed=2026)
    result = run(args)
    with capsys.disabled():
        print(f"\nburst of 200: {result}")
    assert result["sent"] == 200
    assert result["analysed"] == 200, f"lost {200 - result['analysed']} studies"
    assert result["peak_rss_mb_service"] < 3000
