"""The backlog's evidence: what the serving store and the typed telemetry rows said at a shift's start.

Everything is real: a SQLite serving store, the alert book on it, and typed-row Parquet files under
telemetry/<kind>/<window_key>.parquet. The shift is the early shift of 26 November 2026 in Berlin
(05:00 UTC); the shift before it started at 22:00 local (21:00 UTC) the day before. Predictions and
files placed around those two moments check that a backfill sees what was known at the start.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.alert_model import ActionPlan, AlertCandidate, AlertLineage
from factory_pipelines.backlog_evidence import (
    CYBER_MODEL,
    ENERGY_MODEL,
    PPE_MODEL,
    RUL_MODEL,
    SAFETY_MODEL,
    gather_evidence,
)
from factory_pipelines.backlog_model import EvidenceItem, EvidenceKind, ShiftEvidence
from factory_pipelines.shifts import ShiftCalendar
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import Prediction, Severity
from factory_pipelines.window_rows import CLEANROOM_ROWS_SCHEMA, ROBOT_ROWS_SCHEMA
from factory_pipelines.windows import window_key

CALENDAR = ShiftCalendar(timezone="Europe/Berlin")
SHIFT = CALENDAR.shift_for_key("2026-11-26T06:00+0100")
START = datetime(2026, 11, 26, 5, 0, tzinfo=UTC)  # 06:00 in Berlin
PREVIOUS_START = datetime(2026, 11, 25, 21, 0, tzinfo=UTC)  # 22:00 in Berlin, the night before
HORIZON_END = datetime(2026, 11, 27, 13, 0, tzinfo=UTC)  # end of the third shift after this one
WINDOW = timedelta(minutes=5)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ServingStore]:
    opened = ServingStore(f"sqlite:///{tmp_path / 'serving.db'}")
    yield opened
    opened.dispose()


@pytest.fixture
def rows_dir(tmp_path: Path) -> Path:
    return tmp_path / "telemetry"


def gather(store: ServingStore, rows_dir: Path) -> ShiftEvidence:
    return gather_evidence(SHIFT, CALENDAR, store=store, rows_dir=rows_dir, now=START)


def prediction(model: str, asset_id: str, start: datetime, score: float, label: str, **extra: Any) -> Prediction:
    return Prediction(
        model_name=model,
        model_version="3",
        asset_id=asset_id,
        window_key=window_key(start, "collector-1"),
        score=score,
        label=label,
        produced_at=start + WINDOW + timedelta(seconds=30),
        window_start=start,
        window_end=start + WINDOW,
        **extra,
    )


def write_rows(
    rows_dir: Path, kind: str, start: datetime, schema: dict[str, pl.DataType], rows: list[dict[str, Any]]
) -> str:
    """One window's typed rows at telemetry/<kind>/<window_key>.parquet; columns not given are null."""
    key = window_key(start, "collector-1")
    directory = rows_dir / kind
    directory.mkdir(parents=True, exist_ok=True)
    full = [{name: ({"window_key": key} | row).get(name) for name in schema} for row in rows]
    pl.DataFrame(full, schema=schema).write_parquet(directory / f"{key}.parquet")
    return key


def robot_window(rows_dir: Path, start: datetime, counts: dict[str, tuple[int, int]]) -> None:
    """Robot rows at the window's start and end: cycle_count goes from the first count to the second."""
    rows = []
    for asset_id, (first, last) in counts.items():
        rows.append({"asset_id": asset_id, "ts": start, "seq": 1, "cycle_count": first})
        rows.append({"asset_id": asset_id, "ts": start + timedelta(hours=1), "seq": 2, "cycle_count": last})
    write_rows(rows_dir, "robots", start, ROBOT_ROWS_SCHEMA, rows)


def cleanroom_row(asset_id: str, ts: datetime, *, iso_class: float = 4.0, pressure: float = 12.0) -> dict[str, Any]:
    return {
        "asset_id": asset_id,
        "ts": ts,
        "seq": 1,
        "iso_class": iso_class,
        "differential_pressure_pa": pressure,
        "temperature": 21.0,
        "humidity": 45.0,
    }


def of_kind(evidence: ShiftEvidence, kind: EvidenceKind) -> dict[str, EvidenceItem]:
    items = [item for item in evidence.items if item.kind == kind]
    by_asset = {item.asset_id: item for item in items}
    assert len(by_asset) == len(items), f"more than one {kind} item for an asset: {items}"
    return by_asset


# ---- RUL ------------------------------------------------------------------------------------


