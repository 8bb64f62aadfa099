"""The procedural 3-D thorax of PhantomCXR, in patient millimetres (LPS: +x left, +y posterior, +z head).

:func:`sample_patient` draws the patient (size, sex, inspiration, heart size, normal variants);
:func:`build_thorax` turns it into the parts every view of the study shares: trunk, lungs cut
by the diaphragm domes, heart and aortic knob, spine, ribs, clavicles, sternum, airways, liver
and stomach bubble. :func:`chest_scene` adds the posture-dependent parts (scapulae protracted
off the lungs on a PA film and over them on an AP one, arms at the sides or raised for a
lateral) and assembles the :class:`~cxr_models.phantom.primitives.Scene` of one view.

Attenuations are per mm at a ~60 keV effective energy, each relative to its container.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from cxr_models.phantom.primitives import (
    Lesion,
    Quadric,
    Region,
    Scene,
    Slab,
    TubeChain,
    cylinder,
    ellipsoid,
    rot_x,
    rot_y,
    rot_z,
    tube,
    unit,
)

logger = logging.getLogger(__name__)

MU_TISSUE = 0.020  # soft tissue vs air
MU_LUNG = -0.015  # aerated lung vs soft tissue
MU_AIR = -0.020  # air vs soft tissue
MU_CORTEX = 0.034  # cortical bone vs soft tissue
MU_MARROW = 0.007  # cancellous bone vs soft tissue
MU_CARTILAGE = 0.002
MU_LIVER = 0.0012
MU_FAT = -0.002

# Right then left: index 0 is the right lung everywhere (scene.regions[0], lesion.lung == 0).
SIDES: tuple[int, int] = (-1, 1)


@dataclass(frozen=True)
class Patient:
    """What varies between patients. Scales are relative to an average adult."""

    width: float
    depth: float
    height: float
    fat: float
    female: bool
    breast: float
    inspiration: float
    heart: float
    bone: float
    nipples: bool
    cervical_rib: bool
    calcified_cartilage: bool


def sample_patient(rng: np.random.Generator) -> Patient:
    female = bool(rng.random() < 0.5)
    width = float(np.clip(rng.normal(1.0 if not female else 0.94, 0.07), 0.8, 1.2))
    return Patient(
        width=width,
        depth=float(np.clip(width * rng.normal(1.0, 0.07), 0.78, 1.25)),
        height=float(np.clip(rng.normal(1.0 if not female else 0.95, 0.05), 0.85, 1.12)),
        fat=float(np.clip(rng.normal(1.0, 0.06), 0.9, 1.2)),
        female=female,
        breast=float(rng.uniform(0.6, 1.5)) if female else 0.0,
        inspiration=float(rng.uniform(0.0, 1.0)),
        heart=float(np.clip(rng.normal(1.0, 0.09), 0.84, 1.22)),
        bone=float(np.clip(rng.normal(1.0, 0.1), 0.7, 1.25)),
        nipples=bool(rng.random() < 0.15),
        cervical_rib=bool(rng.random() < 0.04),
        calcified_cartilage=bool(rng.random() < 0.25),
    )


@dataclass(frozen=True, eq=False)
class Thorax:
    """The view-independent 3-D anatomy of one chest study."""

    patient: Patient
    trunk: Quadric
    lungs: tuple[Quadric, Quadric]
    apices: tuple[Quadric, Quadric]
    domes: tuple[Quadric, Quadric]
    heart: Quadric
    atrium: Quadric
    knob: Quadric
    right_border: Quadric
    hila: np.ndarray
    dome_top: tuple[float, float]
    apex_z: float
    vertebra_z: np.ndarray
    vertebra_y: np.ndarray
    shoulder_z: float
    carina: np.ndarray
    trachea: np.ndarray
    front_y: float
    heart_top: float
    quadrics: tuple[Quadric, ...]
    chains: tuple[TubeChain, ...]
    regions: tuple[Region, ...]

    def lung_regions(self) -> tuple[Region, Region]:
        """Right and left lungs standing on their diaphragm domes (the floor) and wrapped around
        the heart and the mediastinal borders (the cutouts)."""
        right = Region(self.lungs[0], (self.heart, self.atrium, self.right_border), name="right_lung",
                       extra=(self.apices[0],), floor=(self.domes[0],))
        left = Region(self.lungs[1], (self.heart, self.knob), name="left_lung", extra=(self.apices[1],),
                      floor=(self.domes[1],))
        return right, left

    def trunk_half_width(self, z: float) -> float:
        rel = (z - float(self.trunk.center[2])) / float(np.sqrt(self.trunk.bound_matrix[2, 2]))
        return float(np.sqrt(self.trunk.bound_matrix[0, 0]) * np.sqrt(max(1.0 - rel * rel, 0.05)))


def _lung_extent(lung: Quadric, z: np.ndarray, axis: int) -> np.ndarray:
    """Half extent of the (axis-aligned part of the) lung ellipsoid along ``axis`` at heights ``z``."""
    az = np.sqrt(lung.bound_matrix[2, 2])
    a = np.sqrt(lung.bound_matrix[axis, axis])
    rel = np.clip((np.asarray(z) - lung.center[2]) / az, -1.0, 1.0)
    return a * np.sqrt(np.maximum(1.0 - rel**2, 0.0))


def _cage(lungs: tuple[Quadric, Quadric], z: np.ndarray, side: int, wall: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Half-width, half-depth and centre y of the rib cage ellipse at heights z (hugs the lung)."""
    lung = lungs[0 if side < 0 else 1]
    half_w = np.abs(lung.center[0]) + _lung_extent(lung, z, 0) + wall
    half_d = _lung_extent(lung, z, 1) + wall
    return half_w, np.maximum(half_d, 25.0), float(lung.center[1])


