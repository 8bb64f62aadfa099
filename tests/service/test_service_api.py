"""The API as a real `cxr serve` process: auth, problem+json, uploads and their limits,
metrics, settings that refuse default secrets, and schemathesis fuzzing."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cxr_models.weights import load_manifest
from tests.service.procs import CXR, REPO, TOKEN, Service, cxr_env, start_service

pytestmark = pytest.mark.slow

PROTECTED = [
    ("POST", "/v1/studies"),
    ("GET", "/v1/jobs/0123abcd"),
    ("GET", "/v1/studies/1.2.3/result"),
    ("GET", "/v1/worklist"),
    ("POST", "/v1/analyze"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),  # open only with CXR_DOCS_PUBLIC=true or in development
]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Service:
    svc = start_service(
        tmp_path_factory.mktemp("api"), max_upload_bytes=16_000_000, max_pixels=2_000_000,
        max_concurrent_uploads=1, max_waiting_uploads=1,
    )  # fmt: skip
    yield svc
    svc.stop()


def files_of(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "application/dicom")) for p in paths]


@pytest.mark.parametrize("token", [None, "wrong-token-but-long-enough"])
def test_every_protected_route_answers_401_problem_json(service: Service, token: str | None) -> None:
    with service.client(token=token) as c:
        for method, path in PROTECTED:
            r = c.request(method, path, json={} if method == "POST" and path == "/v1/studies" else None)
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["status"] == 401
    with service.client(token=None) as c:
        assert c.get("/healthz").status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["model_version"] == load_manifest()["version"]
    # The browser UIs are not served outside development without CXR_DOCS_PUBLIC.
    for token in (None, TOKEN):
        with service.client(token=token) as c:
            assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
    with service.client() as c:
        assert c.get("/openapi.json").json()["info"]["title"] == "cxr"


def test_simultaneous_uploads_beyond_the_limits_get_503_with_retry_after(service: Service, phantom_studies) -> None:
    """One upload runs and one waits (the fixture's limits); the rest are refused at once,
    before their bodies are read, and the service stays ready."""
    from concurrent.futures import ThreadPoolExecutor

    paths = next(p for p in phantom_studies.values() if len(p) >= 2)
    files = files_of(paths)

    def upload(_: int) -> httpx.Response:
        with service.client() as c:
            return c.post("/v1/analyze", files=files)

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(upload, range(6)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1, codes
    for refused in (r for r in answers if r.status_code == 503):
        assert refused.headers["retry-after"].isdigit()
        assert refused.headers["content-type"] == "application/problem+json"
        assert "CXR_MAX_CONCURRENT_UPLOADS" in refused.json()["detail"]
    with service.client() as c:
        assert c.get("/readyz").status_code == 200
        assert c.post("/v1/analyze", files=files).status_code == 200


def test_upload_is_analysed_and_its_result_kept(service: Service, phantom_studies) -> None:
    uid, paths = next((u, p) for u, p in phantom_studies.items() if len(p) >= 2)
    with service.client() as c:
        r = c.post("/v1/analyze", files=files_of(paths))
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["study_instance_uid"] == uid
        assert len(doc["images"]) == len(paths)
        assert doc["study"]["label"] in {"negative", "typical", "indeterminate", "atypical"}
        assert doc["outputs"]["sr"]["sop_instance_uids"]
        kept = c.get(f"/v1/studies/{uid}/result")
        assert kept.status_code == 200 and kept.json()["images"] == doc["images"]


def test_upload_errors_are_specific_problems(service: Service, phantom_studies, tmp_path: Path) -> None:
    studies = list(phantom_studies.values())
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all")
    with service.client() as c:
        two = c.post("/v1/analyze", files=files_of([studies[0][0], studies[1][0]]))
        assert two.status_code == 422 and "2 studies" in two.json()["detail"]
        bad = c.post("/v1/analyze", files=files_of([junk]))
        assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
        assert "files[0]" in bad.json()["detail"]
        none = c.post("/v1/analyze", files=[])
        assert none.status_code == 422
        big = c.post("/v1/analyze", files=[("files", ("big.dcm", b"\0" * 17_000_000, "application/dicom"))])
        assert big.status_code == 413 and "CXR_MAX_UPLOAD_BYTES" in big.json()["detail"]
        bad_uid = c.post("/v1/studies", json={"study_instance_uid": "../../etc/passwd"})
        assert bad_uid.status_code == 422 and bad_uid.json()["errors"][0]["loc"][-1] == "study_instance_uid"
        zero = c.post("/v1/studies", json={"study_instance_uid": "1.2.03.4"})
        assert zero.status_code == 422 and "study_instance_uid: not a valid DICOM UID: component 3 has a leading zero" in zero.json()["detail"]
        unknown = c.get("/v1/jobs/0123abcd")
        assert unknown.status_code == 404 and unknown.json()["detail"] == "no job 0123abcd"
        # The service keeps serving after every refusal.
        assert c.get("/readyz").status_code == 200


def test_pixel_limit_rejects_large_images_with_their_reason(service: Service, large_study) -> None:
    _, paths = large_study
    with service.client() as c:
        r = c.post("/v1/analyze", files=files_of(paths[:1]))
    assert r.status_code == 200, r.text
    image = r.json()["images"][0]
    assert image["analysed"] is False and "pixels" in image["reason"]


def test_metrics_are_valid_prometheus_text(service: Service) -> None:
    with service.client() as c:
        text = c.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"cxr_jobs", "cxr_queue_depth"} <= set(families)
    assert {s.labels["state"] for s in families["cxr_jobs"].samples} == {"queued", "running", "retrying", "done", "failed"}


def test_token_never_appears_in_the_log(service: Service) -> None:
    assert TOKEN not in service.proc.output()


def test_default_token_is_refused_outside_development(tmp_path: Path) -> None:
    env = cxr_env(tmp_path)
    del env["CXR_API_TOKEN"]
    run = subprocess.run([str(CXR), "serve", "--port", "0"], env={**_base_env(), **env}, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode != 0
    assert "CXR_API_TOKEN is unset or a well-known default" in run.stderr
    short = subprocess.run(
        [str(CXR), "serve", "--port", "0"], env={**_base_env(), **env, "CXR_API_TOKEN": "short"}, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert short.returncode != 0 and "at least 16 characters" in short.stderr
    assert "short" not in short.stderr.replace("at least 16 characters", "")


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}


def test_schemathesis_finds_no_server_error(service: Service, tmp_path: Path) -> None:
    run = subprocess.run(
        [
            str(CXR.with_name("st")), "run", f"{service.url}/openapi.json",
            "--checks", "not_a_server_error",
            "--header", f"Authorization: Bearer {TOKEN}",
            "--max-examples", "25", "--seed", "1", "--workers", "1",
            "--phases", "examples,coverage,fuzzing",
            "--request-timeout", "60",
            "--report-dir", str(tmp_path / "schemathesis"),
        ],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counts and int(counts.group(1)) > 100 and counts.group(1) == counts.group(2), run.stdout[-2000:]
    with httpx.Client(timeout=10) as c:
        assert c.get(f"{service.url}/readyz").status_code == 200


def test_every_setting_is_documented_in_the_readme() -> None:
    from cxr_service.settings import Settings

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [f"CXR_{name.upper()}" for name in Settings.model_fields if f"`CXR_{name.upper()}`" not in readme]
    assert not missing, f"settings missing from the README's configuration table: {missing}"
