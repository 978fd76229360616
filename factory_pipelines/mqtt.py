"""Connecting to the MQTT broker named by `FACTORY_MQTT_URL` (paho-mqtt 2.x, MQTT v5)."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# Longest a persistent session survives on the broker while its client is away (1 week).
PERSISTENT_SESSION_EXPIRY_S = 7 * 24 * 3600


def broker_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 1883


def make_client(client_id: str, *, manual_ack: bool = False) -> mqtt.Client:
    """An MQTT v5 client with paho's 2.x callback API; reconnects with backoff by itself."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    return client


def connect_properties(*, session_expiry_s: int | None = None, receive_maximum: int | None = None) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    if session_expiry_s is not None:
        props.SessionExpiryInterval = session_expiry_s
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    return props


def connect(
    client: mqtt.Client,
    url: str,
    *,
    clean_start: bool = True,
    session_expiry_s: int | None = None,
    receive_maximum: int | None = None,
    keepalive: int = 30,
) -> None:
    """Start connecting; a persistent session needs clean_start=False and a session expiry."""
    host, port = broker_address(url)
    client.connect(
        host,
        port,
        keepalive=keepalive,
        clean_start=clean_start,
        properties=connect_properties(session_expiry_s=session_expiry_s, receive_maximum=receive_maximum),
    )


def broker_reachable(url: str, timeout: float = 2.0) -> bool:
    """True when an MQTT broker completes a CONNECT handshake at `url` within `timeout`."""
    host, port = broker_address(url)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError:
        return False
    connected = threading.Event()
    client = make_client(f"factory-probe-{threading.get_ident()}")

    def _on_connect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if not getattr(reason, "is_failure", False):
            connected.set()

    client.on_connect = _on_connect
    try:
        client.connect(host, port, keepalive=10)
        client.loop_start()
        return connected.wait(timeout)
    except OSError:
        return False
    finally:
        client.loop_stop()
        client.disconnect()
