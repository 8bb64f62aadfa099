"""The OHIF viewer in front of Orthanc, with real processes and a real browser: a PhantomCXR
study C-STOREd into Orthanc (with the cxr plugin and service) gets its SR; the viewer
(orthanc/viewer/launch.py: nginx serving @ohif/app's dist and proxying DICOMweb) shows the
study, and after the SR is loaded its boxes are drawn on the image where the SR puts them.

Needs Debian `chromium` and `nginx-light`, and `npm ci --prefix orthanc/viewer` (OHIF's
prebuilt app and puppeteer-core). Missing pieces fail the test, they do not skip it.
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
VIEWER = REPO / "orthanc" / "viewer"
ARTIFACTS = REPO / "var" / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# OHIF 3.13 draws an SR's ROIs (DICOMSRDisplayTool, dashed): the selected measurement in
# rgb(0, 255, 0), the others in rgb(255, 255, 0). A grey-scale radiograph and OHIF's dark-blue
# interface have neither colour.
GREEN = "rgb(0, 255, 0)"
YELLOW = "rgb(255, 255, 0)"


def overlay_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels of either SR overlay colour (with room for anti-aliasing)."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    # a 1-px dashed outline is anti-aliased down to about 190 in its own channel(s)
    yellow = (r > 150) & (g > 150) & (b < 70)
    green = (g > 150) & (r < 70) & (b < 70)
    return yellow | green


def require_viewer_tools() -> None:
    missing = []
    if not CHROMIUM.exists():
        missing.append("Debian chromium (apt-get install chromium)")
    if shutil.which("node") is None:
        missing.append("node (apt-get install nodejs npm)")
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        missing.append("nginx (apt-get install nginx-light)")
    for path in ("node_modules/puppeteer-core/package.json", "node_modules/@ohif/app/dist/index.html"):
        if not (VIEWER / path).exists():
            missing.append(f"orthanc/viewer/{path} (npm ci --prefix orthanc/viewer)")
            break
    if missing:
        pytest.fail("the viewer test needs: " + "; ".join(missing), pytrace=False)


@pytest.fixture(scope="module")
def viewer_stack(tmp_path_factory: pytest.TempPathFactory):
    require_viewer_tools()
    root = tmp_path_factory.mktemp("viewer")
    service_port = free_port()
    orthanc = start_orthanc(root / "orthanc", plugin_service_url=f"http://127.0.0.1:{service_port}", stable_age=STABLE_AGE)
    service = start_service(root / "service", port=service_port, **orthanc.source_settings(lease_s=10))
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
        yield orthanc, url
    finally:
        viewer.stop()
        service.stop()
        orthanc.stop()


def sr_instance(orthanc, study_uid: str) -> pydicom.Dataset:
    with orthanc.client() as c:
        series = c.get(f"/dicom-web/studies/{study_uid}/series", params={"Modality": "SR"}).json()
        series_uid = series[0]["0020000E"]["Value"][0]
        orthanc_series = next(x["ID"] for x in c.post("/tools/lookup", content=series_uid).json() if x["Type"] == "Series")
        instance = c.get(f"/series/{orthanc_series}/instances").json()[0]["ID"]
        data = c.get(f"/instances/{instance}/file").content
    return pydicom.dcmread(BytesIO(data))


def sr_rois(sr: pydicom.Dataset) -> list[dict]:
    """Each measurement group's SCOORD: tracking UID, referenced SOP instance, GraphicData."""
    rois = []

    def walk(items, tracking_uid=None):
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            if item.ValueType == "CONTAINER" and name == "Measurement Group":
                uid = next((x.UID for x in item.ContentSequence if x.ValueType == "UIDREF"), None)
                walk(item.ContentSequence, uid)
            elif item.ValueType == "SCOORD" and tracking_uid:
                ref = item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                points = np.asarray(item.GraphicData, dtype=float).reshape(-1, 2)
                rois.append({"uid": tracking_uid, "sop": ref, "type": item.GraphicType, "points": points})
            elif "ContentSequence" in item:
                walk(item.ContentSequence, tracking_uid)

    walk(sr.ContentSequence)
    return rois


