"""A loopback HTTP server that speaks enough of Twilio's Messages API for the real `twilio` client.

Tests point a real `twilio.rest.Client` at it (`client.api.base_url = standin.base_url`) and assert on
what arrived: every request is recorded with its form fields and Basic auth. Failures are scripted
per upcoming POST, in order: answer 5xx, answer a 4xx with Twilio's error JSON, or stall the answer
(optionally after the message was already created, as happens when a client times out although the
provider accepted the text). Stalls end when `release_stalls()` is called or the stand-in stops, so
tests never wait out a stall.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from tests.loopback_http import LoopbackServer, send_json

API_VERSION = "2010-04-01"
_MESSAGES_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages\.json$")
_MESSAGE_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages/(?P<sid>[^/]+)\.json$")


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


@dataclass
class RecordedRequest:
    """One request as the stand-in saw it; `answered_status` stays None while its answer is stalled."""

    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    auth: tuple[str, str] | None
    received_at: datetime
    answered_status: int | None = None


@dataclass(frozen=True)
class StoredMessage:
    """A message the stand-in accepted (it never delivers anything)."""

    sid: str
    account_sid: str
    to: str
    from_: str
    body: str
    date_created: datetime

    def as_json(self) -> dict[str, Any]:
        """The message resource as Twilio renders it (dates in RFC 2822, as the client parses them)."""
        stamp = format_datetime(self.date_created, usegmt=True)
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}.json"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": stamp,
            "date_sent": None,
            "date_updated": stamp,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": self.from_,
            "messaging_service_sid": None,
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": "queued",
            "subresource_uris": {"media": uri.removesuffix(".json") + "/Media.json"},
            "to": self.to,
            "uri": uri,
        }


@dataclass(frozen=True)
class _ScriptedPost:
    """What to do with one upcoming POST instead of answering 201 at once."""

    status: int = 201
    error_code: int | None = None
    error_message: str = ""
    stall: bool = False
    create: bool = True  # for stalls: whether the message exists before the (late) answer


@dataclass
class _State:
    requests: list[RecordedRequest] = field(default_factory=list)
    messages: list[StoredMessage] = field(default_factory=list)
    script: deque[_ScriptedPost] = field(default_factory=deque)


class TwilioStandIn:
    """Twilio's Messages API on 127.0.0.1 (a free port), served from a background thread.

    Use as a context manager; `base_url` is what `client.api.base_url` (or the notifier's
    `api_base_url`) should be set to.
    """

    def __init__(
        self,
        account_sid: str | None = None,
        auth_token: str = "standin-auth-token",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_stall_s: float = 30.0,
    ) -> None:
        self.account_sid = account_sid or new_sid("AC")
        self.auth_token = auth_token
        self.max_stall_s = max_stall_s
        self._host = host
        self._port = port
        self._lock = threading.Condition()
        self._state = _State()
        self._release = threading.Event()
        self._server: LoopbackServer | None = None

    # ---- lifecycle ----

    def start(self) -> TwilioStandIn:
        standin = self

        class Handler(_TwilioHandler):
            owner = standin

        self._server = LoopbackServer.start(Handler, name="twilio-standin", host=self._host, port=self._port)
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.stop()
        self._server = None

    def __enter__(self) -> TwilioStandIn:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the Twilio stand-in is not running")
        return self._server.url

    def client(self, *, timeout_s: float = 5.0) -> Client:
        """A real twilio client with this stand-in's credentials, pointed at it."""
        twilio = Client(self.account_sid, self.auth_token, http_client=TwilioHttpClient(timeout=timeout_s))
        twilio.api.base_url = self.base_url
        return twilio

    # ---- scripting ----

    def fail_next_posts(self, count: int = 1, *, status: int = 500) -> None:
        """Answer the next `count` message POSTs with a server error; no message is created."""
        self._push(
            count, _ScriptedPost(status=status, error_code=20000 + status, error_message=HTTPStatus(status).phrase)
        )

    def reject_next_posts(
        self, count: int = 1, *, status: int = 400, code: int = 21211, message: str = "The 'To' number is not valid."
    ) -> None:
        """Answer the next `count` message POSTs with a client error in Twilio's error JSON."""
        self._push(count, _ScriptedPost(status=status, error_code=code, error_message=message))

    def stall_next_posts(self, count: int = 1, *, create: bool = True) -> None:
        """Hold the answer to the next `count` POSTs until `release_stalls()` (or stop, or max_stall_s).

        With `create=True` the message is stored before the stall (the provider accepted it; a client
        that times out meanwhile finds it when it lists the messages to that number) and the late
        answer is a 201. With `create=False` the request is lost: no message, and the late answer is
        a 503.
        """
        self._push(count, _ScriptedPost(stall=True, create=create))

    def release_stalls(self) -> None:
        self._release.set()

    def _push(self, count: int, step: _ScriptedPost) -> None:
        with self._lock:
            self._state.script.extend([step] * count)

    # ---- what was received ----

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._state.requests)

    @property
    def message_posts(self) -> list[RecordedRequest]:
        """The POSTs to the Messages list: one per `messages.create` that reached the server."""
        return [r for r in self.requests if r.method == "POST" and _MESSAGES_PATH.match(r.path)]

    @property
    def messages(self) -> list[StoredMessage]:
        with self._lock:
            return list(self._state.messages)

    def messages_to(self, number: str) -> list[StoredMessage]:
        return [m for m in self.messages if m.to == number]

    def wait_for_messages(self, count: int, timeout_s: float = 5.0) -> list[StoredMessage]:
        """Block until at least `count` messages were accepted (for tests where another thread sends)."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._state.messages) >= count, timeout=timeout_s):
                raise TimeoutError(f"{len(self._state.messages)} of {count} messages arrived within {timeout_s}s")
            return list(self._state.messages)

    # ---- used by the handler ----

    def _next_step(self) -> _ScriptedPost:
        with self._lock:
            return self._state.script.popleft() if self._state.script else _ScriptedPost()

    def _store(self, account_sid: str, form: dict[str, str]) -> StoredMessage:
        message = StoredMessage(
            sid=new_sid("SM"),
            account_sid=account_sid,
            to=form.get("To", ""),
            from_=form.get("From", form.get("MessagingServiceSid", "")),
            body=form.get("Body", ""),
            date_created=datetime.now(UTC).replace(microsecond=0),
        )
        with self._lock:
            self._state.messages.append(message)
            self._lock.notify_all()
        return message

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._state.requests.append(request)
            self._lock.notify_all()

    def _answered(self, request: RecordedRequest, status: int) -> None:
        with self._lock:
            request.answered_status = status
            self._lock.notify_all()

    def _wait_for_release(self) -> None:
        self._release.wait(timeout=self.max_stall_s)


def _error_json(status: int, code: int, message: str) -> dict[str, Any]:
    more_info = f"https://www.twilio.com/docs/errors/{code}"
    return {"code": code, "message": message, "more_info": more_info, "status": status}


def _matches_filters(message: StoredMessage, query: dict[str, str]) -> bool:
    """Twilio's list filters. The stand-in never sends, so `DateSent` filters compare the creation time."""
    if "To" in query and message.to != query["To"]:
        return False
    if "From" in query and message.from_ != query["From"]:
        return False
    created = message.date_created
    for key, keep in (
        ("DateSent>", lambda day: created >= day),
        ("DateSent<", lambda day: created <= day),
        ("DateSent", lambda day: created.date() == day.date()),
    ):
        if key in query and not keep(_parse_twilio_date(query[key])):
            return False
    return True


