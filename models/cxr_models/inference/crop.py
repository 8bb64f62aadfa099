"""Lung-rectangle crop geometry shared by training and inference.

The crop is the bounding rectangle of the lung mask, widened by a margin on each side. Boxes
move between the original pixel grid and a resized crop with :func:`box_to_crop` and
:func:`box_from_crop`; ``x`` runs along columns, ``y`` along rows.
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


def implausibility_reason(mask: np.ndarray) -> str | None:
    """Why a predicted frontal lung mask is implausible, or None when it looks like two lungs."""
    height, width = mask.shape
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
    labels, count = ndimage.label(mask)
    if count == 0:
        return "lung mask is empty"
    sizes = np.bincount(labels.ravel())[1:]
    big = int((sizes >= 0.1 * sizes.max()).sum())
    if big > 3:
        return f"lung mask is fragmented into {big} large pieces"
    return None


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