def _rib(
    thorax_lungs: tuple[Quadric, Quadric],
    *,
    side: int,
    level: int,
    z_head: float,
    y_body: float,
    drop: float,
    theta_end: float,
    patient: Patient,
    n_points: int = 15,
) -> list[TubeChain]:
    """One rib: head and neck at the spine, then along the cage, descending ``drop`` mm to its anterior end."""
    wall = 4.0 + 3.0 * patient.fat
    theta0 = 0.42
    thetas = np.linspace(theta0, theta_end, n_points)
    progress = (thetas - theta0) / (theta_end - theta0)
    # posterior part almost level, steeper anteriorly; a slight rise just lateral to the spine
    z = z_head - drop * progress**1.6 + 6.0 * np.sin(np.pi * np.clip(progress * 2.5, 0, 1)) * (1 - progress)
    half_w, half_d, y_c = _cage(thorax_lungs, z, side, wall)
    x = side * half_w * np.sin(thetas)
    y = y_c + half_d * np.cos(thetas)
    head = np.array([[side * 14.0, y_body + 6.0, z_head + 3.0], [side * 34.0, y_body + 26.0, z_head + 4.0]])
    points = np.concatenate([head, np.stack([x, y, z], axis=1)])
    n = len(points)
    frac = np.linspace(0.0, 1.0, n)
    height = (4.6 + 2.2 * frac) * (0.85 if level in (1, 11, 12) else 1.0) * patient.height
    thick = 3.3 - 1.4 * frac
    # "up" = wall normal x tangent, so the rib is flat along the chest wall
    tangent = np.gradient(points, axis=0)
    normal = np.stack([points[:, 0], points[:, 1] - y_c, np.zeros(n)], axis=1)
    up = np.cross(normal, tangent)
    up = np.where(up[:, 2:3] < 0, -up, up)
    mu = 0.85 * MU_CORTEX * patient.bone
    marrow = MU_MARROW * patient.bone
    # the anterior third is thinner and less dense; the two parts meet on a square cut
    split = max(2, int(0.62 * n))
    chains = [
        tube(points[: split + 1], radius=height[: split + 1], half_thickness=thick[: split + 1], up=up[: split + 1],
             mu=mu, mu_core=marrow, cortex=1.0, channel="bone", open_end=True),
        tube(points[split:], radius=height[split:], half_thickness=thick[split:], up=up[split:], mu=0.75 * mu,
             mu_core=0.7 * marrow, cortex=0.8, channel="bone", open_start=True),
    ]
    if theta_end > 2.3:
        # costal cartilage to the sternum edge
        end = points[-1]
        z_sternum = end[2] - 12.0 - 0.12 * drop
        y_front = y_c - _cage(thorax_lungs, np.array([z_sternum]), side, wall)[1][0] * 0.97
        mid = np.array([side * 0.55 * abs(end[0]) + side * 6, 0.5 * (end[1] + y_front) - 4, 0.5 * (end[2] + z_sternum)])
        cart = np.array([end, mid, [side * 20.0, y_front, z_sternum]])
        calcified = patient.calcified_cartilage and level >= 4
        chains.append(
            tube(cart, radius=5.0, half_thickness=3.0, up=np.array([0.0, 0.0, 1.0]),
                 mu=0.010 * patient.bone if calcified else MU_CARTILAGE, channel="bone" if calcified else "soft")
        )
    return chains


