"""Lung-rectangle crop geometry shared by training and inference, and the lung-field plausibility rule.

The crop is the bounding rectangle of the lung mask, widened by a margin on each side. Boxes
move between the original pixel grid and a resized crop with :func:`box_to_crop` and
:func:`box_from_crop`; ``x`` runs along columns, ``y`` along rows.

:func:`implausibility_reason` decides whether a lung mask looks like the two lung fields of a
frontal chest radiograph. A plausible mask (V7 Labs-style: both lungs including the part
behind the heart, about 20-45 % of the image) covers 5-75 % of the image, its rectangle has a
width/height ratio in [0.6, 2.6], it is in at most three large pieces, and it holds two lung
fields side by side: split at the emptiest column of the middle half of its rectangle, each
side holds at least 20 % of the mask, that column is at most half as full as the fuller
column of the emptier side, and each side is at least 0.2 times as wide as it is tall. On the
241 V7 Labs masks of the frontal images in ``shared/realcxr`` the tightest values are: 18.5 %
of the image, ratio 0.85, smaller side 38 %, gap column 0.28 of a side's fullest, a side 0.36
as wide as tall. A mask on a hand, skull or long-bone radiograph (empty, one blob, a thin
strip, most of the image) fails.

What happens to an image whose mask is implausible is the caller's decision:
:func:`decide_crop` always answers with a crop (the whole image, ``fallback=True``, for
training, where every image is used), while the inference pipeline
(:class:`cxr_models.inference.pipeline.Analyzer`) does not analyse such an image ("no
plausible lung fields: <reason>") unless the weights manifest says ``"crop_fallback": true``,
in which case it analyses the whole image as before (``crop_fallback`` true in the result).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cxr_models.imaging import resize
from cxr_models.records import Box

DEFAULT_MARGIN = 0.05
# A plausible frontal lung field covers this fraction of the image...
MIN_LUNG_FRACTION = 0.05
MAX_LUNG_FRACTION = 0.75
# ...and its rectangle has a width/height ratio in this range.
MIN_ASPECT = 0.6
MAX_ASPECT = 2.6
# Pieces of at least this fraction of the largest piece count as large; more than
# MAX_LARGE_PIECES of them is a fragmented mask.
LARGE_PIECE_FRACTION = 0.1
MAX_LARGE_PIECES = 3
# Two lung fields side by side: the split column is searched in the middle half of the lung
# rectangle (column profile smoothed over 5 % of its width); each side holds at least
# MIN_SIDE_SHARE of the mask, the split column holds at most MAX_GAP_FILL of the fullest
# column of the emptier side, and each side is at least MIN_FIELD_ASPECT as wide as tall.
SPLIT_SEARCH = (0.25, 0.75)
PROFILE_SMOOTHING = 0.05
MIN_SIDE_SHARE = 0.2
MAX_GAP_FILL = 0.5
MIN_FIELD_ASPECT = 0.2


@dataclass(frozen=True)
class CropDecision:
    """The rectangle the detectors and the opacity model look at.

    ``fallback`` is True when the lung mask was implausible and the whole image is used;
    ``reason`` then says why.
    """

    box: Box
    fallback: bool
    reason: str | None = None


def lung_bounding_box(mask: np.ndarray) -> Box | None:
    """Bounding box of the non-zero pixels of ``mask`` (exclusive right/bottom edges)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return Box(float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def expand_box(box: Box, *, margin: float, height: int, width: int) -> Box:
    """Widen ``box`` by ``margin`` of its size on each side, clipped to the image."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    dx, dy = box.width * margin, box.height * margin
    return Box(
        max(0.0, float(np.floor(box.x0 - dx))),
        max(0.0, float(np.floor(box.y0 - dy))),
        min(float(width), float(np.ceil(box.x1 + dx))),
        min(float(height), float(np.ceil(box.y1 + dy))),
    )


def _width_over_height(mask: np.ndarray) -> float:
    box = lung_bounding_box(mask)
    return 0.0 if box is None else box.width / max(box.height, 1.0)


def _two_fields_reason(mask: np.ndarray, box: Box) -> str | None:
    """Why the mask inside ``box`` is not two lung fields side by side, or None when it is."""
    inner = mask[int(box.y0) : int(box.y1), int(box.x0) : int(box.x1)]
    width = inner.shape[1]
    if width < 4:
        return f"lung mask is {width} pixel(s) wide"
    profile = ndimage.uniform_filter1d(
        inner.sum(axis=0).astype(np.float64), max(1, int(round(PROFILE_SMOOTHING * width))), mode="nearest"
    )
    lo = max(1, int(SPLIT_SEARCH[0] * width))
    hi = min(width - 1, int(np.ceil(SPLIT_SEARCH[1] * width)))
    split = lo + int(np.argmin(profile[lo:hi]))
    left, right = inner[:, :split], inner[:, split:]
    total = float(inner.sum())
    share = min(float(left.sum()), float(right.sum())) / total
    if share < MIN_SIDE_SHARE:
        return f"one lung field, not two (the smaller side holds {share:.0%} of the mask, < {MIN_SIDE_SHARE:.0%})"
    fill = float(profile[split]) / min(float(profile[:split].max()), float(profile[split:].max()))
    if fill > MAX_GAP_FILL:
        return f"one lung field, not two (no gap between the sides: the middle is {fill:.0%} full, > {MAX_GAP_FILL:.0%})"
    thinnest = min(_width_over_height(left), _width_over_height(right))
    if thinnest < MIN_FIELD_ASPECT:
        return f"lung fields too thin (width/height {thinnest:.2f} < {MIN_FIELD_ASPECT})"
    return None


def implausibility_reason(mask: np.ndarray) -> str | None:
    """Why a predicted frontal lung mask is implausible, or None when it looks like two lungs.

    The rule and its thresholds are in the module docstring.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return "lung mask is empty"
    fraction = float(mask.mean())
    if fraction < MIN_LUNG_FRACTION:
        return f"lung mask covers {fraction:.1%} of the image (< {MIN_LUNG_FRACTION:.0%})"
    if fraction > MAX_LUNG_FRACTION:
        return f"lung mask covers {fraction:.1%} of the image (> {MAX_LUNG_FRACTION:.0%})"
    box = lung_bounding_box(mask)
    assert box is not None
    aspect = box.width / max(box.height, 1.0)
    if not MIN_ASPECT <= aspect <= MAX_ASPECT:
        return f"lung rectangle aspect ratio {aspect:.2f} outside [{MIN_ASPECT}, {MAX_ASPECT}]"
    labels, _ = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())[1:]
    big = int((sizes >= LARGE_PIECE_FRACTION * sizes.max()).sum())
    if big > MAX_LARGE_PIECES:
        return f"lung mask is fragmented into {big} large pieces"
    return _two_fields_reason(mask, box)


