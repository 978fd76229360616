"""The `factory` command line as a user meets it: clear errors, settings shown, CSV export and replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from factory_pipelines.cli import app
from factory_pipelines.telemetry import MACHINE_EXPORT_COLUMNS, MachineTelemetry, parse_telemetry

runner = CliRunner()


def _factory(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factory_pipelines.cli", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_settings_command_shows_resolved_settings_and_masks_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACTORY_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "very-secret-token")
    # Database and broker URLs carry their passwords inline: shown without them.
    monkeypatch.setenv("FACTORY_DB_URL", "postgresql+psycopg://app:db-pw-1@db:5432/serving")
    monkeypatch.setenv("FACTORY_DAGSTER_PG_URL", "postgresql+psycopg2://dagster:db-pw-2@db:5432/dagster")
    monkeypatch.setenv("FACTORY_MLFLOW_BACKEND_STORE_URI", "postgresql+psycopg://mlflow:db-pw-3@db/mlflow")
    monkeypatch.setenv("FACTORY_CELERY_BROKER_URL", "redis://:db-pw-4@redis:6379/0")
    result = runner.invoke(app, ["settings"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["resolved"]["dagster_home"] == str(tmp_path / "state" / "dagster")
    assert "very-secret-token" not in result.output
    assert not [n for n in range(1, 5) if f"db-pw-{n}" in result.output]
    assert shown["dagster_pg_url"] == "postgresql+psycopg2://dagster:***@db:5432/dagster"
    assert shown["resolved"]["mlflow_backend_store_uri"] == "postgresql+psycopg://mlflow:***@db/mlflow"


def test_a_bad_setting_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACTORY_WINDOW_SECONDS", "0")
    result = runner.invoke(app, ["settings"])
    assert result.exit_code == 2
    assert "settings error" in result.output and "window_seconds" in result.output


def test_a_malformed_fault_is_refused_before_anything_starts(tmp_path: Path) -> None:
    done = _factory("simulate", "--fault", "machine02", "--duration", "1", env={}, cwd=tmp_path)
    assert done.returncode == 2
    assert "ASSET=KIND" in done.stderr


def test_a_bad_alert_rules_file_is_refused_by_up_and_serve_naming_its_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: r\n    model: energy_iforest\n    severity: CRITICAL\n    type: T\n    mesage: m\n"
    )
    for command in ("up", "serve"):
        done = _factory(command, env={"FACTORY_ALERT_RULES_FILE": str(rules)}, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert "alert rules error" in done.stderr and "rules.yaml:6" in done.stderr and "mesage" in done.stderr


def test_exported_csv_replays_every_row_over_mqtt(
    tmp_path: Path, mqtt_url: str, mqtt_recorder: Callable[..., object]
) -> None:
    csv = tmp_path / "plant.csv"
    exported = _factory("simulate", "--export-csv", str(csv), "--rows", "60", "--machines", "3", env={}, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    frame = pl.read_csv(csv)
    assert tuple(frame.columns) == MACHINE_EXPORT_COLUMNS and frame.height == 60

    recorder = mqtt_recorder("factory/+/+/telemetry")
    env = {"FACTORY_MQTT_URL": mqtt_url, "FACTORY_DATA_DIR": str(tmp_path / "data")}
    replayed = _factory("replay", str(csv), "--speed", "0", env=env, cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert "published 60 of 60 rows" in replayed.stderr
    messages = recorder.wait_for(lambda got: len(got) >= 60, what="60 replayed rows")  # type: ignore[attr-defined]
    rows = [parse_telemetry(m.topic, m.payload) for m in messages]
    assert all(isinstance(row, MachineTelemetry) for row in rows)
    assert {row.asset_id for row in rows} == {"machine-01", "machine-02", "machine-03"}


def test_replay_of_a_file_without_the_export_columns_names_them(tmp_path: Path, mqtt_url: str) -> None:
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    done = _factory("replay", str(bad), env={"FACTORY_MQTT_URL": mqtt_url}, cwd=tmp_path)
    assert done.returncode == 2
    assert "Power_Consumption_kW" in done.stderr
