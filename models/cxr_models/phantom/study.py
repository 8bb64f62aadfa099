"""One PhantomCXR study in memory: patient, 3-D scene, views, detector, ground truth, attributes.

:func:`render_study` is a pure function of ``(seed, study_index, arguments)``: the study draws
from ``SeedSequence([seed, study_index])`` and each image from ``[seed, study_index, image]``,
so studies are independent of each other and of the order or process that renders them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import pydicom.uid
from PIL import Image

from cxr_models.phantom import detector
from cxr_models.phantom.anatomy import build_thorax, chest_scene, sample_patient
from cxr_models.phantom.annotations import burn_in, sample_annotations
from cxr_models.phantom.devices import sample_devices
from cxr_models.phantom.groundtruth import ground_truth
from cxr_models.phantom.lesions import sample_lesions
from cxr_models.phantom.nonchest import build_other
from cxr_models.phantom.primitives import Scene, rot_x, rot_y, rot_z
from cxr_models.phantom.projection import Fields, Grid, make_view, project
from cxr_models.phantom.vessels import lung_texture, vessel_chains
from cxr_models.records import STUDY_LABELS, Box

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1.1.0"  # 1.1: lung masks as V7 Labs (behind the heart, not below the domes)
WRONG_BODY_PARTS: tuple[str, ...] = ("THORAX", "PECHO", "ABDOMEN")
DEFAULT_SIZE_RANGE = (1024, 3072)
DEFAULT_RENDER_MAX_SIDE = 1024
_MIN_SIDE = 64

# ray direction, column direction and patient orientation of each view position
_GEOMETRY: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], tuple[str, str]]] = {
    "PA": ((0.0, -1.0, 0.0), (1.0, 0.0, 0.0), ("L", "F")),
    "AP": ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), ("L", "F")),
    "LL": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), ("P", "F")),
    "RL": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), ("P", "F")),
}
_MODELS = {"CR": ("PHANTOMCXR", "Virtual CR 100"), "DX": ("PHANTOMCXR", "Virtual DR 300")}


@dataclass(frozen=True)
class Acquisition:
    """What the DICOM file says about how the image was acquired and how to display it."""

    modality: str
    manufacturer: str
    model: str
    view_position: str
    body_part: str
    patient_orientation: tuple[str, str]
    pixel_spacing: float
    magnification: float
    kvp: float
    exposure_mas: float
    sid: float
    grid: bool
    bits_stored: int
    photometric: str
    window_center: float
    window_width: float
    burned_in_annotation: bool


@dataclass(frozen=True, eq=False)
class PhantomImage:
    """One radiograph: stored pixels, what a viewer displays, ground truth (frontal chest only)."""

    sop_instance_uid: str
    series_instance_uid: str
    series_number: int
    instance_number: int
    view: str
    acquisition: Acquisition
    display: np.ndarray
    pixels: np.ndarray
    lung_right: np.ndarray | None
    lung_left: np.ndarray | None
    opacity_mask: np.ndarray | None
    boxes: tuple[Box, ...]
    opacity_percent: float | None

    @property
    def lung_mask(self) -> np.ndarray | None:
        if self.lung_right is None or self.lung_left is None:
            return None
        return self.lung_right | self.lung_left


@dataclass(frozen=True, eq=False)
class PhantomStudy:
    """A study of one synthetic patient: chest (with a category) or another body part."""

    seed: int
    study_index: int
    study_instance_uid: str
    accession_number: str
    patient_name: str
    patient_id: str
    patient_sex: str
    patient_birth_date: str
    study_date: str
    study_time: str
    label: str | None
    pattern: str
    lesion_kinds: tuple[str, ...]
    device_kinds: tuple[str, ...]
    body_part: str
    images: tuple[PhantomImage, ...]


def uid(seed: int, study_index: int, *parts: str | int) -> str:
    """A deterministic UID of the seed, the study and ``parts`` (hashed under pydicom's root).

    ``generate_uid(prefix=None, ...)`` ignores ``entropy_srcs`` and returns a random UUID-based
    UID, so the hash needs a prefix.
    """
    return pydicom.uid.generate_uid(prefix=pydicom.uid.PYDICOM_ROOT_UID,
                                    entropy_srcs=["phantomcxr", str(seed), str(study_index), *map(str, parts)])


def validate_arguments(
    *,
    size_range: tuple[int, int],
    other_fraction: float,
    render_max_side: int,
    wrong_body_part_fraction: float = 0.0,
    label: str | None = None,
) -> None:
    """Raise a ValueError naming the first invalid rendering argument."""
    lo, hi = size_range
    if not (_MIN_SIDE <= lo <= hi):
        raise ValueError(f"size_range must be (min, max) with {_MIN_SIDE} <= min <= max, got {size_range}")
    if not 0.0 <= other_fraction <= 1.0:
        raise ValueError(f"other_fraction must be in [0, 1], got {other_fraction}")
    if not 0.0 <= wrong_body_part_fraction <= 1.0:
        raise ValueError(f"wrong_body_part_fraction must be in [0, 1], got {wrong_body_part_fraction}")
    if render_max_side < _MIN_SIDE:
        raise ValueError(f"render_max_side must be >= {_MIN_SIDE}, got {render_max_side}")
    if label is not None and label not in STUDY_LABELS:
        raise ValueError(f"label must be one of {STUDY_LABELS} or None, got {label!r}")


def _matrix(rng: np.random.Generator, size_range: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns within ``size_range``, slightly non-square (mostly portrait)."""
    lo, hi = size_range
    long_side = int(rng.integers(lo, hi + 1))
    short_side = int(np.clip(round(long_side * rng.uniform(0.82, 1.0)), lo, hi))
    return (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)


def _resize(field: np.ndarray, rows: int, cols: int) -> np.ndarray:
    if field.shape == (rows, cols):
        return field
    return np.asarray(Image.fromarray(field.astype(np.float32), mode="F").resize((cols, rows), Image.BILINEAR))


def _keep_fractions(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Margins (top, bottom, left, right) from the image edges to the box of ``mask``, as fractions."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    h, w = mask.shape
    return rows[0] / h, (h - 1 - rows[-1]) / h, cols[0] / w, (w - 1 - cols[-1]) / w


@dataclass(frozen=True)
class _ImageRequest:
    chest: bool
    view_position: str
    body_part: str
    frontal_like: bool
    chest_frontal: bool
    portable: bool
    sid: float
    pose: np.ndarray


def _render_image(
    scene: Scene,
    request: _ImageRequest,
    *,
    rng: np.random.Generator,
    size_range: tuple[int, int],
    render_max_side: int,
    stamp: str,
    sop_class: str,
    texture: bool,
) -> tuple[np.ndarray, detector.Encoded, Acquisition, Fields, tuple[int, int]]:
    """Project, expose and encode one image; returns display, encoding, attributes and fields for the truth."""
    direction, e_u, orientation = _GEOMETRY[request.view_position]
    view = make_view(request.view_position, direction=np.array(direction), e_u=np.array(e_u),
                     e_v=np.array([0.0, 0.0, -1.0]), aim=scene.aim, sid=request.sid, body=scene.body,
                     pose=request.pose)
    m_aim = float(view.magnification(scene.aim))
    rows, cols = _matrix(rng, size_range)
    spacing = max(2.0 * scene.field_half[0] * m_aim / cols, 2.0 * scene.field_half[1] * m_aim / rows)
    spacing *= float(rng.uniform(1.0, 1.1))
    scale = min(1.0, render_max_side / max(rows, cols))
    r_rows, r_cols = max(int(round(rows * scale)), 8), max(int(round(cols * scale)), 8)
    grid = Grid(r_rows, r_cols, spacing * rows / r_rows)
    fields = project(scene, view, grid)
    if texture and fields.lungs:
        fields.channels["soft"] += lung_texture(sum(fields.lungs), spacing=grid.spacing, rng=rng)
    exposure = detector.sample_exposure(rng, view=request.view_position if request.chest else "other",
                                        portable=request.portable)
    processing = detector.sample_processing(rng)
    attenuation = _resize(detector.line_integral(fields.channels, exposure), rows, cols)
    body = attenuation > 0.3
    if fields.lungs:
        keep_mask = _resize(sum(fields.lungs), rows, cols) > 0.5
    else:
        keep_mask = body
    collimation = detector.sample_collimation(rng, keep=_keep_fractions(keep_mask))
    field = collimation.mask(rows, cols, soft_px=1.5 / spacing)
    signal = detector.expose(attenuation, spacing=spacing, exposure=exposure, field=field, rng=rng)
    display = detector.process(signal, field=field, body=body, spacing=spacing, processing=processing)
    notes = sample_annotations(rng, view_position=request.view_position, portable=request.portable,
                               frontal_like=request.frontal_like, stamp=stamp)
    display = burn_in(display, notes)
    bits = int(rng.integers(10, 17))
    photometric = "MONOCHROME1" if sop_class == "CR" and rng.random() < 0.4 else "MONOCHROME2"
    encoded = detector.encode(display, bits=bits, photometric=photometric, rng=rng)
    manufacturer, model = _MODELS[sop_class]
    acquisition = Acquisition(
        modality=sop_class,
        manufacturer=manufacturer,
        model=model,
        view_position=request.view_position,
        body_part=request.body_part,
        patient_orientation=orientation,
        pixel_spacing=round(spacing, 6),
        magnification=round(m_aim, 4),
        kvp=round(exposure.kvp, 1),
        exposure_mas=round(exposure.fluence / 4.0e4, 2),
        sid=request.sid,
        grid=exposure.grid,
        bits_stored=bits,
        photometric=photometric,
        window_center=encoded.window_center,
        window_width=encoded.window_width,
        burned_in_annotation=bool(notes),
    )
    return detector.decode_display(encoded), encoded, acquisition, fields, (rows, cols)


def _pose(rng: np.random.Generator, view_position: str) -> np.ndarray:
    """Small patient rotation: yaw (about z), pitch (lordotic tilt, AP films) and roll."""
    if view_position == "AP":
        yaw, pitch, roll = rng.normal(0, 4.0), rng.uniform(2.0, 14.0), rng.normal(0, 2.5)
    elif view_position == "PA":
        yaw, pitch, roll = rng.normal(0, 3.0), rng.normal(0, 2.5), rng.normal(0, 1.5)
    else:
        yaw, pitch, roll = rng.normal(0, 4.0), rng.normal(0, 2.5), rng.normal(0, 2.0)
    yaw, pitch, roll = (float(np.clip(a, -9.0, 16.0)) for a in (yaw, pitch, roll))
    return rot_z(np.radians(yaw)) @ rot_x(np.radians(-pitch)) @ rot_y(np.radians(roll))


def _identity(seed: int, study_index: int, rng: np.random.Generator) -> dict[str, str]:
    digest = hashlib.sha256(f"phantomcxr:{seed}:{study_index}".encode()).hexdigest()
    date = dt.date(2019, 1, 1) + dt.timedelta(days=int(rng.integers(0, 5 * 365)))
    seconds = int(rng.integers(6 * 3600, 23 * 3600))
    age = int(rng.integers(18, 95))
    birth = date - dt.timedelta(days=age * 365 + int(rng.integers(0, 365)))
    return {
        "patient_name": f"PHANTOM^{int(digest[:8], 16) % 10**8:08d}",
        "patient_id": f"PH{digest[8:18].upper()}",
        "accession_number": f"A{int(digest[18:30], 16) % 10**12:012d}",
        "study_date": date.strftime("%Y%m%d"),
        "study_time": f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
        "birth_date": birth.strftime("%Y%m%d"),
    }


def _stamp(study_date: str, study_time: str, rng: np.random.Generator) -> str:
    d = dt.datetime.strptime(study_date + study_time, "%Y%m%d%H%M%S")
    return d.strftime(str(rng.choice(["%Y-%m-%d %H:%M", "%d/%m/%Y %H:%M", "%d.%m.%Y", "%m/%d/%Y"])))


def render_study(
    *,
    seed: int,
    study_index: int,
    size_range: tuple[int, int] = DEFAULT_SIZE_RANGE,
    other_fraction: float = 0.1,
    wrong_body_part_fraction: float = 0.03,
    label: str | None = None,
    render_max_side: int = DEFAULT_RENDER_MAX_SIDE,
) -> PhantomStudy:
    """Render study ``study_index`` of the dataset with ``seed``.

    A fraction ``other_fraction`` of studies are non-chest; chest studies get a category drawn
    uniformly from STUDY_LABELS unless ``label`` forces one (and forces a chest study). Images
    are ``size_range`` pixels per side; anatomy is projected at most ``render_max_side`` pixels
    per side and resized (noise and annotations are added at full size).
    """
    size_range = (int(size_range[0]), int(size_range[1]))
    validate_arguments(size_range=size_range, other_fraction=other_fraction, render_max_side=render_max_side,
                       wrong_body_part_fraction=wrong_body_part_fraction, label=label)
    rng = np.random.default_rng(np.random.SeedSequence([seed, study_index]))
    is_other = bool(rng.random() < other_fraction) and label is None
    drawn = STUDY_LABELS[int(rng.integers(len(STUDY_LABELS)))]
    ident = _identity(seed, study_index, rng)
    stamp = _stamp(ident["study_date"], ident["study_time"], rng)
    sop_class = "CR" if rng.random() < 0.5 else "DX"

    requests: list[_ImageRequest] = []
    lesion_kinds: tuple[str, ...] = ()
    device_kinds: tuple[str, ...] = ()
    pattern = "none"
    study_label: str | None
    if is_other:
        exam = build_other(rng)
        scene_of = {v: exam.scene for v in exam.views}
        count = 2 if len(exam.views) > 1 and rng.random() < 0.5 else 1
        for view_position in exam.views[:count]:
            requests.append(_ImageRequest(False, view_position, exam.body_part, frontal_like=view_position in ("PA", "AP"),
                                          chest_frontal=False, portable=False, sid=1000.0,
                                          pose=_pose(rng, "other")))
        study_label = None
        body_part = exam.body_part
        sex = "M" if rng.random() < 0.5 else "F"
    else:
        study_label = label if label is not None else drawn
        patient = sample_patient(rng)
        sex = "F" if patient.female else "M"
        thorax = build_thorax(patient, rng)
        portable = bool(rng.random() < 0.4)
        plan = sample_lesions(study_label, thorax, rng, supine=portable and bool(rng.random() < 0.6))
        vessels = vessel_chains(thorax, rng, collapse=plan.collapse)
        devices = sample_devices(thorax, rng, portable=portable)
        lesion_kinds, device_kinds, pattern = plan.kinds, devices.kinds, plan.pattern
        frontal = "AP" if portable else "PA"
        positions = [frontal] * (2 if rng.random() < 0.15 else 1)
        if rng.random() < (0.2 if portable else 0.7):
            positions.append("LL" if rng.random() < 0.85 else "RL")
        scene_of = {}
        for view_position in sorted(set(positions)):
            scene_of[view_position] = chest_scene(thorax, view=view_position, lesions=plan.lesions,
                                                  chains=vessels + devices.chains, quadrics=devices.quadrics,
                                                  aim_jitter=rng.normal(0.0, 8.0, size=3))
        for view_position in positions:
            chest_frontal = view_position in ("PA", "AP")
            body = "CHEST"
            if chest_frontal and rng.random() < wrong_body_part_fraction:
                body = str(rng.choice(WRONG_BODY_PARTS))
            requests.append(_ImageRequest(True, view_position, body, frontal_like=chest_frontal, chest_frontal=chest_frontal,
                                          portable=portable, sid=float(rng.uniform(1000.0, 1200.0)) if portable
                                          else float(rng.uniform(1700.0, 1850.0)), pose=_pose(rng, view_position)))
        body_part = "CHEST"

    study_uid = uid(seed, study_index, "study")
    images: list[PhantomImage] = []
    for k, request in enumerate(requests):
        image_rng = np.random.default_rng(np.random.SeedSequence([seed, study_index, k + 1]))
        display, encoded, acquisition, fields, (rows, cols) = _render_image(
            scene_of[request.view_position], request, rng=image_rng, size_range=size_range,
            render_max_side=render_max_side, stamp=stamp, sop_class=sop_class, texture=not is_other)
        lung_right = lung_left = opacity = None
        boxes: tuple[Box, ...] = ()
        percent: float | None = None
        view = "other" if is_other else ("frontal" if request.chest_frontal else "lateral")
        if request.chest_frontal:
            truth = ground_truth(
                lungs=(_resize(fields.lungs[0], rows, cols), _resize(fields.lungs[1], rows, cols)),
                dome_cover=_resize(fields.lung_dome_cover, rows, cols),
                lesion=_resize(fields.lesion, rows, cols),
            )
            lung_right, lung_left, opacity = truth.lung_right, truth.lung_left, truth.opacity
            boxes, percent = truth.boxes, truth.opacity_percent
        images.append(PhantomImage(
            sop_instance_uid=uid(seed, study_index, "image", k),
            series_instance_uid=uid(seed, study_index, "series", k),
            series_number=k + 1,
            instance_number=1,
            view=view,
            acquisition=acquisition,
            display=display,
            pixels=encoded.pixels,
            lung_right=lung_right,
            lung_left=lung_left,
            opacity_mask=opacity,
            boxes=boxes,
            opacity_percent=percent,
        ))
    logger.debug("study %d of seed %d: %s, %d image(s)", study_index, seed, study_label or body_part, len(images))
    return PhantomStudy(
        seed=seed,
        study_index=study_index,
        study_instance_uid=study_uid,
        accession_number=ident["accession_number"],
        patient_name=ident["patient_name"],
        patient_id=ident["patient_id"],
        patient_sex=sex,
        patient_birth_date=ident["birth_date"],
        study_date=ident["study_date"],
        study_time=ident["study_time"],
        label=study_label,
        pattern=pattern,
        lesion_kinds=lesion_kinds,
        device_kinds=device_kinds,
        body_part=body_part,
        images=tuple(images),
    )
