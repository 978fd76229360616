"""The serving store on SQLite and, when one answers, on PostgreSQL: same code, same results."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine

import factory_pipelines
from factory_pipelines.store import ServingStore, StoreUnavailableError, _prediction_row, predictions_table
from factory_pipelines.telemetry import Prediction

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(db_url: str) -> Iterator[ServingStore]:
    opened = ServingStore(db_url)
    yield opened
    opened.dispose()


def _prediction(
    asset: str, minute: int, score: float, *, model: str = "energy_iforest", version: str = "1"
) -> Prediction:
    start = T0 + timedelta(minutes=minute)
    return Prediction(
        model_name=model,
        model_version=version,
        asset_id=asset,
        window_key=f"{start:%Y%m%dT%H%M%SZ}-collector-1-000",
        score=score,
        label="anomaly" if score > 0.5 else "normal",
        produced_at=start + timedelta(seconds=65),
        window_start=start,
        window_end=start + timedelta(minutes=1),
        mlflow_run_id="run-1",
        dagster_run_id="dag-1",
        features={"power_mean": 3.5},
    )


def test_latest_is_the_newest_window_per_model_and_asset(store: ServingStore) -> None:
    rows = [_prediction(a, m, m / 10) for a in ("machine-01", "machine-02") for m in range(5)]
    rows.append(_prediction("machine-01", 1, 0.9, model="other_model"))
    assert store.upsert_predictions(rows) == 11
    latest = store.latest_predictions()
    assert [(p.model_name, p.asset_id, p.score) for p in latest] == [
        ("energy_iforest", "machine-01", 0.4),
        ("energy_iforest", "machine-02", 0.4),
        ("other_model", "machine-01", 0.9),
    ]
    assert latest[0].window_start == T0 + timedelta(minutes=4)
    assert latest[0].model_extra == {"features": {"power_mean": 3.5}}
    assert [p.asset_id for p in store.latest_predictions(model_name="energy_iforest", asset_id="machine-02")] == [
        "machine-02"
    ]


def test_recomputing_a_window_replaces_its_prediction(store: ServingStore) -> None:
    store.upsert_predictions([_prediction("machine-01", 0, 0.1)])
    store.upsert_predictions([_prediction("machine-01", 0, 0.8, version="2")])
    assert store.count_predictions() == 1
    (only,) = store.latest_predictions()
    assert (only.model_version, only.score, only.label) == ("2", 0.8, "anomaly")


def test_the_kept_latest_row_survives_backfills_and_agrees_with_the_full_ranking(store: ServingStore) -> None:
    store.upsert_predictions([_prediction("machine-01", 5, 0.2)])
    store.upsert_predictions([_prediction("machine-01", 2, 0.9, version="2")])  # a backfill of an older window
    (kept,) = store.latest_predictions()
    assert (kept.window_start, kept.score, kept.model_version) == (T0 + timedelta(minutes=5), 0.2, "1")
    store.upsert_predictions([_prediction("machine-01", 5, 0.7, version="3")])  # the newest window, recomputed
    assert [(p.score, p.model_version) for p in store.latest_predictions()] == [(0.7, "3")]
    # The kept table answers what ranking every stored prediction answers.
    ranked = store.latest_predictions(since=T0 - timedelta(days=1), before=T0 + timedelta(days=1))
    assert [p.model_dump() for p in ranked] == [p.model_dump() for p in store.latest_predictions()]


def test_the_migration_fills_the_latest_table_from_stored_predictions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = AlembicConfig()
    config.set_main_option("script_location", str(Path(factory_pipelines.__file__).with_name("migrations")))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "0006")
    engine = create_engine(url)
    rows = [_prediction("machine-01", m, m / 10) for m in range(3)] + [_prediction("machine-02", 1, 0.5)]
    with engine.begin() as conn:
        conn.execute(predictions_table.insert(), [_prediction_row(p) for p in rows])
    engine.dispose()
    store = ServingStore(url)  # migrates to the newest schema
    try:
        assert [(p.asset_id, p.score) for p in store.latest_predictions()] == [("machine-01", 0.2), ("machine-02", 0.5)]
    finally:
        store.dispose()


def test_history_pages_newest_first_within_a_time_range(store: ServingStore) -> None:
    store.upsert_predictions([_prediction("machine-01", m, 0.1) for m in range(10)])
    page = store.prediction_history(
        asset_id="machine-01", start=T0 + timedelta(minutes=2), end=T0 + timedelta(minutes=8), limit=4, offset=0
    )
    assert page.total == 6
    assert [p.window_start.minute for p in page.items] == [7, 6, 5, 4]
    rest = store.prediction_history(
        asset_id="machine-01", start=T0 + timedelta(minutes=2), end=T0 + timedelta(minutes=8), limit=4, offset=4
    )
    assert [p.window_start.minute for p in rest.items] == [3, 2]


def test_unreachable_store_raises_a_clear_error(tmp_path: Path) -> None:
    store = ServingStore(f"sqlite:///{tmp_path / 'x.db'}")
    store.engine.dispose()
    broken = ServingStore("postgresql+psycopg://nobody@127.0.0.1:9/none", apply_migrations=False)
    with pytest.raises(StoreUnavailableError, match="serving store unreachable"):
        broken.ping()
