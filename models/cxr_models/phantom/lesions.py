"""Lung lesions following the RSNA COVID-19 reporting categories, as 3-D rules.

One category per study; the lesions are 3-D objects inside the lungs, so every view of the
study projects the same ones:

* typical: bilateral, multifocal ground glass and/or consolidation, peripheral and/or in the
  lower zones;
* indeterminate: unilateral, or central (perihilar) or upper-zone predominant;
* atypical: lobar consolidation, a solitary nodule or mass, a cavity, a pleural effusion
  (basal meniscus, blunted costophrenic angle) or a pneumothorax (pleural air without lung
  markings around a collapsed lung edge, which is not an opacity);
* negative: no lesion (the patient's normal variants are drawn with the anatomy).

Each patch of ground glass or consolidation is a few overlapping ellipsoids with a smooth
``(1 - r^2)`` density profile, clipped to its lung, so margins are soft except where a patch
meets the pleura or a fissure. Densities are per mm relative to aerated lung: ground glass
0.006-0.010 (more than a vessel's contrast over a patch), consolidation 0.012-0.018 (airless lung).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from cxr_models.phantom.anatomy import SIDES, Thorax
from cxr_models.phantom.primitives import BIG, Lesion, Quadric, Slab, ellipsoid, unit
from cxr_models.phantom.vessels import Collapse
from cxr_models.records import STUDY_LABELS

logger = logging.getLogger(__name__)

MU_GROUND_GLASS = (0.006, 0.010)
MU_CONSOLIDATION = (0.012, 0.018)
MU_FLUID = 0.015
MU_PLEURAL_AIR = -0.005  # pure air vs aerated lung


@dataclass(frozen=True, eq=False)
class LesionPlan:
    """The lesions of one study, their kinds, and the collapse of a lung with a pneumothorax."""

    label: str
    pattern: str
    lesions: tuple[Lesion, ...]
    kinds: tuple[str, ...]
    collapse: tuple[Collapse | None, Collapse | None]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _in_frontal_shadow(quadric: Quadric, points: np.ndarray) -> np.ndarray:
    """Whether each point's (x, z) lies in the footprint of ``quadric`` projected along y."""
    m = quadric.matrix
    r = np.atleast_2d(points) - quadric.center
    rx, rz = r[:, 0], r[:, 2]
    full = m[0, 0] * rx**2 + 2 * m[0, 2] * rx * rz + m[2, 2] * rz**2
    cross = m[1, 0] * rx + m[1, 2] * rz
    return full - cross**2 / max(m[1, 1], 1e-12) <= 1.0


def _zone(thorax: Thorax, side: int, z: np.ndarray) -> np.ndarray:
    """Height in the lung: 0 at the dome, 1 at the apex."""
    top = thorax.dome_top[side]
    return (np.asarray(z) - top) / (thorax.apex_z - top)


def _sample_point(
    thorax: Thorax,
    side: int,
    rng: np.random.Generator,
    *,
    zone: str | None = None,
    peripheral: bool | None = None,
    central: bool = False,
) -> np.ndarray:
    """A point well inside lung ``side`` (0 right, 1 left) satisfying the placement rules.

    Zones: 'lower' (below 40% of the lung height), 'middle', 'upper' (above 62%). Peripheral
    points lie in the outer part of the lung's horizontal section; central ones within 60 mm
    of the hilum. Points never lie in the frontal shadow of the heart or below a dome.
    """
    lung = thorax.lungs[side]
    region = thorax.lung_regions()[side]
    axes = np.sqrt(np.diag(lung.bound_matrix))
    for _ in range(200):
        n = rng.uniform(-1.0, 1.0, size=(256, 3))
        pts = lung.center + n * axes * np.array([0.92, 0.92, 0.97])
        keep = region.contains(pts)
        keep &= ~_in_frontal_shadow(thorax.heart, pts) & ~_in_frontal_shadow(thorax.atrium, pts)
        keep &= ~_in_frontal_shadow(thorax.domes[side], pts)
        height = _zone(thorax, side, pts[:, 2])
        keep &= (height > 0.06) & (height < 0.9)
        if zone == "lower":
            keep &= height < 0.4
        elif zone == "middle":
            keep &= (height >= 0.36) & (height <= 0.66)
        elif zone == "upper":
            keep &= height > 0.62
        radial = np.hypot((pts[:, 0] - lung.center[0]) / axes[0], (pts[:, 1] - lung.center[1]) / axes[1])
        half_width = np.sqrt(np.maximum(1.0 - ((pts[:, 2] - lung.center[2]) / axes[2]) ** 2, 1e-6))
        radial = radial / half_width
        if peripheral is True:
            keep &= radial > 0.62
        elif peripheral is False:
            keep &= radial < 0.55
        if central:
            keep &= np.linalg.norm(pts - thorax.hila[side], axis=1) < 60.0
        hits = np.flatnonzero(keep)
        if len(hits):
            return pts[hits[0]]
    raise ValueError(f"no lung point found for side={side}, zone={zone!r}, peripheral={peripheral}, central={central}")


