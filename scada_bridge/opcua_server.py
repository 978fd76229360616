"""The OPC UA server: asyncua 2.1 serving the bridge's live picture (`BridgeState`) to SCADA and HMI clients.

Address space (namespace `urn:factory-pipelines:scada-bridge`; string node ids, a point's variable is
`ns=<index>;s={site}/{asset_id}/{point key}`, e.g. `s=main/robot-01/robot/temperature`, stable across restarts):

    Objects/Factory/{site}/
        BrokerConnected                 Boolean: the bridge's MQTT connection is up
        {asset_id}/                     an Object per asset, created when the asset first appears
            Quality                     String: good / stale / bad (the asset's own quality)
            Telemetry/{kind}/...        a variable per telemetry point the asset has sent, e.g.
                                        Telemetry/robot/temperature, Telemetry/robot/vibration/rms
            Predictions/{model}/...     score, label (code), and the family's own fields (rul_lower, rul_upper)
            Alerts/open_info, open_warning, open_critical   Int64 counts of open (not cleared) alerts
            Alerts/unacknowledged       Int64 open alerts nobody acknowledged
            Alerts/OpenAlertIds         String[]: ids of the asset's open alerts, newest first
            AcknowledgeAlert(alert_id: String, comment: String) -> String (the acknowledged alert, JSON)
            SendCommand(command: String, parameters_json: String) -> String (the command id)

A variable appears once the asset has a value for its point (the point list is
`scada_bridge.points.POINTS`; its key, without the `prediction/` or `alerts/` prefix, is the path
under the group folder). Types follow the point's kind: analog Double (AnalogUnitType with an
`EngineeringUnits` EUInformation property, UNECE Rec 20 codes in `UNECE_UNITS`; BaseAnalogType when
unitless), counts Int64, codes Int32 (the table is in the description). Every value is written as
a DataValue with the device's SourceTimestamp, the bridge's receipt as ServerTimestamp, and a
StatusCode: Good, UncertainLastUsableValue while the broker connection is down (the value kept is
the last one), Bad for a reading that is not a number (NaN, infinite).

Updates: `BridgeState` calls the listener on the MQTT thread; it only records which assets and
keys changed and wakes the server's asyncio loop (`call_soon_threadsafe`), where one pump task
reads the state and writes the nodes, so the feed never waits on OPC UA clients.

The methods sit on each asset object (an asset's commands and alerts belong to it) and go through
the same code as the REST API: `acknowledge` (AlertBook.acknowledge, as POST /alerts/{id}/ack) and
`commands` (CommandSender: recorded, then published QoS 1 on `factory/{site}/{asset}/cmd`). Only
operator and admin users may call them; viewers, anonymous readers and everyone else get
BadUserAccessDenied. They act as `opcua:{user}`.

Security (`opcua_security`):
- `secure` (the default): endpoints Basic256Sha256 Sign and SignAndEncrypt only, username and
  password users from `FACTORY_OPCUA_USERS` (`USER:PASSWORD:ROLE,...`), no anonymous access. The
  server's key and self-signed certificate are created under `cert_dir` on first start and kept
  (at a start after it expired or the host name changed, it is renewed with the same key). Client
  certificates are not pinned: any client certificate opens the channel, the password decides.
  Refuses to start without users.
- `none`: the local demo setting. NoSecurity only, anonymous clients read (viewer); configured
  users may still log in to call methods, but their passwords then cross the network in clear.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import json
import logging
import math
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from asyncua import Node, Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import USER_TYPES, SimpleRoleRuleset, User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import SecretStr

from factory_pipelines.alert_model import AlertRecord
from factory_pipelines.api_keys import Role
from factory_pipelines.command_book import MAX_COMMAND_CHARS
from factory_pipelines.telemetry import utc_now
from scada_bridge.commands import CommandNotSent, CommandSender
from scada_bridge.points import Point, PointGroup, ValueKind
from scada_bridge.state import AssetSnapshot, BridgeState, ChangeKind, Quality, StateChange

log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:factory-pipelines:scada-bridge"
APPLICATION_URI = "urn:factory-pipelines:scada-bridge:opcua"
ENDPOINT_PATH = "/factory/bridge/"
SERVER_CERT_FILE = "opcua_server_cert.der"
SERVER_KEY_FILE = "opcua_server_key.pem"
UNECE_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"
MAX_ALERT_ID_CHARS = 128
MAX_COMMENT_CHARS = 2000  # as the REST acknowledgement
MAX_PARAMETERS_CHARS = 8192
USERS_SETTING = "FACTORY_OPCUA_USERS"

Security = Literal["secure", "none"]
Acknowledge = Callable[[str, str, str], AlertRecord]

STATUS_OF_QUALITY: dict[Quality, int] = {
    Quality.GOOD: ua.StatusCodes.Good,
    Quality.STALE: ua.StatusCodes.UncertainLastUsableValue,
    Quality.BAD: ua.StatusCodes.Bad,
}

# UNECE Rec 20 common codes of the units the point list uses: unit -> (code, symbol, name).
# An empty code has no UNECE unit (UnitId -1): the symbol and name still tell the client.
UNECE_UNITS: dict[str, tuple[str, str, str]] = {
    "degC": ("CEL", "°C", "degree Celsius"),
    "A": ("AMP", "A", "ampere"),
    "Hz": ("HTZ", "Hz", "hertz"),
    "kW": ("KWT", "kW", "kilowatt"),
    "ms": ("C26", "ms", "millisecond"),
    "%": ("P1", "%", "percent"),
    "Pa": ("PAL", "Pa", "pascal"),
    "m": ("MTR", "m", "metre"),
    "ppm": ("59", "ppm", "part per million"),
    "dB(A)": ("2N", "dB(A)", "decibel (A-weighted)"),
    "g": ("K40", "g", "standard acceleration of free fall"),
    "1/m3": ("C86", "m⁻³", "reciprocal cubic metre"),
    "people": ("IE", "people", "person"),
    "g^2": ("", "g²", "squared standard acceleration (band power)"),
    "cycles": ("", "cycles", "cycles"),
    "units/h": ("", "units/h", "units produced per hour"),
    "alerts": ("", "alerts", "open alerts"),
}

GROUP_FOLDERS: dict[PointGroup, tuple[str, str]] = {
    PointGroup.TELEMETRY: ("Telemetry", "Latest telemetry per payload kind, as the device sent it."),
    PointGroup.PREDICTION: ("Predictions", "Latest prediction per model: score, label code and the model's fields."),
    PointGroup.ALERTS: ("Alerts", "The asset's open (not cleared) alerts."),
}
OPEN_ALERT_IDS = "OpenAlertIds"
UNACKNOWLEDGED = "unacknowledged"


class OpcUaConfigError(ValueError):
    """The OPC UA settings cannot give a server (secure without users, a bad users entry)."""


def parse_opcua_users(text: str | SecretStr | None) -> dict[str, tuple[str, Role]]:
    """`"alice:s3cret:operator, bob:pw:viewer"` as {user: (password, role)}; errors name the entry, never the password.

    The password is everything between the first and the last colon, so it may hold colons (not commas).
    """
    raw = text.get_secret_value() if isinstance(text, SecretStr) else text
    users: dict[str, tuple[str, Role]] = {}
    for number, entry in enumerate((raw or "").split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        user, sep, rest = entry.partition(":")
        password, sep2, role = rest.rpartition(":")
        user, role = user.strip(), role.strip()
        if not sep or not sep2 or not user:
            raise OpcUaConfigError(f"{USERS_SETTING} entry {number} must be USER:PASSWORD:ROLE")
        if not password:
            raise OpcUaConfigError(f"{USERS_SETTING} entry {number} (user {user!r}) has an empty password")
        if role not in Role.__members__.values():
            raise OpcUaConfigError(
                f"{USERS_SETTING} entry {number} (user {user!r}): role {role!r} is not one of {', '.join(Role)}"
            )
        if user in users:
            raise OpcUaConfigError(f"{USERS_SETTING} entry {number}: user {user!r} is listed twice")
        users[user] = (password, Role(role))
    return users


def eu_information(unit: str) -> ua.EUInformation:
    """OPC UA engineering units of a point's unit (UnitId from the UNECE code, -1 without one)."""
    code, symbol, name = UNECE_UNITS.get(unit, ("", unit, unit))
    unit_id = -1
    if code:
        unit_id = 0
        for char in code:
            unit_id = (unit_id << 8) | ord(char)
    return ua.EUInformation(
        NamespaceUri=UNECE_NAMESPACE,
        UnitId=unit_id,
        DisplayName=ua.LocalizedText(symbol),
        Description=ua.LocalizedText(name),
    )


