"""Schedules of the code location."""

from __future__ import annotations

import dagster as dg

from factory_pipelines.jobs import alert_timers_job

alert_timers_schedule = dg.ScheduleDefinition(
    name="alert_timers_schedule",
    job=alert_timers_job,
    cron_schedule="* * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every minute: auto-clear alerts that have not recurred, escalate unacknowledged CRITICAL ones.",
)
