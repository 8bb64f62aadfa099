"""The durable job queue on Huey: SQLite (embedded) or Redis (distributed), same task code.

Huey carries job ids with a priority (STAT first) and a time to run (retries with exponential
backoff are scheduled tasks); the :class:`~cxr_service.jobs.JobStore` holds the jobs themselves.
A Huey consumer removes a message when it starts the task, so a worker killed mid-job would
lose it: every job therefore holds a lease that its worker renews, and :meth:`JobQueue.reap`
(run by every worker) requeues jobs whose lease expired and queued jobs whose message is gone.
Duplicates are harmless because a job can be claimed by one worker only.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from huey import PriorityRedisHuey, SqliteHuey
from huey.api import Huey
from huey.consumer import Consumer

from cxr_service.jobs import Job, JobKind, JobState, JobStore, RedisJobStore, SqliteJobStore
from cxr_service.settings import Settings

logger = logging.getLogger(__name__)

Priority = Literal["low", "routine", "stat"]
PRIORITIES: dict[str, int] = {"low": 0, "routine": 10, "stat": 100}
TASK_NAME = "cxr.run_job"

JobRunnerFn = Callable[[str], None]


def make_store(settings: Settings) -> JobStore:
    if settings.queue_backend == "redis":
        return RedisJobStore(settings.redis_url, prefix=f"cxr:{settings.queue_name}")
    return SqliteJobStore(settings.data_dir / "jobs.sqlite3")


def make_huey(settings: Settings, *, name: str | None = None) -> Huey:
    """The queue engine; ``name`` (default ``CXR_QUEUE_NAME``) selects one queue within it."""
    name = name or settings.queue_name
    if settings.queue_backend == "redis":
        return PriorityRedisHuey(name, url=settings.redis_url, results=False)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(name, filename=str(settings.data_dir / "queue.sqlite3"), results=False)


def scp_queue_name(settings: Settings) -> str:
    """The queue of one `cxr scp`: its spool is a local folder, so only its own worker runs its jobs."""
    return f"{settings.queue_name}-scp-{socket.gethostname()}"


class EmbeddedConsumer(Consumer):
    """A Huey consumer started from inside another server (uvicorn, the SCP): it leaves the
    process's signal handlers alone; its owner stops it."""

    def _set_signal_handlers(self) -> None:
        logger.debug("embedded consumer: signal handling stays with the host process")


class JobQueue:
    """Submit, retry and recover jobs. ``runner`` runs a job id in a worker; the API process
    registers the same task without a runner and only enqueues."""

    def __init__(
        self,
        *,
        huey: Huey,
        store: JobStore,
        settings: Settings,
        runner: JobRunnerFn | None = None,
        kinds: frozenset[JobKind] = frozenset({JobKind.DICOMWEB}),
    ) -> None:
        self.huey = huey
        self.store = store
        self.settings = settings
        self.kinds = kinds
        self._runner = runner
        self._task = huey.task(name=TASK_NAME)(self._run)

    @classmethod
    def from_settings(cls, settings: Settings, *, runner: JobRunnerFn | None = None) -> JobQueue:
        """The shared queue of DICOMweb jobs (API, `cxr worker`)."""
        return cls(huey=make_huey(settings), store=make_store(settings), settings=settings, runner=runner)

    @classmethod
    def for_scp(cls, settings: Settings) -> JobQueue:
        """The queue of this machine's `cxr scp` (spool jobs), sharing the job store."""
        return cls(
            huey=make_huey(settings, name=scp_queue_name(settings)),
            store=make_store(settings),
            settings=settings,
            kinds=frozenset({JobKind.SPOOL}),
        )

    def owns(self, job: Job) -> bool:
        """Whether this queue runs ``job``: its kind, and for spool jobs a spool folder here."""
        if job.kind not in self.kinds:
            return False
        return job.kind != JobKind.SPOOL or (job.spool is not None and Path(job.spool).is_dir())

    def set_runner(self, runner: JobRunnerFn) -> None:
        self._runner = runner

    def _run(self, job_id: str) -> None:
        if self._runner is None:
            raise RuntimeError("this process has no job runner; start `cxr worker`")
        self._runner(job_id)

    def ping(self) -> None:
        """Raise when the queue engine or the job store cannot be reached."""
        self.huey.pending_count()
        self.store.ping()

    def depth(self) -> dict[str, int]:
        return {"pending": int(self.huey.pending_count()), "scheduled": int(self.huey.scheduled_count())}

    def enqueue(self, job: Job, *, delay_s: float | None = None) -> None:
        if delay_s:
            self._task.schedule(args=(job.id,), delay=delay_s, priority=job.priority)
        else:
            self.huey.enqueue(self._task.s(job.id, priority=job.priority))

    def submit(
        self,
        *,
        study_instance_uid: str,
        kind: JobKind,
        priority: int = PRIORITIES["routine"],
        force: bool = False,
        spool: str | None = None,
        patient_id: str | None = None,
    ) -> tuple[Job, bool]:
        """A job for the study (of ``patient_id``, when given): the study's active (queued,
        running or retrying) job when it has one, so duplicate notifications become one job;
        else a new queued job. Returns ``(job, created)``."""
        job, created = self.store.insert_unless_active(
            Job.new(
                study_instance_uid=study_instance_uid, kind=kind, priority=priority, force=force, spool=spool, patient_id=patient_id
            )
        )
        if not created:
            return job, False
        self.enqueue(job)
        logger.info("job %s queued for study %s (%s, priority %d)", job.id, study_instance_uid, kind, priority)
        return job, True

    def retry_later(self, job: Job) -> float:
        """Schedule a job that just moved to retrying; returns the delay (exponential backoff)."""
        delay = self.settings.retry_delay_s * (2 ** max(0, job.attempts - 1))
        self.enqueue(job, delay_s=delay)
        return delay

    def reap(self) -> list[Job]:
        """Requeue jobs whose worker died (lease expired) and queued jobs whose message is gone."""
        requeued = self.store.requeue_expired(accept=self.owns)
        for job in requeued:
            self.enqueue(job)
        stale_before = time.time() - self.settings.lease_s
        candidates = [
            j
            for j in self.store.jobs_in_states([JobState.QUEUED, JobState.RETRYING])
            if j.updated_at < stale_before and self.owns(j)
        ]
        if candidates:
            waiting = {t.args[0] for t in self.huey.pending() if t.args} | {t.args[0] for t in self.huey.scheduled() if t.args}
            for job in candidates:
                if job.id in waiting:
                    continue
                touched = self.store.transition(job.id, lambda j: j.replace() if j.state == job.state else None)
                if touched is not None:
                    logger.warning("job %s had no queue message: requeued", job.id)
                    self.enqueue(touched)
                    requeued.append(touched)
        return requeued

    def consumer(self, *, embedded: bool) -> Consumer:
        # An idle consumer polls at most every second (Huey's default backs off to 10 s, which
        # would add up to 10 s to the arrival-to-result latency of a quiet site).
        options = {
            "workers": self.settings.worker_threads,
            "worker_type": "thread",
            "periodic": False,
            "check_worker_health": True,
            "initial_delay": 0.1,
            "backoff": 1.15,
            "max_delay": 1.0,
        }
        if embedded:
            return EmbeddedConsumer(self.huey, **options)
        return self.huey.create_consumer(**options)

    def close(self) -> None:
        self.store.close()
