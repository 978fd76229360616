"""The Modbus TCP server: pymodbus 3.16 serving the register map (`scada_bridge.modbus_map`) live.

pymodbus 3.13+ keeps a server's registers inside the running server (its internal `SimCore`), so
a datastore object updated from outside after the start is not what clients read. The server is
therefore built on the current data model, `SimDevice` / `SimData` (the `ModbusDeviceContext` /
`ModbusSequentialDataBlock` classes are deprecated for v4 and only converted to it), with an
`action`: pymodbus calls it on every request before it answers, with the block's registers to
fill. Reads are rendered from the bridge's state at that moment, so a value follows MQTT as soon as
the message is in; writes to the command registers are checked and turned into commands, or
answered with a Modbus exception.

`SimData` addresses are the protocol's own: SimData(0, ...) is register 0 (with the deprecated
`ModbusSequentialDataBlock(address, ...)` the first register is `address - 1`, the off-by-one trap
of the earlier bridge). One device with id 0 answers every unit id.

Writers. Modbus has no credentials, so the stand-in for the operator role is the client's address:
a write is accepted only from an address in the writer list (`modbus_writers`; empty means loopback
only), anyone else gets exception 1 (illegal function), the answer a client also gets when writes are
off. Reads stay open. pymodbus calls the action without the connection, so `_PeerServer` makes each
connection's handler set `CLIENT_ADDRESS` (a context variable) around the request it handles: the
request runs as a task of its own, so the value reaches the action and no other request. Both hooks
(`callback_new_connection`, `handle_request`) are pymodbus 3.16 internals: 3.x dropped the custom
request handler of 2.x and offers no supported way to the peer (pymodbus issue #2159). The
side-by-side writer test in tests/test_bridge_modbus.py fails if an upgrade moves them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import TypeAlias

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simutils import SimUtils

from scada_bridge.commands import CommandNotSent, CommandSender
from scada_bridge.modbus_map import COMPAT_SIZE, CommandResult, RegisterMap, WriteRefused

log = logging.getLogger(__name__)

DEFAULT_MODBUS_HOST = "127.0.0.1"
DEFAULT_MODBUS_PORT = 5020
ISSUED_BY = "modbus"
READ_INPUT_REGISTERS = 4
READ_DISCRETE_INPUTS = 2
READ_COILS = 1
HOLDING_CODES = frozenset({3, 6, 16, 22, 23})

ClientAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
WriterNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK_WRITERS: tuple[WriterNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
NOT_A_WRITER = ExcCodes.ILLEGAL_FUNCTION  # Modbus has no "access denied": to this client, writing is not offered
REFUSAL_LOG_INTERVAL_S = 60.0

# The address of the client whose request is being handled; None outside a request (or when unknown).
CLIENT_ADDRESS: ContextVar[ClientAddress | None] = ContextVar("modbus_client_address", default=None)


def client_address(peername: object) -> ClientAddress | None:
    """The IP address in a transport's `peername` (IPv4-mapped IPv6 as IPv4); None if there is none."""
    if not isinstance(peername, tuple) or not peername:
        return None
    try:
        address = ipaddress.ip_address(str(peername[0]))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class WriterList:
    """The clients whose writes are accepted: Modbus's stand-in for the operator role."""

    def __init__(self, networks: Sequence[WriterNetwork] = ()) -> None:
        self.networks: tuple[WriterNetwork, ...] = tuple(networks) or LOOPBACK_WRITERS

    def allows(self, address: ClientAddress | None) -> bool:
        """An unknown address is never a writer."""
        return address is not None and any(address in network for network in self.networks)

    def __str__(self) -> str:
        if self.networks == LOOPBACK_WRITERS:
            return "loopback only"
        return ", ".join(str(n.network_address) if n.num_addresses == 1 else str(n) for n in self.networks)


class RefusalLog:
    """Logs refused writers once per address per interval, so a scanner cannot flood the log."""

    MAX_TRACKED = 4096

    def __init__(self, interval_s: float = REFUSAL_LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}  # address -> (logged at, refusals not logged since)

    def refused(self, address: str, writers: WriterList) -> bool:
        """Note one refusal; returns whether it was logged."""
        now = self._clock()
        logged_at, quiet = self._last.get(address, (now - self.interval_s, 0))
        if now - logged_at < self.interval_s:
            self._last[address] = (logged_at, quiet + 1)
            return False
        if len(self._last) >= self.MAX_TRACKED:  # forget addresses that would be logged again anyway
            self._last = {a: (at, n) for a, (at, n) in self._last.items() if now - at < self.interval_s}
        self._last[address] = (now, 0)
        since = f" ({quiet} more refused since the last report)" if quiet else ""
        log.warning(
            "Modbus write from %s refused: not in modbus_writers (%s); answered exception %d%s",
            address,
            writers,
            NOT_A_WRITER,
            since,
        )
        return True


class _PeerRequestHandler(ServerRequestHandler):
    """pymodbus's per-connection handler, which makes its peer's address known to the request it handles."""

    peer: ClientAddress | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer = client_address(transport.get_extra_info("peername"))
        super().connection_made(transport)

    async def handle_request(self) -> None:
        # pymodbus runs each request as a task of its own (a copy of the context): the value stays with it.
        token = CLIENT_ADDRESS.set(self.peer)
        try:
            await super().handle_request()
        finally:
            CLIENT_ADDRESS.reset(token)


