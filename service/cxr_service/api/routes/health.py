"""``/healthz`` (the process answers) and ``/readyz`` (models loaded, queue reachable); no auth."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request

from cxr_service.api.deps import EngineDep
from cxr_service.api.problems import Problem
from cxr_service.api.schemas import Health

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Ready: models loaded and the queue reachable",
    responses={503: {"description": "not ready (problem+json says why)"}},
)
def readyz(request: Request, engine: EngineDep) -> Health:
    try:
        request.app.state.queue.ping()
    except Exception as exc:
        logger.warning("readyz: queue unreachable: %s", type(exc).__name__)
        raise Problem(503, f"queue unreachable ({type(exc).__name__})", headers={"Retry-After": "5"}) from exc
    return Health(status="ready", model_version=engine.model_version, queue_backend=request.app.state.settings.queue_backend)
