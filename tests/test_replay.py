"""CSV replay: a plant export (written by the simulator) published row by row over a real broker."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from factory_pipelines.replay import ReplayFileError, ReplayStats, replay_csv
from factory_pipelines.settings import FactorySettings
from factory_pipelines.simulator import export_plant_csv
from factory_pipelines.telemetry import (
    MACHINE_EXPORT_COLUMNS,
    MACHINE_FIELD_BY_COLUMN,
    OPERATION_MODES,
    MachineTelemetry,
    parse_telemetry,
)

TELEMETRY = "factory/main/+/telemetry"


def _machine_payloads(messages: list[Any]) -> list[MachineTelemetry]:
    out = []
    for message in messages:
        parsed = parse_telemetry(message.topic, message.payload)
        assert isinstance(parsed, MachineTelemetry)
        out.append(parsed)
    return out


def _with_timestamps(source: Path, target: Path, timestamps: list[str]) -> Path:
    """The export at `source` with its Timestamp column replaced."""
    frame = pl.read_csv(source, infer_schema=False)
    frame.with_columns(pl.Series("Timestamp", timestamps)).write_csv(target)
    return target


def test_export_has_the_plant_layout(tmp_path: Path) -> None:
    path = export_plant_csv(tmp_path / "plant.csv", 23, machines=4, faults={"machine-02": "energy_spike"})
    frame = pl.read_csv(path)
    assert frame.columns == list(MACHINE_EXPORT_COLUMNS)
    assert frame.height == 23
    assert frame["Machine_ID"].dtype == pl.Int64
    assert frame["Machine_ID"].head(8).to_list() == [1, 2, 3, 4, 1, 2, 3, 4]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", ts) for ts in frame["Timestamp"])
    assert frame["Timestamp"][0] == "2024-01-01 00:00:00" and frame["Timestamp"][4] == "2024-01-01 00:00:01"
    assert set(frame["Operation_Mode"]) <= set(OPERATION_MODES)
    assert set(frame["Efficiency_Status"]) <= {"High", "Medium", "Low"}
    power = (
        frame.group_by("Machine_ID")
        .agg(pl.col("Power_Consumption_kW").mean())
        .sort("Machine_ID")["Power_Consumption_kW"]
    )
    assert power[1] > max(power[0], power[2], power[3]) + 3  # the energy spike on machine 2
    # Same seed, same file; the machine model is the simulator's.
    again = export_plant_csv(tmp_path / "again.csv", 23, machines=4, faults={"machine-02": "energy_spike"})
    assert again.read_bytes() == path.read_bytes()


def test_replay_publishes_every_row_with_its_fields(
    factory_settings: FactorySettings, mqtt_recorder: Callable[..., Any], tmp_path: Path
) -> None:
    path = export_plant_csv(tmp_path / "plant.csv", 30, machines=3)
    recorder = mqtt_recorder(TELEMETRY)
    stats = replay_csv(factory_settings, path, speed=None)
    assert (stats.rows_read, stats.rows_published, stats.bad_rows, stats.unacknowledged) == (30, 30, 0, 0)

    payloads = _machine_payloads(recorder.wait_for(lambda ms: len(ms) >= 30, what="30 rows"))
    assert len(payloads) == 30
    expected = pl.read_csv(path, infer_schema=False).to_dicts()
    received = {(p.asset_id, p.ts): p for p in payloads}
    for row in expected:
        ts = datetime.strptime(row["Timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)  # the row's own time
        payload = received[(f"machine-{int(row['Machine_ID']):02d}", ts)]
        sent = json.loads(payload.model_dump_json(by_alias=True))
        for column, name in MACHINE_FIELD_BY_COLUMN.items():
            value = getattr(payload, name)
            if isinstance(value, float):
                assert value == pytest.approx(float(row[column])), column
            else:
                assert str(value) == row[column], column
        assert sent["kind"] == "machine"
    for asset_id in ("machine-01", "machine-02", "machine-03"):
        seqs = [p.seq for p in payloads if p.asset_id == asset_id]
        assert len(seqs) == 10 and seqs == sorted(seqs) and len(set(seqs)) == 10


def test_replay_gaps_follow_timestamps_divided_by_speed(
    factory_settings: FactorySettings, mqtt_recorder: Callable[..., Any], tmp_path: Path
) -> None:
    # Three groups of two rows, 1 s then 5 s apart: at speed 10, 0.1 s then 0.5 s apart.
    source = export_plant_csv(tmp_path / "plant.csv", 6, machines=2)
    stamps = ["2024-01-01 00:00:00"] * 2 + ["2024-01-01 00:00:01"] * 2 + ["2024-01-01 00:00:06"] * 2
    path = _with_timestamps(source, tmp_path / "uneven.csv", stamps)
    recorder = mqtt_recorder(TELEMETRY)
    stats = replay_csv(factory_settings, path, speed=10)
    assert stats.rows_published == 6
    assert stats.elapsed_s >= 0.6 * 0.9  # the publisher waited for the last group

    messages = recorder.wait_for(lambda ms: len(ms) >= 6, what="6 rows")
    arrival: dict[datetime, float] = {}
    for message, payload in zip(messages, _machine_payloads(messages), strict=True):
        arrival.setdefault(payload.ts, message.received_at)
    t0, t1, t6 = (arrival[datetime(2024, 1, 1, 0, 0, s, tzinfo=UTC)] for s in (0, 1, 6))
    assert t0 < t1 < t6  # groups arrive in timestamp order
    assert (t6 - t1) > (t1 - t0)  # and the longer original gap stays the longer one


def test_replay_as_fast_as_possible_ignores_the_gaps(
    factory_settings: FactorySettings, mqtt_recorder: Callable[..., Any], tmp_path: Path
) -> None:
    path = export_plant_csv(tmp_path / "plant.csv", 12, machines=2, interval_s=600)  # spans 50 minutes
    recorder = mqtt_recorder(TELEMETRY)
    stats = replay_csv(factory_settings, path, speed=0)
    assert stats.rows_published == 12 and stats.elapsed_s < 30
    assert stats.last_ts is not None and stats.first_ts is not None
    assert stats.last_ts - stats.first_ts == timedelta(minutes=50)
    recorder.wait_for(lambda ms: len(ms) >= 12, what="12 rows")


def test_bad_rows_are_counted_and_skipped_not_fatal(
    factory_settings: FactorySettings, mqtt_recorder: Callable[..., Any], tmp_path: Path
) -> None:
    path = export_plant_csv(tmp_path / "plant.csv", 8, machines=2)
    lines = path.read_text().splitlines()
    header = lines[0].split(",")

    def broken(line: str, column: str, value: str) -> str:
        cells = line.split(",")
        cells[header.index(column)] = value
        return ",".join(cells)

    lines[2] = broken(lines[2], "Power_Consumption_kW", "lots")  # file line 3, written with an invalid UTF-8 byte
    lines[4] = broken(lines[4], "Timestamp", "yesterday")  # file line 5
    lines[6] = broken(lines[6], "Machine_ID", "M7")  # file line 7
    lines[7] = broken(lines[7], "Vibration_Hz", "")  # not measured: absent, not bad
    lines[1] = broken(lines[1], "Operation_Mode", '"Active')  # a stray quote spoils nothing
    path.write_bytes(("\n".join(lines) + "\n").replace("lots", "l\udcffts").encode("utf-8", "surrogateescape"))

    recorder = mqtt_recorder(TELEMETRY)
    stats = replay_csv(factory_settings, path, speed=None)
    assert (stats.rows_read, stats.rows_published, stats.bad_rows) == (8, 5, 3)
    lines_and_reasons = dict(stats.bad_row_examples)
    assert set(lines_and_reasons) == {3, 5, 7}
    assert "Power_Consumption_kW" in lines_and_reasons[3] and "ts" in lines_and_reasons[3]
    assert "Timestamp" in lines_and_reasons[5]
    assert "Machine_ID" in lines_and_reasons[7]

    payloads = _machine_payloads(recorder.wait_for(lambda ms: len(ms) >= 5, what="the 5 good rows"))
    assert len(payloads) == 5
    unmeasured = [p for p in payloads if p.vibration_hz is None]
    assert len(unmeasured) == 1 and unmeasured[0].power_consumption_kw is not None
    assert {p.operation_mode for p in payloads} <= {"Active", "Idle", "Maintenance"}


def test_missing_columns_are_named_before_anything_is_published(
    factory_settings: FactorySettings, tmp_path: Path
) -> None:
    source = export_plant_csv(tmp_path / "plant.csv", 4, machines=2)
    pl.read_csv(source).drop("Power_Consumption_kW", "Efficiency_Status").write_csv(tmp_path / "partial.csv")
    with pytest.raises(ReplayFileError, match="Power_Consumption_kW, Efficiency_Status") as excinfo:
        replay_csv(factory_settings, tmp_path / "partial.csv")
    assert isinstance(excinfo.value, ValueError)
    with pytest.raises(ReplayFileError, match="does not exist"):
        replay_csv(factory_settings, tmp_path / "nothing-here.csv")


def test_stop_ends_a_slow_replay_promptly(
    factory_settings: FactorySettings, mqtt_recorder: Callable[..., Any], tmp_path: Path
) -> None:
    path = export_plant_csv(tmp_path / "plant.csv", 10, machines=1, interval_s=3600)  # ten hours at speed 1
    recorder = mqtt_recorder(TELEMETRY)
    stop = threading.Event()
    result: list[ReplayStats] = []
    runner = threading.Thread(target=lambda: result.append(replay_csv(factory_settings, path, speed=1, stop=stop)))
    runner.start()
    recorder.wait_for(lambda ms: len(ms) >= 1, what="the first row")
    stop.set()
    runner.join(timeout=15)
    assert not runner.is_alive()
    assert result[0].stopped_early and result[0].rows_published == 1
