"""PhantomCXR: determinism, dataset files agreeing with each other, lesion rules, DICOM attributes."""

from __future__ import annotations

import ast
import csv
import filecmp
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation
from scipy import ndimage

import cxr_models.phantom.study as study_module
from cxr_models.datasets.siim import read_siim
from cxr_models.imaging import display_array
from cxr_models.phantom.dicom_io import build_dataset, write_dicom
from cxr_models.phantom.generate import generate_dataset, siim_label
from cxr_models.phantom.groundtruth import largest_component
from cxr_models.phantom.primitives import Quadric, Scene
from cxr_models.phantom.projection import project
from cxr_models.phantom.study import PhantomImage, PhantomStudy, render_study
from cxr_models.records import SIIM_STUDY_COLUMNS, STUDY_LABELS, Box

SIZE = (256, 300)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img) > 0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantom") / "data"
    return generate_dataset(root, n_studies=10, seed=11, size_range=SIZE, other_fraction=0.2, workers=1)


def _first_study(**kwargs: object) -> PhantomStudy:
    """The first study (by index) of seed 3 whose attributes match ``kwargs``."""
    label = kwargs.pop("label", None)
    for index in range(60):
        study = render_study(seed=3, study_index=index, size_range=SIZE, label=label)  # type: ignore[arg-type]
        if all(getattr(study, key) == value for key, value in kwargs.items()):
            return study
    raise AssertionError(f"no study with label={label} and {kwargs} among the first 60")


def test_same_seed_same_bytes_any_workers_and_other_seed_differs(dataset: Path, tmp_path: Path) -> None:
    again = generate_dataset(tmp_path / "again", n_studies=10, seed=11, size_range=SIZE, other_fraction=0.2,
                             workers=2)
    files = _files(dataset)
    assert files == _files(again)
    assert any(p.suffix == ".dcm" for p in files)
    for rel in files:
        assert filecmp.cmp(dataset / rel, again / rel, shallow=False), rel

    a = render_study(seed=11, study_index=0, size_range=SIZE)
    b = render_study(seed=12, study_index=0, size_range=SIZE)
    assert a.study_instance_uid != b.study_instance_uid
    assert {i.sop_instance_uid for i in a.images}.isdisjoint(i.sop_instance_uid for i in b.images)
    assert a.patient_id != b.patient_id
    assert a.images[0].pixels.shape != b.images[0].pixels.shape or not np.array_equal(a.images[0].pixels,
                                                                                     b.images[0].pixels)


def test_csvs_parse_and_agree_with_masks_and_reader(dataset: Path) -> None:
    catalogue = {row["sop_instance_uid"]: row for row in _rows(dataset / "images.csv")}
    image_level = _rows(dataset / "train_image_level.csv")
    study_level = {row["id"].removesuffix("_study"): row for row in _rows(dataset / "train_study_level.csv")}
    assert image_level and study_level
    assert {row["view"] for row in catalogue.values()} <= {"frontal", "lateral", "other"}
    frontal = {sop for sop, row in catalogue.items() if row["view"] == "frontal"}
    assert {row["id"].removesuffix("_image") for row in image_level} == frontal
    for row in study_level.values():
        assert sorted(row[c] for c in SIIM_STUDY_COLUMNS) == ["0", "0", "0", "1"]
    for sop, row in catalogue.items():
        assert (dataset / row["path"]).is_file()
        if row["view"] == "other":
            assert row["study_label"] == "" and row["study_instance_uid"] not in study_level
        else:
            label = STUDY_LABELS[[study_level[row["study_instance_uid"]][c] for c in SIIM_STUDY_COLUMNS].index("1")]
            assert row["study_label"] == label
        assert (row["opacity_percent"] != "") == (row["view"] == "frontal")

    for row in image_level:
        sop = row["id"].removesuffix("_image")
        literal = ast.literal_eval(row["boxes"]) if row["boxes"] else []
        boxes = tuple(Box(b["x"], b["y"], b["x"] + b["width"], b["y"] + b["height"]) for b in literal)
        assert row["label"] == siim_label(boxes)
        lung = _mask(dataset / "masks" / f"{sop}_lung.png")
        opacity = _mask(dataset / "masks" / f"{sop}_opacity.png")
        meta = catalogue[sop]
        assert lung.shape == opacity.shape == (int(meta["rows"]), int(meta["columns"]))
        assert lung.sum() > 0.05 * lung.size
        labels, count = ndimage.label(opacity, structure=np.ones((3, 3), dtype=bool))
        found = {(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels)}
        assert {tuple(int(v) for v in b.as_list()) for b in boxes} == found
        for box in boxes:
            x0, y0, x1, y1 = (int(v) for v in box.as_list())
            assert opacity[y0:y1, x0:x1].any()
        percent = 100.0 * np.count_nonzero(opacity & lung) / np.count_nonzero(lung)
        assert abs(percent - float(meta["opacity_percent"])) < 1e-3

    records = read_siim(dataset)
    assert len(records) == len(catalogue)
    assert {r.view for r in records if r.boxes is not None} == {"frontal"}


