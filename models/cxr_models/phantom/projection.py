"""Beer-Lambert line integrals of a :class:`~cxr_models.phantom.primitives.Scene`, in closed form.

A view is a parallel projection along ``direction`` onto a detector plane spanned by ``e_u``
(increasing column) and ``e_v`` (increasing row), with a per-primitive cone-beam
magnification ``SID / (SID - distance to the detector)``: a primitive far from the detector
(the heart on an AP film) projects larger. Along the ray through detector point (U, V), a
quadric ``(x - c)^T M (x - c) <= 1`` is entered and left at the roots of a quadratic in the ray
parameter ``t`` whose coefficients are polynomials of (U, V): the chord is
``2 sqrt(B'^2 - A C) / A``; sets (a lung minus the diaphragm and the heart) are differences of
ray intervals, and density profiles integrate in closed form over them. Every primitive is
evaluated only inside its projected bounding box (small quadrics and all tubes in flat batches
along exact row spans), and the line integrals accumulate per material channel. Tubes are
elliptic cylinders along polylines whose segments meet on mitres, with chord and width varying
linearly along each segment, so a curved rib has neither gaps nor double-counted joints.

Besides the channels, :class:`Fields` keeps what the ground truth needs: the lung footprint,
the chord through the diaphragm domes the lungs stand on (each lung region's floor), the chord
through the other parts cut out of the lungs (heart, atrium, mediastinal borders, aortic knob),
and the integral of the opaque lesions alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from cxr_models.phantom.primitives import (
    BIG,
    CHANNELS,
    Lesion,
    PackedChains,
    PackedQuadrics,
    Quadric,
    Region,
    Scene,
)

logger = logging.getLogger(__name__)

# Tubes seen nearly end-on would have unbounded chords; their obliquity is capped at this sine.
_MIN_SINE = 0.45


@dataclass(frozen=True, eq=False)
class View:
    """Projection geometry: unit vectors (world), the aimed point, SID and detector plane depth."""

    name: str
    direction: np.ndarray
    e_u: np.ndarray
    e_v: np.ndarray
    aim: np.ndarray
    sid: float
    detector_depth: float

    def magnification(self, points: np.ndarray) -> np.ndarray:
        """SID / (SID - distance from the detector) for each point (..., 3)."""
        distance = self.detector_depth - np.asarray(points) @ self.direction
        return self.sid / (self.sid - np.maximum(distance, 0.0))

    def project(self, points: np.ndarray) -> np.ndarray:
        """Detector coordinates (U, V) in mm of points (n, 3), each with its own magnification."""
        rel = np.asarray(points) - self.aim
        m = self.magnification(points)[:, None]
        return m * np.stack([rel @ self.e_u, rel @ self.e_v], axis=1)


def make_view(
    name: str,
    *,
    direction: np.ndarray,
    e_u: np.ndarray,
    e_v: np.ndarray,
    aim: np.ndarray,
    sid: float,
    body: Quadric,
    pose: np.ndarray | None = None,
    gap: float = 5.0,
) -> View:
    """A view whose detector touches the body's exit surface (plus ``gap`` mm).

    ``pose`` rotates the patient about ``aim``; it is applied to the view axes instead (the
    inverse rotation), which is the same projection.
    """
    rotation = np.eye(3) if pose is None else np.asarray(pose, dtype=np.float64)
    d = rotation.T @ np.asarray(direction, dtype=np.float64)
    u = rotation.T @ np.asarray(e_u, dtype=np.float64)
    v = rotation.T @ np.asarray(e_v, dtype=np.float64)
    depth = float(body.center @ d + body.half_extent(d) + gap)
    return View(name=name, direction=d, e_u=u, e_v=v, aim=np.asarray(aim, dtype=np.float64), sid=sid,
                detector_depth=depth)


@dataclass(frozen=True)
class Grid:
    """Pixel centres of a detector image: ``rows`` x ``cols`` pixels of ``spacing`` mm, centred on the central ray."""

    rows: int
    cols: int
    spacing: float

    def u(self) -> np.ndarray:
        return ((np.arange(self.cols, dtype=np.float64) + 0.5 - self.cols / 2.0) * self.spacing).astype(np.float32)

    def v(self) -> np.ndarray:
        return ((np.arange(self.rows, dtype=np.float64) + 0.5 - self.rows / 2.0) * self.spacing).astype(np.float32)

    def col_range(self, lo: float, hi: float) -> tuple[int, int]:
        return _index_range(lo, hi, self.spacing, self.cols)

    def row_range(self, lo: float, hi: float) -> tuple[int, int]:
        return _index_range(lo, hi, self.spacing, self.rows)


def _index_range(lo: float, hi: float, spacing: float, n: int) -> tuple[int, int]:
    """Pixel indices [start, stop) whose centres may lie in [lo, hi] (detector mm)."""
    start = int(np.floor(lo / spacing + n / 2.0 - 0.5))
    stop = int(np.ceil(hi / spacing + n / 2.0 - 0.5)) + 1
    return max(start, 0), min(stop, n)


@dataclass(frozen=True, eq=False)
class Fields:
    """Line integrals (mu * mm) per channel plus the ground-truth fields, all (rows, cols) float32.

    ``lungs`` are the chords through each lung region; ``lung_dome_cover`` is the chord through
    the lung regions' floors (the diaphragm domes), ``lung_cover`` the chord through their other
    cutouts (what lies in front of or behind the lungs), both summed over the lungs.
    """

    channels: dict[str, np.ndarray]
    lungs: tuple[np.ndarray, ...]
    lung_cover: np.ndarray
    lung_dome_cover: np.ndarray
    lesion: np.ndarray


@dataclass(frozen=True)
class _Box:
    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def empty(self) -> bool:
        return self.r1 <= self.r0 or self.c1 <= self.c0

    def intersect(self, other: "_Box") -> "_Box":
        return _Box(max(self.r0, other.r0), min(self.r1, other.r1), max(self.c0, other.c0), min(self.c1, other.c1))

    def slices(self) -> tuple[slice, slice]:
        return slice(self.r0, self.r1), slice(self.c0, self.c1)


class _Coefficients:
    """Polynomials in (U, V) of the ray/quadric quadratic ``A t^2 + 2 B' t + C = 0``."""

    __slots__ = ("a", "b0", "bu", "bv", "d0", "du", "dv", "duu", "duv", "dvv", "slabs")

    def __init__(self, quadric: Quadric, view: View, m: float) -> None:
        mat = quadric.matrix
        d = view.direction
        g = view.aim - quadric.center
        alpha = view.e_u / m
        beta = view.e_v / m
        md = mat @ d
        self.a = float(d @ md)
        self.b0 = float(g @ md)
        self.bu = float(alpha @ md)
        self.bv = float(beta @ md)
        c0 = float(g @ mat @ g) - 1.0
        cu = 2.0 * float(g @ mat @ alpha)
        cv = 2.0 * float(g @ mat @ beta)
        cuu = float(alpha @ mat @ alpha)
        cuv = 2.0 * float(alpha @ mat @ beta)
        cvv = float(beta @ mat @ beta)
        a = self.a
        self.d0 = self.b0 * self.b0 - a * c0
        self.du = 2.0 * self.b0 * self.bu - a * cu
        self.dv = 2.0 * self.b0 * self.bv - a * cv
        self.duu = self.bu * self.bu - a * cuu
        self.duv = 2.0 * self.bu * self.bv - a * cuv
        self.dvv = self.bv * self.bv - a * cvv
        # slab: s(t) = s0 + su U + sv V + sd t must lie in [lo, hi]
        self.slabs = [
            (float(g @ n), float(alpha @ n), float(beta @ n), float(d @ n), slab.lo, slab.hi)
            for slab in quadric.slabs
            for n in [np.asarray(slab.normal, dtype=np.float64)]
        ]


