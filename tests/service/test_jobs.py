"""Job-store semantics, identical on SQLite and on a real Redis: one active job per study, one
claimant per job, leases that expire, terminal states that stay terminal, counters."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cxr_service.jobs import AmbiguousStudy, Job, JobKind, JobState, RedisJobStore, ResultOrigin, SqliteJobStore
from tests.service.procs import start_redis


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        s = SqliteJobStore(tmp_path / "jobs.sqlite3")
        yield s
        s.close()
        return
    proc, url = start_redis(tmp_path / "redis")
    s = RedisJobStore(url, prefix="cxr:test")
    yield s
    s.close()
    proc.stop()


def new(uid: str = "1.2.3") -> Job:
    return Job.new(study_instance_uid=uid, kind=JobKind.DICOMWEB)


def test_one_active_job_per_study(store) -> None:
    first, created = store.insert_unless_active(new())
    assert created
    again, created = store.insert_unless_active(new())
    assert not created and again.id == first.id
    other, created = store.insert_unless_active(new("1.2.4"))
    assert created and other.id != first.id
    store.claim(first.id, worker="w", lease_s=30)
    store.finish(first.id, worker="w", state=JobState.DONE)
    after, created = store.insert_unless_active(new())
    assert created and after.id != first.id, "a finished job does not block a new one"


def test_claims_leases_and_terminal_states(store) -> None:
    job, _ = store.insert_unless_active(new())
    claimed = store.claim(job.id, worker="a", lease_s=0.3)
    assert claimed is not None and claimed.state == JobState.RUNNING and claimed.attempts == 1
    assert store.claim(job.id, worker="b", lease_s=30) is None, "held by a live lease"
    assert store.heartbeat(job.id, worker="a", lease_s=0.3)
    assert not store.heartbeat(job.id, worker="b", lease_s=30)
    time.sleep(0.4)
    requeued = store.requeue_expired()
    assert [j.id for j in requeued] == [job.id] and requeued[0].state == JobState.QUEUED
    reclaimed = store.claim(job.id, worker="b", lease_s=30)
    assert reclaimed is not None and reclaimed.attempts == 2
    assert store.finish(job.id, worker="a", state=JobState.DONE) is None, "only the claimant finishes"
    done = store.finish(job.id, worker="b", state=JobState.DONE, model_version="v", timings_ms={"total": 5.0})
    assert done is not None and done.state == JobState.DONE and done.finished_at is not None
    assert store.claim(job.id, worker="c", lease_s=30) is None, "a finished job never runs again"
    assert store.counts_by_state()["done"] == 1


def test_retrying_jobs_are_claimable_and_results_count_analyses(store) -> None:
    job, _ = store.insert_unless_active(new())
    store.claim(job.id, worker="a", lease_s=30)
    retrying = store.finish(job.id, worker="a", state=JobState.RETRYING, error="PACS down")
    assert retrying.state == JobState.RETRYING and retrying.error == "PACS down"
    assert store.claim(job.id, worker="b", lease_s=30).attempts == 2
    document = {"study_instance_uid": "1.2.3", "model_version": "v", "images": []}
    assert store.put_result(document=document, job_id=job.id).analyses == 1
    assert store.put_result(document=document, job_id=job.id).analyses == 2
    assert store.get_result("1.2.3").document == document
    assert store.get_result("9.9") is None
    with pytest.raises(ValueError, match="job_id"):
        store.put_result(document=document, job_id=None)


def test_an_upload_result_never_replaces_a_job_result(store) -> None:
    """Each origin has its own slot: the job's is served first, the upload's only without one."""
    upload = {"study_instance_uid": "1.2.3", "model_version": "v", "images": [], "origin": "upload"}
    kept = store.put_result(document=upload, job_id=None, origin=ResultOrigin.UPLOAD)
    assert kept.origin == ResultOrigin.UPLOAD and kept.job_id is None
    assert store.get_result("1.2.3").document == upload, "without a job result the upload's is served"
    job = {"study_instance_uid": "1.2.3", "model_version": "v", "images": [], "origin": "job"}
    store.put_result(document=job, job_id="job-1")
    store.put_result(document=upload, job_id=None, origin=ResultOrigin.UPLOAD)
    served = store.get_result("1.2.3")
    assert served.document == job and served.job_id == "job-1" and served.analyses == 1
    assert store.get_result("1.2.3", origin=ResultOrigin.UPLOAD).analyses == 2
    assert store.get_result("1.2.3", origin=ResultOrigin.JOB).origin == ResultOrigin.JOB


def test_jobs_and_results_are_kept_per_patient(store) -> None:
    """Orthanc keeps one study per Patient ID + StudyInstanceUID: two patients under one UID
    get a job each at once, and each its own result; asked without a patient, a UID with
    results of two patients is ambiguous."""
    a, created_a = store.insert_unless_active(Job.new(study_instance_uid="1.2.3", kind=JobKind.DICOMWEB, patient_id="A"))
    b, created_b = store.insert_unless_active(Job.new(study_instance_uid="1.2.3", kind=JobKind.DICOMWEB, patient_id="B"))
    again, created = store.insert_unless_active(Job.new(study_instance_uid="1.2.3", kind=JobKind.DICOMWEB, patient_id="A"))
    assert created_a and created_b and a.id != b.id
    assert not created and again.id == a.id and again.patient_id == "A"
    assert store.get(b.id).patient_id == "B"

    doc_a = {"study_instance_uid": "1.2.3", "model_version": "v", "images": [], "patient_id": "A"}
    store.put_result(document=doc_a, job_id=a.id)
    assert store.get_result("1.2.3").document == doc_a, "one patient's result: served without naming it"
    assert store.get_result("1.2.3", patient_id="B") is None
    doc_b = {**doc_a, "patient_id": "B"}
    store.put_result(document=doc_b, job_id=b.id)
    store.put_result(document=doc_b, job_id=b.id)
    assert store.get_result("1.2.3", patient_id="A").analyses == 1
    assert store.get_result("1.2.3", patient_id="B").analyses == 2 and store.get_result("1.2.3", patient_id="B").job_id == b.id
    with pytest.raises(AmbiguousStudy, match="2 patients"):
        store.get_result("1.2.3")
    # A result kept by an earlier version (no patient) is only served while no patient has one.
    legacy = {"study_instance_uid": "1.2.4", "model_version": "v", "images": []}
    store.put_result(document=legacy, job_id="old")
    assert store.get_result("1.2.4").document == legacy
    store.put_result(document={**legacy, "patient_id": "A"}, job_id="new")
    assert store.get_result("1.2.4").job_id == "new"


def test_latency_histograms(store) -> None:
    for ms in (5.0, 30.0, 700.0):
        store.observe({"lungs": ms})
    hist = store.histograms()["lungs"]
    assert hist.count == 3 and hist.sum_ms == pytest.approx(735.0)
    assert hist.buckets[10] == 1 and hist.buckets[50] == 2 and hist.buckets[1000] == 3


def test_spool_jobs_are_reaped_only_by_the_scp_that_holds_the_spool(tmp_path: Path) -> None:
    from cxr_service.jobqueue import JobQueue
    from cxr_service.settings import Settings

    settings = Settings(environment="development", data_dir=tmp_path, lease_s=0.2)
    main, scp = JobQueue.from_settings(settings), JobQueue.for_scp(settings)
    spool = tmp_path / "spool" / "1.2.3"
    spool.mkdir(parents=True)
    local, _ = scp.submit(study_instance_uid="1.2.3", kind=JobKind.SPOOL, spool=str(spool))
    elsewhere = Job.new(study_instance_uid="1.2.4", kind=JobKind.SPOOL, spool=str(tmp_path / "not-here"))
    web, _ = main.submit(study_instance_uid="1.2.5", kind=JobKind.DICOMWEB)
    assert scp.owns(local) and not scp.owns(elsewhere) and not scp.owns(web)
    assert main.owns(web) and not main.owns(local)
    for job in (local, web):
        main.store.claim(job.id, worker="dead", lease_s=0.1)
    time.sleep(0.3)
    assert [j.id for j in main.reap()] == [web.id]
    assert [j.id for j in scp.reap()] == [local.id]
    main.close()
    scp.close()
