"""Schedules of the code location: the alert timers, and the backlog at every shift start."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from factory_pipelines.jobs import alert_timers_job
from factory_pipelines.shifts import ShiftCalendar

if TYPE_CHECKING:  # what define_asset_job returns; Dagster does not export the name
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

alert_timers_schedule = dg.ScheduleDefinition(
    name="alert_timers_schedule",
    job=alert_timers_job,
    cron_schedule="*/5 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Every 5 minutes: auto-clear alerts that have not recurred, escalate unacknowledged CRITICAL ones, "
        "record alerts that waited for the store. Every orchestrator run does the same, so while windows "
        "flow (each minute by default) the timers run with them; this covers quiet periods."
    ),
)


def build_shift_backlog_schedule(
    calendar: ShiftCalendar, backlog_job: UnresolvedAssetJobDefinition
) -> dg.ScheduleDefinition:
    """At each shift's start (plant time), the new shift's backlog partition; run_key = shift key, so once."""

    @dg.schedule(
        name="shift_backlog_schedule",
        job=backlog_job,
        cron_schedule=calendar.cron_schedule,
        execution_timezone=calendar.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Writes the backlog of each shift at its start: {calendar.describe()}.",
    )
    def shift_backlog_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        shift = calendar.shift_at(context.scheduled_execution_time)
        return dg.RunRequest(run_key=shift.key, partition_key=shift.key, tags={"factory/shift": shift.name})

    return shift_backlog_schedule