async def ensure_server_certificate(cert_dir: Path) -> tuple[Path, Path]:
    """The server's (certificate, key), created on first use and kept; the key file is readable by its owner only."""
    cert_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = cert_dir / SERVER_CERT_FILE, cert_dir / SERVER_KEY_FILE
    await setup_self_signed_certificate(
        key_path,
        cert_path,
        APPLICATION_URI,
        socket.gethostname(),
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        {"commonName": "factory-pipelines SCADA bridge", "organizationName": "factory-pipelines"},
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path


# ---- users and rights -------------------------------------------------------------------------


@dataclass
class BridgeUser(User):
    """An asyncua session user that also carries the platform role (viewer / operator / admin)."""

    factory_role: Role = Role.VIEWER


ANONYMOUS = "anonymous"
# The user of the request being processed: asyncua runs a connection's requests one at a time in
# one task and does not pass the session to method callbacks, so the permission check records it.
_CALLER: contextvars.ContextVar[User | None] = contextvars.ContextVar("opcua_caller", default=None)


class _PasswordUsers(UserManager):
    """Username/password users from settings; anonymous clients only when allowed (security none)."""

    def __init__(self, users: dict[str, tuple[str, Role]], *, allow_anonymous: bool) -> None:
        self._users = users
        self._allow_anonymous = allow_anonymous

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username is None:
            if self._allow_anonymous:
                return BridgeUser(role=UserRole.User, name=ANONYMOUS, factory_role=Role.VIEWER)
            return None
        known = self._users.get(username)
        expected = known[0] if known else "\0unknown user"  # compare anyway: the time tells nothing
        if not hmac.compare_digest((password or "").encode(), expected.encode()) or known is None:
            log.warning("OPC UA login refused for user %r", username)
            return None
        return BridgeUser(role=UserRole.User, name=username, factory_role=known[1])


class _BridgeRuleset(SimpleRoleRuleset):
    """Read, browse, subscribe and call for every logged-in user; no writes, no address space changes."""

    def __init__(self) -> None:
        super().__init__()
        write = ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary)
        self._allowed = {ua.NodeId(t) for t in USER_TYPES} - {write}

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: Any) -> bool:
        _CALLER.set(user)
        return isinstance(user, BridgeUser) and action_type_id in self._allowed


