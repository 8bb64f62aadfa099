"""``create_app(settings)``: the FastAPI application.

Models and the queue are created in the lifespan, never at import. With
``CXR_EMBEDDED_WORKER=true`` (the default) the process also runs a worker that shares the API's
models; tests pass their own ``queue`` and ``engine`` to swap them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

import cxr_service
from cxr_service.api.limits import BodySizeLimit, ConcurrencyLimit
from cxr_service.api.problems import install_problem_handlers
from cxr_service.api.routes import analyze, health, jobs, metrics, results, worklist
from cxr_service.api.routes.docs import docs_router
from cxr_service.engine import AnalysisEngine, LazyEngine
from cxr_service.jobqueue import JobQueue
from cxr_service.memory import release_memory
from cxr_service.settings import Settings
from cxr_service.worker import EmbeddedWorker
from cxr_service.worklist import make_triage_store

logger = logging.getLogger(__name__)

UPLOAD_PATH = "/v1/analyze"

DESCRIPTION = """DICOM-native chest X-ray AI. **Demo weights trained on synthetic PhantomCXR radiographs:
not for clinical use.** Every route except `/healthz` and `/readyz` needs `Authorization: Bearer <CXR_API_TOKEN>`
(`/openapi.json` too, unless `CXR_DOCS_PUBLIC=true`); errors are `application/problem+json`."""


def create_app(
    settings: Settings, *, queue: JobQueue | None = None, engine: AnalysisEngine | None = None
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.queue = queue or JobQueue.from_settings(settings)
        app.state.triage = make_triage_store(settings)
        app.state.engine = engine or await run_in_threadpool(AnalysisEngine.load, settings)
        worker = None
        if settings.embedded_worker:
            worker = EmbeddedWorker(app.state.queue, LazyEngine(settings, engine=app.state.engine), settings)
            worker.start()
            logger.info("embedded worker started (%s queue)", settings.queue_backend)
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()
            if engine is None:
                app.state.engine.close()
            if queue is None:
                app.state.queue.close()
            app.state.triage.close()

    app = FastAPI(
        title="cxr",
        version=getattr(cxr_service, "__version__", "0"),
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served by docs_router: behind the token unless CXR_DOCS_PUBLIC or development.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = None
    install_problem_handlers(app)
    for module in (health, jobs, results, analyze, worklist, metrics):
        app.include_router(module.router)
    app.include_router(docs_router(settings))
    # The last added runs first: an oversized body is refused before it waits for a turn.
    app.add_middleware(
        ConcurrencyLimit,
        paths={UPLOAD_PATH},
        max_active=settings.max_concurrent_uploads,
        max_waiting=settings.max_waiting_uploads,
        on_done=release_memory,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    return app
