"""Request bodies are bounded before anyone reads them: a 413 problem, not a gigabyte spooled to disk.

FastAPI parses a multipart upload (and Starlette buffers any body) before the route's own size check
runs, so that check alone lets a client make the server store as much as it sends. This ASGI
middleware refuses a declared `Content-Length` over the route's limit at once, and counts the bytes of
a body sent without one (chunked): past the limit the app sees the client go away, and the client
gets the 413.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.problems import CONTENT_TOO_LARGE, PROBLEM_MEDIA_TYPE

DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024  # a batch of 100 predict requests is about 100 kB


class BodySizeLimit:
    """Refuse request bodies over `limits[path]` (else `default`) bytes with a 413 problem+json."""

    def __init__(self, app: ASGIApp, *, limits: Mapping[str, int], default: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.limits = dict(limits)
        self.default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_too_large(send, scope["path"], limit, f"{declared} bytes declared")
            return
        received = 0
        too_large = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    return {"type": "http.disconnect"}  # the app stops reading, as if the client had left
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if too_large:
                return  # the 413 below is the answer; whatever the app says after a "disconnect" is dropped
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not too_large:
                raise  # a disconnect we caused may surface as an exception in the app; anything else is real
        if too_large and not response_started:
            await _send_too_large(send, scope["path"], limit, f"more than {limit} bytes sent")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_too_large(send: Send, path: str, limit: int, got: str) -> None:
    body: dict[str, Any] = {
        "type": CONTENT_TOO_LARGE,
        "title": HTTPStatus.REQUEST_ENTITY_TOO_LARGE.phrase,
        "status": 413,
        "detail": f"the request body is too large: {got}, at most {limit} bytes here",
        "instance": path,
    }
    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(raw)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})
