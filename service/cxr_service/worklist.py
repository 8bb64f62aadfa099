"""The triage worklist, the triage counters and the webhook outbox, beside the job store.

Each study a job analysed has one :class:`WorklistEntry`: its triage priority, when its job
arrived (was submitted) and when it was analysed. A study is one patient's
(:func:`cxr_service.patients.study_key`): two patients under one Study Instance UID are two
entries. The worklist is read in priority order, then arrival, then study, through keyset
pagination: an entry's :attr:`sort_key` is ``<rank>|<arrival, fixed width>|<study key>``, whose
string order is the worklist order, and a cursor is the sort key of the last entry of a page.
Studies that arrive while a client pages never make it see an entry twice or skip one that was
there when it started (a study analysed again meanwhile shows at its new place).

Recording is idempotent per job (a job run again after its worker died records nothing more)
and, in the same transaction, counts the analysis under its priority (``cxr_triage_total``) and
queues the webhook notice of a high-priority study (:class:`Notice`, delivered by
:class:`cxr_service.webhook.WebhookNotifier`, so the worker never waits for the receiver).

Two implementations, like :mod:`cxr_service.jobs` and in the same place: SQLite tables in the
job store's file (embedded mode), keys under the job store's Redis prefix (distributed mode).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cxr_service.jobs import Job, SqliteTransaction
from cxr_service.patients import study_key
from cxr_service.settings import Settings
from cxr_service.triage import RANK, Priority, at_least

MAX_PAGE = 500
_SORT_KEY = re.compile(r"^[0-9]\|[0-9]{10}\.[0-9]{6}\|[0-9.]{1,64}(/[0-9a-f]{24})?$")
_HIGH = "~"  # sorts after every sort key (they start with a digit)


@dataclass(frozen=True)
class WorklistEntry:
    """A study in the worklist: no patient data, only its UID and what triage said.
    ``study_key`` tells two patients' studies under one UID apart (a hash, never the Patient ID;
    by default the UID)."""

    study_instance_uid: str
    priority: Priority
    job_id: str
    arrived_at: float
    analysed_at: float
    study_label: str | None = None
    max_opacity_score: float | None = None
    abnormal_probability: float | None = None
    study_key: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "priority", Priority(self.priority))
        object.__setattr__(self, "study_key", self.study_key or self.study_instance_uid)
        if not self.study_key.startswith(self.study_instance_uid):
            raise ValueError(f"study_key must be the study's, got {self.study_key!r} for {self.study_instance_uid!r}")
        if not self.study_instance_uid or not self.job_id:
            raise ValueError(f"study_instance_uid and job_id are required, got {self.study_instance_uid!r}, {self.job_id!r}")
        if not 0 <= self.arrived_at < 1e10:
            raise ValueError(f"arrived_at must be a Unix time, got {self.arrived_at!r}")

    @property
    def sort_key(self) -> str:
        return f"{RANK[self.priority]}|{self.arrived_at:017.6f}|{self.study_key}"

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["priority"] = str(self.priority)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> WorklistEntry:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})


def encode_cursor(sort_key: str) -> str:
    return base64.urlsafe_b64encode(sort_key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The sort key of a cursor; ValueError when it is not one this service gave out."""
    try:
        key = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor of this worklist") from None
    if not _SORT_KEY.match(key):
        raise ValueError("not a cursor of this worklist")
    return key


def _bounds(after: str | None, priority: Priority | None) -> tuple[str, bool, str]:
    """(low, low_inclusive, high_exclusive) of a page in sort-key order."""
    low, inclusive = "", True
    if priority is not None:
        low = f"{RANK[priority]}|"
    if after is not None and after >= low:
        low, inclusive = after, False
    high = _HIGH if priority is None else f"{RANK[priority] + 1}|"
    return low, inclusive, high


class NoticeState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class Notice:
    """A webhook notice of one job's high-priority study; its id is the job id."""

    id: str
    study_instance_uid: str
    priority: Priority
    job_id: str
    arrived_at: float
    analysed_at: float
    created_at: float
    next_at: float
    state: NoticeState = NoticeState.PENDING
    attempts: int = 0
    last_error: str | None = None
    delivered_at: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "priority", Priority(self.priority))
        object.__setattr__(self, "state", NoticeState(self.state))

    @classmethod
    def of(cls, entry: WorklistEntry) -> Notice:
        return cls(
            id=entry.job_id,
            study_instance_uid=entry.study_instance_uid,
            priority=entry.priority,
            job_id=entry.job_id,
            arrived_at=entry.arrived_at,
            analysed_at=entry.analysed_at,
            created_at=entry.analysed_at,
            next_at=entry.analysed_at,
        )

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["priority"] = str(self.priority)
        doc["state"] = str(self.state)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Notice:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})

    def replace(self, **changes: Any) -> Notice:
        return dataclasses.replace(self, **changes)