def vertebra(z: float, y: float, *, level: float, patient: Patient, lumbar: bool = False) -> list[Quadric]:
    """A vertebral body (cortical shell around cancellous bone), pedicles, spinous and transverse processes."""
    bone = patient.bone
    rx = (13.0 + 9.0 * level) * patient.width
    ry = (11.0 + 7.0 * level) * patient.depth
    hh = (7.5 + 5.0 * level) * patient.height
    shell = 0.5 * MU_CORTEX * bone
    marrow = 0.8 * MU_MARROW * bone
    parts = [
        cylinder((0.0, y, z), axis=(0, 0, 1), half_length=hh, radii=(rx, ry), cross=(1, 0, 0), mu=shell,
                 channel="bone"),
        cylinder((0.0, y, z), axis=(0, 0, 1), half_length=hh - 1.0, radii=(rx - 1.0, ry - 1.0), cross=(1, 0, 0),
                 mu=marrow - shell, channel="bone"),
    ]
    for side in SIDES:
        ped = (side * rx * 0.72, y + ry + 5.0, z + 2.0)
        parts.append(ellipsoid(ped, (4.5, 9.0, 7.0), mu=shell, channel="bone"))
        parts.append(ellipsoid(ped, (3.0, 8.0, 5.5), mu=marrow - shell, channel="bone"))
        tp_len = 14.0 if lumbar else 11.0
        parts.append(
            ellipsoid((side * (rx * 0.72 + tp_len), y + ry + 14.0, z + 2.0), (tp_len, 4.5, 4.5),
                      rotation=rot_z(side * 0.35), mu=0.6 * MU_CORTEX * bone, channel="bone")
        )
    spin_len = 20.0 + 6.0 * level
    parts.append(
        ellipsoid((0.0, y + ry + 16.0 + spin_len * 0.8, z - 8.0), (3.0, spin_len, 5.0),
                  rotation=rot_x(0.5 if not lumbar else 0.1), mu=0.45 * MU_CORTEX * bone, channel="bone")
    )
    return parts


