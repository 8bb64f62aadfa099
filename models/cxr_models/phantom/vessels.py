"""Pulmonary vessel trees: tubes branching from each hilum to points spread through the lung.

A tree grows by recursive splitting of its target points: from the current point it steps
towards the centroid of its targets, splits them in two along their widest spread and recurses,
so branches fan out from the hilum and reach every part of the lung. Radii follow the number of
targets a branch feeds (``r = r_leaf * n^0.5``). Vessels are blood inside aerated lung
(``mu_tissue - mu_lung``). A pneumothorax collapses the lung towards its hilum; the trees are
grown in the collapsed lung, so the pleural air has no lung markings.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from cxr_models.phantom.anatomy import MU_LUNG, Thorax
from cxr_models.phantom.primitives import Quadric, Region, TubeChain, ellipsoid

logger = logging.getLogger(__name__)

# blood vs aerated lung, raised a little: real lungs add bronchial walls and interstitium along each ray
MU_VESSEL = -1.5 * MU_LUNG
_LEAF_RADIUS = 1.0
_MAX_SEGMENT = 14.0


@dataclass(frozen=True, eq=False)
class Collapse:
    """Points of a collapsed lung are ``center + factor * (p - center)``."""

    center: np.ndarray
    factor: float

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self.center + self.factor * (np.asarray(points) - self.center)


def lung_targets(thorax: Thorax, side_index: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` points inside the lung region, kept ~12 mm from its surface, a little denser at the bases."""
    region = thorax.lung_regions()[side_index]
    inner = Region(
        shape=_shrunk(region.shape, 12.0),
        cutouts=region.cutouts,
        floor=region.floor,
        extra=tuple(_shrunk(q, 12.0) for q in region.extra),
    )
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for q in (region.shape, *region.extra):
        half = np.array([q.half_extent(e) for e in np.eye(3)])
        lo = np.minimum(lo, q.center - half)
        hi = np.maximum(hi, q.center + half)
    lo[2] = max(lo[2], min(thorax.dome_top) - 80.0)
    out: list[np.ndarray] = []
    total = 0
    while total < count:
        pts = rng.uniform(lo, hi, size=(6 * count, 3))
        keep = inner.contains(pts)
        rel = np.clip((pts[:, 2] - lo[2]) / (hi[2] - lo[2]), 0.0, 1.0)
        keep &= rng.random(len(pts)) < 1.0 - 0.35 * rel
        out.append(pts[keep])
        total += int(keep.sum())
    return np.concatenate(out)[:count]


def _shrunk(quadric: Quadric, margin: float) -> Quadric:
    """The ellipsoid ``quadric`` with every semi-axis shortened by ``margin`` mm (at least to 30%)."""
    values, vectors = np.linalg.eigh(quadric.bound_matrix)
    axes = np.sqrt(np.maximum(values, 1e-9))
    return ellipsoid(quadric.center, np.maximum(axes - margin, 0.3 * axes), rotation=vectors, mu=quadric.mu)


_UP = np.array([0.0, 0.0, 1.0])