class TriageStore(ABC):
    """See the module docstring."""

    @abstractmethod
    def record(self, entry: WorklistEntry, *, notice: Notice | None = None) -> bool:
        """Make ``entry`` the study's worklist entry, count it and queue ``notice``, at once;
        False (nothing changed) when the entry's job was already recorded."""

    @abstractmethod
    def entry(self, key: str) -> WorklistEntry | None:
        """The entry of a study key (:func:`cxr_service.patients.study_key`)."""

    @abstractmethod
    def entries(self, study_instance_uid: str) -> list[WorklistEntry]:
        """Every patient's entry under the UID."""

    @abstractmethod
    def page(self, *, limit: int, after: str | None = None, priority: Priority | None = None) -> list[WorklistEntry]:
        """Up to ``limit`` entries in worklist order after the sort key ``after`` (exclusive),
        of one ``priority`` or all."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Analyses recorded per priority since the store was created (every priority listed)."""

    @abstractmethod
    def claim_notices(self, *, now: float, lease_s: float, limit: int) -> list[Notice]:
        """Pending notices due by ``now``, each hidden from other claimants for ``lease_s``
        (a notifier that dies while sending leaves it to another after the lease)."""

    @abstractmethod
    def settle_notice(self, notice: Notice) -> None:
        """Store a claimed notice's new state (delivered, failed, or pending with its next try)."""

    @abstractmethod
    def notice(self, notice_id: str) -> Notice | None: ...

    @abstractmethod
    def notice_counts(self) -> dict[str, int]:
        """Notices per state (every state listed)."""

    @abstractmethod
    def ping(self) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional for backends without connections
        """Release connections."""


def _zero_counts() -> dict[str, int]:
    return {str(p): 0 for p in Priority}


