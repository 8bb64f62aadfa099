"""Request and response bodies of the v1 API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from cxr_service.jobqueue import PRIORITIES
from cxr_service.jobs import Job
from cxr_service.patients import PATIENT_ID_MAX_LENGTH, check_patient_id
from cxr_service.uids import UID_MAX_LENGTH, UID_PATTERN, check_uid

_PRIORITY_NAMES = {value: name for name, value in PRIORITIES.items()}

#: A DICOM UID in a body or path. The pattern is published in the OpenAPI; validation is
#: :func:`cxr_service.uids.check_uid`, whose message says what is wrong (e.g. a leading zero).
UIDText = Annotated[str, AfterValidator(check_uid)]
UID_SCHEMA = {"pattern": UID_PATTERN, "minLength": 1, "maxLength": UID_MAX_LENGTH}
#: A Patient ID in a body or query: no backslash or control character (ESC aside), at most PATIENT_ID_MAX_LENGTH.
PatientIDText = Annotated[str, AfterValidator(check_patient_id)]
PATIENT_ID_SCHEMA = {"maxLength": PATIENT_ID_MAX_LENGTH, "pattern": r"^[^\\\x00-\x1a\x1c-\x1f]*$"}
PATIENT_ID_DESCRIPTION = (
    "Patient ID of the study (a PACS such as Orthanc keeps one study per Patient ID and "
    "StudyInstanceUID): only that patient's instances are fetched and analysed"
)


class StudyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study_instance_uid: UIDText = Field(
        ..., description="Study Instance UID at the DICOMweb source", json_schema_extra=UID_SCHEMA, examples=["1.2.826.0.1.3680043.8.498.1"]
    )
    priority: Literal["low", "routine", "stat"] = Field("routine", description="`stat` jobs run before routine ones")
    force: bool = Field(False, description="re-analyse even when the study was analysed with this model version")
    patient_id: PatientIDText | None = Field(None, description=PATIENT_ID_DESCRIPTION, json_schema_extra=PATIENT_ID_SCHEMA)


class JobOut(BaseModel):
    id: str
    study_instance_uid: str
    patient_id: str | None = Field(None, description="the patient whose study it is (null: the instances must be one patient's)")
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
    triage_priority: str | None = Field(
        None, description="a done job's study: its triage priority (urgent, priority, unassessed, routine) from its latest analysis"
    )

    @classmethod
    def from_job(cls, job: Job, *, triage_priority: str | None = None) -> JobOut:
        return cls(
            id=job.id,
            study_instance_uid=job.study_instance_uid,
            patient_id=job.patient_id,
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
            triage_priority=triage_priority,
        )


class SubmitOut(BaseModel):
    job: JobOut
    created: bool = Field(..., description="false when the study already had an active job, which is returned")


class Health(BaseModel):
    status: Literal["ok", "ready"]
    model_version: str | None = None
    queue_backend: str | None = None


ResultDocument = dict[str, Any]