def _patch(
    center: np.ndarray,
    size: float,
    mu: float,
    *,
    lung: int,
    kind: str,
    rng: np.random.Generator,
    parts: tuple[int, int] = (2, 5),
) -> list[Lesion]:
    """A soft patch of several overlapping ellipsoids around ``center`` (``size`` = typical semi-axis, mm)."""
    out: list[Lesion] = []
    for _ in range(int(rng.integers(parts[0], parts[1] + 1))):
        offset = rng.normal(0.0, 0.35 * size, size=3)
        axes = size * rng.uniform(0.55, 0.9, size=3)
        out.append(
            Lesion(
                blob=ellipsoid(center + offset, axes, rotation=_random_rotation(rng), mu=mu * rng.uniform(0.8, 1.2),
                               profile=1),
                lung=lung,
                kind=kind,
            )
        )
    return out


def _opacity(thorax: Thorax, side: int, rng: np.random.Generator, *, kind: str, **where: object) -> list[Lesion]:
    center = _sample_point(thorax, side, rng, **where)  # type: ignore[arg-type]
    # at least 18 mm: the thinnest part of the faintest patch still exceeds the visibility threshold
    size = float(rng.uniform(18.0, 42.0))
    if kind == "ground_glass":
        return _patch(center, size, float(rng.uniform(*MU_GROUND_GLASS)), lung=side, kind=kind, rng=rng)
    if kind == "consolidation":
        return _patch(center, size * 0.8, float(rng.uniform(*MU_CONSOLIDATION)), lung=side, kind=kind, rng=rng)
    # mixed: ground glass halo around a consolidated core
    halo = _patch(center, size, float(rng.uniform(*MU_GROUND_GLASS)), lung=side, kind="ground_glass", rng=rng)
    core = _patch(center, size * 0.45, float(rng.uniform(*MU_CONSOLIDATION)) * 0.8, lung=side, kind="consolidation",
                  rng=rng, parts=(1, 2))
    return halo + core


def _typical(thorax: Thorax, rng: np.random.Generator) -> tuple[str, list[Lesion]]:
    lesions: list[Lesion] = []
    for side in (0, 1):
        for _ in range(int(rng.integers(1, 4))):
            zone = str(rng.choice(["lower", "middle", "upper"], p=[0.6, 0.3, 0.1]))
            peripheral = bool(rng.random() < 0.85)
            kind = str(rng.choice(["ground_glass", "consolidation", "mixed"], p=[0.55, 0.25, 0.2]))
            lesions += _opacity(thorax, side, rng, kind=kind, zone=zone, peripheral=peripheral)
    return "bilateral_peripheral_lower", lesions


def _indeterminate(thorax: Thorax, rng: np.random.Generator) -> tuple[str, list[Lesion]]:
    pattern = str(rng.choice(["unilateral", "central", "upper"], p=[0.45, 0.3, 0.25]))
    lesions: list[Lesion] = []
    kinds = ["ground_glass", "consolidation", "mixed"]
    if pattern == "unilateral":
        side = int(rng.integers(2))
        for _ in range(int(rng.integers(1, 4))):
            lesions += _opacity(thorax, side, rng, kind=str(rng.choice(kinds)),
                                zone=str(rng.choice(["lower", "middle", "upper"])))
    elif pattern == "central":
        sides = [0, 1] if rng.random() < 0.6 else [int(rng.integers(2))]
        for side in sides:
            lesions += _opacity(thorax, side, rng, kind=str(rng.choice(kinds, p=[0.6, 0.2, 0.2])), central=True)
    else:
        sides = [0, 1] if rng.random() < 0.5 else [int(rng.integers(2))]
        for side in sides:
            for _ in range(int(rng.integers(1, 3))):
                lesions += _opacity(thorax, side, rng, kind=str(rng.choice(kinds)), zone="upper")
    return pattern, lesions


