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
    yellow = (r > 200) & (g > 200) & (b < 70)
    green = (g > 200) & (r < 70) & (b < 70)
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