def edge_hits(mask: np.ndarray, a: np.ndarray, b: np.ndarray, band: int = 2) -> float:
    """Share of sample points along the segment a-b with an overlay pixel within `band` px."""
    n = int(max(abs(b - a))) + 1
    hits = 0
    for t in np.linspace(0, 1, n):
        x, y = np.rint(a + t * (b - a)).astype(int)
        hits += bool(mask[max(y - band, 0) : y + band + 1, max(x - band, 0) : x + band + 1].any())
    return hits / n


def run_screenshot(url: str, study_uid: str, out: Path, before: Path) -> dict:
    argv = [
        "node", str(VIEWER / "screenshot.mjs"), "--url", url, "--study", study_uid,
        "--user", ORTHANC_USER, "--password", ORTHANC_PASSWORD, "--out", str(out), "--before-out", str(before),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, f"screenshot.mjs failed ({proc.returncode}):\n{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}"
    return json.loads(proc.stdout)


def test_viewer_draws_the_sr_boxes_on_the_image(viewer_stack, phantom_studies, tmp_path: Path) -> None:
    orthanc, url = viewer_stack

    # The viewer's own pages are behind Orthanc's credentials (the browser gets a basic-auth prompt).
    r = httpx.get(url + "/viewer?StudyInstanceUIDs=1.2.3", timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(url + "/dicom-web/studies", auth=(ORTHANC_USER, "wrong"), timeout=10).status_code == 401
    good = httpx.get(url + "/viewer?StudyInstanceUIDs=1.2.3", auth=(ORTHANC_USER, ORTHANC_PASSWORD), timeout=10)
    assert good.status_code == 200 and "app.bundle" in good.text, "index.html for the client-side route"
    config = httpx.get(url + "/app-config.js", auth=(ORTHANC_USER, ORTHANC_PASSWORD), timeout=10).text
    assert "qidoRoot: '/dicom-web'" in config, "our app-config.js, not dist's"
    assert httpx.get(url + "/system", auth=(ORTHANC_USER, ORTHANC_PASSWORD), timeout=10).headers["content-type"].startswith("text/html"), (
        "Orthanc's REST API is not exposed through the viewer"
    )

    study_uid, paths = next((u, p) for u, p in phantom_studies.items() if len(p) >= 2)
    assert c_store(paths, port=orthanc.dicom_port) == [0] * len(paths)

    def has_sr() -> bool:
        return any(s["00080060"]["Value"][0] == "SR" for s in orthanc.series_of_study(study_uid))

    wait_until(has_sr, timeout=STABLE_AGE + 90, interval=0.5, what=f"the SR of study {study_uid}")
    with httpx.Client(base_url=url, auth=(ORTHANC_USER, ORTHANC_PASSWORD), timeout=30) as c:
        r = c.get(f"/dicom-web/studies/{study_uid}/series")
        assert r.status_code == 200 and len(r.json()) >= 2, "DICOMweb through the viewer's proxy"

    out, before = tmp_path / "viewer.png", tmp_path / "viewer-before.png"
    report = run_screenshot(url, study_uid, out, before)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out, ARTIFACTS / "viewer.png")
    shutil.copyfile(before, ARTIFACTS / "viewer-before.png")
    (ARTIFACTS / "viewer.json").write_text(json.dumps(report, indent=2))

    assert not report["page_errors"], report["page_errors"]
    assert not report["console_errors"], report["console_errors"]
    assert not report["failed_requests"], report["failed_requests"]

    # What the SR says: its ROIs on the image the SR viewport shows (that of its first measurement).
    rois = sr_rois(sr_instance(orthanc, study_uid))
    assert rois, "the SR has planar ROIs"
    shown_sop = rois[0]["sop"]
    shown = [roi for roi in rois if roi["sop"] == shown_sop]
    image = pydicom.dcmread(next(p for p in paths if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == shown_sop), stop_before_pixels=True)

    # OHIF drew exactly those: one label per ROI, keyed by the SR's Tracking Unique Identifiers.
    drawn_uids = {label["uid"] for label in report["drawn"]["labels"]}
    assert drawn_uids == {roi["uid"] for roi in shown}, (drawn_uids, [roi["uid"] for roi in shown])
    colours = sorted(o["color"] for o in report["drawn"]["outlines"])
    assert colours == sorted([GREEN] + [YELLOW] * (len(shown) - 1)), colours
    assert report["before"]["outlines"] == [], "nothing is drawn before the SR is loaded"

    # Pixels: no overlay colour before the SR is loaded; after, the colour lies along each ROI's
    # outline at the place the SR's pixel coordinates give once the image is fitted (centred,
    # aspect kept) into the viewport.
    vp = report["viewport"]
    x0, y0, w, h = vp["x"], vp["y"], vp["width"], vp["height"]
    after_rgb = np.asarray(Image.open(out).convert("RGB"))
    before_rgb = np.asarray(Image.open(before).convert("RGB"))
    assert after_rgb.shape == before_rgb.shape
    before_count = int(overlay_mask(before_rgb[y0 : y0 + h, x0 : x0 + w]).sum())
    assert before_count <= 20, f"{before_count} overlay-coloured pixels before the SR was loaded"
    mask = overlay_mask(after_rgb)
    after_count = int(mask[y0 : y0 + h, x0 : x0 + w].sum())
    assert after_count >= 300, f"only {after_count} overlay-coloured pixels in the viewport"

    rows, cols = int(image.Rows), int(image.Columns)
    scale = min(w / cols, h / rows)
    origin = np.array([x0 + (w - cols * scale) / 2, y0 + (h - rows * scale) / 2])
    grey = np.asarray(Image.open(out).convert("L"))[y0 : y0 + h, x0 : x0 + w]
    assert (grey > 20).mean() > 0.2, "the image is rendered (not a black viewport)"
    for roi in shown:
        corners = origin + roi["points"] * scale
        assert (corners[:, 0] >= x0 - 2).all() and (corners[:, 0] <= x0 + w + 2).all(), "ROI inside the viewport"
        assert (corners[:, 1] >= y0 - 2).all() and (corners[:, 1] <= y0 + h + 2).all(), "ROI inside the viewport"
        for a, b in zip(corners[:-1], corners[1:]):
            if np.abs(b - a).max() < 8:
                continue  # too short to judge a dashed line
            share = edge_hits(mask, a, b)
            assert share >= 0.3, f"ROI {roi['uid']}: overlay colour on only {share:.0%} of the edge {a.round(1)}-{b.round(1)}"


# --- the SEG overlay, and the Secondary Capture of an image OHIF cannot show ------------------


def run_mode(url: str, study_uid: str, out: Path, before: Path, *mode: str) -> dict:
    """screenshot.mjs in one of its other modes (``--mode seg`` or ``--mode series --modality OT``)."""
    argv = [
        "node", str(VIEWER / "screenshot.mjs"), "--url", url, "--study", study_uid,
        "--user", ORTHANC_USER, "--password", ORTHANC_PASSWORD, "--out", str(out), "--before-out", str(before), *mode,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, f"screenshot.mjs {' '.join(mode)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}"
    return json.loads(proc.stdout)


def keep_artifacts(name: str, out: Path, before: Path, report: dict) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out, ARTIFACTS / f"{name}.png")
    shutil.copyfile(before, ARTIFACTS / f"{name}-before.png")
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(report, indent=2))


