"""The Dagster instance `factory up` runs against, and the first champion it needs.

`write_dagster_yaml` puts a `dagster.yaml` in DAGSTER_HOME (under the data dir): SQLite storage
there too, or PostgreSQL when `FACTORY_DAGSTER_PG_URL` is set (dagster-postgres); with
`FACTORY_DAGSTER_RUN_LAUNCHER=celery` runs are launched as Celery tasks (dagster-celery); telemetry off,
a queued run coordinator that runs at most a couple of runs at once (each run costs ~200 MB on a
small machine), run monitoring on so a run whose worker died is marked failed instead of
hanging, and short retention for the many skipped sensor ticks.

`ensure_energy_champion` makes sure `models:/energy_iforest@champion` exists before the window
sensor starts asking for predictions, by materializing the training asset in-process against
that same instance, so the run appears in the Dagster UI like any other.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from factory_pipelines.energy_model import MODEL_NAME
from factory_pipelines.executors import celery_run_launcher_config
from factory_pipelines.model_registry import champion_info
from factory_pipelines.settings import FactorySettings

if TYPE_CHECKING:
    from dagster import DagsterInstance

DEFAULT_MAX_CONCURRENT_RUNS = 2


DAGSTER_PG_URL_ENV = "FACTORY_DAGSTER_PG_URL"


def dagster_storage_config(dagster_home: Path, *, on_postgres: bool) -> dict[str, Any]:
    """SQLite under DAGSTER_HOME, or PostgreSQL through dagster-postgres.

    The PostgreSQL URL is read from the environment when the instance loads, so its password is
    never written into dagster.yaml.
    """
    if on_postgres:
        return {"postgres": {"postgres_url": {"env": DAGSTER_PG_URL_ENV}}}
    return {"sqlite": {"base_dir": str(dagster_home.resolve() / "storage")}}


def dagster_yaml_config(
    dagster_home: Path,
    *,
    max_concurrent_runs: int = DEFAULT_MAX_CONCURRENT_RUNS,
    on_postgres: bool = False,
    run_launcher: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The instance config; `run_launcher` None keeps Dagster's default (a run is a subprocess of the code server)."""
    home = dagster_home.resolve()
    return {
        "storage": dagster_storage_config(home, on_postgres=on_postgres),
        **({"run_launcher": dict(run_launcher)} if run_launcher is not None else {}),
        "local_artifact_storage": {
            "module": "dagster._core.storage.root",
            "class": "LocalArtifactStorage",
            "config": {"base_dir": str(home)},
        },
        "compute_logs": {
            "module": "dagster._core.storage.local_compute_log_manager",
            "class": "LocalComputeLogManager",
            "config": {"base_dir": str(home / "logs")},
        },
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            # The default 5 s between dequeues adds 2.5 s on average to every window's latency.
            "config": {"max_concurrent_runs": max_concurrent_runs, "dequeue_interval_seconds": 1},
        },
        "run_monitoring": {"enabled": True, "start_timeout_seconds": 180, "poll_interval_seconds": 60},
        "telemetry": {"enabled": False},
        "nux": {"enabled": False},
        "retention": {
            "sensor": {"purge_after_days": {"skipped": 1, "failure": 30, "success": -1}},
            "schedule": {"purge_after_days": 90},
        },
    }