def _parse_twilio_date(text: str) -> datetime:
    """`YYYY-MM-DD` or the client's `YYYY-MM-DDTHH:MM:SSZ`, as UTC."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class _TwilioHandler(BaseHTTPRequestHandler):
    owner: TwilioStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet: tests assert on recorded requests, not on a request log."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8") if length else ""
        form = {key: values[-1] for key, values in parse_qs(raw, keep_blank_values=True).items()}
        auth = self._basic_auth()
        recorded = RecordedRequest(
            method=method, path=url.path, query=query, form=form, auth=auth, received_at=datetime.now(UTC)
        )
        self.owner._record(recorded)
        status, payload = self._answer(method, url.path, query, form, auth)
        self.owner._answered(recorded, status)
        send_json(self, status, json.dumps(payload).encode("utf-8"))

    def _answer(
        self, method: str, path: str, query: dict[str, str], form: dict[str, str], auth: tuple[str, str] | None
    ) -> tuple[int, dict[str, Any]]:
        owner = self.owner
        listing = _MESSAGES_PATH.match(path)
        single = _MESSAGE_PATH.match(path)
        matched = listing or single
        if matched is None:
            return 404, _error_json(404, 20404, f"The requested resource {path} was not found")
        account = matched.group("account")
        if auth != (owner.account_sid, owner.auth_token) or account != owner.account_sid:
            return 401, _error_json(401, 20003, "Authenticate")
        if listing and method == "POST":
            return self._create(account, form)
        if listing and method == "GET":
            found = [m.as_json() for m in reversed(owner.messages) if _matches_filters(m, query)]
            page_size = int(query.get("PageSize", "50"))
            return 200, {
                "messages": found[:page_size],
                "end": max(0, min(len(found), page_size) - 1),
                "first_page_uri": path,
                "next_page_uri": None,
                "page": 0,
                "page_size": page_size,
                "previous_page_uri": None,
                "start": 0,
                "uri": path,
            }
        if single and method == "GET":
            for message in owner.messages:
                if message.sid == single.group("sid"):
                    return 200, message.as_json()
            return 404, _error_json(404, 20404, f"The requested resource {path} was not found")
        return 405, _error_json(405, 20004, "Method not allowed")

    def _create(self, account: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        step = self.owner._next_step()
        if step.stall:
            if not step.create:
                self.owner._wait_for_release()
                return 503, _error_json(503, 20503, "Service Unavailable")
            message = self.owner._store(account, form)
            self.owner._wait_for_release()
            return 201, message.as_json()
        if step.status >= 300:
            return step.status, _error_json(step.status, step.error_code or step.status, step.error_message)
        for required in ("To", "Body"):
            if not form.get(required):
                return 400, _error_json(400, 21604 if required == "To" else 21602, f"A '{required}' is required.")
        if not (form.get("From") or form.get("MessagingServiceSid")):
            return 400, _error_json(400, 21603, "A 'From' phone number is required.")
        return 201, self.owner._store(account, form).as_json()

    def _basic_auth(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user, password


@contextmanager
def running_twilio_standin(
    account_sid: str | None = None, auth_token: str = "standin-auth-token"
) -> Iterator[TwilioStandIn]:
    """`with running_twilio_standin() as twilio: ...`; a pytest fixture can simply yield from it."""
    with TwilioStandIn(account_sid, auth_token) as standin:
        yield standin