def coloured(rgb: np.ndarray) -> np.ndarray:
    """Bright red or green pixels (the SEG's segments, the SC's outlines): a grey radiograph has
    no colour, and OHIF's own overlay icons and text on the viewport are blue."""
    channels = rgb.astype(int)
    r, g, b = channels[..., 0], channels[..., 1], channels[..., 2]
    return (channels.max(axis=-1) - channels.min(axis=-1) > 40) & (channels.max(axis=-1) > 90) & (b < np.maximum(r, g))


def store_study(orthanc, paths: list[Path], *, salt: str, pixel_spacing: list[float] | None = None) -> str:
    """The files as a new study (new UIDs) in Orthanc, optionally with another Pixel Spacing;
    returns its StudyInstanceUID once its SR, GSPS, SEG and SC are stored."""
    from pydicom.uid import generate_uid

    from tests.service.procs import relabelled

    study_uid = generate_uid(entropy_srcs=["viewer", salt])
    source = pydicom.dcmread(paths[0], stop_before_pixels=True)
    with orthanc.client() as c:
        for data in relabelled(paths, study_uid=study_uid, patient_id=str(source.PatientID), salt=salt):
            if pixel_spacing is not None:
                ds = pydicom.dcmread(BytesIO(data))
                ds.PixelSpacing = pixel_spacing
                buffer = BytesIO()
                ds.save_as(buffer, enforce_file_format=True)
                data = buffer.getvalue()
            c.post("/instances", content=data).raise_for_status()

    def outputs_stored() -> bool:
        return {"SR", "PR", "SEG", "OT"} <= {s["00080060"]["Value"][0] for s in orthanc.series_of_study(study_uid)}

    wait_until(outputs_stored, timeout=STABLE_AGE + 120, interval=0.5, what=f"the outputs of study {study_uid}")
    return study_uid


