"""The heatmaps in the OHIF viewer, with real processes and a real browser: Orthanc (with the cxr
plugin) and a service with ``CXR_HEATMAPS=true`` analyse a C-STOREd PhantomCXR study, a
real-looking DX chest radiograph and a real one, an NIH ChestX-ray14 image of the real radiograph
pack wrapped as a DX at test time (:mod:`tests.e2e.realistic`); the viewer
(orthanc/viewer/launch.py) shows each study, and after the heatmap SEG is loaded
(orthanc/viewer/heatmap_screenshot.mjs) its value bands are drawn over the image in their colours,
where the SEG puts them, and nothing is coloured before.

Needs what test_viewer.py needs (Debian `chromium` and `nginx-light`, `npm ci --prefix
orthanc/viewer`); missing pieces fail the test, they do not skip it. The real-radiograph test
skips only when the pack (``CXR_REALCXR``, default ``<repo>/../shared/realcxr``) is absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from tests.e2e.realistic import NIH_DIR, nih_candidates, nih_chest, nih_png, real_looking_chest, realcxr_root
from tests.e2e.test_viewer import ARTIFACTS, VIEWER, require_viewer_tools
from tests.service.procs import (
    ORTHANC_PASSWORD,
    ORTHANC_USER,
    REPO,
    Proc,
    c_store,
    free_port,
    start_orthanc,
    start_service,
    wait_until,
)

pytestmark = pytest.mark.slow

STABLE_AGE = 2
# Series numbers of the heatmap SEGs (cxr_service.writers.heatmap.SERIES_NUMBERS).
OPACITY_SERIES, ATTRIBUTION_SERIES = 9905, 9906
# What a band's colour (blue, cyan, yellow, red; cxr_service.writers.heatmap.BAND_COLOURS)
# looks like once OHIF blends it over a grey image: which channels stand out by > 40.
MARGIN = 40


def band_hue(rgb: np.ndarray) -> np.ndarray:
    """The band (1-4) each pixel's colour shows, 0 for grey or anything else."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    hue = np.zeros(rgb.shape[:2], dtype=np.uint8)
    hue[(b - r > MARGIN) & (b - g > MARGIN)] = 1  # blue
    hue[(g - r > MARGIN) & (b - r > MARGIN) & (np.abs(g - b) < MARGIN)] = 2  # cyan
    hue[(r - b > MARGIN) & (g - b > MARGIN) & (np.abs(r - g) < 60)] = 3  # yellow
    hue[(r - g > MARGIN) & (r - b > MARGIN)] = 4  # red
    return hue


def overlay_mask(shape: tuple[int, ...], *reports: dict, pad: int = 3) -> np.ndarray:
    """Screenshot pixels under OHIF's texts and icons (dates, window/level, markers), padded."""
    mask = np.zeros(shape[:2], dtype=bool)
    for report in reports:
        for r in report.get("overlays", []):
            mask[max(r["y"] - pad, 0) : r["y"] + r["height"] + pad, max(r["x"] - pad, 0) : r["x"] + r["width"] + pad] = True
    return mask


def is_grey(rgb: np.ndarray, tolerance: int = 12) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (np.abs(r - g) <= tolerance) & (np.abs(g - b) <= tolerance) & (np.abs(r - b) <= tolerance)


@pytest.fixture(scope="module")
def heatmap_stack(tmp_path_factory: pytest.TempPathFactory):
    require_viewer_tools()
    root = tmp_path_factory.mktemp("viewer-heatmap")
    service_port = free_port()
    orthanc = start_orthanc(root / "orthanc", plugin_service_url=f"http://127.0.0.1:{service_port}", stable_age=STABLE_AGE)
    service = start_service(root / "service", port=service_port, **orthanc.source_settings(lease_s=10, heatmaps=True))
    port = free_port()
    argv = [
        sys.executable, str(VIEWER / "launch.py"), "--workdir", str(root / "viewer"),
        "--port", str(port), "--orthanc-url", orthanc.url,
    ]  # fmt: skip
    viewer = Proc("viewer", argv, root / "viewer.out").start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not viewer.alive():
            raise RuntimeError(f"the viewer exited:\n{viewer.output()[-3000:]}")
        return httpx.get(url + "/", timeout=5).status_code == 401

    try:
        wait_until(up, timeout=30, what="the viewer (nginx)")
        yield orthanc, url, root
    finally:
        viewer.stop()
        service.stop()
        orthanc.stop()


def heatmap_seg(orthanc, study_uid: str, series_number: int) -> pydicom.Dataset:
    """The study's heatmap SEG of that series number, from Orthanc."""
    with orthanc.client() as c:
        for series in c.get(f"/dicom-web/studies/{study_uid}/series", params={"Modality": "SEG"}).json():
            if int(series["00200011"]["Value"][0]) != series_number:
                continue
            series_uid = series["0020000E"]["Value"][0]
            orthanc_series = next(x["ID"] for x in c.post("/tools/lookup", content=series_uid).json() if x["Type"] == "Series")
            instance = c.get(f"/series/{orthanc_series}/instances").json()[0]["ID"]
            return pydicom.dcmread(BytesIO(c.get(f"/instances/{instance}/file").content))
    raise AssertionError(f"no SEG series {series_number} in study {study_uid}")