def build_thorax(patient: Patient, rng: np.random.Generator) -> Thorax:
    """The shared anatomy of one study (all views project these same parts)."""
    sw, sd, sh = patient.width, patient.depth, patient.height
    dome_r = (-12.0 + (0.5 - patient.inspiration) * 55.0) * sh + float(rng.normal(0, 5))
    dome_l = dome_r - float(rng.uniform(8.0, 26.0))
    apex = 238.0 * sh
    step = 24.5 * sh
    t1 = apex + 4.0
    vert_z = t1 - step * np.arange(14)  # T1 .. T12, L1, L2
    vert_y = (52.0 + 9.0 * np.cos(np.pi * (vert_z - 100.0) / 320.0)) * sd

    trunk = ellipsoid((0.0, 0.0, -40.0 * sh), (158.0 * sw * patient.fat, 110.0 * sd * patient.fat, 520.0 * sh),
                      mu=MU_TISSUE)

    lungs: list[Quadric] = []
    apices: list[Quadric] = []
    domes: list[Quadric] = []
    for side, top in zip(SIDES, (dome_r, dome_l)):
        base = top - 22.0 * sh
        half_h = apex - 28.0 * sh - base
        width = (64.0 if side < 0 else 61.0) * sw
        lungs.append(
            ellipsoid((side * 80.0 * sw, 10.0 * sd, base), (width, 90.0 * sd, half_h), rotation=rot_y(-side * 0.04),
                      mu=MU_LUNG)
        )
        apices.append(ellipsoid((side * 70.0 * sw, 14.0 * sd, apex - 75.0 * sh), (44.0 * sw, 58.0 * sd, 75.0 * sh),
                                mu=MU_LUNG))
        domes.append(ellipsoid((side * 70.0 * sw, -2.0 * sd, top - 138.0 * sh), (112.0 * sw, 128.0 * sd, 138.0 * sh),
                               mu=0.0))

    hs = patient.heart
    long_axis = unit(np.array([0.75, -0.3, -0.58]))
    heart = ellipsoid((15.0 * sw, -20.0 * sd, dome_r + 38.0 * hs * sh), (80.0 * hs * sw, 56.0 * hs * sd, 58.0 * hs * sh),
                      rotation=_frame(long_axis, np.array([0.0, 1.0, 0.0])), mu=0.0)
    atrium = ellipsoid((-26.0 * sw, -12.0 * sd, dome_r + 30.0 * hs * sh), (30.0 * hs * sw, 38.0 * hs * sd, 46.0 * hs * sh),
                       mu=0.0)
    heart_top = float(heart.center[2] + heart.half_extent(np.array([0.0, 0.0, 1.0])))
    knob = ellipsoid((30.0 * sw, 6.0 * sd, heart_top + 42.0 * sh), (19.0 * sw, 30.0 * sd, 23.0 * sh), mu=0.0)
    right_border = ellipsoid((-26.0 * sw, -12.0 * sd, heart_top + 25.0 * sh), (19.0 * sw, 26.0 * sd, 62.0 * sh),
                             mu=0.0)
    hila = np.array([[-56.0 * sw, 2.0 * sd, heart_top - 5.0 * sh], [58.0 * sw, 6.0 * sd, heart_top + 10.0 * sh]])

    quadrics: list[Quadric] = []
    chains: list[TubeChain] = []
    regions: list[Region] = []

    # spine, T1..L2 plus C5..C7 above
    for i, (z, y) in enumerate(zip(vert_z, vert_y)):
        quadrics += vertebra(float(z), float(y), level=min(i / 13.0, 1.0), patient=patient, lumbar=i >= 12)
    for k in range(1, 4):
        z = t1 + k * 19.0 * sh
        quadrics += vertebra(float(z), float(vert_y[0] - 4 * k), level=-0.15, patient=patient)

    # ribs
    drops = [28, 48, 66, 80, 90, 97, 102, 104, 102, 96, 60, 38]
    ends = [2.45, 2.62, 2.66, 2.68, 2.68, 2.66, 2.6, 2.45, 2.3, 2.1, 1.55, 1.2]
    lungs_t = (lungs[0], lungs[1])
    for level in range(12):
        for side in SIDES:
            jitter = float(rng.normal(0, 2.0))
            chains += _rib(lungs_t, side=side, level=level + 1, z_head=float(vert_z[level]) + jitter,
                           y_body=float(vert_y[level]), drop=drops[level] * sh * float(rng.uniform(0.93, 1.07)),
                           theta_end=ends[level], patient=patient)
    if patient.cervical_rib:
        side = SIDES[int(rng.integers(2))]
        chains += _rib(lungs_t, side=side, level=0, z_head=float(t1 + 19.0 * sh), y_body=float(vert_y[0]),
                       drop=10.0, theta_end=0.95, patient=patient, n_points=8)

    # sternum (manubrium and body), cortical shell around marrow
    front = trunk.center[1] - 110.0 * sd * patient.fat
    for center, axes in (((0.0, front + 22.0, t1 - 42.0 * sh), (24.0, 6.0, 24.0)),
                         ((0.0, front + 18.0, t1 - 125.0 * sh), (14.0, 5.5, 58.0))):
        quadrics.append(ellipsoid(center, axes, mu=MU_CORTEX * patient.bone, channel="bone"))
        quadrics.append(ellipsoid(center, (axes[0] - 1.2, axes[1] - 1.2, axes[2] - 1.2),
                                  mu=(MU_MARROW - MU_CORTEX) * patient.bone, channel="bone"))

    # clavicles: an S-curve from the sternoclavicular joint to the acromion
    for side in SIDES:
        ctrl = np.array([
            [side * 20.0, front + 28.0, t1 - 18.0],
            [side * 52.0, front + 22.0, t1 - 10.0],
            [side * 90.0, front + 30.0, t1 - 1.0],
            [side * 124.0, front + 52.0, t1 + 9.0],
            [side * 148.0, front + 78.0, t1 + 14.0],
            [side * 160.0, front + 100.0, t1 + 13.0],
        ]) * np.array([sw, 1.0, 1.0])
        ctrl[:, 2] = t1 + (ctrl[:, 2] - t1) * sh
        clavicle = smooth_path(ctrl, 16)
        chains.append(tube(clavicle, radius=6.5, half_thickness=5.2, up=np.array([0.0, 0.0, 1.0]),
                           mu=MU_CORTEX * 1.05 * patient.bone, mu_core=MU_MARROW * patient.bone, cortex=1.7,
                           channel="bone"))

    # airways: trachea to the carina, main bronchi to the hila
    carina = np.array([2.0 * sw, 4.0 * sd, float(hila[:, 2].mean()) + 28.0 * sh])
    trachea = smooth_path(np.array([[0.0, -8.0 * sd, t1 + 110.0 * sh], [0.0, -6.0 * sd, t1 + 30.0 * sh],
                                     [-3.0 * sw, -1.0 * sd, t1 - 40.0 * sh], carina]), 10)
    chains.append(tube(trachea, radius=8.5 * sw, mu=MU_AIR))
    for i, side in enumerate(SIDES):
        hilum = hila[i]
        tip = carina + 0.8 * (hilum - carina) + np.array([0.0, 0.0, -6.0])
        bronchus = smooth_path(np.array([carina, carina + 0.45 * (tip - carina) + np.array([0, 0, 4.0 * (side > 0)]),
                                          tip]), 5)
        chains.append(tube(bronchus, radius=np.linspace(6.2, 4.5, len(bronchus)) * sw, mu=MU_LUNG * 0.9 - 0.002))

    # abdomen under the domes: liver, stomach bubble (flat bottom), a little colonic gas
    quadrics.append(ellipsoid((-62.0 * sw, 5.0 * sd, dome_r - 75.0 * sh), (85.0 * sw, 80.0 * sd, 62.0 * sh),
                              mu=MU_LIVER))
    if rng.random() < 0.8:
        gas_top = dome_l - float(rng.uniform(6.0, 14.0))
        size = float(rng.uniform(0.6, 1.3))
        center = (58.0 * sw, -18.0 * sd, gas_top - 14.0 * size)
        quadrics.append(ellipsoid(center, (34.0 * size, 26.0 * size, 16.0 * size), mu=MU_AIR,
                                  slabs=(_slab_z(-4.0 * size, 100.0),)))
    if rng.random() < 0.5:
        quadrics.append(ellipsoid((105.0 * sw, 10.0 * sd, dome_l - 70.0), (22.0, 18.0, 14.0), mu=MU_AIR * 0.8,
                                  rotation=rot_y(float(rng.uniform(-0.5, 0.5)))))

    # breasts or nipples (union with the trunk: their chord minus the trunk's)
    for side in SIDES:
        if patient.female:
            # mostly inside the trunk and tilted back at the top: the lower contour is sharp, the
            # upper one fades into the chest wall
            b = patient.breast
            x = side * 88.0 * sw
            z = dome_r + 12.0 * sh - 10.0 * b
            center = (x, trunk_surface(trunk, x, z) + 14.0, z)
            breast = ellipsoid(center, (68.0 * b**0.5 * sw, 44.0 * b, 62.0 * b**0.6),
                               rotation=rot_z(side * 0.25) @ rot_x(-0.45), mu=MU_TISSUE + MU_FAT)
            regions.append(Region(breast, (trunk,), name="breast"))
            if patient.nipples:
                tip = (x, trunk_surface(trunk, x, z) - 28.0 * b, z - 8.0 * b)
                regions.append(Region(ellipsoid(tip, (6.0, 5.0, 6.0), mu=MU_TISSUE), (trunk,), name="nipple"))
        elif patient.nipples:
            tip_z = dome_r + 62.0 * sh
            y = trunk_surface(trunk, side * 92.0 * sw, tip_z)
            regions.append(Region(ellipsoid((side * 92.0 * sw, y - 1.5, tip_z), (6.5, 4.0, 6.0), mu=MU_TISSUE),
                                  (trunk,), name="nipple"))

    # neck and shoulders
    neck = cylinder((0.0, 12.0 * sd, t1 + 150.0 * sh), axis=(0, 0, 1), half_length=150.0 * sh,
                    radii=(52.0 * sw, 50.0 * sd), cross=(1, 0, 0), mu=MU_TISSUE)
    regions.append(Region(neck, (trunk,), name="neck"))
    return Thorax(
        patient=patient,
        trunk=trunk,
        lungs=lungs_t,
        apices=(apices[0], apices[1]),
        domes=(domes[0], domes[1]),
        heart=heart,
        atrium=atrium,
        knob=knob,
        right_border=right_border,
        hila=hila,
        dome_top=(dome_r, dome_l),
        apex_z=apex,
        vertebra_z=vert_z,
        vertebra_y=vert_y,
        shoulder_z=t1 - 12.0 * sh,
        carina=carina,
        trachea=trachea,
        front_y=float(front),
        heart_top=heart_top,
        quadrics=tuple(quadrics),
        chains=tuple(chains),
        regions=tuple(regions),
    )