def test_rul_lower_end_within_the_horizon_at_the_robots_own_cycle_rate(store: ServingStore, rows_dir: Path) -> None:
    # Two hours of rows before the start: robot-near runs 100 cycles/h, robot-far 50 cycles/h.
    robot_window(rows_dir, START - timedelta(hours=3), {"robot-near": (1000, 1100), "robot-far": (500, 550)})
    robot_window(rows_dir, START - timedelta(hours=2), {"robot-near": (1100, 1200), "robot-far": (550, 600)})
    # Rows of a window after the start (a far faster rate) were not there yet.
    robot_window(rows_dir, START + timedelta(minutes=5), {"robot-near": (1200, 900_000)})
    measured = START - timedelta(minutes=30)
    near = prediction(RUL_MODEL, "robot-near", measured, 1500, "rul_ok", rul_lower=1000.0, rul_upper=2000.0)
    # 5000 cycles at 50/h is 100 h away, far beyond the 32 h horizon.
    far = prediction(RUL_MODEL, "robot-far", measured, 6000, "rul_ok", rul_lower=5000.0, rul_upper=7000.0)
    store.upsert_predictions([near, far])

    evidence = gather(store, rows_dir)

    assert evidence.notes == []
    assert [s.key for s in evidence.next_shifts] == [
        "2026-11-26T14:00+0100",
        "2026-11-26T22:00+0100",
        "2026-11-27T06:00+0100",
    ]
    assert evidence.gathered_at == START
    rul = of_kind(evidence, EvidenceKind.RUL)
    assert set(rul) == {"robot-near"}
    item = rul["robot-near"]
    assert item.evidence_id == near.prediction_id == f"{RUL_MODEL}/{near.window_key}/robot-near"
    reached = measured + WINDOW + timedelta(hours=10)  # 1000 cycles at 100 cycles/h after the window's end
    assert reached < HORIZON_END
    assert item.facts["lower_end_reached_at"] == reached.isoformat()
    assert item.facts["cycles_per_hour"] == 100.0
    assert (item.facts["rul_lower_cycles"], item.facts["rul_upper_cycles"]) == (1000.0, 2000.0)
    assert item.observed_at == measured + WINDOW


def test_rul_without_a_cycle_rate_counts_only_when_the_model_calls_it_low(store: ServingStore, rows_dir: Path) -> None:
    measured = START - timedelta(hours=1)
    low = prediction(RUL_MODEL, "robot-low", measured, 150, "rul_low", rul_lower=90.0, rul_upper=210.0)
    fine = prediction(RUL_MODEL, "robot-fine", measured, 150, "rul_ok", rul_lower=90.0, rul_upper=210.0)
    store.upsert_predictions([low, fine])
    # Rows for another robot only: neither robot here has a rate.
    robot_window(rows_dir, START - timedelta(hours=2), {"robot-other": (0, 100)})

    rul = of_kind(gather(store, rows_dir), EvidenceKind.RUL)

    assert set(rul) == {"robot-low"}
    assert rul["robot-low"].evidence_id == low.prediction_id
    assert "cycles_per_hour" not in rul["robot-low"].facts
    assert "lower_end_reached_at" not in rul["robot-low"].facts
    assert rul["robot-low"].facts["rul_lower_cycles"] == 90.0


def test_rul_predictions_of_windows_after_the_shift_start_are_not_seen(store: ServingStore, rows_dir: Path) -> None:
    robot_window(rows_dir, START - timedelta(hours=2), {"robot-a": (0, 100), "robot-b": (0, 100)})
    before = prediction(RUL_MODEL, "robot-b", START - timedelta(minutes=10), 900, "rul_ok", rul_lower=800.0)
    after_b = prediction(RUL_MODEL, "robot-b", START + timedelta(minutes=1), 20, "rul_low", rul_lower=10.0)
    # robot-a's only prediction is of a window that starts after the shift's start.
    after_a = prediction(RUL_MODEL, "robot-a", START, 20, "rul_low", rul_lower=10.0)
    store.upsert_predictions([before, after_b, after_a])

    rul = of_kind(gather(store, rows_dir), EvidenceKind.RUL)

    assert set(rul) == {"robot-b"}
    assert rul["robot-b"].evidence_id == before.prediction_id
    assert rul["robot-b"].facts["rul_lower_cycles"] == 800.0


# ---- alerts ---------------------------------------------------------------------------------


def raise_alert(book: AlertBook, key: str, at: datetime, *, prediction_id: str | None = None) -> str:
    candidate = AlertCandidate(
        rule="rul_low",
        type="RUL_LOW",
        severity=Severity.WARNING,
        source=RUL_MODEL,
        asset_id=key,
        message=f"{key}: bearing RUL low",
        dedup_key=f"{RUL_MODEL}:{key}:RUL_LOW",
        observed_at=at,
        lineage=AlertLineage(model_name=RUL_MODEL, prediction_id=prediction_id),
    )
    return book.raise_or_repeat(candidate, now=at).alert.alert_id


