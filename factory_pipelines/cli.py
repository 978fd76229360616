"""The `factory` command line: one entry point for every process of the platform."""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from factory_pipelines.settings import FactorySettings, load_settings

T = TypeVar("T")

app = typer.Typer(
    name="factory",
    help="Smart-factory ML platform: MQTT telemetry, Dagster pipelines, MLflow models, REST serving.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def _settings() -> FactorySettings:
    try:
        settings = load_settings()
    except Exception as exc:  # a bad setting must read as one clear line, not a traceback
        console.print(f"[red]settings error:[/red] {exc}")
        raise typer.Exit(2) from exc
    settings.ensure_dirs()
    return settings


def _checked_alert_rules(settings: FactorySettings) -> None:
    """Refuse to start on a bad alert rules file, naming its lines, before any process starts."""
    from factory_pipelines.alert_rules import RuleFileError, load_rules

    try:
        load_rules(settings.alert_rules_file)
    except RuleFileError as exc:
        console.print(f"[red]alert rules error:[/red]\n{exc}")
        raise typer.Exit(2) from exc


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so long-running commands stop cleanly."""
    stop = threading.Event()

    def _handler(signum: int, _frame: object) -> None:
        console.print(f"[yellow]{signal.Signals(signum).name} received, stopping...[/yellow]")
        stop.set()

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    return stop


def _every(seconds: float, show: Callable[[T], None]) -> Callable[[T], None]:
    """A progress callback that shows at most once per `seconds`."""
    last = time.monotonic()

    def _maybe_show(stats: T) -> None:
        nonlocal last
        if time.monotonic() - last >= seconds:
            last = time.monotonic()
            show(stats)

    return _maybe_show


def _parse_faults(values: list[str] | None) -> dict[str, str]:
    from factory_pipelines.simulator import parse_fault_specs

    try:
        return parse_fault_specs(values or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--fault") from exc


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def up(
    machines: Annotated[int, typer.Option(help="Simulated machines.")] = 5,
    robots: Annotated[int, typer.Option(help="Simulated robots.")] = 3,
    rate: Annotated[float, typer.Option(help="Messages per asset per second.")] = 1.0,
    fault: Annotated[list[str] | None, typer.Option(help="Inject a fault: ASSET=KIND (repeatable).")] = None,
    no_simulator: Annotated[bool, typer.Option("--no-simulator", help="Don't start the edge simulator.")] = False,
    train_missing: Annotated[
        bool, typer.Option(help="Train the first version of every model without a champion, in the background.")
    ] = True,
) -> None:
    """Start everything: broker if needed, MLflow, collector, simulator, Dagster, API."""
    from factory_pipelines.launcher import PlatformOptions, run_platform

    settings = _settings()
    _checked_alert_rules(settings)
    options = PlatformOptions(
        machines=machines,
        robots=robots,
        rate_hz=rate,
        faults=_parse_faults(fault),
        simulator=not no_simulator,
        train_missing=train_missing,
    )
    raise typer.Exit(run_platform(settings, options, console))


@app.command()
def simulate(
    machines: Annotated[int, typer.Option(help="Number of machines.")] = 5,
    robots: Annotated[int, typer.Option(help="Number of robots.")] = 3,
    cleanrooms: Annotated[int, typer.Option(help="Number of cleanrooms (0 or 1).")] = 1,
    safety_stations: Annotated[int, typer.Option(help="Number of zone safety stations.")] = 2,
    cameras: Annotated[int, typer.Option(help="Number of PPE cameras (a frame every 5 s each).")] = 1,
    rate: Annotated[float, typer.Option(help="Messages per asset per second.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same fleet.")] = 42,
    fault: Annotated[list[str] | None, typer.Option(help="Inject a fault: ASSET=KIND (repeatable).")] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    export_csv: Annotated[Path | None, typer.Option(help="Write a plant-export CSV instead of publishing.")] = None,
    rows: Annotated[int, typer.Option(help="Rows to write with --export-csv.")] = 1000,
) -> None:
    """Publish a simulated fleet over MQTT (or write a plant-export CSV with --export-csv)."""
    from factory_pipelines.simulator import FleetConfig, export_plant_csv, run_simulator

    faults = _parse_faults(fault)
    if export_csv is not None:
        path = export_plant_csv(export_csv, rows, machines=machines, seed=seed, faults=faults)
        console.print(f"wrote {rows} rows to {path}")
        return
    settings = _settings()
    fleet = FleetConfig(
        machines=machines,
        robots=robots,
        cleanrooms=cleanrooms,
        safety_stations=safety_stations,
        cameras=cameras,
        rate_hz=rate,
        seed=seed,
        site=settings.site,
    )
    stop = _stop_on_signals()
    report = _every(10.0, lambda s: console.print(f"published {s.total:,} messages in {s.elapsed_s:.0f} s"))
    try:
        stats = run_simulator(settings, fleet, faults=faults, duration_s=duration, stop=stop, progress=report)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    kinds = ", ".join(f"{kind} {count:,}" for kind, count in sorted(stats.published.items()))
    console.print(f"published {stats.total:,} messages in {stats.elapsed_s:.1f} s ({kinds})")


@app.command()
def replay(
    file: Annotated[Path, typer.Argument(help="CSV in the plant-export layout.", exists=True, dir_okay=False)],
    speed: Annotated[
        float, typer.Option(help="Scale the original timing by this factor; 0 = as fast as possible.")
    ] = 1.0,
) -> None:
    """Publish a plant-export CSV row by row with its original timing."""
    from factory_pipelines.replay import replay_csv

    settings = _settings()
    stop = _stop_on_signals()
    report = _every(10.0, lambda s: console.print(f"published {s.rows_published:,} rows in {s.elapsed_s:.0f} s"))
    try:
        stats = replay_csv(settings, file, speed=speed or None, stop=stop, progress=report)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(
        f"published {stats.rows_published:,} of {stats.rows_read:,} rows in {stats.elapsed_s:.1f} s; "
        f"{stats.bad_rows:,} bad rows skipped, {stats.unacknowledged:,} unacknowledged"
    )
    for line, reason in stats.bad_row_examples:
        console.print(f"  line {line}: {reason}")


@app.command()
def collect(
    shared: Annotated[
        bool, typer.Option(help="Join the $share/collectors group to split the load with other collectors.")
    ] = False,
    retire: Annotated[
        bool,
        typer.Option(
            help=(
                "With --shared: retire this FACTORY_COLLECTOR_ID for good. Stop that collector first; this run "
                "leaves the group, drains its broker session into sealed windows, ends the session and exits."
            )
        ),
    ] = False,
) -> None:
    """Collect telemetry from MQTT into durable, sealed window files."""
    if retire and not shared:
        console.print(
            "[red]--retire needs --shared: only a member of the shared subscription can be retired "
            "(factory collect --shared --retire, with the member's FACTORY_COLLECTOR_ID and data dir)[/red]"
        )
        raise typer.Exit(2)
    from sensors.collector import run_collector

    settings = _settings()
    stats = run_collector(settings, shared=shared, retire=retire, stop=_stop_on_signals())
    if retire:
        if not stats.retired:
            console.print(
                f"[red]collector {settings.collector_id} is NOT retired: its broker session was not drained "
                "and ended (see the log). Keep the id and its data dir, and run --retire again.[/red]"
            )
            raise typer.Exit(1)
        console.print(
            f"retired collector {settings.collector_id}: drained {stats.received:,} messages from its session "
            f"({stats.rows_written:,} rows written, {stats.duplicates_dropped:,} duplicates dropped, "
            f"{stats.dead_letters:,} dead letters), {stats.windows_sealed:,} windows sealed; its broker session "
            "is ended and the id can be dropped"
        )
        if stats.session_present is False:
            console.print("(the broker held no session for this id: nothing was waiting in it)")
        if stats.windows_awaiting_store:
            console.print(
                f"[yellow]{stats.windows_awaiting_store:,} sealed windows are not in the store yet: keep the data "
                "dir until they are (running --retire again publishes them)[/yellow]"
            )
        return
    console.print(
        f"collector stopped: {stats.rows_written:,} rows in {stats.windows_sealed:,} windows, "
        f"{stats.duplicates_dropped:,} duplicates dropped, {stats.dead_letters:,} dead letters"
    )


@app.command()
def serve() -> None:
    """Serve predictions and alerts over REST (OpenAPI at /docs)."""
    from serving.app import serve as run_api

    settings = _settings()
    _checked_alert_rules(settings)
    run_api(settings)


@app.command()
def broker() -> None:
    """Run a local MQTT broker on FACTORY_MQTT_URL's port (Mosquitto if installed, else embedded)."""
    from factory_pipelines.broker import ensure_broker

    settings = _settings()
    stop = _stop_on_signals()
    running = ensure_broker(settings)
    if running is None:
        console.print(f"a broker already answers at {settings.mqtt_url}; nothing to do")
        return
    console.print(f"{running.kind} broker listening at {running.url}; Ctrl-C stops it")
    try:
        stop.wait()
    finally:
        running.stop()


@app.command("celery-worker")
def celery_worker(
    name: Annotated[str | None, typer.Option(help="Worker name (default: factory-PID); @host is appended.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Tasks (runs and steps) this worker runs at once.")] = 2,
) -> None:
    """Run Dagster runs and steps from the Celery broker (FACTORY_DAGSTER_RUN_LAUNCHER / _EXECUTOR=celery)."""
    import os

    from factory_pipelines.executors import celery_worker_command

    settings = _settings()
    if settings.celery_broker_url is None:
        console.print("FACTORY_CELERY_BROKER_URL is not set: a worker needs the broker the runs submit steps to")
        raise typer.Exit(2)
    argv, env = celery_worker_command(settings, name=name, concurrency=concurrency)
    where = settings.celery_broker_url.split("@")[-1]  # no credentials on the terminal
    console.print(f"Celery worker: queue dagster on {where}, {concurrency} task(s) at a time")
    # Celery replaces this process, so a container's SIGTERM reaches it and it finishes its steps first.
    os.execve(argv[0], argv, env)


@app.command()
def lineage(
    alert_id: Annotated[str, typer.Argument(help="The alert to trace, e.g. al-3f2a9c.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Walk an alert back: prediction, data window, model version, MLflow run and datasets, Dagster runs, code."""
    from factory_pipelines.lineage import UnknownAlertError, walk_lineage

    try:
        walked = walk_lineage(_settings(), alert_id)
    except UnknownAlertError as exc:
        console.print(f"[red]{exc.args[0]}[/red]")
        raise typer.Exit(1) from exc
    if as_json:
        print(walked.model_dump_json())
    else:
        print(walked.as_text(), end="")


@app.command("settings")
def show_settings() -> None:
    """Print the resolved settings as JSON (secrets masked)."""
    settings = _settings()
    data = json.loads(settings.model_dump_json())
    data["resolved"] = {
        "db_url": settings.resolved_db_url,
        "mlflow_tracking_uri": settings.resolved_mlflow_uri,
        "mlflow_backend_store_uri": settings.resolved_mlflow_backend_store_uri,
        "dagster_home": str(settings.dagster_home),
    }
    print(json.dumps(_without_url_passwords(data), indent=2, default=str))


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")


def _without_url_passwords(value: Any) -> Any:
    """Database and broker URLs may carry a password (postgresql://user:pw@host/db): shown as ***."""
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)
    if isinstance(value, dict):
        return {key: _without_url_passwords(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_url_passwords(item) for item in value]
    return value


def _register_model_commands() -> None:
    from factory_pipelines import backlog_command, model_commands
    from scada_bridge import cli as scada_cli

    app.command("train")(model_commands.train)
    app.command("evaluate")(model_commands.evaluate)
    app.add_typer(model_commands.benchmark_app, name="benchmark")
    app.command("backlog")(backlog_command.backlog)
    app.command("bridge")(scada_cli.bridge)


_register_model_commands()

if __name__ == "__main__":
    app()