class SqliteTriageStore(TriageStore):
    """Tables in the job store's SQLite file (WAL), usable from several processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connect().executescript(
            """
            PRAGMA journal_mode=WAL;
            CREATE TABLE IF NOT EXISTS triage_worklist (
                key TEXT PRIMARY KEY, study_uid TEXT NOT NULL, sort_key TEXT NOT NULL UNIQUE, job_id TEXT NOT NULL,
                doc TEXT NOT NULL);
            CREATE INDEX IF NOT EXISTS triage_worklist_study ON triage_worklist(study_uid);
            CREATE TABLE IF NOT EXISTS triage_counts (priority TEXT PRIMARY KEY, n INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS triage_notices (
                id TEXT PRIMARY KEY, state TEXT NOT NULL, next_at REAL NOT NULL, doc TEXT NOT NULL);
            CREATE INDEX IF NOT EXISTS triage_notices_due ON triage_notices(state, next_at);
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

    def record(self, entry: WorklistEntry, *, notice: Notice | None = None) -> bool:
        with self._tx() as db:
            row = db.execute("SELECT job_id FROM triage_worklist WHERE key = ?", (entry.study_key,)).fetchone()
            if row is not None and row[0] == entry.job_id:
                return False
            db.execute(
                "INSERT OR REPLACE INTO triage_worklist VALUES (?, ?, ?, ?, ?)",
                (entry.study_key, entry.study_instance_uid, entry.sort_key, entry.job_id, json.dumps(entry.to_json())),
            )
            db.execute(
                "INSERT INTO triage_counts VALUES (?, 1) ON CONFLICT(priority) DO UPDATE SET n = n + 1", (str(entry.priority),)
            )
            if notice is not None:
                db.execute(
                    "INSERT OR IGNORE INTO triage_notices VALUES (?, ?, ?, ?)",
                    (notice.id, str(notice.state), notice.next_at, json.dumps(notice.to_json())),
                )
        return True

    def entry(self, key: str) -> WorklistEntry | None:
        row = self._connect().execute("SELECT doc FROM triage_worklist WHERE key = ?", (key,)).fetchone()
        return WorklistEntry.from_json(json.loads(row[0])) if row else None

    def entries(self, study_instance_uid: str) -> list[WorklistEntry]:
        rows = self._connect().execute(
            "SELECT doc FROM triage_worklist WHERE study_uid = ? ORDER BY key", (study_instance_uid,)
        ).fetchall()
        return [WorklistEntry.from_json(json.loads(r[0])) for r in rows]

    def page(self, *, limit: int, after: str | None = None, priority: Priority | None = None) -> list[WorklistEntry]:
        low, inclusive, high = _bounds(after, priority)
        rows = (
            self._connect()
            .execute(
                f"SELECT doc FROM triage_worklist WHERE sort_key {'>=' if inclusive else '>'} ? AND sort_key < ? ORDER BY sort_key LIMIT ?",
                (low, high, int(limit)),
            )
            .fetchall()
        )
        return [WorklistEntry.from_json(json.loads(r[0])) for r in rows]

    def counts(self) -> dict[str, int]:
        counts = _zero_counts()
        counts.update({p: int(n) for p, n in self._connect().execute("SELECT priority, n FROM triage_counts").fetchall()})
        return counts

    def claim_notices(self, *, now: float, lease_s: float, limit: int) -> list[Notice]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT doc FROM triage_notices WHERE state = ? AND next_at <= ? ORDER BY next_at LIMIT ?",
                (str(NoticeState.PENDING), now, int(limit)),
            ).fetchall()
            notices = [Notice.from_json(json.loads(r[0])) for r in rows]
            db.executemany("UPDATE triage_notices SET next_at = ? WHERE id = ?", [(now + lease_s, n.id) for n in notices])
        return notices

    def settle_notice(self, notice: Notice) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE triage_notices SET state = ?, next_at = ?, doc = ? WHERE id = ?",
                (str(notice.state), notice.next_at, json.dumps(notice.to_json()), notice.id),
            )

    def notice(self, notice_id: str) -> Notice | None:
        row = self._connect().execute("SELECT doc FROM triage_notices WHERE id = ?", (notice_id,)).fetchone()
        return Notice.from_json(json.loads(row[0])) if row else None

    def notice_counts(self) -> dict[str, int]:
        counts = {str(s): 0 for s in NoticeState}
        rows = self._connect().execute("SELECT state, COUNT(*) FROM triage_notices GROUP BY state").fetchall()
        counts.update({s: int(n) for s, n in rows})
        return counts

    def ping(self) -> None:
        self._connect().execute("SELECT 1").fetchone()

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


# Claims the due notices atomically: each gets a score (next try) of now + lease.
_CLAIM_LUA = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""