def test_alerts_open_at_the_shift_start_with_their_plans(store: ServingStore, rows_dir: Path) -> None:
    book = AlertBook(store.engine)
    open_id = raise_alert(book, "robot-open", START - timedelta(hours=3), prediction_id="rul_lstm/w/robot-open")
    plan = ActionPlan(
        action="SCHEDULE_MAINTENANCE_NEXT_SHIFT",
        priority=2,
        summary="Change the bearing in the next shift",
        steps=["order bearing", "change it"],
        owner_role="maintenance_technician",
        due_at=START + timedelta(hours=8),
    )
    book.attach_plan(open_id, plan, now=START - timedelta(hours=2))
    book.acknowledge(open_id, by="maria", now=START - timedelta(hours=1))

    cleared_before = raise_alert(book, "robot-cleared-before", START - timedelta(hours=5))
    book.clear(cleared_before, by="maria", now=START - timedelta(hours=1))
    raise_alert(book, "robot-later", START + timedelta(hours=1))
    cleared_after = raise_alert(book, "robot-cleared-after", START - timedelta(hours=2))
    # Acknowledged and cleared after the start: at the start it was open and nobody had acknowledged it.
    book.acknowledge(cleared_after, by="li", now=START + timedelta(hours=1))
    book.clear(cleared_after, by="li", now=START + timedelta(hours=2))

    alerts = of_kind(gather(store, rows_dir), EvidenceKind.ALERT)

    assert set(alerts) == {"robot-open", "robot-cleared-after"}
    opened = alerts["robot-open"]
    assert opened.evidence_id == open_id
    assert opened.related_ids == ["rul_lstm/w/robot-open"]
    assert opened.facts["plan_action"] == "SCHEDULE_MAINTENANCE_NEXT_SHIFT"
    assert opened.facts["plan_priority"] == 2
    assert opened.facts["plan_owner_role"] == "maintenance_technician"
    assert opened.facts["plan_due_at"] == (START + timedelta(hours=8)).isoformat()
    assert (opened.facts["type"], opened.facts["severity"], opened.facts["acknowledged"]) == (
        "RUL_LOW",
        Severity.WARNING.value,
        True,
    )
    backfilled = alerts["robot-cleared-after"]
    assert backfilled.evidence_id == cleared_after
    assert "plan_action" not in backfilled.facts and backfilled.related_ids == []
    assert backfilled.facts["acknowledged"] is False and "(not acknowledged)" in backfilled.summary


# ---- energy and cyber anomalies -------------------------------------------------------------


def test_anomalies_of_the_last_shift_fold_into_one_item_per_asset(store: ServingStore, rows_dir: Path) -> None:
    energy = [
        # The first window of the last shift counts; the shift's own first window does not.
        prediction(ENERGY_MODEL, "press-1", PREVIOUS_START, 0.7, "anomaly", threshold=0.5),
        prediction(ENERGY_MODEL, "press-1", PREVIOUS_START + timedelta(hours=2), 0.9, "anomaly", threshold=0.5),
        prediction(ENERGY_MODEL, "press-1", PREVIOUS_START + timedelta(hours=3), 0.8, "anomaly", threshold=0.5),
        prediction(ENERGY_MODEL, "press-1", PREVIOUS_START + timedelta(hours=4), 0.1, "normal", threshold=0.5),
        prediction(ENERGY_MODEL, "press-1", PREVIOUS_START - WINDOW, 0.99, "anomaly", threshold=0.5),
        prediction(ENERGY_MODEL, "press-1", START, 0.98, "anomaly", threshold=0.5),
        prediction(ENERGY_MODEL, "press-2", PREVIOUS_START + timedelta(hours=1), 0.2, "normal"),
        prediction(ENERGY_MODEL, "press-2", PREVIOUS_START + timedelta(hours=2), 0.3, "normal"),
        # press-3 was anomalous only outside the last shift.
        prediction(ENERGY_MODEL, "press-3", PREVIOUS_START - timedelta(hours=1), 0.95, "anomaly"),
        prediction(ENERGY_MODEL, "press-3", START + timedelta(hours=1), 0.95, "anomaly"),
    ]
    cyber = [
        prediction(
            CYBER_MODEL, "gateway-1", PREVIOUS_START + timedelta(hours=1), 0.6, "attack", attack_type="scanning"
        ),
        prediction(CYBER_MODEL, "gateway-1", PREVIOUS_START + timedelta(hours=5), 0.95, "attack", attack_type="ddos"),
        prediction(CYBER_MODEL, "gateway-1", PREVIOUS_START + timedelta(hours=6), 0.05, "normal"),
        prediction(CYBER_MODEL, "gateway-2", PREVIOUS_START + timedelta(hours=6), 0.05, "normal"),
    ]
    store.upsert_predictions(energy + cyber)

    evidence = gather(store, rows_dir)

    power = of_kind(evidence, EvidenceKind.ENERGY_ANOMALY)
    assert set(power) == {"press-1"}
    item = power["press-1"]
    assert item.evidence_id == energy[1].prediction_id  # the worst score inside the last shift
    assert item.related_ids == [energy[2].prediction_id, energy[0].prediction_id]
    assert (item.facts["flagged_windows"], item.facts["scored_windows"]) == (3, 4)
    assert (item.facts["worst_score"], item.facts["labels"], item.facts["threshold"]) == (0.9, ["anomaly"], 0.5)
    assert item.observed_at == PREVIOUS_START + timedelta(hours=2) + WINDOW

    attacks = of_kind(evidence, EvidenceKind.CYBER_ANOMALY)
    assert set(attacks) == {"gateway-1"}
    attack = attacks["gateway-1"]
    assert attack.evidence_id == cyber[1].prediction_id
    assert attack.related_ids == [cyber[0].prediction_id]
    assert (attack.facts["flagged_windows"], attack.facts["scored_windows"]) == (2, 3)
    assert (attack.facts["labels"], attack.facts["attack_type"]) == (["attack"], "ddos")
    assert evidence.notes == []


