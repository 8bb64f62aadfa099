"""The OpenAPI document and its browser UIs (``/openapi.json``, ``/docs``, ``/redoc``).

Open to anyone only with ``CXR_DOCS_PUBLIC=true`` or ``CXR_ENVIRONMENT=development``.
Otherwise ``/openapi.json`` needs the bearer token like every other route, and ``/docs`` and
``/redoc`` are not served at all: a browser cannot send the token when the page fetches the
document, and the pages load their scripts from a CDN, which a clinical network should not be
asked to reach. So nothing but ``/healthz`` and ``/readyz`` answers without the token.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from cxr_service.api.deps import Authorized
from cxr_service.settings import Settings

logger = logging.getLogger(__name__)

OPENAPI_URL = "/openapi.json"


def docs_router(settings: Settings) -> APIRouter:
    """The documentation routes for ``settings`` (see the module docstring)."""
    router = APIRouter(tags=["docs"], include_in_schema=False, dependencies=[] if settings.docs_open else [Authorized])

    @router.get(OPENAPI_URL)
    def openapi(request: Request) -> JSONResponse:
        document: dict[str, Any] = request.app.openapi()
        return JSONResponse(document)

    if settings.docs_open:

        @router.get("/docs")
        def swagger_ui(request: Request) -> HTMLResponse:
            return get_swagger_ui_html(openapi_url=OPENAPI_URL, title=f"{request.app.title} - API")

        @router.get("/redoc")
        def redoc(request: Request) -> HTMLResponse:
            return get_redoc_html(openapi_url=OPENAPI_URL, title=f"{request.app.title} - API")

    return router
