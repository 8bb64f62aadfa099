"""The lung-field plausibility rule of :mod:`cxr_models.inference.crop` and the crop decision."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_models.inference.crop import decide_crop, implausibility_reason
from cxr_models.records import Box

REPO_ROOT = Path(__file__).resolve().parents[2]
SHAPE = (400, 400)


def _ellipse(shape: tuple[int, int], *, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def two_lungs(shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Two upright half-ellipse lung fields either side of a mediastinum (about 30 % of the image)."""
    h, w = shape
    right = _ellipse(shape, cy=0.75 * h, cx=0.30 * w, ry=0.55 * h, rx=0.17 * w)
    left = _ellipse(shape, cy=0.75 * h, cx=0.70 * w, ry=0.52 * h, rx=0.15 * w)
    mask = right | left
    mask[: int(0.15 * h)] = False
    mask[int(0.85 * h) :] = False
    return mask


def test_two_lung_fields_pass() -> None:
    mask = two_lungs()
    assert 0.2 <= mask.mean() <= 0.45
    assert implausibility_reason(mask) is None
    decision = decide_crop(mask, shape=SHAPE)
    assert not decision.fallback and decision.reason is None


def test_lungs_joined_behind_the_heart_pass() -> None:
    """V7-style masks include the lung behind the heart; where the fields touch low down, they
    are still two fields side by side."""
    mask = two_lungs()
    mask[300:320, 100:300] = True  # a thin retrocardiac bridge joining the two fields
    assert implausibility_reason(mask) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("empty", "lung mask is empty"),
        ("tiny", "covers"),
        ("huge", "> 75%"),
        ("thin strip", "aspect ratio"),
        ("one blob", "one lung field, not two"),
        ("one lung", "one lung field, not two"),
        ("two bone strips", "too thin"),
        ("stacked", "one lung field, not two"),
    ],
)
def test_implausible_masks_fail(name: str, expected: str) -> None:
    h, w = SHAPE
    mask = np.zeros(SHAPE, dtype=bool)
    if name == "tiny":
        mask[190:210, 150:170] = True
        mask[190:210, 230:250] = True
    elif name == "huge":
        mask[5:395, 5:395] = True
    elif name == "thin strip":  # a long bone (tibia): one narrow vertical field
        mask[20:380, 180:215] = True
    elif name == "one blob":  # a skull or a hand: one round field in the middle
        mask = _ellipse(SHAPE, cy=200, cx=200, ry=150, rx=130)
    elif name == "one lung":  # one field and a speck on the other side
        mask = two_lungs() & (np.arange(w) < w // 2)[None, :]
        mask[200:240, 270:310] = True
    elif name == "two bone strips":  # two long bones far apart: two thin parallel fields
        mask[30:370, 60:90] = True
        mask[30:370, 310:340] = True
    elif name == "stacked":  # two fields one above the other
        mask[40:180, 60:340] = True
        mask[220:360, 60:340] = True
    reason = implausibility_reason(mask)
    assert reason is not None and expected in reason, f"{name}: {reason}"
    decision = decide_crop(mask, shape=SHAPE)
    assert decision.fallback and decision.reason == reason
    assert decision.box == Box(0.0, 0.0, float(w), float(h))


def test_fragmented_mask_fails() -> None:
    mask = np.zeros(SHAPE, dtype=bool)
    for y in (60, 160, 260):
        for x in (60, 160, 260):
            mask[y : y + 70, x : x + 70] = True
    reason = implausibility_reason(mask)
    assert reason is not None and "fragmented" in reason


def _realcxr() -> Path:
    return Path(os.environ.get("CXR_REALCXR", REPO_ROOT / ".." / "shared" / "realcxr"))


@pytest.mark.skipif(
    not (_realcxr() / "covid-chestxray-dataset" / "masks_v7labs").is_dir(), reason="realcxr pack not present"
)
def test_every_v7_frontal_lung_mask_passes() -> None:
    """The V7 Labs reference masks of the real frontal images (speckles removed as the lung stage
    does) are all plausible."""
    from cxr_models.inference.lungs import clean_lung_mask

    root = _realcxr() / "covid-chestxray-dataset"
    with (root / "metadata.csv").open(newline="", encoding="utf-8") as fh:
        views = {row["filename"]: row["view"] for row in csv.DictReader(fh)}
    checked, failed = 0, []
    for path in sorted((root / "masks_v7labs").glob("*.png")):
        image_name = path.name.removesuffix(".png")
        if views.get(image_name, "L") == "L":
            continue
        mask = clean_lung_mask(np.asarray(Image.open(path).convert("L")) > 127)
        checked += 1
        reason = implausibility_reason(mask)
        if reason is not None:
            failed.append((image_name, reason))
    assert checked >= 100
    assert not failed, failed