# ---- PPE and safety -------------------------------------------------------------------------


def test_ppe_compliance_per_zone_from_frames(store: ServingStore, rows_dir: Path) -> None:
    at = PREVIOUS_START + timedelta(hours=1)
    ppe = [
        prediction(PPE_MODEL, "cam-1", at, 0.8, "violation", zone="assembly", frames=60, frames_in_violation=3),
        prediction(
            PPE_MODEL, "cam-1", at + WINDOW, 0.6, "violation", zone="assembly", frames=60, frames_in_violation=2
        ),
        prediction(PPE_MODEL, "cam-2", at, 0.1, "compliant", zone="assembly", frames=80, frames_in_violation=0),
        prediction(PPE_MODEL, "cam-3", at, 0.05, "compliant", zone="welding", frames=50, frames_in_violation=0),
        # Without the extras: one frame per prediction, a violation label is a violating frame, the camera a zone.
        prediction(PPE_MODEL, "cam-4", at, 0.7, "violation"),
        prediction(PPE_MODEL, "cam-4", at + WINDOW, 0.2, "compliant"),
        # Not in the last shift.
        prediction(PPE_MODEL, "cam-3", START, 0.9, "violation", zone="welding", frames=50, frames_in_violation=50),
    ]
    store.upsert_predictions(ppe)

    zones = of_kind(gather(store, rows_dir), EvidenceKind.PPE_COMPLIANCE)

    assert set(zones) == {"assembly", "welding", "cam-4"}
    assembly = zones["assembly"]
    assert assembly.facts["compliance"] == round(1 - 5 / 200, 4) == 0.975
    assert (assembly.facts["frames"], assembly.facts["frames_in_violation"]) == (200, 5)
    assert assembly.facts["cameras"] == ["cam-1", "cam-2"]
    assert assembly.evidence_id == ppe[0].prediction_id and assembly.related_ids == [ppe[1].prediction_id]
    welding = zones["welding"]
    assert (welding.facts["compliance"], welding.facts["frames"], welding.facts["frames_in_violation"]) == (1.0, 50, 0)
    assert welding.evidence_id == ppe[3].prediction_id
    camera_zone = zones["cam-4"]
    assert (camera_zone.facts["compliance"], camera_zone.facts["frames"]) == (0.5, 2)
    assert camera_zone.evidence_id == ppe[4].prediction_id