def _caller() -> BridgeUser | None:
    user = _CALLER.get()
    return user if isinstance(user, BridgeUser) else None


# ---- the server -------------------------------------------------------------------------------


@dataclass
class _AssetNodes:
    asset_id: str
    node: Node
    folders: dict[PointGroup, ua.NodeId]
    quality: ua.NodeId
    open_ids: ua.NodeId
    unacknowledged: ua.NodeId
    variables: dict[str, ua.NodeId] = field(default_factory=dict)  # point key -> node


class OpcUaBridgeServer:
    """Serves a `BridgeState` over OPC UA; methods go through `acknowledge` and `commands` as REST does."""

    def __init__(
        self,
        state: BridgeState,
        *,
        host: str,
        port: int,
        security: str,
        users: dict[str, tuple[str, Role]],
        cert_dir: Path,
        commands: CommandSender | None,
        acknowledge: Acknowledge | None,
        site: str,
    ) -> None:
        if security not in ("secure", "none"):
            raise OpcUaConfigError(f"opcua_security must be 'secure' or 'none', got {security!r}")
        if security == "secure" and not users:
            raise OpcUaConfigError(
                f"the OPC UA server is set to 'secure' but has no users: set {USERS_SETTING}=USER:PASSWORD:ROLE,... "
                "(roles viewer, operator, admin), or opcua_security: none for a local demo"
            )
        self.state = state
        self.host = host
        self.port = port
        self.security: Security = "secure" if security == "secure" else "none"
        self.users = dict(users)
        self.cert_dir = Path(cert_dir)
        self.commands = commands
        self.acknowledge = acknowledge
        self.site = site
        self.points: dict[str, Point] = {p.key: p for p in state.points}
        self._server: Server | None = None
        self._idx = 0
        self._site_node: ua.NodeId | None = None
        self._broker_node: ua.NodeId | None = None
        self._assets: dict[str, _AssetNodes] = {}
        self._asset_of_node: dict[ua.NodeId, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._pump: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._pending_lock = threading.Lock()
        self._pending: dict[str, set[str] | None] = {}  # asset -> changed keys (None: all)
        self._pending_all = False
        self._wake_pending = False
        self.updates = 0  # asset refreshes written, for diagnostics and tests

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"opc.tcp://{host}:{self.port}{ENDPOINT_PATH}"

    # ---- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the address space and listen; returns once clients can connect."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        server = Server(user_manager=_PasswordUsers(self.users, allow_anonymous=self.security == "none"))
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"factory-pipelines SCADA bridge ({self.site})")
        await server.set_application_uri(APPLICATION_URI)
        if self.security == "secure":
            cert_path, key_path = await ensure_server_certificate(self.cert_dir)
            await server.load_certificate(str(cert_path))
            await server.load_private_key(str(key_path))
            policies = [
                ua.SecurityPolicyType.Basic256Sha256_Sign,
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ]
            tokens: list[type] = [ua.UserNameIdentityToken]
        else:
            policies = [ua.SecurityPolicyType.NoSecurity]
            tokens = [ua.AnonymousIdentityToken] + ([ua.UserNameIdentityToken] if self.users else [])
        server.set_security_policy(policies, permission_ruleset=_BridgeRuleset())
        server.set_identity_tokens(tokens)
        self._server = server
        self._idx = await server.register_namespace(NAMESPACE_URI)
        await self._build_site()

        self._unsubscribe = self.state.subscribe(self._on_change)
        with self._pending_lock:
            self._pending_all = True
        self._pump = asyncio.create_task(self._run_pump(), name="opcua-bridge-pump")
        self._wake.set()
        try:
            await server.start()  # on failure asyncua has stopped its internal server already
        except BaseException:
            self._server = None
            await self.stop()
            raise
        log.info("OPC UA server listening on %s (security %s)", self.endpoint, self.security)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None
        if self._server is not None:
            await self._server.stop()
            self._server = None

    # ---- state changes: MQTT thread -> loop -------------------------------------------------------

    def _on_change(self, change: StateChange) -> None:
        """On the feed's thread: note what changed and wake the loop; never waits on the server."""
        with self._pending_lock:
            if change.kind == ChangeKind.CONNECTION:
                self._pending_all = True
            elif change.asset_id is not None:
                keys = self._pending.get(change.asset_id, set())
                if change.kind == ChangeKind.VALUES and change.keys and keys is not None:
                    keys.update(change.keys)
                    self._pending[change.asset_id] = keys
                elif change.kind == ChangeKind.ALERTS and keys is not None:
                    keys.update(k for k, p in self.points.items() if p.group == PointGroup.ALERTS)
                    keys.add(OPEN_ALERT_IDS)
                    self._pending[change.asset_id] = keys
                else:
                    self._pending[change.asset_id] = None
            else:
                return
            if self._wake_pending:
                return
            self._wake_pending = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    async def _run_pump(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._apply_pending()
            except Exception:  # a bug here must not stop later updates
                log.exception("OPC UA bridge update failed")

    def _take_pending(self) -> tuple[bool, dict[str, set[str] | None]]:
        with self._pending_lock:
            everything, self._pending_all = self._pending_all, False
            pending, self._pending = self._pending, {}
            self._wake_pending = False
        if everything:
            pending = dict.fromkeys(self.state.assets())
        return everything, pending

    async def _apply_pending(self) -> None:
        if self._server is None:
            return
        everything, pending = self._take_pending()
        if everything:
            await self._write(self._broker_node, ua.Variant(self.state.connected, ua.VariantType.Boolean))
        for asset_id, keys in pending.items():
            try:
                await self._refresh_asset(asset_id, keys)
            except Exception:
                log.exception("OPC UA nodes of asset %s not updated", asset_id)

    # ---- address space -----------------------------------------------------------------------

    def _nid(self, *parts: str) -> ua.NodeId:
        return ua.NodeId("/".join((self.site, *parts)), self._idx)

    def _qname(self, name: str) -> ua.QualifiedName:
        return ua.QualifiedName(name, self._idx)

    def _object_item(
        self, nodeid: ua.NodeId, parent: ua.NodeId, name: str, description: str, *, folder: bool, organizes: bool
    ) -> ua.AddNodesItem:
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = nodeid
        item.BrowseName = self._qname(name)
        item.NodeClass = ua.NodeClass.Object
        item.ParentNodeId = parent
        item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.Organizes if organizes else ua.ObjectIds.HasComponent)
        item.TypeDefinition = ua.NodeId(ua.ObjectIds.FolderType if folder else ua.ObjectIds.BaseObjectType)
        attrs = ua.ObjectAttributes()
        attrs.DisplayName = ua.LocalizedText(name)
        attrs.Description = ua.LocalizedText(description)
        attrs.EventNotifier = 0
        item.NodeAttributes = attrs
        return item

    def _variable_item(
        self,
        nodeid: ua.NodeId,
        parent: ua.NodeId,
        name: str,
        description: str,
        datatype: int,
        *,
        typedef: int = ua.ObjectIds.BaseDataVariableType,
        reference: int = ua.ObjectIds.HasComponent,
        array: bool = False,
        value: ua.Variant | None = None,
        qualified: ua.QualifiedName | None = None,
    ) -> ua.AddNodesItem:
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = nodeid
        item.BrowseName = qualified or self._qname(name)
        item.NodeClass = ua.NodeClass.Variable
        item.ParentNodeId = parent
        item.ReferenceTypeId = ua.NodeId(reference)
        item.TypeDefinition = ua.NodeId(typedef)
        attrs = ua.VariableAttributes()
        attrs.DisplayName = ua.LocalizedText(name)
        attrs.Description = ua.LocalizedText(description)
        attrs.DataType = ua.NodeId(datatype)
        attrs.Value = value if value is not None else ua.Variant()
        attrs.ValueRank = ua.ValueRank.OneDimension if array else ua.ValueRank.Scalar
        attrs.ArrayDimensions = [0] if array else None
        attrs.AccessLevel = ua.AccessLevel.CurrentRead.mask
        attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
        attrs.WriteMask = 0
        attrs.UserWriteMask = 0
        attrs.Historizing = False
        item.NodeAttributes = attrs
        return item

    async def _add(self, items: list[ua.AddNodesItem]) -> None:
        assert self._server is not None
        results = await self._server.iserver.isession.add_nodes(items)
        for item, result in zip(items, results, strict=True):
            if not result.StatusCode.is_good():
                raise RuntimeError(f"OPC UA node {item.RequestedNewNodeId} not added: {result.StatusCode.name}")

    async def _build_site(self) -> None:
        assert self._server is not None
        objects = ua.NodeId(ua.ObjectIds.ObjectsFolder)
        factory = ua.NodeId("Factory", self._idx)
        self._site_node = self._nid()
        self._broker_node = self._nid("BrokerConnected")
        await self._add(
            [
                self._object_item(factory, objects, "Factory", "The plant, per site.", folder=True, organizes=True),
                self._object_item(
                    self._site_node, factory, self.site, f"Assets of site {self.site}.", folder=True, organizes=True
                ),
                self._variable_item(
                    self._broker_node,
                    self._site_node,
                    "BrokerConnected",
                    "True while the bridge is connected to the MQTT broker; values turn Uncertain while it is not.",
                    ua.ObjectIds.Boolean,
                    reference=ua.ObjectIds.Organizes,
                    value=ua.Variant(False, ua.VariantType.Boolean),
                ),
            ]
        )

    async def _create_asset(self, asset_id: str) -> _AssetNodes:
        assert self._server is not None and self._site_node is not None
        node_id = self._nid(asset_id)
        folders = {group: self._nid(asset_id, name) for group, (name, _) in GROUP_FOLDERS.items()}
        alerts = folders[PointGroup.ALERTS]
        nodes = _AssetNodes(
            asset_id=asset_id,
            node=self._server.get_node(node_id),
            folders=folders,
            quality=self._nid(asset_id, "Quality"),
            open_ids=self._nid(asset_id, "Alerts", OPEN_ALERT_IDS),
            unacknowledged=self._nid(asset_id, "Alerts", UNACKNOWLEDGED),
        )
        items = [
            self._object_item(node_id, self._site_node, asset_id, f"Asset {asset_id}.", folder=False, organizes=True),
            self._variable_item(
                nodes.quality,
                node_id,
                "Quality",
                "The asset's quality: good while any value is current, stale after a broker outage, bad without any.",
                ua.ObjectIds.String,
            ),
            *(
                self._object_item(folders[group], node_id, name, text, folder=True, organizes=False)
                for group, (name, text) in GROUP_FOLDERS.items()
            ),
            self._variable_item(
                nodes.open_ids,
                alerts,
                OPEN_ALERT_IDS,
                "Ids of the asset's open alerts, newest first (acknowledge one with AcknowledgeAlert).",
                ua.ObjectIds.String,
                reference=ua.ObjectIds.Organizes,
                array=True,
            ),
            self._variable_item(
                nodes.unacknowledged,
                alerts,
                UNACKNOWLEDGED,
                "Open alerts of the asset that nobody acknowledged yet.",
                ua.ObjectIds.Int64,
                reference=ua.ObjectIds.Organizes,
            ),
        ]
        await self._add(items)
        await self._add_methods(nodes.node, asset_id)
        self._assets[asset_id] = nodes
        self._asset_of_node[node_id] = asset_id
        return nodes

    async def _add_methods(self, node: Node, asset_id: str) -> None:
        def arg(name: str, description: str) -> ua.Argument:
            return ua.Argument(
                Name=name,
                DataType=ua.NodeId(ua.ObjectIds.String),
                ValueRank=ua.ValueRank.Scalar,
                ArrayDimensions=[],
                Description=ua.LocalizedText(description),
            )

        ack = await node.add_method(
            self._nid(asset_id, "AcknowledgeAlert"),
            self._qname("AcknowledgeAlert"),
            self._acknowledge_alert,
            [arg("alert_id", "One of Alerts/OpenAlertIds."), arg("comment", "Why, or what was done (may be empty).")],
            [arg("alert", "The acknowledged alert as JSON: alert_id, state, acknowledged_at, acknowledged_by.")],
        )
        await ack.write_attribute(
            ua.AttributeIds.Description,
            ua.DataValue(ua.Variant(ua.LocalizedText("Acknowledge an alert of this asset (operator role)."))),
        )
        send = await node.add_method(
            self._nid(asset_id, "SendCommand"),
            self._qname("SendCommand"),
            self._send_command,
            [
                arg("command", "e.g. stop, slow, resume."),
                arg("parameters_json", 'A JSON object, e.g. {"factor": 0.5}; empty for none.'),
            ],
            [arg("command_id", "Follow it at GET /api/commands/{command_id}.")],
        )
        await send.write_attribute(
            ua.AttributeIds.Description,
            ua.DataValue(ua.Variant(ua.LocalizedText("Send a command to this asset over MQTT (operator role)."))),
        )

    def _point_path(self, point: Point) -> list[str]:
        """Folders then name under the group folder: robot/vibration/rms -> [robot, vibration, rms]."""
        parts = point.key.split("/")
        return parts[1:] if point.group != PointGroup.TELEMETRY else parts

    async def _create_variables(self, nodes: _AssetNodes, keys: Iterable[str]) -> None:
        items: list[ua.AddNodesItem] = []
        made_folders: set[ua.NodeId] = set()
        for key in keys:
            point = self.points.get(key)
            if point is None or key in nodes.variables:
                continue
            path = self._point_path(point)
            parent = nodes.folders[point.group]
            group_name = GROUP_FOLDERS[point.group][0]
            for depth in range(1, len(path)):
                folder = self._nid(nodes.asset_id, group_name, *path[:depth])
                if folder not in made_folders and self._server is not None:
                    made_folders.add(folder)
                    if folder not in self._server.iserver.aspace:
                        items.append(
                            self._object_item(
                                folder,
                                parent,
                                path[depth - 1],
                                f"{'/'.join(path[:depth])} points.",
                                folder=True,
                                organizes=True,
                            )
                        )
                parent = folder
            nodeid = self._nid(nodes.asset_id, key)
            datatype, typedef = _type_of(point)
            items.append(
                self._variable_item(
                    nodeid,
                    parent,
                    path[-1],
                    point.description,
                    datatype,
                    typedef=typedef,
                    reference=ua.ObjectIds.Organizes,
                )
            )
            if point.unit:
                items.append(
                    self._variable_item(
                        self._nid(nodes.asset_id, key, "EngineeringUnits"),
                        nodeid,
                        "EngineeringUnits",
                        f"Unit: {point.unit}.",
                        ua.ObjectIds.EUInformation,
                        typedef=ua.ObjectIds.PropertyType,
                        reference=ua.ObjectIds.HasProperty,
                        value=ua.Variant(eu_information(point.unit), ua.VariantType.ExtensionObject),
                        qualified=ua.QualifiedName("EngineeringUnits", 0),
                    )
                )
            nodes.variables[key] = nodeid
        if items:
            await self._add(items)

    async def _write(self, nodeid: ua.NodeId | None, value: ua.Variant, status: int = ua.StatusCodes.Good) -> None:
        assert self._server is not None and nodeid is not None
        now = utc_now()
        await self._server.write_attribute_value(
            nodeid, ua.DataValue(value, ua.StatusCode(status), SourceTimestamp=now, ServerTimestamp=now)
        )

    async def _refresh_asset(self, asset_id: str, keys: set[str] | None) -> None:
        snapshot = self.state.snapshot(asset_id)
        if snapshot is None:
            return
        nodes = self._assets.get(asset_id) or await self._create_asset(asset_id)
        await self._create_variables(nodes, snapshot.values)
        assert self._server is not None
        for key, point_value in snapshot.values.items():
            if keys is not None and key not in keys:
                continue
            point = self.points.get(key)
            if point is None:
                continue
            await self._server.write_attribute_value(
                nodes.variables[key],
                ua.DataValue(
                    _variant(point, point_value.value),
                    ua.StatusCode(STATUS_OF_QUALITY[point_value.quality]),
                    SourceTimestamp=point_value.source_ts,
                    ServerTimestamp=point_value.received_at,
                ),
            )
        await self._write(nodes.quality, ua.Variant(snapshot.quality.name.lower(), ua.VariantType.String))
        if keys is None or OPEN_ALERT_IDS in keys or any(k.startswith("alerts/") for k in keys):
            await self._write_alert_list(nodes, snapshot)
        self.updates += 1

    async def _write_alert_list(self, nodes: _AssetNodes, snapshot: AssetSnapshot) -> None:
        counted = next((v for k, v in snapshot.values.items() if k.startswith("alerts/")), None)
        if counted is None:  # the bridge does not know the open alerts yet (no store, no broker yet)
            status = ua.StatusCodes.BadWaitingForInitialData
            await self._write(nodes.open_ids, ua.Variant([], ua.VariantType.String, is_array=True), status)
            await self._write(nodes.unacknowledged, ua.Variant(0, ua.VariantType.Int64), status)
            return
        status = STATUS_OF_QUALITY[counted.quality]
        ids = [a.alert_id for a in self.state.open_alerts_of(nodes.asset_id)]
        await self._write(nodes.open_ids, ua.Variant(ids, ua.VariantType.String, is_array=True), status)
        await self._write(
            nodes.unacknowledged, ua.Variant(snapshot.unacknowledged_alerts, ua.VariantType.Int64), status
        )

    # ---- methods -----------------------------------------------------------------------------

    def _operator(self, method: str, asset_id: str | None) -> BridgeUser | ua.StatusCode:
        user = _caller()
        if asset_id is None:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)
        if user is None or not user.factory_role.allows(Role.OPERATOR):
            log.warning("OPC UA %s on %s refused for %s", method, asset_id, user.name if user else "an unknown user")
            return ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)
        return user

    async def _acknowledge_alert(
        self, parent: ua.NodeId, alert_id: ua.Variant, comment: ua.Variant
    ) -> list[ua.Variant] | ua.StatusCode:
        asset_id = self._asset_of_node.get(parent)
        user = self._operator("AcknowledgeAlert", asset_id)
        if isinstance(user, ua.StatusCode):
            return user
        if self.acknowledge is None:
            return ua.StatusCode(ua.StatusCodes.BadNotSupported)
        wanted, text = _text(alert_id), _text(comment)
        if wanted is None or not 0 < len(wanted) <= MAX_ALERT_ID_CHARS or text is None or len(text) > MAX_COMMENT_CHARS:
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        known = {a.alert_id: a for a in self.state.open_alerts()}.get(wanted)
        if known is not None and known.asset_id != asset_id:
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)  # another asset's alert: call it there
        try:
            record = await asyncio.to_thread(self.acknowledge, wanted, f"opcua:{user.name}", text)
        except KeyError:
            return ua.StatusCode(ua.StatusCodes.BadNotFound)
        except Exception:
            log.exception("OPC UA AcknowledgeAlert %s: the alert store did not answer", wanted)
            return ua.StatusCode(ua.StatusCodes.BadResourceUnavailable)
        answer = {
            "alert_id": record.alert_id,
            "state": str(record.state),
            "acknowledged_at": record.acknowledged_at.isoformat() if record.acknowledged_at else None,
            "acknowledged_by": record.acknowledged_by,
        }
        log.info("OPC UA: %s acknowledged alert %s of %s", user.name, wanted, asset_id)
        return [ua.Variant(json.dumps(answer), ua.VariantType.String)]

    async def _send_command(
        self, parent: ua.NodeId, command: ua.Variant, parameters_json: ua.Variant
    ) -> list[ua.Variant] | ua.StatusCode:
        asset_id = self._asset_of_node.get(parent)
        user = self._operator("SendCommand", asset_id)
        if isinstance(user, ua.StatusCode):
            return user
        assert asset_id is not None
        if self.commands is None:
            return ua.StatusCode(ua.StatusCodes.BadNotSupported)
        name, raw = _text(command), _text(parameters_json)
        if name is None or not 0 < len(name) <= MAX_COMMAND_CHARS or raw is None or len(raw) > MAX_PARAMETERS_CHARS:
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        try:
            parameters = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        if not isinstance(parameters, dict):
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        try:
            sent = await asyncio.to_thread(
                self.commands.send, asset_id, name, parameters, issued_by=f"opcua:{user.name}"
            )
        except ValueError:
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        except CommandNotSent as exc:
            log.warning("OPC UA SendCommand %s to %s not sent: %s", name, asset_id, exc)
            return ua.StatusCode(ua.StatusCodes.BadNoCommunication)
        except Exception:
            log.exception("OPC UA SendCommand %s to %s failed", name, asset_id)
            return ua.StatusCode(ua.StatusCodes.BadResourceUnavailable)
        log.info("OPC UA: %s sent %s %s to %s", user.name, name, parameters or "", asset_id)
        return [ua.Variant(sent.command_id, ua.VariantType.String)]