def stored_outputs(orthanc, study_uid: str) -> list[pydicom.Dataset]:
    with orthanc.client() as c:
        orthanc_id = next(x["ID"] for x in c.post("/tools/lookup", content=study_uid).json() if x["Type"] == "Study")
        found = []
        for instance in c.get(f"/studies/{orthanc_id}/instances").json():
            found.append(pydicom.dcmread(BytesIO(c.get(f"/instances/{instance['ID']}/file").content)))
    return found


def test_viewer_draws_the_seg_overlay_where_the_seg_puts_it(viewer_stack, phantom_studies, tmp_path: Path) -> None:
    """Double-clicking the SEG and answering Yes loads it as a labelmap over the referenced
    image (lungs and opacity): coloured pixels appear in the viewport, inside the SEG's masks
    as fitted to the viewport, and none before."""
    orthanc, url = viewer_stack
    _, paths = next((u, p) for u, p in phantom_studies.items() if len(p) >= 2)
    study_uid = store_study(orthanc, paths, salt="seg")
    out, before = tmp_path / "seg.png", tmp_path / "seg-before.png"
    report = run_mode(url, study_uid, out, before, "--mode", "seg")
    keep_artifacts("viewer-seg", out, before, report)
    assert not report["page_errors"], report["page_errors"]
    assert not report["console_errors"], report["console_errors"]
    assert report["hydrate_prompt"], "OHIF asked whether to open the segmentation"
    labels = [[s["label"] for s in seg["segments"]] for seg in report["segmentations"]]
    assert labels == [["Lungs", "Opacity"]], labels

    seg = next(ds for ds in stored_outputs(orthanc, study_uid) if ds.Modality == "SEG")
    shown = str(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID)
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns)).astype(bool)
    mask = frames.any(axis=0)  # lungs and opacity together
    rows, cols = mask.shape
    vp = report["viewport"]
    x0, y0, w, h = vp["x"], vp["y"], vp["width"], vp["height"]
    after_rgb = np.asarray(Image.open(out).convert("RGB"))[y0 : y0 + h, x0 : x0 + w]
    before_rgb = np.asarray(Image.open(before).convert("RGB"))[y0 : y0 + h, x0 : x0 + w]
    assert coloured(before_rgb).sum() <= 20, "colour in the viewport before the SEG was loaded"
    paint = coloured(after_rgb)
    assert paint.mean() > 0.05, f"only {paint.mean():.1%} of the viewport is coloured"

    # The SEG's pixel grid fitted into the viewport (centred, aspect kept), as OHIF shows the image.
    scale = min(w / cols, h / rows)
    ox, oy = (w - cols * scale) / 2, (h - rows * scale) / 2
    ys, xs = np.nonzero(paint)
    src_x = np.clip(((xs - ox) / scale).astype(int), 0, cols - 1)
    src_y = np.clip(((ys - oy) / scale).astype(int), 0, rows - 1)
    grown = mask.copy()
    for _ in range(3):  # room for outlines and resampling
        grown[1:, :] |= grown[:-1, :].copy()
        grown[:-1, :] |= grown[1:, :].copy()
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
    inside = grown[src_y, src_x].mean()
    assert inside > 0.9, f"only {inside:.0%} of the coloured pixels lie on the SEG's masks"
    sample_y, sample_x = np.nonzero(mask[::7, ::7])
    vx = (ox + (sample_x * 7 + 0.5) * scale).astype(int)
    vy = (oy + (sample_y * 7 + 0.5) * scale).astype(int)
    covered = paint[np.clip(vy, 0, h - 1), np.clip(vx, 0, w - 1)].mean()
    assert covered > 0.8, f"only {covered:.0%} of the SEG's mask is painted"
    assert shown, "the SEG references its source image"


