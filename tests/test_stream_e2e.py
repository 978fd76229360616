"""The whole stream path in one test: simulator → broker → collector → sensor → prediction partition → REST.

Every part is the real one: the simulator publishes over a real broker, the collector seals real
window files, the Dagster sensor runs against a real instance and its run request is executed,
the champion comes from a real MLflow store, and the API answers from the real serving store.
"""

from __future__ import annotations

import threading

import dagster as dg
import polars as pl
from fastapi.testclient import TestClient

from factory_pipelines.dagster_instance import ensure_energy_champion
from factory_pipelines.settings import FactorySettings
from factory_pipelines.simulator import FleetConfig, run_simulator
from factory_pipelines.windows import iter_sealed_keys, read_window
from sensors.collector import Collector
from serving.app import create_app
from tests.window_runs import WINDOW_PARTITIONS, hand_over_and_run

MACHINES = [f"machine-{n:02d}" for n in range(1, 5)]


def test_simulated_telemetry_reaches_rest_as_predictions(factory_settings: FactorySettings) -> None:
    settings = factory_settings  # 2 s windows, all state in a tmp dir, a real broker
    version = ensure_energy_champion(settings)

    stop = threading.Event()
    collector = Collector(settings)
    thread = threading.Thread(target=collector.run, args=(stop,), daemon=True)
    thread.start()
    assert collector.subscribed.wait(15), "collector never subscribed"
    published = run_simulator(
        settings,
        FleetConfig(machines=len(MACHINES), robots=1, cleanrooms=1, rate_hz=5, seed=7),
        faults={"machine-02": "energy_spike"},
        duration_s=6,
    )
    stop.set()  # a clean stop flushes, acknowledges and seals the open window
    thread.join(30)
    assert not thread.is_alive()

    keys = list(iter_sealed_keys(settings.windows_dir))
    assert len(keys) >= 3
    stored = pl.concat([read_window(settings.windows_dir, key) for key in keys])
    assert stored.height == published.total == collector.stats.rows_written
    assert set(MACHINES) <= set(stored["asset_id"])

    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        added, run = hand_over_and_run(settings, instance)
        assert added == keys and instance.get_dynamic_partitions(WINDOW_PARTITIONS) == keys
        assert run.success

    with TestClient(create_app(settings)) as api:
        latest = api.get("/predictions/latest", params={"model": "energy_iforest"})
        assert latest.status_code == 200
        rows = latest.json()
        rows = rows["items"] if isinstance(rows, dict) else rows
        assert sorted(r["asset_id"] for r in rows) == MACHINES
        assert {r["model_version"] for r in rows} == {version}
        history = api.get("/predictions/history", params={"model": "energy_iforest", "limit": 1000}).json()
        by_asset: dict[str, list[float]] = {}
        for row in history["items"]:
            by_asset.setdefault(row["asset_id"], []).append(row["score"])
            assert row["window_key"] in keys
        # The injected energy spike stands out: machine-02 scores above every healthy machine.
        spiking = max(by_asset.pop("machine-02"))
        assert all(spiking > max(scores) for scores in by_asset.values())
