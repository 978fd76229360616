"""Alert texts through Twilio: the body on-call phones filter on, and a notifier that never texts twice.

The notifier claims each (alert, stage, number) in a ledger before sending, so a repeated call sends
nothing; it rate-limits each number; it retries timeouts, connection errors and 5xx with exponential
backoff; and after an ambiguous failure (a timeout: Twilio may already have accepted the text) it
lists the messages to that number and adopts a matching one instead of sending again. Whatever the
provider does, `notify` returns records and does not raise: a Twilio outage must not stop the
alert pipeline.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import requests
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from factory_pipelines.alert_model import AlertRecord, NotificationRecord, NotificationStatus
from factory_pipelines.telemetry import utc_now

if TYPE_CHECKING:
    from factory_pipelines.settings import FactorySettings

log = logging.getLogger(__name__)

CHANNEL = "sms"
DEFAULT_TAG = "[6G-MAS ALERT]"
SEVERITY_MARKER = "\N{LARGE RED CIRCLE}"
# The marker makes the text UCS-2: 67 UTF-16 units per part of a multi-part SMS. Two parts.
BODY_BUDGET_UTF16 = 2 * 67
MESSAGE_MIN_CHARS = 40  # the message keeps at least this much even when the other lines are long
FIELD_MAX_CHARS = 40  # source and asset names are cut to this
ELLIPSIS = "\N{HORIZONTAL ELLIPSIS}"
# Provider timestamps come from Twilio's clock, whole seconds; a matching body found this long before
# the first attempt still counts as ours (the body names the alert and the stage).
DUPLICATE_LOOKBACK = timedelta(minutes=2)
DUPLICATE_LIST_LIMIT = 20


class NotificationLedger(Protocol):
    """Where claims and outcomes of notifications live (the alert book implements it)."""

    def claim_notification(self, alert_id: str, channel: str, recipient: str, stage: int, now: datetime) -> bool:
        """True for the first claim of (alert, channel, recipient, stage); False when it was claimed before."""
        ...

    def record_notification(self, record: NotificationRecord) -> bool: ...

    def texts_sent_since(self, recipient: str, since: datetime) -> int:
        """Texts sent (status SENT) to `recipient` at or after `since`."""
        ...


# ---- the body ----


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _shorten(text: str, max_units: int) -> str:
    """Cut to `max_units` UTF-16 units, at a word boundary when one is near, with an ellipsis."""
    if _utf16_units(text) <= max_units:
        return text
    cut = text
    while cut and _utf16_units(cut) > max_units - 1:
        cut = cut[:-1]
    word_end = cut.rfind(" ")
    if word_end >= len(cut) * 2 // 3:
        cut = cut[:word_end]
    return cut.rstrip(" ,;:.-") + ELLIPSIS


def sms_body(alert: AlertRecord, *, tag: str = DEFAULT_TAG, stage: int = 0, budget: int = BODY_BUDGET_UTF16) -> str:
    """The earlier agents' three-line layout (marker, tag and level; `Agent:`; `Msg:`) plus asset and alert id.

    The first line is what phones filter on, so it keeps the level as sent (EMERGENCY stays EMERGENCY).
    The message is cut so the text fits `budget` UTF-16 units (two SMS parts), but never below
    MESSAGE_MIN_CHARS; the alert id is never cut, it is what the reader acknowledges with.
    """
    level = alert.level.strip().upper() if alert.level and alert.level.strip() else alert.severity.value
    headline = f"{SEVERITY_MARKER} {tag} {level}"
    if stage > 0:
        headline += f" (escalation {stage})"
    lines_before = [headline, f"Agent: {_shorten(_one_line(alert.source), FIELD_MAX_CHARS)}"]
    lines_after = []
    if alert.asset_id:
        lines_after.append(f"Asset: {_shorten(_one_line(alert.asset_id), FIELD_MAX_CHARS)}")
    lines_after.append(f"Alert: {alert.alert_id}")
    fixed = "\n".join([*lines_before, "Msg: ", *lines_after])
    room = max(MESSAGE_MIN_CHARS, budget - _utf16_units(fixed))
    message_line = f"Msg: {_shorten(_one_line(alert.message), room)}"
    return "\n".join([*lines_before, message_line, *lines_after])


# ---- sending ----


@dataclass(frozen=True)
class _Delivery:
    status: NotificationStatus
    detail: str
    attempts: int
    sid: str | None = None


class _AcceptedBeforeTimeout(Exception):
    """Raised inside the retry loop when the listing shows the provider did accept an earlier attempt."""

    def __init__(self, sid: str) -> None:
        super().__init__(sid)
        self.sid = sid


def _http_status(exc: BaseException) -> int | None:
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        return int(exc.status)
    if isinstance(exc, TwilioException) and len(exc.args) > 1:
        # Page.process_response raises TwilioException("Unable to fetch page", response)
        return getattr(exc.args[1], "status_code", None)
    return None


def _is_ambiguous(exc: BaseException) -> bool:
    """The request may have reached Twilio and been accepted although no answer came back."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return False  # never connected, so nothing was sent
    return isinstance(exc, requests.exceptions.Timeout | requests.exceptions.ConnectionError)


