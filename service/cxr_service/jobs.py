"""Job records, results and latency counters, shared by the API and every worker.

The queue engine (Huey, :mod:`cxr_service.jobqueue`) moves job ids; this store holds what a job
*is*: its state, attempts, lease, error and timings, plus each study's latest ``result.json``.
Results are kept per origin (:class:`ResultOrigin`): a job's result (its outputs are in a PACS)
and an upload's (its outputs were stored nowhere) never replace each other.

Two implementations with the same semantics:

- :class:`SqliteJobStore` for the embedded mode (one machine; WAL, safe across processes);
- :class:`RedisJobStore` for the distributed mode (workers on other machines).

A study is one patient's (:mod:`cxr_service.patients`): jobs name the patient when the submitter
does, and both the one-active-job rule and the results are kept per (StudyInstanceUID, Patient
ID), under :func:`~cxr_service.patients.study_key`.

Every state change is a compare-and-set (:meth:`JobStore.claim` and friends), so two workers
that receive the same job id (a duplicate notification, a requeue after a lease expired) never
both run it: at most one claims it, and a finished job is never claimed again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cxr_service.patients import study_key

logger = logging.getLogger(__name__)

# Upper bounds (ms) of the per-stage latency histogram buckets; +Inf is implicit.
LATENCY_BUCKETS_MS: tuple[float, ...] = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    DONE = "done"
    FAILED = "failed"


ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING, JobState.RETRYING})
CLAIMABLE_STATES = frozenset({JobState.QUEUED, JobState.RETRYING})


class JobKind(StrEnum):
    DICOMWEB = "dicomweb"  # fetch from the DICOMweb source, store outputs by STOW-RS
    SPOOL = "spool"  # instances received by `cxr scp`, outputs C-STOREd to the destination AE


class AmbiguousStudy(LookupError):
    """Results of several patients are kept under the StudyInstanceUID asked for, and no Patient
    ID says which one is meant."""

    def __init__(self, study_instance_uid: str, patients: int) -> None:
        super().__init__(f"study {study_instance_uid} has results for {patients} patients; give patient_id")
        self.study_instance_uid = study_instance_uid
        self.patients = patients


class ResultOrigin(StrEnum):
    """Who produced a stored result; each origin has its own slot per study."""

    JOB = "job"  # a queued job (DICOMweb or `cxr scp`): its outputs were delivered to a PACS
    UPLOAD = "upload"  # POST /v1/analyze: its outputs were stored nowhere


# The table (SQLite) or key prefix (Redis) of each origin's results.
_RESULT_SLOTS: Mapping[ResultOrigin, str] = {ResultOrigin.JOB: "results", ResultOrigin.UPLOAD: "upload_results"}


@dataclass(frozen=True)
class Job:
    """One analysis request for one study: one patient's when ``patient_id`` is given (None:
    the study's instances must all be one patient's)."""

    id: str
    study_instance_uid: str
    kind: JobKind
    priority: int
    force: bool
    state: JobState
    created_at: float
    updated_at: float
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    lease_until: float | None = None
    worker: str | None = None
    error: str | None = None
    note: str | None = None
    model_version: str | None = None
    spool: str | None = None
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    patient_id: str | None = None

    @classmethod
    def new(
        cls,
        *,
        study_instance_uid: str,
        kind: JobKind,
        priority: int = 0,
        force: bool = False,
        spool: str | None = None,
        patient_id: str | None = None,
    ) -> Job:
        if not study_instance_uid:
            raise ValueError(f"study_instance_uid must not be empty, got {study_instance_uid!r}")
        now = time.time()
        return cls(
            id=uuid.uuid4().hex,
            study_instance_uid=study_instance_uid,
            kind=JobKind(kind),
            priority=int(priority),
            force=bool(force),
            state=JobState.QUEUED,
            created_at=now,
            updated_at=now,
            spool=spool,
            patient_id=patient_id,
        )

    @property
    def key(self) -> str:
        """What the one-active-job rule compares: the study and its patient."""
        return study_key(self.study_instance_uid, self.patient_id)

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["kind"] = str(self.kind)
        doc["state"] = str(self.state)
        doc["timings_ms"] = dict(self.timings_ms)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Job:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in doc.items() if k in known}
        values["kind"] = JobKind(values["kind"])
        values["state"] = JobState(values["state"])
        return cls(**values)

    def replace(self, **changes: Any) -> Job:
        return dataclasses.replace(self, updated_at=time.time(), **changes)


@dataclass(frozen=True)
class StoredResult:
    """The latest result.json of a study from one origin, the model version and job that made it
    (None for an upload), and how many analyses of that origin completed in total (the
    exactly-once checks read a job result's count)."""

    study_instance_uid: str
    model_version: str
    job_id: str | None
    analyses: int
    document: Mapping[str, Any]
    updated_at: float
    origin: ResultOrigin = ResultOrigin.JOB


@dataclass(frozen=True)
class LatencyHistogram:
    """Cumulative bucket counts (upper bound ms → count), total count and sum in ms."""

    buckets: Mapping[float, int]
    count: int
    sum_ms: float


Transition = Callable[[Job], Job | None]


class JobStore(ABC):
    """What the API and the workers share; see the module docstring."""

    # --- primitives each backend provides -------------------------------------------------
    @abstractmethod
    def insert_unless_active(self, job: Job) -> tuple[Job, bool]:
        """Atomically: the study's active job if it has one, else ``job`` inserted.
        Returns ``(job, created)``; simultaneous notifications of a study make one job."""

    @abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abstractmethod
    def transition(self, job_id: str, change: Transition) -> Job | None:
        """Atomically apply ``change`` to the job; ``change`` returns the new job or None to
        leave it as is. Returns the new job, or None when nothing changed."""

    @abstractmethod
    def jobs_in_states(self, states: Iterable[JobState]) -> list[Job]: ...

    @abstractmethod
    def counts_by_state(self) -> dict[str, int]: ...

    @abstractmethod
    def put_result(
        self, *, document: Mapping[str, Any], job_id: str | None, origin: ResultOrigin = ResultOrigin.JOB
    ) -> StoredResult:
        """Keep ``document`` as the study's latest result of ``origin`` (a job's needs its id)."""

    @abstractmethod
    def _result_keys(self, study_instance_uid: str, origin: ResultOrigin) -> list[str]:
        """The keys of every patient's result of ``origin`` under the UID (:func:`study_key`
        with a patient; the bare UID of a result of an earlier version is not among them)."""

    @abstractmethod
    def _result_at(self, key: str, study_instance_uid: str, origin: ResultOrigin) -> StoredResult | None: ...

    def get_stored_result(
        self, study_instance_uid: str, origin: ResultOrigin, *, patient_id: str | None = None
    ) -> StoredResult | None:
        """The result of ``origin`` of the study of ``patient_id``. Without a patient: the one
        patient's that has one (:class:`AmbiguousStudy` when several have), else a result kept
        by an earlier version under the bare UID."""
        origin = ResultOrigin(origin)
        if patient_id is not None:
            return self._result_at(study_key(study_instance_uid, patient_id), study_instance_uid, origin)
        keys = self._result_keys(study_instance_uid, origin)
        if len(keys) > 1:
            raise AmbiguousStudy(study_instance_uid, len(keys))
        return self._result_at(keys[0] if keys else study_instance_uid, study_instance_uid, origin)

    def get_result(
        self, study_instance_uid: str, *, origin: ResultOrigin | None = None, patient_id: str | None = None
    ) -> StoredResult | None:
        """The study's result of ``origin``; without one, the job's result, else the upload's.
        ``patient_id`` as in :meth:`get_stored_result`."""
        if origin is not None:
            return self.get_stored_result(study_instance_uid, ResultOrigin(origin), patient_id=patient_id)
        return self.get_stored_result(study_instance_uid, ResultOrigin.JOB, patient_id=patient_id) or self.get_stored_result(
            study_instance_uid, ResultOrigin.UPLOAD, patient_id=patient_id
        )

    @abstractmethod
    def observe(self, timings_ms: Mapping[str, float]) -> None:
        """Add one finished job's stage latencies (stage → ms) to the histograms, in one write."""

    @abstractmethod
    def histograms(self) -> dict[str, LatencyHistogram]: ...

    @abstractmethod
    def ping(self) -> None:
        """Raise when the store cannot be reached."""

    def close(self) -> None:  # noqa: B027 - optional for backends without connections
        """Release connections."""

    # --- semantics shared by both backends ------------------------------------------------
    def claim(self, job_id: str, *, worker: str, lease_s: float) -> Job | None:
        """Mark the job running for ``worker``; None when it is finished or another worker holds
        an unexpired lease on it."""

        def change(job: Job) -> Job | None:
            now = time.time()
            expired = job.state == JobState.RUNNING and (job.lease_until or 0.0) < now
            if job.state not in CLAIMABLE_STATES and not expired:
                return None
            return job.replace(
                state=JobState.RUNNING,
                started_at=now,
                lease_until=now + lease_s,
                worker=worker,
                attempts=job.attempts + 1,
            )

        return self.transition(job_id, change)

    def heartbeat(self, job_id: str, *, worker: str, lease_s: float) -> bool:
        def change(job: Job) -> Job | None:
            if job.state != JobState.RUNNING or job.worker != worker:
                return None
            return job.replace(lease_until=time.time() + lease_s)

        return self.transition(job_id, change) is not None

    def finish(
        self,
        job_id: str,
        *,
        worker: str,
        state: JobState,
        error: str | None = None,
        note: str | None = None,
        model_version: str | None = None,
        timings_ms: Mapping[str, float] | None = None,
    ) -> Job | None:
        """Move a job this worker runs to ``state`` (done, failed or retrying)."""
        if state not in (JobState.DONE, JobState.FAILED, JobState.RETRYING):
            raise ValueError(f"state must be done, failed or retrying, got {state!r}")

        def change(job: Job) -> Job | None:
            if job.state != JobState.RUNNING or job.worker != worker:
                return None
            terminal = state != JobState.RETRYING
            return job.replace(
                state=state,
                error=error,
                note=note,
                model_version=model_version or job.model_version,
                timings_ms=dict(timings_ms or job.timings_ms),
                finished_at=time.time() if terminal else None,
                lease_until=None,
                worker=job.worker if terminal else None,
            )

        return self.transition(job_id, change)

    def requeue_expired(self, *, accept: Callable[[Job], bool] = lambda job: True) -> list[Job]:
        """Running jobs whose lease expired (their worker died) go back to queued; ``accept``
        limits this to the jobs the caller's queue runs."""
        requeued = []
        for job in self.jobs_in_states([JobState.RUNNING]):
            if not accept(job):
                continue

            def change(current: Job) -> Job | None:
                if current.state != JobState.RUNNING or (current.lease_until or 0.0) >= time.time():
                    return None
                return current.replace(state=JobState.QUEUED, lease_until=None, worker=None)

            changed = self.transition(job.id, change)
            if changed is not None:
                logger.warning("job %s (worker %s) lost its lease: requeued", job.id, job.worker)
                requeued.append(changed)
        return requeued


def _histogram_from_rows(rows: Iterable[tuple[str, float]], values: Mapping[str, float]) -> LatencyHistogram:
    counts = {b: 0 for b in LATENCY_BUCKETS_MS}
    for bound, count in rows:
        counts[float(bound)] = int(count)
    return LatencyHistogram(buckets=counts, count=int(values.get("count", 0)), sum_ms=float(values.get("sum", 0.0)))


class SqliteJobStore(JobStore):
    """Embedded store: one SQLite file (WAL), usable from several processes on one machine."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as db:
            db.executescript(
                """
                PRAGMA journal_mode=WAL;
                CREATE TABLE IF NOT EXISTS jobs (
                    id TEXT PRIMARY KEY, study_uid TEXT NOT NULL, state TEXT NOT NULL, doc TEXT NOT NULL);
                CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
                CREATE INDEX IF NOT EXISTS jobs_study ON jobs(study_uid, state);
                CREATE TABLE IF NOT EXISTS results (
                    study_uid TEXT PRIMARY KEY, model_version TEXT NOT NULL, job_id TEXT NOT NULL,
                    analyses INTEGER NOT NULL, document TEXT NOT NULL, updated_at REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS upload_results (
                    study_uid TEXT PRIMARY KEY, model_version TEXT NOT NULL, job_id TEXT,
                    analyses INTEGER NOT NULL, document TEXT NOT NULL, updated_at REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS latency (
                    stage TEXT NOT NULL, bound TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (stage, bound));
                """
            )

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    def _tx(self) -> SqliteTransaction:
        return SqliteTransaction(self._connect())

    def insert_unless_active(self, job: Job) -> tuple[Job, bool]:
        names = [str(s) for s in ACTIVE_STATES]
        with self._tx() as db:
            rows = db.execute(
                f"SELECT doc FROM jobs WHERE study_uid = ? AND state IN ({','.join('?' * len(names))})",
                [job.key, *names],
            ).fetchall()
            if rows:
                return min((Job.from_json(json.loads(r[0])) for r in rows), key=lambda j: j.created_at), False
            # The study_uid column holds the job's key (the study and its patient).
            db.execute(
                "INSERT INTO jobs (id, study_uid, state, doc) VALUES (?, ?, ?, ?)",
                (job.id, job.key, str(job.state), json.dumps(job.to_json())),
            )
        return job, True

    def get(self, job_id: str) -> Job | None:
        row = self._connect().execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_json(json.loads(row[0])) if row else None

    def transition(self, job_id: str, change: Transition) -> Job | None:
        with self._tx() as db:
            row = db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            new = change(Job.from_json(json.loads(row[0])))
            if new is None:
                return None
            db.execute(
                "UPDATE jobs SET state = ?, doc = ? WHERE id = ?", (str(new.state), json.dumps(new.to_json()), job_id)
            )
            return new

    def jobs_in_states(self, states: Iterable[JobState]) -> list[Job]:
        names = [str(s) for s in states]
        marks = ",".join("?" * len(names))
        rows = self._connect().execute(f"SELECT doc FROM jobs WHERE state IN ({marks})", names).fetchall()
        return [Job.from_json(json.loads(r[0])) for r in rows]

    def counts_by_state(self) -> dict[str, int]:
        rows = self._connect().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        counts = {str(s): 0 for s in JobState}
        counts.update({state: int(n) for state, n in rows})
        return counts

    def put_result(
        self, *, document: Mapping[str, Any], job_id: str | None, origin: ResultOrigin = ResultOrigin.JOB
    ) -> StoredResult:
        origin = ResultOrigin(origin)
        if origin == ResultOrigin.JOB and not job_id:
            raise ValueError(f"job_id is required for a job's result, got {job_id!r}")
        table = _RESULT_SLOTS[origin]
        uid = str(document["study_instance_uid"])
        # The study_uid column holds the key: the study and its patient.
        key = study_key(uid, document.get("patient_id"))
        with self._tx() as db:
            row = db.execute(f"SELECT analyses FROM {table} WHERE study_uid = ?", (key,)).fetchone()
            analyses = (row[0] if row else 0) + 1
            now = time.time()
            db.execute(
                f"INSERT OR REPLACE INTO {table} VALUES (?, ?, ?, ?, ?, ?)",
                (key, str(document["model_version"]), job_id, analyses, json.dumps(document), now),
            )
        return StoredResult(uid, str(document["model_version"]), job_id, analyses, document, now, origin)

    def _result_keys(self, study_instance_uid: str, origin: ResultOrigin) -> list[str]:
        table = _RESULT_SLOTS[ResultOrigin(origin)]
        # A UID is digits and dots: nothing in it is a LIKE wildcard.
        rows = self._connect().execute(f"SELECT study_uid FROM {table} WHERE study_uid LIKE ?", (f"{study_instance_uid}/%",))
        return sorted(r[0] for r in rows.fetchall())

    def _result_at(self, key: str, study_instance_uid: str, origin: ResultOrigin) -> StoredResult | None:
        table = _RESULT_SLOTS[ResultOrigin(origin)]
        row = (
            self._connect()
            .execute(f"SELECT model_version, job_id, analyses, document, updated_at FROM {table} WHERE study_uid = ?", (key,))
            .fetchone()
        )
        if row is None:
            return None
        return StoredResult(study_instance_uid, row[0], row[1], int(row[2]), json.loads(row[3]), float(row[4]), ResultOrigin(origin))

    def observe(self, timings_ms: Mapping[str, float]) -> None:
        rows = [
            (stage, bound, inc, inc)
            for stage, ms in timings_ms.items()
            for bound, inc in [*((str(b), 1.0) for b in LATENCY_BUCKETS_MS if ms <= b), ("count", 1.0), ("sum", float(ms))]
        ]
        with self._tx() as db:
            db.executemany(
                "INSERT INTO latency VALUES (?, ?, ?) ON CONFLICT(stage, bound) DO UPDATE SET value = value + ?", rows
            )

    def histograms(self) -> dict[str, LatencyHistogram]:
        rows = self._connect().execute("SELECT stage, bound, value FROM latency").fetchall()
        by_stage: dict[str, dict[str, float]] = {}
        for stage, bound, value in rows:
            by_stage.setdefault(stage, {})[bound] = value
        return {
            stage: _histogram_from_rows(
                [(b, v) for b, v in values.items() if b not in ("count", "sum")],
                {"count": values.get("count", 0), "sum": values.get("sum", 0.0)},
            )
            for stage, values in sorted(by_stage.items())
        }

    def ping(self) -> None:
        self._connect().execute("SELECT 1").fetchone()

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class SqliteTransaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on error): serialises writers across processes."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


class RedisJobStore(JobStore):
    """Distributed store in Redis; compare-and-set through WATCH/MULTI."""

    def __init__(self, url: str, *, prefix: str = "cxr") -> None:
        import redis

        self._redis_module = redis
        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=30, health_check_interval=30)
        self.prefix = prefix

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def insert_unless_active(self, job: Job) -> tuple[Job, bool]:
        pointer = self._k("active", job.key)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(pointer)
                    current_id = pipe.get(pointer)
                    if current_id:
                        raw = pipe.get(self._k("job", current_id))
                        current = Job.from_json(json.loads(raw)) if raw else None
                        if current is not None and current.state in ACTIVE_STATES:
                            pipe.unwatch()
                            return current, False
                    pipe.multi()
                    pipe.set(pointer, job.id)
                    pipe.set(self._k("job", job.id), json.dumps(job.to_json()))
                    pipe.sadd(self._k("state", str(job.state)), job.id)
                    pipe.sadd(self._k("study", job.key), job.id)
                    pipe.execute()
                    return job, True
                except self._redis_module.WatchError:
                    continue

    def get(self, job_id: str) -> Job | None:
        raw = self.client.get(self._k("job", job_id))
        return Job.from_json(json.loads(raw)) if raw else None

    def transition(self, job_id: str, change: Transition) -> Job | None:
        key = self._k("job", job_id)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        pipe.unwatch()
                        return None
                    old = Job.from_json(json.loads(raw))
                    new = change(old)
                    if new is None:
                        pipe.unwatch()
                        return None
                    pipe.multi()
                    pipe.set(key, json.dumps(new.to_json()))
                    pipe.srem(self._k("state", str(old.state)), job_id)
                    pipe.sadd(self._k("state", str(new.state)), job_id)
                    pipe.execute()
                    return new
                except self._redis_module.WatchError:
                    continue

    def _jobs(self, ids: Iterable[str]) -> list[Job]:
        ids = list(ids)
        if not ids:
            return []
        raws = self.client.mget([self._k("job", i) for i in ids])
        return [Job.from_json(json.loads(r)) for r in raws if r]

    def jobs_in_states(self, states: Iterable[JobState]) -> list[Job]:
        ids: set[str] = set()
        for state in states:
            ids |= self.client.smembers(self._k("state", str(state)))
        wanted = {str(s) for s in states}
        return [j for j in self._jobs(sorted(ids)) if str(j.state) in wanted]

    def counts_by_state(self) -> dict[str, int]:
        return {str(s): int(self.client.scard(self._k("state", str(s)))) for s in JobState}

    def _result_key(self, key: str, origin: ResultOrigin) -> str:
        """``key``: :func:`study_key`. Job results keep their historical prefix ("result");
        uploads have their own."""
        slot = "result" if origin == ResultOrigin.JOB else _RESULT_SLOTS[origin]
        return self._k(slot, key)

    def _patients_key(self, study_instance_uid: str, origin: ResultOrigin) -> str:
        """The set of the result keys of every patient under a UID."""
        return self._k("result-patients", str(origin), study_instance_uid)

    def put_result(
        self, *, document: Mapping[str, Any], job_id: str | None, origin: ResultOrigin = ResultOrigin.JOB
    ) -> StoredResult:
        origin = ResultOrigin(origin)
        if origin == ResultOrigin.JOB and not job_id:
            raise ValueError(f"job_id is required for a job's result, got {job_id!r}")
        uid = str(document["study_instance_uid"])
        patient_id = document.get("patient_id")
        key = self._result_key(study_key(uid, patient_id), origin)
        now = time.time()
        pipe = self.client.pipeline()
        if patient_id is not None:
            pipe.sadd(self._patients_key(uid, origin), study_key(uid, patient_id))
        pipe.hincrby(key, "analyses", 1)
        pipe.hset(
            key,
            mapping={
                "model_version": str(document["model_version"]),
                "job_id": job_id or "",
                "document": json.dumps(document),
                "updated_at": repr(now),
            },
        )
        analyses = int(pipe.execute()[1 if patient_id is not None else 0])
        return StoredResult(uid, str(document["model_version"]), job_id, analyses, document, now, origin)

    def _result_keys(self, study_instance_uid: str, origin: ResultOrigin) -> list[str]:
        return sorted(self.client.smembers(self._patients_key(study_instance_uid, ResultOrigin(origin))))

    def _result_at(self, key: str, study_instance_uid: str, origin: ResultOrigin) -> StoredResult | None:
        origin = ResultOrigin(origin)
        row = self.client.hgetall(self._result_key(key, origin))
        if not row or "document" not in row:
            return None
        return StoredResult(
            study_instance_uid,
            row["model_version"],
            row["job_id"] or None,
            int(row["analyses"]),
            json.loads(row["document"]),
            float(row["updated_at"]),
            origin,
        )

    def observe(self, timings_ms: Mapping[str, float]) -> None:
        pipe = self.client.pipeline()
        for stage, ms in timings_ms.items():
            key = self._k("latency", stage)
            for bound in LATENCY_BUCKETS_MS:
                if ms <= bound:
                    pipe.hincrby(key, str(bound), 1)
            pipe.hincrby(key, "count", 1)
            pipe.hincrbyfloat(key, "sum", float(ms))
            pipe.sadd(self._k("latency-stages"), stage)
        pipe.execute()

    def histograms(self) -> dict[str, LatencyHistogram]:
        out = {}
        for stage in sorted(self.client.smembers(self._k("latency-stages"))):
            values = self.client.hgetall(self._k("latency", stage))
            out[stage] = _histogram_from_rows(
                [(b, float(v)) for b, v in values.items() if b not in ("count", "sum")],
                {"count": float(values.get("count", 0)), "sum": float(values.get("sum", 0.0))},
            )
        return out

    def ping(self) -> None:
        self.client.ping()

    def close(self) -> None:
        self.client.close()
