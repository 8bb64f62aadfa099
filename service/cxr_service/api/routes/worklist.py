"""``GET /v1/worklist``: the analysed studies by triage priority, then arrival, a page at a time."""

from __future__ import annotations

import logging
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from cxr_service.api.deps import Authorized, TriageDep
from cxr_service.api.problems import Problem
from cxr_service.triage import Priority
from cxr_service.worklist import MAX_PAGE, WorklistEntry, decode_cursor, encode_cursor

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["worklist"], dependencies=[Authorized])

DEFAULT_PAGE = 50


class WorklistItem(BaseModel):
    study_instance_uid: str
    priority: Priority = Field(..., description="urgent, priority, unassessed (no image could be analysed) or routine")
    job_id: str = Field(..., description="the job whose analysis set the priority")
    arrived_at: float = Field(..., description="when that job was submitted (Unix time)")
    analysed_at: float = Field(..., description="when its analysis was recorded (Unix time)")
    study_label: str | None = Field(None, description="the study's appearance class (null: nothing analysed)")
    max_opacity_score: float | None = Field(None, description="highest reported opacity score (null: none reported)")
    abnormal_probability: float | None = Field(None, description="1 - P(negative) of the study classifier")

    @classmethod
    def of(cls, entry: WorklistEntry) -> WorklistItem:
        return cls(**entry.to_json())


class WorklistPage(BaseModel):
    items: list[WorklistItem]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; null on the last page")


@router.get(
    "/worklist",
    response_model=WorklistPage,
    summary="Studies analysed by jobs, most pressing first: by triage priority, then arrival",
    responses={
        401: {"description": "missing or wrong bearer token"},
        422: {"description": "a bad limit, cursor or priority"},
        503: {"description": "job store unreachable"},
    },
)
def get_worklist(
    triage: TriageDep,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="entries per page")] = DEFAULT_PAGE,
    cursor: Annotated[str | None, Query(min_length=1, max_length=200, description="next_cursor of the previous page")] = None,
    priority: Annotated[Priority | None, Query(description="only the studies of this priority")] = None,
) -> WorklistPage:
    after = None
    if cursor is not None:
        try:
            after = decode_cursor(cursor)
        except ValueError as exc:
            raise Problem(422, f"cursor: {exc}") from None
    try:
        entries = triage.page(limit=limit + 1, after=after, priority=priority)
    except Exception as exc:
        logger.exception("worklist: could not read the triage store")
        raise Problem(503, f"job store unreachable ({type(exc).__name__})", headers={"Retry-After": "5"}) from exc
    more = len(entries) > limit
    entries = entries[:limit]
    next_cursor = encode_cursor(entries[-1].sort_key) if more and entries else None
    if next_cursor is not None:
        query = {"limit": limit, "cursor": next_cursor, **({"priority": str(priority)} if priority else {})}
        response.headers["Link"] = f'</v1/worklist?{urlencode(query)}>; rel="next"'
    return WorklistPage(items=[WorklistItem.of(e) for e in entries], next_cursor=next_cursor)
