"""Where written backlogs are kept: one row per shift in the serving store.

The whole backlog (tasks, evidence, writer) is kept as JSON beside the columns the history lists
need; re-materializing a shift replaces its row, so a backfill with newer evidence wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import JSON, Column, DateTime, Engine, Integer, String, Table, delete, func, insert, select

from factory_pipelines.backlog_model import Backlog
from factory_pipelines.store import metadata

backlogs_table = Table(
    "backlogs",
    metadata,
    Column("shift_key", String(40), primary_key=True),
    Column("shift_name", String(40), nullable=False),
    Column("shift_start", DateTime(timezone=True), nullable=False),
    Column("shift_end", DateTime(timezone=True), nullable=False),
    Column("generated_at", DateTime(timezone=True), nullable=False),
    Column("writer", String(20), nullable=False),
    Column("task_count", Integer, nullable=False),
    Column("body", JSON, nullable=False),
)


@dataclass(frozen=True, slots=True)
class BacklogPage:
    items: list[Backlog]
    total: int


class BacklogBook:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def save(self, backlog: Backlog) -> None:
        """Keep `backlog` as its shift's backlog, replacing an earlier one for the same shift."""
        row = {
            "shift_key": backlog.shift.key,
            "shift_name": backlog.shift.name,
            "shift_start": backlog.shift.start.astimezone(UTC),
            "shift_end": backlog.shift.end.astimezone(UTC),
            "generated_at": backlog.generated_at.astimezone(UTC),
            "writer": backlog.writer.name,
            "task_count": len(backlog.tasks),
            "body": backlog.model_dump(mode="json"),
        }
        with self._engine.begin() as conn:
            conn.execute(delete(backlogs_table).where(backlogs_table.c.shift_key == row["shift_key"]))
            conn.execute(insert(backlogs_table), [row])

    def get(self, shift_key: str) -> Backlog | None:
        with self._engine.connect() as conn:
            body = conn.execute(select(backlogs_table.c.body).where(backlogs_table.c.shift_key == shift_key)).scalar()
        return Backlog.model_validate(body) if body is not None else None

    def latest(self, *, at: datetime | None = None) -> Backlog | None:
        """The backlog of the latest shift that started at or before `at` (default: any)."""
        t = backlogs_table
        query = select(t.c.body).order_by(t.c.shift_start.desc()).limit(1)
        if at is not None:
            query = query.where(t.c.shift_start <= at.astimezone(UTC))
        with self._engine.connect() as conn:
            body = conn.execute(query).scalar()
        return Backlog.model_validate(body) if body is not None else None

    def history(self, *, limit: int = 10, offset: int = 0) -> BacklogPage:
        """Backlogs, newest shift first."""
        t = backlogs_table
        with self._engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(t)).scalar_one()
            bodies = conn.execute(select(t.c.body).order_by(t.c.shift_start.desc()).limit(limit).offset(offset))
            return BacklogPage([Backlog.model_validate(body) for (body,) in bodies], int(total))
