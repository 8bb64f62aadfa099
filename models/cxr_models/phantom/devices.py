"""Lines, tubes and leads in 3-D: ECG electrodes with wires, endotracheal and nasogastric tubes,
central venous catheters, sternotomy wires and pacemakers.

They are attenuating objects of the study like the anatomy, so every view projects them
consistently. Radiopaque parts (stripes, wires, snaps, generator) attenuate in the ``metal``
channel, whose contrast the detector varies with the tube voltage. Portable (AP) studies are
intensive-care patients: devices are much more frequent there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from cxr_models.phantom.anatomy import Thorax, smooth_path, trunk_surface
from cxr_models.phantom.primitives import Quadric, TubeChain, ellipsoid, tube

logger = logging.getLogger(__name__)

MU_PLASTIC = 0.022
MU_STRIPE = 0.25
MU_WIRE = 0.35
MU_METAL = 0.6


@dataclass(frozen=True, eq=False)
class Devices:
    """The devices of one study and their names (for the catalogue)."""

    chains: tuple[TubeChain, ...]
    quadrics: tuple[Quadric, ...]
    kinds: tuple[str, ...]


def _ecg(thorax: Thorax, rng: np.random.Generator) -> tuple[list[TubeChain], list[Quadric]]:
    """3-5 electrodes on the anterior chest, each a pad with a metal snap and a wire leaving the field."""
    p = thorax.patient
    spots = [(-95.0, thorax.apex_z - 30.0), (95.0, thorax.apex_z - 30.0), (110.0, thorax.dome_top[1] + 10.0),
             (-105.0, thorax.dome_top[0] + 5.0), (40.0, thorax.dome_top[1] + 35.0)]
    count = int(rng.integers(3, 6))
    chains: list[TubeChain] = []
    quadrics: list[Quadric] = []
    for x, z in spots[:count]:
        x = (x + float(rng.normal(0, 12))) * p.width
        z = z + float(rng.normal(0, 12))
        y = trunk_surface(thorax.trunk, x, z) - 1.5
        quadrics.append(ellipsoid((x, y, z), (13.0, 1.2, 13.0), mu=0.012))
        quadrics.append(ellipsoid((x, y - 2.5, z), (3.5, 2.5, 3.5), mu=MU_METAL, channel="metal"))
        # the wire wanders to the edge of the field along the skin
        heading = np.array([np.sign(x) * rng.uniform(0.3, 1.0), 0.0, rng.uniform(-1.0, 1.0)])
        ctrl = [np.array([x, y - 3.0, z])]
        for _ in range(4):
            heading = heading + rng.normal(0, 0.35, size=3) * np.array([1.0, 0.0, 1.0])
            step = heading / max(np.linalg.norm(heading), 1e-6) * rng.uniform(50.0, 110.0)
            nxt = ctrl[-1] + step
            nxt[1] = trunk_surface(thorax.trunk, float(nxt[0]), float(nxt[2])) - 6.0
            ctrl.append(nxt)
        chains.append(tube(smooth_path(np.array(ctrl), 24), radius=0.7, mu=MU_WIRE, channel="metal"))
    return chains, quadrics


def _endotracheal(thorax: Thorax, rng: np.random.Generator) -> list[TubeChain]:
    """A plastic tube down the trachea, tip 3-7 cm above the carina, with a radiopaque stripe."""
    trachea = thorax.trachea  # from the neck down to the carina
    tip_z = float(thorax.carina[2] + rng.uniform(30.0, 70.0))
    rising = trachea[::-1]
    tip = np.array([np.interp(tip_z, rising[:, 2], rising[:, 0]), np.interp(tip_z, rising[:, 2], rising[:, 1]), tip_z])
    above = trachea[trachea[:, 2] > tip_z]
    path = smooth_path(np.vstack([above[0] + np.array([0.0, -25.0, 90.0]), above, tip]), 18)
    stripe = path + np.array([4.0, -1.0, 0.0])
    return [
        tube(path, radius=4.6, mu=MU_PLASTIC, mu_core=0.0, cortex=1.3),
        tube(stripe, radius=0.55, mu=MU_STRIPE, channel="metal"),
    ]


def _central_line(thorax: Thorax, rng: np.random.Generator) -> list[TubeChain]:
    """A jugular or subclavian catheter ending in the superior vena cava."""
    p = thorax.patient
    t1 = float(thorax.vertebra_z[0])
    tip = np.array([-18.0 * p.width, -6.0, thorax.heart_top + rng.uniform(-5.0, 25.0)])
    if rng.random() < 0.5:
        side = -1.0 if rng.random() < 0.75 else 1.0
        ctrl = np.array([[side * 40.0, -12.0, t1 + 160.0], [side * 36.0, -10.0, t1 + 60.0],
                         [side * 28.0, -8.0, t1 + 5.0], [-20.0, -8.0, t1 - 40.0], tip])
    else:
        side = 1.0 if rng.random() < 0.6 else -1.0
        ctrl = np.array([[side * 150.0, -70.0, t1 - 5.0], [side * 95.0, -55.0, t1 - 12.0],
                         [side * 40.0, -30.0, t1 - 22.0], [-14.0, -14.0, t1 - 45.0], tip])
    ctrl[:, 0] *= p.width
    return [tube(smooth_path(ctrl, 26), radius=1.1, mu=0.12, channel="metal")]


def _nasogastric(thorax: Thorax, rng: np.random.Generator) -> list[TubeChain]:
    """Down the oesophagus behind the trachea, through the left dome into the stomach."""
    p = thorax.patient
    y_eso = float(thorax.carina[1] + 22.0)
    dome = thorax.dome_top[1]
    ctrl = np.array([
        [2.0, y_eso - 10.0, thorax.carina[2] + 260.0],
        [4.0, y_eso, thorax.carina[2] + 80.0],
        [10.0 * p.width, y_eso + 8.0, thorax.carina[2] - 80.0],
        [28.0 * p.width, y_eso, dome - 15.0],
        [60.0 * p.width, -10.0, dome - 45.0],
        [75.0 * p.width, -5.0, dome - 25.0 + rng.uniform(-10, 10)],
    ])
    path = smooth_path(ctrl, 30)
    return [
        tube(path, radius=2.2, mu=0.01),
        tube(path + np.array([1.6, 0.0, 0.0]), radius=0.5, mu=MU_STRIPE, channel="metal"),
    ]


def _sternotomy(thorax: Thorax, rng: np.random.Generator) -> tuple[list[TubeChain], list[Quadric]]:
    """Looped wires around the sternum, each with a twisted knot."""
    chains: list[TubeChain] = []
    quadrics: list[Quadric] = []
    top = float(thorax.vertebra_z[0] - 40.0 * thorax.patient.height)
    y = thorax.front_y + 20.0
    for k in range(int(rng.integers(5, 8))):
        z = top - 26.0 * k + float(rng.normal(0, 2))
        phi = np.linspace(0.0, 2 * np.pi, 17)
        loop = np.stack([11.0 * np.cos(phi), y + 7.0 * np.sin(phi), z + 2.5 * np.sin(2 * phi)], axis=1)
        chains.append(tube(loop, radius=0.6, mu=MU_METAL, channel="metal"))
        quadrics.append(ellipsoid((11.0, y, z), (2.0, 2.0, 3.5), mu=MU_METAL, channel="metal"))
    return chains, quadrics


def _pacemaker(thorax: Thorax, rng: np.random.Generator) -> tuple[list[TubeChain], list[Quadric]]:
    p = thorax.patient
    side = 1.0 if rng.random() < 0.8 else -1.0
    t1 = float(thorax.vertebra_z[0])
    gen = np.array([side * 95.0 * p.width, thorax.front_y - 4.0, t1 - 55.0])
    apex = thorax.heart.center + np.array([45.0, -25.0, -30.0]) * p.heart
    ctrl = np.array([gen, gen + np.array([-side * 40.0, 20.0, 15.0]), [side * 35.0, -20.0, t1 - 25.0],
                     [-18.0, -6.0, thorax.heart_top], [-25.0, -15.0, thorax.heart.center[2]], apex])
    return (
        [tube(smooth_path(ctrl, 28), radius=1.2, mu=MU_WIRE, channel="metal")],
        [ellipsoid(gen, (24.0, 4.5, 20.0), mu=0.12, channel="metal"),
         ellipsoid(gen + np.array([0.0, 0.0, -4.0]), (15.0, 3.0, 10.0), mu=0.25, channel="metal"),
         ellipsoid(apex, (2.5, 2.5, 6.0), mu=MU_METAL, channel="metal")],
    )


def sample_devices(thorax: Thorax, rng: np.random.Generator, *, portable: bool) -> Devices:
    """Devices of a study; intensive-care (portable) patients carry more of them."""
    chains: list[TubeChain] = []
    quadrics: list[Quadric] = []
    kinds: list[str] = []
    p_ecg, p_ett, p_cvc, p_ng = (0.6, 0.3, 0.35, 0.25) if portable else (0.08, 0.01, 0.05, 0.02)
    if rng.random() < p_ecg:
        c, q = _ecg(thorax, rng)
        chains += c
        quadrics += q
        kinds.append("ecg_leads")
    if rng.random() < p_ett:
        chains += _endotracheal(thorax, rng)
        kinds.append("endotracheal_tube")
    if rng.random() < p_cvc:
        chains += _central_line(thorax, rng)
        kinds.append("central_line")
    if rng.random() < p_ng:
        chains += _nasogastric(thorax, rng)
        kinds.append("nasogastric_tube")
    if rng.random() < 0.05:
        c, q = _sternotomy(thorax, rng)
        chains += c
        quadrics += q
        kinds.append("sternotomy_wires")
    if rng.random() < 0.03:
        c, q = _pacemaker(thorax, rng)
        chains += c
        quadrics += q
        kinds.append("pacemaker")
    return Devices(chains=tuple(chains), quadrics=tuple(quadrics), kinds=tuple(kinds))
