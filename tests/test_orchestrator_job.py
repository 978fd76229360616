"""The orchestrator job in a real Dagster instance: a window's materialized predictions break a rule,
the sensor starts the job, the alert is recorded with its lineage, planned and texted (through the
real twilio client and a stand-in on loopback), and a repeat in the next window only counts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from pydantic import SecretStr

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.definitions import build_definitions
from factory_pipelines.settings import FactorySettings, load_settings
from factory_pipelines.store import ServingStore
from sensors.alert_sensor import build_prediction_alerts_sensor, read_cursor
from tests.gemini_standin import GeminiStandIn
from tests.machine_windows import CRITICAL_ENERGY_RULES, SPIKE, SPIKE_KW, write_sealed_window
from tests.twilio_standin import TwilioStandIn

ON_CALL = "+15551110001"


@pytest.fixture
def twilio() -> Iterator[TwilioStandIn]:
    with TwilioStandIn() as standin:
        yield standin


@pytest.fixture
def settings(tmp_path: Path, mqtt_url: str, twilio: TwilioStandIn) -> FactorySettings:
    rules = tmp_path / "alert_rules.yaml"
    rules.write_text(CRITICAL_ENERGY_RULES)
    settings = load_settings(
        data_dir=tmp_path / "data",
        mqtt_url=mqtt_url,
        window_seconds=10,
        alert_rules_file=rules,
        twilio_account_sid=twilio.account_sid,
        twilio_auth_token=twilio.auth_token,
        twilio_from_number="+15550000000",
        twilio_to_numbers=ON_CALL,
        twilio_api_base_url=twilio.base_url,
    )
    settings.ensure_dirs()
    return settings


def train_energy(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    trained = defs.resolve_job_def("energy_iforest_training_job").execute_in_process(
        instance=instance, run_config={"ops": {"energy_iforest": {"config": {"n_estimators": 50}}}}
    )
    assert trained.success


def run_window(defs: dg.Definitions, instance: dg.DagsterInstance, key: str) -> None:
    instance.add_dynamic_partitions("telemetry_windows", [key])
    result = defs.resolve_job_def("window_predictions_job").execute_in_process(instance=instance, partition_key=key)
    assert result.success


def tick_and_run(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None
) -> tuple[list[dg.RunRequest], str | None, list[dg.ExecuteInProcessResult]]:
    sensor = build_prediction_alerts_sensor(minimum_interval_seconds=5)
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return [], cursor, []
    runs = []
    for request in result.run_requests:
        run = defs.resolve_job_def("orchestrator_job").execute_in_process(
            instance=instance,
            partition_key=request.partition_key,
            run_config=request.run_config,
            tags=request.tags,
        )
        assert run.success
        runs.append(run)
    return list(result.run_requests), result.cursor, runs


def test_predictions_that_break_a_rule_raise_a_texted_alert_with_lineage_and_repeats_only_count(
    settings: FactorySettings, twilio: TwilioStandIn
) -> None:
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        train_energy(defs, instance)
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
        first_key = write_sealed_window(settings, start, seed=1, spike=SPIKE, spike_kw=SPIKE_KW)
        run_window(defs, instance, first_key)

        requests, cursor, runs = tick_and_run(defs, instance, None)
        assert [r.partition_key for r in requests] == [first_key]
        sources = requests[0].run_config["ops"]["window_alerts"]["config"]["sources"]
        assert "energy_anomaly_predictions" in sources and "telemetry_window" in sources
        metadata = runs[0].get_asset_materialization_events()[0].materialization.metadata
        assert metadata["new_alerts"].value == 1 and metadata["texts_sent"].value == 1, {
            k: v.value for k, v in metadata.items()
        }

        store = ServingStore(settings.resolved_db_url)
        book = AlertBook(store.engine)
        [alert] = book.list_alerts().items
        assert (alert.asset_id, alert.type, alert.severity.value, alert.count) == (
            SPIKE,
            "ENERGY_OPTIMIZATION",
            "CRITICAL",
            1,
        )
        lineage = alert.lineage
        assert lineage.window_key == first_key and lineage.asset_key == "energy_anomaly_predictions"
        assert (lineage.model_name, lineage.model_version) == ("energy_iforest", "1")
        assert lineage.mlflow_run_id and lineage.dagster_run_id and lineage.dagster_run_id != runs[0].run_id
        assert lineage.orchestrator_run_id == runs[0].run_id
        assert alert.plan is not None and alert.plan.action == "ADJUST_POWER_PROFILE"
        [text] = twilio.messages
        assert text.to == ON_CALL and alert.alert_id in text.body and SPIKE in text.body

        # nothing new: the sensor asks for no run
        assert tick_and_run(defs, instance, cursor)[0] == []

        # the next window breaks the rule again: the open alert counts it, no second alert, no second text
        second_key = write_sealed_window(
            settings, start + timedelta(seconds=10), seed=2, spike=SPIKE, spike_kw=SPIKE_KW
        )
        run_window(defs, instance, second_key)
        requests, cursor, _ = tick_and_run(defs, instance, cursor)
        assert [r.partition_key for r in requests] == [second_key]
        assert set(read_cursor(cursor)) >= {"energy_anomaly_predictions", "telemetry_window"}
        [again] = book.list_alerts().items
        assert again.alert_id == alert.alert_id and again.count == 2 and again.lineage.window_key == second_key
        assert len(twilio.messages) == 1
        store.dispose()


def test_a_bad_rules_file_stops_the_code_location_with_file_and_line(tmp_path: Path) -> None:
    rules = tmp_path / "alert_rules.yaml"
    rules.write_text(
        "rules:\n  - name: x\n    model: energy_iforest\n    when: {field: label, equals: anomaly}\n"
        "    severity: LOUD\n    type: T\n    message: m\n"
    )
    settings = load_settings(data_dir=tmp_path / "data", alert_rules_file=rules)
    with pytest.raises(ValueError, match=r"alert_rules\.yaml:5"):
        build_definitions(settings)


def test_twilio_and_gemini_faults_keep_the_alert_fall_back_to_the_rules_and_text_once(
    settings: FactorySettings, twilio: TwilioStandIn, gemini: GeminiStandIn
) -> None:
    """Gemini answers garbage and Twilio fails twice with 503 while the job runs: the alert is kept, planned
    by the rules, texted once after retries; a re-run of the same run (a Dagster retry) texts no one again."""
    gemini.reply = lambda: (200, b"{not json")
    twilio.fail_next_posts(2, status=503)
    settings = settings.model_copy(
        update={"gemini_api_key": SecretStr("gemini-test-key"), "gemini_base_url": gemini.url}
    )
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        train_energy(defs, instance)
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
        key = write_sealed_window(settings, start, seed=1, spike=SPIKE, spike_kw=SPIKE_KW)
        run_window(defs, instance, key)

        requests, _, runs = tick_and_run(defs, instance, None)
        metadata = {
            k: v.value for k, v in runs[0].get_asset_materialization_events()[0].materialization.metadata.items()
        }
        assert metadata["new_alerts"] == 1 and metadata["texts_sent"] == 1, metadata

        store = ServingStore(settings.resolved_db_url)
        try:
            book = AlertBook(store.engine)
            [alert] = book.list_alerts().items
            assert alert.plan is not None and alert.plan.written_by == "rules"
            assert alert.plan.action == "ADJUST_POWER_PROFILE" and alert.plan.fallback_reason
            assert len(gemini.requests) == 1  # one try: an alert does not wait on the model's retries
            assert [p.answered_status for p in twilio.message_posts] == [
                503,
                503,
                201,
            ]  # retried with backoff, sent once
            [text] = twilio.messages
            assert alert.alert_id in text.body
            [record] = book.notifications(alert.alert_id)
            assert (record.status.value, record.attempts, record.provider_id) == ("sent", 3, text.sid)

            # Dagster re-executes the same orchestrator run: the ledger's claim keeps the phone quiet
            again = defs.resolve_job_def("orchestrator_job").execute_in_process(
                instance=instance,
                partition_key=requests[0].partition_key,
                run_config=requests[0].run_config,
                tags=requests[0].tags,
            )
            assert again.success
            assert len(twilio.messages) == 1 and len(twilio.message_posts) == 3
            assert [a.alert_id for a in book.list_alerts().items] == [alert.alert_id]
        finally:
            store.dispose()
