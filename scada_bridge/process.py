"""The bridge process (`factory bridge`, also started by `factory up`): feed, Modbus TCP and OPC UA in one loop.

One `BridgeState` is kept current by the MQTT and store feed; the Modbus server renders registers
from it and the OPC UA server mirrors it into its address space. Commands from either protocol go
through one `CommandSender` (recorded in the store, published QoS 1), and alert acknowledgements
through the alert book, the same calls the REST API makes. Runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.alert_model import AlertRecord
from factory_pipelines.command_book import CommandBook
from factory_pipelines.settings import FactorySettings
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import utc_now
from scada_bridge.commands import CommandSender
from scada_bridge.feed import BridgeFeed
from scada_bridge.modbus_map import AssetSlots, RegisterMap, default_slots_path
from scada_bridge.modbus_server import ModbusBridgeServer
from scada_bridge.opcua_server import OpcUaBridgeServer, parse_opcua_users
from scada_bridge.state import BridgeState

log = logging.getLogger(__name__)


@dataclass
class Bridge:
    """Everything one bridge process runs, built from the settings; `serve` runs it until `stop` is set."""

    settings: FactorySettings
    state: BridgeState
    feed: BridgeFeed
    store: ServingStore
    commands: CommandSender
    modbus: ModbusBridgeServer
    opcua: OpcUaBridgeServer

    @classmethod
    def build(cls, settings: FactorySettings) -> Bridge:
        state = BridgeState(site=settings.site, max_assets=settings.bridge_max_assets)
        store = ServingStore(settings.resolved_db_url)
        feed = BridgeFeed(
            state,
            settings.mqtt_connection,
            db_url=settings.resolved_db_url,
            alert_resync_s=settings.bridge_alert_resync_s,
        )
        commands = CommandSender(settings.site, feed.publish, book=CommandBook(store.engine))
        slots = AssetSlots(settings.bridge_max_assets, default_slots_path(settings.data_path))
        register_map = RegisterMap(state, slots, writes_enabled=settings.modbus_writes_enabled)
        modbus = ModbusBridgeServer(
            register_map,
            host=settings.modbus_host,
            port=settings.modbus_port,
            commands=commands,
            writers=settings.modbus_writers,
        )
        opcua = OpcUaBridgeServer(  # raises OpcUaConfigError (a ValueError) for a secure server without users
            state,
            host=settings.opcua_host,
            port=settings.opcua_port,
            security=settings.opcua_security,
            users=parse_opcua_users(settings.opcua_users.get_secret_value() if settings.opcua_users else None),
            cert_dir=settings.data_path / "scada_bridge" / "pki",
            commands=commands,
            acknowledge=acknowledgement(store),
            site=settings.site,
        )
        return cls(settings, state, feed, store, commands, modbus, opcua)

    async def serve(self, stop: asyncio.Event, *, on_ready: Callable[[list[str]], None] | None = None) -> None:
        servers: list[ModbusBridgeServer | OpcUaBridgeServer] = [self.modbus, self.opcua]
        self.feed.start()
        started: list[ModbusBridgeServer | OpcUaBridgeServer] = []
        try:
            for server in servers:
                await server.start()
                started.append(server)
            if on_ready is not None:
                on_ready(self.endpoints())
            await stop.wait()
        finally:
            for server in reversed(started):
                try:
                    await server.stop()
                except Exception:  # one server failing to stop must not keep the others running
                    log.exception("stopping %s failed", type(server).__name__)
            await asyncio.to_thread(self.feed.stop)
            self.store.dispose()

    def endpoints(self) -> list[str]:
        s = self.settings
        return [
            f"Modbus TCP  {s.modbus_host}:{s.modbus_port} "
            f"(writes {f'on from {self.modbus.writers}' if s.modbus_writes_enabled else 'off'})",
            f"OPC UA      {self.opcua.endpoint} (security {s.opcua_security})",
        ]


def acknowledgement(store: ServingStore) -> Callable[[str, str, str], AlertRecord]:
    """The alert book's acknowledgement, as `POST /alerts/{id}/ack` makes it."""
    book = AlertBook(store.engine)
    return lambda alert_id, by, comment: book.acknowledge(alert_id, by=by, comment=comment or None, now=utc_now())


def run_bridge(settings: FactorySettings, *, on_ready: Callable[[list[str]], None] | None = None) -> None:
    """Run the bridge in this process until SIGINT or SIGTERM."""

    logging.getLogger("asyncua").setLevel(logging.WARNING)  # its INFO lines describe every node it builds

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await Bridge.build(settings).serve(stop, on_ready=on_ready)

    asyncio.run(main())