def _opacity_in(image, mask: np.ndarray) -> int:
    return int(np.count_nonzero(image.opacity_mask & mask))


def test_typical_is_bilateral_and_negative_is_clear() -> None:
    typical = _first_study(label="typical")
    assert typical.lesion_kinds
    for image in typical.images:
        if image.view == "frontal":
            assert _opacity_in(image, image.lung_right) > 0 and _opacity_in(image, image.lung_left) > 0
            assert image.boxes and image.opacity_percent > 0
    negative = _first_study(label="negative")
    assert negative.lesion_kinds == ()
    for image in negative.images:
        if image.view == "frontal":
            assert image.boxes == () and image.opacity_percent == 0.0 and not image.opacity_mask.any()


@pytest.mark.parametrize("pattern", ["unilateral", "upper", "central"])
def test_indeterminate_patterns(pattern: str) -> None:
    study = _first_study(label="indeterminate", pattern=pattern)
    for image in (i for i in study.images if i.view == "frontal"):
        assert image.boxes
        right, left = _opacity_in(image, image.lung_right), _opacity_in(image, image.lung_left)
        if pattern == "unilateral":
            assert (right == 0) != (left == 0)
        rows, cols = np.nonzero(image.opacity_mask & image.lung_mask)
        lung_rows, lung_cols = np.nonzero(image.lung_mask)
        if pattern == "upper":
            # opacity sits in the upper part of the lung fields
            assert rows.mean() < np.percentile(lung_rows, 45)
        if pattern == "central":
            # closer to the midline than the lungs' lateral walls
            mid = 0.5 * (lung_cols.min() + lung_cols.max())
            half = 0.5 * (lung_cols.max() - lung_cols.min())
            assert np.abs(cols - mid).mean() < 0.6 * half


def test_atypical_pneumothorax_has_no_box_but_effusion_does() -> None:
    pneumothorax = _first_study(label="atypical", pattern="pneumothorax")
    frontal = [i for i in pneumothorax.images if i.view == "frontal"]
    assert frontal and all(i.boxes == () and i.opacity_percent == 0.0 for i in frontal)
    assert pneumothorax.lesion_kinds == ("pneumothorax",)
    effusion = _first_study(label="atypical", pattern="effusion")
    assert all(i.boxes for i in effusion.images if i.view == "frontal")


def test_same_lesions_in_every_frontal_view_of_a_study() -> None:
    for index in range(60):
        study = render_study(seed=4, study_index=index, size_range=SIZE, label="typical")
        frontal = [i for i in study.images if i.view == "frontal"]
        if len(frontal) == 2:
            break
    else:
        raise AssertionError("no typical study with two frontal images among the first 60")
    a, b = frontal
    # the same 3-D lesions: both views show them in both lungs with a similar extent, while
    # pose, matrix, exposure and noise differ
    for image in (a, b):
        assert _opacity_in(image, image.lung_right) > 0 and _opacity_in(image, image.lung_left) > 0
    assert abs(a.opacity_percent - b.opacity_percent) < 0.5 * max(a.opacity_percent, b.opacity_percent)
    assert a.pixels.shape != b.pixels.shape or not np.array_equal(a.pixels, b.pixels)


