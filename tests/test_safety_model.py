"""safety_hazard: the zone simulation, window features, episode-safe splits, calibrated model, MLflow round trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import brier_score_loss, roc_auc_score

from factory_pipelines import safety_model as sm
from factory_pipelines.model_registry import ensure_experiment, use_tracking_uri
from factory_pipelines.safety_sim import (
    HAZARD_KINDS,
    SAFETY_FAULTS,
    SafetyZoneModel,
    safety_rng,
    safety_zone_models,
)
from factory_pipelines.telemetry import Command, SafetyReading, dump_payload
from factory_pipelines.windows import WINDOW_SCHEMA

START = datetime(2026, 11, 25, 16, 0, tzinfo=UTC)
# Tiny but sufficient: 10 zones x 4 h of 20 s windows, a reading every 4 s (the model sees the same
# pace in training and validation; the live simulator reads once a second).
HISTORY_ZONES, HISTORY_WINDOWS, WINDOW_S, RATE_HZ = 10, 720, 20.0, 0.25
SMALL_PARAMS = sm.SafetyParams(max_iter=60, learning_rate=0.1, min_samples_leaf=20)


@pytest.fixture(scope="module")
def history() -> pl.DataFrame:
    return sm.safety_history(HISTORY_ZONES, HISTORY_WINDOWS, WINDOW_S, seed=11, rate_hz=RATE_HZ)


@pytest.fixture(scope="module")
def split(history: pl.DataFrame) -> sm.TrainValidation:
    return sm.split_train_validation(history, 0.25, seed=5)


@pytest.fixture(scope="module")
def model(split: sm.TrainValidation) -> sm.SafetyModel:
    return sm.fit(split.train, SMALL_PARAMS)


# ---- the zone simulation ------------------------------------------------------------------


def run_zone(seed: int, fault: str | None, seconds: int, *, zone: str = "assembly-1") -> pl.DataFrame:
    model = SafetyZoneModel("safety-01", safety_rng(seed, 1), fault, zone=zone)
    return pl.DataFrame([model.step(1.0) for _ in range(seconds)])


def test_zone_simulation_is_deterministic_for_a_seed() -> None:
    first, again, other = run_zone(5, None, 600), run_zone(5, None, 600), run_zone(6, None, 600)
    assert first.equals(again)
    assert not first.equals(other)
    assert first["zone"].unique().to_list() == ["assembly-1"]
    for row in first.head(50).iter_rows(named=True):  # every reading fits the contract
        SafetyReading(asset_id="safety-01", ts=START, **row)


def after_ramp(readings: pl.DataFrame) -> pl.DataFrame:
    return readings.tail(300)  # a forced episode has ramped up within 300 s


@pytest.mark.parametrize("fault", SAFETY_FAULTS)
def test_a_fault_forces_a_lasting_episode_that_shows_in_its_sensors(fault: str) -> None:
    normal = after_ramp(run_zone(21, None, 900, zone="machining-1"))
    forced = after_ramp(run_zone(21, fault, 900, zone="machining-1"))
    assert forced["true_hazard"].all()
    assert not normal["true_hazard"].any()  # this seed has no spontaneous episode in the first 15 minutes
    if fault == "gas_leak":
        assert forced["gas_ppm"].mean() > normal["gas_ppm"].mean() + 20
    elif fault == "crowding":
        assert forced["noise_db"].mean() > normal["noise_db"].mean() + 5
        assert forced["workers"].mean() > normal["workers"].mean() + 3
        assert forced["proximity_m"].median() < 2.0
    elif fault == "heat":
        assert forced["temperature"].mean() > normal["temperature"].mean() + 6
    elif fault == "proximity":
        assert forced["proximity_m"].median() < 1.0 < normal["proximity_m"].median()
    else:
        assert forced["ppe_violations"].mean() > normal["ppe_violations"].mean() + 0.5


def test_spontaneous_episodes_of_every_kind_ramp_up_before_they_count(history: pl.DataFrame) -> None:
    assert 0.05 < history["hazard"].mean() < 0.25
    assert set(history["hazard_kind"].unique()) == {*HAZARD_KINDS, sm.NO_HAZARD}
    # The window before an episode's first hazardous window often has part of it, never all of it.
    shares = history.sort("zone", "window_start").with_columns(
        pl.col("hazard_share").shift(1).over("zone").alias("previous_share")
    )
    onsets = shares.filter(pl.col("hazard") & (pl.col("previous_share") == 0))
    assert onsets.height > 20
    assert onsets["hazard_share"].mean() < 0.9


def test_faults_and_zones_are_validated() -> None:
    with pytest.raises(ValueError, match="gas_leak"):
        SafetyZoneModel("safety-01", safety_rng(1, 1), "earthquake")
    with pytest.raises(ValueError, match="safety-01"):
        safety_zone_models(1, 1, {"safety-09": "heat"})
    status, detail = SafetyZoneModel("safety-01", safety_rng(1, 1)).command(Command(command_id="c1", command="stop"))
    assert status == "rejected" and "no commands" in detail


def test_safety_history_with_a_fault_labels_that_zone_hazardous() -> None:
    frame = sm.safety_history(2, 30, 20.0, seed=3, rate_hz=0.5, faults={"safety-01": "gas_leak"})
    assert dict(frame.schema) == sm.HISTORY_SCHEMA
    assert frame.height == 2 * 30
    faulted = frame.filter(pl.col("zone") == "assembly-1").sort("window_start").tail(15)
    assert faulted["hazard"].all() and set(faulted["hazard_kind"]) == {"gas_leak"}
    assert faulted["gas_ppm_mean"].min() > frame.filter(pl.col("zone") == "welding-1")["gas_ppm_mean"].max()


# ---- typed rows and features --------------------------------------------------------------


def window_row(reading: SafetyReading | None, **envelope: object) -> dict[str, object]:
    """A sealed-window row (WINDOW_SCHEMA) carrying `reading`, or the raw `payload` given in `envelope`."""
    ts = envelope.get("ts", START)
    row = {"kind": "safety", "site": "main", "topic": "t", "ts": ts, "received_at": ts, **envelope}
    if reading is not None:
        row["payload"] = dump_payload(reading).decode()
    return row


def test_safety_rows_are_typed_validated_and_deduplicated() -> None:
    readings = [
        SafetyReading(
            asset_id="safety-01", ts=START + timedelta(seconds=i), seq=i, zone="paint-shop-1", gas_ppm=5.0 + i
        )
        for i in range(3)
    ]
    rows = [window_row(r, asset_id=r.asset_id, ts=r.ts, seq=r.seq) for r in readings]
    rows += [
        rows[1],  # redelivered
        window_row(None, asset_id="legacy", seq=None, payload='{"noise_db": 91.5, "workers": 3}'),
        window_row(None, asset_id="legacy", seq=None, payload='{"noise_db": 92.5}'),
        window_row(None, asset_id="bad", seq=7, payload='{"gas_ppm": -4}'),
        window_row(None, asset_id="machine-01", seq=1, payload='{"Temperature_C": 70}', kind="machine"),
    ]
    typed = sm.safety_rows_from_window(pl.DataFrame(rows, schema=WINDOW_SCHEMA), "w-1")

    assert dict(typed.schema) == sm.SAFETY_ROWS_SCHEMA
    assert typed.height == 3 + 2  # duplicate, invalid and machine rows gone; both seq-less legacy rows kept
    assert set(typed["window_key"]) == {"w-1"}
    legacy = typed.filter(pl.col("asset_id") == "legacy")
    assert legacy["zone"].to_list() == ["legacy", "legacy"]  # the zone defaults to the asset id
    assert legacy["noise_db"].to_list() == [91.5, 92.5] and legacy["gas_ppm"].null_count() == 2
    assert typed.filter(pl.col("zone") == "paint-shop-1")["gas_ppm"].to_list() == [5.0, 6.0, 7.0]


def safety_frame(zone: str, **columns: list[object]) -> pl.DataFrame:
    n = len(next(iter(columns.values())))
    base: dict[str, list[object]] = {
        "window_key": ["w"] * n,
        "asset_id": [f"station-{zone}"] * n,
        "ts": [START + timedelta(seconds=i) for i in range(n)],
        "seq": list(range(n)),
        "zone": [zone] * n,
        **{name: [None] * n for name in (*sm.SAFETY_FLOAT_FIELDS, *sm.SAFETY_COUNT_FIELDS, "true_hazard")},
    }
    return pl.DataFrame({**base, **columns}, schema=sm.SAFETY_ROWS_SCHEMA)


def test_window_features_one_row_per_zone_with_the_any_label() -> None:
    leak = safety_frame(
        "paint",
        gas_ppm=[5.0, 15.0, 25.0, 35.0],
        noise_db=[80.0, 86.0, 90.0, 70.0],
        proximity_m=[0.5, 1.5, 3.0, 12.0],
        ppe_violations=[0, 1, 1, 0],
        true_hazard=[False, False, False, True],
    )
    quiet = safety_frame("store", gas_ppm=[4.0, 4.0], temperature=[20.0, 19.0], true_hazard=[False, False])
    unknown = safety_frame("legacy", noise_db=[75.0, 76.0])
    features = sm.window_features(pl.concat([leak, quiet, unknown]))

    assert dict(features.schema) == sm.FEATURE_FRAME_SCHEMA
    by_zone = {row["zone"]: row for row in features.iter_rows(named=True)}
    paint, store, legacy = by_zone["paint"], by_zone["store"], by_zone["legacy"]
    assert paint["hazard"] is True and paint["hazard_share"] == 0.25  # any hazardous reading makes the window hazardous
    assert store["hazard"] is False and legacy["hazard"] is None  # no ground truth: no label
    assert paint["gas_ppm_slope"] == pytest.approx(600.0)  # 10 ppm a second
    assert store["temperature_slope"] == pytest.approx(-60.0)
    assert paint["loud_share"] == 0.5 and paint["close_share"] == 0.25
    assert paint["close_while_loud_share"] == 0.25  # 1.5 m at 86 dB
    assert paint["ppe_near_machinery_share"] == 0.25  # 1 at 1.5 m; the one at 3.0 m is not near
    assert paint["n_readings"] == 4 and legacy["gas_ppm_mean"] is None
    assert sm.window_features(pl.DataFrame(schema=sm.SAFETY_ROWS_SCHEMA)).is_empty()


def test_a_live_window_from_sealed_rows_rates_the_leaking_zone_high(model: sm.SafetyModel) -> None:
    stations = safety_zone_models(6, 8, {"safety-02": "gas_leak"})
    step_s = 1 / RATE_HZ  # the pace the fixture's model was trained at
    for _ in range(int(600 / step_s)):  # the leak ramps up
        for station in stations:
            station.step(step_s)
    rows = []
    for i in range(int(WINDOW_S * RATE_HZ)):
        ts = START + timedelta(seconds=i * step_s)
        for station in stations:
            reading = SafetyReading(asset_id=station.asset_id, ts=ts, seq=i, **station.step(step_s))
            rows.append(window_row(reading, asset_id=station.asset_id, ts=ts, seq=i))
    typed = sm.safety_rows_from_window(pl.DataFrame(rows, schema=WINDOW_SCHEMA), "20261125T160000Z-collector-1-000")
    features = sm.window_features(typed)
    predicted = model.predict_proba(features).join(features.select("zone", "hazard"), on="zone")

    assert predicted.height == 6 and set(predicted["window_key"]) == {"20261125T160000Z-collector-1-000"}
    leaking = predicted.filter(pl.col("zone") == "welding-1").row(0, named=True)  # station safety-02
    assert leaking["hazard"] is True and leaking["risk_level"] == "high"
    quiet = predicted.filter(~pl.col("hazard"))
    assert quiet.height >= 3 and quiet["probability"].max() < leaking["probability"]
    assert set(quiet["risk_level"]) <= {"low", "medium"}


# ---- splits -------------------------------------------------------------------------------


def episode_runs(frame: pl.DataFrame) -> pl.DataFrame:
    """Each hazardous window with the id of its run of consecutive hazardous windows in its zone."""
    ordered = frame.sort("zone", "window_start").with_columns(
        (pl.col("hazard") & ~pl.col("hazard").shift(1).over("zone").fill_null(False))
        .cum_sum()
        .over("zone")
        .alias("run")
    )
    return ordered.filter(pl.col("hazard")).select("zone", "run", "window_key")


def test_split_keeps_every_episode_on_one_side(history: pl.DataFrame, split: sm.TrainValidation) -> None:
    assert split.train.height + split.validation.height == history.height
    assert 0.2 < split.validation.height / history.height < 0.32
    side = pl.concat(
        [
            split.train.select("zone", "window_key").with_columns(pl.lit("train").alias("side")),
            split.validation.select("zone", "window_key").with_columns(pl.lit("validation").alias("side")),
        ]
    )
    runs = episode_runs(history).join(side, on=["zone", "window_key"])
    assert runs.group_by("zone", "run").agg(pl.col("side").n_unique().alias("sides"))["sides"].max() == 1
    again = sm.split_train_validation(history, 0.25, seed=5)
    assert again.validation.equals(split.validation)
    assert not sm.split_train_validation(history, 0.25, seed=6).validation.equals(split.validation)


# ---- the model ----------------------------------------------------------------------------


def test_model_beats_the_prevalence_predictor_random_scores_and_any_single_sensor(
    split: sm.TrainValidation, model: sm.SafetyModel
) -> None:
    metrics = sm.evaluate(model, split.validation)
    truth = split.validation["hazard"].cast(pl.Int64).to_numpy()
    train_rate = float(split.train["hazard"].mean())  # type: ignore[arg-type]
    prevalence_brier = brier_score_loss(truth, np.full(truth.size, train_rate))
    random_auc = roc_auc_score(truth, np.random.default_rng(0).random(truth.size))

    assert metrics[sm.PRIMARY_METRIC] == metrics["brier"] and sm.HIGHER_IS_BETTER is False
    assert metrics["brier"] < 0.8 * prevalence_brier
    assert metrics["roc_auc"] > random_auc + 0.3
    best_single = max(
        max(auc, 1 - auc)
        for column in sm.FEATURE_COLUMNS
        for auc in [roc_auc_score(truth, split.validation[column].fill_null(0.0).to_numpy())]
    )
    assert metrics["roc_auc"] > best_single + 0.05
    assert metrics["n_rows"] == split.validation.height
    assert metrics["positive_rate"] == pytest.approx(truth.mean())
    assert set(metrics) >= {"brier", "roc_auc", "log_loss", "n_rows", "positive_rate"}


def test_probabilities_are_calibrated_on_enough_held_out_data(split: sm.TrainValidation, model: sm.SafetyModel) -> None:
    table = sm.reliability_table(model, split.validation, bins=10)
    assert dict(table.schema) == sm.RELIABILITY_SCHEMA
    assert table.height == 10 and table["n"].sum() == split.validation.height
    assert table["bin_low"].to_list()[:2] == [0.0, 0.1] and table["bin_high"].to_list()[-1] == 1.0
    filled = table.filter(pl.col("n") >= 100)
    assert filled.height >= 2
    gaps = (filled["mean_predicted"] - filled["observed_rate"]).abs()
    assert gaps.max() < 0.08  # bins with enough windows to measure a rate on
    assert sm.expected_calibration_error(table) < 0.06
    mean_predicted = float((table["mean_predicted"].fill_null(0.0) * table["n"]).sum() / table["n"].sum())
    assert mean_predicted == pytest.approx(split.validation["hazard"].mean(), abs=0.03)


def test_auto_calibration_takes_the_method_with_the_lower_held_out_brier(
    split: sm.TrainValidation, model: sm.SafetyModel
) -> None:
    assert set(model.calibration_scores) == {"isotonic", "sigmoid"}
    assert model.calibration == min(model.calibration_scores, key=model.calibration_scores.__getitem__)
    figures = sm.describe_fit(model)
    assert figures["training_rows"] == split.train.height
    assert figures["calibration_isotonic"] == float(model.calibration == "isotonic")
    assert figures["calibration_brier_sigmoid"] == model.calibration_scores["sigmoid"]


def test_predict_proba_gives_zone_probabilities_and_risk_levels(
    split: sm.TrainValidation, model: sm.SafetyModel
) -> None:
    predicted = model.predict_proba(split.validation)
    assert dict(predicted.schema) == sm.PREDICTION_SCHEMA
    assert predicted["zone"].to_list() == split.validation["zone"].to_list()
    p = pl.col("probability")
    assert predicted.filter((p < 0) | (p > 1)).is_empty()
    expected = pl.when(p >= 0.5).then(pl.lit("high")).when(p >= 0.2).then(pl.lit("medium")).otherwise(pl.lit("low"))
    assert predicted.filter(pl.col("risk_level") != expected).is_empty()
    assert set(predicted["risk_level"]) == set(sm.RISK_LEVELS)
    assert model.predict_proba(split.validation.clear()).is_empty()


def test_logistic_regression_with_sigmoid_also_beats_the_prevalence_predictor(split: sm.TrainValidation) -> None:
    params = sm.SafetyParams(
        classifier="logistic_regression", calibration="sigmoid", medium_cutoff=0.1, high_cutoff=0.3
    )
    logistic = sm.fit(split.train, params)
    metrics = sm.evaluate(logistic, split.validation)
    assert logistic.calibration == "sigmoid" and logistic.calibration_scores == {}
    assert metrics["brier_skill"] > 0.2 and metrics["roc_auc"] > 0.8
    levels = logistic.predict_proba(split.validation).filter(pl.col("probability").is_between(0.1, 0.3, closed="left"))
    assert set(levels["risk_level"]) == {"medium"}


def test_params_are_checked() -> None:
    with pytest.raises(ValueError, match="cutoff"):
        sm.SafetyParams(medium_cutoff=0.6, high_cutoff=0.5)
    with pytest.raises(ValueError, match="calibration"):
        sm.SafetyParams(calibration="platt")
    with pytest.raises(ValueError, match="classifier"):
        sm.SafetyParams(classifier="svm")


# ---- MLflow -------------------------------------------------------------------------------


def test_log_register_and_load_back_through_the_champion_alias(
    tmp_path: Path, split: sm.TrainValidation, model: sm.SafetyModel
) -> None:
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    use_tracking_uri(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri, sm.EXPERIMENT_NAME, tmp_path / "artifacts")
    with mlflow.start_run(experiment_id=experiment_id):
        version = sm.log_model(model, registered_name=sm.MODEL_NAME)
    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(sm.MODEL_NAME, "champion", version)

    loaded = sm.load_model(f"models:/{sm.MODEL_NAME}@champion")
    assert (loaded.calibration, loaded.medium_cutoff, loaded.high_cutoff) == (
        model.calibration,
        model.medium_cutoff,
        model.high_cutoff,
    )
    assert loaded.calibration_scores == pytest.approx(model.calibration_scores)
    assert sm.describe_fit(loaded) == pytest.approx(sm.describe_fit(model))
    assert loaded.input_example.equals(model.input_example)
    assert loaded.predict_proba(split.validation).equals(model.predict_proba(split.validation))
    assert sm.evaluate(loaded, split.validation) == sm.evaluate(model, split.validation)

    served = mlflow.pyfunc.load_model(f"models:/{sm.MODEL_NAME}/{version}")  # what a generic server would do
    assert served.metadata.get_input_schema().input_names() == list(sm.FEATURE_COLUMNS)
    probabilities = np.asarray(served.predict(sm.feature_matrix(split.validation.head(20))))[:, 1]
    np.testing.assert_allclose(probabilities, model.probabilities(split.validation.head(20)))