def _lobe_slabs(thorax: Thorax, side: int, lobe: str, center: np.ndarray) -> tuple[Slab, ...]:
    """Slabs (relative to ``center``) that keep the part of lung ``side`` in ``lobe``.

    The oblique fissure runs from high posteriorly to the anterior diaphragm; the right
    horizontal fissure at the hilum separates the upper from the middle lobe.
    """
    hilum_z = float(thorax.hila[side][2])
    dome = thorax.dome_top[side]
    a = np.array([0.0, 85.0, hilum_z + 45.0])
    b = np.array([0.0, -75.0, dome + 5.0])
    direction = b - a
    normal = unit(np.array([0.0, -direction[2], direction[1]]))
    # orient the normal towards the upper lobe (anterior and high)
    if normal @ (np.array([0.0, -60.0, hilum_z + 80.0]) - a) < 0:
        normal = -normal
    offset = float(normal @ (a - center))
    upper_side = Slab(normal=tuple(normal), lo=offset, hi=BIG)
    lower_side = Slab(normal=tuple(normal), lo=-BIG, hi=offset)
    horizontal = float(hilum_z + 5.0 - center[2])
    if lobe == "lower":
        return (lower_side,)
    if lobe == "upper" and side == 0:
        return (upper_side, Slab(normal=(0.0, 0.0, 1.0), lo=horizontal, hi=BIG))
    if lobe == "middle":
        return (upper_side, Slab(normal=(0.0, 0.0, 1.0), lo=-BIG, hi=horizontal))
    return (upper_side,)


def _lobar(thorax: Thorax, rng: np.random.Generator) -> list[Lesion]:
    side = int(rng.integers(2))
    lobes = ["upper", "middle", "lower"] if side == 0 else ["upper", "lower"]
    lobe = str(rng.choice(lobes))
    lung = thorax.lungs[side]
    center = lung.center + np.array([0.0, 0.0, 60.0])
    axes = np.sqrt(np.diag(lung.bound_matrix)) * np.array([1.3, 1.3, 1.1])
    slabs = _lobe_slabs(thorax, side, lobe, center)
    mu = float(rng.uniform(*MU_CONSOLIDATION))
    lesions = [Lesion(blob=ellipsoid(center, axes, mu=mu, slabs=slabs), lung=side, kind="lobar_consolidation")]
    # a little inhomogeneity: softer patches on top, cut by the same fissures
    inner = _sample_point(thorax, side, rng)
    for patch in _patch(inner, 30.0, 0.2 * mu, lung=side, kind="lobar_consolidation", rng=rng, parts=(1, 2)):
        blob = patch.blob.with_slabs(_lobe_slabs(thorax, side, lobe, patch.blob.center))
        lesions.append(Lesion(blob=blob, lung=side, kind=patch.kind))
    return lesions


def _nodule_or_mass(thorax: Thorax, rng: np.random.Generator, *, mass: bool) -> list[Lesion]:
    side = int(rng.integers(2))
    center = _sample_point(thorax, side, rng, peripheral=None)
    radius = float(rng.uniform(24.0, 45.0) if mass else rng.uniform(10.0, 16.0))
    kind = "mass" if mass else "nodule"
    lesions = [Lesion(blob=ellipsoid(center, radius * rng.uniform(0.85, 1.1, size=3),
                                     rotation=_random_rotation(rng), mu=float(rng.uniform(0.013, 0.016))),
                      lung=side, kind=kind)]
    for _ in range(int(rng.integers(1, 3))):  # lobulation
        offset = unit(rng.normal(size=3)) * radius * 0.55
        lesions.append(Lesion(blob=ellipsoid(center + offset, np.full(3, radius * rng.uniform(0.45, 0.65)),
                                             mu=float(rng.uniform(0.008, 0.012)), profile=1), lung=side, kind=kind))
    return lesions


def _cavity(thorax: Thorax, rng: np.random.Generator) -> list[Lesion]:
    side = int(rng.integers(2))
    center = _sample_point(thorax, side, rng, zone=str(rng.choice(["upper", "middle"])))
    radius = float(rng.uniform(17.0, 32.0))
    wall_mu = float(rng.uniform(0.012, 0.015))
    inner = radius * rng.uniform(0.5, 0.72)
    lumen_center = center + rng.normal(0.0, 0.08 * radius, size=3)
    lesions = [
        Lesion(blob=ellipsoid(center, radius * rng.uniform(0.9, 1.1, size=3), rotation=_random_rotation(rng),
                              mu=wall_mu), lung=side, kind="cavity"),
    ]
    # the lumen holds air (above an air-fluid level, when there is one)
    level = float(rng.uniform(-0.5, 0.2)) * inner if rng.random() < 0.4 else -BIG
    lesions.append(
        Lesion(blob=ellipsoid(lumen_center, np.full(3, inner), mu=-(wall_mu - MU_PLEURAL_AIR),
                              slabs=(Slab(normal=(0.0, 0.0, 1.0), lo=level, hi=BIG),)),
               lung=side, kind="cavity", opaque=False)
    )
    return lesions