def _lung_and_mediastinum(ds: pydicom.Dataset, lung: np.ndarray) -> tuple[float, float]:
    display = display_array(ds)
    cols = np.flatnonzero(lung.any(axis=0))
    rows = np.flatnonzero(lung.any(axis=1))
    band = np.zeros_like(lung)
    r0, r1 = rows[0] + (rows[-1] - rows[0]) // 4, rows[-1] - (rows[-1] - rows[0]) // 4
    band[r0:r1, cols[0] : cols[-1]] = True
    between = band & ~lung
    # the mediastinum: the middle fifth between the two lungs
    centre = int(0.5 * (cols[0] + cols[-1]))
    between[:, : max(centre - lung.shape[1] // 10, 0)] = False
    between[:, centre + lung.shape[1] // 10 :] = False
    return float(display[lung].mean()), float(display[between].mean())


@dataclass(frozen=True, eq=False)
class _FrontalTruth:
    """A frontal image with the projection fields and the separately projected heart and domes."""

    image: PhantomImage
    footprint: np.ndarray
    dome_cover: np.ndarray
    old_visible: np.ndarray
    heart: np.ndarray
    domes: np.ndarray


@pytest.fixture(scope="module")
def frontal_truth() -> _FrontalTruth:
    """A PA image of seed 3 rendered with the thorax and each view's fields captured on the way.

    The image is small enough to be projected at full size, so the fields align with its masks.
    """
    thoraxes, projections = [], []
    build_thorax, project_fields = study_module.build_thorax, study_module.project

    def capture_thorax(*args, **kwargs):
        thoraxes.append(build_thorax(*args, **kwargs))
        return thoraxes[-1]

    def capture_project(scene, view, grid):
        projections.append((scene, view, grid, project_fields(scene, view, grid)))
        return projections[-1][3]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(study_module, "build_thorax", capture_thorax)
        patch.setattr(study_module, "project", capture_project)
        study = render_study(seed=3, study_index=0, size_range=SIZE, label="negative")
    (thorax,) = thoraxes
    image, (scene, view, grid, fields) = next((i, p) for i, p in zip(study.images, projections, strict=True)
                                              if i.view == "frontal")
    assert (grid.rows, grid.cols) == image.pixels.shape

    def alone(quadrics: tuple[Quadric, ...]) -> np.ndarray:
        """Where the quadrics alone project (each with its own magnification)."""
        only = Scene(quadrics=tuple(q.with_mu(1.0) for q in quadrics), chains=(), regions=(), lungs=(), lesions=(),
                     aim=scene.aim, body=scene.body)
        return project(only, view, grid).channels["soft"] > 0.5

    # the former convention: the lung not hidden by anything cut out of it (domes, heart, mediastinum)
    visible = (fields.lung_cover + fields.lung_dome_cover) <= 0.5
    old = largest_component((fields.lungs[0] > 0.5) & visible) | largest_component((fields.lungs[1] > 0.5) & visible)
    return _FrontalTruth(image=image, footprint=(fields.lungs[0] + fields.lungs[1]) > 0.5,
                         dome_cover=fields.lung_dome_cover > 0.5, old_visible=old, heart=alone((thorax.heart,)),
                         domes=alone(thorax.domes))


def test_lung_mask_runs_behind_the_heart(frontal_truth: _FrontalTruth) -> None:
    """As the V7 Labs masks: the left lung continues behind the heart (retrocardiac lung)."""
    image = frontal_truth.image
    behind = image.lung_left & frontal_truth.heart
    assert behind.sum() > 0.1 * image.lung_left.sum()
    assert not (frontal_truth.old_visible & frontal_truth.heart).any()


def test_lung_mask_stops_at_the_domes(frontal_truth: _FrontalTruth) -> None:
    """Nothing below the diaphragm, although the lungs' posterior recesses project under the domes."""
    lung = frontal_truth.image.lung_mask
    assert not (lung & frontal_truth.dome_cover).any()
    # the domes projected on their own differ from the lungs' cutouts by the magnification, a pixel or two
    under = ndimage.binary_erosion(frontal_truth.domes, iterations=3)
    assert (frontal_truth.footprint & under).sum() > 0.05 * lung.sum()
    assert not (lung & under).any()


def test_lung_mask_is_larger_than_the_visible_lung_field(frontal_truth: _FrontalTruth) -> None:
    lung, old = frontal_truth.image.lung_mask, frontal_truth.old_visible
    assert not (old & ~lung).any()
    assert lung.sum() > 1.15 * old.sum()
    assert not (frontal_truth.image.lung_right & frontal_truth.image.lung_left).any()


def test_dicom_attributes_and_polarity(dataset: Path, tmp_path: Path) -> None:
    photometrics = set()
    for row in _rows(dataset / "images.csv"):
        ds = pydicom.dcmread(dataset / row["path"])
        assert ds.SOPClassUID in (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.Modality == ("CR" if ds.SOPClassUID == ComputedRadiographyImageStorage else "DX")
        assert ds.ViewPosition == row["view_position"] and ds.ViewPosition in ("PA", "AP", "LL", "RL")
        assert float(ds.ImagerPixelSpacing[0]) == pytest.approx(float(row["pixel_spacing_mm"]))
        assert ds.PhotometricInterpretation == row["photometric_interpretation"]
        assert 10 <= ds.BitsStored <= 16 and ds.HighBit == ds.BitsStored - 1 and ds.BitsAllocated == 16
        assert int(ds.pixel_array.max()) < 2**ds.BitsStored
        assert str(ds.PatientName).startswith("PHANTOM^")
        assert ds.StudyInstanceUID == row["study_instance_uid"]
        if row["view"] == "frontal":
            assert list(ds.PatientOrientation) == ["L", "F"]
            lung = _mask(dataset / "masks" / f"{row['sop_instance_uid']}_lung.png")
            lung_mean, mediastinum_mean = _lung_and_mediastinum(ds, lung)
            assert lung_mean < mediastinum_mean - 0.05, row["path"]
            photometrics.add(ds.PhotometricInterpretation)
    # both polarities: render until a MONOCHROME1 and a MONOCHROME2 frontal image are checked
    index = 0
    while photometrics != {"MONOCHROME1", "MONOCHROME2"} and index < 40:
        study = render_study(seed=21, study_index=index, size_range=SIZE, label="negative")
        index += 1
        for image in study.images:
            if image.view != "frontal" or image.acquisition.photometric in photometrics:
                continue
            ds = pydicom.dcmread(write_dicom(tmp_path / f"{image.sop_instance_uid}.dcm", study, image))
            lung_mean, mediastinum_mean = _lung_and_mediastinum(ds, image.lung_mask)
            assert lung_mean < mediastinum_mean - 0.05
            np.testing.assert_allclose(display_array(ds), image.display, atol=1e-3)
            photometrics.add(image.acquisition.photometric)
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_dciodvfy_reports_no_errors(tmp_path: Path) -> None:
    seen = set()
    for index in range(30):
        study = render_study(seed=8, study_index=index, size_range=(128, 160), other_fraction=0.3)
        for image in study.images:
            key = (image.acquisition.modality, image.view)
            if key in seen:
                continue
            seen.add(key)
            path = write_dicom(tmp_path / f"{index}_{image.sop_instance_uid}.dcm", study, image)
            result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
            errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
            assert not errors, (key, errors)
    assert {m for m, _ in seen} == {"CR", "DX"}


def test_render_study_api_and_argument_errors(tmp_path: Path) -> None:
    study = render_study(seed=2, study_index=5, size_range=(200, 220), label="atypical")
    assert study.label == "atypical" and study.body_part == "CHEST"
    for image in study.images:
        rows, cols = image.pixels.shape
        assert 200 <= rows <= 220 and 200 <= cols <= 220
        assert image.pixels.dtype == np.uint16 and image.display.dtype == np.float32
        assert 0.0 <= image.display.min() and image.display.max() <= 1.0
        if image.view == "frontal":
            assert image.lung_mask.shape == image.pixels.shape and image.lung_mask.dtype == bool
            assert not (image.lung_right & image.lung_left).any()
            assert all(isinstance(b, Box) for b in image.boxes)
        ds = build_dataset(study, image)
        assert ds.SOPInstanceUID == image.sop_instance_uid
    with pytest.raises(ValueError, match="size_range"):
        render_study(seed=0, study_index=0, size_range=(300, 200))
    with pytest.raises(ValueError, match="label"):
        render_study(seed=0, study_index=0, label="covid")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="empty"):
        generate_dataset(tmp_path / "busy", n_studies=1, seed=0, size_range=SIZE)


def test_expose_stays_finite_where_relative_attenuation_undershoots_zero() -> None:
    """Summed relative attenuations (lung air minus tissue) can dip below zero at the body's edge;
    the detector signal must stay finite there (an overflow once wrote NaN pixels)."""
    from cxr_models.phantom.detector import expose, sample_exposure

    rng = np.random.default_rng(0)
    exposure = sample_exposure(rng, view="PA", portable=False)
    attenuation = np.full((64, 64), 2.0, dtype=np.float32)
    attenuation[20:40, 20:40] = -1.0  # exactly where 1 + a == 0 in the beam-hardening term
    attenuation[0:5, 0:5] = -3.0
    signal = expose(attenuation, spacing=0.4, exposure=exposure, field=np.ones_like(attenuation), rng=rng)
    assert np.all(np.isfinite(signal))
