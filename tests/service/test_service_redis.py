"""The distributed mode on a real Redis (Debian redis-server) with separate `cxr worker`
processes, and a worker killed in the middle of a job."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.service.procs import (
    ONE_OF_EACH,
    Orthanc,
    start_redis,
    start_service,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def orthanc(orthanc: Orthanc, large_study) -> Orthanc:
    """The shared Orthanc, plus the study of large images."""
    orthanc.upload(large_study[1])
    return orthanc


def settings_for(orthanc: Orthanc, redis_url: str) -> dict[str, object]:
    return orthanc.source_settings(queue_backend="redis", redis_url=redis_url, lease_s=3, retry_delay_s=0.5)


def test_two_redis_workers_analyse_every_study(orthanc: Orthanc, phantom_studies, tmp_path: Path) -> None:
    redis, url = start_redis(tmp_path / "redis")
    settings = settings_for(orthanc, url)
    # The API and the workers share nothing but Redis and the PACS: separate data folders.
    workers = [start_worker(tmp_path / f"w{i}", name=f"worker{i}", **settings) for i in range(2)]
    service = start_service(tmp_path / "api", worker=False, **settings)
    try:
        with service.client() as c:
            ids = [
                c.post("/v1/studies", json={"study_instance_uid": uid, "force": True}).json()["job"]["id"]
                for uid in phantom_studies
            ]
            jobs = [service.wait_job(i) for i in ids]
            assert [j["state"] for j in jobs] == ["done"] * len(ids), jobs
            ran_on = {j["id"]: service.job(j["id"]) for j in jobs}
            metrics = c.get("/metrics").text
        assert f'cxr_jobs{{state="done"}} {float(len(ids))}' in metrics
        assert 'cxr_stage_latency_seconds_count{stage="total"}' in metrics
        for uid in phantom_studies:
            assert orthanc.output_series(uid) == ONE_OF_EACH
        assert len(ran_on) == len(ids)
        # Both workers took part (4 jobs, 2 workers: each log names the jobs it ran).
        logs = [w.output() for w in workers]
        assert all("done in" in log for log in logs), "each worker should have run at least one job"
    finally:
        service.stop()
        for w in workers:
            w.stop()
        redis.stop()


def test_worker_killed_mid_job_then_restarted_analyses_the_study_once(orthanc: Orthanc, large_study, tmp_path: Path) -> None:
    study_uid, _ = large_study
    redis, url = start_redis(tmp_path / "redis")
    settings = settings_for(orthanc, url)
    service = start_service(tmp_path / "api", worker=False, **settings)
    worker = start_worker(tmp_path / "w", name="worker-a", **settings)
    try:
        with service.client() as c:
            job_id = c.post("/v1/studies", json={"study_instance_uid": study_uid, "force": True}).json()["job"]["id"]
        service.wait_job(job_id, states=("running",), timeout=60)
        time.sleep(0.5)
        worker.kill()
        killed = service.job(job_id)
        assert killed["state"] == "running", f"the job must be cut off mid-way, got {killed}"
        assert "done in" not in worker.output()

        restarted = start_worker(tmp_path / "w", name="worker-b", **settings)
        try:
            job = service.wait_job(job_id, timeout=180)
            assert job["state"] == "done", job
            assert job["attempts"] == 2
            assert "lost its lease: requeued" in restarted.output()
            with service.client() as c:
                result = c.get(f"/v1/studies/{study_uid}/result").json()
            assert result["job_id"] == job_id
            # Exactly once: one analysis recorded, one series of each output in the PACS.
            counts = orthanc.outputs(study_uid)
            assert {m: c[0] for m, c in counts.items()} == ONE_OF_EACH
            assert counts["SR"] == (1, 1)
            stored = wait_until(lambda: _analyses(url, study_uid), timeout=5)
            assert stored == 1
        finally:
            restarted.stop()
    finally:
        service.stop()
        worker.stop()
        redis.stop()


def _analyses(redis_url: str, study_uid: str) -> int:
    from cxr_service.jobs import RedisJobStore

    store = RedisJobStore(redis_url, prefix="cxr:cxr")
    try:
        stored = store.get_result(study_uid)
        return stored.analyses if stored else 0
    finally:
        store.close()
