"""Exact ground truth of a frontal image from the projected geometry.

* lung masks, as the V7 Labs masks: the lung behind the heart is included, nothing below the
  diaphragm. Each is the projected footprint of one lung (the aortic knob, the mediastinal
  borders and the heart in front of or behind it do not cut it) minus where a diaphragm dome
  covers it (the posterior recesses seen through the dome), kept to its largest connected piece;
* opacity mask: where the opaque lesions' line integral exceeds a visibility threshold, inside
  the projected lungs; components smaller than ``min_fraction`` of the image are dropped;
* boxes: bounding boxes of the mask's connected components (8-connected);
* opacity percent: ``100 * |opacity & lung| / |lung|``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cxr_models.records import Box

logger = logging.getLogger(__name__)

# A lesion is visible where its extra attenuation exceeds this (mu * mm): about the contrast
# of a 1.5 mm vessel seen side-on.
OPACITY_THRESHOLD = 0.05
MIN_BOX_FRACTION = 0.0002
# chord lengths (mm) below this count as no lung / no covering dome
_CHORD_EPS = 0.5


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """Boolean masks (rows, cols), boxes and opacity percentage of one frontal image."""

    lung_right: np.ndarray
    lung_left: np.ndarray
    opacity: np.ndarray
    boxes: tuple[Box, ...]
    opacity_percent: float

    @property
    def lung(self) -> np.ndarray:
        return self.lung_right | self.lung_left


def components(mask: np.ndarray, *, min_pixels: int) -> tuple[np.ndarray, tuple[Box, ...]]:
    """``mask`` without its components smaller than ``min_pixels``, and the boxes of the others."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros(mask.shape, dtype=bool), ()
    sizes = np.bincount(labels.reshape(-1), minlength=count + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    cleaned = keep[labels]
    boxes: list[Box] = []
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None or not keep[index]:
            continue
        rows, cols = found
        boxes.append(Box(float(cols.start), float(rows.start), float(cols.stop), float(rows.stop)))
    return cleaned, tuple(boxes)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of ``mask`` (empty stays empty)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(labels.reshape(-1))
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def opacity_percent(opacity: np.ndarray, lung: np.ndarray) -> float:
    """Share of the lung mask covered by opacity, in percent (0 when there is no lung)."""
    area = int(lung.sum())
    if area == 0:
        return 0.0
    return 100.0 * float(np.count_nonzero(opacity & lung)) / area


def ground_truth(
    *,
    lungs: tuple[np.ndarray, np.ndarray],
    dome_cover: np.ndarray,
    lesion: np.ndarray,
    threshold: float = OPACITY_THRESHOLD,
    min_fraction: float = MIN_BOX_FRACTION,
) -> GroundTruth:
    """Masks, boxes and percentage from the full-resolution fields of a frontal projection.

    ``lungs`` are the right and left lung chord lengths (mm), ``dome_cover`` the chord through
    the diaphragm domes under the lungs, ``lesion`` the opaque lesions' line integral.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    above_domes = dome_cover <= _CHORD_EPS
    # a sliver a dome's outline cuts off a lung's recess is real geometry but not what a lung mask shows
    right = largest_component((lungs[0] > _CHORD_EPS) & above_domes)
    left = largest_component((lungs[1] > _CHORD_EPS) & above_domes)
    footprint = (lungs[0] + lungs[1]) > _CHORD_EPS
    raw = (lesion > threshold) & footprint
    min_pixels = max(int(np.ceil(min_fraction * raw.size)), 1)
    opacity, boxes = components(raw, min_pixels=min_pixels)
    lung = right | left
    return GroundTruth(lung_right=right, lung_left=left, opacity=opacity, boxes=boxes,
                       opacity_percent=opacity_percent(opacity, lung))
