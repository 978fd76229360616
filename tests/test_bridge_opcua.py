"""The SCADA bridge's OPC UA side: a real asyncua client against the bridge fed by a real broker.

Each test runs its own bridge (state, MQTT feed, OPC UA server on a free port) for a site of its
own in the test's event loop, as `factory bridge` runs it, publishes on MQTT what a device or the
platform would, and browses, reads, subscribes and calls methods as a SCADA client. Blocking
calls (broker PUBACKs, the feed's threads) go through `asyncio.to_thread` so the server keeps
answering. The broker outage test starts and kills a Mosquitto of its own.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from asyncua import Client, Node, ua
from asyncua.crypto.cert_gen import dump_private_key_as_pem, generate_private_key, generate_self_signed_app_certificate
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.alert_model import AlertCandidate, AlertRecord
from factory_pipelines.api_keys import Role
from factory_pipelines.broker import start_local_broker
from factory_pipelines.command_book import CommandBook
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import (
    Alert,
    RobotTelemetry,
    Severity,
    alert_topic,
    command_topic,
    dump_payload,
    prediction_topic,
    telemetry_topic,
    utc_now,
)
from scada_bridge.commands import CommandSender
from scada_bridge.feed import BridgeFeed
from scada_bridge.opcua_server import (
    NAMESPACE_URI,
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
    UNECE_NAMESPACE,
    OpcUaBridgeServer,
    OpcUaConfigError,
    ensure_server_certificate,
    eu_information,
    parse_opcua_users,
)
from scada_bridge.state import BridgeState
from tests.conftest import MqttRecorder
from tests.device_publisher import Publisher
from tests.predictions import recent_prediction

pytestmark = pytest.mark.anyio
T = TypeVar("T")
GOOD = ua.StatusCodes.Good
STALE = ua.StatusCodes.UncertainLastUsableValue
CLIENT_URI = "urn:factory-pipelines:tests:opcua-client"
USERS = {"olga": ("op-pass:1", Role.OPERATOR), "vic": ("view-pass", Role.VIEWER)}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def site() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll an async `check` until it returns something truthy (the loop keeps serving meanwhile)."""
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.02)
    return result


@dataclass
class Bridge:
    site: str
    state: BridgeState
    feed: BridgeFeed
    sender: CommandSender
    server: OpcUaBridgeServer


@asynccontextmanager
async def running_bridge(
    mqtt_url: str,
    site: str,
    port: int,
    cert_dir: Path,
    *,
    security: str = "none",
    users: dict[str, tuple[str, Role]] | None = None,
    db_url: str | None = None,
    book: CommandBook | None = None,
    acknowledge: Callable[[str, str, str], AlertRecord] | None = None,
) -> AsyncIterator[Bridge]:
    state = BridgeState(site=site, max_assets=20)
    feed = BridgeFeed(state, mqtt_url, db_url=db_url, reconnect_max_delay_s=1.0)
    sender = CommandSender(site, feed.publish, book=book)
    server = OpcUaBridgeServer(
        state,
        host="127.0.0.1",
        port=port,
        security=security,
        users=users or {},
        cert_dir=cert_dir,
        commands=sender,
        acknowledge=acknowledge,
        site=site,
    )
    await server.start()
    feed.start()
    try:
        assert await asyncio.to_thread(feed.wait_connected, 10), "the bridge did not connect to the broker"
        yield Bridge(site, state, feed, sender, server)
    finally:
        await server.stop()
        await asyncio.to_thread(feed.stop)


