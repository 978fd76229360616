"""The serving store: predictions, model promotions (and, in later issues, alerts) behind SQLAlchemy.

SQLite in WAL mode by default, PostgreSQL or any SQLAlchemy URL in production; the schema is
owned by Alembic migrations in `factory_pipelines/migrations`, applied when the store opens.
Rows are keyed by (model, window, asset), so recomputing a window (a backfill with another
model version) replaces its predictions instead of duplicating them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite

from factory_pipelines.promotion import PromotionRecord
from factory_pipelines.telemetry import Prediction

metadata = MetaData()


def _prediction_values() -> list[Column[Any]]:
    """The columns of one prediction besides its key; both prediction tables hold them."""
    return [
        Column("model_version", String(32), nullable=False),
        Column("window_key", String(128), nullable=False),
        Column("window_start", DateTime(timezone=True)),
        Column("window_end", DateTime(timezone=True)),
        Column("score", Float, nullable=False),
        Column("label", String(32), nullable=False),
        Column("produced_at", DateTime(timezone=True), nullable=False),
        Column("mlflow_run_id", String(64)),
        Column("dagster_run_id", String(64)),
        Column("details", JSON),
    ]


predictions_table = Table(
    "predictions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(64), nullable=False),
    Column("asset_id", String(128), nullable=False),
    *_prediction_values(),
    UniqueConstraint("model_name", "window_key", "asset_id", name="uq_prediction_window"),
)

latest_predictions_table = Table(
    "latest_predictions",
    metadata,
    Column("model_name", String(64), primary_key=True),
    Column("asset_id", String(128), primary_key=True),
    *_prediction_values(),
)
"""The newest prediction per (model, asset), kept by `upsert_predictions`: what 'latest' reads."""

model_promotions_table = Table(
    "model_promotions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(64), nullable=False),
    Column("candidate_version", String(32), nullable=False),
    Column("alias", String(32), nullable=False),
    Column("previous_champion", String(32)),
    Column("promoted", Boolean, nullable=False),
    Column("forced", Boolean, nullable=False),
    Column("metric", String(64), nullable=False),
    Column("higher_is_better", Boolean, nullable=False),
    Column("candidate_score", Float),
    Column("champion_score", Float),
    Column("reason", Text, nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=False),
    Column("decided_by", String(200), nullable=False),
    Column("mlflow_run_id", String(64)),
    Column("dagster_run_id", String(64)),
    Column("details", JSON),
)

_MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_PREDICTION_COLUMNS = [c.name for c in predictions_table.columns if c.name not in {"id", "details"}]


class StoreUnavailableError(RuntimeError):
    """The serving store cannot be reached; the caller decides how to degrade."""


@dataclass(frozen=True, slots=True)
class PredictionPage:
    items: list[Prediction]
    total: int


def _enable_sqlite_wal(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()


def migrate(db_url: str) -> None:
    """Bring the database at `db_url` to the newest schema."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(_MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", db_url.replace("%", "%%"))
    command.upgrade(config, "head")


