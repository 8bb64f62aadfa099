"""``GET /v1/studies/{uid}/result[?patient_id=...]``: the latest result.json of a study.

Results are kept per patient (:mod:`cxr_service.patients`). Without ``patient_id`` the answer is
the one patient's result under the UID; when several patients have one, ``409`` asks for it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from cxr_service.api.deps import Authorized, QueueDep
from cxr_service.api.problems import Problem
from cxr_service.api.schemas import PATIENT_ID_DESCRIPTION, PATIENT_ID_SCHEMA, UID_SCHEMA, PatientIDText, UIDText
from cxr_service.jobs import AmbiguousStudy

router = APIRouter(prefix="/v1", tags=["results"], dependencies=[Authorized])


@router.get(
    "/studies/{study_instance_uid}/result",
    summary="The latest result.json of a study",
    responses={
        401: {"description": "missing or wrong bearer token"},
        404: {"description": "not analysed yet"},
        409: {"description": "several patients have a study under this UID: give patient_id"},
    },
)
def get_result(
    study_instance_uid: Annotated[UIDText, Path(json_schema_extra=UID_SCHEMA)],
    queue: QueueDep,
    patient_id: Annotated[PatientIDText | None, Query(description=PATIENT_ID_DESCRIPTION, json_schema_extra=PATIENT_ID_SCHEMA)] = None,
) -> dict[str, Any]:
    try:
        stored = queue.store.get_result(study_instance_uid, patient_id=patient_id)
    except AmbiguousStudy as exc:
        raise Problem(409, f"patient_id: {exc}") from exc
    if stored is None:
        raise Problem(404, f"study {study_instance_uid} has no result yet")
    return dict(stored.document)
