"""Lung-mask clean-up at the network resolution (cleaned_probability) keeps the full-resolution
result of cleaning the upsampled mask: specks removed, holes filled, same boundary."""

from __future__ import annotations

import numpy as np

from cxr_models.imaging import resize
from cxr_models.inference.lungs import THRESHOLD, clean_lung_mask, cleaned_probability


def synthetic_probability() -> np.ndarray:
    yy, xx = np.mgrid[0:256, 0:256]
    p = np.zeros((256, 256), dtype=np.float32)
    for cx in (80, 176):  # two lungs, soft edges
        d = np.hypot((xx - cx) / 40.0, (yy - 128) / 80.0)
        p = np.maximum(p, np.clip(1.5 - d, 0, 1))
    p[120:124, 78:82] = 0.1  # a hole inside the left lung
    p[10:13, 10:13] = 0.9  # a speck far away
    return p


def test_cleanup_at_network_resolution_matches_full_resolution_cleanup() -> None:
    p = synthetic_probability()
    reference = clean_lung_mask(resize(p, height=1024, width=1024) >= THRESHOLD)
    fast = resize(cleaned_probability(p), height=1024, width=1024) >= THRESHOLD
    assert not fast[:80, :80].any(), "the speck must be removed"
    assert fast[480:500, 312:328].all(), "the hole must be filled"
    disagreement = np.logical_xor(reference, fast).sum() / reference.sum()
    assert disagreement < 0.002, disagreement
