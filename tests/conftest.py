"""Shared fixtures: one real MQTT broker per test session, on a free loopback port."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from factory_pipelines.broker import RunningBroker, start_local_broker
from factory_pipelines.mqtt import connect_and_wait, make_client
from factory_pipelines.settings import DAGSTER_PG_SCHEME, FactorySettings, load_settings
from tests.gemini_standin import gemini  # noqa: F401 - the Gemini stand-in fixture, for every test
from tests.postgres_server import NoPostgresServer, own_postgres_cluster


def find_free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Call it for each new free loopback port a test needs."""
    return find_free_port


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    """Mosquitto when installed, else the embedded amqtt broker; stopped at the end of the session."""
    data_dir: Path = tmp_path_factory.mktemp("broker")
    with start_local_broker(find_free_port(), data_dir) as broker:
        yield broker


@pytest.fixture
def mqtt_url(mqtt_broker: RunningBroker) -> str:
    return mqtt_broker.url


@pytest.fixture
def factory_settings(tmp_path: Path, mqtt_url: str) -> FactorySettings:
    """Settings pointing at the session broker, with all state under this test's tmp dir."""
    settings = load_settings(data_dir=tmp_path / "data", mqtt_url=mqtt_url, window_seconds=2)
    settings.ensure_dirs()
    return settings


@dataclass(frozen=True)
class ReceivedMessage:
    topic: str
    payload: bytes
    received_at: float  # time.monotonic() at receipt


class MqttRecorder:
    """Records every message on some topics (subscribed when constructed) and waits on conditions."""

    def __init__(self, url: str, *topics: str, timeout: float = 10.0) -> None:
        self.messages: list[ReceivedMessage] = []
        self._changed = threading.Condition()
        subscribed = threading.Event()
        self.client = make_client(f"test-recorder-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_args: subscribed.set()
        connect_and_wait(self.client, url, timeout=timeout)
        self.client.subscribe([(topic, 1) for topic in topics])
        assert subscribed.wait(timeout), f"no SUBACK for {topics}"

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append(ReceivedMessage(message.topic, message.payload, time.monotonic()))
            self._changed.notify_all()

    def wait_for(
        self, condition: Callable[[list[ReceivedMessage]], bool], timeout: float = 10.0, what: str = "condition"
    ) -> list[ReceivedMessage]:
        """A snapshot of the messages once `condition(messages)` holds; fails the test after `timeout`."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self.messages), timeout):
                raise AssertionError(f"{what} not met within {timeout} s; {len(self.messages)} messages received")
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_recorder(mqtt_url: str) -> Iterator[Callable[..., MqttRecorder]]:
    """`mqtt_recorder("factory/#", ...)` subscribes on the session broker; closed after the test."""
    recorders: list[MqttRecorder] = []

    def _subscribe(*topics: str) -> MqttRecorder:
        recorder = MqttRecorder(mqtt_url, *topics)
        recorders.append(recorder)
        return recorder

    yield _subscribe
    for recorder in recorders:
        recorder.close()


# ---- fixtures added by other parts of the platform go below this line ----

TEST_API_KEYS = {"viewer": "test-viewer-key-0001", "operator": "test-operator-key-01", "admin": "test-admin-key-00001"}
OPERATOR_HEADERS = {"X-API-Key": TEST_API_KEYS["operator"]}


@pytest.fixture(autouse=True)
def demo_access(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs with the local demo's access (anonymous reads) and one key per role, by environment;
    tests of access itself pass `allow_anonymous_read=False` / `api_keys=...` to `load_settings`, which win."""
    monkeypatch.setenv("FACTORY_ALLOW_ANONYMOUS_READ", "true")
    monkeypatch.setenv("FACTORY_API_KEYS", ",".join(f"{key}:{role}" for role, key in TEST_API_KEYS.items()))


LOCAL_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _answers(url: str) -> bool:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except OperationalError:
        return False
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The PostgreSQL server of the suite's PostgreSQL profile (`pytest -m postgres`).

    `FACTORY_TEST_PG_URL` when set (it must answer), else the server on 127.0.0.1:5432 when one
    answers, else a cluster of the suite's own when PostgreSQL is installed; skipped otherwise.
    """
    given = os.environ.get("FACTORY_TEST_PG_URL")
    if given:
        if not _answers(given):
            pytest.fail(f"FACTORY_TEST_PG_URL is set but no PostgreSQL answers at {make_url(given)!r}")
        yield given
        return
    if _answers(LOCAL_PG_URL):
        yield LOCAL_PG_URL
        return
    try:
        with own_postgres_cluster(find_free_port()) as server:
            yield server.url
    except NoPostgresServer as exc:
        pytest.skip(f"no PostgreSQL answers at {LOCAL_PG_URL} and none can be started: {exc}")


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    """A throwaway schema on the suite's PostgreSQL, so tests never touch real tables."""
    engine = create_engine(postgres_url)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{postgres_url}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.fixture
def new_postgres_database(postgres_url: str) -> Iterator[Callable[[], str]]:
    """`new_postgres_database()` makes a throwaway database on the suite's PostgreSQL and returns its
    URL, for tools that own their tables (Dagster, MLflow); all are dropped after the test."""
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    names: list[str] = []

    def _create() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        names.append(name)
        return make_url(postgres_url).set(database=name).render_as_string(hide_password=False)

    try:
        yield _create
    finally:
        with engine.connect() as conn:
            for name in names:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        engine.dispose()


@pytest.fixture
def postgres_database_url(new_postgres_database: Callable[[], str]) -> str:
    """One throwaway database on the suite's PostgreSQL."""
    return new_postgres_database()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The serving store's URL on SQLite, then on PostgreSQL (same tests, both engines)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'serving.db'}"
    return request.getfixturevalue("postgres_schema_url")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def instance(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Dagster instance on SQLite (`instance_for_test`), then on PostgreSQL through the platform's own
    dagster.yaml (`write_dagster_yaml` with `dagster_pg_url`), on a throwaway database."""
    import dagster as dg

    from factory_pipelines.dagster_instance import DAGSTER_PG_URL_ENV, open_platform_instance, write_dagster_yaml

    if request.param == "sqlite":
        with dg.instance_for_test() as sqlite_instance:
            yield sqlite_instance
        return
    database_url = make_url(request.getfixturevalue("postgres_database_url"))
    url = database_url.set(drivername=DAGSTER_PG_SCHEME).render_as_string(hide_password=False)
    monkeypatch.setenv(DAGSTER_PG_URL_ENV, url)  # restored after the test; the instance reads it on load
    settings = load_settings(data_dir=tmp_path / "dagster-on-postgres", dagster_pg_url=url)
    config_text = write_dagster_yaml(settings).read_text()
    assert "postgres_url" in config_text and url not in config_text  # by reference: no password on disk
    with open_platform_instance(settings) as pg_instance:
        assert type(pg_instance.run_storage).__name__ == "PostgresRunStorage"
        yield pg_instance
