"""Request-body size limit (ASGI middleware): 413 before the body is read past the limit."""

from __future__ import annotations

import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cxr_service.api.problems import PROBLEM_JSON, PROBLEM_TYPE_BASE

logger = logging.getLogger(__name__)


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
        body = json.dumps(
            {
                "type": f"{PROBLEM_TYPE_BASE}-413",
                "title": "Content Too Large",
                "status": 413,
                "detail": f"request body exceeds {self.max_bytes} bytes (CXR_MAX_UPLOAD_BYTES)",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
