"""Windows and predictions on object storage (`FACTORY_STORAGE_URL`), and on a local path other than the data dir.

The S3 store is a real S3-compatible HTTP server, moto's server mode, started as its own process on
a free loopback port; s3fs talks to it over HTTP like to any S3 endpoint, so the mock is only at
the process boundary. Every other part is the real one: the session's MQTT broker, the collector,
the Dagster sensor against a real instance, the window job, the MLflow champion.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import fsspec
import polars as pl
import pytest
from pydantic import ValidationError
from upath import UPath

from factory_pipelines.dagster_instance import ensure_energy_champion
from factory_pipelines.durable_files import write_parquet_atomic
from factory_pipelines.settings import load_settings
from factory_pipelines.simulator import FleetConfig, machine_asset_id, run_simulator
from factory_pipelines.storage import parquet_files, read_parquet, storage_root, write_parquet
from factory_pipelines.windows import WINDOW_SCHEMA, iter_sealed_keys, read_window, sealed_window_path, window_key
from sensors.collector import Collector
from sensors.window_publisher import WindowPublisher
from serving.ml import stored_history
from tests.factory_processes import FactoryProcesses, factory_env, factory_processes  # noqa: F401 - fixture
from tests.numbered_stream import MessageKey, NumberedStream, sealed_rows
from tests.waiting import wait_until
from tests.window_runs import WINDOW_PARTITIONS, hand_over_and_run

SERVER_START_TIMEOUT_S = 30.0
MACHINES = [machine_asset_id(n) for n in range(1, 4)]


class S3Server:
    """moto's S3-compatible server as a child process on 127.0.0.1:`port`."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        with log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(self._answers, timeout=SERVER_START_TIMEOUT_S, what="moto's S3 server to answer")
        except (AssertionError, RuntimeError):
            self.stop()
            raise

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"moto's server exited with {self.process.returncode}: {self.log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def create_bucket(self, name: str) -> None:
        fsspec.filesystem("s3", endpoint_url=self.endpoint_url, skip_instance_cache=True).mkdir(name)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_s3_server(port: int, log_path: Path) -> S3Server:
    """The server, or the test skipped with the reason when moto's server cannot start here."""
    try:
        return S3Server(port, log_path)
    except (AssertionError, RuntimeError, OSError) as exc:
        pytest.skip(f"moto's S3 server (python -m moto.server) cannot start: {exc}")


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials the way operators give them: AWS's standard variables (moto accepts any)."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    from tests.conftest import find_free_port

    server = start_s3_server(find_free_port(), tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def s3_url(s3_server: S3Server, aws_credentials: None) -> str:
    """A fresh bucket for the test; the platform's files go under its `plant/` prefix."""
    bucket = f"factory-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    return f"s3://{bucket}/plant"


# ---- the setting ----


def test_storage_is_the_data_dir_unless_a_path_or_url_is_given(tmp_path: Path) -> None:
    default = load_settings(data_dir=tmp_path / "data")
    assert default.storage_root == default.data_path
    assert default.store_windows_dir == default.windows_dir  # the collector's seal is the publication
    assert default.predictions_dir == default.data_path / "predictions"
    assert WindowPublisher.for_settings(default, keep_seconds=60) is None

    shared = load_settings(data_dir=tmp_path / "data", storage_url=str(tmp_path / "mnt" / ".." / "shared"))
    assert shared.store_windows_dir == (tmp_path / "shared" / "windows").resolve()
    assert isinstance(shared.store_windows_dir, Path)  # local: written with temp file, fsync, rename
    assert shared.child_env()["FACTORY_STORAGE_URL"] == str((tmp_path / "shared").resolve())

    s3 = load_settings(
        data_dir=tmp_path / "data", storage_url="s3://bucket/plant", storage_endpoint_url="http://127.0.0.1:9000"
    )
    assert str(s3.predictions_dir) == "s3://bucket/plant/predictions"
    assert str(s3.store_windows_dir) == "s3://bucket/plant/windows"
    options = s3.storage_root.storage_options
    assert options["endpoint_url"] == "http://127.0.0.1:9000"
    assert options["use_listings_cache"] is False  # the sensor lists the same prefix while collectors add to it
    assert s3.windows_dir == s3.data_path / "windows"  # open windows stay on the collector's disk
    env = s3.child_env()
    assert (env["FACTORY_STORAGE_URL"], env["FACTORY_STORAGE_ENDPOINT_URL"]) == (
        "s3://bucket/plant",
        "http://127.0.0.1:9000",
    )

    with pytest.raises(ValidationError, match="storage_url") as refused:
        load_settings(storage_url="s3://AKIAEXAMPLE:very-secret@bucket/plant")
    assert "very-secret" not in str(refused.value)
    with pytest.raises(ValueError, match="s3://"):
        storage_root("memory://plant", default=tmp_path, endpoint_url="http://127.0.0.1:9000")


def test_partition_files_round_trip_on_a_local_path_and_on_s3(tmp_path: Path, s3_url: str, s3_server: S3Server) -> None:
    frame = pl.DataFrame({"asset_id": ["m-1", "m-2"], "score": [0.1, 0.9]})
    for root in (
        storage_root(str(tmp_path / "store"), default=tmp_path),
        storage_root(s3_url, default=tmp_path, endpoint_url=s3_server.endpoint_url),
    ):
        directory = root / "predictions" / "energy_iforest"
        assert parquet_files(directory) == []
        for key in ("20260101T000100Z-c-000", "20260101T000000Z-c-000"):
            write_parquet(frame, directory / f"{key}.parquet")
        assert [path.stem for path in parquet_files(directory)] == ["20260101T000000Z-c-000", "20260101T000100Z-c-000"]
        assert read_parquet(directory / "20260101T000000Z-c-000.parquet").equals(frame)
        assert read_parquet(directory / "20260101T000000Z-c-000.parquet", columns=["score"]).columns == ["score"]


# ---- the collector's publisher ----


def _seal(windows_dir: Path, key: str) -> None:
    rows = {name: [None] for name in WINDOW_SCHEMA} | {"asset_id": [key], "payload": ["{}"]}
    write_parquet_atomic(pl.DataFrame(rows, schema=WINDOW_SCHEMA), sealed_window_path(windows_dir, key))


def test_publisher_copies_sealed_windows_and_removes_local_copies_only_once_published_and_old(tmp_path: Path) -> None:
    local, store = tmp_path / "windows", UPath(tmp_path / "store" / "windows")
    start = datetime(2026, 3, 1, 23, 58, tzinfo=UTC)
    mine = [window_key(start + timedelta(minutes=n), "c1") for n in range(5)]  # crosses midnight
    theirs = window_key(start, "c2")  # another collector sharing the data dir publishes its own
    for key in [*mine, theirs]:
        _seal(local, key)
    publisher = WindowPublisher(local, store, "c1", keep_seconds=120)

    assert publisher.publish_waiting() == 5
    assert list(iter_sealed_keys(store)) == mine
    assert read_window(store, mine[0]).equals(read_window(local, mine[0]))
    assert publisher.publish_waiting() == 0  # a marker says each is in the store
    assert publisher.stats.published == 5 and publisher.stats.waiting == 0

    late = window_key(start - timedelta(hours=1), "c1")  # sealed before a crash, never published
    _seal(local, late)
    assert publisher.remove_old_copies() == 2  # older than 120 s before the newest, and in the store
    assert list(iter_sealed_keys(local)) == [late, theirs, *mine[2:]]  # `late` waits for the store
    assert publisher.publish_waiting() == 1
    assert publisher.remove_old_copies() == 1
    assert list(iter_sealed_keys(local)) == [theirs, *mine[2:]]
    assert list(iter_sealed_keys(store)) == sorted([late, *mine])
    assert not (local / "published" / late[:8]).exists()  # an emptied day of markers goes too


def test_a_collector_publishes_to_a_local_store_other_than_its_data_dir(tmp_path: Path, mqtt_url: str) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data",
        mqtt_url=mqtt_url,
        window_seconds=1,
        storage_url=str(tmp_path / "shared"),
        collector_id=f"local-store-{uuid.uuid4().hex[:6]}",
    )
    collector = Collector(settings)
    stop = threading.Event()
    thread = threading.Thread(target=collector.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert collector.subscribed.wait(15), "collector never subscribed"
        stream = NumberedStream(
            mqtt_url, site=settings.site, assets=("lathe-1",), rate_per_s=400, client_id=f"s-{uuid.uuid4().hex[:6]}"
        )
        stream.start()
        wait_until(lambda: len(stream.acknowledged) >= 200, 20, "200 messages acknowledged")
        assert stream.stop_and_settle() == set()
        wait_until(
            lambda: _keys(settings.store_windows_dir) >= stream.acknowledged, 20, "every message in the shared store"
        )
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    stats = collector.stats
    assert stats.windows_published == stats.windows_sealed >= 1
    assert (stats.windows_awaiting_store, stats.store_unreachable) == (0, False)
    assert sealed_rows(settings.store_windows_dir, "seq").height == len(stream.acknowledged)


def _keys(windows_dir: Path | UPath) -> set[MessageKey]:
    rows = sealed_rows(windows_dir, "asset_id", "seq")
    return set() if rows.is_empty() else set(rows.select("asset_id", "seq").iter_rows())


# ---- the stream path on S3 ----


def test_stream_path_on_s3_windows_sensor_predictions(
    tmp_path: Path, mqtt_url: str, s3_url: str, s3_server: S3Server
) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data",
        mqtt_url=mqtt_url,
        window_seconds=2,
        storage_url=s3_url,
        storage_endpoint_url=s3_server.endpoint_url,
        collector_id=f"s3-{uuid.uuid4().hex[:6]}",
    )
    settings.ensure_dirs()
    version = ensure_energy_champion(settings)  # its dataset lists machine features on S3 (none yet)

    stop = threading.Event()
    collector = Collector(settings)
    thread = threading.Thread(target=collector.run, args=(stop,), daemon=True)
    thread.start()
    assert collector.subscribed.wait(15), "collector never subscribed"
    simulated = run_simulator(
        settings, FleetConfig(machines=len(MACHINES), robots=1, cleanrooms=0, rate_hz=5, seed=3), duration_s=4
    )
    stop.set()  # a clean stop seals the open window and publishes what is sealed
    thread.join(30)
    assert not thread.is_alive()
    stats = collector.stats
    assert stats.windows_published == stats.windows_sealed >= 2
    assert (stats.windows_awaiting_store, stats.store_unreachable) == (0, False)

    keys = list(iter_sealed_keys(settings.store_windows_dir))
    assert len(keys) == stats.windows_sealed
    assert sealed_rows(settings.store_windows_dir, "asset_id").height == simulated.total == stats.rows_written

    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        added, run = hand_over_and_run(settings, instance)
        assert added == keys and instance.get_dynamic_partitions(WINDOW_PARTITIONS) == keys
        assert run.success

    predictions_dir = settings.predictions_dir / "energy_iforest"
    files = parquet_files(predictions_dir)
    assert files and {path.stem for path in files} <= set(keys)
    predictions = pl.concat([read_parquet(path) for path in files])
    assert set(predictions["asset_id"]) == set(MACHINES)
    assert set(predictions["model_version"]) == {version}
    assert {path.stem for path in parquet_files(settings.machine_rows_dir)} <= set(keys)
    assert parquet_files(settings.features_dir)  # machine features, read back by energy_predictions
    # Nothing of it on the local disk: only open windows and the collector's recent sealed copies are.
    for name in ("predictions", "telemetry", "features"):
        assert not list((settings.data_path / name).rglob("*.parquet")), name
    # The API reads typed robot rows from the store as well.
    robots, warnings = stored_history(settings, {"robot-01"}, windows=10)
    assert warnings == [] and robots.height > 0


