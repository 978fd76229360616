"""A loopback HTTP server that stands in for Gemini's generateContent endpoint, for the real google-genai client.

Tests point a real `genai.Client` at it (`HttpOptions(base_url=standin.url)`) and assert on what
arrived: every POST is recorded with its path, headers and JSON body before it is answered. What it
answers is `reply()`, which a test replaces: a canned structured answer (`answer_with`, optionally
with usage metadata), a malformed body, an error status, or a stall on `release` (set when the
stand-in stops, so a test never waits out a stall).

The `gemini` fixture is registered for every test through tests/conftest.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.loopback_http import LoopbackServer, send_json

Reply = tuple[int, bytes]


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def answer_with(
    text: str,
    *,
    prompt_tokens: int | None = None,
    output_tokens: int | None = None,
    total_tokens: int | None = None,
) -> Reply:
    """A generateContent answer whose single candidate says `text`, with usage metadata for the counts given."""
    body: dict[str, Any] = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}]
    }
    usage = {
        name: count
        for name, count in (
            ("promptTokenCount", prompt_tokens),
            ("candidatesTokenCount", output_tokens),
            ("totalTokenCount", total_tokens),
        )
        if count is not None
    }
    if usage:
        body["usageMetadata"] = usage
    return 200, json.dumps(body).encode()


def _default_reply() -> Reply:
    return answer_with(json.dumps({"summary": "ok", "steps": ["ok"]}))


@dataclass
class GeminiStandIn:
    url: str
    requests: list[RecordedRequest] = field(default_factory=list)
    reply: Callable[[], Reply] = _default_reply
    release: threading.Event = field(default_factory=threading.Event)


@contextmanager
def running_gemini_standin() -> Iterator[GeminiStandIn]:
    """`with running_gemini_standin() as gemini: ...`; serves on a free loopback port until the block ends."""
    stand_in = GeminiStandIn(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            stand_in.requests.append(RecordedRequest(self.path, dict(self.headers.items()), json.loads(raw)))
            send_json(self, *stand_in.reply())

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            """Quiet: tests assert on recorded requests, not on a request log."""

    server = LoopbackServer.start(Handler, name="gemini-standin")
    stand_in.url = server.url
    try:
        yield stand_in
    finally:
        stand_in.release.set()  # let a deliberately slow handler finish
        server.stop()


@pytest.fixture
def gemini() -> Iterator[GeminiStandIn]:
    """A running stand-in for this test."""
    with running_gemini_standin() as stand_in:
        yield stand_in
