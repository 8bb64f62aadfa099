"""``GET /v1/studies/{uid}/result``: the latest result.json of a study."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from cxr_service.api.deps import Authorized, QueueDep
from cxr_service.api.problems import Problem
from cxr_service.api.schemas import UID_SCHEMA, UIDText

router = APIRouter(prefix="/v1", tags=["results"], dependencies=[Authorized])


@router.get(
    "/studies/{study_instance_uid}/result",
    summary="The latest result.json of a study",
    responses={401: {"description": "missing or wrong bearer token"}, 404: {"description": "not analysed yet"}},
)
def get_result(
    study_instance_uid: Annotated[UIDText, Path(json_schema_extra=UID_SCHEMA)], queue: QueueDep
) -> dict[str, Any]:
    stored = queue.store.get_result(study_instance_uid)
    if stored is None:
        raise Problem(404, f"study {study_instance_uid} has no result yet")
    return dict(stored.document)
