"""3-D primitives of PhantomCXR, in patient millimetres (DICOM LPS: +x left, +y posterior, +z head).

Every primitive carries ``mu``, its linear attenuation (1/mm) *relative to whatever contains it*
(lungs are ``mu_lung - mu_tissue`` inside the body, a vessel is ``mu_blood - mu_lung`` inside a
lung), and the material channel it attenuates in (``soft``, ``bone`` or ``metal``), so the
detector can vary bone and metal contrast with the tube voltage.

* :class:`Quadric`: an ellipsoid (full-rank form) or an elliptic cylinder (rank-2 form) clipped
  by slabs, with an optional smooth density profile ``(1 - r^2)^k``;
* :class:`TubeChain`: a tube of elliptic cross-section along a polyline, with an optional
  cortical shell (ribs, clavicles, vessels, catheters);
* :class:`Region`: a quadric minus other quadrics (a lung minus its floor, the diaphragm dome,
  and minus the heart and mediastinum; a breast minus the trunk it overlaps), whose chord is a
  difference of ray intervals;
* :class:`Lesion`: a quadric clipped to one lung region (ground glass, consolidation, nodules,
  effusion, and the air of a pneumothorax).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

CHANNELS: tuple[str, ...] = ("soft", "bone", "metal")
# Ray parameter used for "no interval" (a finite stand-in for infinity keeps differences finite).
BIG = 1.0e6


def rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        raise ValueError(f"vector must be non-zero, got {vector}")
    return vector / norm


def _check_channel(channel: str) -> None:
    if channel not in CHANNELS:
        raise ValueError(f"channel must be one of {CHANNELS}, got {channel!r}")


@dataclass(frozen=True)
class Slab:
    """The set ``lo <= normal . (x - center) <= hi`` around the owning quadric's centre."""

    normal: tuple[float, float, float]
    lo: float
    hi: float