def trunk_surface(trunk: Quadric, x: float, z: float, *, front: bool = True) -> float:
    """y of the anterior (or posterior) surface of an axis-aligned trunk ellipsoid at (x, z)."""
    ax, ay, az = (float(np.sqrt(trunk.bound_matrix[i, i])) for i in range(3))
    c = trunk.center
    rest = 1.0 - ((x - c[0]) / ax) ** 2 - ((z - c[2]) / az) ** 2
    depth = ay * float(np.sqrt(max(rest, 0.0)))
    return float(c[1] - depth if front else c[1] + depth)


def _slab_z(lo: float, hi: float) -> Slab:
    return Slab(normal=(0.0, 0.0, 1.0), lo=lo, hi=hi)


def smooth_path(ctrl: np.ndarray, n: int) -> np.ndarray:
    """``n`` points along a Catmull-Rom spline through the control points ``ctrl`` (k, 3)."""
    ctrl = np.asarray(ctrl, dtype=np.float64)
    padded = np.concatenate([2 * ctrl[:1] - ctrl[1:2], ctrl, 2 * ctrl[-1:] - ctrl[-2:-1]])
    t = np.linspace(0.0, len(ctrl) - 1.0, n)
    seg = np.minimum(t.astype(int), len(ctrl) - 2)
    f = (t - seg)[:, None]
    p0, p1, p2, p3 = padded[seg], padded[seg + 1], padded[seg + 2], padded[seg + 3]
    return 0.5 * ((2 * p1) + (-p0 + p2) * f + (2 * p0 - 5 * p1 + 4 * p2 - p3) * f**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * f**3)