@dataclass
class ClientCert:
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory: pytest.TempPathFactory) -> ClientCert:
    """A self-signed application certificate for the test client (as UaExpert or a PLC makes one)."""
    folder = tmp_path_factory.mktemp("opcua-client")
    key = generate_private_key()
    cert = generate_self_signed_app_certificate(
        key,
        CLIENT_URI,
        {"organizationName": "factory-pipelines tests"},
        [x509.UniformResourceIdentifier(CLIENT_URI), x509.DNSName(socket.gethostname())],
        [ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    paths = ClientCert(folder / "client_cert.der", folder / "client_key.pem")
    paths.cert.write_bytes(cert.public_bytes(Encoding.DER))
    paths.key.write_bytes(dump_private_key_as_pem(key))
    return paths


@asynccontextmanager
async def connected(
    endpoint: str,
    *,
    user: str | None = None,
    password: str | None = None,
    cert: ClientCert | None = None,
    mode: ua.MessageSecurityMode = ua.MessageSecurityMode.SignAndEncrypt,
) -> AsyncIterator[Client]:
    client = Client(endpoint, timeout=10)
    client.application_uri = CLIENT_URI
    if cert is not None:
        await client.set_security(
            SecurityPolicyBasic256Sha256, certificate=str(cert.cert), private_key=str(cert.key), mode=mode
        )
    if user is not None:
        client.set_user(user)
        client.set_password(password or "")
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()


async def asset_node(client: Client, site: str, asset: str, *path: str) -> Node:
    idx = await client.get_namespace_index(NAMESPACE_URI)
    names = ["Factory", site, asset, *path]
    return await client.nodes.objects.get_child([f"{idx}:{name}" for name in names])


async def site_node(client: Client, site: str, name: str) -> Node:
    idx = await client.get_namespace_index(NAMESPACE_URI)
    return await client.nodes.objects.get_child([f"{idx}:Factory", f"{idx}:{site}", f"{idx}:{name}"])


async def find(client: Client, site: str, asset: str, *path: str, timeout: float = 10.0) -> Node:
    """The node at Objects/Factory/{site}/{asset}/{path}, once the bridge has created it."""

    async def lookup() -> Node | None:
        try:
            return await asset_node(client, site, asset, *path)
        except ua.UaStatusCodeError:
            return None

    return await eventually(lookup, timeout, what=f"{asset}/{'/'.join(path)} in the address space")


async def read(node: Node) -> ua.DataValue:
    return await node.read_data_value(raise_on_bad_status=False)


async def holding(node: Node, value: Any, timeout: float = 10.0) -> ua.DataValue:
    """The node's DataValue once it holds `value` (whatever its status)."""

    async def check() -> ua.DataValue | None:
        current = await read(node)
        return current if current.Value.Value == value else None

    return await eventually(check, timeout, what=f"{value!r} at {node.nodeid.to_string()}")


class Changes:
    """An asyncua subscription handler: every data change with its arrival time."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[float, ua.DataValue]] = asyncio.Queue()

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        self.queue.put_nowait((time.perf_counter(), data.monitored_item.Value))

    async def next_where(self, check: Callable[[ua.DataValue], bool], timeout: float) -> tuple[float, ua.DataValue]:
        deadline = time.monotonic() + timeout
        while True:
            arrived, value = await asyncio.wait_for(self.queue.get(), max(0.01, deadline - time.monotonic()))
            if check(value):
                return arrived, value


# ---- settings (no network) --------------------------------------------------------------------


def test_users_setting_is_parsed_and_errors_never_show_a_password() -> None:
    users = parse_opcua_users(" olga:op:pass:operator , vic:secret:viewer,,")
    assert users == {"olga": ("op:pass", Role.OPERATOR), "vic": ("secret", Role.VIEWER)}
    assert parse_opcua_users(None) == {} and parse_opcua_users("") == {}
    for text, expected in (
        ("olga:hunter2:operator,vic-hunter3", "entry 2 must be USER:PASSWORD:ROLE"),
        ("olga:hunter2:root", "entry 1 (user 'olga'): role 'root' is not one of viewer, operator, admin"),
        ("olga::viewer", "entry 1 (user 'olga') has an empty password"),
        ("olga:hunter2:viewer,olga:hunter3:admin", "entry 2: user 'olga' is listed twice"),
    ):
        with pytest.raises(OpcUaConfigError) as error:
            parse_opcua_users(text)
        assert expected in str(error.value) and "hunter" not in str(error.value)


def test_secure_server_refuses_to_start_without_users(tmp_path: Path) -> None:
    with pytest.raises(OpcUaConfigError, match="'secure' but has no users: set FACTORY_OPCUA_USERS"):
        OpcUaBridgeServer(
            BridgeState(site="main"),
            host="127.0.0.1",
            port=4840,
            security="secure",
            users={},
            cert_dir=tmp_path,
            commands=None,
            acknowledge=None,
            site="main",
        )


def test_engineering_units_use_unece_codes() -> None:
    celsius = eu_information("degC")
    assert (celsius.UnitId, celsius.DisplayName.Text, celsius.NamespaceUri) == (4408652, "°C", UNECE_NAMESPACE)
    assert eu_information("%").UnitId == (ord("P") << 8) | ord("1")
    assert eu_information("g^2").UnitId == -1 and eu_information("g^2").DisplayName.Text == "g²"


# ---- browse and read, security none (the demo setting) ---------------------------------------


async def test_browse_and_read_values_just_published(
    mqtt_url: str, site: str, free_port: Callable[[], int], tmp_path: Path
) -> None:
    robot = f"{site}-robot"
    publisher = Publisher(mqtt_url)
    async with (
        running_bridge(mqtt_url, site, free_port(), tmp_path / "certs") as bridge,
        connected(bridge.server.endpoint) as client,
    ):  # anonymous: reads only
        robot_ts = datetime.now(UTC).replace(microsecond=250000) - timedelta(seconds=3)
        reading = {
            "asset_id": robot,
            "ts": robot_ts,
            "temperature": 47.25,
            "cycle_count": 123456,
            "state": "slow",
            "vibration": {"rms": 0.35},
        }
        await publisher.publish_async(
            telemetry_topic(site, robot), dump_payload(RobotTelemetry.model_validate(reading))
        )
        rul = recent_prediction("rul_lstm", robot, 812.5, "normal", rul_lower=640.0, rul_upper=990.5)
        await publisher.publish_async(prediction_topic("rul_lstm", robot), dump_payload(rul))

        temperature = await find(client, site, robot, "Telemetry", "robot", "temperature")
        value = await holding(temperature, 47.25)
        assert value.Value.Value == 47.25 and value.Value.VariantType == ua.VariantType.Double
        assert value.StatusCode.value == GOOD and value.SourceTimestamp == robot_ts
        units = await (await temperature.get_child("0:EngineeringUnits")).read_value()
        assert (units.UnitId, units.DisplayName.Text) == (4408652, "°C")
        assert (await temperature.read_description()).Text == "Bearing temperature (degC)."
        assert await temperature.read_type_definition() == ua.NodeId(ua.ObjectIds.AnalogUnitType)

        rms = await find(client, site, robot, "Telemetry", "robot", "vibration", "rms")
        rms_units = await (await rms.get_child("0:EngineeringUnits")).read_value()
        assert await rms.read_value() == 0.35 and rms_units.UnitId == (ord("K") << 16) | (ord("4") << 8) | ord("0")
        cycles = await find(client, site, robot, "Telemetry", "robot", "cycle_count")
        assert (await read(cycles)).Value == ua.Variant(123456, ua.VariantType.Int64)
        state = await find(client, site, robot, "Telemetry", "robot", "state")
        assert (await read(state)).Value == ua.Variant(1, ua.VariantType.Int32)  # code: slow
        assert "1 slow" in (await state.read_description()).Text
        with pytest.raises(ua.UaStatusCodeError):  # a point the robot never sent has no node
            await asset_node(client, site, robot, "Telemetry", "robot", "motor_current")

        score = await find(client, site, robot, "Predictions", "rul_lstm", "score")
        assert (await read(score)).Value.Value == 812.5
        lower = await find(client, site, robot, "Predictions", "rul_lstm", "rul_lower")
        assert (await lower.read_value(), (await read(lower)).SourceTimestamp) == (640.0, rul.produced_at)
        assert await (await asset_node(client, site, robot, "Quality")).read_value() == "good"
        connected_node = await site_node(client, site, "BrokerConnected")
        assert await connected_node.read_value() is True

        # An open alert: counts per severity and its id.
        alert = Alert(
            alert_id=f"A-{uuid.uuid4().hex[:8]}",
            severity=Severity.CRITICAL,
            source="rul_lstm",
            type="RUL_LOW",
            asset_id=robot,
            message="bearing worn",
            state="ACTIVE_UNACK",
        )
        await publisher.publish_async(alert_topic(alert.severity), dump_payload(alert))
        open_ids = await asset_node(client, site, robot, "Alerts", "OpenAlertIds")
        assert await eventually(lambda: _equals(open_ids, [alert.alert_id]), what="the open alert id")
        critical = await find(client, site, robot, "Alerts", "open_critical")
        info = await find(client, site, robot, "Alerts", "open_info")
        assert (await critical.read_value(), await info.read_value()) == (1, 0)
        assert await (await asset_node(client, site, robot, "Alerts", "unacknowledged")).read_value() == 1

        # A subscription sees the next reading within a second of its publish.
        changes = Changes()
        subscription = await client.create_subscription(20, changes)
        await subscription.subscribe_data_change(temperature)
        await changes.next_where(lambda v: v.Value.Value == 47.25, timeout=5)  # the initial value
        sent = time.perf_counter()
        await publisher.publish_async(telemetry_topic(site, robot), {"temperature": 48.5})
        arrived, latest = await changes.next_where(lambda v: v.Value.Value == 48.5, timeout=5)
        assert arrived - sent < 1.0, f"the new value took {arrived - sent:.3f} s"
        assert latest.StatusCode.value == GOOD

        # Anonymous readers may not call methods, and may not write.
        asset = await asset_node(client, site, robot)
        idx = await client.get_namespace_index(NAMESPACE_URI)
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await asset.call_method(f"{idx}:SendCommand", "stop", "")
        with pytest.raises(ua.UaStatusCodeError):
            await temperature.write_value(1.0)
    publisher.close()


async def _equals(node: Node, expected: Any) -> bool:
    return await node.read_value() == expected


# ---- methods over Basic256Sha256 SignAndEncrypt -----------------------------------------------


async def test_methods_need_the_operator_role_over_sign_and_encrypt(
    mqtt_url: str,
    site: str,
    free_port: Callable[[], int],
    tmp_path: Path,
    client_cert: ClientCert,
    mqtt_recorder: Callable[..., MqttRecorder],
) -> None:
    store = ServingStore(f"sqlite:///{tmp_path / 'serving.db'}")
    robot = f"{site}-robot"
    now = utc_now()
    raised = AlertBook(store.engine).raise_or_repeat(
        AlertCandidate(
            rule="rul_low",
            type="RUL_LOW",
            severity=Severity.WARNING,
            source="rul_lstm",
            asset_id=robot,
            message="RUL interval reaches 600 cycles",
            dedup_key=f"rul_low:{robot}",
            observed_at=now,
        ),
        now=now,
    )
    alert_id = raised.alert.alert_id

    def acknowledge(alert: str, by: str, comment: str) -> AlertRecord:
        return AlertBook(store.engine).acknowledge(alert, by=by, comment=comment or None, now=utc_now())

    cert_dir = tmp_path / "certs"
    recorder = mqtt_recorder(command_topic(site, robot))
    publisher = Publisher(mqtt_url)
    async with running_bridge(
        mqtt_url,
        site,
        free_port(),
        cert_dir,
        security="secure",
        users=USERS,
        db_url=str(store.engine.url),
        book=CommandBook(store.engine),
        acknowledge=acknowledge,
    ) as bridge:
        endpoint = bridge.server.endpoint
        await publisher.publish_async(telemetry_topic(site, robot), {"temperature": 41.0})
        server_cert = (cert_dir / SERVER_CERT_FILE).read_bytes()
        assert (cert_dir / SERVER_KEY_FILE).stat().st_mode & 0o077 == 0  # the key is the owner's only

        async with connected(endpoint, user="olga", password="op-pass:1", cert=client_cert) as operator:
            endpoints = await operator.get_endpoints()
            offered = {(e.SecurityPolicyUri.rsplit("#", 1)[-1], e.SecurityMode) for e in endpoints}
            assert offered == {
                ("Basic256Sha256", ua.MessageSecurityMode.Sign),
                ("Basic256Sha256", ua.MessageSecurityMode.SignAndEncrypt),
            }
            assert {e.ServerCertificate for e in endpoints} == {server_cert}
            assert all({t.TokenType for t in e.UserIdentityTokens} == {ua.UserTokenType.UserName} for e in endpoints), (
                "no anonymous token is offered"
            )

            idx = await operator.get_namespace_index(NAMESPACE_URI)
            open_ids = await find(operator, site, robot, "Alerts", "OpenAlertIds")
            assert await eventually(lambda: _equals(open_ids, [alert_id]), what="the stored alert over OPC UA")
            asset = await asset_node(operator, site, robot)

            command_id = await asset.call_method(f"{idx}:SendCommand", "slow", '{"factor": 0.5}')
            messages = await asyncio.to_thread(recorder.wait_for, lambda m: len(m) >= 1, 10, "the command on MQTT")
            command = json.loads(messages[0].payload)
            assert (command["command_id"], command["command"], command["parameters"], command["issued_by"]) == (
                command_id,
                "slow",
                {"factor": 0.5},
                "opcua:olga",
            )
            record = CommandBook(store.engine).get(command_id)
            assert record is not None and record.asset_id == robot and record.status == "sent"
            with pytest.raises(ua.uaerrors.BadInvalidArgument):
                await asset.call_method(f"{idx}:SendCommand", "slow", "[not an object")

            answer = json.loads(await asset.call_method(f"{idx}:AcknowledgeAlert", alert_id, "bearing ordered"))
            assert (answer["alert_id"], answer["state"], answer["acknowledged_by"]) == (
                alert_id,
                "ACTIVE_ACK",
                "opcua:olga",
            )
            stored = AlertBook(store.engine).get(alert_id)
            assert stored.acknowledged_by == "opcua:olga" and stored.ack_comment == "bearing ordered"
            with pytest.raises(ua.uaerrors.BadNotFound):
                await asset.call_method(f"{idx}:AcknowledgeAlert", "A-nope", "")

        async with connected(endpoint, user="vic", password="view-pass", cert=client_cert) as viewer:
            idx = await viewer.get_namespace_index(NAMESPACE_URI)
            temperature = await find(viewer, site, robot, "Telemetry", "robot", "temperature")
            assert await temperature.read_value() == 41.0  # viewers read
            asset = await asset_node(viewer, site, robot)
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                await asset.call_method(f"{idx}:SendCommand", "stop", "")
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                await asset.call_method(f"{idx}:AcknowledgeAlert", alert_id, "")
        assert bridge.sender.sent == 1

        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            async with connected(endpoint, user="olga", password="wrong", cert=client_cert):
                pass
        with pytest.raises(ua.uaerrors.BadIdentityTokenRejected):  # Sign works too, but never anonymously
            async with connected(endpoint, cert=client_cert, mode=ua.MessageSecurityMode.Sign):
                pass
    # A restart keeps the server's identity: the same certificate, so clients that trusted it still do.
    await ensure_server_certificate(cert_dir)
    assert (cert_dir / SERVER_CERT_FILE).read_bytes() == server_cert
    publisher.close()
    store.dispose()


# ---- broker outage ----------------------------------------------------------------------------


async def test_values_turn_uncertain_while_the_broker_is_away_then_good(
    site: str, free_port: Callable[[], int], tmp_path: Path
) -> None:
    port = free_port()
    broker = await asyncio.to_thread(start_local_broker, port, tmp_path / "broker", prefer="mosquitto")
    robot = f"{site}-robot"
    try:
        async with (
            running_bridge(broker.url, site, free_port(), tmp_path / "certs") as bridge,
            connected(bridge.server.endpoint) as client,
        ):
            publisher = Publisher(broker.url)
            await publisher.publish_async(telemetry_topic(site, robot), {"temperature": 50.5})
            publisher.close()
            temperature = await find(client, site, robot, "Telemetry", "robot", "temperature")
            first = await holding(temperature, 50.5)
            assert first.StatusCode.value == GOOD
            link = await site_node(client, site, "BrokerConnected")

            broker.process.kill()  # type: ignore[union-attr]
            await asyncio.to_thread(broker.process.wait, 10)  # type: ignore[union-attr]

            async def stale() -> ua.DataValue | None:
                value = await read(temperature)
                return value if value.StatusCode.value == STALE else None

            kept = await eventually(stale, what="UncertainLastUsableValue after the outage")
            assert kept.Value.Value == 50.5 and kept.SourceTimestamp == first.SourceTimestamp  # the last value stays
            assert await link.read_value() is False
            assert await (await asset_node(client, site, robot, "Quality")).read_value() == "stale"

            broker = await asyncio.to_thread(start_local_broker, port, tmp_path / "broker", prefer="mosquitto")
            await eventually(lambda: _equals(link, True), timeout=15, what="the bridge reconnected")
            assert (await read(temperature)).StatusCode.value == STALE  # nothing new about this robot yet
            publisher = Publisher(broker.url)
            await publisher.publish_async(telemetry_topic(site, robot), {"temperature": 52.0})
            publisher.close()

            assert (await holding(temperature, 52.0)).StatusCode.value == GOOD
            assert await (await asset_node(client, site, robot, "Quality")).read_value() == "good"
    finally:
        broker.stop()