class ServingStore:
    def __init__(self, db_url: str, *, apply_migrations: bool = True) -> None:
        self.db_url = db_url
        if db_url.startswith("sqlite:///"):
            Path(db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # A database that does not answer should fail a request in seconds, not hang it.
        connect_args = {"connect_timeout": 5} if db_url.startswith("postgresql") else {}
        self.engine = create_engine(db_url, pool_pre_ping=True, connect_args=connect_args)
        if self.engine.dialect.name == "sqlite":
            _enable_sqlite_wal(self.engine)
        if apply_migrations:
            migrate(db_url)

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # any driver error means the same to callers
            raise StoreUnavailableError(f"serving store unreachable: {exc}") from exc

    def upsert_predictions(self, predictions: Iterable[Prediction]) -> int:
        rows = [_prediction_row(p) for p in predictions]
        if not rows:
            return 0
        dialect = self.engine.dialect.name
        insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(dialect)
        newest = _newest_per_asset(rows)
        with self.engine.begin() as conn:
            if insert is None:  # other databases: replace row by row
                for row in rows:
                    conn.execute(
                        predictions_table.delete().where(
                            (predictions_table.c.model_name == row["model_name"])
                            & (predictions_table.c.window_key == row["window_key"])
                            & (predictions_table.c.asset_id == row["asset_id"])
                        )
                    )
                conn.execute(predictions_table.insert(), rows)
                _replace_latest_row_by_row(conn, newest)
            else:
                stmt = insert(predictions_table)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["model_name", "window_key", "asset_id"],
                    set_={
                        name: stmt.excluded[name]
                        for name in rows[0]
                        if name not in {"model_name", "window_key", "asset_id"}
                    },
                )
                conn.execute(stmt, rows)
                latest = insert(latest_predictions_table)
                t = latest_predictions_table
                # A backfill of an older window leaves the newer latest row alone.
                latest = latest.on_conflict_do_update(
                    index_elements=["model_name", "asset_id"],
                    set_={name: latest.excluded[name] for name in newest[0] if name not in {"model_name", "asset_id"}},
                    where=t.c.window_start.is_(None) | (t.c.window_start <= latest.excluded.window_start),
                )
                conn.execute(latest, newest)
        return len(rows)

    def latest_predictions(
        self,
        *,
        model_name: str | None = None,
        asset_id: str | None = None,
        since: datetime | None = None,
        before: datetime | None = None,
    ) -> list[Prediction]:
        """The newest prediction per (model, asset), among windows that start in [since, before) when given."""
        if since is None and before is None:
            return self._latest_kept(model_name=model_name, asset_id=asset_id)
        t = predictions_table
        rank = (
            func.row_number()
            .over(
                partition_by=(t.c.model_name, t.c.asset_id),
                order_by=(t.c.window_start.desc(), t.c.produced_at.desc(), t.c.id.desc()),
            )
            .label("rank")
        )
        inner = select(t, rank)
        if model_name:
            inner = inner.where(t.c.model_name == model_name)
        if asset_id:
            inner = inner.where(t.c.asset_id == asset_id)
        if since:
            inner = inner.where(t.c.window_start >= _as_stored_time(since))
        if before:
            inner = inner.where(t.c.window_start < _as_stored_time(before))
        sub = inner.subquery()
        query = select(sub).where(sub.c.rank == 1).order_by(sub.c.model_name, sub.c.asset_id)
        with self.engine.connect() as conn:
            return [_row_prediction(row._mapping) for row in conn.execute(query)]

    def prediction(self, model_name: str, window_key: str, asset_id: str) -> Prediction | None:
        """The one prediction a model made for an asset in a window (what a prediction id names)."""
        t = predictions_table
        query = select(t).where(t.c.model_name == model_name, t.c.window_key == window_key, t.c.asset_id == asset_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _row_prediction(row._mapping) if row is not None else None

    def _latest_kept(self, *, model_name: str | None, asset_id: str | None) -> list[Prediction]:
        t = latest_predictions_table
        query = select(t).order_by(t.c.model_name, t.c.asset_id)
        if model_name:
            query = query.where(t.c.model_name == model_name)
        if asset_id:
            query = query.where(t.c.asset_id == asset_id)
        with self.engine.connect() as conn:
            return [_row_prediction(row._mapping) for row in conn.execute(query)]

    def prediction_history(
        self,
        *,
        model_name: str | None = None,
        asset_id: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> PredictionPage:
        """Predictions whose window starts in [start, end), newest first."""
        t = predictions_table
        conditions = []
        if model_name:
            conditions.append(t.c.model_name == model_name)
        if asset_id:
            conditions.append(t.c.asset_id == asset_id)
        if start:
            conditions.append(t.c.window_start >= _as_stored_time(start))
        if end:
            conditions.append(t.c.window_start < _as_stored_time(end))
        query = select(t).where(*conditions)
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(t).where(*conditions)).scalar_one()
            rows = conn.execute(
                query.order_by(t.c.window_start.desc(), t.c.asset_id, t.c.id.desc()).limit(limit).offset(offset)
            )
            return PredictionPage([_row_prediction(r._mapping) for r in rows], total)

    def record_promotion(self, record: PromotionRecord) -> None:
        """Keep one champion-gate decision (MLflow itself remembers only where aliases point now)."""
        row = record.as_dict()
        details = {"candidate_metrics": row.pop("candidate_metrics"), "champion_metrics": row.pop("champion_metrics")}
        row["decided_at"] = record.decided_at
        with self.engine.begin() as conn:
            conn.execute(model_promotions_table.insert(), [{**row, "details": details}])

    def promotion_history(self, *, model_name: str | None = None, limit: int = 100) -> list[PromotionRecord]:
        """Gate decisions, newest first."""
        t = model_promotions_table
        query = select(t).order_by(t.c.decided_at.desc(), t.c.id.desc()).limit(limit)
        if model_name:
            query = query.where(t.c.model_name == model_name)
        with self.engine.connect() as conn:
            return [_row_promotion(row._mapping) for row in conn.execute(query)]

    def count_predictions(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(predictions_table)).scalar_one()

    def dispose(self) -> None:
        self.engine.dispose()


def _newest_per_asset(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of a batch of prediction rows, the newest window per (model, asset)."""
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["model_name"], row["asset_id"])
        held = newest.get(key)
        if held is None or _window_order(row) >= _window_order(held):
            newest[key] = row
    return list(newest.values())


def _window_order(row: dict[str, Any]) -> tuple[datetime, datetime]:
    floor = datetime.min.replace(tzinfo=UTC)
    return (_as_stored_time(row["window_start"]) if row["window_start"] else floor, _as_stored_time(row["produced_at"]))


def _replace_latest_row_by_row(conn: Any, newest: list[dict[str, Any]]) -> None:
    t = latest_predictions_table
    for row in newest:
        where = (t.c.model_name == row["model_name"]) & (t.c.asset_id == row["asset_id"])
        held = conn.execute(select(t.c.window_start).where(where)).first()
        if held is not None and held.window_start and row["window_start"] and held.window_start > row["window_start"]:
            continue
        conn.execute(t.delete().where(where))
        conn.execute(t.insert(), [row])


def _as_stored_time(value: datetime) -> datetime:
    """Stored times are UTC and SQLite drops offsets when binding, so compare in UTC."""
    return value.astimezone(UTC) if value.tzinfo is not None else value


def _prediction_row(prediction: Prediction) -> dict[str, Any]:
    data = prediction.model_dump()
    row = {name: data.pop(name, None) for name in _PREDICTION_COLUMNS}
    row["details"] = json.loads(json.dumps(data, default=str)) if data else None
    return row


def _row_prediction(row: Any) -> Prediction:
    values: dict[str, Any] = {name: row[name] for name in _PREDICTION_COLUMNS}
    for name in ("window_start", "window_end", "produced_at"):
        # SQLite gives naive datetimes back; every time we store is UTC.
        if values[name] is not None and values[name].tzinfo is None:
            values[name] = values[name].replace(tzinfo=UTC)
    extra = row["details"] or {}
    return Prediction(**values, **extra)


def _row_promotion(row: Any) -> PromotionRecord:
    values = {name: row[name] for name in row if name not in {"id", "details"}}
    if values["decided_at"].tzinfo is None:
        values["decided_at"] = values["decided_at"].replace(tzinfo=UTC)
    details = row["details"] or {}
    return PromotionRecord(
        **values,
        candidate_metrics=details.get("candidate_metrics") or {},
        champion_metrics=details.get("champion_metrics"),
    )