@dataclass(frozen=True, eq=False)
class Quadric:
    """``{x : (x - c)^T M (x - c) <= 1}`` intersected with ``slabs``.

    ``bound_matrix``/``bound_axis`` bound the body: its half extent along a unit vector ``e`` is
    at most ``|e . bound_axis| + sqrt(e^T bound_matrix e)``. ``profile`` k gives the density
    ``mu * (1 - r^2)^k`` with ``r^2 = (x - c)^T M (x - c)`` (0: uniform).
    """

    center: np.ndarray
    matrix: np.ndarray
    bound_matrix: np.ndarray
    bound_axis: np.ndarray
    mu: float
    channel: str = "soft"
    profile: int = 0
    slabs: tuple[Slab, ...] = ()

    def __post_init__(self) -> None:
        _check_channel(self.channel)
        if self.profile not in (0, 1, 2):
            raise ValueError(f"profile must be 0, 1 or 2, got {self.profile}")

    @cached_property
    def extent_mm(self) -> float:
        """An upper bound of the half extent along x, y or z (mm)."""
        return float(np.sqrt(np.max(np.diag(self.bound_matrix))) + np.max(np.abs(self.bound_axis)))

    def half_extent(self, direction: np.ndarray) -> float:
        e = np.asarray(direction, dtype=np.float64)
        return float(abs(e @ self.bound_axis) + np.sqrt(max(e @ self.bound_matrix @ e, 0.0)))

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Boolean per point of ``points`` (n, 3): inside the form and all slabs."""
        rel = np.atleast_2d(points) - self.center
        inside = np.einsum("ni,ij,nj->n", rel, self.matrix, rel) <= 1.0
        for slab in self.slabs:
            s = rel @ np.asarray(slab.normal)
            inside &= (s >= slab.lo) & (s <= slab.hi)
        return inside

    def with_mu(self, mu: float, *, channel: str | None = None, profile: int | None = None) -> "Quadric":
        return Quadric(
            center=self.center,
            matrix=self.matrix,
            bound_matrix=self.bound_matrix,
            bound_axis=self.bound_axis,
            mu=mu,
            channel=self.channel if channel is None else channel,
            profile=self.profile if profile is None else profile,
            slabs=self.slabs,
        )

    def scaled(self, factor: float, *, center: np.ndarray | None = None) -> "Quadric":
        """The same body scaled by ``factor`` about its centre, moved to ``center`` when given."""
        if factor <= 0:
            raise ValueError(f"factor must be positive, got {factor}")
        return Quadric(
            center=self.center if center is None else np.asarray(center, dtype=np.float64),
            matrix=self.matrix / factor**2,
            bound_matrix=self.bound_matrix * factor**2,
            bound_axis=self.bound_axis * factor,
            mu=self.mu,
            channel=self.channel,
            profile=self.profile,
            slabs=tuple(Slab(s.normal, s.lo * factor, s.hi * factor) for s in self.slabs),
        )

    def with_slabs(self, slabs: tuple[Slab, ...]) -> "Quadric":
        return Quadric(
            center=self.center,
            matrix=self.matrix,
            bound_matrix=self.bound_matrix,
            bound_axis=self.bound_axis,
            mu=self.mu,
            channel=self.channel,
            profile=self.profile,
            slabs=self.slabs + slabs,
        )


def ellipsoid(
    center: np.ndarray | tuple[float, float, float],
    axes: np.ndarray | tuple[float, float, float],
    *,
    mu: float,
    rotation: np.ndarray | None = None,
    channel: str = "soft",
    profile: int = 0,
    slabs: tuple[Slab, ...] = (),
) -> Quadric:
    """An ellipsoid with semi-axes ``axes`` along the columns of ``rotation``."""
    a = np.asarray(axes, dtype=np.float64)
    if a.shape != (3,) or np.any(a <= 0):
        raise ValueError(f"axes must be three positive semi-axes, got {axes}")
    r = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    return Quadric(
        center=np.asarray(center, dtype=np.float64),
        matrix=r @ np.diag(1.0 / a**2) @ r.T,
        bound_matrix=r @ np.diag(a**2) @ r.T,
        bound_axis=np.zeros(3),
        mu=mu,
        channel=channel,
        profile=profile,
        slabs=slabs,
    )


def cylinder(
    center: np.ndarray | tuple[float, float, float],
    *,
    axis: np.ndarray | tuple[float, float, float],
    half_length: float,
    radii: tuple[float, float],
    mu: float,
    cross: np.ndarray | tuple[float, float, float] | None = None,
    channel: str = "soft",
) -> Quadric:
    """A finite elliptic cylinder; ``radii[0]`` lies along ``cross`` (any normal of ``axis`` by default)."""
    a = unit(np.asarray(axis, dtype=np.float64))
    if half_length <= 0 or min(radii) <= 0:
        raise ValueError(f"half_length and radii must be positive, got {half_length} and {radii}")
    if cross is None:
        helper = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        cross = np.cross(a, helper)
    b = unit(np.asarray(cross, dtype=np.float64) - np.dot(cross, a) * a)
    c = np.cross(a, b)
    matrix = np.outer(b, b) / radii[0] ** 2 + np.outer(c, c) / radii[1] ** 2
    bound = np.outer(b, b) * radii[0] ** 2 + np.outer(c, c) * radii[1] ** 2
    return Quadric(
        center=np.asarray(center, dtype=np.float64),
        matrix=matrix,
        bound_matrix=bound,
        bound_axis=a * half_length,
        mu=mu,
        channel=channel,
        slabs=(Slab(normal=tuple(a), lo=-half_length, hi=half_length),),
    )


@dataclass(frozen=True, eq=False)
class TubeChain:
    """A tube along ``points`` (n, 3) with semi-axes ``half_height`` (along ``up``) and ``half_thickness``.

    ``cortex`` > 0 makes a shell of that thickness with attenuation ``mu`` around a core of
    ``mu_core`` (bone cortex around marrow, a catheter wall around its lumen). Ends are round
    unless ``open_start``/``open_end`` (a branch leaving its parent vessel is cut square).
    """

    points: np.ndarray
    half_height: np.ndarray
    half_thickness: np.ndarray
    up: np.ndarray
    mu: float
    mu_core: float = 0.0
    cortex: float = 0.0
    channel: str = "soft"
    open_start: bool = False
    open_end: bool = False

    def __post_init__(self) -> None:
        _check_channel(self.channel)
        n = len(self.points)
        if self.points.shape != (n, 3) or n < 2:
            raise ValueError(f"points must have shape (n >= 2, 3), got {self.points.shape}")
        if self.half_height.shape != (n,) or self.half_thickness.shape != (n,) or self.up.shape != (n, 3):
            raise ValueError("half_height, half_thickness and up must have one entry per point")


def tube(
    points: np.ndarray,
    *,
    radius: float | np.ndarray,
    mu: float,
    half_thickness: float | np.ndarray | None = None,
    up: np.ndarray | None = None,
    mu_core: float = 0.0,
    cortex: float = 0.0,
    channel: str = "soft",
    open_start: bool = False,
    open_end: bool = False,
) -> TubeChain:
    """A :class:`TubeChain`; round when ``half_thickness`` is None, ``up`` defaults to normals of the path."""
    pts = np.asarray(points, dtype=np.float64)
    n = len(pts)
    height = np.broadcast_to(np.asarray(radius, dtype=np.float64), (n,)).copy()
    thick = height.copy() if half_thickness is None else np.broadcast_to(np.asarray(half_thickness, float), (n,)).copy()
    if up is None:
        tangent = np.gradient(pts, axis=0)
        helper = np.where(np.abs(tangent[:, 2:3]) < 0.9 * np.linalg.norm(tangent, axis=1, keepdims=True),
                          np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]]))
        up_vec = np.cross(np.cross(tangent, helper), tangent)
    else:
        up_vec = np.broadcast_to(np.asarray(up, dtype=np.float64), (n, 3)).copy()
    norms = np.linalg.norm(up_vec, axis=1, keepdims=True)
    up_vec = np.where(norms > 1e-9, up_vec / np.maximum(norms, 1e-9), np.array([[0.0, 0.0, 1.0]]))
    return TubeChain(points=pts, half_height=height, half_thickness=thick, up=up_vec, mu=mu,
                     mu_core=mu_core, cortex=cortex, channel=channel, open_start=open_start,
                     open_end=open_end)


@dataclass(frozen=True, eq=False)
class Region:
    """``shape`` united with ``extra`` minus ``floor`` and ``cutouts`` (all with the magnification of ``shape``).

    ``shape`` gives the attenuation; the extra shapes only extend the region (a rounder lung apex).
    ``floor`` and ``cutouts`` both cut the region and differ only in what they mean: the floor
    bounds it from below (the diaphragm dome under a lung), the cutouts are what else it wraps
    around (the heart, the mediastinum). A lung's ground-truth mask stops at its floor but
    runs behind its cutouts.
    """

    shape: Quadric
    cutouts: tuple[Quadric, ...] = ()
    name: str = ""
    extra: tuple[Quadric, ...] = ()
    floor: tuple[Quadric, ...] = ()

    @property
    def removed(self) -> tuple[tuple[Quadric, bool], ...]:
        """Every quadric cut out of the region, floor first, each with whether it is the floor."""
        return tuple((cut, True) for cut in self.floor) + tuple((cut, False) for cut in self.cutouts)

    def contains(self, points: np.ndarray) -> np.ndarray:
        inside = self.shape.contains(points)
        for part in self.extra:
            inside |= part.contains(points)
        for cut, _ in self.removed:
            inside &= ~cut.contains(points)
        return inside


@dataclass(frozen=True, eq=False)
class Lesion:
    """``blob`` (with its density profile) clipped to lung region ``lung`` of the scene.

    ``opaque`` lesions make the opacity ground truth where their line integral is visible;
    pneumothorax air and cavity lumens are not opaque.
    """

    blob: Quadric
    lung: int
    kind: str
    opaque: bool = True


@dataclass(frozen=True, eq=False)
class Scene:
    """Everything one radiograph projects.

    ``lungs`` index into ``regions`` (lesions refer to them); ``aim`` is the point the central
    ray goes through; ``body`` is the outer body surface the detector is placed against;
    ``field_half`` is the half width and height (mm) of the anatomy the image must show.
    """

    quadrics: tuple[Quadric, ...]
    chains: tuple[TubeChain, ...]
    regions: tuple[Region, ...]
    lungs: tuple[int, ...]
    lesions: tuple[Lesion, ...]
    aim: np.ndarray
    body: Quadric
    field_half: tuple[float, float] = field(default=(200.0, 200.0))

    @cached_property
    def packed_chains(self) -> "PackedChains | None":
        """All chains as flat arrays, packed once per scene."""
        return pack_chains(self.chains) if self.chains else None

    @cached_property
    def packed_quadrics(self) -> "PackedQuadrics | None":
        """The quadrics the flat renderer takes (uniform, at most one slab) as stacked arrays."""
        flat = [q for q in self.quadrics if packable(q) and not large(q)]
        return pack_quadrics(flat) if flat else None

    @cached_property
    def boxed_quadrics(self) -> tuple[Quadric, ...]:
        """The quadrics rendered one by one on their own box (large, clipped or with a profile)."""
        return tuple(q for q in self.quadrics if not packable(q) or large(q))


def packable(quadric: Quadric) -> bool:
    """Uniform quadrics with at most one slab can render in the flat batch."""
    return quadric.profile == 0 and len(quadric.slabs) <= 1


# quadrics wider than this (mm, any semi-extent) render on their own box, which is cheaper for big bodies
_LARGE_MM = 70.0


def large(quadric: Quadric) -> bool:
    return quadric.extent_mm > _LARGE_MM


@dataclass(frozen=True, eq=False)
class PackedQuadrics:
    """Uniform quadrics (at most one slab each) as stacked arrays."""

    center: np.ndarray
    matrix: np.ndarray
    bound_matrix: np.ndarray
    bound_axis: np.ndarray
    slab_normal: np.ndarray
    slab_lo: np.ndarray
    slab_hi: np.ndarray
    mu: np.ndarray
    channel: np.ndarray


def pack_quadrics(quadrics: list[Quadric]) -> PackedQuadrics:
    if not all(packable(q) for q in quadrics):
        raise ValueError("quadrics must be uniform with at most one slab to be packed")
    normals = [q.slabs[0].normal if q.slabs else (0.0, 0.0, 1.0) for q in quadrics]
    return PackedQuadrics(
        center=np.stack([q.center for q in quadrics]),
        matrix=np.stack([q.matrix for q in quadrics]),
        bound_matrix=np.stack([q.bound_matrix for q in quadrics]),
        bound_axis=np.stack([q.bound_axis for q in quadrics]),
        slab_normal=np.array(normals, dtype=np.float64),
        slab_lo=np.array([q.slabs[0].lo if q.slabs else -BIG for q in quadrics]),
        slab_hi=np.array([q.slabs[0].hi if q.slabs else BIG for q in quadrics]),
        mu=np.array([q.mu for q in quadrics], dtype=np.float32),
        channel=np.array([CHANNELS.index(q.channel) for q in quadrics], dtype=np.int64),
    )


@dataclass(frozen=True, eq=False)
class PackedChains:
    """Tube chains as flat arrays (points of all chains, and one entry per segment or chain)."""

    points: np.ndarray
    half_height: np.ndarray
    half_thickness: np.ndarray
    up: np.ndarray
    start: np.ndarray
    chain_of_segment: np.ndarray
    open_start: np.ndarray
    open_end: np.ndarray
    mu: np.ndarray
    mu_core: np.ndarray
    shelled: np.ndarray
    ratio_w: np.ndarray
    ratio_t: np.ndarray
    channel: np.ndarray


def pack_chains(chains: tuple[TubeChain, ...]) -> PackedChains:
    """Concatenate ``chains`` into flat arrays."""
    sizes = np.array([len(c.points) for c in chains], dtype=np.int64)
    chain_of_point = np.repeat(np.arange(len(chains)), sizes)
    height = np.concatenate([c.half_height for c in chains])
    thick = np.concatenate([c.half_thickness for c in chains])
    starts = np.cumsum(sizes) - sizes
    mean_h = np.add.reduceat(height, starts) / sizes
    mean_t = np.add.reduceat(thick, starts) / sizes
    cortex = np.array([c.cortex for c in chains])
    seg_start = np.flatnonzero(chain_of_point[:-1] == chain_of_point[1:])
    return PackedChains(
        points=np.concatenate([c.points for c in chains]),
        half_height=height,
        half_thickness=thick,
        up=np.concatenate([c.up for c in chains]),
        start=seg_start,
        chain_of_segment=chain_of_point[seg_start],
        open_start=np.array([c.open_start for c in chains], dtype=bool),
        open_end=np.array([c.open_end for c in chains], dtype=bool),
        mu=np.array([c.mu for c in chains], dtype=np.float32),
        mu_core=np.array([c.mu_core for c in chains], dtype=np.float32),
        shelled=cortex > 0,
        ratio_w=np.maximum(1.0 - cortex / mean_h, 0.0).astype(np.float32),
        ratio_t=np.maximum(1.0 - cortex / mean_t, 0.0).astype(np.float32),
        channel=np.array([CHANNELS.index(c.channel) for c in chains], dtype=np.int64),
    )
