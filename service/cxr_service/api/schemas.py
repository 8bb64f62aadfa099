"""Request and response bodies of the v1 API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cxr_service.jobqueue import PRIORITIES
from cxr_service.jobs import Job

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
_PRIORITY_NAMES = {value: name for name, value in PRIORITIES.items()}


class StudyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study_instance_uid: str = Field(..., min_length=1, max_length=64, pattern=UID_PATTERN, description="Study Instance UID at the DICOMweb source")
    priority: Literal["low", "routine", "stat"] = Field("routine", description="`stat` jobs run before routine ones")
    force: bool = Field(False, description="re-analyse even when the study was analysed with this model version")


class JobOut(BaseModel):
    id: str
    study_instance_uid: str
    kind: str
    state: Literal["queued", "running", "retrying", "done", "failed"]
    priority: str
    force: bool
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None = Field(None, description="why the job failed, or why it is being retried")
    note: str | None = Field(None, description="e.g. why a finished job did not re-analyse")
    model_version: str | None
    timings_ms: dict[str, float]

    @classmethod
    def from_job(cls, job: Job) -> JobOut:
        return cls(
            id=job.id,
            study_instance_uid=job.study_instance_uid,
            kind=str(job.kind),
            state=str(job.state),  # type: ignore[arg-type]
            priority=_PRIORITY_NAMES.get(job.priority, str(job.priority)),
            force=job.force,
            attempts=job.attempts,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            error=job.error,
            note=job.note,
            model_version=job.model_version,
            timings_ms=dict(job.timings_ms),
        )


class SubmitOut(BaseModel):
    job: JobOut
    created: bool = Field(..., description="false when the study already had an active job, which is returned")


class Health(BaseModel):
    status: Literal["ok", "ready"]
    model_version: str | None = None
    queue_backend: str | None = None


ResultDocument = dict[str, Any]
