"""Triage: the rule (one pure function), its SR item, the worklist and counters on SQLite and a
real Redis (concurrent arrivals), the webhook against a real HTTP receiver that is down and
comes back, and a job through the worker with the demo models."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest

from cxr_service import codes
from cxr_service.engine import AnalysisEngine, LazyEngine
from cxr_service.jobqueue import JobQueue
from cxr_service.jobs import JobKind, JobState
from cxr_service.results import to_result_json
from cxr_service.settings import Settings, SettingsError, load_settings
from cxr_service.triage import RANK, Priority, TriageThresholds, assess, at_least, decide
from cxr_service.webhook import MAX_RETRY_DELAY_S, WebhookNotifier, notice_body
from cxr_service.worker import JobRunner
from cxr_service.worklist import (
    Notice,
    NoticeState,
    RedisTriageStore,
    SqliteTriageStore,
    WorklistEntry,
    decode_cursor,
    encode_cursor,
)
from cxr_service.writers import write_sr
from tests.service.procs import start_redis, wait_until
from tests.service.test_writers import AP_UID, LAT_UID, PA_UID, STUDY_UID, make_cr, make_result

DEFAULT = TriageThresholds()
PRIORITY_CODES = {(c.value, c.scheme_designator): p for p, c in codes.TRIAGE_CODES.items()}
WEBHOOK_KEYS = {"study_instance_uid", "priority", "job_id", "arrived_at", "analysed_at", "sent_at"}
SECRET = "webhook-secret-for-the-test"


# --- the rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "abnormal", "expected"),
    [
        (0.80, 0.10, Priority.URGENT),  # thresholds are inclusive
        (0.10, 0.95, Priority.URGENT),
        (0.99, 0.99, Priority.URGENT),
        (0.79, 0.94, Priority.PRIORITY),
        (0.50, None, Priority.PRIORITY),
        (None, 0.70, Priority.PRIORITY),
        (0.49, 0.69, Priority.ROUTINE),
        (None, 0.0, Priority.ROUTINE),
        (None, None, Priority.ROUTINE),
    ],
)
def test_the_rule_on_the_two_figures(score, abnormal, expected) -> None:
    triage = decide(score, abnormal, DEFAULT, analysed=True)
    assert triage.priority == expected, triage
    assert triage.max_opacity_score == score and triage.abnormal_probability == abnormal
    if expected != Priority.ROUTINE:
        assert all(f"({expected} " in reason for reason in triage.reasons), triage.reasons
        assert ("opacity" in " ".join(triage.reasons)) == (score is not None and score >= (0.8 if expected == Priority.URGENT else 0.5))


def test_a_study_with_no_analysed_image_is_unassessed_whatever_the_figures() -> None:
    triage = decide(0.99, 0.99, DEFAULT, analysed=False)
    assert triage.priority == Priority.UNASSESSED and triage.max_opacity_score is None and triage.abnormal_probability is None
    assert triage.reasons == ("no image of the study could be analysed",)


def test_the_worklist_order_and_levels() -> None:
    assert sorted(Priority, key=RANK.__getitem__) == [Priority.URGENT, Priority.PRIORITY, Priority.UNASSESSED, Priority.ROUTINE]
    assert at_least("urgent", "priority") and at_least("priority", "priority")
    assert not at_least("unassessed", "priority") and not at_least("routine", "urgent")


def test_assess_reads_the_highest_reported_score_and_one_minus_p_negative() -> None:
    result = make_result()  # PA opacities 0.8734 and 0.4211, AP 0.61; P(negative) 0.1
    triage = assess(result, DEFAULT)
    assert triage.priority == Priority.URGENT
    assert triage.max_opacity_score == 0.8734 and triage.abnormal_probability == pytest.approx(0.9)
    assert assess(result, TriageThresholds(urgent_opacity=0.9, urgent_abnormal=0.95)).priority == Priority.PRIORITY
    strict = TriageThresholds(urgent_opacity=1.0, urgent_abnormal=1.0, priority_opacity=0.95, priority_abnormal=0.95)
    assert assess(result, strict).priority == Priority.ROUTINE
    skipped = tuple(
        dataclasses.replace(i, analysed=False, reason="lateral view", opacities=(), opacity_percent=None, lung_mask=None, opacity_mask=None)
        for i in result.images
    )
    nothing = dataclasses.replace(result, images=skipped, study_label=None, study_probabilities=None)
    assert assess(nothing, DEFAULT).priority == Priority.UNASSESSED


def test_thresholds_are_validated_in_the_rule_and_in_the_settings() -> None:
    with pytest.raises(ValueError, match="priority_opacity"):
        TriageThresholds(priority_opacity=0.9)
    with pytest.raises(ValueError, match=r"urgent_abnormal must be in \(0, 1\]"):
        TriageThresholds(urgent_abnormal=0.0)
    assert TriageThresholds.from_settings(Settings(environment="development")) == DEFAULT
    cases = [
        ({"triage_priority_abnormal": 0.99}, "CXR_TRIAGE_PRIORITY_ABNORMAL (0.99) must not exceed CXR_TRIAGE_URGENT_ABNORMAL"),
        ({"triage_urgent_opacity": 1.5}, "CXR_TRIAGE_URGENT_OPACITY"),
        ({"triage_webhook_url": "ftp://hooks.example"}, "CXR_TRIAGE_WEBHOOK_URL must be an http"),
        ({"triage_webhook_secret": SECRET}, "CXR_TRIAGE_WEBHOOK_SECRET is set but CXR_TRIAGE_WEBHOOK_URL is not"),
        ({"triage_webhook_header": "Bad Header:"}, "CXR_TRIAGE_WEBHOOK_HEADER"),
        ({"triage_webhook_level": "routine"}, "CXR_TRIAGE_WEBHOOK_LEVEL"),
    ]
    for overrides, message in cases:
        with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
            load_settings(environment="development", **overrides)
        assert SECRET not in str(err.value)


def test_result_json_carries_the_triage_and_its_thresholds() -> None:
    result = dataclasses.replace(make_result(), triage=assess(make_result(), DEFAULT))
    doc = to_result_json(result, outputs={})
    assert doc["triage"] == {
        "priority": "urgent",
        "max_opacity_score": 0.8734,
        "abnormal_probability": 0.9,
        "reasons": ["highest opacity score 0.87 >= 0.80 (urgent opacity threshold)"],
        "thresholds": {"urgent_opacity": 0.8, "urgent_abnormal": 0.95, "priority_opacity": 0.5, "priority_abnormal": 0.7},
    }
    assert json.loads(json.dumps(doc)) == doc


# --- the SR --------------------------------------------------------------------------------------


def sources() -> dict[str, pydicom.Dataset]:
    images = [
        make_cr(sop_uid=uid, photometric="MONOCHROME2", shape=shape, view=view, seed=n)
        for n, (uid, shape, view) in enumerate([(PA_UID, (200, 160), "PA"), (AP_UID, (180, 150), "AP"), (LAT_UID, (190, 170), "LL")])
    ]
    return {str(ds.SOPInstanceUID): ds for ds in images}


def sr_priorities(sr: pydicom.Dataset) -> list[Priority]:
    """The triage items of a written SR, read back from its bytes."""
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    ds = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    found = []
    for container in ds.ContentSequence:
        for item in container.get("ContentSequence", []):
            name = item.ConceptNameCodeSequence[0]
            if (name.CodeValue, name.CodingSchemeDesignator) == (codes.PRIORITY.value, "SCT"):
                assert container.ConceptNameCodeSequence[0].CodeValue == codes.QUALITATIVE_EVALUATIONS.value
                assert item.ValueType == "CODE" and item.RelationshipType == "CONTAINS"
                value = item.ConceptCodeSequence[0]
                found.append(PRIORITY_CODES[(value.CodeValue, value.CodingSchemeDesignator)])
    return found


@pytest.mark.parametrize("priority", list(Priority))
def test_every_priority_round_trips_through_the_sr(priority: Priority, tmp_path: Path) -> None:
    base = make_result()
    if priority == Priority.UNASSESSED:
        lateral = base.images[2]
        base = dataclasses.replace(base, images=(lateral,), study_label=None, study_probabilities=None)
    triage = dataclasses.replace(decide(0.5, 0.5, DEFAULT, analysed=priority != Priority.UNASSESSED), priority=priority)
    sr = write_sr(dataclasses.replace(base, triage=triage), sources())
    assert sr_priorities(sr) == [priority]
    declared = {item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence}
    assert "99CXR" in declared
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy (Debian dicom3tools) is required: make system-deps")
    check = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert not [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
    assert sr_priorities(write_sr(base, sources())) == [], "no triage, no item"


def test_the_triage_codes_are_standard_where_one_exists() -> None:
    assert {p: (c.value, c.scheme_designator) for p, c in codes.TRIAGE_CODES.items()} == {
        "urgent": ("103391001", "SCT"),
        "priority": ("394849002", "SCT"),
        "routine": ("50811001", "SCT"),
        "unassessed": ("CXR012", "99CXR"),
    }
    assert (codes.PRIORITY.value, codes.PRIORITY.scheme_designator) == ("260870009", "SCT")


# --- the worklist and the outbox on both stores ---------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def triage_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqliteTriageStore | RedisTriageStore]:
    if request.param == "sqlite":
        store = SqliteTriageStore(tmp_path / "jobs.sqlite3")
        yield store
        store.close()
        return
    proc, url = start_redis(tmp_path / "redis")
    store = RedisTriageStore(url, prefix="cxr:test")
    yield store
    store.close()
    proc.stop()


def entry(n: int, priority: Priority, *, arrived_at: float | None = None, job_id: str | None = None) -> WorklistEntry:
    now = time.time()
    return WorklistEntry(
        study_instance_uid=f"1.2.826.0.1.3680043.8.498.{n + 1}",
        priority=priority,
        job_id=job_id or uuid.uuid4().hex,
        arrived_at=now if arrived_at is None else arrived_at,
        analysed_at=now,
    )


def full_pass(store, *, limit: int, priority: Priority | None = None) -> list[WorklistEntry]:
    seen, after = [], None
    while True:
        page = store.page(limit=limit, after=after, priority=priority)
        seen += page
        if len(page) < limit:
            return seen
        after = page[-1].sort_key


def expected_order(entries) -> list[str]:
    return [e.study_instance_uid for e in sorted(entries, key=lambda e: (RANK[e.priority], e.arrived_at, e.study_instance_uid))]


def test_worklist_order_under_concurrent_arrivals_and_reanalyses(triage_store) -> None:
    """Six writers record 120 studies at once while a reader pages through the worklist: each
    pass is in order, never shows a study twice and misses none recorded before it started.
    Then a third of the studies are analysed again (new job, other priority, later arrival)."""
    store = triage_store
    levels = list(Priority)
    recorded: dict[str, WorklistEntry] = {}
    calls: list[WorklistEntry] = []
    lock = threading.Lock()
    writing = threading.Event()
    writing.set()
    problems: list[str] = []

    def write(w: int) -> None:
        for i in range(20):
            e = entry(w * 100 + i, levels[(w + i) % 4])
            assert store.record(e)
            with lock:
                recorded[e.study_instance_uid] = e
                calls.append(e)

    def read() -> None:
        passes = 0
        while writing.is_set() or passes == 0:
            with lock:
                before = set(recorded)
            seen = [e.study_instance_uid for e in full_pass(store, limit=7)]
            keys = [e.sort_key for e in full_pass(store, limit=500)]
            if len(seen) != len(set(seen)):
                problems.append(f"pass {passes}: a study shown twice")
            if not before <= set(seen):
                problems.append(f"pass {passes}: {len(before - set(seen))} studies missed")
            if keys != sorted(keys):
                problems.append(f"pass {passes}: out of order")
            passes += 1

    writers = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    reader = threading.Thread(target=read)
    reader.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    writing.clear()
    reader.join()
    assert not problems, problems
    assert [e.study_instance_uid for e in full_pass(store, limit=9)] == expected_order(recorded.values())

    again = []
    for n, e in enumerate(sorted(recorded.values(), key=lambda e: e.study_instance_uid)[::3]):
        newer = dataclasses.replace(e, job_id=uuid.uuid4().hex, priority=levels[(RANK[e.priority] + 1 + n) % 4], arrived_at=time.time())
        again.append(newer)

    def reanalyse(part: list[WorklistEntry]) -> None:
        for e in part:
            assert store.record(e)
            with lock:
                calls.append(e)

    threads = [threading.Thread(target=reanalyse, args=(again[k::3],)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recorded.update({e.study_instance_uid: e for e in again})
    final = full_pass(store, limit=11)
    assert [e.study_instance_uid for e in final] == expected_order(recorded.values())
    assert all(store.entry(e.study_instance_uid) == recorded[e.study_instance_uid] for e in final)
    # Each analysis counted once under its priority; the same job recorded again counts nothing.
    expected = {str(p): sum(1 for e in calls if e.priority == p) for p in Priority}
    assert store.counts() == expected and sum(expected.values()) == 120 + len(again)
    assert not store.record(again[0]), "a job recorded twice (re-run after its worker died) is one analysis"
    assert store.counts() == expected
    # One priority only, in arrival order, through its own cursor.
    urgent = full_pass(store, limit=4, priority=Priority.URGENT)
    assert [e.study_instance_uid for e in urgent] == expected_order([e for e in recorded.values() if e.priority == Priority.URGENT])


def test_two_patients_under_one_uid_are_two_studies_of_the_worklist(triage_store) -> None:
    from cxr_service.patients import study_key

    store = triage_store
    uid = "1.2.826.0.1.3680043.8.498.4242"
    first = WorklistEntry(uid, Priority.ROUTINE, uuid.uuid4().hex, 1733100000.0, 1733100001.0, study_key=study_key(uid, "P1"))
    second = WorklistEntry(uid, Priority.URGENT, uuid.uuid4().hex, 1733100002.0, 1733100003.0, study_key=study_key(uid, "P2"))
    assert store.record(first) and store.record(second)
    assert full_pass(store, limit=1) == [second, first]
    assert sorted(store.entries(uid), key=lambda e: e.job_id) == sorted([first, second], key=lambda e: e.job_id)
    assert store.entry(first.study_key) == first and store.entry(uid) is None
    again = dataclasses.replace(first, job_id=uuid.uuid4().hex, priority=Priority.PRIORITY, arrived_at=1733100004.0)
    assert store.record(again)
    assert full_pass(store, limit=1) == [second, again], "a patient's study analysed again replaces only its own entry"
    assert decode_cursor(encode_cursor(again.sort_key)) == again.sort_key and "P1" not in json.dumps(again.to_json())


def test_cursors_are_checked() -> None:
    key = entry(1, Priority.PRIORITY, arrived_at=1733100000.5).sort_key
    assert key == "1|1733100000.500000|1.2.826.0.1.3680043.8.498.2"
    assert decode_cursor(encode_cursor(key)) == key
    for bad in ("", "!!!", encode_cursor("9|x|1.2"), encode_cursor("1|1733100000.500000|1.2;DROP"), "AAAA"):
        with pytest.raises(ValueError, match="not a cursor of this worklist"):
            decode_cursor(bad)


class Receiver:
    """A real HTTP server on 127.0.0.1 (port 0: a free one) that records what it is POSTed and
    answers ``status``."""

    def __init__(self, port: int = 0, *, status: int = 200) -> None:
        self.status = status
        self.requests: list[tuple[dict[str, str], dict, int]] = []  # headers, body, status answered
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = outer.status
                outer.requests.append((dict(self.headers), json.loads(body), status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cxr-triage"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def notifier_for(store, url: str, **options: float) -> WebhookNotifier:
    return WebhookNotifier(store, url=url, secret=SECRET, retry_s=options.pop("retry_s", 0.2), timeout_s=2.0, poll_s=0.05, **options)


def test_a_notice_survives_the_receiver_being_down_then_is_delivered_once(triage_store) -> None:
    store = triage_store
    down = Receiver()
    port = down.port
    down.stop()  # nothing listens on the port any more
    e = entry(7, Priority.URGENT, arrived_at=time.time() - 3.0)
    assert store.record(e, notice=Notice.of(e))
    notifier = notifier_for(store, f"http://127.0.0.1:{port}/cxr-triage")
    start = time.monotonic()
    notifier.start()
    back = None
    try:
        refused = wait_until(lambda: (n := store.notice(e.job_id)).attempts >= 3 and n, timeout=15, what="three refused tries")
        elapsed = time.monotonic() - start
        assert refused.state == NoticeState.PENDING and refused.last_error == "ConnectError", refused
        assert elapsed >= 0.2 + 0.4 - 0.05, f"backoff: 3 tries took {elapsed:.2f} s"
        back = Receiver(port, status=503)  # up again, but not taking notices yet
        wait_until(lambda: store.notice(e.job_id).last_error == "HTTP 503", timeout=15, what="a 503")
        assert store.notice(e.job_id).state == NoticeState.PENDING
        back.status = 200
        done = wait_until(lambda: (n := store.notice(e.job_id)).state == NoticeState.DELIVERED and n, timeout=15, what="delivery")
    finally:
        notifier.stop()
        if back is not None:
            back.stop()
    headers, body, _ = back.requests[-1]
    statuses = [status for _, _, status in back.requests]
    assert statuses[-1] == 200 and set(statuses[:-1]) == {503} and len(statuses) >= 2, statuses
    assert all(b["job_id"] == e.job_id for _, b, _ in back.requests) and done.attempts >= 3 + len(statuses)
    assert set(body) == WEBHOOK_KEYS, body
    assert body["study_instance_uid"] == e.study_instance_uid and body["priority"] == "urgent" and body["job_id"] == e.job_id
    assert body["arrived_at"].endswith("Z") and body["arrived_at"] < body["analysed_at"] <= body["sent_at"]
    assert headers["X-CXR-Webhook-Secret"] == SECRET and headers["Content-Type"] == "application/json"
    assert store.notice_counts() == {"pending": 0, "delivered": 1, "failed": 0}
    assert store.claim_notices(now=time.time() + 3600, lease_s=10, limit=10) == [], "a delivered notice is never sent again"


def test_a_notice_is_given_up_after_its_max_age_and_two_notifiers_never_send_one_twice(triage_store) -> None:
    store = triage_store
    down = Receiver()
    url = down.url
    down.stop()
    old = entry(1, Priority.URGENT)
    store.record(old, notice=Notice.of(old))
    give_up = notifier_for(store, url, retry_s=0.1, max_age_s=0.5)
    give_up.start()
    try:
        failed = wait_until(lambda: (n := store.notice(old.job_id)).state == NoticeState.FAILED and n, timeout=15, what="give-up")
    finally:
        give_up.stop()
    assert failed.attempts >= 2 and failed.last_error == "ConnectError"
    receiver = Receiver()
    batch = [entry(10 + n, Priority.PRIORITY) for n in range(12)]
    for e in batch:
        store.record(e, notice=Notice.of(e))
    notifiers = [notifier_for(store, receiver.url) for _ in range(2)]
    for n in notifiers:
        n.start()
    try:
        wait_until(lambda: store.notice_counts()["delivered"] == len(batch), timeout=30, what="every notice delivered")
    finally:
        for n in notifiers:
            n.stop()
        receiver.stop()
    sent = sorted(body["job_id"] for _, body, _ in receiver.requests)
    assert sent == sorted(e.job_id for e in batch), "each notice sent exactly once, the given-up one never"
    assert store.notice_counts() == {"pending": 0, "delivered": len(batch), "failed": 1}


def test_retry_delays_double_up_to_five_minutes(tmp_path: Path) -> None:
    notifier = WebhookNotifier(SqliteTriageStore(tmp_path / "jobs.sqlite3"), url="http://127.0.0.1:9/x", retry_s=5.0)
    assert [notifier.retry_delay(n) for n in (1, 2, 3, 4, 7, 20)] == [5.0, 10.0, 20.0, 40.0, MAX_RETRY_DELAY_S, MAX_RETRY_DELAY_S]
    e = entry(3, Priority.URGENT, arrived_at=1733100000.0)
    body = notice_body(Notice.of(e), sent_at=1733100001.25)
    assert set(body) == WEBHOOK_KEYS and body["arrived_at"] == "2024-12-02T00:40:00.000Z" and body["sent_at"] == "2024-12-02T00:40:01.250Z"


# --- a job through the worker, with the demo models ----------------------------------------------


class MemoryPacs:
    """A DICOMweb PACS in memory, with the slice of DicomWebPacs the worker uses."""

    url = "http://pacs.test/dicom-web"

    def __init__(self, datasets: list[pydicom.Dataset]) -> None:
        from cxr_service.dicomweb import InstanceRef

        self._ref = InstanceRef
        self.instances = {str(ds.SOPInstanceUID): ds for ds in datasets}
        self.stored: list[pydicom.Dataset] = []

    def find_instances(self, study_instance_uid: str, patient_id: str | None = None):
        return [
            self._ref(study_instance_uid, str(ds.SeriesInstanceUID), uid)
            for uid, ds in sorted(self.instances.items())
            if str(ds.StudyInstanceUID) == study_instance_uid and patient_id in (None, str(ds.get("PatientID", "")))
        ]

    def retrieve(self, ref) -> pydicom.Dataset:
        return copy.deepcopy(self.instances[ref.sop_instance_uid])

    def store(self, datasets: list[pydicom.Dataset]) -> None:
        self.stored.extend(datasets)


@pytest.fixture(scope="module")
def engine() -> AnalysisEngine:
    return AnalysisEngine.create(weights_dir=None, device="cpu", min_score=None, max_pixels=64_000_000)


def test_a_job_records_its_triage_everywhere_and_the_worker_never_waits_for_the_webhook(phantom_studies, engine, tmp_path: Path) -> None:
    """An analysed study (thresholds low enough to make it urgent) and a study whose only image
    has no pixel data (unassessed): result.json, SR, worklist, counters and the webhook."""
    uid, paths = min(phantom_studies.items(), key=lambda item: len(item[1]))
    datasets = [pydicom.dcmread(p) for p in paths]
    empty = copy.deepcopy(datasets[0])
    del empty.PixelData
    empty.StudyInstanceUID = STUDY_UID
    empty.SeriesInstanceUID = pydicom.uid.generate_uid()
    empty.SOPInstanceUID = empty.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    receiver = Receiver()
    settings = Settings(
        environment="development", data_dir=tmp_path / "data", triage_urgent_opacity=0.01, triage_urgent_abnormal=0.01,
        triage_priority_opacity=0.01, triage_priority_abnormal=0.01, triage_webhook_url=receiver.url,
        triage_webhook_secret=SECRET, triage_webhook_retry_s=0.2,
    )  # fmt: skip
    urgent_engine = AnalysisEngine(engine.analyzer, min_score=engine.min_score, limits=engine.limits, triage=TriageThresholds.from_settings(settings))
    pacs = MemoryPacs([*datasets, empty])
    queue = JobQueue.from_settings(settings)
    runner = JobRunner(queue=queue, engine=LazyEngine(settings, engine=urgent_engine), settings=settings, source=pacs, destination=pacs)
    try:
        jobs = {}
        for study in (uid, STUDY_UID):
            job, _ = queue.submit(study_instance_uid=study, kind=JobKind.DICOMWEB)
            runner(job.id)
            jobs[study] = runner.store.get(job.id)
            assert jobs[study].state == JobState.DONE, jobs[study]
        # No notifier runs yet: the jobs are done and the notice waits in the outbox.
        assert runner.triage.notice(jobs[uid].id).state == NoticeState.PENDING and receiver.requests == []
        assert runner.triage.notice(jobs[STUDY_UID].id) is None, "unassessed is below the webhook level"

        analysed = runner.store.get_result(uid).document
        assert analysed["triage"]["priority"] == "urgent" and analysed["triage"]["thresholds"]["urgent_abnormal"] == 0.01
        rejected = runner.store.get_result(STUDY_UID).document
        assert rejected["triage"]["priority"] == "unassessed" and rejected["summary"].startswith("0 of 1 image analysed")
        srs = {str(ds.StudyInstanceUID): ds for ds in pacs.stored if ds.Modality == "SR"}
        assert sr_priorities(srs[uid]) == [Priority.URGENT] and sr_priorities(srs[STUDY_UID]) == [Priority.UNASSESSED]
        worklist = full_pass(runner.triage, limit=1)
        assert [(e.study_instance_uid, e.priority, e.job_id) for e in worklist] == [
            (uid, Priority.URGENT, jobs[uid].id),
            (STUDY_UID, Priority.UNASSESSED, jobs[STUDY_UID].id),
        ]
        assert worklist[0].arrived_at == jobs[uid].created_at and worklist[0].study_label == analysed["study"]["label"]
        from cxr_service.patients import study_key

        assert worklist[0].study_key == study_key(uid, str(datasets[0].PatientID)), "one patient's study"
        assert runner.triage.counts() == {"urgent": 1, "priority": 0, "unassessed": 1, "routine": 0}

        notifier = WebhookNotifier.from_settings(settings, runner.triage)
        notifier.poll_s = 0.05
        notifier.start()
        try:
            wait_until(lambda: receiver.requests, timeout=15, what="the webhook")
        finally:
            notifier.stop()
        headers, body, _ = receiver.requests[0]
        assert body["study_instance_uid"] == uid and body["priority"] == "urgent" and body["job_id"] == jobs[uid].id
        assert set(body) == WEBHOOK_KEYS and headers["X-CXR-Webhook-Secret"] == SECRET
        text = json.dumps(body)
        assert not any(str(ds.get(k, "")) and str(ds.get(k)) in text for ds in datasets for k in ("PatientName", "PatientID", "AccessionNumber"))
    finally:
        receiver.stop()
        queue.close()
        runner.triage.close()


def test_default_thresholds_give_the_priority_the_rule_gives_the_result(phantom_studies, engine, tmp_path: Path) -> None:
    """Whatever the demo models say about a study, its result.json's priority is the rule's on
    the document's own figures (the pipeline wires the rule to the right inputs)."""
    from cxr_service.pipeline import InstanceSource, Nowhere, Requester, StudyRequest, ingest_instance, run_study

    for study_uid, paths in list(phantom_studies.items())[:2]:
        instances = [ingest_instance(InstanceSource(label=p.name, path=p), limits=engine.limits) for p in paths]
        run = run_study(StudyRequest(study_instance_uid=study_uid, requester=Requester.CLI, destination=Nowhere()), instances, engine=engine)
        doc = run.document
        scores = [o["score"] for image in doc["images"] if image["analysed"] for o in image["opacities"]]
        negative = (doc["study"]["probabilities"] or {}).get("negative")
        again = decide(max(scores) if scores else None, None if negative is None else 1 - negative, DEFAULT, analysed=run.analysed > 0)
        assert doc["triage"]["priority"] == str(again.priority), doc["triage"]
        assert doc["triage"]["max_opacity_score"] == (max(scores) if scores else None)