def test_high_hazard_risk_per_zone_is_a_safety_item(store: ServingStore, rows_dir: Path) -> None:
    at = PREVIOUS_START + timedelta(hours=2)
    safety = [
        prediction(SAFETY_MODEL, "station-1", at, 0.2, "low", zone="zone-a"),
        prediction(SAFETY_MODEL, "station-1", at + WINDOW, 0.7, "high", zone="zone-a"),
        prediction(SAFETY_MODEL, "station-2", at + 2 * WINDOW, 0.9, "high", zone="zone-a"),
        prediction(SAFETY_MODEL, "station-3", at, 0.45, "medium", zone="zone-b"),
        prediction(SAFETY_MODEL, "station-3", START, 0.99, "high", zone="zone-b"),  # after the last shift
    ]
    store.upsert_predictions(safety)

    hazards = of_kind(gather(store, rows_dir), EvidenceKind.SAFETY_HAZARD)

    assert set(hazards) == {"zone-a"}
    zone = hazards["zone-a"]
    assert zone.evidence_id == safety[2].prediction_id and zone.related_ids == [safety[1].prediction_id]
    assert (zone.facts["flagged_windows"], zone.facts["scored_windows"], zone.facts["labels"]) == (2, 3, ["high"])


# ---- cleanrooms -----------------------------------------------------------------------------


def test_cleanroom_excursions_of_the_last_shift(store: ServingStore, rows_dir: Path) -> None:
    old = PREVIOUS_START - WINDOW  # a window of the shift before the last one
    first = PREVIOUS_START + timedelta(hours=1)
    second = PREVIOUS_START + timedelta(hours=2)
    write_rows(rows_dir, "cleanrooms", old, CLEANROOM_ROWS_SCHEMA, [cleanroom_row("cr-3", old, iso_class=8.0)])
    first_key = write_rows(
        rows_dir,
        "cleanrooms",
        first,
        CLEANROOM_ROWS_SCHEMA,
        [cleanroom_row("cr-1", first, iso_class=6.2), cleanroom_row("cr-2", first)],
    )
    second_key = write_rows(
        rows_dir,
        "cleanrooms",
        second,
        CLEANROOM_ROWS_SCHEMA,
        [
            cleanroom_row("cr-1", second, pressure=3.5),
            cleanroom_row("cr-1", second + timedelta(seconds=10), pressure=4.0),
            cleanroom_row("cr-1", second + timedelta(seconds=20)),
            cleanroom_row("cr-2", second, iso_class=5.0, pressure=5.0),  # on the limits is inside them
            cleanroom_row("cr-3", second),
        ],
    )
    write_rows(rows_dir, "cleanrooms", START, CLEANROOM_ROWS_SCHEMA, [cleanroom_row("cr-2", START, pressure=1.0)])

    evidence = gather(store, rows_dir)

    rooms = of_kind(evidence, EvidenceKind.CLEANROOM_EXCURSION)
    assert set(rooms) == {"cr-1"}
    room = rooms["cr-1"]
    assert room.facts["limits_broken"] == ["iso_class", "differential_pressure_pa"]
    assert (room.facts["readings_out_of_limits"], room.facts["readings"]) == (3, 4)
    assert (room.facts["worst_iso_class"], room.facts["lowest_pressure_pa"]) == (6.2, 3.5)
    assert room.evidence_id == f"cleanrooms/{second_key}/cr-1"  # the window with the most readings out
    assert room.related_ids == [f"cleanrooms/{first_key}/cr-1"]
    assert room.observed_at == second + timedelta(seconds=10)
    assert evidence.notes == []


# ---- unreadable sources ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("broken_kind", "note_start", "still_there"),
    [
        ("robots", "RUL predictions not read", EvidenceKind.CLEANROOM_EXCURSION),
        ("cleanrooms", "cleanroom readings not read", EvidenceKind.RUL),
    ],
)
def test_an_unreadable_file_becomes_a_note_and_the_rest_is_still_gathered(
    store: ServingStore, rows_dir: Path, broken_kind: str, note_start: str, still_there: EvidenceKind
) -> None:
    at = PREVIOUS_START + timedelta(hours=1)
    robot_window(rows_dir, START - timedelta(hours=2), {"robot-1": (0, 100)})
    write_rows(rows_dir, "cleanrooms", at, CLEANROOM_ROWS_SCHEMA, [cleanroom_row("cr-1", at, iso_class=7.0)])
    broken = rows_dir / broken_kind / f"{window_key(at + WINDOW, 'collector-2')}.parquet"
    broken.write_bytes(b"not a parquet file")
    store.upsert_predictions(
        [
            prediction(RUL_MODEL, "robot-1", START - timedelta(hours=1), 300, "rul_low", rul_lower=200.0),
            prediction(ENERGY_MODEL, "press-1", at, 0.9, "anomaly"),
        ]
    )
    raise_alert(AlertBook(store.engine), "robot-1", START - timedelta(hours=1))

    evidence = gather(store, rows_dir)

    assert len(evidence.notes) == 1 and evidence.notes[0].startswith(note_start)
    kinds = {item.kind for item in evidence.items}
    assert kinds == {still_there, EvidenceKind.ALERT, EvidenceKind.ENERGY_ANOMALY}
