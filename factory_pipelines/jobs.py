"""Jobs of the code location: the window pipeline, one training job per model family, the
orchestrator job (alert rules over new predictions), the alert timers and the shift backlog.

No job names its executor: the code location's (`factory_pipelines.executors.run_executor`) runs
them all, in process by default or on Celery workers."""

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import dagster as dg

from assets import window_alerts, window_assets
from factory_pipelines.model_catalog import CATALOG
from factory_pipelines.resources import AlertDeskResource

if TYPE_CHECKING:  # what define_asset_job returns; Dagster does not export the name
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

window_predictions_job = dg.define_asset_job(
    "window_predictions_job",
    selection=dg.AssetSelection.assets(*window_assets),
    description="Type, featurize and score the sealed windows of one run (one window or a range of them).",
)

training_jobs = [
    dg.define_asset_job(
        entry.training_job,
        selection=dg.AssetSelection.assets(entry.dataset_asset, entry.name),
        description=f"Build {entry.name}'s data sets, train it, register a version and gate it against the champion.",
    )
    for entry in CATALOG.values()
]

orchestrator_job = dg.define_asset_job(
    "orchestrator_job",
    selection=dg.AssetSelection.assets(window_alerts),
    description="Evaluate the alert rules on a window's new predictions and telemetry; record, plan and text.",
)


def build_backlog_job(shift_backlog: dg.AssetsDefinition) -> "UnresolvedAssetJobDefinition":
    return dg.define_asset_job(
        "shift_backlog_job",
        selection=dg.AssetSelection.assets(shift_backlog),
        description="Write one shift's backlog from the evidence at its start (Gemini, or the deterministic writer).",
    )


@dg.op(description="Drain the alert outbox, clear alerts that have not recurred, escalate unacknowledged ones.")
def run_alert_timers(context: dg.OpExecutionContext, alert_desk: AlertDeskResource) -> dg.Output[None]:
    report = alert_desk.get_desk().run_timers(now=datetime.now(UTC))
    context.log.info(
        f"{len(report.auto_cleared)} auto-cleared, {len(report.escalated)} escalated, "
        f"{report.drained} drained from the outbox ({report.still_queued} still queued)"
    )
    return dg.Output(
        None,
        metadata={
            "auto_cleared": dg.MetadataValue.json(report.auto_cleared),
            "escalated": dg.MetadataValue.json([list(item) for item in report.escalated]),
            "drained": report.drained,
            "still_queued": report.still_queued,
        },
    )


@dg.job(description="The alert timers: auto-clear, escalation, outbox (every 5 minutes; each orchestrator run too).")
def alert_timers_job() -> None:
    run_alert_timers()
