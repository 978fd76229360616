"""The shift_backlog asset end to end: evidence in a real store, the real google-genai client against the
Gemini stand-in, the backlog in the store and on the session MQTT broker; the schedule; `factory backlog`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from pydantic import SecretStr

from assets.backlog import build_shift_backlog
from factory_pipelines.alert_book import AlertBook
from factory_pipelines.alert_model import AlertCandidate
from factory_pipelines.backlog_book import BacklogBook
from factory_pipelines.definitions import build_definitions
from factory_pipelines.resources import build_resources
from factory_pipelines.settings import FactorySettings, load_settings
from factory_pipelines.shifts import Shift
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import LEGACY_BACKLOG_TOPIC, Prediction, Severity, backlog_topic
from factory_pipelines.windows import window_key
from tests.gemini_standin import GeminiStandIn, answer_with

SHIFT_KEY = "2026-11-20T06:00+0100"


@pytest.fixture
def settings(tmp_path: Path, mqtt_url: str) -> FactorySettings:
    settings = load_settings(
        data_dir=tmp_path / "data",
        mqtt_url=mqtt_url,
        site=f"site-{uuid.uuid4().hex[:6]}",
        plant_timezone="Europe/Berlin",
    )
    settings.ensure_dirs()
    return settings


def seed_evidence(settings: FactorySettings, shift: Shift) -> tuple[str, str]:
    """An open RUL_LOW alert and an energy anomaly in the previous shift; their evidence ids."""
    store = ServingStore(settings.resolved_db_url)
    try:
        raised = AlertBook(store.engine).raise_or_repeat(
            AlertCandidate(
                rule="rul_low",
                type="RUL_LOW",
                severity=Severity.WARNING,
                source="rul_lstm",
                asset_id="robot-3",
                message="remaining life below 200 cycles",
                dedup_key="rul_lstm:robot-3:RUL_LOW",
                observed_at=shift.start - timedelta(hours=2),
            ),
            now=shift.start - timedelta(hours=2),
        )
        start = (shift.start - timedelta(hours=1)).astimezone(UTC)
        anomaly = Prediction(
            model_name="energy_iforest",
            model_version="4",
            asset_id="press-1",
            window_key=window_key(start, "collector-1"),
            score=0.81,
            label="anomaly",
            produced_at=start + timedelta(minutes=1),
            window_start=start,
            window_end=start + timedelta(minutes=1),
            threshold=0.6,
        )
        store.upsert_predictions([anomaly])
    finally:
        store.dispose()
    return raised.alert.alert_id, anomaly.prediction_id


def materialize_backlog(
    settings: FactorySettings, config: dict[str, object] | None = None
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [build_shift_backlog(settings.shift_calendar, settings.site)],
        partition_key=SHIFT_KEY,
        resources=build_resources(settings),
        run_config={"ops": {"shift_backlog": {"config": config or {}}}},
    )


def test_gemini_writes_the_backlog_and_it_is_stored_and_published(
    settings: FactorySettings, gemini: GeminiStandIn, mqtt_recorder
) -> None:
    settings = settings.model_copy(
        update={"gemini_api_key": SecretStr("key-1"), "gemini_base_url": gemini.url, "gemini_model": "gm"}
    )
    shift = settings.shift_calendar.shift_for_key(SHIFT_KEY)
    alert_id, prediction_id = seed_evidence(settings, shift)
    due = (shift.start + timedelta(hours=2)).isoformat()
    task = {
        "action": "INSPECT_POWER_DRAW",
        "priority_reasons": ["power anomaly last shift"],
        "due_at": due,
        "estimated_minutes": 30,
        "required_skill": "electrician",
    }
    answer = {
        "summary": "Check press-1's power draw first, then book robot-3's bearing.",
        "tasks": [
            {**task, "asset_id": "robot-3", "title": "Book robot-3", "priority_score": 60, "evidence_ids": [alert_id]},
            {
                **task,
                "asset_id": "press-1",
                "title": "Check press-1",
                "priority_score": 75,
                "evidence_ids": [prediction_id],
            },
            {**task, "asset_id": "ghost-9", "title": "Invented", "priority_score": 99, "evidence_ids": ["made-up"]},
        ],
    }
    gemini.reply = lambda: answer_with(json.dumps(answer), prompt_tokens=900, output_tokens=210, total_tokens=1110)
    recorder = mqtt_recorder(backlog_topic(settings.site), LEGACY_BACKLOG_TOPIC)

    result = materialize_backlog(settings)

    assert result.success
    [request] = gemini.requests
    prompt = json.dumps(request.body["contents"])
    assert alert_id in prompt and prediction_id in prompt and "robot-3" in prompt
    metadata = result.asset_materializations_for_node("shift_backlog")[0].metadata
    assert metadata["writer"].value == "gemini" and metadata["model"].value == "gm"
    assert (metadata["prompt_tokens"].value, metadata["output_tokens"].value, metadata["total_tokens"].value) == (
        900,
        210,
        1110,
    )
    assert metadata["dropped_tasks"].value == ["Invented"]
    assert metadata["tasks"].value == 2 and metadata["mqtt_published"].value == 2

    store = ServingStore(settings.resolved_db_url)
    try:
        stored = BacklogBook(store.engine).get(SHIFT_KEY)
    finally:
        store.dispose()
    assert stored is not None and stored.writer.name == "gemini"
    assert [(t.asset_id, t.evidence_ids) for t in stored.tasks] == [
        ("press-1", [prediction_id]),
        ("robot-3", [alert_id]),
    ]
    assert {item.evidence_id for item in stored.evidence} == {alert_id, prediction_id}

    def published(messages: list) -> bool:
        topics = {m.topic for m in messages if stored.backlog_id in m.payload.decode()}
        return topics == {backlog_topic(settings.site), LEGACY_BACKLOG_TOPIC}

    messages = recorder.wait_for(published, what="backlog on both topics")
    ours = next(m for m in messages if m.topic == backlog_topic(settings.site))
    assert json.loads(ours.payload)["shift"]["key"] == SHIFT_KEY
    legacy = next(m for m in messages if m.topic == LEGACY_BACKLOG_TOPIC and stored.backlog_id in m.payload.decode())
    legacy_body = json.loads(legacy.payload)
    assert legacy_body["events_count"] == 2
    assert legacy_body["shift_period"]["start"] == shift.start.astimezone(UTC).isoformat()
    # Retained: a dashboard that connects later still gets the current backlog.
    late = mqtt_recorder(backlog_topic(settings.site))
    late.wait_for(
        lambda ms: any(json.loads(m.payload)["shift"]["key"] == SHIFT_KEY for m in ms), what="retained backlog"
    )


def test_without_a_key_the_deterministic_writer_writes_it(settings: FactorySettings, gemini: GeminiStandIn) -> None:
    shift = settings.shift_calendar.shift_for_key(SHIFT_KEY)
    alert_id, prediction_id = seed_evidence(settings, shift)

    result = materialize_backlog(settings, {"horizon_shifts": 2})

    assert result.success and gemini.requests == []
    metadata = result.asset_materializations_for_node("shift_backlog")[0].metadata
    assert metadata["writer"].value == "deterministic" and metadata["fallback_reason"].value == "no Gemini API key"
    assert "model" not in metadata and metadata["evidence_by_kind"].value == {"alert": 1, "energy_anomaly": 1}
    assert "| 1 |" in metadata["backlog"].value  # the Markdown backlog is in the UI
    store = ServingStore(settings.resolved_db_url)
    try:
        stored = BacklogBook(store.engine).get(SHIFT_KEY)
    finally:
        store.dispose()
    assert stored is not None and [t.evidence_ids[0] for t in stored.tasks] == [alert_id, prediction_id]


def test_a_failing_gemini_falls_back_and_the_metadata_says_why(
    settings: FactorySettings, gemini: GeminiStandIn
) -> None:
    settings = settings.model_copy(update={"gemini_api_key": SecretStr("key-1"), "gemini_base_url": gemini.url})
    seed_evidence(settings, settings.shift_calendar.shift_for_key(SHIFT_KEY))
    gemini.reply = lambda: (200, b"{not json")

    result = materialize_backlog(settings)

    metadata = result.asset_materializations_for_node("shift_backlog")[0].metadata
    assert result.success and metadata["writer"].value == "deterministic"
    assert metadata["fallback_reason"].value and metadata["tasks"].value == 2


@pytest.mark.parametrize(
    ("tick", "key", "name"),
    [
        (datetime(2026, 3, 29, 4, 0, tzinfo=UTC), "2026-03-29T06:00+0200", "early"),  # first shift of summer time
        (datetime(2026, 3, 28, 21, 0, tzinfo=UTC), "2026-03-28T22:00+0100", "night"),  # the 7-hour night
        (datetime(2026, 10, 25, 5, 0, tzinfo=UTC), "2026-10-25T06:00+0100", "early"),  # after the 9-hour night
    ],
)
def test_the_schedule_asks_for_the_new_shift_at_its_start(
    settings: FactorySettings, tick: datetime, key: str, name: str
) -> None:
    definitions = build_definitions(settings)
    schedule = definitions.resolve_schedule_def("shift_backlog_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 6,14,22 * * *", "Europe/Berlin")
    repository = definitions.get_repository_def()
    with dg.build_schedule_context(scheduled_execution_time=tick, repository_def=repository) as context:
        [request] = schedule.evaluate_tick(context).run_requests or []
    assert (request.partition_key, request.run_key, request.tags["factory/shift"]) == (key, key, name)


def run_factory(settings: FactorySettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FACTORY_DATA_DIR": str(settings.data_path),
        "FACTORY_MQTT_URL": settings.mqtt_url,
        "FACTORY_SITE": settings.site,
        "FACTORY_PLANT_TIMEZONE": settings.plant_timezone,
    }
    env.pop("GEMINI_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "factory_pipelines.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_factory_backlog_materializes_the_partition_and_prints_it(settings: FactorySettings) -> None:
    shift = settings.shift_calendar.shift_for_key(SHIFT_KEY)
    alert_id, _ = seed_evidence(settings, shift)

    done = run_factory(settings, "backlog", "--shift-start", "2026-11-20T09:15+01:00", "--json")

    assert done.returncode == 0, done.stderr
    assert "inside shift 2026-11-20T06:00+0100" in done.stderr
    printed = json.loads(done.stdout)
    assert printed["shift"]["key"] == SHIFT_KEY and printed["backlog_id"] == f"backlog-{SHIFT_KEY}"
    assert printed["tasks"][0]["evidence_ids"][0] == alert_id and printed["writer"]["name"] == "deterministic"
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        run = instance.get_run_by_id(printed["dagster_run_id"])
        assert run is not None and run.is_success
        assert run.tags["dagster/partition"] == SHIFT_KEY and run.tags["factory/trigger"] == "factory backlog"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-11-20T06:00", "has no UTC offset"),
        ("next tuesday", "not an ISO 8601 time"),
        ("2099-01-01T06:00+00:00", "has not started yet"),
        ("2025-06-01T06:00+00:00", "shifts start on 2026-01-01"),
    ],
)
def test_factory_backlog_refuses_bad_shift_starts(settings: FactorySettings, value: str, message: str) -> None:
    done = run_factory(settings, "backlog", "--shift-start", value, "--json")
    assert done.returncode == 2 and done.stdout == ""
    assert message in " ".join(done.stderr.replace("│", " ").split())