def _quadric_box(quadric: Quadric, view: View, grid: Grid, m: float) -> _Box:
    rel = quadric.center - view.aim
    cu = m * float(rel @ view.e_u)
    cv = m * float(rel @ view.e_v)
    hu = m * quadric.half_extent(view.e_u)
    hv = m * quadric.half_extent(view.e_v)
    c0, c1 = grid.col_range(cu - hu, cu + hu)
    r0, r1 = grid.row_range(cv - hv, cv + hv)
    return _Box(r0, r1, c0, c1)


def _sorted(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.minimum(a, b), np.maximum(a, b)


def _ray_interval(
    coef: _Coefficients, u: np.ndarray, v: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, t_mid, half) on the grid u (1, w) x v (h, 1).

    A ray that misses gets the empty interval [t_mid, t_mid] (zero length); ``t_mid``/``half``
    describe the unclipped chord (for density profiles), ``lo``/``hi`` are clipped by the slabs
    (an emptied interval keeps hi == lo).
    """
    disc = (coef.d0 + coef.du * u + coef.duu * u * u) + (coef.dv * v + coef.dvv * v * v)
    if coef.duv != 0.0:
        disc = disc + (coef.duv * u) * v
    b = coef.b0 + coef.bu * u + coef.bv * v
    shape = np.broadcast_shapes(u.shape, v.shape)
    if coef.a > 1e-12:
        inv_a = np.float32(1.0 / coef.a)
        half = np.sqrt(np.maximum(disc, 0.0)) * inv_a
        t_mid = np.broadcast_to(-b * inv_a, shape)
    else:
        # the ray runs along a cylinder axis: inside everywhere or nowhere (C <= 0)
        half = np.where(np.broadcast_to(disc >= 0.0, shape), np.float32(BIG / 4), np.float32(0.0))
        t_mid = np.zeros(shape, dtype=np.float32)
    lo = t_mid - half
    hi = t_mid + half
    for s0, su, sv, sd, s_lo, s_hi in coef.slabs:
        s = s0 + su * u + sv * v
        if abs(sd) > 1e-9:
            t1, t2 = _sorted((s_lo - s) / np.float32(sd), (s_hi - s) / np.float32(sd))
            lo = np.maximum(lo, t1)
            hi = np.minimum(hi, t2)
        else:
            keep = np.broadcast_to((s >= s_lo) & (s <= s_hi), shape)
            hi = np.where(keep, hi, lo)
    if coef.slabs:
        hi = np.maximum(hi, lo)
    return lo.astype(np.float32, copy=False), hi.astype(np.float32, copy=False), t_mid, half


def _profile_integral(
    profile: int, a: float, t_mid: np.ndarray, half: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Integral of ``(1 - r^2)^k = a^k (half^2 - tau^2)^k`` over [lo, hi] within the chord."""
    x0 = np.clip(lo - t_mid, -half, half)
    x1 = np.clip(hi - t_mid, -half, half)
    if profile == 0:
        return np.maximum(x1 - x0, 0.0)
    h2 = half * half
    if profile == 1:
        f = (h2 * x1 - x1**3 / 3.0) - (h2 * x0 - x0**3 / 3.0)
        return np.maximum(f * np.float32(a), 0.0)
    f1 = h2 * h2 * x1 - (2.0 / 3.0) * h2 * x1**3 + x1**5 / 5.0
    f0 = h2 * h2 * x0 - (2.0 / 3.0) * h2 * x0**3 + x0**5 / 5.0
    return np.maximum((f1 - f0) * np.float32(a * a), 0.0)


class _Accumulator:
    def __init__(self, grid: Grid) -> None:
        shape = (grid.rows, grid.cols)
        self.grid = grid
        self.u = grid.u()[None, :]
        self.v = grid.v()[:, None]
        self.stack = np.zeros((len(CHANNELS), *shape), dtype=np.float32)
        self.channels = {name: self.stack[i] for i, name in enumerate(CHANNELS)}
        self.lungs: dict[int, np.ndarray] = {}
        self.lung_cover = np.zeros(shape, dtype=np.float32)
        self.lung_dome_cover = np.zeros(shape, dtype=np.float32)
        self.lesion = np.zeros(shape, dtype=np.float32)

    def uv(self, box: _Box) -> tuple[np.ndarray, np.ndarray]:
        return self.u[:, box.c0 : box.c1], self.v[box.r0 : box.r1, :]

    def add(self, channel: np.ndarray, pixel: np.ndarray, value: np.ndarray) -> None:
        """Scatter-add ``value`` at flat ``pixel`` indices of the ``channel`` (index into CHANNELS) images."""
        size = self.grid.rows * self.grid.cols
        np.add.at(self.stack.reshape(-1), channel.astype(np.int64) * size + pixel, value.astype(np.float32, copy=False))


def _render_quadric(acc: _Accumulator, quadric: Quadric, view: View) -> None:
    m = float(view.magnification(quadric.center))
    box = _quadric_box(quadric, view, acc.grid, m)
    if box.empty:
        return
    coef = _Coefficients(quadric, view, m)
    u, v = acc.uv(box)
    if quadric.profile == 0 and not quadric.slabs and coef.a > 1e-12:
        disc = (coef.d0 + coef.du * u + coef.duu * u * u) + (coef.dv * v + coef.dvv * v * v)
        if coef.duv != 0.0:
            disc = disc + (coef.duv * u) * v
        chord = np.sqrt(np.maximum(disc, 0.0)) * np.float32(2.0 * quadric.mu / coef.a)
        acc.channels[quadric.channel][box.slices()] += chord
        return
    lo, hi, t_mid, half = _ray_interval(coef, u, v)
    if quadric.profile == 0:
        value = np.maximum(hi - lo, 0.0)
    else:
        value = _profile_integral(quadric.profile, coef.a, t_mid, half, lo, hi)
    acc.channels[quadric.channel][box.slices()] += np.float32(quadric.mu) * value


@dataclass
class _Piece:
    """Ray intervals [lo, hi] over the pixels of ``box`` (empty where hi <= lo)."""

    box: _Box
    lo: np.ndarray
    hi: np.ndarray


def _local(inner: _Box, outer: _Box) -> tuple[slice, slice]:
    return slice(inner.r0 - outer.r0, inner.r1 - outer.r0), slice(inner.c0 - outer.c0, inner.c1 - outer.c0)


def _subtract(pieces: list[_Piece], box: _Box, lo: np.ndarray, hi: np.ndarray) -> list[_Piece]:
    """Each piece minus the interval [lo, hi] given on ``box``: at most two pieces, the second on the overlap."""
    out: list[_Piece] = []
    for piece in pieces:
        inter = piece.box.intersect(box)
        if inter.empty:
            out.append(piece)
            continue
        pl = _local(inter, piece.box)
        cl = _local(inter, box)
        a0, a1 = piece.lo[pl], piece.hi[pl]
        c_lo, c_hi = lo[cl], hi[cl]
        first_hi = piece.hi.copy()
        first_hi[pl] = np.minimum(a1, c_lo)
        out.append(_Piece(piece.box, piece.lo, first_hi))
        second_lo = np.maximum(a0, c_hi)
        if (second_lo < a1).any():
            out.append(_Piece(inter, second_lo, a1))
    return out


@dataclass
class _RegionCache:
    m: float
    pieces: list[_Piece]


def _render_region(acc: _Accumulator, region: Region, view: View, *, lung: int | None) -> _RegionCache | None:
    """Chord through (shape united with extra) minus floor and cutouts; lungs also record their
    footprint, the chord through their floor (dome cover) and through their other cutouts (cover)."""
    shape = region.shape
    m = float(view.magnification(shape.center))
    box = _quadric_box(shape, view, acc.grid, m)
    if box.empty:
        return None
    u, v = acc.uv(box)
    lo, hi, _, _ = _ray_interval(_Coefficients(shape, view, m), u, v)
    pieces = [_Piece(box, lo, hi)]
    for part in region.extra:
        part_box = _quadric_box(part, view, acc.grid, m)
        if part_box.empty:
            continue
        pu, pv = acc.uv(part_box)
        p_lo, p_hi, _, _ = _ray_interval(_Coefficients(part, view, m), pu, pv)
        added = [_Piece(part_box, p_lo, p_hi)]
        for piece in pieces:
            added = _subtract(added, piece.box, piece.lo, piece.hi)
        pieces = pieces + added
    for cut, is_floor in region.removed:
        cut_box = _quadric_box(cut, view, acc.grid, m)
        if cut_box.empty:
            continue
        cu, cv = acc.uv(cut_box)
        c_lo, c_hi, _, _ = _ray_interval(_Coefficients(cut, view, m), cu, cv)
        pieces = _subtract(pieces, cut_box, c_lo, c_hi)
        if lung is not None:
            cover = acc.lung_dome_cover if is_floor else acc.lung_cover
            cover[cut_box.slices()] += np.maximum(c_hi - c_lo, 0.0)
    mu = np.float32(shape.mu)
    for piece in pieces:
        length = np.maximum(piece.hi - piece.lo, 0.0)
        acc.channels[shape.channel][piece.box.slices()] += mu * length
        if lung is not None:
            acc.lungs[lung][piece.box.slices()] += length
    return _RegionCache(m=m, pieces=pieces)


def _render_lesion(acc: _Accumulator, lesion: Lesion, view: View, lung: _RegionCache | None) -> None:
    """A lesion's profile integrated over the part of each ray inside its lung."""
    if lung is None:
        return
    blob = lesion.blob
    box = _quadric_box(blob, view, acc.grid, lung.m)
    if box.empty:
        return
    coef = _Coefficients(blob, view, lung.m)
    u, v = acc.uv(box)
    lo, hi, t_mid, half = _ray_interval(coef, u, v)
    t_mid = np.broadcast_to(t_mid, lo.shape)
    total = np.zeros(lo.shape, dtype=np.float32)
    for piece in lung.pieces:
        inter = piece.box.intersect(box)
        if inter.empty:
            continue
        pl = _local(inter, piece.box)
        bl = _local(inter, box)
        s0 = np.maximum(piece.lo[pl], lo[bl])
        s1 = np.minimum(piece.hi[pl], hi[bl])
        if not (s1 > s0).any():
            continue
        total[bl] += _profile_integral(blob.profile, coef.a, t_mid[bl], half[bl], s0, s1)
    value = np.float32(blob.mu) * total
    acc.channels[blob.channel][box.slices()] += value
    if lesion.opaque and blob.mu > 0:
        acc.lesion[box.slices()] += value


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For items with ``counts`` elements each: the item of every element and its index within the item."""
    counts = np.maximum(counts, 0).astype(np.int32)
    owner = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    starts = (np.cumsum(counts, dtype=np.int64) - counts).astype(np.int32)
    local = np.arange(int(counts.sum()), dtype=np.int32) - starts[owner]
    return owner, local


def _rows(r0: np.ndarray, r1: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item, row index, row centre V in mm) for every row of every item's [r0, r1)."""
    item, local = _expand(r1 - r0)
    row = r0[item] + local
    v = (row.astype(np.float32) + np.float32(0.5 - grid.rows / 2.0)) * np.float32(grid.spacing)
    return item, row, v


def _span_to_cols(u_lo: np.ndarray, u_hi: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Columns [c0, c1) whose centres lie in [u_lo, u_hi] (mm), clipped to the grid."""
    ps, n = grid.spacing, grid.cols
    lo = np.clip(u_lo / ps + (n / 2.0 - 0.5), -1.0, n + 1.0)
    hi = np.clip(u_hi / ps + (n / 2.0 - 0.5), -2.0, n + 1.0)
    c0 = np.clip(np.ceil(lo), 0, n).astype(np.int64)
    c1 = np.clip(np.floor(hi) + 1, 0, n).astype(np.int64)
    return c0, np.maximum(c1, c0)


def _elements(row_item: np.ndarray, row: np.ndarray, c0: np.ndarray, c1: np.ndarray, grid: Grid):
    """Every pixel of the row spans: (row-span index, flat pixel index, column centre U in mm)."""
    span, local = _expand(c1 - c0)
    col = c0[span] + local
    pix = row[span] * grid.cols + col
    u = (col.astype(np.float32) + np.float32(0.5 - grid.cols / 2.0)) * np.float32(grid.spacing)
    return span, pix, u


def _interval_of_linear(
    coef: np.ndarray, const: np.ndarray, lo: np.ndarray | float, hi: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """u with lo <= coef * u + const <= hi, as (u_lo, u_hi); empty gives u_lo > u_hi."""
    big = np.float32(BIG)
    nz = np.abs(coef) > 1e-9
    safe = np.where(nz, coef, 1.0)
    a = (lo - const) / safe
    b = (hi - const) / safe
    inside = (const >= lo) & (const <= hi)
    u_lo = np.where(nz, np.minimum(a, b), np.where(inside, -big, big))
    u_hi = np.where(nz, np.maximum(a, b), np.where(inside, big, -big))
    return u_lo, u_hi


def _quadric_coefficients(packed: PackedQuadrics, view: View) -> dict[str, np.ndarray]:
    """Vectorised :class:`_Coefficients` of every packed quadric, plus its magnification."""
    m = view.magnification(packed.center)
    d = view.direction
    g = view.aim - packed.center
    alpha = view.e_u[None, :] / m[:, None]
    beta = view.e_v[None, :] / m[:, None]
    mat = packed.matrix
    md = mat @ d
    a = md @ d
    b0 = np.einsum("ni,ni->n", g, md)
    bu = np.einsum("ni,ni->n", alpha, md)
    bv = np.einsum("ni,ni->n", beta, md)
    mg = np.einsum("nij,nj->ni", mat, g)
    malpha = np.einsum("nij,nj->ni", mat, alpha)
    mbeta = np.einsum("nij,nj->ni", mat, beta)
    c0 = np.einsum("ni,ni->n", g, mg) - 1.0
    cu = 2.0 * np.einsum("ni,ni->n", g, malpha)
    cv = 2.0 * np.einsum("ni,ni->n", g, mbeta)
    cuu = np.einsum("ni,ni->n", alpha, malpha)
    cuv = 2.0 * np.einsum("ni,ni->n", alpha, mbeta)
    cvv = np.einsum("ni,ni->n", beta, mbeta)
    n = packed.slab_normal
    return {
        "m": m, "a": a, "b0": b0, "bu": bu, "bv": bv,
        "d0": b0 * b0 - a * c0, "du": 2.0 * b0 * bu - a * cu, "dv": 2.0 * b0 * bv - a * cv,
        "duu": bu * bu - a * cuu, "duv": 2.0 * bu * bv - a * cuv, "dvv": bv * bv - a * cvv,
        "s0": np.einsum("ni,ni->n", g, n), "su": np.einsum("ni,ni->n", alpha, n),
        "sv": np.einsum("ni,ni->n", beta, n), "sd": n @ d,
    }


def _render_quadrics_flat(acc: _Accumulator, packed: PackedQuadrics | None, view: View) -> None:
    """Uniform quadrics with at most one slab, all at once: exact row spans, then one value per pixel."""
    if packed is None:
        return
    grid = acc.grid
    k = _quadric_coefficients(packed, view)
    m = k["m"]
    rel = packed.center - view.aim
    cu_mm = m * (rel @ view.e_u)
    cv_mm = m * (rel @ view.e_v)
    hu = m * (np.abs(packed.bound_axis @ view.e_u) + np.sqrt(np.maximum(
        np.einsum("i,nij,j->n", view.e_u, packed.bound_matrix, view.e_u), 0.0)))
    hv = m * (np.abs(packed.bound_axis @ view.e_v) + np.sqrt(np.maximum(
        np.einsum("i,nij,j->n", view.e_v, packed.bound_matrix, view.e_v), 0.0)))
    ps = grid.spacing
    box_c0 = np.clip(np.floor((cu_mm - hu) / ps + grid.cols / 2.0 - 0.5), 0, grid.cols).astype(np.int64)
    box_c1 = np.clip(np.ceil((cu_mm + hu) / ps + grid.cols / 2.0 - 0.5) + 1, 0, grid.cols).astype(np.int64)
    rows_lo = np.clip(np.floor((cv_mm - hv) / ps + grid.rows / 2.0 - 0.5), 0, grid.rows).astype(np.int64)
    rows_hi = np.clip(np.ceil((cv_mm + hv) / ps + grid.rows / 2.0 - 0.5) + 1, 0, grid.rows).astype(np.int64)
    valid = (k["a"] > 1e-12) & (box_c1 > box_c0)
    rows_hi = np.where(valid, np.maximum(rows_hi, rows_lo), rows_lo)
    a, b0, bu, bv = k["a"], k["b0"], k["bu"], k["bv"]
    d0, du, dv, duu, duv, dvv = k["d0"], k["du"], k["dv"], k["duu"], k["duv"], k["dvv"]
    s0, su, sv, sd = k["s0"], k["su"], k["sv"], k["sd"]
    s_lo, s_hi, mu, channel = packed.slab_lo, packed.slab_hi, packed.mu, packed.channel
    item, row, v = _rows(rows_lo, rows_hi, grid)
    if len(item) == 0:
        return
    v64 = v.astype(np.float64)
    k2 = duu[item]
    k1 = du[item] + duv[item] * v64
    k0 = d0[item] + dv[item] * v64 + dvv[item] * v64 * v64
    # disc(u) = k2 u^2 + k1 u + k0 >= 0 between its roots (k2 < 0 for a bounded projection)
    ps = grid.spacing
    full_lo = (box_c0[item] + 0.5 - grid.cols / 2.0) * ps - ps
    full_hi = (box_c1[item] - 0.5 - grid.cols / 2.0) * ps + ps
    bounded = k2 < -1e-15
    root_disc = k1 * k1 - 4.0 * k2 * k0
    sq = np.sqrt(np.maximum(root_disc, 0.0))
    safe_k2 = np.where(bounded, k2, -1.0)
    r_a = (-k1 + sq) / (2.0 * safe_k2)
    r_b = (-k1 - sq) / (2.0 * safe_k2)
    u_lo = np.where(bounded, np.minimum(r_a, r_b), full_lo)
    u_hi = np.where(bounded, np.maximum(r_a, r_b), full_hi)
    u_hi = np.where(bounded & (root_disc <= 0.0), u_lo - 1.0, u_hi)
    # a slab along the detector plane (sd ~ 0) cuts the row span directly
    flat = np.abs(sd[item]) <= 1e-9
    s_row = s0[item] + sv[item] * v64
    w_lo, w_hi = _interval_of_linear(su[item], s_row, s_lo[item], s_hi[item])
    u_lo = np.where(flat, np.maximum(u_lo, w_lo), u_lo)
    u_hi = np.where(flat, np.minimum(u_hi, w_hi), u_hi)
    u_lo = np.maximum(u_lo, full_lo)
    u_hi = np.minimum(u_hi, full_hi)
    c0, c1 = _span_to_cols(u_lo, u_hi, grid)
    span, pix, u = _elements(item, row, c0, c1, grid)
    if len(span) == 0:
        return
    it = item[span]
    f32 = np.float32
    disc = (k2.astype(f32)[span] * u + k1.astype(f32)[span]) * u + k0.astype(f32)[span]
    inv_a = (1.0 / np.where(a > 0, a, 1.0)).astype(f32)
    half = np.sqrt(np.maximum(disc, 0.0)) * inv_a[it]
    oblique = ~flat[span]
    value = 2.0 * half
    if oblique.any():
        # a slab crossing the ray: intersect the chord [t_mid - half, t_mid + half] with its t-range
        o = np.flatnonzero(oblique)
        io = it[o]
        uo = u[o].astype(np.float64)
        t_mid = -(b0[io] + bu[io] * uo + bv[io] * v64[span[o]]) / a[io]
        s_here = s_row[span[o]] + su[io] * uo
        t1 = (s_lo[io] - s_here) / sd[io]
        t2 = (s_hi[io] - s_here) / sd[io]
        h = half[o].astype(np.float64)
        lo = np.maximum(t_mid - h, np.minimum(t1, t2))
        hi = np.minimum(t_mid + h, np.maximum(t1, t2))
        value[o] = np.maximum(hi - lo, 0.0).astype(f32)
    value *= mu[it]
    acc.add(channel[it], pix, value)


def _segment_geometry(packed: PackedChains, view: View) -> dict[str, np.ndarray]:
    """Per-segment projected endpoints, half-widths and central chords of all chains."""
    points = packed.points
    start = packed.start
    end = start + 1
    uv = view.project(points)
    p0, p1 = uv[start], uv[end]
    seg = points[end] - points[start]
    length = np.linalg.norm(seg, axis=1)
    a = seg / np.maximum(length, 1e-9)[:, None]
    d = view.direction
    cross = np.cross(a, d)
    sine = np.linalg.norm(cross, axis=1)
    n = np.where(sine[:, None] > 1e-6, cross / np.maximum(sine, 1e-9)[:, None], view.e_u[None, :])
    b = 0.5 * (packed.up[start] + packed.up[end])
    b = b - np.sum(b * a, axis=1, keepdims=True) * a
    b_norm = np.linalg.norm(b, axis=1, keepdims=True)
    b = np.where(b_norm > 1e-9, b / np.maximum(b_norm, 1e-9), n)
    c = np.cross(a, b)
    h = 0.5 * (packed.half_height[start] + packed.half_height[end])
    th = 0.5 * (packed.half_thickness[start] + packed.half_thickness[end])
    w_world = np.sqrt((h * np.sum(n * b, axis=1)) ** 2 + (th * np.sum(n * c, axis=1)) ** 2)
    w_world = np.maximum(w_world, 1e-3)
    chord = 2.0 * h * th / (w_world * np.maximum(sine, _MIN_SINE))
    m = view.magnification(points)
    m_mid = 0.5 * (m[start] + m[end])
    return {"p0": p0, "p1": p1, "w": w_world * m_mid, "chord": chord}


def _capsule_rows(p0: np.ndarray, p1: np.ndarray, tx: np.ndarray, ty: np.ndarray, length: np.ndarray,
                  w: np.ndarray, r_start: np.ndarray, r_end: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Span in U (mm), on row ``v``, of the band of half-width ``w`` along each row's segment plus
    discs of radius ``r_start``/``r_end`` at its ends (a superset of its mitred or rounded piece)."""
    big = np.float32(BIG)
    dv = v - p0[:, 1]
    a_lo, a_hi = _interval_of_linear(tx, ty * dv - tx * p0[:, 0], np.zeros_like(length), length)
    b_lo, b_hi = _interval_of_linear(-ty, tx * dv + ty * p0[:, 0], -w, w)
    lo = np.maximum(a_lo, b_lo)
    hi = np.minimum(a_hi, b_hi)
    rect_ok = hi >= lo
    lo = np.where(rect_ok, lo, big)
    hi = np.where(rect_ok, hi, -big)
    for end, radius in ((p0, r_start), (p1, r_end)):
        r2 = radius * radius - (v - end[:, 1]) ** 2
        ok = r2 >= 0
        half = np.sqrt(np.maximum(r2, 0.0))
        lo = np.where(ok, np.minimum(lo, end[:, 0] - half), lo)
        hi = np.where(ok, np.maximum(hi, end[:, 0] + half), hi)
    return lo, hi


# joints bending more than this in projection (cosine) are rounded instead of mitred
_MITRE_MIN_COS = 0.3


def _joints(packed: PackedChains, tx: np.ndarray, ty: np.ndarray, length: np.ndarray, w: np.ndarray):
    """Per segment: start/end cut normals (2-D unit vectors) and whether each end is round.

    Consecutive segments of a chain meet on the bisector of their directions (a mitre), so
    every pixel belongs to exactly one segment. Chain ends are round unless the chain is open
    there; sharp bends (a tube seen nearly end-on) are rounded on both sides.
    """
    chain = packed.chain_of_segment
    n = len(chain)
    t = np.stack([tx, ty], axis=1)
    degenerate = length < 0.7 * w  # nearly end-on: rounded joints look right, mitres would be spikes
    same = chain[1:] == chain[:-1]
    cos = np.sum(t[1:] * t[:-1], axis=1)
    mitre = same & (cos > _MITRE_MIN_COS) & ~degenerate[1:] & ~degenerate[:-1]
    bis = t[1:] + t[:-1]
    bis /= np.maximum(np.linalg.norm(bis, axis=1, keepdims=True), 1e-9)
    start_n = t.copy()
    end_n = t.copy()
    start_round = np.ones(n, dtype=bool)
    end_round = np.ones(n, dtype=bool)
    start_n[1:][mitre] = bis[mitre]
    end_n[:-1][mitre] = bis[mitre]
    start_round[1:][mitre] = False
    end_round[:-1][mitre] = False
    # open chain ends are cut square
    first = np.ones(n, dtype=bool)
    first[1:] = ~same
    last = np.ones(n, dtype=bool)
    last[:-1] = ~same
    start_round &= ~(first & packed.open_start[chain])
    end_round &= ~(last & packed.open_end[chain])
    half_angle_cos = np.ones(n)
    half_angle_cos[1:] = np.where(mitre, np.sqrt(np.maximum((1 + cos) / 2, 0.1)), 1.0)
    r_start = w / half_angle_cos
    half_angle_cos = np.ones(n)
    half_angle_cos[:-1] = np.where(mitre, np.sqrt(np.maximum((1 + cos) / 2, 0.1)), 1.0)
    r_end = w / half_angle_cos
    return start_n, end_n, start_round, end_round, r_start, r_end


def _render_chains(acc: _Accumulator, packed: PackedChains | None, view: View) -> None:
    """Tubes along polylines; consecutive segments meet on mitres, and every tube adds.

    A pixel of a segment's piece gets the chord of the elliptic tube at its normalised distance
    from the segment axis (from the end point inside a round cap), minus the core's chord for
    shelled tubes. Pixels are visited along exact row spans of each segment's piece.
    """
    if packed is None or len(packed.start) == 0:
        return
    grid = acc.grid
    geo = _segment_geometry(packed, view)
    p0, p1, w, chord = geo["p0"], geo["p1"], geo["w"], geo["chord"]
    chain = packed.chain_of_segment
    ps = grid.spacing
    e = p1 - p0
    length = np.linalg.norm(e, axis=1)
    tx = np.where(length > 1e-9, e[:, 0] / np.maximum(length, 1e-9), 1.0)
    ty = np.where(length > 1e-9, e[:, 1] / np.maximum(length, 1e-9), 0.0)
    # chord and half-width at each end of a segment: the mean with the neighbouring segment of the chain
    same = chain[1:] == chain[:-1]
    c_start, c_end, w_start, w_end = chord.copy(), chord.copy(), w.copy(), w.copy()
    c_start[1:] = np.where(same, 0.5 * (chord[1:] + chord[:-1]), chord[1:])
    c_end[:-1] = np.where(same, 0.5 * (chord[1:] + chord[:-1]), chord[:-1])
    w_start[1:] = np.where(same, 0.5 * (w[1:] + w[:-1]), w[1:])
    w_end[:-1] = np.where(same, 0.5 * (w[1:] + w[:-1]), w[:-1])
    w_max = np.maximum(w_start, w_end)
    start_n, end_n, start_round, end_round, r_start, r_end = _joints(packed, tx, ty, length, w_max)
    reach = np.maximum(np.maximum(r_start, r_end), w_max)
    lo_v = np.minimum(p0[:, 1], p1[:, 1]) - reach
    hi_v = np.maximum(p0[:, 1], p1[:, 1]) + reach
    r0 = np.clip(np.ceil(lo_v / ps + grid.rows / 2.0 - 0.5), 0, grid.rows).astype(np.int64)
    r1 = np.clip(np.floor(hi_v / ps + grid.rows / 2.0 - 0.5) + 1, 0, grid.rows).astype(np.int64)
    r1 = np.maximum(r1, r0)

    sr, row, v = _rows(r0, r1, grid)
    if len(row) == 0:
        return
    v64 = v.astype(np.float64)
    u_lo, u_hi = _capsule_rows(p0[sr], p1[sr], tx[sr], ty[sr], length[sr], w_max[sr], r_start[sr], r_end[sr], v64)

    # per row: linear functions of U (mm) for the distance across the axis, along it, and past the
    # start and end cuts; the band and the cut ends bound the row span
    dv0 = v64 - p0[sr, 1]
    dv1 = v64 - p1[sr, 1]
    across_u = -ty[sr]
    across_c = tx[sr] * dv0 + ty[sr] * p0[sr, 0]
    sn = start_n[sr]
    en = end_n[sr]
    start_u = sn[:, 0]
    start_c = sn[:, 1] * dv0 - sn[:, 0] * p0[sr, 0]
    end_u = en[:, 0]
    end_c = en[:, 1] * dv1 - en[:, 0] * p1[sr, 0]
    s_round = start_round[sr]
    e_round = end_round[sr]
    w_row = w_max[sr]
    b_lo, b_hi = _interval_of_linear(across_u, across_c, -w_row, w_row)
    u_lo, u_hi = np.maximum(u_lo, b_lo), np.minimum(u_hi, b_hi)
    k_lo, k_hi = _interval_of_linear(start_u, start_c, 0.0, BIG)
    u_lo = np.where(s_round, u_lo, np.maximum(u_lo, k_lo))
    u_hi = np.where(s_round, u_hi, np.minimum(u_hi, k_hi))
    k_lo, k_hi = _interval_of_linear(end_u, end_c, -BIG, 0.0)
    u_lo = np.where(e_round, u_lo, np.maximum(u_lo, k_lo))
    u_hi = np.where(e_round, u_hi, np.minimum(u_hi, k_hi))
    c0, c1 = _span_to_cols(u_lo, u_hi, grid)
    keep = np.flatnonzero(c1 > c0)
    if len(keep) == 0:
        return

    f32 = np.float32
    sr, row, c0, c1 = sr[keep], row[keep], c0[keep], c1[keep]
    owner_row = chain[sr]
    # round ends keep their linear "past" function; cut ends contribute nothing to the distance
    s_scale = np.where(s_round[keep], -1.0, 0.0)
    e_scale = np.where(e_round[keep], 1.0, 0.0)
    params = {
        "au": across_u[keep].astype(f32), "ac": across_c[keep].astype(f32),
        "su": (start_u[keep] * s_scale).astype(f32), "sc": (start_c[keep] * s_scale).astype(f32),
        "eu": (end_u[keep] * e_scale).astype(f32), "ec": (end_c[keep] * e_scale).astype(f32),
        "lu": tx[sr].astype(f32), "lc": (ty[sr] * dv0[keep] - tx[sr] * p0[sr, 0]).astype(f32),
        "len": length[sr].astype(f32),
        "c0": c_start[sr].astype(f32), "dc": ((c_end[sr] - c_start[sr]) / np.maximum(length[sr], 1e-6)).astype(f32),
        "w0": w_start[sr].astype(f32), "dw": ((w_end[sr] - w_start[sr]) / np.maximum(length[sr], 1e-6)).astype(f32),
    }
    mu_row = packed.mu[owner_row]
    shelled_row = packed.shelled[owner_row]
    core_row = np.where(shelled_row, (packed.mu[owner_row] - packed.mu_core[owner_row]) * packed.ratio_t[owner_row],
                        f32(0.0)).astype(f32)
    inv_rw2_row = (1.0 / np.maximum(packed.ratio_w[owner_row] ** 2, 1e-6)).astype(f32)
    base_row = (packed.channel[owner_row] * (grid.rows * grid.cols) + row * grid.cols).astype(np.int64)

    span, local = _expand(c1 - c0)
    col = c0[span] + local
    u = (col.astype(f32) + f32(0.5 - grid.cols / 2.0)) * f32(ps)
    # chord and width change linearly along each segment (no steps at joints)
    along = np.clip(params["lu"][span] * u + params["lc"][span], 0.0, params["len"][span])
    inv_w = 1.0 / (params["w0"][span] + params["dw"][span] * along)
    chord_e = params["c0"][span] + params["dc"][span] * along
    across = (params["au"][span] * u + params["ac"][span]) * inv_w
    ex_s = np.maximum(params["su"][span] * u + params["sc"][span], 0.0) * inv_w
    ex_e = np.maximum(params["eu"][span] * u + params["ec"][span], 0.0) * inv_w
    s2 = across * across + ex_s * ex_s + ex_e * ex_e
    value = mu_row[span] * chord_e * np.sqrt(np.maximum(1.0 - s2, 0.0))
    shelled = np.flatnonzero(shelled_row[span])
    if len(shelled):
        sp = span[shelled]
        value[shelled] -= core_row[sp] * chord_e[shelled] * np.sqrt(np.maximum(1.0 - s2[shelled] * inv_rw2_row[sp],
                                                                                 0.0))
    np.add.at(acc.stack.reshape(-1), base_row[span] + col, value)


def project(scene: Scene, view: View, grid: Grid) -> Fields:
    """Line integrals of every primitive of ``scene`` on ``grid`` as seen in ``view``."""
    acc = _Accumulator(grid)
    _render_quadrics_flat(acc, scene.packed_quadrics, view)
    for quadric in scene.boxed_quadrics:
        _render_quadric(acc, quadric, view)
    caches: dict[int, _RegionCache | None] = {}
    for index in scene.lungs:
        acc.lungs[index] = np.zeros((grid.rows, grid.cols), dtype=np.float32)
    for index, region in enumerate(scene.regions):
        cache = _render_region(acc, region, view, lung=index if index in acc.lungs else None)
        if index in acc.lungs:
            caches[index] = cache
    for lesion in scene.lesions:
        if lesion.lung not in caches:
            raise ValueError(f"lesion.lung must index a lung region of the scene, got {lesion.lung}")
        _render_lesion(acc, lesion, view, caches[lesion.lung])
    _render_chains(acc, scene.packed_chains, view)
    return Fields(channels=acc.channels, lungs=tuple(acc.lungs[i] for i in scene.lungs), lung_cover=acc.lung_cover,
                  lung_dome_cover=acc.lung_dome_cover, lesion=acc.lesion)