def _is_transient(exc: BaseException) -> bool:
    """Worth another attempt: timeouts, connection errors, 5xx and 429. Other 4xx would fail the same way."""
    if isinstance(exc, requests.exceptions.Timeout | requests.exceptions.ConnectionError):
        return True
    status = _http_status(exc)
    return status is not None and (status >= 500 or status == 429)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TwilioRestException):
        message = exc.msg.split(": ", 1)[1] if exc.msg.startswith("Unable to ") and ": " in exc.msg else exc.msg
        code = f" error {exc.code}" if exc.code and exc.code != exc.status else ""
        return f"Twilio {exc.status}{code}: {message}"
    if isinstance(exc, TwilioServiceException):
        return f"Twilio {exc.status} error {exc.code}: {exc.detail or exc.title}"
    status = _http_status(exc)
    if status is not None:
        return f"Twilio {status}: {exc.args[0]}"
    return f"{type(exc).__name__}: {exc}"


class SmsNotifier:
    """Texts alerts to phone numbers through Twilio (or a Twilio-compatible endpoint).

    Without all three of account SID, auth token and sender number it sends nothing and records every
    would-be text as NOT_SENT "not sent: no credentials", so the platform runs without Twilio.
    `clock` is the wall clock used to bound the duplicate check against Twilio's own timestamps;
    `sleep` waits out the backoff (both injectable for tests). The defaults keep the worst case of
    one text (every attempt and every duplicate check timing out) near 30 s, inside the alert
    book's 60 s claim lease, so no other worker takes over a claim that is still being sent.
    """

    def __init__(
        self,
        account_sid: str | None = None,
        auth_token: str | None = None,
        from_number: str | None = None,
        *,
        api_base_url: str | None = None,
        tag: str = DEFAULT_TAG,
        rate_limit: int = 5,
        rate_window_s: float = 600.0,
        timeout_s: float = 5.0,
        max_attempts: int = 3,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 8.0,
        max_parallel: int = 4,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_limit < 1 or rate_window_s <= 0 or timeout_s <= 0 or max_attempts < 1 or max_parallel < 1:
            raise ValueError("rate_limit, max_attempts, max_parallel >= 1 and rate_window_s, timeout_s > 0 required")
        self.from_number = from_number
        self.tag = tag
        self.rate_limit = rate_limit
        self.rate_window_s = rate_window_s
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.max_parallel = max_parallel
        self._clock = clock
        self._sleep = sleep
        self._client: Client | None = None
        if account_sid and auth_token and from_number:
            self._client = Client(account_sid, auth_token, http_client=TwilioHttpClient(timeout=timeout_s))
            if api_base_url:
                self._client.api.base_url = api_base_url.rstrip("/")

    @classmethod
    def from_settings(cls, settings: FactorySettings, **overrides: object) -> SmsNotifier:
        """The notifier the platform's settings describe (TWILIO_* from the environment, sms_* from settings)."""
        sid = settings.twilio_account_sid.get_secret_value() if settings.twilio_account_sid else None
        token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else None
        options: dict[str, object] = {
            "api_base_url": settings.twilio_api_base_url,
            "tag": settings.sms_tag,
            "rate_limit": settings.sms_rate_limit,
            "rate_window_s": settings.sms_rate_window_s,
            **overrides,
        }
        return cls(sid, token, settings.twilio_from_number, **options)  # type: ignore[arg-type]

    @property
    def has_credentials(self) -> bool:
        return self._client is not None

    def notify(
        self,
        alert: AlertRecord,
        recipients: Sequence[str],
        *,
        stage: int,
        ledger: NotificationLedger,
        now: datetime,
    ) -> list[NotificationRecord]:
        """Text `alert` (escalation `stage`) to each recipient not yet texted for it; the records of this call.

        Numbers already claimed for this alert and stage are skipped and have no record here. The
        records are also written through `ledger`; a ledger that fails to record is logged, not raised.
        """
        body = sms_body(alert, tag=self.tag, stage=stage)
        numbers = list(dict.fromkeys(n.strip() for n in recipients if n and n.strip()))

        def record(
            recipient: str, status: NotificationStatus, detail: str, attempts: int = 0, sid: str | None = None
        ) -> NotificationRecord:
            return NotificationRecord(
                alert_id=alert.alert_id,
                channel=CHANNEL,
                recipient=recipient,
                stage=stage,
                status=status,
                detail=detail,
                provider_id=sid,
                attempts=attempts,
                body=body,
                created_at=now,
            )

        if not numbers:
            if not self._claim(ledger, alert.alert_id, "", stage, now):
                return []
            return self._save(ledger, [record("", NotificationStatus.NOT_SENT, "not sent: no recipients")])

        decided: dict[str, NotificationRecord] = {}
        to_send: list[str] = []
        for number in numbers:
            try:
                if not ledger.claim_notification(alert.alert_id, CHANNEL, number, stage, now):
                    continue
            except Exception as exc:
                log.warning("could not claim the text of %s to %s: %s", alert.alert_id, number, exc)
                decided[number] = record(number, NotificationStatus.NOT_SENT, f"not sent: ledger unavailable ({exc})")
                continue
            if self._client is None:
                decided[number] = record(number, NotificationStatus.NOT_SENT, "not sent: no credentials")
                continue
            recent = self._texts_in_window(ledger, number, now)
            if recent >= self.rate_limit:
                texts = "text" if recent == 1 else "texts"
                detail = f"not sent: rate limited ({recent} {texts} in the last {self.rate_window_s:g}s)"
                decided[number] = record(number, NotificationStatus.NOT_SENT, detail)
                continue
            to_send.append(number)

        for number, delivery in zip(to_send, self._deliver_all(to_send, body), strict=True):
            decided[number] = record(number, delivery.status, delivery.detail, delivery.attempts, delivery.sid)

        ordered = [decided[number] for number in numbers if number in decided]
        return self._save(ledger, ordered)

    # ---- ledger helpers: a failing ledger is reported, never raised ----

    @staticmethod
    def _claim(ledger: NotificationLedger, alert_id: str, recipient: str, stage: int, now: datetime) -> bool:
        try:
            return ledger.claim_notification(alert_id, CHANNEL, recipient, stage, now)
        except Exception as exc:
            log.warning("could not claim a notification of %s: %s", alert_id, exc)
            return True  # nothing is sent on this path, so recording twice is the worst outcome

    def _texts_in_window(self, ledger: NotificationLedger, number: str, now: datetime) -> int:
        try:
            return ledger.texts_sent_since(number, now - timedelta(seconds=self.rate_window_s))
        except Exception as exc:
            log.warning("could not count recent texts to %s, sending anyway: %s", number, exc)
            return 0

    @staticmethod
    def _save(ledger: NotificationLedger, records: list[NotificationRecord]) -> list[NotificationRecord]:
        for item in records:
            try:
                ledger.record_notification(item)
            except Exception as exc:
                log.warning(
                    "could not record the %s text of %s to %s: %s", item.status, item.alert_id, item.recipient, exc
                )
        return records

    # ---- Twilio ----

    def _deliver_all(self, numbers: list[str], body: str) -> list[_Delivery]:
        """Send to all numbers at once, so one slow number does not hold up the others."""
        if len(numbers) <= 1:
            return [self._deliver(number, body) for number in numbers]
        with ThreadPoolExecutor(max_workers=min(self.max_parallel, len(numbers)), thread_name_prefix="sms") as pool:
            return list(pool.map(lambda number: self._deliver(number, body), numbers))

    def _deliver(self, to: str, body: str) -> _Delivery:
        """One text with retries; a Twilio answer or failure of any kind becomes a _Delivery."""
        client = self._client
        assert client is not None
        started = self._clock()
        ambiguous = False  # an earlier attempt may have been accepted: look before sending again
        attempts = 0
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_exponential(multiplier=self.backoff_initial_s, max=self.backoff_max_s),
            retry=retry_if_exception(_is_transient),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    if ambiguous:
                        adopted = self._find_accepted(client, to, body, started)
                        if adopted is not None:
                            raise _AcceptedBeforeTimeout(adopted)
                    try:
                        message = client.messages.create(to=to, from_=self.from_number, body=body)
                    except Exception as exc:
                        ambiguous = ambiguous or _is_ambiguous(exc)
                        raise
                    return _Delivery(NotificationStatus.SENT, f"sent: {message.status}", attempts, message.sid)
        except _AcceptedBeforeTimeout as accepted:
            detail = "sent: accepted by Twilio before a timeout; adopted, not sent again"
            return _Delivery(NotificationStatus.SENT, detail, attempts, accepted.sid)
        except Exception as exc:
            if ambiguous:
                late = self._find_accepted_quietly(client, to, body, started)
                if late is not None:
                    detail = "sent: accepted by Twilio before a timeout; adopted, not sent again"
                    return _Delivery(NotificationStatus.SENT, detail, attempts, late)
            retried = f" after {attempts} attempts" if attempts > 1 else ""
            log.warning("text to %s failed%s: %s", to, retried, _describe(exc))
            return _Delivery(NotificationStatus.FAILED, f"failed{retried}: {_describe(exc)}", attempts)
        raise AssertionError("unreachable: tenacity either returns, or raises the last error")

    def _find_accepted(self, client: Client, to: str, body: str, started: datetime) -> str | None:
        """The SID of a message with this body to `to`, created since the first attempt (give or take clock skew).

        Lists by recipient only: Twilio's DateSent filter would miss a text still queued (not yet sent).
        """
        since = started - DUPLICATE_LOOKBACK
        for message in client.messages.list(to=to, limit=DUPLICATE_LIST_LIMIT):
            created = message.date_created
            recent = not isinstance(created, datetime) or created >= since
            if recent and message.body == body and message.sid:
                return message.sid
        return None

    def _find_accepted_quietly(self, client: Client, to: str, body: str, started: datetime) -> str | None:
        try:
            return self._find_accepted(client, to, body, started)
        except Exception as exc:
            log.warning("could not check whether Twilio accepted a timed-out text to %s: %s", to, exc)
            return None
