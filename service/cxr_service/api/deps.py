"""Dependencies of the routes, all read from ``app.state`` so tests can swap them."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cxr_service.api.problems import Problem
from cxr_service.engine import AnalysisEngine
from cxr_service.jobqueue import JobQueue
from cxr_service.settings import Settings
from cxr_service.worklist import TriageStore

_bearer = HTTPBearer(auto_error=False, description="CXR_API_TOKEN")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


def get_triage(request: Request) -> TriageStore:
    return request.app.state.triage


def get_engine(request: Request) -> AnalysisEngine:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise Problem(503, "models are not loaded yet", headers={"Retry-After": "5"})
    return engine


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    expected = request.app.state.settings.api_token.get_secret_value().encode()
    given = (credentials.credentials if credentials is not None else "").encode()
    if credentials is None or credentials.scheme.lower() != "bearer" or not secrets.compare_digest(given, expected):
        raise Problem(
            401,
            "a valid bearer token is required (Authorization: Bearer <CXR_API_TOKEN>)",
            headers={"WWW-Authenticate": 'Bearer realm="cxr"'},
        )


SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
TriageDep = Annotated[TriageStore, Depends(get_triage)]
EngineDep = Annotated[AnalysisEngine, Depends(get_engine)]
Authorized = Depends(require_token)
