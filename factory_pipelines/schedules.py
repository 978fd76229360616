"""Schedules of the code location."""

from __future__ import annotations

import dagster as dg

from factory_pipelines.jobs import alert_timers_job

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
