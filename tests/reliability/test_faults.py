"""Faults, with real processes: each study ends analysed exactly once, nothing lost.

(A worker killed mid-job: tests/service/test_service_redis.py. The service down while a study
arrives in Orthanc: tests/e2e/test_pacs.py.)
"""

from __future__ import annotations

import concurrent.futures
import subprocess
from pathlib import Path

import pytest

from cxr_service.jobs import SqliteJobStore
from tests.service.procs import (
    ONE_OF_EACH,
    ORTHANC_PASSWORD,
    ORTHANC_USER,
    Orthanc,
    start_orthanc,
    start_redis,
    start_service,
    start_worker,
)

pytestmark = [pytest.mark.slow, pytest.mark.reliability]


def source_settings(orthanc: Orthanc) -> dict[str, object]:
    return orthanc.source_settings(lease_s=5, retry_delay_s=0.5, job_retries=8)


def test_duplicate_and_out_of_order_notifications_analyse_once(orthanc: Orthanc, phantom_studies, tmp_path: Path) -> None:
    uid = list(phantom_studies)[0]
    data = tmp_path / "svc"
    service = start_service(data, **source_settings(orthanc))
    try:
        with service.client() as c, concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: c.post("/v1/studies", json={"study_instance_uid": uid}).json(), range(12)))
            job_ids = {a["job"]["id"] for a in answers}
            assert len(job_ids) == 1, f"12 simultaneous notifications made {len(job_ids)} jobs"
            assert sum(a["created"] for a in answers) == 1
            job = service.wait_job(job_ids.pop())
            assert job["state"] == "done" and "already analysed" not in (job["note"] or "")
            # Late repeats (after the analysis) are recognised and not redone.
            late = [service.wait_job(c.post("/v1/studies", json={"study_instance_uid": uid}).json()["job"]["id"]) for _ in range(3)]
            assert all(j["state"] == "done" and "already analysed" in j["note"] for j in late)
        store = SqliteJobStore(data / "jobs.sqlite3")
        assert store.get_result(uid).analyses == 1
        assert orthanc.output_series(uid) == ONE_OF_EACH
    finally:
        service.stop()


def test_destination_orthanc_down_while_storing_then_back(orthanc: Orthanc, phantom_studies, tmp_path: Path) -> None:
    uid = list(phantom_studies)[1]
    destination = start_orthanc(tmp_path / "destination")
    destination.stop()  # down before the worker stores its results
    data = tmp_path / "svc"
    settings = {**source_settings(orthanc), "destination_dicomweb_url": destination.dicomweb,
                "destination_username": ORTHANC_USER, "destination_password": ORTHANC_PASSWORD}  # fmt: skip
    service = start_service(data, **settings)
    try:
        with service.client() as c:
            job_id = c.post("/v1/studies", json={"study_instance_uid": uid, "force": True}).json()["job"]["id"]
        retrying = service.wait_job(job_id, states=("retrying",), timeout=120)
        assert "STOW-RS" in retrying["error"] and "unreachable" in retrying["error"]
        destination.proc.start()
        job = service.wait_job(job_id, timeout=180)
        assert job["state"] == "done", job
        assert job["attempts"] >= 2
        assert destination.output_series(uid) == ONE_OF_EACH
        assert SqliteJobStore(data / "jobs.sqlite3").get_result(uid).analyses == 1
    finally:
        service.stop()
        destination.stop()


def test_redis_restart_loses_no_job(orthanc: Orthanc, phantom_studies, tmp_path: Path) -> None:
    uids = list(phantom_studies)[2:4]
    redis, url = start_redis(tmp_path / "redis")
    settings = {**source_settings(orthanc), "queue_backend": "redis", "redis_url": url}
    service = start_service(tmp_path / "api", worker=False, **settings)
    worker = None
    try:
        with service.client() as c:
            first = c.post("/v1/studies", json={"study_instance_uid": uids[0], "force": True}).json()["job"]["id"]
            redis.stop()
            down = c.post("/v1/studies", json={"study_instance_uid": uids[1], "force": True})
            assert down.status_code == 503 and down.headers["content-type"] == "application/problem+json"
            assert c.get("/readyz").status_code == 503
            redis.start()  # same data folder: the append-only file brings the queue back
            worker = start_worker(tmp_path / "w", **settings)
            assert service.wait_job(first)["state"] == "done"
            second = c.post("/v1/studies", json={"study_instance_uid": uids[1], "force": True}).json()["job"]["id"]
            assert service.wait_job(second)["state"] == "done"
            assert c.get("/readyz").status_code == 200
    finally:
        service.stop()
        if worker is not None:
            worker.stop()
        redis.stop()


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A 16 MB tmpfs for the queue's data folder (needs root, as on the CI machines)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True, text=True)
    if run.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {run.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (256 * 1024))
                fh.flush()
        except OSError:
            pass
    return filler


def test_queue_disk_full_gives_a_clear_error_and_recovers(orthanc: Orthanc, phantom_studies, small_disk: Path) -> None:
    uid = list(phantom_studies)[0]
    service = start_service(small_disk / "svc", **source_settings(orthanc))
    try:
        filler = fill(small_disk)
        with service.client() as c:
            full = c.post("/v1/studies", json={"study_instance_uid": uid, "force": True})
            assert full.status_code == 507, full.text
            assert full.headers["content-type"] == "application/problem+json"
            assert "storage is full" in full.json()["detail"]
            assert c.get("/healthz").status_code == 200
            filler.unlink()  # space returns
            job_id = c.post("/v1/studies", json={"study_instance_uid": uid, "force": True}).json()["job"]["id"]
            assert service.wait_job(job_id)["state"] == "done"
    finally:
        service.stop()


def test_service_killed_mid_job_then_restarted_analyses_once(large_study, tmp_path: Path) -> None:
    """The embedded mode: `cxr serve` runs the job itself and is SIGKILLed in the middle of it."""
    uid, paths = large_study
    orthanc = start_orthanc(tmp_path / "orthanc")
    orthanc.upload(paths)
    data = tmp_path / "svc"
    service = start_service(data, **orthanc.source_settings(lease_s=3))
    try:
        with service.client() as c:
            job_id = c.post("/v1/studies", json={"study_instance_uid": uid}).json()["job"]["id"]
        service.wait_job(job_id, states=("running",), timeout=60)
        service.proc.kill()
        store = SqliteJobStore(data / "jobs.sqlite3")
        assert store.get(job_id).state == "running", "the job must be cut off mid-way"
        service.restart()
        job = service.wait_job(job_id, timeout=180)
        assert job["state"] == "done" and job["attempts"] == 2, job
        assert store.get_result(uid).analyses == 1
        assert orthanc.output_series(uid) == ONE_OF_EACH
    finally:
        service.stop()
        orthanc.stop()
