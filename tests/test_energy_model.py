"""energy_model without Dagster or MLflow: typed rows, features, and the IsolationForest's verdicts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from factory_pipelines import energy_model as em
from factory_pipelines.telemetry import MachineTelemetry, dump_payload
from factory_pipelines.windows import WINDOW_SCHEMA, window_key

START = datetime(2026, 11, 25, 16, 0, tzinfo=UTC)
MACHINES = 5


def machine_rows(
    rng: np.random.Generator, start: datetime, *, rows: int = 10, spike: str | None = None
) -> list[dict[str, object]]:
    """Window rows (WINDOW_SCHEMA) of a fleet where power follows speed; `spike` draws 2.5x power."""
    out: list[dict[str, object]] = []
    for m in range(MACHINES):
        asset = f"machine-{m}"
        for i in range(rows):
            speed = rng.normal(300 + 20 * m, 25)
            power = 2.0 + 0.02 * speed + rng.normal(0, 0.3)
            if asset == spike:
                power *= 2.5
            ts = start + timedelta(seconds=i)
            payload = MachineTelemetry(
                asset_id=asset,
                ts=ts,
                seq=i,
                Machine_ID=str(m),
                Operation_Mode="Active",
                Temperature_C=rng.normal(65, 3),
                Vibration_Hz=rng.normal(30, 2),
                Power_Consumption_kW=power,
                Production_Speed_units_per_hr=speed,
                Efficiency_Status="High",
            )
            out.append(
                {
                    "asset_id": asset,
                    "kind": "machine",
                    "site": "main",
                    "topic": f"factory/main/{asset}/telemetry",
                    "ts": ts,
                    "received_at": ts,
                    "seq": i,
                    "payload": dump_payload(payload).decode(),
                }
            )
    return out


def window_frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=WINDOW_SCHEMA)


def features_of(rows: list[dict[str, object]], key: str) -> pl.DataFrame:
    return em.machine_features(em.type_machine_rows(window_frame(rows), key).machines)


@pytest.fixture(scope="module")
def history() -> pl.DataFrame:
    rng = np.random.default_rng(7)
    frames = []
    for w in range(40):
        start = START + timedelta(minutes=w)
        frames.append(features_of(machine_rows(rng, start), window_key(start, "collector-1")))
    return pl.concat(frames)


def test_machine_rows_are_typed_deduplicated_and_validated() -> None:
    rng = np.random.default_rng(1)
    rows = machine_rows(rng, START, rows=3)
    extra_ts = START + timedelta(seconds=30)
    envelope = {"site": "main", "topic": "t", "ts": extra_ts, "received_at": extra_ts}
    rows += [
        rows[0],  # redelivered: same (asset_id, seq)
        {**envelope, "asset_id": "legacy", "kind": "machine", "seq": None, "payload": '{"Temperature_C": 70}'},
        {**envelope, "asset_id": "legacy", "kind": "machine", "seq": None, "payload": '{"Temperature_C": 71}'},
        {**envelope, "asset_id": "bad", "kind": "machine", "seq": 1, "payload": '{"Temperature_C": "hot"}'},
        {**envelope, "asset_id": "robot-1", "kind": "robot", "seq": 1, "payload": json.dumps({"temperature": 40})},
    ]
    typed = em.type_machine_rows(window_frame(rows), "k")

    assert dict(typed.machines.schema) == em.MACHINE_FRAME_SCHEMA
    assert typed.rows_by_kind == {"machine": MACHINES * 3 + 4, "robot": 1}
    assert typed.duplicate_rows == 1
    assert typed.invalid_rows == 1 and "bad" in typed.invalid_reasons[0]
    # both legacy rows without seq are kept; the measurement survives, absent fields are null
    legacy = typed.machines.filter(pl.col("asset_id") == "legacy")
    assert legacy["temperature_c"].to_list() == [70.0, 71.0]
    assert legacy["power_consumption_kw"].null_count() == 2
    assert em.machine_frame_problems(typed.machines) == []
    redelivered = typed.machines.filter(pl.col("seq").is_not_null()).head(1)
    assert em.machine_frame_problems(pl.concat([typed.machines, redelivered])) != []


def test_features_one_row_per_machine_and_spike_stands_out() -> None:
    rng = np.random.default_rng(2)
    features = features_of(machine_rows(rng, START, spike="machine-2"), "k")

    assert dict(features.schema) == em.FEATURE_FRAME_SCHEMA
    assert features["asset_id"].to_list() == [f"machine-{m}" for m in range(MACHINES)]
    assert features["n_rows"].to_list() == [10] * MACHINES
    by_residual = features.sort("power_residual_mean", descending=True)["asset_id"].to_list()
    assert by_residual[0] == "machine-2"
    by_ratio = features.sort("power_per_speed_mean", descending=True)["asset_id"].to_list()
    assert by_ratio[0] == "machine-2"


def test_iforest_flags_the_energy_spike_and_not_the_normal_machines(history: pl.DataFrame) -> None:
    model = em.fit_iforest(history, em.IForestParams(n_estimators=100, contamination=0.02, random_state=3))
    rng = np.random.default_rng(99)
    verdicts = em.score_features(model, features_of(machine_rows(rng, START, spike="machine-2"), "spiky"))

    spiky = verdicts.filter(pl.col("asset_id") == "machine-2").row(0, named=True)
    others = verdicts.filter(pl.col("asset_id") != "machine-2")
    assert spiky["label"] == em.ANOMALY
    assert spiky["score"] > spiky["threshold"] == pytest.approx(em.model_threshold(model))
    assert spiky["score"] > others["score"].max()
    assert set(others["label"]) == {em.NORMAL}
    # the label is scikit-learn's own verdict
    predicted = model.predict(em.feature_matrix(em.scoreable(features_of(machine_rows(rng, START), "x"))))
    assert set(predicted) <= {1, -1}


def test_fit_is_deterministic_with_a_seed(history: pl.DataFrame) -> None:
    params = em.IForestParams(n_estimators=50, random_state=11)
    first = em.anomaly_scores(em.fit_iforest(history, params), history)
    second = em.anomaly_scores(em.fit_iforest(history, params), history)
    np.testing.assert_array_equal(first, second)


def test_training_metrics_report_threshold_and_share(history: pl.DataFrame) -> None:
    model = em.fit_iforest(history, em.IForestParams(n_estimators=50, contamination=0.05))
    metrics = em.training_metrics(model, history)
    assert metrics["training_rows"] == history.height
    assert metrics["training_windows"] == 40
    assert metrics["anomaly_share"] == pytest.approx(0.05, abs=0.02)
    assert metrics["score_p50"] < metrics["threshold"] <= metrics["score_max"]


def test_machines_without_power_are_not_scored(history: pl.DataFrame) -> None:
    model = em.fit_iforest(history, em.IForestParams(n_estimators=20))
    rows = machine_rows(np.random.default_rng(4), START, rows=2)
    no_power = {**rows[0], "asset_id": "legacy", "seq": None, "payload": '{"Temperature_C": 70}'}
    verdicts = em.score_features(model, features_of([*rows, no_power], "k"))
    assert "legacy" not in verdicts["asset_id"].to_list()
    assert verdicts.height == MACHINES


def test_the_earlier_devices_partial_readings_become_machine_rows_and_plant_energy_is_scored(
    history: pl.DataFrame,
) -> None:
    rows = machine_rows(np.random.default_rng(5), START, rows=4)
    ts = START + timedelta(seconds=2)
    envelope = {"site": "main", "ts": ts, "received_at": ts, "seq": None}
    rows += [
        {
            **envelope,
            "asset_id": "machine-1",
            "kind": "maintenance",
            "topic": "factory/machine/machine-1/maintenance",
            "payload": json.dumps({"vibration": 44.0, "temperature": 81.5}),
        },
        {
            **envelope,
            "asset_id": "plant-energy",
            "kind": "energy_stats",
            "topic": "factory/energy/stats",
            "payload": json.dumps({"current_load": 40.0}),
        },
        {
            **envelope,
            "asset_id": "plant-network",
            "kind": "network_stats",
            "topic": "factory/network/stats",
            "payload": json.dumps({"latency": 25.0, "packet_loss": 1.5}),
        },
        {
            **envelope,
            "asset_id": "plant-energy",
            "kind": "energy_stats",
            "topic": "factory/energy/stats",
            "payload": json.dumps({"current_load": "lots"}),
        },
    ]
    typed = em.type_machine_rows(window_frame(rows), "k")

    assert typed.invalid_rows == 1 and "plant-energy" in typed.invalid_reasons[0]
    assert em.machine_frame_problems(typed.machines) == []
    by_asset = {asset: frame for (asset,), frame in typed.machines.group_by("asset_id")}
    maintenance = by_asset["machine-1"].filter(pl.col("power_consumption_kw").is_null())
    assert maintenance.select("vibration_hz", "temperature_c").row(0) == (44.0, 81.5)
    assert by_asset["machine-1"].height == 5  # its four export rows and the maintenance reading
    assert by_asset["plant-energy"].select("power_consumption_kw").to_series().to_list() == [40.0]
    assert by_asset["plant-network"].select("network_latency_ms", "packet_loss_pct").row(0) == (25.0, 1.5)
    assert by_asset["plant-network"]["power_consumption_kw"].null_count() == 1

    # The plant's load draws far more than any machine's power at its speed: scored, and it stands out.
    verdicts = em.score_features(
        em.fit_iforest(history, em.IForestParams(n_estimators=50)), em.machine_features(typed.machines)
    )
    assert set(verdicts["asset_id"]) == {*(f"machine-{m}" for m in range(MACHINES)), "plant-energy"}
    assert verdicts.sort("score")["asset_id"][-1] == "plant-energy"


def plant_export(n: int, step_s: int, rng: np.random.Generator) -> pl.DataFrame:
    stamps = [(datetime(2026, 1, 1) + timedelta(seconds=i * step_s)).isoformat(sep=" ") for i in range(n)]
    return pl.DataFrame(
        {
            "Timestamp": stamps * 2,
            "Machine_ID": [1] * n + [2] * n,
            "Operation_Mode": "Active",
            "Temperature_C": rng.normal(65, 3, 2 * n),
            "Power_Consumption_kW": rng.normal(8, 1, 2 * n),
            "Production_Speed_units_per_hr": rng.normal(300, 20, 2 * n),
        }
    )


def test_plant_export_rows_are_grouped_into_windows() -> None:
    rng = np.random.default_rng(5)
    dense = em.machine_rows_from_plant_export(plant_export(1200, 1, rng), window_seconds=30)
    assert dict(dense.schema) == em.MACHINE_FRAME_SCHEMA
    assert dense["window_key"].n_unique() == 40  # one reading a second: windows by time, like live ones
    sparse = em.machine_rows_from_plant_export(plant_export(120, 60, rng), window_seconds=30)
    assert sparse["window_key"].n_unique() == 60  # one reading a minute: chunks of 2 readings per machine
    features = em.machine_features(sparse)
    assert features.height == 2 * 60
    assert features["vibration_hz_mean"].null_count() == features.height  # not in the export: null, imputed later


def test_simulated_baseline_gives_trainable_features(tmp_path) -> None:  # type: ignore[no-untyped-def]
    baseline = em.simulated_baseline(tmp_path, window_seconds=2, rows=1000, machines=4)
    assert baseline.generator == em.BASELINE_GENERATOR
    assert (tmp_path / baseline.source_uri).is_file()
    assert em.count_windows(baseline.features) >= 20
    model = em.fit_iforest(baseline.features, em.IForestParams(n_estimators=20))
    assert em.score_features(model, baseline.features).height == em.scoreable(baseline.features).height


def test_training_data_prefers_enough_history(history: pl.DataFrame, tmp_path) -> None:  # type: ignore[no-untyped-def]
    def baseline() -> em.BaselineData:
        return em.BaselineData(history.head(5), "test", str(tmp_path))

    enough = em.choose_training_data(history, "hist", min_history_windows=40, baseline=baseline)
    assert enough.source == em.TRAINING_SOURCE_HISTORY and enough.features.height == history.height
    short = em.choose_training_data(history, "hist", min_history_windows=41, baseline=baseline)
    assert short.source == em.TRAINING_SOURCE_BASELINE and short.baseline_generator == "test"