def write_dagster_yaml(settings: FactorySettings, *, max_concurrent_runs: int = DEFAULT_MAX_CONCURRENT_RUNS) -> Path:
    """Write `{settings.dagster_home}/dagster.yaml` (replacing an older one); its path."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    config = dagster_yaml_config(
        home,
        max_concurrent_runs=max_concurrent_runs,
        on_postgres=settings.dagster_pg_url is not None,
        run_launcher=celery_run_launcher_config(settings) if settings.dagster_run_launcher == "celery" else None,
    )
    text = yaml.safe_dump(config, sort_keys=False)
    path.write_text("# Written by `factory up` (factory_pipelines.dagster_instance); edits are overwritten.\n" + text)
    return path


@contextmanager
def open_platform_instance(settings: FactorySettings) -> Iterator[DagsterInstance]:
    """The instance at `settings.dagster_home` (its dagster.yaml written first if missing).

    dagster.yaml names the PostgreSQL URL by environment variable; a URL that came from the
    settings file is put in this process's environment so the instance can resolve it.
    """
    from dagster import DagsterInstance

    settings.ensure_dirs()
    if not (settings.dagster_home / "dagster.yaml").is_file():
        write_dagster_yaml(settings)
    if settings.dagster_pg_url is not None:
        os.environ[DAGSTER_PG_URL_ENV] = settings.dagster_pg_url
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        yield instance


@dataclass(frozen=True, slots=True)
class TrainingRun:
    """The outcome of a training job run from the command line, as the Dagster UI shows it."""

    run_id: str
    success: bool
    materialization: dict[str, Any]  # the training asset's metadata (version, alias, metrics, ...)
    gate: dict[str, Any]  # the champion_gate check: passed, description, metadata


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def _definitions(settings: FactorySettings) -> Any:
    """The code location's definitions, without the beta warning the window assets' backfill policy prints."""
    from dagster import BetaWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        from factory_pipelines.definitions import build_definitions

        return build_definitions(settings)


def run_training_job(
    settings: FactorySettings,
    model_name: str,
    *,
    dataset_config: Mapping[str, Any] | None = None,
    training_config: Mapping[str, Any] | None = None,
    trigger: str = "factory train",
) -> TrainingRun:
    """Materialize `{model_name}_dataset` and `{model_name}` in this process, in the platform's instance.

    The run is recorded in the instance at `settings.dagster_home` (written first if it has no
    dagster.yaml yet), so it shows in the Dagster UI with its logs, like a launchpad run.
    """
    from factory_pipelines.model_catalog import catalog_entry

    entry = catalog_entry(model_name)
    job = _definitions(settings).resolve_job_def(entry.training_job)
    run_config = {
        "ops": {
            entry.dataset_asset: {"config": dict(dataset_config or {})},
            entry.name: {"config": dict(training_config or {})},
        },
        # The run's full event log is in the Dagster UI; the terminal gets the summary.
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
    }
    with open_platform_instance(settings) as instance:
        result = job.execute_in_process(
            instance=instance, run_config=run_config, tags={"factory/trigger": trigger}, raise_on_error=False
        )
        materialization: dict[str, Any] = {}
        for event in result.get_asset_materialization_events():
            if event.asset_key.to_user_string() == entry.name:
                materialization = {k: _plain(v) for k, v in event.materialization.metadata.items()}
        gate: dict[str, Any] = {}
        for evaluation in result.get_asset_check_evaluations():
            if evaluation.asset_key.to_user_string() == entry.name:
                gate = {
                    "check": evaluation.check_name,
                    "passed": evaluation.passed,
                    "description": evaluation.description,
                    **{k: _plain(v) for k, v in evaluation.metadata.items()},
                }
    return TrainingRun(run_id=result.run_id, success=result.success, materialization=materialization, gate=gate)


def ensure_energy_champion(settings: FactorySettings) -> str:
    """The version behind `models:/energy_iforest@champion`, training one if there is none.

    Training runs in this process through `energy_iforest_training_job`, recorded in the instance
    at `settings.dagster_home`.
    """
    tracking_uri = settings.resolved_mlflow_uri
    existing = champion_info(tracking_uri, MODEL_NAME)
    if existing is not None:
        return existing.version
    run = run_training_job(
        settings,
        MODEL_NAME,
        training_config={"contamination": settings.anomaly_contamination},
        trigger="factory up: first champion",
    )
    if not run.success:
        raise RuntimeError(f"training {MODEL_NAME} failed (Dagster run {run.run_id})")
    champion = champion_info(tracking_uri, MODEL_NAME)
    if champion is None:
        raise RuntimeError(f"{MODEL_NAME} trained in run {run.run_id} but no champion alias is set")
    return champion.version


@dataclass(frozen=True)
class BacklogRun:
    run_id: str
    success: bool
    materialization: dict[str, Any]


def run_backlog_job(
    settings: FactorySettings,
    shift_key: str,
    *,
    config: Mapping[str, Any] | None = None,
    trigger: str = "factory backlog",
) -> BacklogRun:
    """Materialize one shift's `shift_backlog` partition in this process, in the platform's instance (like the UI)."""
    job = _definitions(settings).resolve_job_def("shift_backlog_job")
    run_config = {
        "ops": {"shift_backlog": {"config": dict(config or {})}},
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
    }
    with open_platform_instance(settings) as instance:
        result = job.execute_in_process(
            instance=instance,
            run_config=run_config,
            partition_key=shift_key,
            tags={"factory/trigger": trigger},
            raise_on_error=False,
        )
        materialization: dict[str, Any] = {}
        for event in result.get_asset_materialization_events():
            materialization = {k: _plain(v) for k, v in event.materialization.metadata.items()}
    return BacklogRun(run_id=result.run_id, success=result.success, materialization=materialization)
