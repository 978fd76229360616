"""The alert book on the real serving store: lifecycle, races between processes, texts, escalation, paging.

Every test runs on a SQLite file and, when one answers, on PostgreSQL; the clock is the `now`
handed in, so timing is exact and nothing sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

import factory_pipelines
from factory_pipelines.alert_book import AUTO_CLEAR_ACTOR, AlertBook, alerts_table, new_alert_id
from factory_pipelines.alert_model import (
    ActionPlan,
    AlertCandidate,
    AlertLineage,
    AlertState,
    NotificationRecord,
    NotificationStatus,
)
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import Severity

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
Result = TypeVar("Result")


@pytest.fixture
def store(db_url: str) -> Iterator[ServingStore]:
    opened = ServingStore(db_url)
    yield opened
    opened.dispose()


@pytest.fixture
def book(store: ServingStore) -> AlertBook:
    return AlertBook(store.engine)


@pytest.fixture
def second_book(store: ServingStore) -> Iterator[AlertBook]:
    """Another AlertBook on its own engine (its own connections), as another process would have."""
    other = ServingStore(store.db_url, apply_migrations=False)
    yield AlertBook(other.engine)
    other.dispose()


def candidate(
    *,
    key: str = "rul_lstm:robot-1:RUL_LOW",
    at: datetime = T0,
    severity: Severity = Severity.WARNING,
    message: str = "RUL 180 cycles, below 200",
    cooldown_s: float = 0.0,
    auto_clear_s: float | None = None,
    source: str = "rul_lstm",
    asset_id: str = "robot-1",
    alert_type: str = "RUL_LOW",
    window_key: str = "2026-11-25T12:00",
) -> AlertCandidate:
    return AlertCandidate(
        rule="rul_low",
        type=alert_type,
        severity=severity,
        source=source,
        asset_id=asset_id,
        message=message,
        dedup_key=key,
        cooldown_s=cooldown_s,
        auto_clear_s=auto_clear_s,
        observed_at=at,
        lineage=AlertLineage(window_key=window_key, model_name=source, model_version="3", mlflow_run_id="run-1"),
        evidence={"rul": 180.0, "threshold": 200.0, "at": at},
    )


def test_new_repeat_ack_clear(book: AlertBook) -> None:
    first = book.raise_or_repeat(candidate(), now=T0)
    assert first.created and not first.reopened and not first.severity_raised
    alert = first.alert
    assert alert.alert_id.startswith("al-")
    assert (alert.count, alert.state, alert.severity) == (1, AlertState.ACTIVE_UNACK, Severity.WARNING)
    assert alert.first_seen == alert.last_seen == T0
    assert alert.lineage.window_key == "2026-11-25T12:00" and alert.lineage.mlflow_run_id == "run-1"
    assert alert.evidence["at"] == T0.isoformat()

    later = T0 + timedelta(minutes=5)
    repeat = book.raise_or_repeat(
        candidate(at=later, severity=Severity.CRITICAL, message="RUL 90 cycles", window_key="w2"), now=later
    )
    assert not repeat.created and repeat.severity_raised
    assert repeat.alert.alert_id == alert.alert_id
    assert (repeat.alert.count, repeat.alert.severity) == (2, Severity.CRITICAL)
    assert (repeat.alert.first_seen, repeat.alert.last_seen) == (T0, later)
    assert repeat.alert.message == "RUL 90 cycles" and repeat.alert.lineage.window_key == "w2"

    # A WARNING after CRITICAL counts, and never lowers the severity.
    third = book.raise_or_repeat(candidate(at=later + timedelta(minutes=1)), now=later + timedelta(minutes=1))
    assert (third.alert.count, third.alert.severity, third.severity_raised) == (3, Severity.CRITICAL, False)

    # Acknowledged from another zone: stored and returned in UTC.
    ack_at = datetime(2026, 11, 25, 14, 10, tzinfo=timezone(timedelta(hours=2)))
    acked = book.acknowledge(alert.alert_id, by="maria", comment="on my way", now=ack_at)
    assert acked.state == AlertState.ACTIVE_ACK
    assert (acked.acknowledged_by, acked.ack_comment) == ("maria", "on my way")
    assert acked.acknowledged_at == datetime(2026, 11, 25, 12, 10, tzinfo=UTC)
    assert acked.acknowledged_at is not None and acked.acknowledged_at.utcoffset() == timedelta(0)
    again = book.acknowledge(alert.alert_id, by="li", comment="me too", now=ack_at + timedelta(minutes=1))
    assert (again.acknowledged_by, again.acknowledged_at) == ("maria", acked.acknowledged_at)

    cleared = book.clear(alert.alert_id, by="maria", comment="bearing replaced", now=T0 + timedelta(hours=1))
    assert cleared.state == AlertState.CLEARED_ACK and not cleared.is_open
    assert (cleared.cleared_by, cleared.clear_comment) == ("maria", "bearing replaced")
    assert book.clear(alert.alert_id, by="li", comment=None, now=T0 + timedelta(hours=2)).cleared_by == "maria"

    events = [(e["event"], e["by"]) for e in book.history(alert.alert_id)]
    assert events == [
        ("raised", None),
        ("repeated", None),
        ("severity_raised", None),
        ("repeated", None),
        ("acknowledged", "maria"),
        ("cleared", "maria"),
    ]
    # Cooldown 0: the key is free again, so a recurrence is a new alert.
    fresh = book.raise_or_repeat(candidate(at=T0 + timedelta(hours=3)), now=T0 + timedelta(hours=3))
    assert fresh.created and fresh.alert.alert_id != alert.alert_id and fresh.alert.count == 1


def test_a_late_sighting_counts_but_does_not_rewrite_the_alert(book: AlertBook) -> None:
    newest = T0 + timedelta(minutes=10)
    book.raise_or_repeat(candidate(at=newest, message="newest"), now=newest)
    late = book.raise_or_repeat(candidate(at=T0, message="older window", window_key="old"), now=newest)
    assert late.alert.count == 2
    assert (late.alert.last_seen, late.alert.message, late.alert.lineage.window_key) == (
        newest,
        "newest",
        "2026-11-25T12:00",
    )


def test_reopen_inside_cooldown_new_alert_after_it(book: AlertBook) -> None:
    first = book.raise_or_repeat(candidate(cooldown_s=600), now=T0).alert
    book.acknowledge(first.alert_id, by="maria", now=T0 + timedelta(minutes=1))
    cleared_at = T0 + timedelta(minutes=2)
    book.clear(first.alert_id, by="maria", comment="reset", now=cleared_at)

    recur = cleared_at + timedelta(seconds=599)
    reopened = book.raise_or_repeat(candidate(at=recur, cooldown_s=600), now=recur)
    assert reopened.reopened and not reopened.created
    alert = reopened.alert
    assert alert.alert_id == first.alert_id and alert.count == 2
    assert (alert.cleared_at, alert.cleared_by, alert.clear_comment) == (None, None, None)
    assert alert.acknowledged_by == "maria" and alert.state == AlertState.ACTIVE_ACK
    assert book.history(alert.alert_id)[-1]["event"] == "reopened"
    # Open again, so a repeat is counted on it.
    assert book.raise_or_repeat(candidate(at=recur, cooldown_s=600), now=recur).alert.count == 3

    second_clear = recur + timedelta(minutes=1)
    book.clear(first.alert_id, by="maria", comment=None, now=second_clear)
    after = second_clear + timedelta(seconds=600)
    fresh = book.raise_or_repeat(candidate(at=after, cooldown_s=600), now=after)
    assert fresh.created and not fresh.reopened and fresh.alert.alert_id != first.alert_id


def test_auto_clear_at_the_right_time_and_not_before(book: AlertBook) -> None:
    alert = book.raise_or_repeat(candidate(auto_clear_s=300), now=T0).alert
    seen_again = T0 + timedelta(seconds=200)
    book.raise_or_repeat(candidate(at=seen_again, auto_clear_s=300), now=seen_again)
    # 300 s after the first sighting it is not stale: it was seen again at +200 s.
    assert book.clear_stale(T0 + timedelta(seconds=300)) == []
    assert book.clear_stale(seen_again + timedelta(seconds=299.999)) == []
    assert book.get(alert.alert_id).is_open

    cleared = book.clear_stale(seen_again + timedelta(seconds=300))
    assert [a.alert_id for a in cleared] == [alert.alert_id]
    assert cleared[0].cleared_by == AUTO_CLEAR_ACTOR and cleared[0].state == AlertState.CLEARED_UNACK
    assert cleared[0].cleared_at == seen_again + timedelta(seconds=300)
    assert book.history(alert.alert_id)[-1]["event"] == "auto_cleared"
    assert book.clear_stale(T0 + timedelta(days=1)) == []


def test_alerts_without_auto_clear_stay_open(book: AlertBook) -> None:
    alert = book.raise_or_repeat(candidate(), now=T0).alert
    assert book.clear_stale(T0 + timedelta(days=30)) == []
    assert book.get(alert.alert_id).is_open


def _at_once(workers: list[Callable[[], Result]]) -> list[Result]:
    """Run the callables in threads released together by a barrier; re-raise the first error."""
    barrier = threading.Barrier(len(workers))
    results: list[Result | None] = [None] * len(workers)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = workers[index]()
        except BaseException as exc:  # surfaced in the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


def test_two_processes_raising_one_key_at_once_make_one_open_alert(book: AlertBook, second_book: AlertBook) -> None:
    for round_no in range(12):
        key = f"race-{round_no}"
        outcomes = _at_once(
            [
                lambda key=key: book.raise_or_repeat(candidate(key=key), now=T0),
                lambda key=key: second_book.raise_or_repeat(candidate(key=key), now=T0),
            ]
        )
        assert sorted(o.created for o in outcomes) == [False, True], key
        assert outcomes[0].alert.alert_id == outcomes[1].alert.alert_id
        page = book.list_alerts(open_only=True, type="RUL_LOW", since=T0)
        assert [a.count for a in page.items if a.dedup_key == key] == [2]


def test_the_database_itself_refuses_a_second_open_alert_per_key(book: AlertBook, store: ServingStore) -> None:
    alert = book.raise_or_repeat(candidate(), now=T0).alert
    row = {c.name: None for c in alerts_table.columns} | {
        "alert_id": "al-duplicate",
        "dedup_key": alert.dedup_key,
        "open_key": alert.dedup_key,
        "rule": "r",
        "type": "RUL_LOW",
        "severity": "WARNING",
        "source": "s",
        "message": "m",
        "count": 1,
        "first_seen": T0,
        "last_seen": T0,
        "cooldown_s": 0.0,
        "escalation_stage": 0,
    }
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(alerts_table.insert(), [row])
    # Once cleared, the key no longer blocks: cleared alerts may share it.
    book.clear(alert.alert_id, by="maria", now=T0)
    with store.engine.begin() as conn:
        conn.execute(alerts_table.insert(), [row])


def _notice(alert_id: str, status: NotificationStatus, at: datetime, **fields: object) -> NotificationRecord:
    values: dict[str, object] = {
        "alert_id": alert_id,
        "recipient": "+15550001",
        "status": status,
        "created_at": at,
        "attempts": 1,
        "body": "text",
    }
    return NotificationRecord.model_validate(values | fields)


def test_notification_claims_are_unique_across_processes(book: AlertBook, second_book: AlertBook) -> None:
    alert_id = book.raise_or_repeat(candidate(severity=Severity.CRITICAL), now=T0).alert.alert_id
    claims = _at_once(
        [
            lambda: book.claim_notification(alert_id, "sms", "+15550001", 0, T0),
            lambda: second_book.claim_notification(alert_id, "sms", "+15550001", 0, T0),
        ]
    )
    assert sorted(claims) == [False, True]
    assert book.notifications(alert_id) == []  # a claim in flight is not a settled notification
    # Another number or another stage is another notification.
    assert book.claim_notification(alert_id, "sms", "+15550002", 0, T0)
    assert book.claim_notification(alert_id, "sms", "+15550001", 1, T0)
    # The worker holding the claim died: after the lease another one may take over.
    assert not second_book.claim_notification(alert_id, "sms", "+15550001", 0, T0 + timedelta(seconds=59))
    assert second_book.claim_notification(alert_id, "sms", "+15550001", 0, T0 + timedelta(seconds=60))

    sent = _notice(alert_id, NotificationStatus.SENT, T0 + timedelta(seconds=61), provider_id="SM1")
    assert book.record_notification(sent)
    assert not book.claim_notification(alert_id, "sms", "+15550001", 0, T0 + timedelta(hours=1))
    duplicate = _notice(alert_id, NotificationStatus.SENT, T0 + timedelta(seconds=62), provider_id="SM2")
    assert not book.record_notification(duplicate)
    [stored] = [n for n in book.notifications(alert_id) if n.recipient == "+15550001" and n.stage == 0]
    assert (stored.provider_id, stored.status, stored.created_at) == ("SM1", NotificationStatus.SENT, sent.created_at)


def test_a_not_sent_or_failed_notification_may_be_retried(book: AlertBook) -> None:
    alert_id = book.raise_or_repeat(candidate(severity=Severity.CRITICAL), now=T0).alert.alert_id
    not_sent = _notice(alert_id, NotificationStatus.NOT_SENT, T0, detail="not sent: no credentials", attempts=0)
    assert book.record_notification(not_sent)
    assert book.claim_notification(alert_id, "sms", "+15550001", 0, T0 + timedelta(seconds=1))
    failed = _notice(alert_id, NotificationStatus.FAILED, T0 + timedelta(seconds=2), detail="HTTP 500", attempts=3)
    assert book.record_notification(failed)
    assert book.record_notification(_notice(alert_id, NotificationStatus.SENT, T0 + timedelta(seconds=3)))
    [only] = book.notifications(alert_id)
    assert only.status == NotificationStatus.SENT and only.attempts == 1


def test_texts_sent_since_counts_sent_texts_to_one_number(book: AlertBook) -> None:
    ids = [book.raise_or_repeat(candidate(key=f"k{i}"), now=T0).alert.alert_id for i in range(4)]
    book.record_notification(_notice(ids[0], NotificationStatus.SENT, T0))
    book.record_notification(_notice(ids[1], NotificationStatus.SENT, T0 + timedelta(minutes=5)))
    book.record_notification(_notice(ids[2], NotificationStatus.NOT_SENT, T0 + timedelta(minutes=6)))
    book.record_notification(_notice(ids[3], NotificationStatus.SENT, T0 + timedelta(minutes=7), recipient="+1999"))
    book.claim_notification(ids[3], "sms", "+15550001", 0, T0 + timedelta(minutes=8))
    assert book.texts_sent_since("+15550001", T0) == 2
    assert book.texts_sent_since("+15550001", T0 + timedelta(minutes=1)) == 1
    assert book.texts_sent_since("+15550001", T0 + timedelta(minutes=5)) == 1
    assert book.texts_sent_since("+1999", T0) == 1
    assert book.texts_sent_since("+15550001", T0, channel="email") == 0


def test_due_escalations(book: AlertBook) -> None:
    critical = book.raise_or_repeat(candidate(key="crit", severity=Severity.CRITICAL), now=T0).alert
    acked = book.raise_or_repeat(candidate(key="acked", severity=Severity.CRITICAL), now=T0).alert
    book.acknowledge(acked.alert_id, by="maria", now=T0)
    gone = book.raise_or_repeat(candidate(key="gone", severity=Severity.CRITICAL), now=T0).alert
    book.clear(gone.alert_id, by="maria", now=T0)
    warning = book.raise_or_repeat(candidate(key="warn", severity=Severity.WARNING), now=T0).alert
    delays = [60.0, 300.0]

    def due(at: datetime, min_severity: Severity = Severity.CRITICAL) -> list[tuple[str, int]]:
        return [(a.alert_id, stage) for a, stage in book.due_escalations(at, delays, min_severity)]

    assert due(T0 + timedelta(seconds=59)) == []
    assert due(T0 + timedelta(seconds=60)) == [(critical.alert_id, 1)]
    assert sorted(due(T0 + timedelta(seconds=60), Severity.WARNING)) == sorted(
        [(critical.alert_id, 1), (warning.alert_id, 1)]
    )
    book.set_escalation_stage(critical.alert_id, 1, now=T0 + timedelta(seconds=60))
    assert book.get(critical.alert_id).escalation_stage == 1
    assert due(T0 + timedelta(seconds=299)) == []
    assert due(T0 + timedelta(seconds=300)) == [(critical.alert_id, 2)]
    book.set_escalation_stage(critical.alert_id, 2, now=T0 + timedelta(seconds=300))
    book.set_escalation_stage(critical.alert_id, 1, now=T0 + timedelta(seconds=301))  # late writer: no step back
    assert book.get(critical.alert_id).escalation_stage == 2
    assert due(T0 + timedelta(days=1)) == []
    escalations = [e["details"]["stage"] for e in book.history(critical.alert_id) if e["event"] == "escalated"]
    assert escalations == [1, 2]
    # Acknowledging stops the stages.
    book.acknowledge(warning.alert_id, by="li", now=T0)
    assert due(T0 + timedelta(days=1), Severity.WARNING) == []


def test_paging_and_filters(book: AlertBook) -> None:
    specs = [
        ("a", "rul_lstm", "robot-1", "RUL_LOW", Severity.WARNING),
        ("b", "rul_lstm", "robot-2", "RUL_LOW", Severity.CRITICAL),
        ("c", "energy_iforest", "press-1", "ENERGY_ANOMALY", Severity.INFO),
        ("d", "cyber_detector", "plc-7", "DDoS_RISK", Severity.CRITICAL),
        ("e", "ppe-agent", "line-2", "PPE_VIOLATION", Severity.CRITICAL),
    ]
    ids = {}
    for minute, (key, source, asset, alert_type, severity) in enumerate(specs):
        at = T0 + timedelta(minutes=minute)
        c = candidate(key=key, source=source, asset_id=asset, alert_type=alert_type, severity=severity, at=at)
        ids[key] = book.raise_or_repeat(c, now=at).alert.alert_id
    book.acknowledge(ids["b"], by="maria", now=T0 + timedelta(minutes=10))
    book.clear(ids["c"], by="maria", now=T0 + timedelta(minutes=10))
    book.acknowledge(ids["d"], by="maria", now=T0 + timedelta(minutes=10))
    book.clear(ids["d"], by="maria", now=T0 + timedelta(minutes=10))

    def keys(**filters: object) -> list[str]:
        page = book.list_alerts(**filters)  # type: ignore[arg-type]
        by_id = {v: k for k, v in ids.items()}
        return [by_id[a.alert_id] for a in page.items]

    assert keys() == ["e", "d", "c", "b", "a"]  # most recently seen first
    first_page = book.list_alerts(limit=2)
    assert first_page.total == 5 and len(first_page.items) == 2
    assert keys(limit=2, offset=2) == ["c", "b"]
    assert keys(limit=2, offset=4) == ["a"]
    assert keys(state=AlertState.ACTIVE_UNACK) == ["e", "a"]
    assert keys(state=AlertState.ACTIVE_ACK) == ["b"]
    assert keys(state=AlertState.CLEARED_UNACK) == ["c"]
    assert keys(state=AlertState.CLEARED_ACK) == ["d"]
    assert keys(open_only=True) == ["e", "b", "a"]
    assert keys(severity=Severity.CRITICAL) == ["e", "d", "b"]
    assert keys(source="rul_lstm") == ["b", "a"]
    assert keys(asset_id="plc-7") == ["d"]
    assert keys(type="RUL_LOW", severity=Severity.WARNING) == ["a"]
    assert keys(since=T0 + timedelta(minutes=3)) == ["e", "d"]
    assert book.list_alerts(source="nobody").total == 0

    # A repeat brings an alert back to the top.
    again = T0 + timedelta(minutes=20)
    book.raise_or_repeat(candidate(key="a", at=again), now=again)
    assert keys(limit=1) == ["a"]


def _plan(action: str, at: datetime) -> ActionPlan:
    return ActionPlan(
        action=action,
        priority=3,
        summary=f"{action} for the asset",
        steps=["look", "fix"],
        owner_role="maintenance technician",
        due_at=at + timedelta(hours=8),
    )


def test_plans_and_recent_decisions(book: AlertBook) -> None:
    first = book.raise_or_repeat(candidate(key="one"), now=T0).alert
    second = book.raise_or_repeat(candidate(key="two"), now=T0).alert
    book.raise_or_repeat(candidate(key="three"), now=T0)  # no plan: not a decision
    book.attach_plan(first.alert_id, _plan("SCHEDULE_MAINTENANCE_NEXT_SHIFT", T0), now=T0 + timedelta(seconds=1))
    book.attach_plan(second.alert_id, _plan("LOG_ONLY", T0), now=T0 + timedelta(seconds=2))

    stored = book.get(first.alert_id)
    assert stored.plan is not None and stored.plan.action == "SCHEDULE_MAINTENANCE_NEXT_SHIFT"
    assert stored.plan.due_at == T0 + timedelta(hours=8)
    decisions = book.recent_decisions(limit=10)
    assert [(d.alert.alert_id, d.plan.action) for d in decisions] == [
        (second.alert_id, "LOG_ONLY"),
        (first.alert_id, "SCHEDULE_MAINTENANCE_NEXT_SHIFT"),
    ]
    assert decisions[0].at == T0 + timedelta(seconds=2)
    assert [d.alert.alert_id for d in book.recent_decisions(limit=1)] == [second.alert_id]
    attached = book.history(first.alert_id)[-1]
    assert attached["event"] == "plan_attached" and attached["details"]["action"] == "SCHEDULE_MAINTENANCE_NEXT_SHIFT"


def test_unknown_alerts_and_naive_times_are_refused(book: AlertBook) -> None:
    for call in (
        lambda: book.get("al-nope"),
        lambda: book.history("al-nope"),
        lambda: book.acknowledge("al-nope", by="x", now=T0),
        lambda: book.clear("al-nope", by="x", now=T0),
        lambda: book.attach_plan("al-nope", _plan("LOG_ONLY", T0), now=T0),
        lambda: book.set_escalation_stage("al-nope", 1, now=T0),
    ):
        with pytest.raises(KeyError):
            call()
    with pytest.raises(ValueError, match="naive"):
        book.raise_or_repeat(candidate(), now=datetime(2026, 11, 25, 12, 0))


def test_alert_ids_sort_by_time_and_are_unique() -> None:
    earlier = [new_alert_id(T0) for _ in range(200)]
    later = new_alert_id(T0 + timedelta(milliseconds=1))
    assert len(set(earlier)) == 200
    assert max(earlier) < later
    assert all(len(i) == len(later) for i in earlier)


def test_migration_applies_on_a_fresh_file_and_downgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    store = ServingStore(url)
    try:
        tables = set(inspect(store.engine).get_table_names())
        assert {"alerts", "alert_events", "alert_notifications", "model_promotions"} <= tables
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() >= "0003"  # or newer
        unique = inspect(store.engine).get_unique_constraints("alert_notifications")
        assert [sorted(u["column_names"]) for u in unique] == [["alert_id", "channel", "recipient", "stage"]]
        AlertBook(store.engine).raise_or_repeat(candidate(), now=T0)  # the migrated schema is the one the code uses
    finally:
        store.dispose()

    config = AlembicConfig()
    config.set_main_option("script_location", str(Path(factory_pipelines.__file__).with_name("migrations")))
    config.set_main_option("sqlalchemy.url", url)
    command.downgrade(config, "0002")
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert not tables & {"alerts", "alert_events", "alert_notifications"}
        assert {"predictions", "model_promotions"} <= tables
    finally:
        engine.dispose()
    # And back up again through the store, as a deployment would.
    ServingStore(url).dispose()
    engine = create_engine(url)
    try:
        assert "alerts" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
