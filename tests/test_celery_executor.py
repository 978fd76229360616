"""Steps of a platform run executed by a real Celery worker process, through a Redis broker.

A Redis server of the test's own on a free loopback port (its queue shared with nobody), the
platform's dagster.yaml in a temp DAGSTER_HOME, and `factory celery-worker`'s own command as a
subprocess. The code location is loaded with `FACTORY_DAGSTER_EXECUTOR=celery`, and the energy
training job is launched the way a run worker launches it (a reconstructable job, `execute_job`):
the run succeeds, every step started in the worker's process tree and none in the test's, and the
model the worker trained is the champion in the MLflow store.
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
from dagster._core.definitions.reconstruct import ReconstructableRepository

from factory_pipelines import energy_model as em
from factory_pipelines.dagster_instance import open_platform_instance, write_dagster_yaml
from factory_pipelines.executors import celery_worker_command
from factory_pipelines.model_registry import champion_info
from factory_pipelines.settings import FactorySettings, load_settings
from tests.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER_READY_TIMEOUT_S = 90.0


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
def celery_settings(tmp_path: Path, mqtt_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> FactorySettings:
    settings = load_settings(
        data_dir=tmp_path / "data", mqtt_url=mqtt_url, dagster_executor="celery", celery_broker_url=redis_url
    )
    settings.ensure_dirs()
    write_dagster_yaml(settings)
    for name, value in settings.child_env().items():  # the code location loads these settings, as in production
        monkeypatch.setenv(name, value)
    return settings


@pytest.fixture
def worker(celery_settings: FactorySettings) -> Iterator[psutil.Process]:
    argv, env = celery_worker_command(celery_settings, name="test-worker", concurrency=1)
    log_path = celery_settings.logs_dir / "celery-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the worker exited ({process.returncode}):\n{log_path.read_text()[-3000:]}")
        return " ready." in log_path.read_text(errors="replace")

    try:
        wait_until(ready, WORKER_READY_TIMEOUT_S, "the Celery worker to be ready")
        yield psutil.Process(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.timeout(300)
def test_a_training_run_s_steps_execute_on_a_celery_worker(
    celery_settings: FactorySettings, worker: psutil.Process
) -> None:
    job = ReconstructableRepository.for_module(
        "factory_pipelines.definitions", "defs", working_directory=str(REPO_ROOT)
    ).get_reconstructable_job("energy_iforest_training_job")
    with (
        open_platform_instance(celery_settings) as instance,
        dg.execute_job(job, instance=instance, tags={"factory/trigger": "celery test"}) as result,
    ):
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        step_pids = {
            entry.dagster_event.pid
            for entry in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_START)
            if entry.dagster_event is not None
        }
        steps = {
            entry.dagster_event.step_key
            for entry in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
            if entry.dagster_event is not None
        }
    worker_tree = {worker.pid, *(child.pid for child in worker.children(recursive=True))}
    assert steps == {"energy_iforest_dataset", "energy_iforest"}
    assert step_pids and step_pids <= worker_tree, (step_pids, worker_tree)
    assert os.getpid() not in step_pids
    champion = champion_info(celery_settings.resolved_mlflow_uri, em.MODEL_NAME)
    assert champion is not None and champion.version == "1"
