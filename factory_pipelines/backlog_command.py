"""`factory backlog`: write one shift's backlog as a Dagster run and print it.

The run materializes the `shift_backlog` partition in the platform's Dagster instance, exactly as
the shift schedule or a backfill in the UI would, so it shows in the UI with its metadata.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown

from factory_pipelines.backlog_book import BacklogBook
from factory_pipelines.backlog_model import backlog_markdown
from factory_pipelines.model_commands import settings_or_exit
from factory_pipelines.store import ServingStore

console = Console(stderr=True)


def _moment(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time", param_hint="--shift-start") from None
    if moment.tzinfo is None:
        raise typer.BadParameter(
            f"{value!r} has no UTC offset; add one, e.g. {value}+01:00 or {value}Z", param_hint="--shift-start"
        )
    return moment


def backlog(
    shift_start: Annotated[
        str | None,
        typer.Option(
            "--shift-start",
            help="A shift's start (ISO 8601 with offset, e.g. 2026-11-26T06:00+01:00); a time inside a shift "
            "picks that shift. Default: the shift in progress.",
        ),
    ] = None,
    gemini: Annotated[bool, typer.Option(help="Let Gemini refine the backlog when GEMINI_API_KEY is set.")] = True,
    horizon_shifts: Annotated[
        int, typer.Option(min=1, max=21, help="Plan for robots whose RUL interval ends within this many shifts.")
    ] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the backlog as one JSON object.")] = False,
) -> None:
    """Write the backlog of one shift (a Dagster run of its `shift_backlog` partition) and print it."""
    from factory_pipelines.dagster_instance import run_backlog_job

    settings = settings_or_exit()
    calendar = settings.shift_calendar
    moment = _moment(shift_start)
    if moment.date() < calendar.first_day:
        raise typer.BadParameter(
            f"shifts start on {calendar.first_day} (setting shifts_first_day)", param_hint="--shift-start"
        )
    shift = calendar.shift_at(moment)
    current = calendar.shift_at(datetime.now(UTC))
    if shift.start > current.start:
        raise typer.BadParameter(
            f"shift {shift.key} has not started yet; the shift in progress is {current.key} ({current.name})",
            param_hint="--shift-start",
        )
    if shift_start is not None and shift.start != moment:
        console.print(f"{shift_start} is inside shift {shift.key} ({shift.name}): writing that shift's backlog")
    console.print(
        f"writing the backlog of {shift.name} shift {shift.key} (Dagster instance {settings.dagster_home}) ..."
    )
    run = run_backlog_job(settings, shift.key, config={"use_gemini": gemini, "horizon_shifts": horizon_shifts})
    if not run.success:
        console.print(f"[red]the backlog run failed[/red]: see run {run.run_id} in the Dagster UI")
        raise typer.Exit(1)
    store = ServingStore(settings.resolved_db_url)
    try:
        written = BacklogBook(store.engine).get(shift.key)
    finally:
        store.dispose()
    if written is None:  # the run succeeded, so this is a store that another process just wiped
        console.print(f"[red]the backlog of {shift.key} is not in the store[/red] (run {run.run_id})")
        raise typer.Exit(1)
    if as_json:
        document = written.model_dump(mode="json") | {"dagster_run_id": run.run_id}
        sys.stdout.write(json.dumps(document) + "\n")
        return
    Console().print(Markdown(backlog_markdown(written)))
    console.print(f"Dagster run {run.run_id}; served at GET /backlog/{shift.key}")