def _scapula(thorax: Thorax, side: int, *, protracted: bool) -> tuple[list[Quadric], list[TubeChain]]:
    """A thin plate on the posterior chest wall with a thick lateral border, spine and glenoid."""
    p = thorax.patient
    bone = p.bone
    z_top = thorax.shoulder_z - 8.0
    angle = (0.85 if protracted else 0.35) * side  # rotation about z: plate turns to face laterally
    x_c = side * (118.0 if protracted else 92.0) * p.width
    y_c = (88.0 if protracted else 96.0) * p.depth
    center = np.array([x_c, y_c, z_top - 62.0 * p.height])
    rot = rot_z(angle) @ rot_y(side * 0.12)
    plate = ellipsoid(center, (48.0 * p.width, 3.0, 70.0 * p.height), rotation=rot, mu=0.8 * MU_CORTEX * bone,
                      channel="bone")
    lateral_dir = rot @ np.array([side * 1.0, 0.0, 0.0])
    top = center + lateral_dir * 44.0 * p.width + np.array([0.0, 0.0, 58.0 * p.height])
    bottom = center - lateral_dir * 10.0 + np.array([0.0, 0.0, -70.0 * p.height])
    border = smooth_path(np.array([top, 0.5 * (top + bottom) + lateral_dir * 6.0, bottom]), 8)
    spine_pts = smooth_path(np.array([center - lateral_dir * 40.0 + np.array([0, 4.0, 40.0 * p.height]),
                                       center + lateral_dir * 20.0 + np.array([0, 9.0, 52.0 * p.height]),
                                       top + lateral_dir * 12.0 + np.array([0, 6.0, 18.0])]), 8)
    glenoid = top + np.array([side * 10.0, -8.0, -6.0])
    quadrics = [plate, ellipsoid(glenoid, (8.0, 14.0, 18.0), mu=MU_CORTEX * bone, channel="bone")]
    chains = [
        tube(border, radius=5.0, mu=MU_CORTEX * bone, mu_core=MU_MARROW * bone, cortex=1.2, channel="bone"),
        tube(spine_pts, radius=5.5, half_thickness=4.0, mu=MU_CORTEX * bone, mu_core=MU_MARROW * bone, cortex=1.2,
             channel="bone"),
    ]
    return quadrics, chains


