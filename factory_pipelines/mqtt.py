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

Security. `BrokerConnection` is the one description of how to reach the broker: the URL
(`mqtt://` plain TCP, `mqtts://` TLS), a username and password, the CA bundle that verifies the
broker and an optional client certificate. Every function here takes either that object or a
plain URL string (an anonymous connection; with `mqtts://`, verified against the system CAs).
`connect` applies the credentials and TLS to the paho client, and the raw probe does the same
(TLS socket, username and password in its CONNECT), so a protected broker never looks absent.
A broker that answers but will not let us in (bad credentials, an untrusted certificate, TLS on
one side only) raises `BrokerRefusedError` naming the cause, never "unreachable", and never
showing the password.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBACK, PUBCOMP
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

# Longest a persistent session survives on the broker while its client is away (1 week).
PERSISTENT_SESSION_EXPIRY_S = 7 * 24 * 3600

MQTTv5 = MQTTProtocolVersion.MQTTv5
MQTTv311 = MQTTProtocolVersion.MQTTv311

# URL scheme -> (TLS?, default port).
BROKER_SCHEMES: dict[str, tuple[bool, int]] = {"mqtt": (False, 1883), "tcp": (False, 1883), "mqtts": (True, 8883)}

# CONNACK return codes meaning "I don't speak that protocol version" (3.1.1 code 0x01, v5 reason 0x84).
_UNSUPPORTED_PROTOCOL_CODES = frozenset({0x01, 0x84})
# CONNACK reasons meaning "not with those credentials" (v5 0x86/0x87; paho maps 3.1.1's 4 and 5 onto them).
_NOT_AUTHORISED_CODES = frozenset({0x86, 0x87})
# First byte of a TLS record (handshake, alert): what a TLS listener answers to a plain CONNECT.
_TLS_RECORD_TYPES = frozenset({0x15, 0x16})


class BrokerRefusedError(ConnectionError):
    """The broker (or whatever listens there) answered but will not let us in; retrying as-is will not help.

    The message names the cause: not authorised, an untrusted certificate, TLS expected or not spoken.
    """


def parse_broker_url(url: str) -> tuple[bool, str, int]:
    """(tls, host, port) of a broker URL; ValueError for a URL no client can use.

    Credentials in the URL are refused: a URL ends up in logs and /health, a password must not.
    """
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ValueError(
            "FACTORY_MQTT_URL must not contain credentials (user:password@host); "
            "set FACTORY_MQTT_USERNAME and FACTORY_MQTT_PASSWORD instead"
        )
    if parts.scheme not in BROKER_SCHEMES or not parts.hostname:
        raise ValueError(f"FACTORY_MQTT_URL must look like mqtt://host:1883 or mqtts://host:8883, got {url!r}")
    tls, default_port = BROKER_SCHEMES[parts.scheme]
    return tls, parts.hostname, parts.port or default_port


@dataclass(frozen=True)
class BrokerConnection:
    """How to reach the broker: URL, credentials, TLS files. Built from settings (`settings.mqtt_connection`).

    Validated when built, so a missing file or a certificate without its key stops start-up with
    the setting named. `str()` is the URL alone and the password is left out of `repr()`, so the
    object may be logged.
    """

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None

    def __post_init__(self) -> None:
        tls, _host, _port = parse_broker_url(self.url)
        if self.password is not None and self.username is None:
            raise ValueError("FACTORY_MQTT_PASSWORD is set without FACTORY_MQTT_USERNAME")
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError(
                "mutual TLS needs both FACTORY_MQTT_CLIENT_CERT_FILE and FACTORY_MQTT_CLIENT_KEY_FILE, only one is set"
            )
        tls_files = {
            "FACTORY_MQTT_CA_FILE": self.ca_file,
            "FACTORY_MQTT_CLIENT_CERT_FILE": self.client_cert_file,
            "FACTORY_MQTT_CLIENT_KEY_FILE": self.client_key_file,
        }
        for setting, path in tls_files.items():
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{setting}={path}: no such file")
        named = [setting for setting, path in tls_files.items() if path is not None]
        if named and not tls:
            raise ValueError(f"{', '.join(named)} only apply to TLS: use an mqtts:// FACTORY_MQTT_URL")

    def __str__(self) -> str:
        return self.url

    @property
    def tls(self) -> bool:
        return parse_broker_url(self.url)[0]

    @property
    def host(self) -> str:
        return parse_broker_url(self.url)[1]

    @property
    def port(self) -> int:
        return parse_broker_url(self.url)[2]

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the broker's certificate and host name (the CA file, else the system CAs); offers ours if set."""
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.client_cert_file is not None and self.client_key_file is not None:
            context.load_cert_chain(certfile=str(self.client_cert_file), keyfile=str(self.client_key_file))
        return context


