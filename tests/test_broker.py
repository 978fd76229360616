"""The local broker: both kinds start, carry QoS 1 messages and persistent sessions, and really stop."""

from __future__ import annotations

import queue
import shutil
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from factory_pipelines.broker import BrokerStartError, RunningBroker, ensure_broker, start_local_broker
from factory_pipelines.mqtt import (
    PERSISTENT_SESSION_EXPIRY_S,
    MQTTv5,
    MQTTv311,
    broker_protocol,
    broker_reachable,
    connect,
    make_client,
)
from factory_pipelines.settings import FactorySettings, load_settings

TIMEOUT_S = 10.0

BROKER_KINDS = [
    pytest.param(
        "mosquitto",
        marks=pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed"),
    ),
    "embedded",
]


def _subscriber(url: str, client_id: str, topic: str, received: queue.Queue[bytes]) -> mqtt.Client:
    """A persistent-session QoS 1 subscriber, connected and subscribed when this returns."""
    subscribed = threading.Event()
    client = make_client(client_id)
    client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_args: subscribed.set()
    client.on_message = lambda _c, _u, message: received.put(message.payload)
    connect(client, url, clean_start=False, session_expiry_s=PERSISTENT_SESSION_EXPIRY_S)
    client.loop_start()
    assert subscribed.wait(TIMEOUT_S), "subscription was not acknowledged"
    return client


def _publish(url: str, topic: str, payload: bytes) -> None:
    client = make_client(f"pub-{threading.get_ident()}")
    connect(client, url)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def _close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def _something_listens(url: str) -> bool:
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("prefer", BROKER_KINDS)
def test_broker_round_trips_and_keeps_persistent_sessions(
    prefer: str, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    broker = start_local_broker(free_port(), tmp_path / "broker", prefer=prefer)  # type: ignore[arg-type]
    with broker:
        assert broker.kind == ("mosquitto" if prefer == "mosquitto" else "amqtt")
        assert broker_protocol(broker.url) == broker.protocol == (MQTTv5 if prefer == "mosquitto" else MQTTv311)

        received: queue.Queue[bytes] = queue.Queue()
        subscriber = _subscriber(broker.url, "test-persistent-sub", "test/roundtrip", received)
        assert subscriber.protocol == broker.protocol  # downgraded to 3.1.1 only for amqtt
        _publish(broker.url, "test/roundtrip", b"first")
        assert received.get(timeout=TIMEOUT_S) == b"first"

        # While the subscriber is away its session keeps the QoS 1 message for it.
        _close(subscriber)
        _publish(broker.url, "test/roundtrip", b"while-away")
        subscriber = _subscriber(broker.url, "test-persistent-sub", "test/roundtrip", received)
        assert received.get(timeout=TIMEOUT_S) == b"while-away"
        _close(subscriber)

    assert not broker.running
    assert broker.process is not None and broker.process.returncode is not None
    assert not _something_listens(broker.url)
    assert not broker_reachable(broker.url, timeout=0.5)
    broker.stop()  # idempotent


def test_start_refuses_a_busy_port(mqtt_broker: RunningBroker, tmp_path: Path) -> None:
    port = int(mqtt_broker.url.rsplit(":", 1)[1])
    with pytest.raises(BrokerStartError, match="already listens"):
        start_local_broker(port, tmp_path / "broker")


def test_start_reports_the_log_tail_when_the_broker_dies(tmp_path: Path, free_port: Callable[[], int]) -> None:
    # Binding a non-local address fails inside the broker process: the error must carry its log.
    with pytest.raises(BrokerStartError, match="exited with code") as excinfo:
        start_local_broker(free_port(), tmp_path / "broker", prefer="embedded", host="192.0.2.1")
    assert "log" in str(excinfo.value)


def test_ensure_broker_returns_none_when_one_answers(factory_settings: FactorySettings) -> None:
    assert ensure_broker(factory_settings) is None


def test_ensure_broker_starts_one_on_the_configured_port(tmp_path: Path, free_port: Callable[[], int]) -> None:
    settings = load_settings(data_dir=tmp_path / "data", mqtt_url=f"mqtt://127.0.0.1:{free_port()}")
    broker = ensure_broker(settings)
    assert broker is not None
    with broker:
        assert broker.url == settings.mqtt_url
        assert broker_reachable(settings.mqtt_url)
        assert broker.log_path is not None and broker.log_path.is_relative_to(settings.data_path / "broker")
        assert ensure_broker(settings) is None  # now one answers
    assert not broker_reachable(settings.mqtt_url, timeout=0.5)


def test_ensure_broker_refuses_a_remote_host(tmp_path: Path, free_port: Callable[[], int]) -> None:
    # 192.0.2.0/24 is TEST-NET-1: nothing answers there, and it is not loopback.
    settings = load_settings(data_dir=tmp_path / "data", mqtt_url=f"mqtt://192.0.2.1:{free_port()}")
    with pytest.raises(BrokerStartError, match="loopback"):
        ensure_broker(settings)
