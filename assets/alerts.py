"""Alerts: the rules evaluated on each window's predictions and telemetry, as one partitioned asset.

`window_alerts` sits downstream of every prediction asset, so the asset graph shows where an
alert's evidence came from; `prediction_alerts_sensor` (sensors/alert_sensor.py) materializes its
partitions through `orchestrator_job` when prediction partitions materialize. The work happens
in `factory_pipelines.alert_rules` (what breaks a rule) and `factory_pipelines.orchestrator`
(record, plan, text).
"""

from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from assets.telemetry import window_partitions
from factory_pipelines.alert_model import AlertCandidate
from factory_pipelines.model_catalog import CATALOG
from factory_pipelines.orchestrator import Decision, alert_messages, decision_summary
from factory_pipelines.resources import AlertDeskResource, MqttPublisherResource, PartitionFilesResource
from factory_pipelines.telemetry import Prediction

ALERTS_GROUP = "alerts"
TELEMETRY_SOURCE = "telemetry_window"
PREDICTION_SOURCES = [entry.prediction_asset for entry in CATALOG.values()]
WATCHED_SOURCES = [*PREDICTION_SOURCES, TELEMETRY_SOURCE]
MODEL_OF_ASSET = {entry.prediction_asset: entry.name for entry in CATALOG.values()}


class WindowAlertsConfig(dg.Config):
    """Which upstream outputs of the windows to evaluate (the sensor names those that materialized)."""

    sources: list[str] = Field(
        default_factory=list,
        description=f"Prediction assets and/or {TELEMETRY_SOURCE} to evaluate; empty: all of them.",
    )


@dg.asset(
    partitions_def=window_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=WATCHED_SOURCES,
    group_name=ALERTS_GROUP,
    kinds={"python", "twilio"},
)
def window_alerts(
    context: dg.AssetExecutionContext,
    config: WindowAlertsConfig,
    window_files: PartitionFilesResource,
    alert_desk: AlertDeskResource,
    mqtt: MqttPublisherResource,
) -> dg.MaterializeResult:
    """Alerts raised by the rules on these windows: deduplicated, planned, recorded, texted when CRITICAL."""
    unknown = sorted(set(config.sources) - set(WATCHED_SOURCES))
    if unknown:
        raise dg.Failure(f"unknown sources {unknown}; known: {', '.join(WATCHED_SOURCES)}")
    sources = config.sources or WATCHED_SOURCES
    rules = alert_desk.rule_book()
    carry_store = alert_desk.telemetry_carry()
    now = datetime.now(UTC)
    candidates: list[AlertCandidate] = []
    problems: list[str] = []
    for key in context.partition_keys:
        for asset_name in sources:
            if asset_name == TELEMETRY_SOURCE:
                for kind in rules.telemetry_kinds:
                    path = window_files.rows_path(kind, key)
                    if not path.exists():
                        continue
                    evaluation = rules.evaluate_telemetry(
                        kind, window_files.read(path), window_key=key, carry=carry_store.get(kind), now=now
                    )
                    if evaluation.carry is not None:
                        carry_store[kind] = evaluation.carry
                    candidates += evaluation.candidates
                    problems += evaluation.problems
                continue
            model = MODEL_OF_ASSET[asset_name]
            path = window_files.predictions_path(model, key)
            if not path.exists():
                continue
            predictions = [Prediction.model_validate(row) for row in window_files.read(path).iter_rows(named=True)]
            evaluation = rules.evaluate_predictions(predictions, asset_key=asset_name, now=now)
            candidates += evaluation.candidates
            problems += evaluation.problems
    alert_desk.save_telemetry_carry(carry_store)
    for candidate in candidates:
        candidate.lineage.orchestrator_run_id = context.run.run_id
    desk = alert_desk.get_desk()
    decisions = [desk.handle_or_queue(candidate, now=now) for candidate in candidates]
    for problem in problems:
        context.log.warning(problem)
    timers = desk.run_timers(now=now)  # every run also clears, escalates and drains: no extra run launch
    recorded = [d for d in decisions if isinstance(d, Decision)]
    published = mqtt.publish(alert_messages(recorded, alert_desk.site), context.log) if recorded else 0
    return dg.MaterializeResult(
        metadata={
            "windows": len(context.partition_keys),
            "sources": dg.MetadataValue.json(sources),
            "candidates": len(candidates),
            "new_alerts": sum(1 for d in recorded if d.created),
            "repeats": sum(1 for d in recorded if not d.created),
            "queued_for_store": len(decisions) - len(recorded),
            "texts_sent": sum(1 for d in recorded for n in d.notifications if n.status == "sent"),
            "published": published,
            "problems": len(problems),
            "auto_cleared": len(timers.auto_cleared),
            "escalated": len(timers.escalated),
            "drained_from_outbox": timers.drained,
            "decisions": dg.MetadataValue.json([decision_summary(d) for d in decisions[:100]]),
        }
    )
