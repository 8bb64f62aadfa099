"""``GET /v1/worklist`` on a real `cxr serve`, on SQLite and on a real Redis: studies arrive
concurrently while clients page through it; the order, the cursors, the problems, the token,
``cxr_triage_total`` in /metrics and a done job's ``triage_priority``."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cxr_service.jobqueue import make_store
from cxr_service.jobs import Job, JobKind, JobState
from cxr_service.settings import Settings
from cxr_service.triage import RANK, Priority
from cxr_service.worklist import WorklistEntry, make_triage_store
from tests.service.procs import Service, start_redis, start_service

pytestmark = pytest.mark.slow

WRITERS, PER_WRITER = 4, 15


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Settings]]:
    """One `cxr serve` per job store for the module (the tests below run in their order)."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    extra: dict[str, object] = {}
    redis = None
    if request.param == "redis":
        redis, url = start_redis(tmp_path / "redis")
        extra = {"queue_backend": "redis", "redis_url": url}
    service = start_service(tmp_path / "api", worker=False, **extra)
    try:
        yield service, Settings(environment="development", data_dir=tmp_path / "api", **extra)
    finally:
        service.stop()
        if redis is not None:
            redis.stop()


def pages(service: Service, *, limit: int, **params: str) -> tuple[list[dict], int]:
    """Every item, following next_cursor, and how many pages it took."""
    items, cursor, count = [], None, 0
    with service.client() as c:
        while True:
            r = c.get("/v1/worklist", params={"limit": limit, **params, **({"cursor": cursor} if cursor else {})})
            assert r.status_code == 200, r.text
            body = r.json()
            count += 1
            items += body["items"]
            cursor = body["next_cursor"]
            assert ("link" in r.headers) == (cursor is not None)
            if cursor is None:
                return items, count
            assert 'rel="next"' in r.headers["link"] and cursor in r.headers["link"]


def order(entries) -> list[str]:
    return [e.study_instance_uid for e in sorted(entries, key=lambda e: (RANK[e.priority], e.arrived_at, e.study_instance_uid))]


def test_bad_parameters_are_problems_and_the_token_is_required(deployment) -> None:
    service, _ = deployment
    with service.client(token=None) as c:
        r = c.get("/v1/worklist")
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    with service.client() as c:
        for params, field in [
            ({"limit": 0}, "limit"),
            ({"limit": 501}, "limit"),
            ({"limit": "ten"}, "limit"),
            ({"priority": "high"}, "priority"),
            ({"cursor": "not-a-cursor"}, "cursor"),
            ({"cursor": "x" * 201}, "cursor"),
        ]:
            r = c.get("/v1/worklist", params=params)
            assert r.status_code == 422, (params, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["detail"].startswith(f"{field}: "), r.json()
        empty = c.get("/v1/worklist")
        assert empty.status_code == 200 and empty.json() == {"items": [], "next_cursor": None}


def test_the_worklist_in_order_while_studies_arrive(deployment) -> None:
    service, settings = deployment
    store = make_triage_store(settings)
    levels = list(Priority)
    recorded: dict[str, WorklistEntry] = {}
    lock = threading.Lock()
    writing = threading.Event()
    writing.set()
    problems: list[str] = []

    def arrive(w: int) -> None:
        for i in range(PER_WRITER):
            now = time.time()
            e = WorklistEntry(f"1.2.826.0.1.3680043.8.498.{w + 1}.{i + 1}", levels[(w + 2 * i) % 4], uuid.uuid4().hex, now, now)
            store.record(e)
            with lock:
                recorded[e.study_instance_uid] = e
            time.sleep(0.01)

    def read() -> None:
        while writing.is_set():
            with lock:
                before = set(recorded)
            items, _ = pages(service, limit=6)
            uids = [i["study_instance_uid"] for i in items]
            keys = [(RANK[Priority(i["priority"])], i["arrived_at"], i["study_instance_uid"]) for i in items]
            if len(uids) != len(set(uids)) or keys != sorted(keys) or not before <= set(uids):
                problems.append(f"a pass out of order, with a duplicate or a miss: {len(uids)} items, {len(before)} before")

    writers = [threading.Thread(target=arrive, args=(w,)) for w in range(WRITERS)]
    reader = threading.Thread(target=read)
    reader.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    writing.clear()
    reader.join()
    assert not problems, problems

    items, count = pages(service, limit=7)
    assert [i["study_instance_uid"] for i in items] == order(recorded.values())
    assert count == -(-len(recorded) // 7), "no empty last page"
    first = recorded[items[0]["study_instance_uid"]].to_json()
    assert items[0] == {k: v for k, v in first.items() if k != "study_key"}, "the key is internal"
    urgent, _ = pages(service, limit=5, priority="urgent")
    assert [i["study_instance_uid"] for i in urgent] == order(e for e in recorded.values() if e.priority == Priority.URGENT)

    with service.client() as c:
        metrics = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
    totals = {s.labels["priority"]: s.value for s in metrics["cxr_triage"].samples if s.name == "cxr_triage_total"}
    assert totals == {str(p): float(sum(1 for e in recorded.values() if e.priority == p)) for p in Priority}
    assert {s.labels["state"]: s.value for s in metrics["cxr_triage_webhook_notices"].samples} == {
        "pending": 0.0, "delivered": 0.0, "failed": 0.0,
    }  # fmt: skip
    store.close()


def test_a_done_job_reports_its_study_triage_priority(deployment) -> None:
    service, settings = deployment
    jobs, triage = make_store(settings), make_triage_store(settings)
    try:
        done, _ = jobs.insert_unless_active(Job.new(study_instance_uid="1.2.826.0.1.3680043.8.498.71", kind=JobKind.DICOMWEB))
        queued, _ = jobs.insert_unless_active(Job.new(study_instance_uid="1.2.826.0.1.3680043.8.498.72", kind=JobKind.DICOMWEB))
        jobs.claim(done.id, worker="test", lease_s=30)
        jobs.finish(done.id, worker="test", state=JobState.DONE)
        now = time.time()
        triage.record(WorklistEntry(done.study_instance_uid, Priority.URGENT, done.id, done.created_at, now))
        # Two patients under one UID: each done job answers its own study's priority.
        from cxr_service.patients import study_key

        uid = "1.2.826.0.1.3680043.8.498.73"
        by_patient = {}
        for patient, priority in (("P1", Priority.ROUTINE), ("P2", Priority.PRIORITY)):
            job, _ = jobs.insert_unless_active(Job.new(study_instance_uid=uid, kind=JobKind.DICOMWEB, patient_id=patient))
            jobs.claim(job.id, worker="test", lease_s=30)
            jobs.finish(job.id, worker="test", state=JobState.DONE)
            triage.record(WorklistEntry(uid, priority, job.id, job.created_at, now, study_key=study_key(uid, patient)))
            by_patient[job.id] = str(priority)
        with service.client() as c:
            assert c.get(f"/v1/jobs/{done.id}").json()["triage_priority"] == "urgent"
            assert c.get(f"/v1/jobs/{queued.id}").json()["triage_priority"] is None
            assert {j: c.get(f"/v1/jobs/{j}").json()["triage_priority"] for j in by_patient} == by_patient
    finally:
        jobs.close()
        triage.close()
