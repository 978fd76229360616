"""rul_lstm on a slice of NASA C-MAPSS FD001 and on simulated robot histories: tiny configs, real MLflow."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest

from factory_pipelines import cmapss
from factory_pipelines import rul_model as rm
from factory_pipelines.model_registry import ensure_experiment, use_tracking_uri
from factory_pipelines.rul_history import HistoryMember, history_features

CMAPSS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmapss"
TINY = rm.RulParams(
    window=15,
    lstm_units=16,
    lstm_layers=1,
    dense_units=16,
    dropout=0.1,
    learning_rate=0.005,
    batch_size=128,
    max_epochs=4,
    patience=2,
    ensemble_size=2,
    unroll=False,  # unrolling pays off over dozens of epochs, not four
    calibration_fraction=0.25,
    seed=3,
)


def cmapss_file(name: str) -> Path:
    path = CMAPSS_DIR / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: the C-MAPSS files belong in ../shared/data/cmapss (see its README)")
    return path


def mean_predictor_rmse(truth: np.ndarray) -> float:
    """RMSE of the best constant guess (the held-out truth's own mean): the baseline to beat."""
    return float(np.sqrt(np.mean((truth - truth.mean()) ** 2)))


def held_out_truth(validation: rm.RulDataset) -> np.ndarray:
    return validation.frame.group_by(rm.UNIT).agg(pl.col(rm.RUL).last())[rm.RUL].to_numpy()


@pytest.fixture(scope="module")
def fd001_slice() -> tuple[rm.RulDataset, rm.RulDataset]:
    """32 engines of FD001: 24 to train on, 8 held out and cut 5 times each at random cycles."""
    dataset = rm.cmapss_dataset(cmapss_file("train_FD001.txt"))
    engines = [str(unit) for unit in range(1, 33)]
    small = dataset.with_frame(dataset.frame.filter(pl.col(rm.UNIT).is_in(engines)))
    return rm.train_validation_split(small, validation_fraction=0.25, seed=0, cuts_per_unit=5)


@pytest.fixture(scope="module")
def fd001_model(fd001_slice: tuple[rm.RulDataset, rm.RulDataset]) -> rm.RulModel:
    train, _validation = fd001_slice
    return rm.fit(train, TINY)


def test_cmapss_files_round_trip_and_dev_split_cuts_like_the_test_set(tmp_path: Path) -> None:
    source = cmapss_file("train_FD001.txt")
    split = rm.write_cmapss_dev_split(source, tmp_path, held_out_fraction=0.2, seed=5, cuts_per_engine=2)
    original = cmapss.read_cmapss_file(source)
    train = cmapss.read_cmapss_file(split.train_file)
    test = cmapss.read_cmapss_file(split.test_file)
    truth = cmapss.read_rul_file(split.rul_file)

    assert split.held_out_engines == 20 and train["unit"].n_unique() == 80
    assert test["unit"].unique().sort().to_list() == list(range(1, 41)) == list(range(1, split.test_engines + 1))
    assert len(truth) == 40
    assert train.equals(original.filter(pl.col("unit").is_in(train["unit"].unique().implode())))
    # Every test engine is a prefix of a held-out engine, stopped 5..150 cycles before its failure.
    held_out = original.filter(~pl.col("unit").is_in(train["unit"].unique().implode()))
    lives = dict(held_out.group_by("unit").agg(pl.col("cycle").max()).iter_rows())
    for unit, rul in zip(range(1, 41), truth, strict=True):
        prefix = test.filter(pl.col("unit") == unit).drop("unit")
        matches = [
            u for u in lives if held_out.filter(pl.col("unit") == u).head(prefix.height).drop("unit").equals(prefix)
        ]
        assert len(matches) == 1
        assert lives[matches[0]] - prefix.height == rul
        assert 5 <= rul <= 150
    assert min(test.group_by("unit").len()["len"]) >= rm.CUT_MIN_PREFIX
    # The long frame of a test file knows each row's true RUL from the RUL file.
    frame = rm.cmapss_test_dataset(split.test_file, split.rul_file).frame
    last = frame.group_by(rm.UNIT).agg(pl.col(rm.RUL).last(), pl.col(rm.RUL).first().alias("first"))
    assert sorted(last[rm.RUL].to_list()) == sorted(truth)
    assert frame["condition"].n_unique() == 1


def test_the_folds_of_a_dev_split_hold_out_every_engine_once(tmp_path: Path) -> None:
    source = cmapss_file("train_FD001.txt")
    all_engines = set(cmapss.read_cmapss_file(source)["unit"].unique().to_list())
    held_out: list[set[int]] = []
    for fold in range(5):
        split = rm.write_cmapss_dev_split(source, tmp_path / str(fold), seed=3, fold=fold)
        trained = set(cmapss.read_cmapss_file(split.train_file)["unit"].unique().to_list())
        assert split.held_out_engines == 20 and len(trained) == 80
        held_out.append(all_engines - trained)
    assert set().union(*held_out) == all_engines
    assert sum(len(engines) for engines in held_out) == len(all_engines)
    with pytest.raises(ValueError, match="fold 5 does not exist: 100 engines .* give folds 0-4"):
        rm.write_cmapss_dev_split(source, tmp_path / "5", seed=3, fold=5)


def test_fd001_model_beats_the_mean_predictor_on_held_out_engines(
    fd001_model: rm.RulModel, fd001_slice: tuple[rm.RulDataset, rm.RulDataset]
) -> None:
    _train, validation = fd001_slice
    metrics = rm.evaluate(fd001_model, validation)

    assert metrics["n_engines"] == 40
    assert set(fd001_model.dropped_columns) == {"s1", "s5", "s10", "s16", "s18", "s19"}
    assert metrics["rmse"] < 0.8 * mean_predictor_rmse(held_out_truth(validation))
    assert metrics["rmse_capped"] <= metrics["rmse"] + 1e-9  # capping the truth only removes error above the cap
    assert metrics["phm08_score"] > 0
    predictions = fd001_model.predict(validation.frame)
    assert predictions.height == 40 and (predictions["rul"] >= 0).all()


def test_conformal_interval_widens_with_confidence_and_covers_held_out_engines(
    fd001_model: rm.RulModel, fd001_slice: tuple[rm.RulDataset, rm.RulDataset]
) -> None:
    _train, validation = fd001_slice
    # 6 calibration engines, each at every cycle a test cut could fall on (RUL 5..150, 20 cycles kept)
    assert fd001_model.summary["calibration_units"] == 6
    assert fd001_model.calibration_scores.size == fd001_model.summary["calibration_samples"] >= 6 * 100
    by_confidence = {c: rm.evaluate(fd001_model, validation, confidence=c) for c in (0.5, 0.8, 0.9, 0.95)}
    widths = [m["mean_interval_width"] for m in by_confidence.values()]
    coverages = [m["coverage"] for m in by_confidence.values()]

    assert widths == sorted(widths) and widths[0] < widths[-1]
    assert coverages == sorted(coverages)
    assert by_confidence[0.9]["coverage"] >= 0.7
    narrow, wide = fd001_model.predict(validation.frame, 0.5), fd001_model.predict(validation.frame, 0.95)
    assert (narrow["rul"] == wide["rul"]).all()
    assert ((wide["lower"] <= narrow["lower"]) & (narrow["upper"] <= wide["upper"])).all()
    assert (wide["lower"] >= 0).all() and (wide["lower"] <= wide["rul"]).all()


def test_cross_conformal_fits_and_calibrates_every_unit_out_of_fold(
    fd001_slice: tuple[rm.RulDataset, rm.RulDataset],
) -> None:
    train, validation = fd001_slice
    folds = rm.fold_of_units([str(u) for u in range(24)], 3, seed=1)
    assert sorted(folds.values()).count(0) == sorted(folds.values()).count(2) == 8
    with pytest.raises(ValueError, match="cross-conformal"):
        rm.check_params(replace(TINY, calibration_fraction=0.0, ensemble_size=1))

    model = rm.fit(train, replace(TINY, calibration_fraction=0.0, max_epochs=2))
    # All 24 units are fitted and all 24 calibrate, each at every cycle a test cut could fall on.
    assert model.summary["fit_units"] == model.summary["calibration_units"] == 24
    assert model.summary["calibration_folds"] == 2
    ends = train.frame.group_by(rm.UNIT).agg(pl.col(rm.RUL))[rm.RUL].to_list()
    cuts = sum(rm.eligible_cut_rows(np.asarray(rul, dtype=float), train.rul_cap).size for rul in ends)
    assert model.calibration_scores.size == model.summary["calibration_samples"] == cuts
    metrics = rm.evaluate(model, validation)
    assert metrics["n_engines"] == 40 and np.isfinite(metrics["mean_interval_width"])


def test_age_input_is_one_more_channel_and_survives_save_and_load(
    fd001_slice: tuple[rm.RulDataset, rm.RulDataset], tmp_path: Path
) -> None:
    train, validation = fd001_slice
    with pytest.raises(ValueError, match="age_scale"):
        rm.check_params(replace(TINY, age_scale=-1.0))
    model = rm.fit(train, replace(TINY, age_scale=200.0, max_epochs=1, ensemble_size=1))
    units, windows = model.last_windows(validation.frame)
    assert windows.shape[2] == len(model.feature_columns) + 1
    last_cycle = validation.frame.group_by(rm.UNIT).agg(pl.col(rm.CYCLE).max())
    expected_age = dict(last_cycle.with_columns(pl.col(rm.UNIT).cast(pl.String)).iter_rows())
    assert np.allclose(windows[:, -1, -1], [expected_age[u] / 200.0 for u in units])

    again = rm.RulModel.load(*model.save(tmp_path / "model"))
    assert again.age_scale == 200.0
    assert np.allclose(again.predict(validation.frame)["rul"], model.predict(validation.frame)["rul"], atol=1e-4)


def test_history_features_are_causal_and_measure_change_since_the_units_start() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(150, 3))
    starts = np.repeat([0, 90], [90, 60])  # two units: rows 0-89 and 90-149
    cycles = np.concatenate([np.arange(1, 91), np.arange(1, 61)]).astype(float)
    full = history_features(values, starts, cycles)
    n = values.shape[1]  # layout: age, means of 5 and 20, change since the first 20, slopes over 30 and 60, wear rate
    assert full.shape == (150, 1 + 6 * n)
    for row in (0, 10, 45, 89, 90, 100, 149):  # a row's features read only the rows up to it
        np.testing.assert_allclose(
            history_features(values[: row + 1], starts[: row + 1], cycles[: row + 1])[row], full[row]
        )
    assert full[45, 0] == 46
    np.testing.assert_allclose(full[45, 1 + n : 1 + 2 * n], values[26:46].mean(axis=0))
    np.testing.assert_allclose(full[45, 1 + 2 * n : 1 + 3 * n], values[26:46].mean(axis=0) - values[:20].mean(axis=0))
    assert full[45, 1 + 3 * n] == pytest.approx(np.polyfit(np.arange(30), values[16:46, 0], 1)[0])
    # the wear rate: that change per cycle of age, the age counted as at least the 20 baseline rows
    np.testing.assert_allclose(full[45, 1 + 5 * n :], full[45, 1 + 2 * n : 1 + 3 * n] / 46)
    np.testing.assert_allclose(full[10, 1 + 5 * n :], full[10, 1 + 2 * n : 1 + 3 * n] / 20)
    # the second unit's first row never reads the first unit: its means are itself, no slope yet
    np.testing.assert_allclose(full[90, 1 : 1 + n], values[90])
    assert (full[90, 1 + 2 * n :] == 0).all()


