"""Where the platform's runs and their steps execute: in one process, or on Celery workers.

Two ways onto Celery workers (dagster-celery, a Redis or RabbitMQ broker), chosen in the settings:
- `FACTORY_DAGSTER_EXECUTOR=celery`: every job of the code location submits its steps to the broker;
  the run itself (its run worker) stays where the run launcher put it, a subprocess of the code
  server by default. For jobs with many independent steps.
- `FACTORY_DAGSTER_RUN_LAUNCHER=celery`: dagster.yaml's run launcher hands each run to the broker,
  and a worker runs it, its steps in process. The platform's jobs are short chains of steps, so this
  is the one that spreads their load over machines. Celery forbids a task that waits on other tasks,
  so the two are not combined.
`factory celery-worker` runs either kind of task on any machine that shares the Dagster instance
(PostgreSQL), the MLflow server and the storage root. The broker URL is named by environment
variable in the configs, so it is resolved in each process and never stored with a run.
"""

from __future__ import annotations

import os
import socket
import sys

import dagster as dg
import yaml

from factory_pipelines.settings import FactorySettings

BROKER_ENV = "FACTORY_CELERY_BROKER_URL"
CELERY_QUEUE = "dagster"  # dagster_celery.app routes every step to this queue


def celery_executor_config(settings: FactorySettings) -> dict[str, object]:
    """dagster-celery's executor config; the same for the runs and for the workers."""
    broker = settings.celery_broker_url or ""
    # Redis keeps results too; a RabbitMQ broker answers them over its own RPC backend.
    backend: object = {"env": BROKER_ENV} if broker.startswith(("redis://", "rediss://")) else "rpc://"
    return {"broker": {"env": BROKER_ENV}, "backend": backend}


def celery_run_launcher_config(settings: FactorySettings) -> dict[str, object]:
    """dagster.yaml's run launcher: each run (its run worker) becomes a Celery task on the same queue."""
    return {
        "module": "dagster_celery.launcher",
        "class": "CeleryRunLauncher",
        "config": {"default_queue": CELERY_QUEUE, **celery_executor_config(settings)},
    }


def run_executor(settings: FactorySettings) -> dg.ExecutorDefinition:
    """The executor every job of the code location uses (`Definitions(executor=...)`)."""
    if settings.dagster_executor == "in_process":
        # The window pipeline's steps are short: running them in the run worker saves a process per step.
        return dg.in_process_executor
    from dagster_celery import celery_executor

    return celery_executor.configured(celery_executor_config(settings), name="celery")


def celery_worker_command(
    settings: FactorySettings, *, name: str | None, concurrency: int
) -> tuple[list[str], dict[str, str]]:
    """argv and environment of a Celery worker that runs the platform's Dagster steps.

    dagster-celery turns the executor config into a `dagster_celery_config` module under
    DAGSTER_HOME; the worker imports it from PYTHONPATH, then runs each step it takes from the
    queue against the instance named by DAGSTER_HOME.
    """
    from dagster_celery.cli import get_config_dir

    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    config_path = settings.dagster_home / "celery-worker.yaml"
    config_path.write_text(yaml.safe_dump({"execution": {"config": celery_executor_config(settings)}}))
    env = {**os.environ, **settings.child_env()}
    saved = os.environ.copy()
    os.environ.update(env)  # get_config_dir opens the instance and resolves the broker's env var
    try:
        config_dir = get_config_dir(str(config_path))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (config_dir, env.get("PYTHONPATH", "")) if p)
    worker_name = f"{name or 'factory-' + str(os.getpid())}@{socket.gethostname()}"
    argv = [
        sys.executable, "-m", "celery", "-A", "dagster_celery.app", "worker",
        "--prefetch-multiplier=1", "-Q", CELERY_QUEUE, "-n", worker_name,
        "--concurrency", str(concurrency), "--loglevel", "INFO",
    ]  # fmt: skip
    return argv, env