def _arm(thorax: Thorax, side: int, *, posture: str) -> tuple[list[Quadric], list[TubeChain], list[Region]]:
    """Deltoid, humeral head and shaft, and the arm's soft tissue in the given posture.

    'side': arms hanging (AP), 'hips': hands on hips, elbows out (PA), 'raised': above the head (lateral).
    """
    p = thorax.patient
    bone = p.bone
    shoulder_x = side * (thorax.trunk_half_width(thorax.shoulder_z) + 44.0 * p.width)
    head = np.array([shoulder_x, 8.0 * p.depth, thorax.shoulder_z - 6.0])
    if posture == "raised":
        direction = unit(np.array([side * 0.08, -0.12, 1.0]))
        head = head + np.array([-side * 8.0, -10.0, 75.0])
        deltoid = ellipsoid(head + np.array([side * 6.0, 0.0, 30.0]), (30.0 * p.fat, 34.0 * p.fat, 52.0),
                            rotation=_align_z(direction), mu=MU_TISSUE)
    else:
        direction = unit(np.array([side * 0.42, 0.1, -0.9]) if posture == "hips" else np.array([side * 0.12, 0.05, -1.0]))
        deltoid = ellipsoid(head + np.array([side * 12.0, 0.0, -22.0]), (52.0 * p.fat, 56.0 * p.fat, 78.0),
                            rotation=_align_z(direction), mu=MU_TISSUE)
    elbow = head + direction * 290.0 * p.height
    quadrics = [
        ellipsoid(head, (24.0, 24.0, 25.0), mu=MU_CORTEX * bone, channel="bone"),
        ellipsoid(head, (22.0, 22.0, 23.0), mu=(MU_MARROW - MU_CORTEX) * bone, channel="bone"),
    ]
    shaft = np.array([head + direction * 30.0, head + direction * 150.0, elbow])
    chains = [tube(shaft, radius=np.array([13.0, 10.5, 12.0]), mu=MU_CORTEX * bone, mu_core=MU_MARROW * bone,
                   cortex=3.2, channel="bone")]
    arm = cylinder(0.5 * (head + elbow), axis=direction, half_length=145.0 * p.height,
                   radii=(44.0 * p.fat, 46.0 * p.fat), mu=MU_TISSUE)
    regions = [Region(deltoid, (thorax.trunk,), name="deltoid"), Region(arm, (thorax.trunk, deltoid), name="arm")]
    return quadrics, chains, regions


