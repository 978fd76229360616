"""cyber_model and ton_iot on real components: the simulator's machines, a TON_IoT file, a tmp MLflow store."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from factory_pipelines import cyber_model as cm
from factory_pipelines import ton_iot
from factory_pipelines.energy_model import MACHINE_FRAME_SCHEMA
from factory_pipelines.model_registry import ensure_experiment, use_tracking_uri

TON_IOT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "ton_iot"
SMALL_PLANT = cm.PlantHistoryParams(n_machines=6, n_windows=120, readings_per_window=10, seed=5)
SMALL_MODEL = cm.CyberParams(max_iter=40, max_leaf_nodes=15)


@pytest.fixture(scope="module")
def plant_split() -> tuple[cm.LabelledFeatures, cm.LabelledFeatures]:
    return cm.split_train_validation(cm.plant_dataset(SMALL_PLANT), SMALL_PLANT.validation_fraction)


@pytest.fixture(scope="module")
def plant_model(plant_split: tuple[cm.LabelledFeatures, cm.LabelledFeatures]) -> cm.CyberModel:
    train, _ = plant_split
    return cm.fit(train, SMALL_MODEL)


def test_plant_history_is_labelled_and_split_by_time(
    plant_split: tuple[cm.LabelledFeatures, cm.LabelledFeatures],
) -> None:
    train, validation = plant_split
    assert set(train.types) == {cm.NORMAL, *cm.PLANT_ATTACK_TYPES}
    assert cm.types_missing_from(train, validation) == {"train": [], "validation": []}
    assert train.frame["window_key"].max() < validation.frame["window_key"].min()  # type: ignore[operator]
    every_row = pl.concat([train.frame, validation.frame])
    assert every_row.height == SMALL_PLANT.n_machines * SMALL_PLANT.n_windows
    attack_share = float((every_row["type"] != cm.NORMAL).mean())  # type: ignore[arg-type]
    assert 0.08 < attack_share < 0.2  # asked for 0.15; episodes that find no free machine are dropped


def test_plant_model_beats_trivial_baselines_on_later_windows(
    plant_model: cm.CyberModel, plant_split: tuple[cm.LabelledFeatures, cm.LabelledFeatures]
) -> None:
    _, validation = plant_split
    metrics = cm.evaluate(plant_model, validation)

    assert metrics["f1"] > metrics["baseline_f1"] + 0.4  # always saying "attack": about 0.25 here
    assert metrics["roc_auc"] > 0.9  # random scores: 0.5
    assert metrics["macro_f1"] > metrics["baseline_macro_f1"] + 0.4
    assert metrics["n_rows"] == validation.frame.height
    for kind in cm.PLANT_ATTACK_TYPES:
        assert {f"f1_{kind}", f"precision_{kind}", f"recall_{kind}", f"detect_recall_{kind}"} <= metrics.keys()
    assert 0.0 < plant_model.threshold < 1.0  # chosen on the latest training slice


def test_window_features_of_one_live_window_match_the_history_rows(plant_model: cm.CyberModel) -> None:
    simulated = cm.simulate_plant_network(
        cm.PlantHistoryParams(n_machines=4, n_windows=6, readings_per_window=10, seed=9)
    )
    history = cm.labelled_plant_features(simulated)
    key = history["window_key"].unique().sort()[3]
    window = simulated.machines.filter(pl.col("window_key") == key)
    assert dict(window.schema) == MACHINE_FRAME_SCHEMA

    features = cm.window_features(window)
    expected = history.filter(pl.col("window_key") == key).drop("type")
    assert features.equals(expected)

    # A legacy machine without network fields gets no row; scores name each machine once.
    legacy = window.filter(pl.col("asset_id") == "machine-01").with_columns(
        pl.lit("legacy-1").alias("asset_id"),
        pl.lit(None, pl.Float64).alias("network_latency_ms"),
        pl.lit(None, pl.Float64).alias("packet_loss_pct"),
        pl.lit(None, pl.Float64).alias("error_rate_pct"),
    )
    scored = plant_model.score(cm.window_features(pl.concat([window, legacy])))
    assert scored.columns == ["window_key", "asset_id", "probability", "label", "attack_type"]
    assert scored["asset_id"].to_list() == ["machine-01", "machine-02", "machine-03", "machine-04"]
    assert set(scored["label"].to_list()) <= {cm.ATTACK, cm.NORMAL}
    assert set(scored["attack_type"].to_list()) <= {cm.NORMAL, *cm.PLANT_ATTACK_TYPES}


def test_the_plants_network_stats_are_scored_as_one_asset(plant_model: cm.CyberModel) -> None:
    """`factory/network/stats` from the earlier publisher: latency and packet loss, no error rate."""
    simulated = cm.simulate_plant_network(
        cm.PlantHistoryParams(n_machines=4, n_windows=2, readings_per_window=10, seed=9)
    )
    key = simulated.machines["window_key"].unique().sort()[1]
    window = simulated.machines.filter(pl.col("window_key") == key)
    stats = window.filter(pl.col("asset_id") == "machine-02").with_columns(
        pl.lit("plant-network").alias("asset_id"),
        *(
            pl.lit(None, dtype).alias(name)
            for name, dtype in MACHINE_FRAME_SCHEMA.items()
            if name not in {"window_key", "asset_id", "ts", "network_latency_ms", "packet_loss_pct"}
        ),
    )
    features = cm.window_features(pl.concat([window, stats]))
    network = features.filter(pl.col("asset_id") == "plant-network").row(0, named=True)
    twin = features.filter(pl.col("asset_id") == "machine-02").row(0, named=True)
    assert network["latency_mean"] == twin["latency_mean"] and network["error_mean"] is None
    scored = plant_model.score(features)
    assert "plant-network" in scored["asset_id"].to_list()


# ---- TON_IoT -------------------------------------------------------------------------------


def test_ton_iot_reader_removes_duplicates_and_normalises_spelling() -> None:
    raw = ton_iot.read_raw_device(ton_iot.device_path(TON_IOT_DIR, "Garage_Door"))
    exact_duplicates = raw.height - raw.unique().height
    assert exact_duplicates > 1000  # the file really has them

    data = ton_iot.read_ton_iot(TON_IOT_DIR, ["Garage_Door"])
    frame = data.frame
    assert data.rows_read == raw.height
    assert data.exact_duplicates_removed == exact_duplicates
    assert frame.height == raw.height - data.duplicates_removed
    identity = ["device", "ts", "type", *ton_iot.READING_COLUMNS["Garage_Door"]]
    assert frame.select(identity).is_duplicated().sum() == 0
    # `false  ` (normal rows) and `0` (attack rows) are one value once read
    assert sorted(frame["sphone_signal"].unique().to_list()) == [0.0, 1.0]
    assert sorted(frame["door_state"].unique().to_list()) == [0.0, 1.0]
    assert frame["ts"].null_count() == 0
    assert ((frame["label"] == 1) == (frame["type"] != ton_iot.NORMAL_TYPE)).all()


def test_ton_iot_split_is_by_time_within_each_device_and_type() -> None:
    labelled, _ = cm.ton_iot_dataset(TON_IOT_DIR, cm.TonIotParams(devices="Modbus,Thermostat"))
    train, test = cm.split_train_validation(labelled, 0.3)

    assert train.frame.height + test.frame.height == labelled.frame.height
    assert cm.types_missing_from(train, test) == {"train": [], "validation": []}
    last_train = train.frame.group_by("device", "type").agg(pl.col("ts").max().alias("last_train"))
    first_test = test.frame.group_by("device", "type").agg(pl.col("ts").min().alias("first_test"))
    joined = last_train.join(first_test, on=["device", "type"])
    assert joined.height == last_train.height
    assert (joined["last_train"] <= joined["first_test"]).all()
    assert "hour_sin" not in labelled.feature_columns and "seconds_since_previous" not in labelled.feature_columns


def test_ton_iot_device_slice_beats_the_majority_baseline_on_later_rows() -> None:
    labelled, _ = cm.ton_iot_dataset(TON_IOT_DIR, cm.TonIotParams(devices="Weather"))
    train, test = cm.split_train_validation(labelled, 0.3)
    params = cm.CyberParams(max_iter=15, max_leaf_nodes=15, threshold_strategy="fixed")
    model = cm.fit(train, params)
    metrics = cm.evaluate(model, test)

    # Attacks are the majority here, so the majority baseline says "attack" always (F1 about 0.76).
    assert metrics["f1"] > metrics["baseline_f1"] + 0.04
    assert metrics["roc_auc"] > 0.8
    assert metrics["macro_f1"] > metrics["baseline_macro_f1"] + 0.15
    for kind in ("ddos", "backdoor", "scanning", "normal"):
        assert f"f1_{kind}" in metrics


# ---- MLflow round trip ---------------------------------------------------------------------


def test_log_and_load_round_trip_through_the_registry(
    plant_model: cm.CyberModel, plant_split: tuple[cm.LabelledFeatures, cm.LabelledFeatures], tmp_path: Path
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    _, validation = plant_split
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    use_tracking_uri(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri, cm.MODEL_NAME, tmp_path / "artifacts")
    with mlflow.start_run(experiment_id=experiment_id):
        version = cm.log_model(plant_model, registered_name=cm.MODEL_NAME)
    assert version == "1"
    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(cm.MODEL_NAME, "champion", version)

    for uri in (f"models:/{cm.MODEL_NAME}/{version}", f"models:/{cm.MODEL_NAME}@champion"):
        loaded = cm.load_model(uri)
        assert loaded.feature_columns == plant_model.feature_columns
        assert loaded.classes == plant_model.classes
        assert loaded.threshold == plant_model.threshold
        assert loaded.dataset == cm.DATASET_PLANT
        assert loaded.score(validation.frame).equals(plant_model.score(validation.frame))
        assert cm.evaluate(loaded, validation) == cm.evaluate(plant_model, validation)

    info = mlflow.models.get_model_info(f"models:/{cm.MODEL_NAME}/{version}")
    assert info.signature is not None
    assert [spec.name for spec in info.signature.inputs.inputs] == list(cm.PLANT_FEATURE_COLUMNS)
    assert info.saved_input_example_info is not None
