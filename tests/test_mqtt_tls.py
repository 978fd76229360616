"""MQTT over TLS with passwords: a real Mosquitto with a TLS listener and a password file.

Every platform connection (collector process, API, simulator, Dagster publisher) must get in with
the FACTORY_MQTT_* settings, and every wrong setting must fail naming its cause, never showing the
password. The certificates are made here, per test module, with `cryptography`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fastapi.testclient import TestClient

from factory_pipelines.broker import BrokerStartError, BrokerTls, RunningBroker, ensure_broker, start_local_broker
from factory_pipelines.mqtt import (
    BrokerConnection,
    BrokerRefusedError,
    broker_protocol,
    broker_reachable,
    connect_and_wait,
    make_client,
)
from factory_pipelines.resources import MqttPublisherResource, build_resources
from factory_pipelines.settings import FactorySettings, load_settings
from factory_pipelines.simulator import FleetConfig, run_simulator
from factory_pipelines.telemetry import telemetry_topic
from factory_pipelines.windows import iter_sealed_keys, read_window
from sensors.collector import Collector
from serving.app import create_app
from tests.conftest import MqttRecorder, find_free_port
from tests.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
USER = "plant-gateway"
PASSWORD = "Tr0ub4dor-and-3-horses"  # distinctive: searched for in logs and error messages
WRONG_PASSWORD = "not-the-Tr0ub4dor"


# ---- a throwaway PKI ----


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_file: Path  # a CA that signed nothing here: the broker looks untrusted under it


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())  # EC: generated in milliseconds, unlike RSA


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    usage: x509.ObjectIdentifier | None,
) -> x509.Certificate:
    """A CA certificate (issuer None: self-signed) or a leaf for server or client authentication."""
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        hosts = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(hosts), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pem(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (directory / f"{name}.key").write_bytes(key_bytes)
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return directory / f"{name}.crt"


def make_pki(directory: Path) -> Pki:
    ca_key, other_key, server_key, client_key = _new_key(), _new_key(), _new_key(), _new_key()
    ca = _certificate("factory test CA", ca_key, None, ca_key, usage=None)
    other = _certificate("some other CA", other_key, None, other_key, usage=None)
    server = _certificate("broker", server_key, ca, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client = _certificate("collector-1", client_key, ca, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    server_cert = _write_pem(directory, "server", server, server_key)
    client_cert = _write_pem(directory, "client", client, client_key)
    return Pki(
        ca_file=_write_pem(directory, "ca", ca, ca_key),
        server_cert=server_cert,
        server_key=server_cert.with_suffix(".key"),
        client_cert=client_cert,
        client_key=client_cert.with_suffix(".key"),
        other_ca_file=_write_pem(directory, "other-ca", other, other_key),
    )


# ---- fixtures ----


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    """Mosquitto with only a TLS listener, no anonymous clients, one user."""
    tls = BrokerTls(pki.server_cert, pki.server_key)
    with start_local_broker(
        find_free_port(), tmp_path_factory.mktemp("tls-broker"), tls=tls, users={USER: PASSWORD}
    ) as broker:
        yield broker


def secure_settings(tmp_path: Path, broker: RunningBroker, pki: Pki, **overrides: object) -> FactorySettings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "mqtt_url": broker.url,
        "mqtt_username": USER,
        "mqtt_password": PASSWORD,
        "mqtt_ca_file": pki.ca_file,
        "site": f"tls{uuid.uuid4().hex[:8]}",
        "window_seconds": 1,
        "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    settings = load_settings(**{**values, **overrides})
    settings.ensure_dirs()
    return settings


@pytest.fixture
def publisher(secure_broker: RunningBroker, pki: Pki) -> Iterator[paho.Client]:
    """A device-side client, connected over TLS with the password."""
    client = make_client(f"test-device-{uuid.uuid4().hex[:8]}")
    connect_and_wait(client, BrokerConnection(secure_broker.url, USER, PASSWORD, pki.ca_file))
    yield client
    client.disconnect()
    client.loop_stop()


def publish(client: paho.Client, topic: str, body: dict[str, object]) -> None:
    info = client.publish(topic, json.dumps(body), qos=1)
    info.wait_for_publish(10)
    assert info.is_published(), f"the broker did not take the message on {topic}"


def reading(asset_id: str, seq: int) -> dict[str, object]:
    return {"asset_id": asset_id, "seq": seq, "ts": dt.datetime.now(dt.UTC).isoformat(), "Temperature_C": 61.5}


# ---- (a) + (e): the collector process ----


@pytest.mark.timeout(60)
def test_collector_process_seals_a_window_over_tls_and_never_logs_the_password(
    tmp_path: Path, secure_broker: RunningBroker, pki: Pki, publisher: paho.Client
) -> None:
    settings = secure_settings(tmp_path, secure_broker, pki, collector_id="tls-collector")
    # Exactly what `factory up` hands its children: the MQTT settings must travel in child_env.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY_")}
    env.update(settings.child_env(), FACTORY_COLLECTOR_ID="tls-collector", FACTORY_SITE=settings.site)
    env["FACTORY_LOG_LEVEL"] = "DEBUG"  # the most talkative level must not leak it either
    log_path = tmp_path / "collector.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "sensors.collector"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:

        def subscribed() -> bool:
            assert process.poll() is None, f"collector exited:\n{log_path.read_text()}"
            return "subscribed to" in log_path.read_text()

        wait_until(subscribed, timeout=30, what="the collector to subscribe over TLS")
        for seq in range(5):
            publish(publisher, telemetry_topic(settings.site, "press-tls"), reading("press-tls", seq))

        def sealed_rows() -> int:
            return sum(read_window(settings.windows_dir, key).height for key in iter_sealed_keys(settings.windows_dir))

        wait_until(lambda: sealed_rows() == 5, timeout=15, what="all five readings in sealed windows")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    log = log_path.read_text()
    assert secure_broker.url in log  # it did say where it connected
    assert PASSWORD not in log


# ---- (b): the API ----


@pytest.mark.timeout(40)
def test_api_health_and_live_feed_reach_the_tls_broker(
    tmp_path: Path, secure_broker: RunningBroker, pki: Pki, publisher: paho.Client
) -> None:
    settings = secure_settings(tmp_path, secure_broker, pki, allow_anonymous_read=True)
    app = create_app(settings)
    with TestClient(app) as api:
        health = api.get("/health")
        assert health.json()["components"]["broker"]["status"] == "up", health.text
        assert health.json()["components"]["broker"]["url"] == secure_broker.url
        assert PASSWORD not in health.text

        def live() -> dict[str, object]:
            return api.get("/api/telemetry/latest", params={"asset_id": "press-api"}).json()

        wait_until(lambda: live()["live"]["subscribed"], timeout=15, what="the live feed to subscribe over TLS")
        publish(publisher, telemetry_topic(settings.site, "press-api"), reading("press-api", 1))
        answer = wait_until(lambda: (body := live())["total"] == 1 and body, timeout=10, what="the reading")
        assert answer["items"][0]["asset_id"] == "press-api"
        app.state.serving.live.close()


# ---- (c): the simulator and the Dagster publisher ----


@pytest.mark.timeout(40)
def test_simulator_and_dagster_publisher_publish_over_tls(
    tmp_path: Path, secure_broker: RunningBroker, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = secure_settings(tmp_path, secure_broker, pki)
    connection = settings.mqtt_connection
    recorder = MqttRecorder(connection, f"factory/{settings.site}/#", "predictions/tls-probe/#")
    try:
        fleet = FleetConfig(
            machines=1, robots=0, cleanrooms=0, safety_stations=0, cameras=0, rate_hz=50, site=settings.site
        )
        stats = run_simulator(settings, fleet, max_messages=5)
        assert stats.telemetry == 5 and stats.unacknowledged == 0
        recorder.wait_for(lambda messages: len(messages) >= 5, what="the simulator's five readings")

        # The Dagster resource as the code location builds it: the password by name, never its value.
        monkeypatch.setenv("FACTORY_MQTT_PASSWORD", PASSWORD)
        resource = build_resources(settings)["mqtt"]
        assert isinstance(resource, MqttPublisherResource)
        assert isinstance(resource.mqtt_password, dg.EnvVar)

        @dg.asset
        def tls_probe(mqtt: MqttPublisherResource) -> int:
            sent = mqtt.publish([("predictions/tls-probe/press-1", b'{"score": 0.5}')], dg.get_dagster_logger())
            assert sent == 1
            return sent

        assert dg.materialize([tls_probe], resources={"mqtt": resource}).success
        recorder.wait_for(
            lambda messages: any(m.topic == "predictions/tls-probe/press-1" for m in messages),
            what="the resource's prediction",
        )
    finally:
        recorder.close()


# ---- (d): every wrong setting names its cause ----


def _connection_variants(url: str, pki: Pki) -> dict[str, tuple[BrokerConnection, str]]:
    plain_url = url.replace("mqtts://", "mqtt://")
    return {
        "wrong password": (BrokerConnection(url, USER, WRONG_PASSWORD, pki.ca_file), "not authorised"),
        "no credentials": (BrokerConnection(url, ca_file=pki.ca_file), "not authorised"),
        "unknown CA": (BrokerConnection(url, USER, PASSWORD, pki.other_ca_file), "certificate"),
        "system CAs": (BrokerConnection(url, USER, PASSWORD), "FACTORY_MQTT_CA_FILE"),
        "plain TCP to the TLS port": (BrokerConnection(plain_url, USER, PASSWORD), "mqtts://"),
    }


@pytest.mark.timeout(40)
@pytest.mark.parametrize(
    "case", ["wrong password", "no credentials", "unknown CA", "system CAs", "plain TCP to the TLS port"]
)
def test_a_wrong_setting_fails_naming_the_cause_without_the_password(
    case: str, secure_broker: RunningBroker, pki: Pki
) -> None:
    connection, cause = _connection_variants(secure_broker.url, pki)[case]
    client = make_client(f"test-wrong-{uuid.uuid4().hex[:8]}")
    with pytest.raises(BrokerRefusedError) as refused:
        connect_and_wait(client, connection, timeout=5)
    message = str(refused.value)
    assert cause in message
    assert "cannot reach" not in message and "unreachable" not in message
    assert PASSWORD not in message and WRONG_PASSWORD not in message
    assert not client.is_connected()
    assert broker_reachable(connection) is False  # /health says down, it does not raise


@pytest.mark.timeout(40)
def test_processes_given_a_wrong_password_say_so(
    tmp_path: Path,
    secure_broker: RunningBroker,
    pki: Pki,
    free_port: Callable[[], int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = secure_settings(tmp_path, secure_broker, pki, mqtt_password=WRONG_PASSWORD)
    # The collector keeps retrying (the password file may be fixed meanwhile), logging why, never the password.
    caplog.set_level(logging.DEBUG)
    stop = threading.Event()
    collector = threading.Thread(target=Collector(settings).run, args=(stop,), daemon=True)
    collector.start()
    try:
        wait_until(lambda: "not authorised" in caplog.text, timeout=10, what="the collector to log the refusal")
    finally:
        stop.set()
        collector.join(10)
    assert not collector.is_alive()
    assert WRONG_PASSWORD not in caplog.text and PASSWORD not in caplog.text
    # `factory up` / `factory broker` must not try to start a broker on a port where one refuses us.
    with pytest.raises(BrokerRefusedError, match="not authorised"):
        ensure_broker(settings)
    # The simulator stops at once with the cause.
    with pytest.raises(ConnectionError, match="not authorised") as refused:
        run_simulator(settings, FleetConfig(site=settings.site), max_messages=1)
    assert WRONG_PASSWORD not in str(refused.value)
    # Nothing answers on a TLS URL: the plain fallback broker is not started there.
    nobody = secure_settings(tmp_path, secure_broker, pki, mqtt_url=f"mqtts://127.0.0.1:{free_port()}")
    with pytest.raises(BrokerStartError, match="TLS broker"):
        ensure_broker(nobody)


# ---- mutual TLS ----


@pytest.mark.timeout(40)
def test_mutual_tls_needs_the_client_certificate(pki: Pki, tmp_path: Path) -> None:
    tls = BrokerTls(pki.server_cert, pki.server_key, client_ca_file=pki.ca_file)
    with start_local_broker(find_free_port(), tmp_path / "broker", tls=tls) as broker:
        without = BrokerConnection(broker.url, ca_file=pki.ca_file)
        with pytest.raises(BrokerRefusedError, match="client certificate"):
            broker_protocol(without)
        settings = load_settings(
            data_dir=tmp_path / "data",
            mqtt_url=broker.url,
            mqtt_ca_file=pki.ca_file,
            mqtt_client_cert_file=pki.client_cert,
            mqtt_client_key_file=pki.client_key,
        )
        client = make_client(f"test-mtls-{uuid.uuid4().hex[:8]}")
        connect_and_wait(client, settings.mqtt_connection, timeout=5)
        try:
            assert client.is_connected()
        finally:
            client.disconnect()
            client.loop_stop()