def test_the_sc_of_a_cr_whose_pixel_spacing_is_zero_renders(viewer_stack, phantom_studies, tmp_path: Path) -> None:
    """OHIF 3.13 shows a CR whose Pixel Spacing is 0\\0 black (its viewport gets no spacing and
    no camera scale; README, *The viewer and real images*), and with it the SR's boxes. Our
    outputs carry no such spacing, and the Secondary Capture, with the results burned in,
    renders: grey image, green lung outline, yellow text."""
    orthanc, url = viewer_stack
    _, paths = next((u, p) for u, p in phantom_studies.items() if len(p) >= 2)
    study_uid = store_study(orthanc, paths, salt="zero-spacing", pixel_spacing=[0, 0])
    for ds in stored_outputs(orthanc, study_uid):
        if ds.Modality in ("CR", "DX"):
            continue
        for element in ds.iterall():
            if element.keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
                assert all(float(v) > 0 for v in element.value), f"{ds.Modality} carries a spacing of {element.value}"

    out, before = tmp_path / "sc.png", tmp_path / "sc-before.png"
    report = run_mode(url, study_uid, out, before, "--mode", "series", "--modality", "OT")
    keep_artifacts("viewer-sc-zero-spacing", out, before, report)
    assert not report["page_errors"], report["page_errors"]
    assert report["first_image_fill"] < 0.01, (
        "OHIF now renders the CR with Pixel Spacing 0\\0: update README's *The viewer and real images*"
    )
    assert report["image_fill"] > 0.2, f"the SC is not rendered (fill {report['image_fill']})"
    vp = report["viewport"]
    rgb = np.asarray(Image.open(out).convert("RGB"))[vp["y"] : vp["y"] + vp["height"], vp["x"] : vp["x"] + vp["width"]]
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    lung_outline = (g > 150) & (r < 140) & (b < 140) & (g - r > 60)
    text = (r > 170) & (g > 170) & (b < 90)
    assert lung_outline.sum() > 300, f"{lung_outline.sum()} pixels of the green lung outline"
    assert text.sum() > 100, f"{text.sum()} pixels of the yellow banner"
    grey = (np.abs(r - g) < 12) & (np.abs(g - b) < 12) & (r > 40)
    assert grey.mean() > 0.2, "the radiograph itself is in the SC"
