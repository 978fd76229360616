"""A local MQTT broker for development and tests, started only when none is reachable.

Mosquitto is used when it is installed (MQTT v5, shared subscriptions, persistence on disk);
otherwise the pure-Python amqtt broker runs in a subprocess (`python -m factory_pipelines.broker`).
amqtt 0.12 speaks only MQTT 3.1.1 and keeps sessions in memory: `mqtt.connect` downgrades our
clients transparently, but v5-only features (shared subscriptions) need Mosquitto.
Either broker runs as a child process, so `stop()` really ends it and frees the port.

For tests of broker security, Mosquitto can also be started with a TLS listener (`BrokerTls`)
and/or a password file (`users`); by default it is plain TCP and anonymous, as before. The
fallback that `ensure_broker` starts is always the plain one: a TLS URL needs the real broker.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import functools
import getpass
import ipaddress
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from paho.mqtt.enums import MQTTProtocolVersion

from factory_pipelines.mqtt import BrokerRefusedError, broker_protocol
from factory_pipelines.settings import FactorySettings

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 30


class BrokerStartError(RuntimeError):
    """The broker process did not come up; the message carries its log tail."""


@dataclass(frozen=True)
class BrokerTls:
    """The server side of a TLS listener (PEM files).

    With `client_ca_file`, clients must show a certificate signed by that CA (mutual TLS).
    """

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass
class RunningBroker:
    """A broker this process started; `stop()` (or leaving the `with` block) ends it."""

    url: str
    kind: str  # "mosquitto" or "amqtt"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None

    @property
    def protocol(self) -> MQTTProtocolVersion:
        """The newest MQTT version the broker speaks (amqtt: 3.1.1 only)."""
        return MQTTProtocolVersion.MQTTv5 if self.kind == "mosquitto" else MQTTProtocolVersion.MQTTv311

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; waits until the process has exited. Idempotent."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)

    def __enter__(self) -> RunningBroker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _port_in_use(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _password_file(data_dir: Path, users: Mapping[str, str]) -> Path:
    """A Mosquitto password file: written in plain text, then hashed in place (`mosquitto_passwd -U`),
    so no password appears on a command line."""
    mosquitto_passwd = shutil.which("mosquitto_passwd")
    if mosquitto_passwd is None:
        raise BrokerStartError("a broker with users needs mosquitto_passwd (package mosquitto) on PATH")
    for name in users:
        if not name or ":" in name:
            raise BrokerStartError(f"invalid broker user name {name!r}")
    path = data_dir / "passwords"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("".join(f"{name}:{password}\n" for name, password in users.items()))
    done = subprocess.run([mosquitto_passwd, "-U", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BrokerStartError(f"mosquitto_passwd -U {path} failed: {done.stderr.strip() or done.stdout.strip()}")
    return path


def _mosquitto_config(
    host: str, port: int, data_dir: Path, tls: BrokerTls | None = None, password_file: Path | None = None
) -> str:
    persistence_dir = data_dir / "persistence"
    persistence_dir.mkdir(parents=True, exist_ok=True)
    security = [f"allow_anonymous {'false' if password_file else 'true'}"]
    if password_file is not None:
        security.append(f"password_file {password_file}")
    if tls is not None:  # these options belong to the listener line above them
        security += [f"certfile {tls.cert_file}", f"keyfile {tls.key_file}"]
        if tls.client_ca_file is not None:
            security += [f"cafile {tls.client_ca_file}", "require_certificate true"]
    return "\n".join(
        [
            f"listener {port} {host}",
            *security,
            # Started as root, Mosquitto drops to the `mosquitto` user and then cannot write its
            # persistence file under our data dir: stay the user who started it.
            f"user {getpass.getuser()}",
            "persistence true",
            f"persistence_location {persistence_dir}/",
            "autosave_interval 60",
            # Keep every message of a persistent session while its collector is away.
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            # In-flight QoS 1/2 messages per 3.1.1 client (v5 clients negotiate ReceiveMaximum).
            "max_inflight_messages 1000",
            # No `set_tcp_nodelay true`: measured here, it raises a QoS 1 round trip on loopback
            # from 0.4 ms to 44 ms (delayed ACKs), with Mosquitto 2.0.11.
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "",
        ]
    )


def _broker_command(
    kind: str, host: str, port: int, data_dir: Path, tls: BrokerTls | None, users: Mapping[str, str] | None
) -> list[str]:
    if kind == "mosquitto":
        password_file = _password_file(data_dir, users) if users else None
        config_path = data_dir / "mosquitto.conf"
        config_path.write_text(_mosquitto_config(host, port, data_dir, tls, password_file))
        mosquitto = shutil.which("mosquitto")
        assert mosquitto is not None
        return [mosquitto, "-c", str(config_path)]
    return [sys.executable, "-m", "factory_pipelines.broker", "--host", host, "--port", str(port)]


def start_local_broker(
    port: int,
    data_dir: Path,
    *,
    prefer: Literal["auto", "mosquitto", "embedded"] = "auto",
    host: str = "127.0.0.1",
    tls: BrokerTls | None = None,
    users: Mapping[str, str] | None = None,
) -> RunningBroker:
    """Start a broker on host:port (Mosquitto if installed, else amqtt) and wait until it answers.

    `tls` makes it a TLS listener (the URL becomes mqtts://); `users` (name -> password) closes it to
    anonymous clients. Both need Mosquitto.
    """
    mosquitto_installed = shutil.which("mosquitto") is not None
    secured = tls is not None or bool(users)
    if (prefer == "mosquitto" or secured) and not mosquitto_installed:
        raise BrokerStartError("prefer='mosquitto', TLS or users need a mosquitto executable on PATH")
    if secured and prefer == "embedded":
        raise BrokerStartError("the embedded broker has no TLS or users; use prefer='mosquitto'")
    kind = "mosquitto" if prefer != "embedded" and mosquitto_installed else "amqtt"
    if _port_in_use(host, port):
        raise BrokerStartError(f"cannot start a broker on {host}:{port}: something already listens there")

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"{kind}.log"
    command = _broker_command(kind, host, port, data_dir, tls, users)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url_host = f"[{host}]" if ":" in host else host
    scheme = "mqtts" if tls is not None else "mqtt"
    broker = RunningBroker(url=f"{scheme}://{url_host}:{port}", kind=kind, process=process, log_path=log_path)
    atexit.register(broker.stop)

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if _answers(broker.url) and process.poll() is None:
            return broker
        # Waiting on the process doubles as the poll interval and notices an early exit at once.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.05)
        if process.poll() is not None:
            raise BrokerStartError(
                f"{kind} on {host}:{port} exited with code {process.returncode}; log {log_path}:\n{_log_tail(log_path)}"
            )
    broker.stop()
    raise BrokerStartError(
        f"{kind} on {host}:{port} did not answer within {START_TIMEOUT_S:.0f} s; log {log_path}:\n{_log_tail(log_path)}"
    )


def _answers(url: str) -> bool:
    """A broker answers at `url`, even if it refuses us (this probe has no credentials or CA): it is up."""
    try:
        return broker_protocol(url, timeout=0.5) is not None
    except BrokerRefusedError:
        return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ensure_broker(settings: FactorySettings) -> RunningBroker | None:
    """None when a broker lets us in at settings.mqtt_url; else start one there (plain TCP, loopback only).

    A broker that answers but refuses us (credentials, TLS) raises BrokerRefusedError naming the cause:
    starting another one on its port could not help.
    """
    connection = settings.mqtt_connection
    if broker_protocol(connection) is not None:
        return None
    host = settings.mqtt_host
    if not _is_loopback(host):
        raise BrokerStartError(
            f"no MQTT broker answers at {settings.mqtt_url}, and a local one can only be started on a loopback "
            "address; start the broker on that host or point FACTORY_MQTT_URL at a running one"
        )
    if connection.tls:
        raise BrokerStartError(
            f"no MQTT broker answers at {settings.mqtt_url}; the broker started for you speaks plain TCP only, "
            "so start your TLS broker there, or use an mqtt:// URL for a local one"
        )
    return start_local_broker(settings.mqtt_port, settings.data_path / "broker", host=host)


# ---- the embedded broker process ----


@functools.cache
def _accept_every_client_plugin() -> type:
    """amqtt auth plugin that lets everyone in without marking the session anonymous.

    amqtt never queues QoS 1 messages for an anonymous session while it is away, which would break
    our persistent sessions; its own AnonymousAuthPlugin marks every client anonymous.
    Built lazily (module `__getattr__`) so importing this module does not import amqtt.
    """
    from amqtt.plugins.base import BaseAuthPlugin
    from amqtt.session import Session

    class AcceptEveryClientAuthPlugin(BaseAuthPlugin):
        async def authenticate(self, *, session: Session) -> bool:
            return True

        @dataclass
        class Config:
            pass

    AcceptEveryClientAuthPlugin.__module__ = "factory_pipelines.broker"
    return AcceptEveryClientAuthPlugin


def __getattr__(name: str) -> Any:
    if name == "AcceptEveryClientAuthPlugin":
        return _accept_every_client_plugin()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _amqtt_config(host: str, port: int) -> dict[str, Any]:
    bind_host = f"[{host}]" if ":" in host else host
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{bind_host}:{port}"}},
        "plugins": {"factory_pipelines.broker.AcceptEveryClientAuthPlugin": {}},
    }


async def _serve_amqtt(host: str, port: int) -> None:
    from amqtt.broker import Broker

    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    broker = Broker(_amqtt_config(host, port), loop=loop)
    await broker.start()
    logging.getLogger(__name__).info("amqtt broker listening on %s:%d", host, port)
    await stop_requested.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> None:
    """Run the embedded amqtt broker in the foreground until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description="Embedded MQTT 3.1.1 broker (amqtt) for development and tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger(__name__).setLevel(logging.INFO)
    asyncio.run(_serve_amqtt(args.host, args.port))


if __name__ == "__main__":
    main()
