"""Limits of the API (ASGI middleware).

* :class:`BodySizeLimit`: 413 before a body is read past ``CXR_MAX_UPLOAD_BYTES``.
* :class:`ConcurrencyLimit`: at most ``CXR_MAX_CONCURRENT_UPLOADS`` uploads (``POST
  /v1/analyze``) are read and analysed at once, ``CXR_MAX_WAITING_UPLOADS`` more wait for a
  turn (their bodies not yet read), and any further one is answered at once with 503
  problem+json and ``Retry-After``. Each upload holds its files, their decoded pixels and
  display arrays; unbounded, 30 parallel uploads took the API to 1.5 GB. When an upload is
  done the freed heap is handed back to the OS (:func:`cxr_service.memory.release_memory`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Collection

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cxr_service.api.problems import PROBLEM_JSON, PROBLEM_TYPE_BASE

logger = logging.getLogger(__name__)


async def send_problem(send: Send, status: int, title: str, detail: str, *, headers: dict[str, str] | None = None) -> None:
    """Answer with a problem+json document straight from a middleware."""
    body = json.dumps({"type": f"{PROBLEM_TYPE_BASE}-{status}", "title": title, "status": status, "detail": detail}).encode()
    raw_headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class ConcurrencyLimit:
    """Bound the requests to ``paths`` (POST) that run at once, and those waiting for a turn.

    ``on_done`` (e.g. :func:`cxr_service.memory.release_memory`) runs in a worker thread after
    each limited request.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        paths: Collection[str],
        max_active: int,
        max_waiting: int,
        retry_after_s: int = 5,
        on_done: Callable[[], object] | None = None,
    ) -> None:
        if max_active < 1 or max_waiting < 0:
            raise ValueError(f"max_active must be >= 1 and max_waiting >= 0, got {max_active} and {max_waiting}")
        self.app = app
        self.paths = frozenset(paths)
        self.max_active = max_active
        self.max_waiting = max_waiting
        self.retry_after_s = retry_after_s
        self.on_done = on_done
        self.active = 0
        self.waiting = 0
        self._turns = asyncio.Semaphore(max_active)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_active and self.waiting >= self.max_waiting:
            logger.warning("%s refused: %d running and %d waiting (the limits)", scope["path"], self.active, self.waiting)
            await send_problem(
                send,
                503,
                "Service Unavailable",
                f"the service is analysing {self.active} upload(s) with {self.waiting} more waiting "
                "(CXR_MAX_CONCURRENT_UPLOADS, CXR_MAX_WAITING_UPLOADS); retry later",
                headers={"Retry-After": str(self.retry_after_s)},
            )
            return
        self.waiting += 1
        try:
            await self._turns.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            self._turns.release()
            if self.on_done is not None:
                await run_in_threadpool(self.on_done)


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` (declared by Content-Length or streamed)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        exceeded = False
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # The app may turn the aborted read into its own error answer: answer 413 instead.
            nonlocal refused
            if exceeded:
                if not refused:
                    refused = True
                    await self._refuse(send)
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            if not refused:
                refused = True
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        logger.warning("request body over %d bytes refused", self.max_bytes)
        await send_problem(
            send, 413, "Content Too Large", f"request body exceeds {self.max_bytes} bytes (CXR_MAX_UPLOAD_BYTES)"
        )
