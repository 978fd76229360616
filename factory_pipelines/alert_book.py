"""The alert book: the alert lifecycle kept in the serving store's database.

Operators know alerts from SCADA alarm lists: active or cleared, unacknowledged or acknowledged,
one open alert per condition that counts its repeats instead of piling up duplicates. This module
keeps that lifecycle, its history, and the texts sent about each alert, in SQL tables that work the
same on SQLite (WAL) and PostgreSQL.

Several processes (the Dagster orchestrator job, the REST API) raise alerts at once, so every
change happens in one write transaction: `BEGIN IMMEDIATE` on SQLite (one writer at a time),
`SELECT ... FOR UPDATE` on PostgreSQL. The unique `open_key` column (the dedup key while the alert
is open, NULL once cleared) is the last line of defence: if two processes still insert the same
key at once, the database refuses the second and it is retried as a repeat. A nullable unique
column works on every database, where a partial index would need per-dialect syntax.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from factory_pipelines.alert_model import (
    SEVERITY_RANK,
    ActionPlan,
    AlertCandidate,
    AlertLineage,
    AlertRecord,
    AlertState,
    NotificationRecord,
    NotificationStatus,
    RaiseOutcome,
    alert_state,
    more_severe,
)
from factory_pipelines.store import metadata
from factory_pipelines.telemetry import Severity, utc_now

AUTO_CLEAR_ACTOR = "system:auto-clear"
PENDING = "pending"  # notification status of a claimed, not yet settled text (not a NotificationStatus)
DEFAULT_CLAIM_LEASE_S = 60.0
_WRITE_ATTEMPTS = 4  # a lost insert race is retried; more than a few losses in a row means something else

# A Python None is stored as SQL NULL (not the JSON text 'null'), so `IS NULL` tests mean what they say.
_JSON = JSON(none_as_null=True)

alerts_table = Table(
    "alerts",
    metadata,
    Column("alert_id", String(40), primary_key=True),
    Column("dedup_key", String(512), nullable=False),
    # The dedup key while the alert is open, NULL once cleared: unique, so one open alert per key.
    Column("open_key", String(512)),
    Column("rule", String(128), nullable=False),
    Column("type", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("level", String(32)),
    Column("source", String(128), nullable=False),
    Column("asset_id", String(128)),
    Column("message", Text, nullable=False),
    Column("count", Integer, nullable=False),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("acknowledged_at", DateTime(timezone=True)),
    Column("acknowledged_by", String(200)),
    Column("ack_comment", Text),
    Column("cleared_at", DateTime(timezone=True)),
    Column("cleared_by", String(200)),
    Column("clear_comment", Text),
    Column("cooldown_s", Float, nullable=False),
    Column("auto_clear_s", Float),
    # last_seen + auto_clear_s, stored so that finding stale alerts needs no dialect's date arithmetic.
    Column("auto_clear_at", DateTime(timezone=True)),
    Column("escalation_stage", Integer, nullable=False),
    Column("lineage", _JSON),
    Column("evidence", _JSON),
    Column("plan", _JSON),
    Column("planned_at", DateTime(timezone=True)),
    UniqueConstraint("open_key", name="uq_alerts_open_key"),
    Index("ix_alerts_dedup_cleared", "dedup_key", "cleared_at"),
    Index("ix_alerts_last_seen", "last_seen"),
)

alert_events_table = Table(
    "alert_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("alert_id", String(40), ForeignKey("alerts.alert_id"), nullable=False),
    Column("event", String(32), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(200)),
    Column("comment", Text),
    Column("details", _JSON),
    Index("ix_alert_events_alert", "alert_id", "id"),
)

alert_notifications_table = Table(
    "alert_notifications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("alert_id", String(40), ForeignKey("alerts.alert_id"), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("recipient", String(64), nullable=False),
    Column("stage", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("detail", Text, nullable=False),
    Column("provider_id", String(64)),
    Column("attempts", Integer, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("claimed_at", DateTime(timezone=True)),
    UniqueConstraint("alert_id", "channel", "recipient", "stage", name="uq_alert_notification"),
    Index("ix_alert_notifications_recipient", "recipient", "created_at"),
)


class AlertEvent(StrEnum):
    """What can happen to an alert; each is one row of its history."""

    RAISED = "raised"
    REPEATED = "repeated"
    REOPENED = "reopened"
    SEVERITY_RAISED = "severity_raised"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"
    AUTO_CLEARED = "auto_cleared"
    ESCALATED = "escalated"
    PLAN_ATTACHED = "plan_attached"


@dataclass(frozen=True, slots=True)
class AlertPage:
    items: list[AlertRecord]
    total: int


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """An alert with the plan chosen for it: the `decisions` of `GET /system-state`."""

    at: datetime
    alert: AlertRecord
    plan: ActionPlan


_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_alert_id(at: datetime | None = None) -> str:
    """`al-` and a ULID-like text: 48 bits of milliseconds then 80 random bits, so ids sort by time."""
    millis = int(at.timestamp() * 1000) if at is not None else time.time_ns() // 1_000_000
    value = (millis << 80) | secrets.randbits(80)
    chars = [_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5)]
    return "al-" + "".join(chars)


class AlertBook:
    """Raise, repeat, acknowledge, clear and escalate alerts; record their texts. Thread- and process-safe."""

    def __init__(self, engine: Engine, *, claim_lease_s: float = DEFAULT_CLAIM_LEASE_S) -> None:
        self._engine = engine
        self._claim_lease = timedelta(seconds=claim_lease_s)

    # ---- raising ----

    def raise_or_repeat(self, candidate: AlertCandidate, *, now: datetime) -> RaiseOutcome:
        """A new alert, a repeat counted on the open one, or a reopening of one cleared inside the cooldown.

        first_seen and last_seen come from the candidate's observed_at; `now` times the history and
        decides the cooldown (cleared less than cooldown_s before `now` reopens).
        """
        now = _utc(now)
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with self._write() as conn:
                    return self._raise_in(conn, candidate, now)
            except IntegrityError:
                # Another process opened the same key between our read and our insert: go again, as a repeat.
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _raise_in(self, conn: Connection, candidate: AlertCandidate, now: datetime) -> RaiseOutcome:
        t = alerts_table
        open_row = _first(conn, select(t).where(t.c.open_key == candidate.dedup_key).with_for_update())
        if open_row is not None:
            return self._update_seen(conn, open_row, candidate, now, reopen=False)
        last_cleared = _first(
            conn,
            select(t)
            .where(t.c.dedup_key == candidate.dedup_key, t.c.cleared_at.is_not(None))
            .order_by(t.c.cleared_at.desc())
            .limit(1)
            .with_for_update(),
        )
        if last_cleared is not None and now - _stored_utc(last_cleared["cleared_at"]) < timedelta(
            seconds=candidate.cooldown_s
        ):
            return self._update_seen(conn, last_cleared, candidate, now, reopen=True)
        return self._insert_new(conn, candidate, now)

    def _insert_new(self, conn: Connection, candidate: AlertCandidate, now: datetime) -> RaiseOutcome:
        seen = candidate.observed_at
        row = {
            "alert_id": new_alert_id(now),
            "dedup_key": candidate.dedup_key,
            "open_key": candidate.dedup_key,
            "rule": candidate.rule,
            "type": candidate.type,
            "severity": candidate.severity.value,
            "level": candidate.level,
            "source": candidate.source,
            "asset_id": candidate.asset_id,
            "message": candidate.message,
            "count": 1,
            "first_seen": seen,
            "last_seen": seen,
            "cooldown_s": candidate.cooldown_s,
            "auto_clear_s": candidate.auto_clear_s,
            "auto_clear_at": _auto_clear_at(seen, candidate.auto_clear_s),
            "escalation_stage": 0,
            "lineage": candidate.lineage.model_dump(mode="json"),
            "evidence": _jsonable(candidate.evidence),
        }
        conn.execute(insert(alerts_table), [row])
        _record_event(
            conn,
            row["alert_id"],
            AlertEvent.RAISED,
            now,
            details={"severity": candidate.severity.value, "observed_at": seen.isoformat(), "rule": candidate.rule},
        )
        return RaiseOutcome(alert=_fetch(conn, row["alert_id"]), created=True)

    def _update_seen(
        self, conn: Connection, row: Mapping[str, Any], candidate: AlertCandidate, now: datetime, *, reopen: bool
    ) -> RaiseOutcome:
        """Count one more sighting on an open alert, or reopen a recently cleared one; the newest sighting wins."""
        old_severity = Severity(row["severity"])
        severity = more_severe(old_severity, candidate.severity)
        rose = SEVERITY_RANK[severity] > SEVERITY_RANK[old_severity]
        old_last_seen = _stored_utc(row["last_seen"])
        last_seen = max(old_last_seen, candidate.observed_at)
        changes: dict[str, Any] = {
            "count": row["count"] + 1,
            "last_seen": last_seen,
            "severity": severity.value,
            "cooldown_s": candidate.cooldown_s,
            "auto_clear_s": candidate.auto_clear_s,
            "auto_clear_at": _auto_clear_at(last_seen, candidate.auto_clear_s),
        }
        if candidate.observed_at >= old_last_seen:  # a late, older sighting counts but does not rewrite the alert
            changes |= {
                "message": candidate.message,
                "level": candidate.level if candidate.level is not None else row["level"],
                "lineage": candidate.lineage.model_dump(mode="json"),
                "evidence": _jsonable(candidate.evidence),
            }
        if reopen:
            changes |= {"open_key": row["dedup_key"], "cleared_at": None, "cleared_by": None, "clear_comment": None}
        alert_id = row["alert_id"]
        conn.execute(update(alerts_table).where(alerts_table.c.alert_id == alert_id).values(changes))
        details = {"count": changes["count"], "observed_at": candidate.observed_at.isoformat()}
        if reopen:
            details |= {"previous_cleared_at": _stored_utc(row["cleared_at"]).isoformat()}
            details |= {"previous_cleared_by": row["cleared_by"]}
        _record_event(conn, alert_id, AlertEvent.REOPENED if reopen else AlertEvent.REPEATED, now, details=details)
        if rose:
            _record_event(
                conn, alert_id, AlertEvent.SEVERITY_RAISED, now, details={"from": old_severity, "to": severity}
            )
        return RaiseOutcome(alert=_fetch(conn, alert_id), created=False, reopened=reopen, severity_raised=rose)

    # ---- operator and system actions ----

    def acknowledge(self, alert_id: str, *, by: str, comment: str | None = None, now: datetime) -> AlertRecord:
        """Acknowledge once; a second acknowledgement keeps the first one's who, when and comment."""
        now = _utc(now)
        with self._write() as conn:
            row = _locked_row(conn, alert_id)
            if row["acknowledged_at"] is None:
                conn.execute(
                    update(alerts_table)
                    .where(alerts_table.c.alert_id == alert_id)
                    .values(acknowledged_at=now, acknowledged_by=by, ack_comment=comment)
                )
                _record_event(conn, alert_id, AlertEvent.ACKNOWLEDGED, now, actor=by, comment=comment)
            return _fetch(conn, alert_id)

    def clear(self, alert_id: str, *, by: str, comment: str | None = None, now: datetime) -> AlertRecord:
        """Clear once; clearing a cleared alert keeps the first clear and records nothing."""
        now = _utc(now)
        with self._write() as conn:
            row = _locked_row(conn, alert_id)
            if row["cleared_at"] is None:
                _mark_cleared(conn, alert_id, by=by, comment=comment, now=now, event=AlertEvent.CLEARED)
            return _fetch(conn, alert_id)

    def clear_stale(self, now: datetime) -> list[AlertRecord]:
        """Clear the open alerts whose condition has not recurred for their auto_clear_s."""
        now = _utc(now)
        t = alerts_table
        with self._write() as conn:
            stale = _rows(
                conn,
                select(t)
                .where(t.c.open_key.is_not(None), t.c.auto_clear_at.is_not(None), t.c.auto_clear_at <= now)
                .order_by(t.c.auto_clear_at, t.c.alert_id)
                .with_for_update(),
            )
            for row in stale:
                comment = f"not seen for {row['auto_clear_s']:g} s"
                _mark_cleared(
                    conn, row["alert_id"], by=AUTO_CLEAR_ACTOR, comment=comment, now=now, event=AlertEvent.AUTO_CLEARED
                )
            return [_fetch(conn, row["alert_id"]) for row in stale]

    def attach_plan(self, alert_id: str, plan: ActionPlan, *, now: datetime | None = None) -> None:
        """Keep the plan on the alert (the newest replaces an older one) and note it in the history."""
        at = _utc(now) if now is not None else utc_now()
        with self._write() as conn:
            _locked_row(conn, alert_id)
            conn.execute(
                update(alerts_table)
                .where(alerts_table.c.alert_id == alert_id)
                .values(plan=plan.model_dump(mode="json"), planned_at=at)
            )
            details = {"action": plan.action, "priority": plan.priority, "written_by": plan.written_by}
            if plan.fallback_reason:
                details["fallback_reason"] = plan.fallback_reason
            _record_event(conn, alert_id, AlertEvent.PLAN_ATTACHED, at, details=details)

    # ---- escalation ----

    def set_escalation_stage(self, alert_id: str, stage: int, *, now: datetime | None = None) -> None:
        """Note that `stage` has been notified; stages only move forward, so a late writer cannot undo one."""
        at = _utc(now) if now is not None else utc_now()
        t = alerts_table
        with self._write() as conn:
            row = _locked_row(conn, alert_id)
            if stage > row["escalation_stage"]:
                conn.execute(update(t).where(t.c.alert_id == alert_id).values(escalation_stage=stage))
                _record_event(
                    conn, alert_id, AlertEvent.ESCALATED, at, details={"stage": stage, "from": row["escalation_stage"]}
                )

    def due_escalations(
        self, now: datetime, delays: Sequence[float], min_severity: Severity = Severity.CRITICAL
    ) -> list[tuple[AlertRecord, int]]:
        """Open, unacknowledged alerts at or above `min_severity` whose next stage is due.

        Stage k (1-based) is due `delays[k-1]` seconds after first_seen. Each alert comes back with
        its *next* stage only (escalation_stage + 1), so overdue stages are walked one at a time and
        no stage is skipped.
        """
        if not delays:
            return []
        now = _utc(now)
        t = alerts_table
        severities = [s.value for s in Severity if SEVERITY_RANK[s] >= SEVERITY_RANK[min_severity]]
        query = (
            select(t)
            .where(
                t.c.open_key.is_not(None),
                t.c.acknowledged_at.is_(None),
                t.c.severity.in_(severities),
                t.c.escalation_stage < len(delays),
                t.c.first_seen <= now - timedelta(seconds=min(delays)),
            )
            .order_by(t.c.first_seen, t.c.alert_id)
        )
        due: list[tuple[AlertRecord, int]] = []
        with self._engine.connect() as conn:
            for row in _rows(conn, query):
                stage = row["escalation_stage"] + 1
                if _stored_utc(row["first_seen"]) + timedelta(seconds=delays[stage - 1]) <= now:
                    due.append((_record(row), stage))
        return due

    # ---- notifications ----

    def claim_notification(self, alert_id: str, channel: str, recipient: str, stage: int, now: datetime) -> bool:
        """Take the right to send one notification; False when it was sent, or another worker holds a fresh claim.

        A claim older than the lease (its worker died mid-send) and a not-sent or failed attempt may be taken over.
        """
        now = _utc(now)
        key = _notification_key(alert_id, channel, recipient, stage)
        pending = {"status": PENDING, "claimed_at": now, "created_at": now, "detail": "claimed, not settled"}
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with self._write() as conn:
                    existing = _first(conn, select(alert_notifications_table).where(*key).with_for_update())
                    if existing is None:
                        row = {
                            "alert_id": alert_id,
                            "channel": channel,
                            "recipient": recipient,
                            "stage": stage,
                            "attempts": 0,
                            "body": "",
                        }
                        conn.execute(insert(alert_notifications_table), [row | pending])
                        return True
                    if existing["status"] == NotificationStatus.SENT:
                        return False
                    claimed_at = existing["claimed_at"]
                    if existing["status"] == PENDING and now - _stored_utc(claimed_at) < self._claim_lease:
                        return False
                    conn.execute(update(alert_notifications_table).where(*key).values(pending))
                    return True
            except IntegrityError:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def record_notification(self, record: NotificationRecord) -> bool:
        """Keep the outcome of one notification; False (and nothing changed) when it is already recorded as sent."""
        key = _notification_key(record.alert_id, record.channel, record.recipient, record.stage)
        row = record.model_dump(mode="python")
        row["status"] = record.status.value
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with self._write() as conn:
                    existing = _first(conn, select(alert_notifications_table).where(*key).with_for_update())
                    if existing is None:
                        conn.execute(insert(alert_notifications_table), [row])
                        return True
                    if existing["status"] == NotificationStatus.SENT:
                        return False
                    conn.execute(update(alert_notifications_table).where(*key).values(row))
                    return True
            except IntegrityError:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def notifications(self, alert_id: str) -> list[NotificationRecord]:
        """Settled notifications of an alert (claims still in flight are left out), by stage then time."""
        t = alert_notifications_table
        query = (
            select(t).where(t.c.alert_id == alert_id, t.c.status != PENDING).order_by(t.c.stage, t.c.created_at, t.c.id)
        )
        with self._engine.connect() as conn:
            return [_notification(row) for row in _rows(conn, query)]

    def texts_sent_since(self, recipient: str, since: datetime, *, channel: str = "sms") -> int:
        """How many texts `recipient` was sent since `since`, for the per-number rate limit."""
        t = alert_notifications_table
        query = (
            select(func.count())
            .select_from(t)
            .where(
                t.c.recipient == recipient,
                t.c.channel == channel,
                t.c.status == NotificationStatus.SENT.value,
                t.c.created_at >= _utc(since),
            )
        )
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    # ---- reading ----

    def get(self, alert_id: str) -> AlertRecord:
        """The alert with its plan; KeyError when there is no such alert."""
        with self._engine.connect() as conn:
            return _fetch(conn, alert_id)

    def history(self, alert_id: str) -> list[dict[str, Any]]:
        """What happened to an alert, oldest first: event, at, by, comment, details."""
        t = alert_events_table
        with self._engine.connect() as conn:
            _fetch(conn, alert_id)
            rows = _rows(conn, select(t).where(t.c.alert_id == alert_id).order_by(t.c.id))
        return [
            {
                "event": row["event"],
                "at": _stored_utc(row["at"]),
                "by": row["actor"],
                "comment": row["comment"],
                "details": row["details"] or {},
            }
            for row in rows
        ]

    def list_alerts(
        self,
        *,
        state: AlertState | None = None,
        severity: Severity | None = None,
        source: str | None = None,
        asset_id: str | None = None,
        type: str | None = None,
        open_only: bool = False,
        since: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> AlertPage:
        """Alerts matching every filter given, most recently seen first; `since` keeps those seen since then."""
        t = alerts_table
        conditions: list[ColumnElement[bool]] = []
        if state is not None:
            conditions.extend(_state_conditions(state))
        if severity is not None:
            conditions.append(t.c.severity == Severity(severity).value)
        if source is not None:
            conditions.append(t.c.source == source)
        if asset_id is not None:
            conditions.append(t.c.asset_id == asset_id)
        if type is not None:
            conditions.append(t.c.type == type)
        if open_only:
            conditions.append(t.c.open_key.is_not(None))
        if since is not None:
            conditions.append(t.c.last_seen >= _utc(since))
        with self._engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(t).where(*conditions)).scalar_one()
            rows = _rows(
                conn,
                select(t)
                .where(*conditions)
                .order_by(t.c.last_seen.desc(), t.c.alert_id.desc())
                .limit(limit)
                .offset(offset),
            )
        return AlertPage([_record(row) for row in rows], int(total))

    def open_at(self, at: datetime, *, limit: int = 1000) -> list[AlertRecord]:
        """Alerts that were open at `at` (first seen by then, not cleared by then), most recently seen first.

        A backfilled shift asks this about its start; the records show their state now (count,
        acknowledgement), so callers compare those times with `at` themselves.
        """
        t = alerts_table
        moment = _utc(at)
        query = (
            select(t)
            .where(t.c.first_seen <= moment, or_(t.c.cleared_at.is_(None), t.c.cleared_at > moment))
            .order_by(t.c.last_seen.desc(), t.c.alert_id.desc())
            .limit(limit)
        )
        with self._engine.connect() as conn:
            return [_record(row) for row in _rows(conn, query)]

    def recent_decisions(self, limit: int = 20) -> list[DecisionRecord]:
        """Alerts that have a plan, newest plan first."""
        t = alerts_table
        query = select(t).where(t.c.plan.is_not(None)).order_by(t.c.planned_at.desc(), t.c.alert_id.desc()).limit(limit)
        with self._engine.connect() as conn:
            rows = _rows(conn, query)
        decisions = []
        for row in rows:
            alert = _record(row)
            assert alert.plan is not None  # selected on it
            decisions.append(DecisionRecord(at=_stored_utc(row["planned_at"]), alert=alert, plan=alert.plan))
        return decisions

    # ---- transactions ----

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction that holds the write lock from its first statement.

        SQLite's default (deferred) transaction reads first and may then fail to upgrade to a write
        when another process wrote meanwhile; `BEGIN IMMEDIATE` takes the lock up front and waits
        for it (busy_timeout). PostgreSQL locks the rows read with FOR UPDATE instead.
        """
        with self._engine.begin() as conn:
            # pysqlite opens its own (deferred) transaction only before the first write; an engine set
            # up to begin eagerly is already in one, and then keeps its own behaviour.
            if conn.dialect.name == "sqlite" and not conn.connection.dbapi_connection.in_transaction:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn


# ---- rows and records ----

_STATE_FLAGS: dict[AlertState, tuple[bool, bool]] = {  # state: (cleared, acknowledged)
    AlertState.ACTIVE_UNACK: (False, False),
    AlertState.ACTIVE_ACK: (False, True),
    AlertState.CLEARED_UNACK: (True, False),
    AlertState.CLEARED_ACK: (True, True),
}


def _state_conditions(state: AlertState) -> list[ColumnElement[bool]]:
    cleared, acknowledged = _STATE_FLAGS[AlertState(state)]
    t = alerts_table
    return [
        t.c.cleared_at.is_not(None) if cleared else t.c.cleared_at.is_(None),
        t.c.acknowledged_at.is_not(None) if acknowledged else t.c.acknowledged_at.is_(None),
    ]


def _mark_cleared(
    conn: Connection, alert_id: str, *, by: str, comment: str | None, now: datetime, event: AlertEvent
) -> None:
    conn.execute(
        update(alerts_table)
        .where(alerts_table.c.alert_id == alert_id)
        .values(open_key=None, cleared_at=now, cleared_by=by, clear_comment=comment)
    )
    _record_event(conn, alert_id, event, now, actor=by, comment=comment)


def _record_event(
    conn: Connection,
    alert_id: str,
    event: AlertEvent,
    at: datetime,
    *,
    actor: str | None = None,
    comment: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    row = {
        "alert_id": alert_id,
        "event": event.value,
        "at": at,
        "actor": actor,
        "comment": comment,
        "details": _jsonable(details) if details else None,
    }
    conn.execute(insert(alert_events_table), [row])


def _notification_key(alert_id: str, channel: str, recipient: str, stage: int) -> list[ColumnElement[bool]]:
    t = alert_notifications_table
    return [t.c.alert_id == alert_id, t.c.channel == channel, t.c.recipient == recipient, t.c.stage == stage]


def _first(conn: Connection, query: Any) -> Mapping[str, Any] | None:
    return conn.execute(query).mappings().first()


def _rows(conn: Connection, query: Any) -> list[Mapping[str, Any]]:
    return list(conn.execute(query).mappings())


def _locked_row(conn: Connection, alert_id: str) -> Mapping[str, Any]:
    row = _first(conn, select(alerts_table).where(alerts_table.c.alert_id == alert_id).with_for_update())
    if row is None:
        raise KeyError(alert_id)
    return row


def _fetch(conn: Connection, alert_id: str) -> AlertRecord:
    row = _first(conn, select(alerts_table).where(alerts_table.c.alert_id == alert_id))
    if row is None:
        raise KeyError(alert_id)
    return _record(row)


def _record(row: Mapping[str, Any]) -> AlertRecord:
    acknowledged_at = _stored_utc_or_none(row["acknowledged_at"])
    cleared_at = _stored_utc_or_none(row["cleared_at"])
    return AlertRecord(
        alert_id=row["alert_id"],
        dedup_key=row["dedup_key"],
        rule=row["rule"],
        type=row["type"],
        severity=Severity(row["severity"]),
        level=row["level"],
        source=row["source"],
        asset_id=row["asset_id"],
        message=row["message"],
        state=alert_state(cleared=cleared_at is not None, acknowledged=acknowledged_at is not None),
        count=row["count"],
        first_seen=_stored_utc(row["first_seen"]),
        last_seen=_stored_utc(row["last_seen"]),
        acknowledged_at=acknowledged_at,
        acknowledged_by=row["acknowledged_by"],
        ack_comment=row["ack_comment"],
        cleared_at=cleared_at,
        cleared_by=row["cleared_by"],
        clear_comment=row["clear_comment"],
        cooldown_s=row["cooldown_s"],
        auto_clear_s=row["auto_clear_s"],
        escalation_stage=row["escalation_stage"],
        lineage=AlertLineage.model_validate(row["lineage"] or {}),
        evidence=row["evidence"] or {},
        plan=ActionPlan.model_validate(row["plan"]) if row["plan"] else None,
    )


def _notification(row: Mapping[str, Any]) -> NotificationRecord:
    return NotificationRecord(
        alert_id=row["alert_id"],
        channel=row["channel"],
        recipient=row["recipient"],
        stage=row["stage"],
        status=NotificationStatus(row["status"]),
        detail=row["detail"],
        provider_id=row["provider_id"],
        attempts=row["attempts"],
        body=row["body"],
        created_at=_stored_utc(row["created_at"]),
    )


# ---- values ----


def _utc(value: datetime) -> datetime:
    """Times handed in must carry a zone (a naive one is ambiguous); stored as UTC because SQLite drops the offset."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass a timezone-aware time")
    return value.astimezone(UTC)


def _stored_utc(value: datetime) -> datetime:
    """SQLite gives naive datetimes back; every time this module stores is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _stored_utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _stored_utc(value)


def _auto_clear_at(last_seen: datetime, auto_clear_s: float | None) -> datetime | None:
    return None if auto_clear_s is None else last_seen + timedelta(seconds=auto_clear_s)


def _json_fallback(value: Any) -> Any:
    """numpy scalars, datetimes and the like, as JSON understands them."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_json_fallback))
