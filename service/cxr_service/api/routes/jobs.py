"""``POST /v1/studies`` (queue a study) and ``GET /v1/jobs/{id}``."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Response

from cxr_service.api.deps import Authorized, QueueDep, TriageDep
from cxr_service.api.problems import Problem, storage_full
from cxr_service.api.schemas import JobOut, StudyRequest, SubmitOut
from cxr_service.jobqueue import PRIORITIES
from cxr_service.jobs import Job, JobKind, JobState
from cxr_service.worklist import TriageStore, WorklistEntry

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["jobs"], dependencies=[Authorized])

_PROBLEMS = {401: {"description": "missing or wrong bearer token"}}


@router.post(
    "/studies",
    status_code=202,
    response_model=SubmitOut,
    summary="Queue a study held by the DICOMweb source for analysis",
    responses={**_PROBLEMS, 503: {"description": "queue unreachable"}, 507: {"description": "queue storage full"}},
)
def submit_study(body: StudyRequest, queue: QueueDep, response: Response) -> SubmitOut:
    try:
        job, created = queue.submit(
            study_instance_uid=body.study_instance_uid,
            kind=JobKind.DICOMWEB,
            priority=PRIORITIES[body.priority],
            force=body.force,
            patient_id=body.patient_id,
        )
    except Exception as exc:
        if storage_full(exc):
            logger.error("could not queue study %s: the queue's storage is full", body.study_instance_uid)
            raise Problem(507, "the queue's storage is full; free disk space and retry", headers={"Retry-After": "30"}) from exc
        logger.exception("could not queue study %s", body.study_instance_uid)
        raise Problem(503, f"queue unreachable ({type(exc).__name__})", headers={"Retry-After": "5"}) from exc
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return SubmitOut(job=JobOut.from_job(job), created=created)


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    summary="A job's state, timings and error reason",
    responses={**_PROBLEMS, 404: {"description": "no such job"}},
)
def get_job(
    job_id: Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")], queue: QueueDep, triage: TriageDep
) -> JobOut:
    job = queue.store.get(job_id)
    if job is None:
        raise Problem(404, f"no job {job_id}")
    entry = _triage_entry(triage, job) if job.state == JobState.DONE else None
    return JobOut.from_job(job, triage_priority=str(entry.priority) if entry is not None else None)


def _triage_entry(triage: TriageStore, job: Job) -> WorklistEntry | None:
    """The worklist entry of a done job's study: the one this job recorded, else its patient's
    (a job that found the study already analysed), else the UID's only one."""
    entries = triage.entries(job.study_instance_uid)
    return (
        next((e for e in entries if e.job_id == job.id), None)
        or next((e for e in entries if e.study_key == job.key), None)
        or (entries[0] if len(entries) == 1 else None)
    )
