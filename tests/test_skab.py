"""The SKAB benchmark of the energy_iforest family on real valve1 runs: protocol, metrics, baselines, errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from factory_pipelines import skab

SKAB_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "skab"
FAST = replace(skab.SkabParams(), n_estimators=40)  # the shipped detector with fewer trees: seconds, not minutes


def skab_file(relative: str) -> Path:
    path = SKAB_DIR / relative
    if not path.is_file():
        pytest.fail(f"{path} is missing: the SKAB files belong in ../shared/data/skab (see its README)")
    return path


def link_runs(target: Path, names: list[str]) -> Path:
    """A benchmark directory holding a few valve1 runs (symlinks: the data stays in shared/data)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        (target / name).symlink_to(skab_file(f"valve1/{name}"))
    return target


def write_run(path: Path, frame: pl.DataFrame, separator: str = ";") -> Path:
    """`frame` as a SKAB csv (timestamps in SKAB's text format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.with_columns(pl.col(skab.DATETIME).dt.strftime("%Y-%m-%d %H:%M:%S")).write_csv(path, separator=separator)
    return path


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return link_runs(tmp_path_factory.mktemp("valve1-slice"), ["3.csv", "9.csv", "14.csv"])


@pytest.fixture(scope="module")
def three_runs_result(three_runs: Path) -> dict[str, object]:
    return skab.benchmark_skab(three_runs, FAST)


def test_read_skab_run_types_the_columns() -> None:
    frame = skab.read_skab_run(skab_file("valve1/0.csv"))
    assert frame.schema[skab.DATETIME] == pl.Datetime("us")
    assert frame[skab.DATETIME].null_count() == 0
    assert frame.schema[skab.ANOMALY] == pl.Int8()
    assert len(skab.sensor_columns(frame)) == 8
    assert all(frame.schema[name] == pl.Float64() for name in skab.sensor_columns(frame))
    assert set(frame[skab.ANOMALY].unique()) == {0, 1}


def test_score_run_follows_the_protocol() -> None:
    frame = skab.read_skab_run(skab_file("valve1/3.csv"))
    scored = skab.score_run(frame, FAST)
    assert dict(scored.schema) == skab.SCORED_FRAME_SCHEMA
    assert scored.height == frame.height - FAST.fit_rows  # fit on the first 400 rows, score the rest
    assert scored["row"][0] == FAST.fit_rows
    assert scored[skab.ANOMALY].to_list() == frame[skab.ANOMALY].slice(FAST.fit_rows).to_list()
    assert scored["threshold"].n_unique() == 1
    assert set(scored["predicted"].unique()) <= {0, 1}
    # the valve closes: anomalous rows score higher than the normal rows of the same run
    by_label = scored.group_by(skab.ANOMALY).agg(pl.col("score").median()).sort(skab.ANOMALY)["score"]
    assert by_label[1] > by_label[0]


def test_benchmark_beats_random_and_all_anomaly_baselines(three_runs: Path, three_runs_result: dict) -> None:
    result = three_runs_result
    assert result["n_runs"] == 3 and set(result["runs"]) == {"3.csv", "9.csv", "14.csv"}
    assert result["n_rows"] == sum(run["n_rows"] for run in result["runs"].values())
    alarm_rate = sum(run["alarms"] for run in result["runs"].values()) / result["n_rows"]
    same_rate = skab.random_score_baseline(three_runs, seed=0, alarm_rate=alarm_rate)
    oracle_rate = skab.random_score_baseline(three_runs, seed=0)
    everything = skab.random_score_baseline(three_runs, seed=0, alarm_rate=1.0)
    assert same_rate["n_rows"] == result["n_rows"]
    assert everything["far"] == 1.0 and everything["mar"] == 0.0
    assert everything["f1"] == pytest.approx(result["all_anomaly_f1"])
    # about half the scored rows are anomalous, so alarming everywhere is the bar to clear
    assert result["f1"] > everything["f1"] > oracle_rate["f1"]
    assert result["f1"] > same_rate["f1"] + 0.2
    assert result["far"] < 0.2 and result["mar"] < 0.4


def test_all_normal_input_yields_a_low_far(tmp_path: Path) -> None:
    """valve1's first four runs cut before their valve closes: normal operation throughout."""
    for name in ("0.csv", "1.csv", "2.csv", "3.csv"):
        run = skab.read_skab_run(skab_file(f"valve1/{name}"))
        normal = run.head(int(run[skab.ANOMALY].arg_max()))  # type: ignore[arg-type]
        assert normal[skab.ANOMALY].sum() == 0 and normal.height > FAST.fit_rows + 100
        write_run(tmp_path / "normal" / name, normal)
    result = skab.benchmark_skab(tmp_path / "normal", FAST)
    assert result["n_runs"] == 4
    assert result["far"] < 0.05
    assert result["f1"] == 0.0 and result["mar"] == 0.0  # nothing to find: every alarm would be a false one


