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
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
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
    ) -> None:
        self.map = register_map
        self.host = host
        self.port = port
        self.commands = commands
        self._server: ModbusTcpServer | None = None
        self.refused_writes = 0

    async def start(self) -> None:
        """Listen on host:port; returns once clients can connect (OSError-like RuntimeError if it cannot)."""
        self._server = ModbusTcpServer(bridge_device(self.map, self._action), address=(self.host, self.port))
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