def send_and_wait(orthanc, paths: list[Path], study_uid: str) -> None:
    assert c_store(paths, port=orthanc.dicom_port) == [0] * len(paths)

    def has_heatmaps() -> bool:
        numbers = {int(s["00200011"]["Value"][0]) for s in orthanc.series_of_study(study_uid) if s["00080060"]["Value"][0] == "SEG"}
        return {OPACITY_SERIES, ATTRIBUTION_SERIES} <= numbers

    wait_until(has_heatmaps, timeout=STABLE_AGE + 150, interval=0.5, what=f"the heatmap SEGs of study {study_uid}")


def run_heatmap_screenshot(url: str, study_uid: str, series: int, out: Path, before: Path) -> dict:
    argv = [
        "node", str(VIEWER / "heatmap_screenshot.mjs"), "--url", url, "--study", study_uid, "--series", str(series),
        "--user", ORTHANC_USER, "--password", ORTHANC_PASSWORD, "--out", str(out), "--before-out", str(before),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, f"heatmap_screenshot.mjs failed ({proc.returncode}):\n{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}"
    return json.loads(proc.stdout)


def check_heatmap_pixels(report: dict, seg: pydicom.Dataset, out: Path, before: Path) -> dict:
    """The SEG's bands, mapped onto the screenshot (the image fitted into the viewport, centred,
    aspect kept), show their colours; pixels away from every band stay grey; nothing is coloured
    before the SEG is loaded. Returns the counts, for the artifacts."""
    assert not report["page_errors"], report["page_errors"]
    assert not report["console_errors"], report["console_errors"]
    assert not report["failed_requests"], report["failed_requests"]
    assert report["hydrate_prompt"], "OHIF asked whether to open the segmentation"
    held = report["segmentations"]
    assert len(held) == 1 and held[0]["label"] == seg.SeriesDescription, held
    assert sorted(s["index"] for s in held[0]["segments"]) == [1, 2, 3, 4]

    frames = seg.pixel_array  # (bands, rows, columns), 0 or 255
    bands = np.zeros(frames.shape[1:], dtype=np.uint8)
    for k in range(frames.shape[0]):
        bands[frames[k] > 0] = k + 1
    rows, cols = bands.shape
    vp = report["viewport"]
    x0, y0, w, h = vp["x"], vp["y"], vp["width"], vp["height"]
    scale = min(w / cols, h / rows)
    origin = np.array([x0 + (w - cols * scale) / 2, y0 + (h - rows * scale) / 2])
    after_rgb = np.asarray(Image.open(out).convert("RGB"))
    before_rgb = np.asarray(Image.open(before).convert("RGB"))
    assert after_rgb.shape == before_rgb.shape

    # The image's rectangle on the screen, less 4 pixels (the viewport's blue frame and OHIF's
    # overlay texts lie outside it).
    ix0, iy0 = (np.ceil(origin) + 4).astype(int)
    ix1, iy1 = (np.floor(origin + [cols * scale, rows * scale]) - 4).astype(int)
    texts = overlay_mask(after_rgb.shape, report, report["before"])
    assert texts.any(), "OHIF's overlay texts were found"
    coloured_before = int((~is_grey(before_rgb, tolerance=40) & ~texts)[iy0:iy1, ix0:ix1].sum())
    assert coloured_before <= 20, f"{coloured_before} coloured pixels on the image before the heatmap was loaded"
    hue = band_hue(after_rgb)

    # Sample the image pixels well inside each band (away from the outlines and from resampling).
    margin = max(3, int(np.ceil(4 / scale)))
    counts: dict[str, object] = {"scale": round(scale, 4), "margin_px": margin}
    rng = np.random.default_rng(0)
    checked = 0
    for k in range(1, 5):
        inside = ndimage.binary_erosion(bands == k, iterations=margin)
        ys, xs = np.nonzero(inside)
        counts[f"band{k}_pixels"] = int((bands == k).sum())
        if ys.size < 30:
            continue
        pick = rng.choice(ys.size, size=min(400, ys.size), replace=False)
        sx = np.clip(np.floor(origin[0] + (xs[pick] + 0.5) * scale).astype(int), 0, after_rgb.shape[1] - 1)
        sy = np.clip(np.floor(origin[1] + (ys[pick] + 0.5) * scale).astype(int), 0, after_rgb.shape[0] - 1)
        keep = ~texts[sy, sx]
        share = float((hue[sy, sx][keep] == k).mean())
        counts[f"band{k}_colour_share"] = round(share, 3)
        assert share >= 0.8, f"band {k}: its colour on only {share:.0%} of the sampled pixels inside it"
        checked += 1
    assert checked >= 2, f"too few bands large enough to check: {counts}"
    # Far from every band (and inside the image), nothing is coloured.
    outside = ~ndimage.binary_dilation(bands > 0, iterations=margin)
    ys, xs = np.nonzero(outside)
    pick = rng.choice(ys.size, size=min(2000, ys.size), replace=False)
    sx = np.clip(np.floor(origin[0] + (xs[pick] + 0.5) * scale).astype(int), 0, after_rgb.shape[1] - 1)
    sy = np.clip(np.floor(origin[1] + (ys[pick] + 0.5) * scale).astype(int), 0, after_rgb.shape[0] - 1)
    keep = ~texts[sy, sx]
    grey_share = float(is_grey(after_rgb[sy[keep], sx[keep]]).mean())
    counts["outside_grey_share"] = round(grey_share, 3)
    assert grey_share >= 0.97, f"only {grey_share:.1%} of the pixels away from the heatmap are grey"
    grey = np.asarray(Image.open(out).convert("L"))[iy0:iy1, ix0:ix1]
    assert (grey > 20).mean() > 0.2, "the image is rendered (not a black viewport)"
    return counts


def test_viewer_draws_the_heatmaps_over_the_images(heatmap_stack, phantom_studies, tmp_path: Path) -> None:
    orthanc, url, root = heatmap_stack
    # A PhantomCXR study with one frontal image (its heatmap series are then unambiguous).
    frontal = {
        uid: [p for p in paths if str(pydicom.dcmread(p, stop_before_pixels=True).get("ViewPosition", "")) in ("PA", "AP")]
        for uid, paths in sorted(phantom_studies.items())
    }
    phantom_uid = next(uid for uid, f in frontal.items() if len(f) == 1)
    real = real_looking_chest(root / "real-looking")
    real_uid = str(pydicom.dcmread(real, stop_before_pixels=True).StudyInstanceUID)
    send_and_wait(orthanc, phantom_studies[phantom_uid], phantom_uid)
    send_and_wait(orthanc, [real], real_uid)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, study_uid, series in (
        ("phantom-opacity", phantom_uid, OPACITY_SERIES),
        ("real-looking-attribution", real_uid, ATTRIBUTION_SERIES),
    ):
        out, before = tmp_path / f"{name}.png", tmp_path / f"{name}-before.png"
        report = run_heatmap_screenshot(url, study_uid, series, out, before)
        shutil.copyfile(out, ARTIFACTS / f"viewer-heatmap-{name}.png")
        seg = heatmap_seg(orthanc, study_uid, series)
        summary[name] = {"report": report, "pixels": check_heatmap_pixels(report, seg, out, before)}
    (ARTIFACTS / "viewer-heatmap.json").write_text(json.dumps(summary, indent=2))


def first_analysed_nih_image(root: Path) -> tuple[str, dict]:
    """The first of :func:`nih_candidates` (sorted) that the shipped models analyse (frontal, in
    distribution, plausible lung fields), with what they said of it. Chosen at test time, from
    the PNG as the DX wraps it (same display values), so the choice follows the weights."""
    from cxr_models.imaging import read_image_display
    from cxr_models.inference.pipeline import Analyzer

    analyzer = Analyzer.load(device="cpu")
    names = nih_candidates(root)
    assert names, f"no NIH image in {root / NIH_DIR} is a candidate (PA, Pneumonia, RSNA Target 1, square original)"
    passed = {}
    for name in names:
        prediction = analyzer.analyze_study([read_image_display(nih_png(root, name))])
        image = prediction.images[0]
        if image.analysed:
            return name, {"label": prediction.label, "ood_score": image.ood_score, "skipped": passed, "weights": analyzer.version}
        passed[name] = image.reason
    raise AssertionError(f"the shipped models analyse none of the {len(names)} candidate NIH images: {passed}")


def test_viewer_draws_the_heatmaps_over_a_real_radiograph(heatmap_stack, tmp_path: Path) -> None:
    root = realcxr_root()
    if not (root / NIH_DIR).is_dir():
        pytest.skip(f"real radiograph pack not found at {root}: set CXR_REALCXR")
    orthanc, url, work = heatmap_stack
    name, analysis = first_analysed_nih_image(root)
    path = nih_chest(work / "real", root, name)
    study_uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    send_and_wait(orthanc, [path], study_uid)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {"image": f"{NIH_DIR}/images/{name}", "analysis": analysis}
    # Both maps, with the same pixel checks as the other studies: on this image each has at
    # least two bands wide enough to sample (check_heatmap_pixels asserts it).
    for kind, series in (("opacity", OPACITY_SERIES), ("attribution", ATTRIBUTION_SERIES)):
        out, before = tmp_path / f"real-{kind}.png", tmp_path / f"real-{kind}-before.png"
        report = run_heatmap_screenshot(url, study_uid, series, out, before)
        shutil.copyfile(out, ARTIFACTS / f"viewer-heatmap-real-{kind}.png")
        seg = heatmap_seg(orthanc, study_uid, series)
        summary[kind] = {"report": report, "pixels": check_heatmap_pixels(report, seg, out, before)}
    (ARTIFACTS / "viewer-heatmap-real.json").write_text(json.dumps(summary, indent=2))