def test_history_trees_saved_before_the_wear_rate_still_predict() -> None:
    """A champion registered before the wear rate existed has trees over the first 1 + 5 * features columns."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(1)
    values, starts, cycles = rng.normal(size=(120, 2)), np.zeros(120, dtype=int), np.arange(1.0, 121.0)
    features = history_features(values, starts, cycles)
    old_layout = features[:, : 1 + 5 * 2]
    trees = HistGradientBoostingRegressor(max_iter=5, min_samples_leaf=5).fit(old_layout, cycles / 120)
    ends = np.array([30, 119])
    np.testing.assert_allclose(
        HistoryMember(trees, 1.0).predict(values, starts, cycles, ends), trees.predict(old_layout[ends])
    )


def test_history_trees_join_the_network_with_the_weight_that_fits_the_calibration_cuts(
    fd001_model: rm.RulModel, fd001_slice: tuple[rm.RulDataset, rm.RulDataset], tmp_path: Path
) -> None:
    train, validation = fd001_slice
    assert fd001_model.history is not None
    summary = fd001_model.summary
    assert 0.0 <= summary["history_weight"] <= 1.0
    # the trees learn from every training unit, the 6 that calibrate too (predicted there out of fold)
    assert summary["tree_units"] == 24 and summary["fit_units"] == 18
    # the weight is the best of a grid that holds 0 (network alone) and 1 (trees alone)
    assert summary["calibration_rmse"] <= min(summary["network_calibration_rmse"], summary["trees_calibration_rmse"])
    # a prediction reads each unit's whole history: the trees' age and baseline come from its first cycles
    trees_only = replace(fd001_model, history=HistoryMember(fd001_model.history.trees, 1.0))
    latest = validation.frame.group_by(rm.UNIT).tail(fd001_model.window)
    assert not np.allclose(trees_only.predict(latest)["rul"], trees_only.predict(validation.frame)["rul"])

    again = rm.RulModel.load(*fd001_model.save(tmp_path / "model"))
    assert again.history is not None and again.history.weight == fd001_model.history.weight
    np.testing.assert_allclose(
        again.predict(validation.frame)["rul"], fd001_model.predict(validation.frame)["rul"], atol=1e-3
    )

    with pytest.raises(ValueError, match="history_weight"):
        rm.check_params(replace(TINY, history_weight=1.5))
    network_only = rm.fit(train, replace(TINY, history_weight=0.0, max_epochs=1, ensemble_size=1))
    assert network_only.history is None and "history_weight" not in network_only.summary
    network_only.save(tmp_path / "network_only")
    assert not (tmp_path / "network_only" / rm.HISTORY_FILE).exists()

    # the wear rate is the trees' last summary, and can be left out
    assert fd001_model.history.trees.n_features_in_ == 1 + 6 * len(fd001_model.feature_columns)
    no_wear = rm.fit(train, replace(TINY, history_wear_rate=False, max_epochs=1, ensemble_size=1))
    assert no_wear.history is not None
    assert no_wear.history.trees.n_features_in_ == 1 + 5 * len(no_wear.feature_columns)
    assert no_wear.predict(validation.frame)["rul"].is_finite().all()


def test_split_conformal_quantile_gives_nominal_coverage_on_exchangeable_scores() -> None:
    rng = np.random.default_rng(11)
    calibration = np.abs(rng.standard_t(4, 400))
    fresh = np.abs(rng.standard_t(4, 40_000))
    for confidence in (0.5, 0.8, 0.9, 0.95):
        coverage = float(np.mean(fresh <= rm.conformal_quantile(calibration, confidence)))
        assert confidence - 0.03 <= coverage <= confidence + 0.04
    assert rm.conformal_quantile(np.arange(1.0, 10.0), 0.9) == 9.0  # ceil(10 * 0.9) = 9th of 9
    assert rm.conformal_quantile(np.arange(1.0, 10.0), 0.5) == 5.0


def test_forward_pass_matches_keras_predict_for_any_batch_size_and_leaves_out_dropout(
    fd001_model: rm.RulModel,
) -> None:
    """The inference pass (`lstm_inference`) replaces `predict_on_batch` in every prediction: same numbers."""
    shape = fd001_model.network.input_shape[1:]
    forward = fd001_model.forward()
    assert fd001_model.forward() is forward  # traced once per model
    for batch in (1, 7, 40):
        windows = np.random.default_rng(batch).normal(size=(batch, *shape))  # float64, as the platform builds them
        expected = np.asarray(fd001_model.network.predict_on_batch(windows.astype(np.float32)))
        out = forward(windows)
        assert out.shape == expected.shape
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(forward(windows), out)  # inference: dropout (0.1 here) stays off


def test_log_model_and_load_model_round_trip_through_the_registry(
    tmp_path: Path, fd001_model: rm.RulModel, fd001_slice: tuple[rm.RulDataset, rm.RulDataset]
) -> None:
    _train, validation = fd001_slice
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    use_tracking_uri(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri, "rul_lstm_test", tmp_path / "artifacts")
    with mlflow.start_run(experiment_id=experiment_id):
        version = rm.log_model(fd001_model, registered_name="rul_lstm_test", example=validation.frame)
    assert version == "1"
    mlflow.MlflowClient(tracking_uri).set_registered_model_alias("rul_lstm_test", "champion", version)

    loaded = rm.load_model("models:/rul_lstm_test@champion")
    assert loaded.feature_columns == fd001_model.feature_columns
    assert loaded.uses_conditions and "condition" in loaded.input_columns
    before, after = fd001_model.predict(validation.frame, 0.8), loaded.predict(validation.frame, 0.8)
    assert after[rm.UNIT].equals(before[rm.UNIT])
    # The same weights; only float32 rounding may differ between the trained and the reloaded graph.
    np.testing.assert_allclose(after.drop(rm.UNIT).to_numpy(), before.drop(rm.UNIT).to_numpy(), rtol=1e-5)
    # A plain pyfunc caller (what a generic MLflow client sees) gets the same, at the confidence it asks for.
    pyfunc = mlflow.pyfunc.load_model(f"models:/rul_lstm_test/{version}")
    columns = list(loaded.input_columns)
    answer = pyfunc.predict(validation.frame.select(columns).to_pandas(), params={"confidence": 0.8})
    np.testing.assert_allclose(pl.from_pandas(answer).drop(rm.UNIT).to_numpy(), after.drop(rm.UNIT).to_numpy())
    assert (tmp_path / "artifacts" / "rul_lstm_test").is_dir()


@pytest.fixture(scope="module")
def robot_history() -> rm.RulDataset:
    return rm.robot_dataset(n_robots=8, seed=4, cycles_per_step=40, lives_per_robot=2)


def test_robot_history_is_deterministic_and_runs_each_bearing_to_failure(robot_history: rm.RulDataset) -> None:
    frame = robot_history.frame
    # Each robot has its own seeded stream, so the first two robots of a smaller fleet are the same robots.
    again = rm.robot_run_to_failure_history(2, 4, cycles_per_step=40, lives_per_robot=2)
    other = rm.robot_run_to_failure_history(2, 5, cycles_per_step=40, lives_per_robot=2)
    first_two = frame.filter(
        pl.col(rm.UNIT).str.starts_with("robot-01/") | pl.col(rm.UNIT).str.starts_with("robot-02/")
    )

    assert again.height > 0 and again.equals(first_two)
    assert not other.equals(first_two)
    assert frame[rm.UNIT].n_unique() == 16  # 8 robots x 2 bearing lives
    assert set(frame.columns) == {rm.UNIT, rm.CYCLE, *rm.ROBOT_FEATURE_COLUMNS, rm.RUL}
    per_life = frame.group_by(rm.UNIT).agg(
        pl.col(rm.RUL).diff().max().alias("largest_rise"), pl.col(rm.RUL).last().alias("at_end")
    )
    assert (per_life["largest_rise"] <= 0).all()  # within a life RUL only falls
    assert (per_life["at_end"] < 40).all()  # each life ends within one step of its failure
    assert frame.select(pl.all().is_null().any()).row(0) == (False,) * frame.width


def test_robot_model_beats_the_mean_predictor_and_predicts_live_rows(robot_history: rm.RulDataset) -> None:
    train, validation = rm.train_validation_split(robot_history, validation_fraction=0.25, seed=1, cuts_per_unit=8)
    params = rm.RulParams(
        window=10,
        lstm_units=16,
        lstm_layers=1,
        dense_units=16,
        dropout=0.1,
        learning_rate=0.01,
        batch_size=64,
        max_epochs=5,
        patience=3,
        monitor_fraction=0.2,  # the early-stopping path (the C-MAPSS fixture trains on a fixed schedule)
        ensemble_size=1,
        unroll=False,
        calibration_fraction=0.25,
        age_scale=200.0,  # asked for, but a robot's step count is not its bearing's age: no age input
        seed=2,
    )
    model = rm.fit(train, params)
    metrics = rm.evaluate(model, validation)
    assert model.age_scale == 0.0 and model.last_windows(validation.frame)[1].shape[2] == len(model.feature_columns)
    assert model.history is None  # the history trees need each bearing's history from new, like the age

    assert model.rul_cap == pytest.approx(rm.ROBOT_RUL_CAP * params.rul_cap_scale)
    assert model.attributes["cycles_per_step"] == "40"
    assert metrics["rmse"] < mean_predictor_rmse(held_out_truth(validation))
    # Live telemetry: a reading every 8 cycles, across a bearing replacement; only the new bearing counts.
    rows = rm.robot_run_to_failure_rows(2, 9, cycles_per_step=8, lives_per_robot=2, fault_share=1.0)
    rows = rows.drop("true_rul_cycles")
    live = rm.predict_robot_rul(model, rows, confidence=0.8)
    assert live["asset_id"].to_list() == ["robot-01", "robot-02"]
    assert ((live["lower"] <= live["rul"]) & (live["rul"] <= live["upper"])).all()
    assert (live["steps"] <= params.window).all() and (live["confidence"] == 0.8).all()
    sequences = rm.robot_sequences_from_rows(rows, cycles_per_step=40, latest_life_only=True)
    assert sequences[rm.UNIT].unique().sort().to_list() == ["robot-01", "robot-02"]
    assert sequences.height < rm.robot_sequences_from_rows(rows, cycles_per_step=40).height

    # Scored window by window, as the prediction asset does: each window binned on its own
    # (`robot_steps`), the lookback's steps concatenated. Window edges cut steps in two and
    # fall between readings of the same step; the model must see what the whole history gives.
    edges = np.linspace(0, rows.height, 6).astype(int)
    ordered = rows.sort("ts")
    windows = [rm.robot_steps(ordered[a:b], cycles_per_step=40) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    windowed = rm.robot_rul(model, pl.concat(windows), confidence=0.8).frame()
    assert windowed.equals(live)
    # The fast path agrees with the model's general one (a long frame, then each unit's last window).
    general = model.predict(rm.robot_sequences(pl.concat(windows), latest_life_only=True), confidence=0.8)
    assert general[rm.UNIT].to_list() == live["asset_id"].to_list()
    np.testing.assert_allclose(general["rul"].to_numpy(), live["rul"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(general["upper"].to_numpy(), live["upper"].to_numpy(), rtol=1e-6)


def split_at(rows: pl.DataFrame, cuts: list[int]) -> list[pl.DataFrame]:
    bounds = [0, *cuts, rows.height]
    return [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def test_robot_steps_binned_per_window_give_the_same_lives_and_steps_as_the_whole_history() -> None:
    rows = rm.robot_run_to_failure_rows(3, 7, cycles_per_step=8, lives_per_robot=3, fault_share=1.0).sort("ts")
    whole = rm.robot_steps(rows, cycles_per_step=40)
    assert whole.schema == pl.Schema(rm.ROBOT_STEP_SCHEMA)
    # the last reading of each step of 40 cycles: 5 readings of 8 cycles each
    per_step = rows.group_by("asset_id", (pl.col("cycle_count") // 40).alias(rm.CYCLE)).len()
    assert per_step["len"].max() == 5 and whole.height == per_step.height
    # Windows cut right at each bearing replacement (the first reading of a new bearing opens a
    # window), and at random rows elsewhere.
    replaced = rows.with_row_index().filter(
        pl.col("health_score").diff().over("asset_id") > rm.ROBOT_REPLACEMENT_HEALTH_JUMP
    )["index"]
    assert replaced.len() == 3 * 2
    random_cuts = np.random.default_rng(3).choice(rows.height, 40, replace=False).tolist()
    for cuts in (sorted(replaced.to_list()), sorted(random_cuts), sorted({*replaced.to_list(), *random_cuts})):
        steps = pl.concat([rm.robot_steps(window, cycles_per_step=40) for window in split_at(rows, cuts)])
        assert rm.robot_sequences(steps).equals(rm.robot_sequences(whole))
        assert rm.robot_sequences(steps, latest_life_only=True).equals(rm.robot_sequences(whole, latest_life_only=True))
    lives = rm.robot_sequences(whole)
    assert lives[rm.UNIT].n_unique() == 3 * 3
    assert lives.group_by(rm.UNIT).agg(pl.col(rm.RUL).diff().max())[rm.RUL].max() <= 0  # RUL only falls in a life


def test_robot_steps_of_no_rows_or_rows_that_cannot_be_placed_are_empty() -> None:
    assert rm.robot_steps(pl.DataFrame()).is_empty()
    unplaced = pl.DataFrame({"asset_id": ["robot-01", None], "cycle_count": [None, 40]})
    assert rm.robot_steps(unplaced).schema == pl.Schema(rm.ROBOT_STEP_SCHEMA)
    assert rm.robot_steps(unplaced).is_empty()
    assert rm.robot_sequences(rm.robot_steps(unplaced), latest_life_only=True).is_empty()
