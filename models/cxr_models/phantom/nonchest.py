"""Non-chest radiographs for the ``other`` view class: hand, skull, abdomen, knee and forearm.

Built from the same primitives and projected by the same projector as the thorax, so the view
model has to tell chest from non-chest by content (long bones, phalanges, a skull shell, bowel
gas over a lumbar spine), not by header or texture statistics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from cxr_models.phantom.anatomy import (
    MU_AIR,
    MU_CORTEX,
    MU_LIVER,
    MU_MARROW,
    MU_TISSUE,
    Patient,
    smooth_path,
    vertebra,
)
from cxr_models.phantom.primitives import Quadric, Region, Scene, TubeChain, cylinder, ellipsoid, rot_x, rot_y, rot_z, tube

logger = logging.getLogger(__name__)

EXAMS: tuple[str, ...] = ("HAND", "SKULL", "ABDOMEN", "KNEE", "FOREARM")
_VIEWS: dict[str, tuple[str, ...]] = {
    "HAND": ("PA", "LL"),
    "SKULL": ("PA", "LL"),
    "ABDOMEN": ("AP",),
    "KNEE": ("AP", "LL"),
    "FOREARM": ("AP", "LL"),
}


@dataclass(frozen=True, eq=False)
class OtherExam:
    """A non-chest study: its body part, the view positions it may take, and its 3-D scene."""

    body_part: str
    views: tuple[str, ...]
    scene: Scene


def _bone(points: np.ndarray, radius: float | np.ndarray, cortex: float, bone: float) -> TubeChain:
    return tube(points, radius=radius, mu=MU_CORTEX * bone, mu_core=MU_MARROW * bone, cortex=cortex, channel="bone")


def _shell(center: tuple[float, float, float], axes: np.ndarray, thickness: float, bone: float,
           rotation: np.ndarray | None = None) -> list[Quadric]:
    """A bony shell: outer minus inner ellipsoid."""
    return [
        ellipsoid(center, axes, rotation=rotation, mu=MU_CORTEX * bone, channel="bone"),
        ellipsoid(center, np.maximum(axes - thickness, 0.5), rotation=rotation, mu=-MU_CORTEX * bone, channel="bone"),
    ]


def _hand(rng: np.random.Generator, bone: float) -> tuple[list[Quadric], list[TubeChain], list[Region], Quadric]:
    palm = ellipsoid((0.0, 0.0, 0.0), (46.0, 15.0, 52.0), mu=MU_TISSUE)
    quadrics: list[Quadric] = [palm]
    chains: list[TubeChain] = []
    wrist = cylinder((0.0, 0.0, -115.0), axis=(0, 0, 1), half_length=75.0, radii=(33.0, 22.0), cross=(1, 0, 0),
                     mu=MU_TISSUE)
    regions = [Region(wrist, (palm,), name="wrist")]
    spread = float(rng.uniform(0.0, 0.12))
    for k, x in enumerate((-17.0, 1.0, 18.0, 33.0)):
        angle = (k - 1.5) * spread
        direction = np.array([np.sin(angle), 0.0, np.cos(angle)])
        base = np.array([x * 0.65, 0.0, -38.0])
        knuckle = np.array([x, 0.0, 42.0 - 3.0 * abs(k - 1)])
        lengths = np.array([44.0, 27.0, 19.0]) * (1.0 - 0.08 * abs(k - 1.2))
        chains.append(_bone(np.array([base, 0.5 * (base + knuckle), knuckle]), np.array([5.0, 3.6, 4.6]), 1.4, bone))
        start = knuckle + direction * 3.0
        tip = start
        for n, length in enumerate(lengths):
            end = start + direction * length
            radius = np.array([4.6, 3.2, 3.9]) * (1.0 - 0.15 * n)
            chains.append(_bone(np.array([start, 0.5 * (start + end), end]), radius, 1.1, bone))
            tip = end
            start = end + direction * 2.5
        chains.append(tube(np.array([knuckle - direction * 6.0, tip + direction * 4.0]), radius=9.0, mu=MU_TISSUE))
    # thumb
    base = np.array([-26.0, 0.0, -40.0])
    joints = [base, np.array([-47.0, 0.0, -8.0]), np.array([-62.0, 0.0, 22.0]), np.array([-72.0, 0.0, 44.0])]
    for a, b in zip(joints[:-1], joints[1:]):
        chains.append(_bone(np.array([a, 0.5 * (a + b), b - (b - a) * 0.06]), np.array([5.0, 3.8, 4.6]), 1.2, bone))
    chains.append(tube(np.array(joints[1:]), radius=10.0, mu=MU_TISSUE))
    # carpals in two rows, distal radius and ulna
    for row, z in enumerate((-50.0, -66.0)):
        for x in np.linspace(-22.0, 22.0, 4):
            quadrics += _shell((float(x + rng.normal(0, 1.5)), 0.0, z), np.array([7.5, 6.0, 6.5]) * (1 - 0.1 * row),
                               1.2, bone)
    chains.append(_bone(np.array([[-14.0, 0.0, -190.0], [-13.0, 0.0, -120.0], [-12.0, 0.0, -80.0]]),
                        np.array([8.0, 8.0, 12.0]), 2.0, bone))
    chains.append(_bone(np.array([[17.0, 0.0, -190.0], [16.0, 0.0, -120.0], [15.0, 0.0, -84.0]]),
                        np.array([5.5, 5.5, 6.5]), 1.8, bone))
    return quadrics, chains, regions, palm


def _skull(rng: np.random.Generator, bone: float) -> tuple[list[Quadric], list[TubeChain], list[Region], Quadric]:
    scale = float(rng.uniform(0.93, 1.07))
    axes = np.array([72.0, 90.0, 96.0]) * scale
    center = (0.0, 5.0, 30.0)
    scalp = ellipsoid(center, axes + 6.0, mu=MU_TISSUE)
    quadrics: list[Quadric] = [scalp]
    quadrics += _shell(center, axes, 2.2, bone)  # outer table
    quadrics.append(ellipsoid(center, axes - 2.2, mu=MU_MARROW * bone, channel="bone"))  # diploe
    quadrics.append(ellipsoid(center, axes - 5.2, mu=(MU_CORTEX - MU_MARROW) * bone, channel="bone"))
    quadrics.append(ellipsoid(center, axes - 7.2, mu=-MU_CORTEX * bone, channel="bone"))
    # skull base, petrous ridges, face
    quadrics.append(ellipsoid((0.0, 15.0, -35.0), (58.0, 48.0, 10.0), mu=0.7 * MU_CORTEX * bone, channel="bone"))
    for side in (-1, 1):
        quadrics.append(ellipsoid((side * 32.0, 25.0, -28.0), (30.0, 9.0, 9.0), rotation=rot_z(side * 0.6),
                                  mu=MU_CORTEX * bone, channel="bone"))
        quadrics += _shell((side * 31.0, -72.0, -2.0), np.array([19.0, 14.0, 17.0]), 2.5, bone)
        quadrics.append(ellipsoid((side * 26.0, -58.0, -48.0), (15.0, 18.0, 17.0), mu=MU_AIR))
    quadrics.append(ellipsoid((0.0, -62.0, -60.0), (48.0, 32.0, 26.0), mu=MU_TISSUE))
    quadrics.append(ellipsoid((0.0, -82.0, 30.0), (16.0, 7.0, 11.0), mu=MU_AIR))
    quadrics.append(ellipsoid((0.0, -66.0, -38.0), (7.0, 20.0, 22.0), mu=MU_AIR))
    chains: list[TubeChain] = []
    mandible = smooth_path(np.array([[-50.0, 8.0, -30.0], [-48.0, -5.0, -85.0], [-35.0, -45.0, -105.0],
                                     [0.0, -78.0, -112.0], [35.0, -45.0, -105.0], [48.0, -5.0, -85.0],
                                     [50.0, 8.0, -30.0]]), 22)
    chains.append(_bone(mandible, 6.5, 2.2, bone))
    for z, radius in ((-72.0, 40.0), (-88.0, 37.0)):
        for phi in np.linspace(-1.2, 1.2, 10):
            quadrics.append(ellipsoid((radius * np.sin(phi), -60.0 - 18.0 * np.cos(phi), z), (3.5, 3.5, 5.5),
                                      mu=0.05, channel="bone"))
    return quadrics, chains, [], scalp


def _abdomen(rng: np.random.Generator, bone: float) -> tuple[list[Quadric], list[TubeChain], list[Region], Quadric]:
    patient = Patient(width=1.0, depth=1.0, height=1.0, fat=1.0, female=False, breast=0.0, inspiration=0.5,
                      heart=1.0, bone=bone, nipples=False, cervical_rib=False, calcified_cartilage=False)
    trunk = ellipsoid((0.0, 0.0, -60.0), (165.0, 115.0, 520.0), mu=MU_TISSUE)
    quadrics: list[Quadric] = [trunk]
    for i, z in enumerate(np.linspace(110.0, -40.0, 6)):
        quadrics += vertebra(float(z), 45.0, level=1.0, patient=patient, lumbar=i > 0)
    quadrics.append(ellipsoid((0.0, 55.0, -110.0), (45.0, 14.0, 50.0), rotation=rot_x(0.6), mu=MU_CORTEX * 0.7 * bone,
                              channel="bone"))
    chains: list[TubeChain] = []
    for side in (-1, 1):
        quadrics.append(ellipsoid((side * 95.0, 40.0, -105.0), (62.0, 5.0, 55.0), rotation=rot_z(side * 0.5),
                                  mu=0.6 * MU_CORTEX * bone, channel="bone"))
        crest = smooth_path(np.array([[side * 40.0, 70.0, -80.0], [side * 110.0, 40.0, -55.0],
                                      [side * 140.0, -20.0, -95.0]]), 12)
        chains.append(_bone(crest, 5.0, 1.6, bone))
        quadrics += _shell((side * 88.0, 5.0, -215.0), np.array([24.0, 24.0, 24.0]), 2.0, bone)
        ramus = smooth_path(np.array([[side * 75.0, -10.0, -200.0], [side * 40.0, -40.0, -235.0],
                                      [side * 8.0, -50.0, -240.0]]), 10)
        chains.append(_bone(ramus, 6.0, 1.8, bone))
        quadrics.append(ellipsoid((side * 80.0, 60.0, 45.0), (30.0, 25.0, 55.0), mu=0.0015))
    quadrics.append(ellipsoid((-70.0, 0.0, 140.0), (90.0, 85.0, 70.0), mu=MU_LIVER))
    # bowel gas: a partly filled colon frame and scattered loops
    frame = smooth_path(np.array([[-105.0, -10.0, -160.0], [-110.0, -20.0, 60.0], [0.0, -60.0, 90.0],
                                  [110.0, -20.0, 80.0], [105.0, 0.0, -120.0], [40.0, 20.0, -170.0]]), 40)
    keep = rng.random(len(frame)) < 0.7
    for a, b in zip(frame[:-1], frame[1:]):
        if keep[int(np.argmin(np.linalg.norm(frame - a, axis=1)))]:
            quadrics.append(ellipsoid(0.5 * (a + b), (17.0, 15.0, 17.0) * rng.uniform(0.7, 1.2, size=3), mu=MU_AIR))
    for _ in range(int(rng.integers(6, 18))):
        quadrics.append(ellipsoid((rng.uniform(-90, 90), rng.uniform(-60, 20), rng.uniform(-150, 60)),
                                  rng.uniform(6.0, 16.0, size=3), rotation=rot_y(float(rng.uniform(0, 3.1))),
                                  mu=MU_AIR))
    return quadrics, chains, [], trunk


def _knee(rng: np.random.Generator, bone: float) -> tuple[list[Quadric], list[TubeChain], list[Region], Quadric]:
    leg = cylinder((0.0, 0.0, 0.0), axis=(0, 0, 1), half_length=260.0, radii=(58.0, 62.0), cross=(1, 0, 0),
                   mu=MU_TISSUE)
    quadrics: list[Quadric] = [leg]
    chains = [
        _bone(np.array([[0.0, 5.0, 260.0], [0.0, 5.0, 120.0], [0.0, 8.0, 40.0]]), np.array([14.0, 14.0, 22.0]),
              4.0, bone),
        _bone(np.array([[0.0, 5.0, -260.0], [0.0, 5.0, -120.0], [0.0, 6.0, -25.0]]), np.array([15.0, 15.0, 22.0]),
              3.5, bone),
        _bone(np.array([[38.0, 18.0, -260.0], [37.0, 16.0, -120.0], [35.0, 15.0, -40.0]]), np.array([6.0, 5.0, 8.0]),
              1.8, bone),
    ]
    for side in (-1, 1):
        quadrics += _shell((side * 20.0, 12.0, 12.0), np.array([21.0, 30.0, 24.0]), 2.0, bone)
    quadrics += _shell((0.0, 5.0, -18.0), np.array([40.0, 30.0, 10.0]), 2.0, bone)
    quadrics += _shell((0.0, -42.0, 35.0), np.array([20.0, 10.0, 24.0]), 2.0, bone)
    return quadrics, chains, [], leg


def _forearm(rng: np.random.Generator, bone: float) -> tuple[list[Quadric], list[TubeChain], list[Region], Quadric]:
    arm = cylinder((0.0, 0.0, 0.0), axis=(0, 0, 1), half_length=240.0, radii=(40.0, 33.0), cross=(1, 0, 0),
                   mu=MU_TISSUE)
    bend = float(rng.uniform(-0.05, 0.05))
    chains = [
        _bone(np.array([[-15.0, 0.0, -210.0], [-12.0 + 200 * bend, 0.0, 0.0], [-6.0, 0.0, 190.0]]),
              np.array([12.0, 7.0, 8.0]), 2.5, bone),
        _bone(np.array([[15.0, 2.0, -210.0], [13.0, 2.0, 0.0], [6.0, 2.0, 200.0]]), np.array([6.5, 7.0, 11.0]),
              2.5, bone),
    ]
    return [arm], chains, [], arm


_BUILDERS = {"HAND": _hand, "SKULL": _skull, "ABDOMEN": _abdomen, "KNEE": _knee, "FOREARM": _forearm}
_FIELD_HALF = {"HAND": (110.0, 150.0), "SKULL": (115.0, 140.0), "ABDOMEN": (190.0, 200.0), "KNEE": (110.0, 190.0),
               "FOREARM": (90.0, 200.0)}
_AIM = {"HAND": (-8.0, 0.0, -10.0), "SKULL": (0.0, 0.0, 5.0), "ABDOMEN": (0.0, 0.0, -40.0), "KNEE": (0.0, 0.0, 0.0),
        "FOREARM": (0.0, 0.0, 0.0)}


def build_other(rng: np.random.Generator) -> OtherExam:
    """A random non-chest exam with its scene (shared by its views)."""
    body_part = str(rng.choice(EXAMS))
    bone = float(np.clip(rng.normal(1.0, 0.1), 0.7, 1.25))
    quadrics, chains, regions, body = _BUILDERS[body_part](rng, bone)
    half = _FIELD_HALF[body_part]
    scene = Scene(
        quadrics=tuple(quadrics),
        chains=tuple(chains),
        regions=tuple(regions),
        lungs=(),
        lesions=(),
        aim=np.array(_AIM[body_part]) + rng.normal(0.0, 8.0, size=3),
        body=body,
        field_half=(half[0], half[1]),
    )
    return OtherExam(body_part=body_part, views=_VIEWS[body_part], scene=scene)
