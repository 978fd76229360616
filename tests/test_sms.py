"""The SMS notifier against a loopback Twilio stand-in, through the real `twilio` client.

The ledger here is a small in-memory stand-in for the alert book's notification table (another
module's storage); the test at the end runs against the real AlertBook when it is importable.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from factory_pipelines.alert_model import AlertRecord, AlertState, NotificationRecord, NotificationStatus
from factory_pipelines.settings import load_settings
from factory_pipelines.sms import SEVERITY_MARKER, NotificationLedger, SmsNotifier, sms_body
from factory_pipelines.telemetry import Severity
from tests.conftest import find_free_port
from tests.twilio_standin import TwilioStandIn

FROM = "+15550000000"
ON_CALL = "+15551110001"
SECOND = "+15551110002"
T0 = datetime(2025, 3, 4, 8, 0, tzinfo=UTC)


class MemoryLedger:
    """Claims and records in memory, with the alert book's semantics: one notification per alert, channel,
    number and stage; a claim in flight or a sent text blocks another claim, a not-sent or failed one does not.
    """

    def __init__(self) -> None:
        self.settled: dict[tuple[str, str, str, int], NotificationStatus] = {}
        self.in_flight: set[tuple[str, str, str, int]] = set()
        self.records: list[NotificationRecord] = []

    def claim_notification(self, alert_id: str, channel: str, recipient: str, stage: int, now: datetime) -> bool:
        key = (alert_id, channel, recipient, stage)
        if key in self.in_flight or self.settled.get(key) == NotificationStatus.SENT:
            return False
        self.in_flight.add(key)
        return True

    def record_notification(self, record: NotificationRecord) -> bool:
        key = (record.alert_id, record.channel, record.recipient, record.stage)
        if self.settled.get(key) == NotificationStatus.SENT:
            return False
        self.in_flight.discard(key)
        self.settled[key] = record.status
        self.records.append(record)
        return True

    def texts_sent_since(self, recipient: str, since: datetime) -> int:
        return sum(
            1
            for r in self.records
            if r.recipient == recipient and r.status == NotificationStatus.SENT and r.created_at >= since
        )


def make_alert(
    alert_id: str = "ALR-0001", *, level: str | None = None, message: str = "RUL below 20 cycles"
) -> AlertRecord:
    return AlertRecord(
        alert_id=alert_id,
        dedup_key=f"rul_low:{alert_id}",
        rule="rul_low",
        type="RUL_LOW",
        severity=Severity.CRITICAL,
        level=level,
        source="rul_model",
        asset_id="engine-7",
        message=message,
        state=AlertState.ACTIVE_UNACK,
        first_seen=T0,
        last_seen=T0,
    )


@pytest.fixture
def twilio() -> Iterator[TwilioStandIn]:
    with TwilioStandIn() as standin:
        yield standin


def notifier_for(standin: TwilioStandIn, **options: object) -> SmsNotifier:
    """Tiny timeout and backoff so failure paths take a fraction of a second."""
    settings: dict[str, object] = {
        "api_base_url": standin.base_url,
        "timeout_s": 0.5,
        "max_attempts": 3,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.02,
        **options,
    }
    return SmsNotifier(standin.account_sid, standin.auth_token, FROM, **settings)  # type: ignore[arg-type]


# ---- body ----


def test_body_keeps_the_earlier_layout_with_asset_and_alert_id() -> None:
    body = sms_body(make_alert(level="emergency"), tag="[6G-MAS ALERT]")

    assert body.splitlines() == [
        f"{SEVERITY_MARKER} [6G-MAS ALERT] EMERGENCY",
        "Agent: rul_model",
        "Msg: RUL below 20 cycles",
        "Asset: engine-7",
        "Alert: ALR-0001",
    ]


def test_body_uses_severity_without_level_and_says_escalation() -> None:
    first_line = sms_body(make_alert(), tag="[T]", stage=2).splitlines()[0]

    assert first_line == f"{SEVERITY_MARKER} [T] CRITICAL (escalation 2)"


def test_long_message_is_cut_to_two_sms_parts_and_keeps_the_alert_id() -> None:
    message = "Bearing temperature rising steadily\nacross the last windows; " + "vibration high " * 30
    body = sms_body(make_alert(message=message))

    units = len(body.encode("utf-16-le")) // 2
    assert units <= 2 * 67
    msg_line = body.splitlines()[2]
    assert msg_line.startswith("Msg: Bearing temperature rising steadily across")  # one line, whitespace folded
    assert msg_line.endswith("\N{HORIZONTAL ELLIPSIS}")
    assert body.splitlines()[-1] == "Alert: ALR-0001"


# ---- sending ----


def test_sends_exact_form_fields_with_basic_auth(twilio: TwilioStandIn) -> None:
    ledger = MemoryLedger()
    alert = make_alert(level="EMERGENCY")

    records = notifier_for(twilio, tag="[6G-MAS ALERT]").notify(alert, [ON_CALL], stage=0, ledger=ledger, now=T0)

    [post] = twilio.message_posts
    expected_body = sms_body(alert, tag="[6G-MAS ALERT]")
    assert post.path == f"/2010-04-01/Accounts/{twilio.account_sid}/Messages.json"
    assert post.form == {"To": ON_CALL, "From": FROM, "Body": expected_body}
    assert post.auth == (twilio.account_sid, twilio.auth_token)
    assert post.form["Body"].splitlines()[0] == f"{SEVERITY_MARKER} [6G-MAS ALERT] EMERGENCY"
    [record] = records
    assert record.status == NotificationStatus.SENT
    assert record.provider_id == twilio.messages[0].sid
    assert record.provider_id.startswith("SM") and len(record.provider_id) == 34
    assert (record.attempts, record.recipient, record.stage, record.body) == (1, ON_CALL, 0, expected_body)
    assert ledger.records == records


def test_retries_a_500_then_sends_once(twilio: TwilioStandIn) -> None:
    twilio.fail_next_posts(1, status=500)

    [record] = notifier_for(twilio).notify(make_alert(), [ON_CALL], stage=0, ledger=MemoryLedger(), now=T0)

    assert [p.answered_status for p in twilio.message_posts] == [500, 201]
    assert len(twilio.messages) == 1
    assert record.status == NotificationStatus.SENT
    assert record.attempts == 2
    assert record.provider_id == twilio.messages[0].sid


def test_timeout_after_twilio_accepted_adopts_the_sid_instead_of_sending_again(twilio: TwilioStandIn) -> None:
    twilio.stall_next_posts(1, create=True)

    [record] = notifier_for(twilio).notify(make_alert(), [ON_CALL], stage=0, ledger=MemoryLedger(), now=T0)

    assert len(twilio.message_posts) == 1
    [message] = twilio.messages
    assert record.status == NotificationStatus.SENT
    assert record.provider_id == message.sid
    assert record.attempts == 2
    assert "adopted" in record.detail
    listing = [r for r in twilio.requests if r.method == "GET"]
    assert [r.query.get("To") for r in listing] == [ON_CALL]


def test_timeout_before_twilio_accepted_sends_again_once(twilio: TwilioStandIn) -> None:
    ledger = MemoryLedger()
    notifier = notifier_for(twilio)
    notifier.notify(make_alert("ALR-older"), [ON_CALL], stage=0, ledger=ledger, now=T0)  # another body, same number
    twilio.stall_next_posts(1, create=False)

    [record] = notifier.notify(make_alert("ALR-0002"), [ON_CALL], stage=0, ledger=ledger, now=T0)

    ours = [m for m in twilio.messages if m.body.endswith("Alert: ALR-0002")]
    assert len(ours) == 1
    assert record.status == NotificationStatus.SENT
    assert record.provider_id == ours[0].sid
    assert record.attempts == 2


def test_400_fails_without_retry_and_keeps_twilios_message(twilio: TwilioStandIn) -> None:
    twilio.reject_next_posts(1, status=400, code=21211, message="The 'To' number +1555 is not a valid phone number.")

    [record] = notifier_for(twilio).notify(make_alert(), [ON_CALL], stage=0, ledger=MemoryLedger(), now=T0)

    assert len(twilio.message_posts) == 1
    assert record.status == NotificationStatus.FAILED
    assert record.attempts == 1
    assert "21211" in record.detail
    assert "The 'To' number +1555 is not a valid phone number." in record.detail
    assert record.provider_id is None


def test_twilio_outage_fails_after_all_attempts_without_raising(twilio: TwilioStandIn) -> None:
    twilio.fail_next_posts(6, status=503)
    ledger = MemoryLedger()

    records = notifier_for(twilio, max_attempts=3).notify(
        make_alert(), [ON_CALL, SECOND], stage=0, ledger=ledger, now=T0
    )

    assert [r.status for r in records] == [NotificationStatus.FAILED, NotificationStatus.FAILED]
    assert [r.attempts for r in records] == [3, 3]
    assert all("503" in r.detail for r in records)
    assert twilio.messages == []
    assert len(twilio.message_posts) == 6
    assert ledger.records == records


def test_unreachable_endpoint_fails_without_raising() -> None:
    ledger = MemoryLedger()
    notifier = SmsNotifier(
        "AC" + "0" * 32,
        "token",
        FROM,
        api_base_url=f"http://127.0.0.1:{find_free_port()}",
        timeout_s=0.5,
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
    )

    [record] = notifier.notify(make_alert(), [ON_CALL], stage=0, ledger=ledger, now=T0)

    assert record.status == NotificationStatus.FAILED
    assert record.attempts == 3
    assert "ConnectionError" in record.detail


def test_wrong_auth_token_is_a_401_without_retry(twilio: TwilioStandIn) -> None:
    notifier = SmsNotifier(twilio.account_sid, "not-the-token", FROM, api_base_url=twilio.base_url, timeout_s=0.5)

    [record] = notifier.notify(make_alert(), [ON_CALL], stage=0, ledger=MemoryLedger(), now=T0)

    assert [r.answered_status for r in twilio.requests] == [401]
    assert record.status == NotificationStatus.FAILED
    assert "401" in record.detail


def test_rate_limit_per_number_and_window(twilio: TwilioStandIn) -> None:
    ledger = MemoryLedger()
    notifier = notifier_for(twilio, rate_limit=5, rate_window_s=600)
    for i in range(5):
        [sent] = notifier.notify(
            make_alert(f"ALR-{i}"), [ON_CALL], stage=0, ledger=ledger, now=T0 + timedelta(seconds=i)
        )
        assert sent.status == NotificationStatus.SENT

    limited, other = notifier.notify(
        make_alert("ALR-5"), [ON_CALL, SECOND], stage=0, ledger=ledger, now=T0 + timedelta(seconds=60)
    )

    assert limited.status == NotificationStatus.NOT_SENT
    assert limited.detail == "not sent: rate limited (5 texts in the last 600s)"
    assert other.status == NotificationStatus.SENT
    assert len(twilio.messages_to(ON_CALL)) == 5
    assert len(twilio.messages_to(SECOND)) == 1

    [later] = notifier.notify(
        make_alert("ALR-6"), [ON_CALL], stage=0, ledger=ledger, now=T0 + timedelta(seconds=4 + 601)
    )

    assert later.status == NotificationStatus.SENT
    assert len(twilio.messages_to(ON_CALL)) == 6


def test_no_credentials_records_not_sent_and_sends_nothing(twilio: TwilioStandIn) -> None:
    ledger = MemoryLedger()
    notifier = SmsNotifier(None, None, None, api_base_url=twilio.base_url)

    records = notifier.notify(make_alert(), [ON_CALL, SECOND], stage=0, ledger=ledger, now=T0)

    assert not notifier.has_credentials
    assert [(r.recipient, r.status, r.detail) for r in records] == [
        (ON_CALL, NotificationStatus.NOT_SENT, "not sent: no credentials"),
        (SECOND, NotificationStatus.NOT_SENT, "not sent: no credentials"),
    ]
    assert ledger.records == records
    assert twilio.requests == []


def test_partial_credentials_count_as_none(twilio: TwilioStandIn) -> None:
    notifier = SmsNotifier(twilio.account_sid, twilio.auth_token, None, api_base_url=twilio.base_url)

    [record] = notifier.notify(make_alert(), [ON_CALL], stage=0, ledger=MemoryLedger(), now=T0)

    assert record.detail == "not sent: no credentials"
    assert twilio.requests == []


def test_no_recipients_is_one_not_sent_record(twilio: TwilioStandIn) -> None:
    ledger = MemoryLedger()

    records = notifier_for(twilio).notify(make_alert(), [" ", ""], stage=0, ledger=ledger, now=T0)

    assert [(r.recipient, r.status, r.detail) for r in records] == [
        ("", NotificationStatus.NOT_SENT, "not sent: no recipients")
    ]
    assert twilio.requests == []


def test_notify_twice_for_one_alert_and_stage_texts_once(twilio: TwilioStandIn) -> None:
    ledger = MemoryLedger()
    notifier = notifier_for(twilio)
    alert = make_alert()

    first = notifier.notify(alert, [ON_CALL, ON_CALL], stage=0, ledger=ledger, now=T0)
    second = notifier.notify(alert, [ON_CALL], stage=0, ledger=ledger, now=T0 + timedelta(seconds=5))
    escalation = notifier.notify(alert, [ON_CALL], stage=1, ledger=ledger, now=T0 + timedelta(seconds=900))

    assert [r.status for r in first] == [NotificationStatus.SENT]
    assert second == []
    assert [r.status for r in escalation] == [NotificationStatus.SENT]
    bodies = [m.body.splitlines()[0] for m in twilio.messages_to(ON_CALL)]
    assert bodies == [
        f"{SEVERITY_MARKER} [6G-MAS ALERT] CRITICAL",
        f"{SEVERITY_MARKER} [6G-MAS ALERT] CRITICAL (escalation 1)",
    ]


def test_several_numbers_are_texted_in_order_of_the_list(twilio: TwilioStandIn) -> None:
    numbers = [f"+1555222000{i}" for i in range(4)]

    records = notifier_for(twilio).notify(make_alert(), numbers, stage=0, ledger=MemoryLedger(), now=T0)

    assert [r.recipient for r in records] == numbers
    assert {m.to for m in twilio.messages} == set(numbers)
    assert sorted(r.provider_id or "" for r in records) == sorted(m.sid for m in twilio.messages)


def test_from_settings_reads_twilio_environment_and_sms_settings(
    twilio: TwilioStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", twilio.account_sid)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", twilio.auth_token)
    monkeypatch.setenv("TWILIO_FROM_NUMBER", FROM)
    monkeypatch.setenv("TWILIO_API_BASE_URL", twilio.base_url)
    monkeypatch.setenv("FACTORY_SMS_TAG", "[PLANT-7]")
    settings = load_settings(data_dir=tmp_path / "data")

    notifier = SmsNotifier.from_settings(settings, timeout_s=0.5)
    notifier.notify(make_alert(), [ON_CALL], stage=0, ledger=MemoryLedger(), now=T0)

    [post] = twilio.message_posts
    assert post.form["From"] == FROM
    assert post.form["Body"].splitlines()[0] == f"{SEVERITY_MARKER} [PLANT-7] CRITICAL"
    assert notifier.rate_limit == settings.sms_rate_limit


def test_memory_ledger_satisfies_the_protocol() -> None:
    ledger: NotificationLedger = MemoryLedger()  # a type checker holds the test double to the protocol

    assert ledger.claim_notification("a", "sms", "+1", 0, T0) is True
    assert ledger.claim_notification("a", "sms", "+1", 0, T0) is False


def test_a_rate_limited_text_goes_out_on_a_later_call(twilio: TwilioStandIn) -> None:
    ledger = MemoryLedger()
    notifier = notifier_for(twilio, rate_limit=1, rate_window_s=60)
    notifier.notify(make_alert("ALR-a"), [ON_CALL], stage=0, ledger=ledger, now=T0)

    [held] = notifier.notify(make_alert("ALR-b"), [ON_CALL], stage=0, ledger=ledger, now=T0 + timedelta(seconds=1))
    [retried] = notifier.notify(make_alert("ALR-b"), [ON_CALL], stage=0, ledger=ledger, now=T0 + timedelta(seconds=61))

    assert held.status == NotificationStatus.NOT_SENT
    assert retried.status == NotificationStatus.SENT
    assert [m.body.splitlines()[-1] for m in twilio.messages] == ["Alert: ALR-a", "Alert: ALR-b"]


def test_against_the_real_alert_book(twilio: TwilioStandIn, tmp_path: Path) -> None:
    """The notifier on the alert book over a real SQLite file: claims, outcomes and the rate limit persist."""
    # Imported here: the store pulls in MLflow, which the other tests of this file do not need.
    from factory_pipelines.alert_book import AlertBook
    from factory_pipelines.alert_model import AlertCandidate
    from factory_pipelines.store import ServingStore

    store = ServingStore(f"sqlite:///{tmp_path / 'serving.db'}")
    try:
        book = AlertBook(store.engine)
        candidate = AlertCandidate(
            rule="rul_low",
            type="RUL_LOW",
            severity=Severity.CRITICAL,
            level="EMERGENCY",
            source="rul_model",
            asset_id="engine-7",
            message="RUL below 20 cycles",
            dedup_key="rul_model:engine-7:RUL_LOW",
            observed_at=T0,
        )
        alert = book.raise_or_repeat(candidate, now=T0).alert
        notifier = notifier_for(twilio, rate_limit=1, rate_window_s=600)
        twilio.fail_next_posts(1)

        first = notifier.notify(alert, [ON_CALL, SECOND], stage=0, ledger=book, now=T0)
        again = notifier.notify(alert, [ON_CALL, SECOND], stage=0, ledger=book, now=T0 + timedelta(seconds=1))
        escalation = notifier.notify(alert, [ON_CALL], stage=1, ledger=book, now=T0 + timedelta(seconds=2))

        assert [r.status for r in first] == [NotificationStatus.SENT, NotificationStatus.SENT]
        assert sorted(r.attempts for r in first) == [1, 2]  # one of the two met the scripted 500
        assert again == []
        assert [(r.status, r.detail) for r in escalation] == [
            (NotificationStatus.NOT_SENT, "not sent: rate limited (1 text in the last 600s)")
        ]
        assert len(twilio.messages) == 2
        stored = {(n.recipient, n.stage): n for n in book.notifications(alert.alert_id)}
        assert stored[(ON_CALL, 0)].provider_id == first[0].provider_id
        assert stored[(SECOND, 0)].provider_id == first[1].provider_id
        assert stored[(ON_CALL, 1)].status == NotificationStatus.NOT_SENT
        assert stored[(ON_CALL, 0)].body.splitlines()[0].endswith("EMERGENCY")
    finally:
        store.dispose()
