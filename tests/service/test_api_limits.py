"""The API in-process, without models: who may read the OpenAPI document, UIDs refused with
the field named, and the bound on concurrent uploads (503 problem+json with Retry-After)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from cxr_service.api import create_app
from cxr_service.api.limits import ConcurrencyLimit
from cxr_service.jobqueue import JobQueue
from cxr_service.settings import Settings

TOKEN = "in-process-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(api_token=TOKEN, data_dir=tmp_path, embedded_worker=False, **overrides)


@pytest.fixture
def client(tmp_path: Path):
    """A production app with a real SQLite queue (the lifespan, which loads models, is not run)."""
    s = settings(tmp_path)
    app = create_app(s)
    app.state.queue = JobQueue.from_settings(s)
    yield TestClient(app)
    app.state.queue.close()


def test_openapi_needs_the_token_and_the_ui_is_not_served_in_production(client: TestClient) -> None:
    denied = client.get("/openapi.json")
    assert denied.status_code == 401 and denied.headers["content-type"] == "application/problem+json"
    assert denied.headers["www-authenticate"].startswith("Bearer")
    document = client.get("/openapi.json", headers=AUTH)
    assert document.status_code == 200 and "/v1/analyze" in document.json()["paths"]
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert client.get(path).status_code == 404, path
        assert client.get(path, headers=AUTH).status_code == 404, path
    assert client.get("/healthz").status_code == 200  # still open


@pytest.mark.parametrize("overrides", [{"docs_public": True}, {"environment": "development"}])
def test_docs_are_open_with_docs_public_or_in_development(tmp_path: Path, overrides: dict[str, object]) -> None:
    app = create_app(settings(tmp_path, **overrides))
    with_docs = TestClient(app)
    assert with_docs.get("/openapi.json").status_code == 200
    assert "swagger-ui" in with_docs.get("/docs").text
    assert with_docs.get("/redoc").status_code == 200
    # The API itself still needs the token.
    assert with_docs.get("/metrics").status_code == 401


@pytest.mark.parametrize("uid", ["1.2.03.4", "01.2", "1.2.", "1..2", "1.2.3a", "1" * 65])
def test_invalid_uids_are_refused_naming_the_field(client: TestClient, uid: str) -> None:
    body = client.post("/v1/studies", json={"study_instance_uid": uid}, headers=AUTH)
    assert body.status_code == 422 and body.headers["content-type"] == "application/problem+json"
    problem = body.json()
    assert problem["errors"][0]["loc"] == ["body", "study_instance_uid"]
    assert problem["detail"].startswith("study_instance_uid: ")
    path = client.get(f"/v1/studies/{uid}/result", headers=AUTH)
    assert path.status_code == 422 and path.json()["errors"][0]["loc"] == ["path", "study_instance_uid"]


def test_a_leading_zero_is_named_as_the_reason(client: TestClient) -> None:
    problem = client.post("/v1/studies", json={"study_instance_uid": "1.2.03.4"}, headers=AUTH).json()
    assert problem["detail"] == "study_instance_uid: not a valid DICOM UID: component 3 has a leading zero (03)"
    accepted = client.post("/v1/studies", json={"study_instance_uid": "1.2.0.4"}, headers=AUTH)
    assert accepted.status_code == 202, accepted.text


def test_openapi_publishes_the_uid_pattern(client: TestClient) -> None:
    schema = client.get("/openapi.json", headers=AUTH).json()
    field = schema["components"]["schemas"]["StudyRequest"]["properties"]["study_instance_uid"]
    assert field["pattern"] == r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$" and field["maxLength"] == 64


class SlowApp:
    """An ASGI app that holds each request until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = 0
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.entered += 1
        if scope["path"] == "/v1/analyze":
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"done"})


def test_uploads_beyond_the_running_and_waiting_limits_get_503_with_retry_after() -> None:
    async def scenario() -> None:
        inner = SlowApp()
        done: list[int] = []
        limited = ConcurrencyLimit(
            inner, paths={"/v1/analyze"}, max_active=1, max_waiting=1, retry_after_s=7, on_done=lambda: done.append(1)
        )
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=limited), base_url="http://cxr") as c:
            first = asyncio.create_task(c.post("/v1/analyze", content=b"x"))
            while inner.entered < 1:
                await asyncio.sleep(0.01)
            second = asyncio.create_task(c.post("/v1/analyze", content=b"x"))
            while limited.waiting < 1:
                await asyncio.sleep(0.01)
            third = await c.post("/v1/analyze", content=b"x")
            assert third.status_code == 503 and third.headers["retry-after"] == "7"
            assert third.headers["content-type"] == "application/problem+json"
            assert "CXR_MAX_CONCURRENT_UPLOADS" in third.json()["detail"]
            # Other routes are not limited, and the second upload has not started.
            assert (await c.get("/healthz")).status_code == 200
            assert inner.entered == 2  # the first upload and /healthz
            inner.release.set()
            assert [(await t).status_code for t in (first, second)] == [200, 200]
        assert limited.active == 0 and limited.waiting == 0
        assert done == [1, 1], "memory is released after each upload (not after a refused one)"

    asyncio.run(scenario())


def test_limits_are_settings() -> None:
    with pytest.raises(ValueError, match="max_active"):
        ConcurrencyLimit(SlowApp(), paths={"/x"}, max_active=0, max_waiting=0)