BrokerTarget = str | BrokerConnection
ClientT = TypeVar("ClientT", bound=mqtt.Client)


def as_connection(target: BrokerTarget) -> BrokerConnection:
    """A plain URL string means an anonymous connection (TLS with the system CAs for mqtts://)."""
    return target if isinstance(target, BrokerConnection) else BrokerConnection(target)


def broker_address(target: BrokerTarget) -> tuple[str, int]:
    connection = as_connection(target)
    return connection.host, connection.port


class GulpReadingClient(mqtt.Client):
    """A paho client that reads its socket in gulps of up to 64 KiB and hands paho the bytes it asks for.

    paho reads every packet with three or four `recv()` calls (the command byte, each byte of the
    remaining length, then the rest): a fifth of the collector's time in a backlog drain went there
    (py-spy on benchmarks/ingest.py). Reading ahead leaves bytes here that `select()` on the socket
    cannot see, so only a loop that asks `buffered_bytes()` before it waits may drive this client
    (the collector's `_network_step`); paho's own `loop()` still works, but may wait out its
    timeout with packets in hand. The gulp belongs to one socket: after a reconnect it is dropped.
    """

    GULP_BYTES = 65536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gulp = b""
        self._gulp_at = 0
        self._gulp_socket: object = None

    def buffered_bytes(self) -> int:
        """Bytes read from the socket (or decrypted by TLS) that paho has not yet taken."""
        sock = self._sock
        if sock is None:
            return 0
        held = len(self._gulp) - self._gulp_at if sock is self._gulp_socket else 0
        pending = getattr(sock, "pending", None)  # TLS decrypts whole records: select() cannot see the rest
        return held + (pending() if pending is not None else 0)

    def ack_all(self, acks: Iterable[tuple[int, int]]) -> None:
        """Acknowledge (mid, qos) pairs as `ack` does, with one `send()` for all of them rather than one each.

        paho writes every acknowledgement as soon as it is queued; here they are queued with writing
        held back (paho's documented external-loop hook), then the PUBACK and PUBCOMP packets this
        queued are joined into one, which paho writes as any other (a partial write resumes later).
        """
        queued = self._out_packet
        before = len(queued)
        self.on_socket_register_write = _hold_write
        try:
            for mid, qos in acks:
                self.ack(mid, qos)
        finally:
            self.on_socket_register_write = None
        ours = [queued.pop() for _ in range(len(queued) - before)][::-1]
        if len(ours) > 1 and all(packet["pos"] == 0 and packet["command"] in (PUBACK, PUBCOMP) for packet in ours):
            joined = b"".join(packet["packet"] for packet in ours)
            queued.append({**ours[-1], "packet": joined, "to_process": len(joined)})
        else:
            queued.extend(ours)
        self.loop_write()

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._sock is not self._gulp_socket:
            self._gulp, self._gulp_at, self._gulp_socket = b"", 0, self._sock
        if self._gulp_at >= len(self._gulp):
            gulp = super()._sock_recv(max(bufsize, self.GULP_BYTES))  # raises as paho expects: no data, errors
            if not gulp:
                return gulp  # the peer closed the connection
            self._gulp, self._gulp_at = gulp, 0
        start = self._gulp_at
        self._gulp_at = min(start + bufsize, len(self._gulp))
        return self._gulp[start : self._gulp_at]


def _hold_write(*_args: object) -> None:
    """Set as `on_socket_register_write`, it keeps paho from writing each packet as it is queued."""


