"""A running platform on loopback, for the tests that act as clients of the earlier systems.

What a plant runs, on free loopback ports: the session's MQTT broker; `factory collect`,
`factory serve` and `factory bridge` as child processes; a Twilio stand-in the real twilio client
talks to; champions of all five model families, trained through the platform's own training jobs
(tiny configs: the clients are under test here, not the models). The Dagster daemon's part runs in
this process on the platform's instance: `score()` takes the window sensor's tick, runs the
predictions it asks for, then the alert sensor's tick and the orchestrator runs it asks for,
exactly what the daemon would launch.

Clients see only what they saw before: an address (`api_url`, the broker, the Modbus port) and an
API key.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import polars as pl

from factory_pipelines.dagster_instance import open_platform_instance, run_backlog_job, run_training_job
from factory_pipelines.definitions import build_definitions
from factory_pipelines.mqtt import connect_and_wait, make_client
from factory_pipelines.resources import build_resources
from factory_pipelines.settings import FactorySettings, load_settings
from factory_pipelines.windows import iter_sealed_keys, read_window
from tests.factory_processes import FactoryProcess, FactoryProcesses, factory_env
from tests.twilio_standin import TwilioStandIn
from tests.waiting import wait_until

OPERATOR_KEY = "compat-operator-key-01"
VIEWER_KEY = "compat-viewer-key-0001"
ON_CALL = "+15557770001"
SMS_TAG = "[6G-MAS ALERT]"
SMS_RATE_LIMIT = 1000  # every test here texts the one on-call number; the rate limit has its own tests

# Champions in seconds: (dataset config, training config) per model, through the real training jobs.
TINY_TRAINING: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "energy_iforest": ({}, {}),
    "cyber_detector": ({"n_machines": 4, "n_windows": 120}, {"max_iter": 40}),
    "safety_hazard": ({"simulated_zones": 4, "simulated_windows": 720}, {"max_iter": 40}),
    "rul_lstm": ({"n_robots": 6, "lives_per_robot": 1}, {"max_epochs": 2, "ensemble_size": 1, "lstm_units": 16}),
    "ppe_vision": ({"generated_frames": 60}, {"epochs": 1, "image_size": 128, "crop_size": 96}),
}
START_TIMEOUT_S = 90.0  # the API and the bridge import TensorFlow and MLflow on a shared 2-core machine
SEAL_TIMEOUT_S = 30.0


@dataclass
class RunningPlatform:
    settings: FactorySettings
    twilio: TwilioStandIn
    instance: dg.DagsterInstance
    collector: FactoryProcess
    api: FactoryProcess
    bridge: FactoryProcess
    defs: dg.Definitions = field(init=False)
    _window_cursor: str | None = None
    _alert_cursor: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.defs = build_definitions(self.settings)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.settings.api_port}"

    @property
    def modbus_port(self) -> int:
        return self.settings.modbus_port

    def http(self, key: str = VIEWER_KEY) -> httpx.Client:
        """A plain HTTP client as the earlier dashboards and scripts were: an address and a key."""
        return httpx.Client(base_url=self.api_url, headers={"X-API-Key": key}, timeout=30.0)

    def device(self, client_id: str | None = None) -> DevicePublisher:
        """A paho client like the plant's existing devices: MQTT v3.1.1, QoS 0, JSON, no `seq`."""
        return DevicePublisher(self.settings.mqtt_url, client_id or f"seed-device-{uuid.uuid4().hex[:6]}")

    # ---- the daemon's part ----------------------------------------------------------------

    def sealed_rows(self) -> pl.DataFrame:
        """Every row in windows sealed since the last hand-over (the collector's files, as the sensor sees them)."""
        keys = [key for key in iter_sealed_keys(self.settings.windows_dir) if key > (self._window_cursor or "")]
        if not keys:
            return pl.DataFrame()
        return pl.concat([read_window(self.settings.windows_dir, key) for key in keys], how="diagonal_relaxed")

    def score(self, ready: Callable[[pl.DataFrame], bool], what: str, timeout: float = SEAL_TIMEOUT_S) -> list[str]:
        """Once sealed windows hold what `ready` looks for, run what the daemon would: predictions, then alerts.

        Returns the window keys handed over.
        """
        with self._lock:
            wait_until(lambda: (rows := self.sealed_rows()).height and ready(rows), timeout, f"sealed windows: {what}")
            keys = self._run_window_tick()
            self._run_alert_tick()
            return keys

    def _run_window_tick(self) -> list[str]:
        sensor = self.defs.resolve_sensor_def("sealed_windows_sensor")
        with dg.build_sensor_context(
            instance=self.instance, cursor=self._window_cursor, resources=build_resources(self.settings)
        ) as context:
            result = sensor(context)
        if isinstance(result, dg.SkipReason):
            return []
        added: list[str] = []
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            added += request.partition_keys
        job = self.defs.resolve_job_def("window_predictions_job")
        for request in result.run_requests or []:
            run = job.execute_in_process(
                instance=self.instance,
                partition_key=request.partition_key,
                tags={**request.tags, "dagster/run_key": request.run_key or ""},
                raise_on_error=False,
            )
            assert run.success, f"window predictions run {run.run_id} failed"
        if result.cursor is not None:
            self._window_cursor = result.cursor
        return added

    def _run_alert_tick(self) -> None:
        sensor = self.defs.resolve_sensor_def("prediction_alerts_sensor")
        context = dg.build_sensor_context(instance=self.instance, cursor=self._alert_cursor, definitions=self.defs)
        result = sensor(context)
        if isinstance(result, dg.SkipReason):
            return
        job = self.defs.resolve_job_def("orchestrator_job")
        for request in result.run_requests:
            run = job.execute_in_process(
                instance=self.instance,
                partition_key=request.partition_key,
                run_config=request.run_config,
                tags=request.tags,
                raise_on_error=False,
            )
            assert run.success, f"orchestrator run {run.run_id} failed"
        self._alert_cursor = result.cursor

    def write_backlog(self, shift_key: str) -> None:
        """The shift schedule's run for `shift_key` (the deterministic writer: no Gemini key here)."""
        run = run_backlog_job(self.settings, shift_key, trigger="compat tests")
        assert run.success, f"backlog run {run.run_id} failed"