def _frame(first: np.ndarray, hint: np.ndarray) -> np.ndarray:
    """A rotation whose first column is ``first`` and second lies along ``hint`` (orthogonalised)."""
    a = unit(first)
    b = unit(hint - np.dot(hint, a) * a)
    return np.stack([a, b, np.cross(a, b)], axis=1)


def _align_z(direction: np.ndarray) -> np.ndarray:
    """A rotation taking +z to ``-direction`` (long axis of a limb pointing along it)."""
    z = unit(-direction)
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = unit(np.cross(helper, z))
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def chest_scene(
    thorax: Thorax,
    *,
    view: str,
    lesions: tuple[Lesion, ...],
    chains: tuple[TubeChain, ...],
    quadrics: tuple[Quadric, ...],
    aim_jitter: np.ndarray,
) -> Scene:
    """The scene of one chest radiograph: shared anatomy + posture parts + lesions, vessels and devices.

    ``view`` is 'PA', 'AP', 'LL' or 'RL'; ``chains``/``quadrics`` are the study's vessels and devices.
    """
    if view not in ("PA", "AP", "LL", "RL"):
        raise ValueError(f"view must be PA, AP, LL or RL, got {view!r}")
    extra_q: list[Quadric] = []
    extra_c: list[TubeChain] = []
    extra_r: list[Region] = []
    posture = {"PA": "hips", "AP": "side", "LL": "raised", "RL": "raised"}[view]
    for side in SIDES:
        q, c = _scapula(thorax, side, protracted=view == "PA" or view in ("LL", "RL"))
        extra_q += q
        extra_c += c
        q, c, r = _arm(thorax, side, posture=posture)
        extra_q += q
        extra_c += c
        extra_r += r
    lungs = thorax.lung_regions()
    p = thorax.patient
    mid_z = 0.5 * (thorax.apex_z + min(thorax.dome_top) - 40.0)
    if view in ("PA", "AP"):
        aim = np.array([0.0, 0.0, mid_z]) + aim_jitter
        half = (185.0 * p.width, 175.0 * p.height)
    else:
        aim = np.array([0.0, 8.0 * p.depth, mid_z]) + aim_jitter
        half = (150.0 * p.depth, 175.0 * p.height)
    return Scene(
        quadrics=(thorax.trunk,) + thorax.quadrics + tuple(extra_q) + quadrics,
        chains=thorax.chains + tuple(extra_c) + chains,
        regions=lungs + thorax.regions + tuple(extra_r),
        lungs=(0, 1),
        lesions=lesions,
        aim=aim,
        body=thorax.trunk,
        field_half=half,
    )
