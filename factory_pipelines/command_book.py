"""Where commands sent to assets are kept, with the answer each asset gave: one row per command.

A command's life: `sent` once it is recorded and handed to the broker, then `done` or `rejected`
when the asset's `CommandAck` arrives, or `unanswered` when the broker could not take it or no
ack came within the caller's timeout. The asset's ack is its own word on what happened, so it wins
over `sent` and over `unanswered` (a late ack still counts); once `done` or `rejected`, a command
is settled and further acks for it (QoS 1 redeliveries, several API processes recording the same
ack) change nothing, which makes `record_ack` idempotent.

An ack for a command id nobody recorded is kept, not dropped: its row has no `issued_at`, and
`issued_by` stays empty. Such acks come from commands sent around the platform (a PLC program or
a script publishing on `factory/{site}/{asset}/cmd` directly) and are worth an audit trail; and
if the issuing side records its command afterwards, `record_issued` fills in the issuing fields
and keeps the asset's answer, so the order in which the two arrive does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Connection, DateTime, Engine, Index, String, Table, Text, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from factory_pipelines.store import metadata
from factory_pipelines.telemetry import Command, CommandAck, utc_now


class CommandStatus(StrEnum):
    SENT = "sent"
    DONE = "done"
    REJECTED = "rejected"
    UNANSWERED = "unanswered"


MAX_COMMAND_ID_CHARS = 64
MAX_COMMAND_CHARS = 64
SETTLED = frozenset({CommandStatus.DONE, CommandStatus.REJECTED})  # the asset answered: nothing changes it

commands_table = Table(
    "commands",
    metadata,
    Column("command_id", String(MAX_COMMAND_ID_CHARS), primary_key=True),
    Column("asset_id", String(128), nullable=False),
    Column("command", String(MAX_COMMAND_CHARS), nullable=False),
    Column("parameters", JSON, nullable=False),
    Column("issued_at", DateTime(timezone=True)),  # null: an ack for a command we never recorded
    Column("issued_by", String(200)),
    Column("status", String(16), nullable=False),
    Column("acked_at", DateTime(timezone=True)),
    Column("detail", Text),
    Index("ix_commands_asset_issued", "asset_id", "issued_at"),
)


@dataclass(frozen=True, slots=True)
class CommandRecord:
    command_id: str
    asset_id: str
    command: str
    parameters: dict[str, Any]
    issued_at: datetime | None
    issued_by: str | None
    status: CommandStatus
    acked_at: datetime | None
    detail: str | None

    @property
    def settled(self) -> bool:
        return self.status in SETTLED


class CommandBook:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def record_issued(
        self,
        asset_id: str,
        command: Command,
        *,
        status: CommandStatus = CommandStatus.SENT,
        detail: str | None = None,
    ) -> CommandRecord:
        """Keep a command about to be published; an ack that beat it here keeps its status."""
        row = {
            "command_id": command.command_id,
            "asset_id": asset_id,
            "command": command.command,
            "parameters": command.parameters,
            "issued_at": command.issued_at.astimezone(UTC),
            "issued_by": command.issued_by,
            "status": status.value,
            "acked_at": None,
            "detail": detail,
        }
        t = commands_table
        with self._engine.begin() as conn:
            existing = conn.execute(select(t).where(t.c.command_id == command.command_id)).first()
            if existing is None:
                _insert_if_absent(conn, row)
            elif existing.issued_at is None:  # an orphan ack arrived first: add who sent it, keep its answer
                conn.execute(
                    update(t)
                    .where(t.c.command_id == command.command_id)
                    .values(parameters=row["parameters"], issued_at=row["issued_at"], issued_by=row["issued_by"])
                )
            else:
                raise ValueError(f"command {command.command_id!r} is already recorded")
        found = self.get(command.command_id)
        assert found is not None
        return found

    def mark_unanswered(self, command_id: str, detail: str) -> CommandRecord | None:
        """The command could not be delivered (or no ack came in time); a settled command stays as it is."""
        t = commands_table
        with self._engine.begin() as conn:
            conn.execute(
                update(t)
                .where(t.c.command_id == command_id, t.c.status == CommandStatus.SENT.value)
                .values(status=CommandStatus.UNANSWERED.value, detail=detail)
            )
        return self.get(command_id)

    def expire_unanswered(self, issued_before: datetime, *, command_id: str | None = None) -> int:
        """Commands still `sent` that were issued before `issued_before` become `unanswered`; how many did."""
        t = commands_table
        conditions = [t.c.status == CommandStatus.SENT.value, t.c.issued_at < issued_before.astimezone(UTC)]
        if command_id is not None:
            conditions.append(t.c.command_id == command_id)
        with self._engine.begin() as conn:
            result = conn.execute(
                update(t)
                .where(*conditions)
                .values(status=CommandStatus.UNANSWERED.value, detail="no acknowledgement from the asset in time")
            )
        return int(result.rowcount or 0)

    def record_ack(self, ack: CommandAck, *, received_at: datetime | None = None) -> CommandRecord:
        """Settle the command with the asset's answer; a repeat, or any ack after the first, changes nothing.

        ValueError for an ack whose command id no command of ours could have (longer than the column).
        """
        if len(ack.command_id) > MAX_COMMAND_ID_CHARS:
            raise ValueError(f"command id longer than {MAX_COMMAND_ID_CHARS} characters: not one of ours")
        acked_at = (received_at or utc_now()).astimezone(UTC)
        t = commands_table
        with self._engine.begin() as conn:
            existing = conn.execute(select(t.c.status).where(t.c.command_id == ack.command_id)).scalar()
            if existing is None:  # an orphan ack (see the module docstring); kept
                orphan = {
                    "command_id": ack.command_id,
                    "asset_id": ack.asset_id,
                    "command": ack.command[:MAX_COMMAND_CHARS],
                    "parameters": {},
                    "issued_at": None,
                    "issued_by": None,
                    "status": ack.status,
                    "acked_at": acked_at,
                    "detail": ack.detail,
                }
                if not _insert_if_absent(conn, orphan):  # the command was recorded meanwhile: settle it
                    _settle(conn, ack, acked_at)
            elif CommandStatus(existing) not in SETTLED:
                _settle(conn, ack, acked_at)
        found = self.get(ack.command_id)
        assert found is not None
        return found

    def get(self, command_id: str) -> CommandRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(commands_table).where(commands_table.c.command_id == command_id)).first()
        return _record(row._mapping) if row is not None else None


def _insert_if_absent(conn: Connection, row: dict[str, Any]) -> bool:
    """Insert unless a row with this command id exists (another process may record it at the same time)."""
    dialect_insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(conn.dialect.name)
    if dialect_insert is None:  # other databases: a concurrent insert fails the transaction, the caller retries
        conn.execute(insert(commands_table), [row])
        return True
    result = conn.execute(dialect_insert(commands_table).on_conflict_do_nothing(index_elements=["command_id"]), [row])
    return bool(result.rowcount)


def _settle(conn: Connection, ack: CommandAck, acked_at: datetime) -> None:
    t = commands_table
    conn.execute(
        update(t)
        .where(t.c.command_id == ack.command_id, t.c.status.not_in([s.value for s in SETTLED]))
        .values(status=ack.status, acked_at=acked_at, detail=ack.detail)
    )


def _utc(value: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back; every time we store is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _record(row: Any) -> CommandRecord:
    return CommandRecord(
        command_id=row["command_id"],
        asset_id=row["asset_id"],
        command=row["command"],
        parameters=dict(row["parameters"] or {}),
        issued_at=_utc(row["issued_at"]),
        issued_by=row["issued_by"],
        status=CommandStatus(row["status"]),
        acked_at=_utc(row["acked_at"]),
        detail=row["detail"],
    )