class RedisTriageStore(TriageStore):
    """Keys under the job store's prefix: a sorted set of sort keys (all scores 0, read in
    lexicographic order), an entry per study, counters, and the notices with a sorted set of
    their next tries."""

    def __init__(self, url: str, *, prefix: str = "cxr") -> None:
        import redis

        self._redis_module = redis
        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=30, health_check_interval=30)
        self.prefix = prefix
        self._claim = self.client.register_script(_CLAIM_LUA)

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def record(self, entry: WorklistEntry, *, notice: Notice | None = None) -> bool:
        key = self._k("worklist-entry", entry.study_key)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    old = WorklistEntry.from_json(json.loads(raw)) if raw else None
                    if old is not None and old.job_id == entry.job_id:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    if old is not None:
                        pipe.zrem(self._k("worklist"), old.sort_key)
                    pipe.zadd(self._k("worklist"), {entry.sort_key: 0})
                    pipe.set(key, json.dumps(entry.to_json()))
                    pipe.sadd(self._k("worklist-study", entry.study_instance_uid), entry.study_key)
                    pipe.hincrby(self._k("triage-counts"), str(entry.priority), 1)
                    if notice is not None:
                        pipe.set(self._k("notice", notice.id), json.dumps(notice.to_json()))
                        pipe.zadd(self._k("notices-due"), {notice.id: notice.next_at})
                        pipe.hincrby(self._k("notice-states"), str(notice.state), 1)
                    pipe.execute()
                    return True
                except self._redis_module.WatchError:
                    continue

    def entry(self, key: str) -> WorklistEntry | None:
        raw = self.client.get(self._k("worklist-entry", key))
        return WorklistEntry.from_json(json.loads(raw)) if raw else None

    def entries(self, study_instance_uid: str) -> list[WorklistEntry]:
        keys = sorted(self.client.smembers(self._k("worklist-study", study_instance_uid)))
        raws = self.client.mget([self._k("worklist-entry", k) for k in keys]) if keys else []
        return [WorklistEntry.from_json(json.loads(r)) for r in raws if r]

    def page(self, *, limit: int, after: str | None = None, priority: Priority | None = None) -> list[WorklistEntry]:
        low, inclusive, high = _bounds(after, priority)
        entries: list[WorklistEntry] = []
        start = ("[" if inclusive else "(") + low if low else "-"
        while len(entries) < limit:
            members = self.client.zrangebylex(self._k("worklist"), start, "(" + high, start=0, num=limit - len(entries))
            if not members:
                break
            raws = self.client.mget([self._k("worklist-entry", m.split("|", 2)[2]) for m in members])
            for member, raw in zip(members, raws, strict=True):
                found = WorklistEntry.from_json(json.loads(raw)) if raw else None
                # An entry re-recorded between the two reads moved: it is met again at its new place.
                if found is not None and found.sort_key == member:
                    entries.append(found)
            start = "(" + members[-1]
        return entries

    def counts(self) -> dict[str, int]:
        counts = _zero_counts()
        counts.update({p: int(n) for p, n in self.client.hgetall(self._k("triage-counts")).items()})
        return counts

    def claim_notices(self, *, now: float, lease_s: float, limit: int) -> list[Notice]:
        ids = self._claim(keys=[self._k("notices-due")], args=[repr(now), repr(now + lease_s), int(limit)])
        if not ids:
            return []
        raws = self.client.mget([self._k("notice", i) for i in ids])
        notices = [Notice.from_json(json.loads(r)) for r in raws if r]
        return [n for n in notices if n.state == NoticeState.PENDING]

    def settle_notice(self, notice: Notice) -> None:
        key = self._k("notice", notice.id)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    old_state = Notice.from_json(json.loads(raw)).state if raw else None
                    pipe.multi()
                    pipe.set(key, json.dumps(notice.to_json()))
                    if notice.state == NoticeState.PENDING:
                        pipe.zadd(self._k("notices-due"), {notice.id: notice.next_at})
                    else:
                        pipe.zrem(self._k("notices-due"), notice.id)
                    if old_state != notice.state:
                        if old_state is not None:
                            pipe.hincrby(self._k("notice-states"), str(old_state), -1)
                        pipe.hincrby(self._k("notice-states"), str(notice.state), 1)
                    pipe.execute()
                    return
                except self._redis_module.WatchError:
                    continue

    def notice(self, notice_id: str) -> Notice | None:
        raw = self.client.get(self._k("notice", notice_id))
        return Notice.from_json(json.loads(raw)) if raw else None

    def notice_counts(self) -> dict[str, int]:
        counts = {str(s): 0 for s in NoticeState}
        counts.update({s: int(n) for s, n in self.client.hgetall(self._k("notice-states")).items()})
        return counts

    def ping(self) -> None:
        self.client.ping()

    def close(self) -> None:
        self.client.close()


def make_triage_store(settings: Settings) -> TriageStore:
    """The triage store beside the settings' job store (same SQLite file, same Redis prefix)."""
    if settings.queue_backend == "redis":
        return RedisTriageStore(settings.redis_url, prefix=f"cxr:{settings.queue_name}")
    return SqliteTriageStore(settings.data_dir / "jobs.sqlite3")


def record_job_triage(store: TriageStore, settings: Settings, job: Job, document: Mapping[str, Any]) -> WorklistEntry | None:
    """Put the study a job analysed into the worklist, with a webhook notice when its priority
    is at or above ``CXR_TRIAGE_WEBHOOK_LEVEL`` and a webhook is configured. None when the
    document has no triage."""
    triage = document.get("triage")
    if not triage:
        return None
    entry = WorklistEntry(
        study_instance_uid=job.study_instance_uid,
        study_key=study_key(job.study_instance_uid, document.get("patient_id", job.patient_id)),
        priority=Priority(triage["priority"]),
        job_id=job.id,
        arrived_at=job.created_at,
        analysed_at=time.time(),
        study_label=(document.get("study") or {}).get("label"),
        max_opacity_score=triage.get("max_opacity_score"),
        abnormal_probability=triage.get("abnormal_probability"),
    )
    notify = settings.triage_webhook_url is not None and at_least(entry.priority, settings.triage_webhook_level)
    store.record(entry, notice=Notice.of(entry) if notify else None)
    return entry