def _effusion(thorax: Thorax, rng: np.random.Generator, *, supine: bool) -> list[Lesion]:
    side = int(rng.integers(2))
    lung = thorax.lungs[side]
    axes = np.sqrt(np.diag(lung.bound_matrix))
    lateral = lung.center[0] + SIDES[side] * 0.75 * axes[0]
    top = thorax.dome_top[side]
    volume = float(rng.uniform(0.0, 1.0))
    if supine:
        # layering posteriorly: a veil over the lower hemithorax
        center = np.array([lung.center[0], lung.center[1] + axes[1] * 0.95, top + 20.0])
        blob_axes = np.array([axes[0] * 1.3, 35.0 + 35.0 * volume, 130.0 + 70.0 * volume])
    else:
        center = np.array([lateral, lung.center[1] + 25.0, top - 35.0])
        blob_axes = np.array([95.0 + 25.0 * volume, 150.0, 55.0 + 70.0 * volume])
    blob = ellipsoid(center, blob_axes, mu=MU_FLUID)
    return [Lesion(blob=blob, lung=side, kind="pleural_effusion")]


def _pneumothorax(thorax: Thorax, rng: np.random.Generator) -> tuple[list[Lesion], int, Collapse]:
    """Pleural air over the whole lung, aerated lung restored inside the collapsed lung, and its pleural line."""
    side = int(rng.integers(2))
    lung = thorax.lungs[side]
    factor = float(rng.uniform(0.62, 0.88))
    anchor = np.array([thorax.hila[side][0], lung.center[1], thorax.dome_top[side] - 10.0])
    collapse = Collapse(center=anchor, factor=factor)
    axes = np.sqrt(np.diag(lung.bound_matrix))
    whole = ellipsoid(lung.center + np.array([0.0, 0.0, 40.0]), axes * 1.6, mu=MU_PLEURAL_AIR)
    moved = collapse.apply(lung.center[None, :])[0]
    shell = 1.0 + 1.2 / float(np.mean(axes[:2]) * factor)
    lesions = [
        Lesion(blob=whole, lung=side, kind="pneumothorax", opaque=False),
        Lesion(blob=lung.with_mu(-MU_PLEURAL_AIR + 0.02).scaled(factor * shell, center=moved), lung=side,
               kind="pneumothorax", opaque=False),
        Lesion(blob=lung.with_mu(-0.02).scaled(factor, center=moved), lung=side, kind="pneumothorax", opaque=False),
    ]
    return lesions, side, collapse


def sample_lesions(label: str, thorax: Thorax, rng: np.random.Generator, *, supine: bool = False) -> LesionPlan:
    """The lesions of a study of category ``label`` (one of STUDY_LABELS)."""
    if label not in STUDY_LABELS:
        raise ValueError(f"label must be one of {STUDY_LABELS}, got {label!r}")
    collapse: list[Collapse | None] = [None, None]
    lesions: list[Lesion] = []
    pattern = "none"
    if label == "typical":
        pattern, lesions = _typical(thorax, rng)
    elif label == "indeterminate":
        pattern, lesions = _indeterminate(thorax, rng)
    elif label == "atypical":
        pattern = str(rng.choice(["lobar", "nodule", "mass", "cavity", "effusion", "pneumothorax"],
                                 p=[0.22, 0.16, 0.14, 0.14, 0.18, 0.16]))
        if pattern == "lobar":
            lesions = _lobar(thorax, rng)
        elif pattern in ("nodule", "mass"):
            lesions = _nodule_or_mass(thorax, rng, mass=pattern == "mass")
        elif pattern == "cavity":
            lesions = _cavity(thorax, rng)
        elif pattern == "effusion":
            lesions = _effusion(thorax, rng, supine=supine)
        else:
            lesions, side, squeeze = _pneumothorax(thorax, rng)
            collapse[side] = squeeze
    kinds = tuple(sorted({lesion.kind for lesion in lesions}))
    return LesionPlan(label=label, pattern=pattern, lesions=tuple(lesions), kinds=kinds,
                      collapse=(collapse[0], collapse[1]))
