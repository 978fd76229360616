"""The production storage on PostgreSQL: the MLflow server `factory up` starts, and the Dagster instance.

MLflow runs as a real `mlflow server` process built by the launcher's own `mlflow_server_command`,
its backend store a throwaway PostgreSQL database; the Dagster instance is the platform's
dagster.yaml with `dagster_pg_url` set, on another. A first energy champion is trained the way
`factory up` trains it (a Dagster run in that instance, logged to that server), then both databases
are read directly: the run, the registered version and its `champion` alias are rows in PostgreSQL,
and no file under the data dir holds either store.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from factory_pipelines import energy_model as em
from factory_pipelines.dagster_instance import ensure_energy_champion, open_platform_instance
from factory_pipelines.launcher import mlflow_server_command
from factory_pipelines.model_registry import champion_info
from factory_pipelines.settings import DAGSTER_PG_SCHEME, FactorySettings, load_settings
from tests.waiting import wait_until

pytestmark = pytest.mark.postgres

MLFLOW_START_TIMEOUT_S = 120.0


@pytest.fixture
def pg_settings(
    tmp_path: Path, new_postgres_database: Callable[[], str], mqtt_url: str, free_port: Callable[[], int]
) -> FactorySettings:
    """Settings with MLflow's and Dagster's stores on two throwaway PostgreSQL databases."""
    mlflow_db = new_postgres_database()  # psycopg 3, as MLflow's SQLAlchemy store takes it
    dagster_db = make_url(new_postgres_database()).set(drivername=DAGSTER_PG_SCHEME)
    settings = load_settings(
        data_dir=tmp_path / "data",
        mqtt_url=mqtt_url,
        mlflow_port=free_port(),
        mlflow_backend_store_uri=mlflow_db,
        dagster_pg_url=dagster_db.render_as_string(hide_password=False),
    )
    settings.ensure_dirs()
    return settings


@pytest.fixture
def mlflow_server(pg_settings: FactorySettings, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`mlflow server` on PostgreSQL as `factory up` starts it; its URL."""
    argv, extra_env = mlflow_server_command(pg_settings, "127.0.0.1")
    assert pg_settings.mlflow_backend_store_uri not in " ".join(argv)  # no password in `ps`
    log_path = pg_settings.logs_dir / "mlflow.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, env={**os.environ, **extra_env}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{pg_settings.mlflow_port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"mlflow server exited ({process.returncode}): {log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, MLFLOW_START_TIMEOUT_S, "the MLflow server on PostgreSQL to answer /health")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _rows(url: str, query: str) -> list[tuple[object, ...]]:
    engine = create_engine(make_url(url).set(drivername="postgresql+psycopg"))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query))]
    finally:
        engine.dispose()


@pytest.mark.timeout(300)
def test_a_first_champion_trains_into_mlflow_and_dagster_on_postgres(
    pg_settings: FactorySettings, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pg_settings.dagster_pg_url is not None and pg_settings.mlflow_backend_store_uri is not None
    monkeypatch.setenv("FACTORY_DAGSTER_PG_URL", pg_settings.dagster_pg_url)  # restored after the test
    settings = pg_settings.model_copy(update={"mlflow_tracking_uri": mlflow_server})

    version = ensure_energy_champion(settings)

    # MLflow: the version and its alias are rows of the server's PostgreSQL database.
    champion = champion_info(mlflow_server, em.MODEL_NAME)
    assert champion is not None and champion.version == version
    mlflow_db = pg_settings.mlflow_backend_store_uri
    assert _rows(mlflow_db, "SELECT name, version FROM model_versions") == [(em.MODEL_NAME, int(version))]
    assert _rows(mlflow_db, "SELECT name, alias, version FROM registered_model_aliases") == [
        (em.MODEL_NAME, "champion", int(version))
    ]
    # Dagster: the training run is in the instance's PostgreSQL run storage, tagged by its trigger.
    with open_platform_instance(settings) as instance:
        runs = instance.get_runs()
    assert [run.tags.get("factory/trigger") for run in runs] == ["factory up: first champion"]
    assert runs[0].is_success
    stored = _rows(pg_settings.dagster_pg_url, "SELECT run_id, status FROM runs")
    assert stored == [(runs[0].run_id, "SUCCESS")]
    # Neither store fell back to a file under the data dir.
    assert not (settings.mlflow_dir / "mlflow.db").exists()
    assert not (settings.dagster_home / "storage").exists()

    # A second start finds the champion instead of training again.
    assert ensure_energy_champion(settings) == version
    with open_platform_instance(settings) as instance:
        assert len(instance.get_runs()) == 1