def test_runs_are_found_recursively_in_natural_order(tmp_path: Path) -> None:
    run = skab.read_skab_run(skab_file("valve1/0.csv"))
    for name in ("a/10.csv", "a/2.csv", "b/deeper/0.csv"):
        write_run(tmp_path / name, run)
    write_run(tmp_path / "anomaly-free/free.csv", run.drop(skab.ANOMALY, skab.CHANGEPOINT))
    (tmp_path / "notes.txt").write_text("not a run")
    found = [p.relative_to(tmp_path).as_posix() for p in skab.find_labelled_runs(tmp_path)]
    assert found == ["a/2.csv", "a/10.csv", "b/deeper/0.csv"]
    assert [p.name for p in skab.find_unlabelled_recordings(tmp_path)] == ["free.csv"]
    with pytest.raises(FileNotFoundError, match="no labelled SKAB runs"):
        skab.benchmark_skab(tmp_path / "anomaly-free", FAST)


def test_malformed_files_get_an_error_naming_the_file(tmp_path: Path) -> None:
    run = skab.read_skab_run(skab_file("valve1/0.csv"))
    commas = write_run(tmp_path / "commas" / "1.csv", run, separator=",")
    with pytest.raises(skab.SkabFormatError, match=r"commas/1\.csv.*';'-separated"):
        skab.benchmark_skab(tmp_path / "commas", FAST)

    unlabelled = write_run(tmp_path / "unlabelled" / "2.csv", run.drop(skab.ANOMALY))
    with pytest.raises(skab.SkabFormatError, match=r"unlabelled/2\.csv.*no 'anomaly' column"):
        skab.read_skab_run(unlabelled)

    words = run.with_columns(pl.col("Current").cast(pl.String).str.replace(r"^1\.", "one."))
    with pytest.raises(skab.SkabFormatError, match=r"words/3\.csv.*numeric"):
        skab.read_skab_run(write_run(tmp_path / "words" / "3.csv", words))

    write_run(tmp_path / "short" / "4.csv", run.head(300))
    with pytest.raises(skab.SkabFormatError, match=r"short/4\.csv.*300 rows"):
        skab.benchmark_skab(tmp_path / "short", FAST)
    assert commas.is_file()


def test_scores_are_deterministic_for_a_seed() -> None:
    frame = skab.read_skab_run(skab_file("valve1/5.csv"))
    first = skab.score_run(frame, FAST)
    again = skab.score_run(frame, FAST)
    other_seed = skab.score_run(frame, replace(FAST, seed=FAST.seed + 1))
    assert first.equals(again)
    assert not np.array_equal(first["score"].to_numpy(), other_seed["score"].to_numpy())


def test_pooled_metrics_follow_the_skab_definitions() -> None:
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    alarms = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])
    counts = skab.confusion(labels, alarms)
    assert counts == skab.Confusion(tp=3, fp=1, fn=1, tn=5)
    metrics = counts.metrics()
    assert metrics["far"] == pytest.approx(1 / 6)  # FP / (FP + TN)
    assert metrics["mar"] == pytest.approx(1 / 4)  # FN / (FN + TP)
    assert metrics["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # pooling adds the counts: the F1 of the concatenation, not the mean of per-run F1s
    pooled = counts + skab.confusion(np.array([0, 0]), np.array([1, 1]))
    assert pooled.metrics()["f1"] == pytest.approx(6 / 10)


def test_trailing_majority_smooths_without_looking_ahead() -> None:
    raw = np.array([0, 1, 0, 0, 1, 1, 1, 0, 1, 1])
    assert skab.trailing_majority(raw, 1).tolist() == raw.tolist()
    assert skab.trailing_majority(raw, 3).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]


def test_cross_validation_matches_the_direct_benchmark(three_runs: Path) -> None:
    grid = skab.TuningGrid(
        window=(FAST.window,),
        thermal_features=(FAST.thermal_features,),
        tolerance=(FAST.tolerance, 0.5),
        relative_scale_floor=(FAST.relative_scale_floor,),
        threshold_quantile=(FAST.threshold_quantile,),
        threshold_factor=(FAST.threshold_factor, 1.3),
        smoothing=(FAST.smoothing,),
    )
    result = skab.cross_validate(three_runs, grid, base=FAST, folds=3)
    assert result["candidates"] == 4 and len(result["fold_choices"]) == 3
    assert all(len(fold["held_out_runs"]) == 1 for fold in result["fold_choices"])
    assert 0.0 < result["cv"]["f1"] <= 1.0
    best = result["best_on_all_runs"]
    # the cached-score path of the CV and the benchmark's own path give the same verdicts
    direct = skab.benchmark_skab(three_runs, replace(FAST, **best["params"]), check_unlabelled=False)
    assert best["f1"] == pytest.approx(direct["f1"]) and best["far"] == pytest.approx(direct["far"])


def test_params_are_checked_before_any_work() -> None:
    with pytest.raises(ValueError, match="thermal_features"):
        skab.SkabParams(thermal_features="kelvin").validate()
    with pytest.raises(ValueError, match="fit_rows"):
        skab.SkabParams(window=390).validate()
    skab.SkabParams().validate()


def test_model_family_is_the_energy_model() -> None:
    from factory_pipelines.energy_model import MODEL_NAME

    assert skab.MODEL_FAMILY == MODEL_NAME
