"""Connecting to the MQTT broker named by `FACTORY_MQTT_URL` (paho-mqtt 2.x, MQTT v5 preferred).

Protocol choice. Our clients speak MQTT v5 (clean start + session expiry for persistent
sessions, ReceiveMaximum for flow control). The embedded fallback broker, amqtt 0.12, only
speaks MQTT 3.1.1: it answers a v5 CONNECT with "unacceptable protocol version". So `connect`
first probes the broker with a raw v5 CONNECT (`broker_protocol`, one loopback round trip, not
cached because a port may be reused by another broker) and, when v5 is refused, downgrades the
paho client to 3.1.1 in place (paho does the same itself when it falls back from 3.1.1 to 3.1):
`clean_start=False` then becomes `clean_session=False` (a persistent session with no expiry), and
`session_expiry_s` / `receive_maximum` are dropped. Callers keep using `make_client` + `connect`
unchanged. Code that needs v5-only features (shared subscriptions `$share/...`, subscribe
options, publish properties) checks `client.protocol == MQTTv5` after `connect`, or requires a
v5 broker such as Mosquitto (`supports_mqtt_v5`).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# Longest a persistent session survives on the broker while its client is away (1 week).
PERSISTENT_SESSION_EXPIRY_S = 7 * 24 * 3600

MQTTv5 = MQTTProtocolVersion.MQTTv5
MQTTv311 = MQTTProtocolVersion.MQTTv311

# CONNACK return codes meaning "I don't speak that protocol version" (3.1.1 code 0x01, v5 reason 0x84).
_UNSUPPORTED_PROTOCOL_CODES = frozenset({0x01, 0x84})


def broker_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 1883


def make_client(client_id: str, *, manual_ack: bool = False) -> mqtt.Client:
    """An MQTT v5 client with paho's 2.x callback API; reconnects with backoff by itself.

    `connect` downgrades it to 3.1.1 when the broker does not speak v5 (see the module docstring).
    """
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


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _v5_connect_packet(client_id: str, keepalive: int = 10) -> bytes:
    client_id_bytes = client_id.encode()
    variable_header = b"\x00\x04MQTT" + bytes([5, 0x02]) + keepalive.to_bytes(2, "big") + b"\x00"
    payload = len(client_id_bytes).to_bytes(2, "big") + client_id_bytes
    body = variable_header + payload
    return b"\x10" + _encode_varint(len(body)) + body


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection during the handshake")
        data += chunk
    return data


def broker_protocol(url: str, timeout: float = 2.0) -> MQTTProtocolVersion | None:
    """Which protocol the broker at `url` accepts from us: MQTTv5, MQTTv311, or None if none answers.

    Sends a raw v5 CONNECT and reads the CONNACK, so it works whatever the broker speaks.
    """
    host, port = broker_address(url)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_v5_connect_packet(f"factory-probe-{uuid.uuid4().hex[:12]}"))
            header = _recv_exactly(sock, 2)
            if header[0] != 0x20:
                return None
            length, shift, last = header[1] & 0x7F, 7, header[1]
            while last & 0x80:
                last = _recv_exactly(sock, 1)[0]
                length += (last & 0x7F) << shift
                shift += 7
            body = _recv_exactly(sock, length)
            if len(body) < 2:
                return None
            code = body[1]
            if code == 0x00:
                with contextlib.suppress(OSError):
                    sock.sendall(b"\xe0\x00")  # DISCONNECT, normal
                return MQTTv5
            if code in _UNSUPPORTED_PROTOCOL_CODES:
                return MQTTv311
            return None  # refused for another reason (e.g. not authorised)
    except (OSError, ConnectionError):
        return None


def supports_mqtt_v5(url: str, timeout: float = 2.0) -> bool:
    """True when the broker at `url` accepts MQTT v5 (needed for shared subscriptions)."""
    return broker_protocol(url, timeout) == MQTTv5


def connect(
    client: mqtt.Client,
    url: str,
    *,
    clean_start: bool = True,
    session_expiry_s: int | None = None,
    receive_maximum: int | None = None,
    keepalive: int = 30,
) -> None:
    """Start connecting; a persistent session needs clean_start=False and a session expiry.

    On a 3.1.1-only broker the client is downgraded first; clean_start=False then means
    clean_session=False, and the v5 properties are dropped.
    """
    host, port = broker_address(url)
    if client.protocol == MQTTv5 and broker_protocol(url) == MQTTv311:
        # paho reads _protocol when it builds CONNECT, and changes it itself when it falls back to 3.1.
        client._protocol = MQTTv311
    if client.protocol != MQTTv5:
        client._clean_session = bool(clean_start)  # 3.1.1: the session flag lives on the client
        client.connect(host, port, keepalive=keepalive)
        return
    client.connect(
        host,
        port,
        keepalive=keepalive,
        clean_start=clean_start,
        properties=connect_properties(session_expiry_s=session_expiry_s, receive_maximum=receive_maximum),
    )


def broker_reachable(url: str, timeout: float = 2.0) -> bool:
    """True when an MQTT broker completes a CONNECT handshake at `url` within `timeout`."""
    return broker_protocol(url, timeout) is not None


def connect_and_wait(
    client: mqtt.Client,
    url: str,
    *,
    timeout: float = 10.0,
    clean_start: bool = True,
    session_expiry_s: int | None = None,
    receive_maximum: int | None = None,
    keepalive: int = 30,
) -> None:
    """`connect`, start the network loop, and return once the broker accepted us.

    Raises ConnectionError (with the broker's reason) when it refuses or does not answer in time.
    Any `on_connect` already set on the client still runs, first on this connection and on every reconnect.
    """
    answered = threading.Event()
    outcome: list[object] = []
    user_on_connect = client.on_connect

    def _on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if user_on_connect is not None:  # first, so e.g. its subscriptions are sent before we return
            user_on_connect(c, userdata, flags, reason, properties)
        if not answered.is_set():
            outcome.append(reason)
            answered.set()

    client.on_connect = _on_connect
    try:
        connect(
            client,
            url,
            clean_start=clean_start,
            session_expiry_s=session_expiry_s,
            receive_maximum=receive_maximum,
            keepalive=keepalive,
        )
    except OSError as exc:
        raise ConnectionError(f"cannot reach the MQTT broker at {url}: {exc}") from exc
    client.loop_start()
    if not answered.wait(timeout):
        client.loop_stop()
        raise ConnectionError(f"the MQTT broker at {url} did not accept the connection within {timeout:.0f} s")
    reason = outcome[0]
    if getattr(reason, "is_failure", False):
        client.loop_stop()
        raise ConnectionError(f"the MQTT broker at {url} refused the connection: {reason}")


class BoundedPublisher:
    """Publishes with at most `max_pending` messages not yet acknowledged by the broker.

    paho 2.x fails beyond 65,535 unacknowledged QoS 1 messages (message ids collide), and an
    unbounded queue hides a broker that cannot keep up; `publish` blocks instead. Installs the
    client's `on_publish`, so every publish on that client must go through this object.
    """

    def __init__(self, client: mqtt.Client, *, max_pending: int = 1000) -> None:
        if not 0 < max_pending <= 60_000:
            raise ValueError(f"max_pending must be in 1..60000, got {max_pending}")
        self.client = client
        self.max_pending = max_pending
        self.acknowledged = 0
        self._pending = 0
        self._changed = threading.Condition()
        client.on_publish = self._on_publish

    @property
    def pending(self) -> int:
        with self._changed:
            return self._pending

    def _on_publish(self, _c: mqtt.Client, _u: Any, _mid: int, _reason: Any, _props: Any) -> None:
        with self._changed:
            self._pending -= 1
            self.acknowledged += 1
            self._changed.notify_all()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        abort: threading.Event | None = None,
        timeout: float | None = None,
        retain: bool = False,
    ) -> bool:
        """Queue one message, waiting while `max_pending` are unacknowledged.

        Returns False (message not sent) when `abort` is set or `timeout` passes while waiting.
        A QoS 1 message published while disconnected is kept by paho and sent after reconnecting.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._pending >= self.max_pending:
                if abort is not None and abort.is_set():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                # Bounded slices so that `abort` is noticed while the broker is away.
                self._changed.wait(0.25 if remaining is None else min(0.25, remaining))
            self._pending += 1
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        kept = info.rc == mqtt.MQTT_ERR_SUCCESS or (info.rc == mqtt.MQTT_ERR_NO_CONN and qos > 0)
        if not kept:
            with self._changed:
                self._pending -= 1
                self._changed.notify_all()
            raise ConnectionError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
        return True

    def flush(self, timeout: float) -> bool:
        """Wait until every published message is acknowledged; False if some are still pending."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._pending > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def close(self, flush_timeout: float = 10.0) -> bool:
        """Flush, then disconnect and stop the network loop; False if some messages stayed unacknowledged."""
        flushed = self.flush(flush_timeout)
        self.client.disconnect()
        self.client.loop_stop()
        return flushed


__all__ = [
    "BoundedPublisher",
    "connect_and_wait",
    "MQTTv5",
    "MQTTv311",
    "PERSISTENT_SESSION_EXPIRY_S",
    "broker_address",
    "broker_protocol",
    "broker_reachable",
    "connect",
    "connect_properties",
    "make_client",
    "supports_mqtt_v5",
]


def publish_confirmed(client: mqtt.Client, topic: str, payload: bytes, *, timeout: float) -> None:
    """Publish QoS 1 and wait for the broker's PUBACK: for a command, which must not sit in a queue.

    ConnectionError when the client cannot send it, TimeoutError when the broker does not confirm it in time.
    """
    info = client.publish(topic, payload, qos=1)
    if info.rc != mqtt.MQTT_ERR_SUCCESS:
        raise ConnectionError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
    try:
        info.wait_for_publish(timeout)
    except (RuntimeError, ValueError) as exc:
        raise ConnectionError(f"publish to {topic!r} failed: {exc}") from exc
    if not info.is_published():
        raise TimeoutError(f"the broker did not confirm the message on {topic!r} within {timeout:g} s")