class DevicePublisher:
    """One of the plant's existing devices: publishes JSON at QoS 0 and never numbers its messages."""

    def __init__(self, url: str, client_id: str) -> None:
        self.client = make_client(client_id)
        connect_and_wait(self.client, url)

    def publish(self, topic: str, payload: dict[str, Any] | str) -> None:
        body = payload if isinstance(payload, str) else json.dumps(payload)
        self.client.publish(topic, body, qos=0).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> DevicePublisher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def platform_settings(root: Path, mqtt_url: str, twilio: TwilioStandIn, ports: dict[str, int]) -> FactorySettings:
    settings = load_settings(
        data_dir=root / "data",
        mqtt_url=mqtt_url,
        site="main",  # the earlier devices' topics say factory/main/...
        # Its own MQTT session: the broker keeps a stopped collector's session (and queues for it), and
        # a later test's collector with the default id must not inherit that backlog.
        collector_id=f"compat-{uuid.uuid4().hex[:8]}",
        window_seconds=2,
        api_port=ports["api"],
        modbus_port=ports["modbus"],
        opcua_port=ports["opcua"],
        opcua_security="none",
        api_keys=f"{OPERATOR_KEY}:operator,{VIEWER_KEY}:viewer",
        allow_anonymous_read=False,
        twilio_account_sid=twilio.account_sid,
        twilio_auth_token=twilio.auth_token,
        twilio_from_number="+15550000000",
        twilio_to_numbers=ON_CALL,
        twilio_api_base_url=twilio.base_url,
        sms_tag=SMS_TAG,
        sms_rate_limit=SMS_RATE_LIMIT,
    )
    settings.ensure_dirs()
    return settings


def child_env(settings: FactorySettings) -> dict[str, str]:
    """The settings as the child processes read them: environment variables, secrets included."""
    assert settings.twilio_account_sid is not None and settings.twilio_auth_token is not None
    return factory_env(
        **settings.child_env(),
        FACTORY_COLLECTOR_ID=settings.collector_id,
        FACTORY_MODBUS_PORT=str(settings.modbus_port),
        FACTORY_OPCUA_PORT=str(settings.opcua_port),
        FACTORY_OPCUA_SECURITY=settings.opcua_security,
        FACTORY_API_KEYS=f"{OPERATOR_KEY}:operator,{VIEWER_KEY}:viewer",
        FACTORY_ALLOW_ANONYMOUS_READ="false",
        FACTORY_SMS_TAG=settings.sms_tag,
        FACTORY_SMS_RATE_LIMIT=str(settings.sms_rate_limit),
        TWILIO_ACCOUNT_SID=settings.twilio_account_sid.get_secret_value(),
        TWILIO_AUTH_TOKEN=settings.twilio_auth_token.get_secret_value(),
        TWILIO_FROM_NUMBER=settings.twilio_from_number or "",
        TWILIO_TO_NUMBERS=settings.twilio_to_numbers or "",
        TWILIO_API_BASE_URL=settings.twilio_api_base_url or "",
    )


def train_champions(settings: FactorySettings) -> None:
    for name, (dataset, training) in TINY_TRAINING.items():
        run = run_training_job(settings, name, dataset_config=dataset, training_config=training, trigger="compat tests")
        assert run.success and run.gate.get("passed"), f"{name}: training run {run.run_id} did not give a champion"


@contextlib.contextmanager
def running_platform(root: Path, mqtt_url: str, free_port: Callable[[], int]) -> Iterator[RunningPlatform]:
    ports = {"api": free_port(), "modbus": free_port(), "opcua": free_port()}
    log_dir = root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    processes = FactoryProcesses(log_dir)
    with TwilioStandIn() as twilio, contextlib.ExitStack() as stack:
        stack.callback(processes.kill_all)
        settings = platform_settings(root, mqtt_url, twilio, ports)
        env = child_env(settings)
        # The children start while the champions train: both take tens of seconds.
        collector = processes.start("collector", ["collect"], env)
        api = processes.start("api", ["serve"], env)
        bridge = processes.start("bridge", ["bridge"], env)
        train_champions(settings)
        instance = stack.enter_context(open_platform_instance(settings))
        platform = RunningPlatform(settings, twilio, instance, collector, api, bridge)
        wait_until(lambda: _answers(platform), START_TIMEOUT_S, "the API to answer /health")
        bridge.wait_for_log("SCADA bridge serving", timeout=START_TIMEOUT_S)
        collector.wait_for_log("subscribed", timeout=START_TIMEOUT_S)
        yield platform
        for process in (collector, api, bridge):
            assert process.stop() == 0, process.log_tail()


def _answers(platform: RunningPlatform) -> bool:
    for process in (platform.api, platform.collector, platform.bridge):
        if not process.alive():
            raise AssertionError(f"{process.name} exited with {process.process.returncode}\n{process.log_tail()}")
    try:
        return httpx.get(f"{platform.api_url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
