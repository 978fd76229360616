"""Each model family's assets on a real Dagster instance and MLflow store: train, gate, predict on windows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl
import pytest

from factory_pipelines.definitions import build_definitions
from factory_pipelines.settings import FactorySettings
from factory_pipelines.simulator import Fleet, FleetConfig
from factory_pipelines.store import ServingStore
from sensors.window_sensor import windows_run_request
from tests.fleet_windows import write_fleet_windows


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def train(
    defs: dg.Definitions, instance: dg.DagsterInstance, model: str, dataset: dict[str, object], **config: object
) -> dg.ExecuteInProcessResult:
    run_config = {"ops": {f"{model}_dataset": {"config": dataset}, model: {"config": config}}}
    result = defs.resolve_job_def(f"{model}_training_job").execute_in_process(instance=instance, run_config=run_config)
    assert result.success
    return result


def materialized(result: dg.ExecuteInProcessResult, asset: str) -> list[dict[str, object]]:
    return [
        {name: value.value for name, value in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(asset)
    ]


def score_windows(defs: dg.Definitions, instance: dg.DagsterInstance, keys: list[str]) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions("telemetry_windows", keys)
    request = windows_run_request(keys)
    result = defs.resolve_job_def("window_predictions_job").execute_in_process(
        instance=instance, tags=request.tags, partition_key=request.partition_key
    )
    assert result.success
    return result


def test_safety_hazard_trains_gates_and_scores_zones_of_live_windows(
    factory_settings: FactorySettings, instance: dg.DagsterInstance
) -> None:
    settings = factory_settings.model_copy(update={"window_seconds": 10.0})
    defs = build_definitions(settings)
    small = {"simulated_zones": 4, "simulated_windows": 720}
    first = materialized(train(defs, instance, "safety_hazard", small, max_iter=40), "safety_hazard")[-1]
    assert first["model_version"] == "1" and first["alias"] == "champion"
    assert first["brier"] < first["brier_prevalence"]  # type: ignore[operator]  # beats the base rate

    fleet = Fleet(
        FleetConfig(machines=0, robots=0, cleanrooms=0, safety_stations=2, cameras=0),
        {"safety-01": "gas_leak"},
        seq_start=0,
    )
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    keys = write_fleet_windows(settings, fleet, start, windows=3)
    result = score_windows(defs, instance, keys)
    # no energy champion yet: energy predictions are skipped, not failed, so the windows stay backfillable
    assert materialized(result, "energy_anomaly_predictions") == []
    events = materialized(result, "safety_hazard_predictions")
    assert len(events) == len(keys)  # one materialization per window partition, one run
    assert events[-1]["predictions"] == 3 * 2 and events[-1]["model_version"] == "1"

    frame = pl.read_parquet(settings.predictions_dir / "safety_hazard" / f"{keys[-1]}.parquet")
    by_station = dict(zip(frame["asset_id"], frame["score"], strict=True))
    assert by_station["safety-01"] > by_station["safety-02"]  # the forced gas leak reads as the riskier zone
    store = ServingStore(settings.resolved_db_url)
    try:
        latest = store.latest_predictions(model_name="safety_hazard")
    finally:
        store.dispose()
    assert {p.asset_id for p in latest} == {"safety-01", "safety-02"}
    assert {p.model_version for p in latest} == {"1"} and all(p.label in {"low", "medium", "high"} for p in latest)


def test_cyber_detector_flags_the_machine_under_a_network_fault(
    factory_settings: FactorySettings, instance: dg.DagsterInstance
) -> None:
    settings = factory_settings.model_copy(update={"window_seconds": 10.0})
    defs = build_definitions(settings)
    small = {"n_machines": 4, "n_windows": 120}
    first = materialized(train(defs, instance, "cyber_detector", small, max_iter=40), "cyber_detector")[-1]
    assert first["registered_name"] == "cyber_detector" and first["alias"] == "champion"
    assert first["f1"] > first["baseline_f1"]  # type: ignore[operator]

    fleet = Fleet(
        FleetConfig(machines=3, robots=0, cleanrooms=0, safety_stations=0, cameras=0),
        {"machine-02": "network"},
        seq_start=0,
    )
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    keys = write_fleet_windows(settings, fleet, start, windows=2)
    result = score_windows(defs, instance, keys)
    assert materialized(result, "cyber_detector_predictions")[-1]["predictions"] == 3 * 2
    frame = pl.read_parquet(settings.predictions_dir / "cyber_detector" / f"{keys[-1]}.parquet")
    verdicts = dict(zip(frame["asset_id"], frame["label"], strict=True))
    assert verdicts["machine-02"] == "attack"
    assert frame.filter(pl.col("asset_id") == "machine-02")["score"][0] == frame["score"].max()


def test_rul_and_ppe_train_in_dagster_and_score_robots_and_camera_frames(
    factory_settings: FactorySettings, instance: dg.DagsterInstance
) -> None:
    settings = factory_settings.model_copy(update={"window_seconds": 10.0})
    defs = build_definitions(settings)
    rul = materialized(
        train(
            defs,
            instance,
            "rul_lstm",
            {"n_robots": 6, "lives_per_robot": 1},
            max_epochs=2,
            ensemble_size=1,
            lstm_units=16,
        ),
        "rul_lstm",
    )[-1]
    assert rul["registered_name"] == "rul_lstm" and rul["alias"] == "champion"
    ppe = materialized(
        train(defs, instance, "ppe_vision", {"generated_frames": 60}, epochs=1, image_size=128, crop_size=96),
        "ppe_vision",
    )[-1]
    assert ppe["registered_name"] == "ppe_vision" and ppe["alias"] == "champion"

    fleet = Fleet(
        FleetConfig(machines=0, robots=2, cleanrooms=0, safety_stations=0, cameras=1),
        {"robot-01": "bearing_outer"},
        seq_start=0,
    )
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    keys = write_fleet_windows(settings, fleet, start, windows=2)
    result = score_windows(defs, instance, keys)

    rul_rows = pl.read_parquet(settings.predictions_dir / "rul_lstm" / f"{keys[-1]}.parquet")
    assert sorted(rul_rows["asset_id"]) == ["robot-01", "robot-02"]
    assert (rul_rows["rul_lower"] <= rul_rows["score"]).all() and (rul_rows["score"] <= rul_rows["rul_upper"]).all()
    assert materialized(result, "rul_predictions")[-1]["model_version"] == "1"
    # Each window's readings are binned into steps once (robot_steps); a window without its steps
    # file (binned before robot_steps existed) is binned from its rows, to the same predictions.
    steps_file = settings.features_dir / "rul_lstm" / f"{keys[0]}.parquet"
    assert pl.read_parquet(steps_file)["asset_id"].unique().sort().to_list() == ["robot-01", "robot-02"]
    steps_file.unlink()
    score_windows(defs, instance, [keys[-1]])
    again = pl.read_parquet(settings.predictions_dir / "rul_lstm" / f"{keys[-1]}.parquet")
    assert not steps_file.exists() and again.select("asset_id", "score").equals(rul_rows.select("asset_id", "score"))

    ppe_rows = pl.read_parquet(settings.predictions_dir / "ppe_vision" / f"{keys[-1]}.parquet")
    assert ppe_rows["asset_id"].to_list() == ["camera-01"]
    assert ppe_rows["frames"][0] == 2  # a frame every 5 s in a 10 s window
    assert ppe_rows["label"][0] in {"violation", "compliant"} and 0.0 <= ppe_rows["score"][0] <= 1.0
    # Each frame named the worker in front of the camera: the tallies add up to the camera's frames.
    (tallies,) = ppe_rows["workers"].to_list()
    assert sum(t["frames"] for t in tallies) == ppe_rows["frames"][0] == len(tallies)
    assert sum(t["frames_in_violation"] for t in tallies) == ppe_rows["frames_in_violation"][0]