class _PeerServer(ModbusTcpServer):
    """A `ModbusTcpServer` whose connections are handled by `_PeerRequestHandler`."""

    def callback_new_connection(self) -> _PeerRequestHandler:
        return _PeerRequestHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


def bridge_device(register_map: RegisterMap, action: object) -> SimDevice:
    """The device's four areas, sized to the map: addresses outside them answer exception 2."""
    layout = register_map.layout
    bits = [False] * layout.di_size
    return SimDevice(
        id=0,  # every unit id
        simdata=(
            [SimData(0, count=1, values=[False] * 16, datatype=DataType.BITS, readonly=True)],  # no coils
            # values as one list (count=1): pymodbus multiplies a bit block by its count twice when it checks it
            [SimData(0, count=1, values=bits, datatype=DataType.BITS, readonly=True)],
            [
                SimData(0, count=COMPAT_SIZE, datatype=DataType.REGISTERS, readonly=True),
                SimData(layout.hr_base(0), count=layout.hr_size - layout.hr_base(0), datatype=DataType.REGISTERS),
            ],
            [SimData(0, count=layout.ir_size, datatype=DataType.REGISTERS, readonly=True)],
        ),
        action=action,  # type: ignore[arg-type]
    )


class ModbusBridgeServer:
    """Serves a `RegisterMap` over Modbus TCP; commands go through a `CommandSender`."""

    def __init__(
        self,
        register_map: RegisterMap,
        *,
        host: str = DEFAULT_MODBUS_HOST,
        port: int = DEFAULT_MODBUS_PORT,
        commands: CommandSender | None = None,
        writers: Sequence[WriterNetwork] = (),
    ) -> None:
        self.map = register_map
        self.host = host
        self.port = port
        self.commands = commands
        self.writers = WriterList(writers)
        self._server: ModbusTcpServer | None = None
        self._refusals = RefusalLog()
        self.refused_writes = 0

    async def start(self) -> None:
        """Listen on host:port; returns once clients can connect (OSError-like RuntimeError if it cannot)."""
        self._server = _PeerServer(bridge_device(self.map, self._action), address=(self.host, self.port))
        await self._server.serve_forever(background=True)
        log.info("Modbus TCP server listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: Sequence[int] | Sequence[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus calls this before answering: fill the registers asked for, or check a write."""
        try:
            if set_values is not None:
                return await self._write(address, [int(v) for v in set_values])
            self._fill(function_code, start_address, address, count, registers)
        except Exception:  # a bug must answer "device failure", never kill the connection
            log.exception("Modbus request fc=%d address=%d count=%d failed", function_code, address, count)
            return ExcCodes.DEVICE_FAILURE
        return None

    def _fill(self, function_code: int, start_address: int, address: int, count: int, registers: list[int]) -> None:
        if function_code == READ_INPUT_REGISTERS:
            registers[address - start_address : address - start_address + count] = self.map.input_registers(
                address, count
            )
        elif function_code in HOLDING_CODES:
            registers[address - start_address : address - start_address + count] = self.map.holding_registers(
                address, count
            )
        elif function_code == READ_DISCRETE_INPUTS:
            # Bit areas: `count` registers of 16 bits from the one holding bit `address`.
            first = address // 16
            bits = self.map.discrete_inputs(first * 16, count * 16)
            offset = first - start_address
            registers[offset : offset + count] = SimUtils.bitsToRegisters(bits)

    async def _write(self, address: int, values: list[int]) -> ExcCodes | None:
        if self.map.writes_enabled:  # when writes are off, the map refuses every write itself
            client = CLIENT_ADDRESS.get()
            if not self.writers.allows(client):
                self.refused_writes += 1
                self._refusals.refused(str(client or "an unknown address"), self.writers)
                return NOT_A_WRITER
        try:
            staged = self.map.stage_write(address, values)
        except WriteRefused as refused:
            self.refused_writes += 1
            log.info("Modbus write at %d refused: %s", address, refused.reason)
            return refused.code
        if staged.command is None:
            self.map.commit(staged)
            return None
        if self.commands is None:
            self.refused_writes += 1
            log.warning("Modbus command write at %d refused: the bridge has no command sender", address)
            return ExcCodes.DEVICE_FAILURE
        try:
            sent = await asyncio.to_thread(
                self.commands.send, staged.asset_id, staged.command, dict(staged.parameters), issued_by=ISSUED_BY
            )
        except (CommandNotSent, ValueError) as exc:
            self.map.commit(staged, CommandResult.NOT_SENT)
            log.warning("Modbus command %s to %s not sent: %s", staged.command, staged.asset_id, exc)
            return ExcCodes.DEVICE_FAILURE
        self.map.commit(staged, CommandResult.SENT, sent.command_id)
        log.info("Modbus command %s %s sent to %s", staged.command, staged.parameters or "", staged.asset_id)
        return None


class ModbusServerThread:
    """Runs a `ModbusBridgeServer` on an event loop of its own thread, for callers that are not async."""

    def __init__(self, server: ModbusBridgeServer) -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start listening; raises what the server raised when it could not."""
        self._thread = threading.Thread(target=self._run, name="modbus-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the Modbus server did not start within {timeout:.0f} s")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stopped.wait()
        await self.server.stop()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stopped is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout)
