"""A platform run and its steps executed by a real Celery worker process, through a Redis broker.

A Redis server of the test's own on a free loopback port (its queue shared with nobody), the
platform's dagster.yaml in a temp DAGSTER_HOME, and `factory celery-worker` as a subprocess. The
energy training job runs both ways the platform offers: with `FACTORY_DAGSTER_EXECUTOR=celery`
(executed by the test, as a run worker would, its steps sent to the broker) and with
`FACTORY_DAGSTER_RUN_LAUNCHER=celery` (launched the way the daemon launches a queued run). Each run
succeeds, every step (and, launched, the run itself) started in the worker's process tree and none
in the test's, and the model the worker trained is the champion in the MLflow store.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import psutil
import pytest
import redis
from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository

from factory_pipelines import energy_model as em
from factory_pipelines.dagster_instance import open_platform_instance, write_dagster_yaml
from factory_pipelines.model_registry import champion_info
from factory_pipelines.settings import FactorySettings, load_settings
from tests.factory_processes import (  # noqa: F401 - factory_processes is a fixture
    FactoryProcesses,
    factory_env,
    factory_processes,
)
from tests.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER_READY_TIMEOUT_S = 90.0
RUN_TIMEOUT_S = 240.0


@pytest.fixture
def redis_url(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(host="127.0.0.1", port=port)

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"redis-server exited ({process.returncode})")
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(answers, 20, "Redis to answer")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def celery_settings(
    request: pytest.FixtureRequest, tmp_path: Path, mqtt_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> FactorySettings:
    """Settings on Celery the way the test's `indirect` parameter says (executor or run launcher)."""
    settings = load_settings(
        data_dir=tmp_path / "data", mqtt_url=mqtt_url, celery_broker_url=redis_url, **request.param
    )
    settings.ensure_dirs()
    write_dagster_yaml(settings)
    for name, value in settings.child_env().items():  # the code location loads these settings, as in production
        monkeypatch.setenv(name, value)
    return settings


@pytest.fixture
def worker(
    celery_settings: FactorySettings,
    factory_processes: FactoryProcesses,  # noqa: F811
) -> psutil.Process:
    """`factory celery-worker` as an operator starts it; it becomes the Celery worker (same pid)."""
    process = factory_processes.start(
        "celery-worker", ["celery-worker", "--name", "test-worker"], factory_env(**celery_settings.child_env())
    )
    process.wait_for_log(" ready.", timeout=WORKER_READY_TIMEOUT_S, what="the Celery worker to be ready")
    return psutil.Process(process.process.pid)


def _pids(instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType) -> set[int]:
    return {
        entry.dagster_event.pid
        for entry in instance.all_logs(run_id, of_type=event_type)
        if entry.dagster_event is not None and entry.dagster_event.pid is not None
    }


def _training_job() -> ReconstructableJob:
    return ReconstructableRepository.for_module(
        "factory_pipelines.definitions", "defs", working_directory=str(REPO_ROOT)
    ).get_reconstructable_job("energy_iforest_training_job")


def _succeeded_steps(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    return {
        entry.dagster_event.step_key
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
        if entry.dagster_event is not None and entry.dagster_event.step_key is not None
    }


def _tree(worker: psutil.Process) -> set[int]:
    return {worker.pid, *(child.pid for child in worker.children(recursive=True))}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("celery_settings", [{"dagster_executor": "celery"}], indirect=True)
def test_with_the_celery_executor_a_run_s_steps_execute_on_the_worker(
    celery_settings: FactorySettings, worker: psutil.Process
) -> None:
    """The run stays in the process that runs it (here the test, as a run worker would); its steps go to Celery."""
    with (
        open_platform_instance(celery_settings) as instance,
        dg.execute_job(_training_job(), instance=instance, tags={"factory/trigger": "celery test"}) as result,
    ):
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        step_pids = _pids(instance, result.run_id, dg.DagsterEventType.STEP_START)
        steps = _succeeded_steps(instance, result.run_id)
    assert steps == {"energy_iforest_dataset", "energy_iforest"}
    assert step_pids and step_pids <= _tree(worker), (step_pids, _tree(worker))
    assert os.getpid() not in step_pids
    champion = champion_info(celery_settings.resolved_mlflow_uri, em.MODEL_NAME)
    assert champion is not None and champion.version == "1"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("celery_settings", [{"dagster_run_launcher": "celery"}], indirect=True)
def test_with_the_celery_run_launcher_a_launched_run_and_its_steps_execute_on_the_worker(
    celery_settings: FactorySettings, worker: psutil.Process
) -> None:
    """As the daemon launches a queued run: the instance's run launcher hands the whole run to the broker."""
    job = _training_job()
    with open_platform_instance(celery_settings) as instance:
        assert type(instance.run_launcher).__name__ == "CeleryRunLauncher"
        run = instance.create_run_for_job(
            job_def=job.get_definition(), job_code_origin=job.get_python_origin(), tags={"factory/trigger": "celery"}
        )
        instance.launch_run(run.run_id, workspace=None)  # type: ignore[arg-type]  # Celery's launcher needs none

        def finished() -> dg.DagsterRun | None:
            current = instance.get_run_by_id(run.run_id)
            return current if current is not None and current.is_finished else None

        done = wait_until(finished, RUN_TIMEOUT_S, "the launched run to finish on the worker")
        failures = [e.message for e in instance.all_logs(run.run_id) if e.dagster_event and e.dagster_event.is_failure]
        assert done.is_success, failures
        run_pids = _pids(instance, run.run_id, dg.DagsterEventType.RUN_START)
        step_pids = _pids(instance, run.run_id, dg.DagsterEventType.STEP_START)
        steps = _succeeded_steps(instance, run.run_id)
    assert steps == {"energy_iforest_dataset", "energy_iforest"}
    assert run_pids and step_pids and run_pids | step_pids <= _tree(worker), (run_pids, step_pids, _tree(worker))
    assert os.getpid() not in run_pids | step_pids
    champion = champion_info(celery_settings.resolved_mlflow_uri, em.MODEL_NAME)
    assert champion is not None and champion.version == "1"


def test_runs_on_celery_may_not_also_send_their_steps_there(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="leave dagster_executor in_process"):
        load_settings(
            data_dir=tmp_path,
            celery_broker_url="redis://127.0.0.1:6379/0",
            dagster_executor="celery",
            dagster_run_launcher="celery",
        )