# --- tuning offline --------------------------------------------------------------------------------


def result_doc(n: int, *, score: float | None, negative: float | None, analysed: bool = True) -> dict:
    opacities = [] if score is None else [{"box": [0, 0, 1, 1], "score": score}, {"box": [0, 0, 1, 1], "score": score / 2}]
    return {
        "study_instance_uid": f"1.2.826.0.1.3680043.8.498.9{n}",
        "images": [{"analysed": analysed, "opacities": opacities if analysed else []}],
        "study": {"probabilities": None if negative is None else {"negative": negative}},
    }


def test_the_report_tries_thresholds_on_stored_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = [
        result_doc(1, score=0.9, negative=0.5),  # urgent by its opacity
        result_doc(2, score=0.6, negative=0.4),  # priority (both figures)
        result_doc(3, score=None, negative=0.02),  # urgent by 1 - P(negative) = 0.98
        result_doc(4, score=0.2, negative=0.9),  # routine
        result_doc(5, score=None, negative=None, analysed=False),  # unassessed
    ]
    for n, doc in enumerate(docs):
        (tmp_path / f"s{n}").mkdir()
        (tmp_path / f"s{n}" / "result.json").write_text(json.dumps(doc))
    labels = tmp_path / "labels.csv"
    labels.write_text("study_instance_uid,urgent\n" + "".join(f"{d['study_instance_uid']},{int(n in (0, 1))}\n" for n, d in enumerate(docs[:4])))
    from cxr_service.triage_report import main

    assert main([str(tmp_path), "--labels", str(labels), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["counts"] == {"urgent": 2, "priority": 1, "unassessed": 1, "routine": 1}
    assert out["labelled"] == {
        "wanted": 2, "wanted_urgent": 1, "wanted_at_least_priority": 2, "wanted_unassessed": 0,
        "others": 2, "others_urgent": 1, "unlabelled": 1,
    }  # fmt: skip
    # Stricter urgent thresholds: the wanted priority study stays, the false alarm goes.
    assert main([str(tmp_path), "--labels", str(labels), "--urgent-abnormal", "0.99", "--json"]) == 0
    stricter = json.loads(capsys.readouterr().out)
    assert stricter["counts"]["urgent"] == 1 and stricter["labelled"]["others_urgent"] == 0
    assert main([str(tmp_path), "--priority-opacity", "0.9", "--urgent-opacity", "0.8"]) == 2
    assert "priority_opacity (0.9) must not exceed urgent_opacity (0.8)" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 0 and "5 studies" in capsys.readouterr().out
