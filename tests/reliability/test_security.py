"""Security: nobody unauthenticated gets in, secrets stay out of logs, DICOM values cannot steer
output paths. (API 401s, upload and pixel limits and schemathesis: tests/service/test_service_api.py.)"""

from __future__ import annotations

from pathlib import Path

import httpx
import pydicom
import pytest

from tests.service.procs import (
    CXR,
    ORTHANC_PASSWORD,
    TOKEN,
    Proc,
    c_store,
    cxr_env,
    free_port,
    start_orthanc,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.reliability]


def test_orthanc_rest_and_dicomweb_refuse_anonymous_and_logs_hold_no_secret(tmp_path: Path) -> None:
    orthanc = start_orthanc(tmp_path / "orthanc", plugin_service_url="http://127.0.0.1:9")
    try:
        with httpx.Client(base_url=orthanc.url, timeout=10) as anonymous:
            for path in ("/system", "/studies", "/dicom-web/studies", "/wado", "/instances", "/cxr/studies/x/analyze"):
                assert anonymous.get(path).status_code == 401, path
            assert anonymous.post("/instances", content=b"x").status_code == 401
        with httpx.Client(base_url=orthanc.url, auth=("cxr-test", "wrong"), timeout=10) as wrong:
            assert wrong.get("/system").status_code == 401
        assert ORTHANC_PASSWORD not in orthanc.log()
        assert TOKEN not in orthanc.log()
        config = orthanc.workdir / "orthanc.json"
        assert config.stat().st_mode & 0o077 == 0, "the generated configuration holds secrets: mode 0600"
    finally:
        orthanc.stop()


def test_dicom_values_cannot_escape_the_spool(phantom_studies, tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "scp"
    env = cxr_env(data, scp_port=port, scp_idle_s=30)
    proc = Proc("scp", [str(CXR), "scp"], tmp_path / "scp.log", env=env).start()
    try:
        wait_until(lambda: "cxr scp ready" in proc.output(), timeout=60, what="cxr scp")
        source = next(iter(phantom_studies.values()))[0]
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID = "../../../../escaped"
        ds.SOPInstanceUID = "../../evil"
        evil = tmp_path / "evil.dcm"
        ds.save_as(evil)
        assert c_store([evil], port=port, ae_title="CXR") == [0x0000]
        spool = data / "spool"
        written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".dcm" and p != evil]
        assert written and all(spool in p.parents for p in written), written
        assert not (tmp_path.parent / "escaped").exists()
        assert all(p.parent.name.startswith("invalid-uid-") for p in written)
    finally:
        proc.stop()