def make_client(client_id: str, *, manual_ack: bool = False, client_class: type[ClientT] = mqtt.Client) -> ClientT:
    """An MQTT v5 client with paho's 2.x callback API; reconnects with backoff by itself.

    `connect` downgrades it to 3.1.1 when the broker does not speak v5 (see the module docstring),
    and applies the connection's credentials and TLS. A caller that drives the network loop
    itself may ask for a `GulpReadingClient`.
    """
    client = client_class(
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


def _length_prefixed(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def _v5_connect_packet(
    client_id: str, keepalive: int = 10, *, username: str | None = None, password: str | None = None
) -> bytes:
    flags = 0x02  # clean start
    payload = _length_prefixed(client_id.encode())
    if username is not None:
        flags |= 0x80
        payload += _length_prefixed(username.encode())
    if password is not None:
        flags |= 0x40
        payload += _length_prefixed(password.encode())
    variable_header = b"\x00\x04MQTT" + bytes([5, flags]) + keepalive.to_bytes(2, "big") + b"\x00"
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


def refusal_message(url: str, reason: ReasonCode | int) -> str:
    """Why the broker at `url` refused a CONNECT, in words an operator can act on."""
    code = reason if isinstance(reason, ReasonCode) else None
    if code is None:
        try:
            code = ReasonCode(PacketTypes.CONNACK, identifier=int(reason))
        except (KeyError, ValueError):
            return f"the MQTT broker at {url} refused the connection (reason code {int(reason):#04x})"
    if code.value in _NOT_AUTHORISED_CODES:
        return (
            f"the MQTT broker at {url} refused the connection: not authorised ({code}); "
            "check FACTORY_MQTT_USERNAME and FACTORY_MQTT_PASSWORD"
        )
    return f"the MQTT broker at {url} refused the connection: {code}"


def _tls_failure(connection: BrokerConnection, exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS: the certificate of the MQTT broker at {connection.url} was not accepted ({exc.verify_message}); "
            "FACTORY_MQTT_CA_FILE must name the CA that signed it, and the certificate must be issued for that host"
        )
    detail = exc.reason or exc.strerror or str(exc)
    if "CERTIFICATE_REQUIRED" in str(detail).upper():
        return (
            f"TLS: the MQTT broker at {connection.url} requires a client certificate "
            "(set FACTORY_MQTT_CLIENT_CERT_FILE and FACTORY_MQTT_CLIENT_KEY_FILE)"
        )
    return f"TLS handshake with the MQTT broker at {connection.url} failed ({detail}); {_tls_hints(connection)}"


def _tls_hints(connection: BrokerConnection) -> str:
    certificate = (
        "does the broker trust FACTORY_MQTT_CLIENT_CERT_FILE"
        if connection.client_cert_file
        else "does it require a client certificate (FACTORY_MQTT_CLIENT_CERT_FILE and FACTORY_MQTT_CLIENT_KEY_FILE)"
    )
    return f"is that port plain MQTT (then use mqtt://), or {certificate}?"


def _probe_connack(sock: socket.socket, connection: BrokerConnection) -> MQTTProtocolVersion | None:
    """Send our v5 CONNECT over an open stream and read the broker's CONNACK."""
    packet = _v5_connect_packet(
        f"factory-probe-{uuid.uuid4().hex[:12]}", username=connection.username, password=connection.password
    )
    sock.sendall(packet)
    try:
        header = _recv_exactly(sock, 2)
    except ConnectionError as exc:
        hint = "" if connection.tls else "; if that port expects TLS, use an mqtts:// URL"
        raise BrokerRefusedError(
            f"the MQTT broker at {connection.url} closed the connection without answering CONNECT{hint}"
        ) from exc
    if header[0] != 0x20:
        if not connection.tls and header[0] in _TLS_RECORD_TYPES:
            raise BrokerRefusedError(f"the port of {connection.url} speaks TLS: use an mqtts:// URL")
        return None  # something that is not an MQTT broker
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
    raise BrokerRefusedError(refusal_message(connection.url, code))


def broker_protocol(target: BrokerTarget, timeout: float = 2.0) -> MQTTProtocolVersion | None:
    """Which protocol the broker accepts from us: MQTTv5, MQTTv311, or None if nothing answers.

    Sends a raw v5 CONNECT (over TLS, with the credentials, as the connection says) and reads the
    CONNACK, so it works whatever the broker speaks. Raises BrokerRefusedError when a broker
    answers but will not let us in.
    """
    connection = as_connection(target)
    try:
        raw = socket.create_connection((connection.host, connection.port), timeout=timeout)
    except OSError:
        return None
    stream: socket.socket = raw
    try:
        raw.settimeout(timeout)
        if connection.tls:
            stream = connection.ssl_context().wrap_socket(raw, server_hostname=connection.host)
        return _probe_connack(stream, connection)
    except ssl.SSLError as exc:
        raise BrokerRefusedError(_tls_failure(connection, exc)) from exc
    except BrokerRefusedError:
        raise
    except TimeoutError:
        return None  # it accepted TCP but says nothing: not (yet) a broker we can use
    except OSError as exc:
        if connection.tls:  # reset during the TLS handshake: a plain listener hanging up on our ClientHello
            raise BrokerRefusedError(
                f"TLS handshake with the MQTT broker at {connection.url} failed ({exc}); {_tls_hints(connection)}"
            ) from exc
        return None
    finally:
        stream.close()
        raw.close()


def supports_mqtt_v5(target: BrokerTarget, timeout: float = 2.0) -> bool:
    """True when the broker accepts MQTT v5 (needed for shared subscriptions); False also when it refuses us."""
    try:
        return broker_protocol(target, timeout) == MQTTv5
    except BrokerRefusedError:
        return False


def broker_reachable(target: BrokerTarget, timeout: float = 2.0) -> bool:
    """True when an MQTT broker completes a CONNECT handshake with us within `timeout`.

    False also when a broker answers but refuses us; `broker_protocol` says why.
    """
    try:
        return broker_protocol(target, timeout) is not None
    except BrokerRefusedError:
        return False


def _apply_security(client: mqtt.Client, connection: BrokerConnection) -> None:
    """Credentials and TLS on the paho client, before it connects (TLS once per client: paho refuses twice)."""
    if connection.username is not None:
        client.username_pw_set(connection.username, connection.password)
    if connection.tls and client._ssl_context is None:
        client.tls_set_context(connection.ssl_context())


def connect(
    client: mqtt.Client,
    target: BrokerTarget,
    *,
    clean_start: bool = True,
    session_expiry_s: int | None = None,
    receive_maximum: int | None = None,
    keepalive: int = 30,
) -> None:
    """Start connecting; a persistent session needs clean_start=False and a session expiry.

    On a 3.1.1-only broker the client is downgraded first; clean_start=False then means
    clean_session=False, and the v5 properties are dropped. BrokerRefusedError when the broker
    answers the probe but refuses us (credentials, TLS); OSError when it cannot be reached.
    """
    connection = as_connection(target)
    _apply_security(client, connection)
    if client.protocol == MQTTv5 and broker_protocol(connection) == MQTTv311:
        # paho reads _protocol when it builds CONNECT, and changes it itself when it falls back to 3.1.
        client._protocol = MQTTv311
    if client.protocol != MQTTv5:
        client._clean_session = bool(clean_start)  # 3.1.1: the session flag lives on the client
        client.connect(connection.host, connection.port, keepalive=keepalive)
        return
    client.connect(
        connection.host,
        connection.port,
        keepalive=keepalive,
        clean_start=clean_start,
        properties=connect_properties(session_expiry_s=session_expiry_s, receive_maximum=receive_maximum),
    )


def connect_and_wait(
    client: mqtt.Client,
    target: BrokerTarget,
    *,
    timeout: float = 10.0,
    clean_start: bool = True,
    session_expiry_s: int | None = None,
    receive_maximum: int | None = None,
    keepalive: int = 30,
) -> None:
    """`connect`, start the network loop, and return once the broker accepted us.

    Raises ConnectionError (with the broker's reason) when it refuses or does not answer in time;
    BrokerRefusedError, a ConnectionError, when retrying as-is cannot help (credentials, TLS).
    Any `on_connect` already set on the client still runs, first on this connection and on every reconnect.
    """
    connection = as_connection(target)
    url = connection.url
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
            connection,
            clean_start=clean_start,
            session_expiry_s=session_expiry_s,
            receive_maximum=receive_maximum,
            keepalive=keepalive,
        )
    except BrokerRefusedError:
        raise
    except ssl.SSLError as exc:
        raise BrokerRefusedError(_tls_failure(connection, exc)) from exc
    except OSError as exc:
        raise ConnectionError(f"cannot reach the MQTT broker at {url}: {exc}") from exc
    client.loop_start()
    if not answered.wait(timeout):
        client.loop_stop()
        raise ConnectionError(f"the MQTT broker at {url} did not accept the connection within {timeout:.0f} s")
    reason = outcome[0]
    if getattr(reason, "is_failure", False):
        client.loop_stop()
        if isinstance(reason, ReasonCode) and reason.value in _NOT_AUTHORISED_CODES:
            raise BrokerRefusedError(refusal_message(url, reason))
        raise ConnectionError(refusal_message(url, reason) if isinstance(reason, ReasonCode) else str(reason))


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
    "BROKER_SCHEMES",
    "BoundedPublisher",
    "BrokerConnection",
    "BrokerRefusedError",
    "BrokerTarget",
    "as_connection",
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
    "parse_broker_url",
    "publish_confirmed",
    "refusal_message",
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