@functools.lru_cache(maxsize=64)
def _profile(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parameters t in [0, 1], the bend envelope sin(pi t) and an (n, 3) array of +z for ``n`` path points."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    up = np.broadcast_to(_UP, (n, 3))
    return t, np.sin(np.pi * t), up


_MAX_POINTS = 8


def _wiggle(start: np.ndarray, end: np.ndarray, bumps: np.ndarray, amount: float) -> np.ndarray:
    """Points from ``start`` to ``end`` at most ``_MAX_SEGMENT`` apart, bent by the unit normals ``bumps``."""
    delta = end - start
    length = float(np.sqrt(delta @ delta))
    n = min(max(2, int(np.ceil(length / _MAX_SEGMENT)) + 1), _MAX_POINTS)
    t, envelope, _ = _profile(n)
    pts = start + t * delta
    if n > 2:
        pts = pts + bumps[:n] * (amount * length / n) * envelope
    return pts


def _branch(path: np.ndarray, r0: float, r1: float, *, open_start: bool, open_end: bool) -> TubeChain:
    t, _, up = _profile(len(path))
    radius = r0 + (r1 - r0) * t[:, 0]
    return TubeChain(points=path, half_height=radius, half_thickness=radius, up=up, mu=MU_VESSEL,
                     open_start=open_start, open_end=open_end)


def grow_tree(root: np.ndarray, targets: np.ndarray, rng: np.random.Generator, *, radius_scale: float = 1.0) -> list[TubeChain]:
    """The tree from ``root`` to every target, one round :class:`TubeChain` per branch.

    A tree over n targets has exactly 2n - 1 branches, so its random numbers are drawn up front.
    """
    n_branches = 2 * len(targets) - 1
    bumps = rng.normal(size=(n_branches, _MAX_POINTS, 3))
    jitter = rng.normal(size=(n_branches, 3))
    cuts = rng.uniform(0.3, 0.7, size=n_branches)
    chains: list[TubeChain] = []
    stack: list[tuple[np.ndarray, np.ndarray, bool]] = [(np.asarray(root, dtype=np.float64), targets, False)]
    while stack:
        k = len(chains)
        start, pts, is_branch = stack.pop()
        n = len(pts)
        radius = _LEAF_RADIUS * radius_scale * n**0.38
        if n == 1:
            chains.append(_branch(_wiggle(start, pts[0], bumps[k], 0.25), radius, radius * 0.8,
                                  open_start=is_branch, open_end=False))
            continue
        to_c = pts.sum(axis=0) * (1.0 / n) - start
        dist = float(np.sqrt(to_c @ to_c))
        step = max(min(0.45 * dist, 60.0), 6.0)
        end = start + to_c * (step / max(dist, 1e-6)) + jitter[k] * (0.08 * step)
        chains.append(_branch(_wiggle(start, end, bumps[k], 0.2), radius, radius * 0.92, open_start=is_branch,
                              open_end=False))
        # split the targets across their widest spread; the children leave from just beyond the
        # rounded end of this branch, so branch points are not denser than the vessels
        axis = int(np.argmax(pts.max(axis=0) - pts.min(axis=0)))
        cut = min(max(int(round(n * cuts[k])), 1), n - 1)
        order = np.argpartition(pts[:, axis], cut - 1) if n > 2 else np.argsort(pts[:, axis])
        for child in (pts[order[:cut]], pts[order[cut:]]):
            heading = child.sum(axis=0) * (1.0 / len(child)) - end
            stack.append((end + heading * (0.8 * radius / max(float(np.sqrt(heading @ heading)), 1e-6)), child, True))
    return chains


def lung_texture(
    lung_chord: np.ndarray, *, spacing: float, rng: np.random.Generator, amplitude: float = 0.00012
) -> np.ndarray:
    """Line-integral texture of the lung parenchyma: band-passed noise weighted by the lung chord.

    Two octaves of smoothed noise (about 2 and 6 mm) computed on a coarse grid, resized to the
    image; ``amplitude`` is a density fluctuation in 1/mm, so thick lung shows more texture.
    """
    rows, cols = lung_chord.shape
    out = np.zeros(lung_chord.shape, dtype=np.float32)
    for scale_mm, weight in ((2.5, 0.6), (7.0, 1.0)):
        factor = max(2, int(scale_mm / spacing / 1.5))
        small = (max(rows // factor, 4), max(cols // factor, 4))
        noise = rng.standard_normal(small).astype(np.float32)
        sigma = scale_mm / (spacing * factor) / 2.0
        noise = ndimage.gaussian_filter(noise, sigma=max(sigma, 0.5), mode="wrap")
        noise /= max(float(noise.std()), 1e-6)
        up = np.asarray(Image.fromarray(noise, mode="F").resize((cols, rows), Image.BILINEAR))
        out += np.float32(weight) * up
    return np.float32(amplitude) * out * lung_chord


def vessel_chains(
    thorax: Thorax, rng: np.random.Generator, *, collapse: tuple[Collapse | None, Collapse | None] = (None, None),
    targets_per_tree: int = 72,
) -> tuple[TubeChain, ...]:
    """Arterial and venous trees of both lungs (collapsed where a pneumothorax is)."""
    chains: list[TubeChain] = []
    for index in range(2):
        # roots start inside the mediastinum, so the trunks emerge from behind its shadow
        medial = np.array([-(1 if index else -1) * 22.0, 0.0, 0.0])
        hilum = thorax.hila[index] + medial
        roots = ((hilum, 1.0), (hilum + np.array([-(1 if index else -1) * 8.0, 6.0, -26.0]), 0.9))
        for root, scale in roots:
            targets = lung_targets(thorax, index, targets_per_tree, rng)
            tree = grow_tree(root, targets, rng, radius_scale=scale)
            squeeze = collapse[index]
            if squeeze is not None:
                tree = [dataclasses.replace(c, points=squeeze.apply(c.points)) for c in tree]
            chains += tree
    return tuple(chains)
