"""`factory train` and `factory evaluate` as a data scientist runs them: JSON out, runs in the Dagster instance."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from typer.testing import CliRunner

from factory_pipelines.cli import app
from factory_pipelines.model_catalog import CATALOG
from factory_pipelines.settings import load_settings

runner = CliRunner()


@pytest.fixture
def data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACTORY_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FACTORY_WINDOW_SECONDS", "10")
    monkeypatch.setenv("COLUMNS", "300")  # error boxes on one line, so messages can be matched
    return tmp_path / "state"


def _json(args: list[str]) -> dict[str, object]:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_train_gates_and_evaluate_scores_registered_versions(data_dir: Path) -> None:
    # `train --missing` (what `factory up` starts) would train every family on a fresh install
    assert _json(["train", "--missing", "--dry-run", "--json"])["would_train"] == list(CATALOG)
    first = _json(["train", "energy_iforest", "-p", "n_estimators=30", "--json"])
    assert first["success"] is True and first["version"] == "1" and first["alias"] == "champion"
    assert first["metrics"]["f1"] > 0.5  # type: ignore[index]

    worse = _json(["train", "energy_iforest", "-p", "n_estimators=30", "-p", "contamination=0.45", "--json"])
    assert worse["version"] == "2" and worse["alias"] == "challenger" and worse["promoted"] is False
    assert "worse than the champion" in str(worse["reason"])

    forced = _json(["train", "energy_iforest", "-p", "contamination=0.45", "--force", "--json"])
    assert forced["version"] == "3" and forced["alias"] == "champion" and "forced" in str(forced["reason"])

    champion = _json(["evaluate", "energy_iforest", "--json"])
    assert champion["version"] == "3"
    assert champion["metrics"] == pytest.approx(forced["metrics"])  # same version, same data, same figures
    by_number = _json(["evaluate", "energy_iforest", "--version", "1", "--json"])
    assert by_number["metrics"]["f1"] == pytest.approx(first["metrics"]["f1"])  # type: ignore[index]

    # the runs are in the platform's Dagster instance, so the UI shows them
    with dg.DagsterInstance.from_config(str(load_settings().dagster_home)) as instance:
        runs = instance.get_runs()
    assert {r.run_id for r in runs} == {first["dagster_run_id"], worse["dagster_run_id"], forced["dagster_run_id"]}
    assert {r.job_name for r in runs} == {"energy_iforest_training_job"}
    # ... and skips a family once it has a champion
    assert _json(["train", "--missing", "--dry-run", "--json"])["would_train"] == [
        name for name in CATALOG if name != "energy_iforest"
    ]


def test_clear_errors_for_unknown_model_bad_config_and_missing_alias(data_dir: Path) -> None:
    unknown = runner.invoke(app, ["train", "no_such_model"])
    assert unknown.exit_code == 2 and "known models: energy_iforest" in unknown.output
    malformed = runner.invoke(app, ["train", "energy_iforest", "-p", "n_estimators"])
    assert malformed.exit_code == 2 and "KEY=VALUE" in malformed.output
    missing = runner.invoke(app, ["evaluate", "energy_iforest"])
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_dry_run_without_missing_and_a_malformed_skab_file_are_refused_clearly(data_dir: Path) -> None:
    dry = runner.invoke(app, ["train", "energy_iforest", "--dry-run"])
    assert dry.exit_code == 2 and "--dry-run goes with --missing" in dry.output

    skab_dir = data_dir.parent / "skab"
    skab_dir.mkdir()
    (skab_dir / "1.csv").write_text("datetime,Accelerometer1RMS,anomaly,changepoint\n2020-03-09 10:14:33,0.02,0,0\n")
    bad = runner.invoke(app, ["benchmark", "anomaly", "--skab-dir", str(skab_dir), "--json"])
    assert bad.exit_code == 2 and "1.csv" in bad.output and "';'-separated" in bad.output
    assert bad.exception is None or isinstance(bad.exception, SystemExit)  # a usage error, not a traceback


def test_benchmark_ppe_trains_through_dagster_and_scores_the_test_folder(data_dir: Path) -> None:
    from factory_pipelines.ppe_images import write_synthetic_folder

    train_dir = write_synthetic_folder(data_dir.parent / "ppe_train", 40, seed=1, size=64)
    test_dir = write_synthetic_folder(data_dir.parent / "ppe_test", 12, seed=2, size=64)
    tiny = ["-p", "epochs=1", "-p", "image_size=64", "-p", "crop_size=64", "-p", "calibration_fraction=0.25"]

    figures = _json(["benchmark", "ppe", "--train-dir", str(train_dir), "--test-dir", str(test_dir), *tiny, "--json"])

    assert figures["model"] == "ppe_vision_folders" and figures["version"] == "1"
    assert figures["n_frames"] == 12
    for key in ("precision", "recall", "f1", "crop_accuracy", "violation_auc", "best_f1", "threshold"):
        assert 0.0 <= float(figures[key]) <= 1.0, (key, figures)  # type: ignore[arg-type]
    with dg.DagsterInstance.from_config(str(load_settings().dagster_home)) as instance:
        (run,) = instance.get_runs()
    assert run.run_id == figures["dagster_run_id"] and run.job_name == "ppe_vision_training_job"
