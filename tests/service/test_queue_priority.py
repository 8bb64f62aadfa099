"""STAT jumps the queue under load: with the only worker thread busy and 40 routine jobs waiting,
a STAT job sent last runs next, then the routine ones in the order they came; on the embedded
SQLite queue and on a real Redis, with a real Huey consumer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxr_service.jobqueue import PRIORITIES, JobQueue
from cxr_service.jobs import JobKind
from cxr_service.settings import Settings
from tests.service.procs import start_redis, wait_until

ROUTINE_JOBS = 40


@pytest.fixture(params=["sqlite", "redis"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "sqlite":
        yield Settings(environment="development", data_dir=tmp_path, worker_threads=1)
        return
    proc, url = start_redis(tmp_path / "redis")
    yield Settings(environment="development", data_dir=tmp_path, worker_threads=1, queue_backend="redis", redis_url=url)
    proc.stop()


def uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.555.{n + 1}"


def test_a_stat_job_sent_behind_many_routine_ones_runs_next(settings: Settings) -> None:
    queue = JobQueue.from_settings(settings)
    ran: list[str] = []
    busy = threading.Event()

    def run(job_id: str) -> None:
        ran.append(job_id)
        if len(ran) == 1:
            busy.wait(30)  # the first job holds the only worker thread while the others queue up
        else:
            time.sleep(0.005)

    queue.set_runner(run)
    consumer = queue.consumer(embedded=True)
    consumer.start()
    try:
        first, _ = queue.submit(study_instance_uid=uid(0), kind=JobKind.DICOMWEB)
        wait_until(lambda: ran == [first.id], timeout=20, what="the first job running")
        routine = [queue.submit(study_instance_uid=uid(n), kind=JobKind.DICOMWEB)[0].id for n in range(1, ROUTINE_JOBS + 1)]
        low, _ = queue.submit(study_instance_uid=uid(98), kind=JobKind.DICOMWEB, priority=PRIORITIES["low"])
        stat, _ = queue.submit(study_instance_uid=uid(99), kind=JobKind.DICOMWEB, priority=PRIORITIES["stat"])
        assert queue.depth()["pending"] == ROUTINE_JOBS + 2
        busy.set()
        wait_until(lambda: len(ran) == ROUTINE_JOBS + 3, timeout=60, what="every job run")
    finally:
        busy.set()
        consumer.stop(graceful=True)
        queue.close()
    assert ran[1] == stat.id, f"the STAT job ran at position {ran.index(stat.id)}"
    assert ran[2:-1] == routine, "routine jobs run in the order they came"
    assert ran[-1] == low.id