def decide_crop(mask: np.ndarray | None, *, margin: float = DEFAULT_MARGIN, shape: tuple[int, int]) -> CropDecision:
    """The lung rectangle (with margin) when the mask is plausible, else the whole image."""
    height, width = shape
    whole = Box(0.0, 0.0, float(width), float(height))
    if mask is None:
        return CropDecision(box=whole, fallback=True, reason="no lung mask")
    if mask.shape != (height, width):
        raise ValueError(f"mask shape {mask.shape} does not match shape {shape}")
    reason = implausibility_reason(mask)
    if reason is not None:
        return CropDecision(box=whole, fallback=True, reason=reason)
    box = lung_bounding_box(mask)
    assert box is not None
    return CropDecision(box=expand_box(box, margin=margin, height=height, width=width), fallback=False)


def crop_array(image: np.ndarray, box: Box) -> np.ndarray:
    """The pixels of ``image`` inside ``box`` (integer-aligned)."""
    y0, y1 = int(round(box.y0)), int(round(box.y1))
    x0, x1 = int(round(box.x0)), int(round(box.x1))
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"box {box} is empty for image shape {image.shape}")
    return image[y0:y1, x0:x1]


def crop_and_resize(image: np.ndarray, box: Box, *, size: int, nearest: bool = False) -> np.ndarray:
    """Crop ``box`` and resize it to ``size`` x ``size``."""
    return resize(crop_array(image, box), height=size, width=size, nearest=nearest)


def box_to_crop(box: Box, crop: Box, *, size: int) -> Box:
    """Map a box from original pixels into a ``size`` x ``size`` resized crop (not clipped)."""
    sx, sy = size / crop.width, size / crop.height
    return Box((box.x0 - crop.x0) * sx, (box.y0 - crop.y0) * sy, (box.x1 - crop.x0) * sx, (box.y1 - crop.y0) * sy)


def box_from_crop(box: Box, crop: Box, *, size: int) -> Box:
    """Map a box from a ``size`` x ``size`` resized crop back to original pixels."""
    sx, sy = crop.width / size, crop.height / size
    return Box(crop.x0 + box.x0 * sx, crop.y0 + box.y0 * sy, crop.x0 + box.x1 * sx, crop.y0 + box.y1 * sy)


def paste_crop(values: np.ndarray, crop: Box, *, shape: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize a crop-sized map back to the crop rectangle and paste it into a zero image of ``shape``."""
    y0, y1 = int(round(crop.y0)), int(round(crop.y1))
    x0, x1 = int(round(crop.x0)), int(round(crop.x1))
    out = np.zeros(shape, dtype=values.dtype)
    out[y0:y1, x0:x1] = resize(values, height=y1 - y0, width=x1 - x0, nearest=nearest)
    return out