# ---- the store away at seal time, and a crash before the upload ----


def test_store_down_at_seal_time_and_a_crash_before_upload_lose_nothing(
    tmp_path: Path,
    mqtt_url: str,
    free_port: Callable[[], int],
    aws_credentials: None,
    factory_processes: FactoryProcesses,  # noqa: F811 - the fixture imported above
) -> None:
    port = free_port()  # nothing listens there until the store "comes back"
    bucket = f"factory-{uuid.uuid4().hex[:12]}"
    env = factory_env(
        FACTORY_DATA_DIR=str(tmp_path / "data"),
        FACTORY_MQTT_URL=mqtt_url,
        FACTORY_COLLECTOR_ID=f"outage-{uuid.uuid4().hex[:6]}",
        FACTORY_WINDOW_SECONDS="1",
        FACTORY_STORAGE_URL=f"s3://{bucket}/plant",
        FACTORY_STORAGE_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )
    settings = load_settings(
        data_dir=tmp_path / "data",
        storage_url=env["FACTORY_STORAGE_URL"],
        storage_endpoint_url=f"http://127.0.0.1:{port}",
    )

    def stream(assets: tuple[str, ...]) -> set[MessageKey]:
        numbered = NumberedStream(
            mqtt_url, site=settings.site, assets=assets, rate_per_s=300, client_id=f"s-{uuid.uuid4().hex[:6]}"
        )
        numbered.start()
        wait_until(lambda: len(numbered.acknowledged) >= 150, 20, f"150 messages of {assets} acknowledged")
        assert numbered.stop_and_settle() == set()
        assert not numbered.unrouted
        return numbered.acknowledged

    first = factory_processes.start("collector-1", ["collect"], env)
    first.wait_for_log("subscribed to")
    before_crash = stream(("press-a",))
    wait_until(lambda: _keys(settings.windows_dir) >= before_crash, 20, "the first messages sealed on local disk")
    first.wait_for_log("cannot publish sealed windows", what="the collector to report the store unreachable")
    first.kill()  # sealed locally, never uploaded

    second = factory_processes.start("collector-2", ["collect"], env)
    second.wait_for_log("subscribed to")
    during_outage = stream(("press-b",))
    wait_until(lambda: _keys(settings.windows_dir) >= during_outage, 20, "the next messages sealed on local disk")

    server = start_s3_server(port, tmp_path / "moto.log")
    try:
        server.create_bucket(bucket)
        expected = before_crash | during_outage
        wait_until(lambda: _keys(settings.store_windows_dir) >= expected, 60, "every window in the store")
        assert second.stop() == 0
        rows = sealed_rows(settings.store_windows_dir, "asset_id", "seq")
        assert rows.height == len(expected)  # none twice
        assert set(rows.select("asset_id", "seq").iter_rows()) == expected  # none lost
        assert sorted(iter_sealed_keys(settings.store_windows_dir)) == sorted(iter_sealed_keys(settings.windows_dir))
    finally:
        server.stop()