def _type_of(point: Point) -> tuple[int, int]:
    """(DataType, TypeDefinition) of a point's variable."""
    if point.kind == ValueKind.COUNT:
        return ua.ObjectIds.Int64, ua.ObjectIds.BaseDataVariableType
    if point.kind == ValueKind.CODE:
        return ua.ObjectIds.Int32, ua.ObjectIds.BaseDataVariableType
    return ua.ObjectIds.Double, ua.ObjectIds.AnalogUnitType if point.unit else ua.ObjectIds.BaseAnalogType


def _variant(point: Point, value: float) -> ua.Variant:
    if not math.isfinite(value):  # BAD: the address space stores null for a bad status
        return ua.Variant(None, ua.VariantType.Null)
    if point.kind == ValueKind.COUNT:
        return ua.Variant(round(value), ua.VariantType.Int64)
    if point.kind == ValueKind.CODE:
        return ua.Variant(round(value), ua.VariantType.Int32)
    return ua.Variant(float(value), ua.VariantType.Double)


def _text(value: Any) -> str | None:
    """A method's String argument (asyncua passes Variants); None when it is not a string. Null reads as empty."""
    raw = value.Value if isinstance(value, ua.Variant) else value
    if raw is None:
        return ""
    return raw if isinstance(raw, str) else None
