"""The Modbus register map: generated from the point list, rendered from the bridge's live state.

Addressing. Register N is what a client reading protocol address N gets (zero-based, no offset;
in "4xxxx" notation holding register N is 4(N+1)). Every unit id answers the same (use unit 1).

Numbers. A value is float32 in two registers, big-endian word order AND byte order ("ABCD": the
first register holds the sign, exponent and high mantissa bits, and each register is sent high
byte first). NaN means "no value" (never received, or not a field of this kind of asset). Counts
and codes in single registers are unsigned 16-bit, saturating at 65535.

Layout (function code, area):
- Input registers (FC 4): a bridge header at 0-15, then one block of `IR_BLOCK` registers per asset
  slot from `ASSET_BASE`: status (quality 0 good / 1 stale / 2 bad, age in seconds, open alert
  counts), the asset id as text, and from offset `IR_POINTS_OFFSET` every telemetry and prediction
  point of the point list as float32, in point-list order.
- Discrete inputs (FC 2): bridge flags at 0-1, then `DI_BLOCK` bits per slot: open alerts by
  severity, any open, any unacknowledged, quality good / stale, slot in use.
- Holding registers (FC 3, 6, 16): the earlier bridge's compatibility block at 0-599 (read-only,
  `scada_bridge.compat`), then `HR_BLOCK` registers per slot for commands: command code,
  parameter (float32), and a sequence number the PLC bumps; a write that changes the sequence
  sends the command. The result register tells what became of the last one.

Slots. An asset gets the next free slot when the bridge first sees it, and keeps it: the slots
are kept in a small JSON file under the data dir (`AssetSlots`), so a PLC's addresses stay put
across restarts. Slots are never reused; delete the file to start over. Point offsets follow
the contract's field order: print the map again after an upgrade of the contract.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from pymodbus.constants import ExcCodes

from factory_pipelines.durable_files import write_bytes_atomic
from factory_pipelines.telemetry import Severity
from scada_bridge.compat import COMPAT_REGISTERS, compat_values, u16
from scada_bridge.points import Point, PointGroup, ValueKind
from scada_bridge.state import AssetSnapshot, BridgeState, ChangeKind, Quality, StateChange

log = logging.getLogger(__name__)

MAP_VERSION = 1
UNIT_ID = 1
ASSET_BASE = 1000  # first asset block, in every area
IR_BLOCK = 200
IR_POINTS_OFFSET = 32
IR_ASSET_ID_OFFSET = 8
ASSET_ID_REGISTERS = 16  # 32 bytes of UTF-8, NUL padded
DI_BLOCK = 8
HR_BLOCK = 8
COMPAT_SIZE = 600  # holding registers 0..599: the compatibility block (unlisted addresses read 0)
MAX_SLOTS = (65536 - ASSET_BASE) // IR_BLOCK
NO_AGE = 65535
SLOTS_FILE_VERSION = 1
SLOTS_FILE_NAME = "modbus_slots.json"


class Header(IntEnum):
    """Input registers 0..15: what a client needs to find its way, and a heartbeat."""

    MAP_VERSION = 0
    ASSET_BASE = 1
    IR_BLOCK = 2
    DI_BLOCK = 3
    HR_BLOCK = 4
    SLOTS = 5
    SLOTS_USED = 6
    BROKER_CONNECTED = 7
    WRITES_ENABLED = 8
    HEARTBEAT_S = 9
    FLOAT_POINTS = 10
    FLOAT_POINTS_OFFSET = 11


HEADER_DOC: dict[Header, str] = {
    Header.MAP_VERSION: f"Map version ({MAP_VERSION})",
    Header.ASSET_BASE: f"First asset block address in every area ({ASSET_BASE})",
    Header.IR_BLOCK: f"Input registers per asset ({IR_BLOCK})",
    Header.DI_BLOCK: f"Discrete inputs per asset ({DI_BLOCK})",
    Header.HR_BLOCK: f"Holding registers per asset ({HR_BLOCK})",
    Header.SLOTS: "Asset slots (bridge_max_assets)",
    Header.SLOTS_USED: "Asset slots assigned",
    Header.BROKER_CONNECTED: "1 while the bridge is connected to the MQTT broker",
    Header.WRITES_ENABLED: "1 when command writes are enabled",
    Header.HEARTBEAT_S: "Seconds since the bridge started, modulo 65536 (a watchdog can check it moves)",
    Header.FLOAT_POINTS: "float32 points per asset block",
    Header.FLOAT_POINTS_OFFSET: f"Offset of the first float32 point in an asset block ({IR_POINTS_OFFSET})",
}


class AssetRegister(IntEnum):
    """Offsets of an asset's status registers in its input register block."""

    QUALITY = 0
    AGE_S = 1
    OPEN_INFO = 2
    OPEN_WARNING = 3
    OPEN_CRITICAL = 4
    VALUES = 5
    IN_USE = 6


ASSET_REGISTER_DOC: dict[AssetRegister, str] = {
    AssetRegister.QUALITY: "Quality: 0 good (data flowing), 1 stale (broker connection lost since), 2 bad (no value)",
    AssetRegister.AGE_S: "Seconds since the asset's newest reading arrived (65535: none, or older)",
    AssetRegister.OPEN_INFO: "Open INFO alerts of the asset",
    AssetRegister.OPEN_WARNING: "Open WARNING alerts of the asset",
    AssetRegister.OPEN_CRITICAL: "Open CRITICAL alerts of the asset",
    AssetRegister.VALUES: "Points of the asset that have a value",
    AssetRegister.IN_USE: "1 when the slot is assigned to an asset",
}


class BridgeBit(IntEnum):
    BROKER_CONNECTED = 0
    WRITES_ENABLED = 1


class AssetBit(IntEnum):
    OPEN_INFO = 0
    OPEN_WARNING = 1
    OPEN_CRITICAL = 2
    ANY_OPEN = 3
    UNACKNOWLEDGED = 4
    QUALITY_GOOD = 5
    QUALITY_STALE = 6
    IN_USE = 7


ASSET_BIT_DOC: dict[AssetBit, str] = {
    AssetBit.OPEN_INFO: "An INFO alert is open",
    AssetBit.OPEN_WARNING: "A WARNING alert is open",
    AssetBit.OPEN_CRITICAL: "A CRITICAL alert is open",
    AssetBit.ANY_OPEN: "Any alert is open",
    AssetBit.UNACKNOWLEDGED: "An open alert is not acknowledged",
    AssetBit.QUALITY_GOOD: "Quality good",
    AssetBit.QUALITY_STALE: "Quality stale",
    AssetBit.IN_USE: "The slot is assigned to an asset",
}


class CommandRegister(IntEnum):
    CODE = 0
    PARAMETER = 1  # float32: registers 1 and 2
    SEQUENCE = 3
    RESULT = 4
    SENT = 5


WRITABLE_COMMAND_REGISTERS = CommandRegister.SEQUENCE + 1  # offsets 0..3


class CommandResult(IntEnum):
    NONE = 0
    SENT = 1
    NOT_SENT = 2
    DONE = 3
    REJECTED = 4


COMMAND_CODES: dict[int, str] = {1: "stop", 2: "slow", 3: "resume"}
COMMAND_PARAMETERS: dict[str, str] = {"slow": "factor"}  # command -> the name its parameter register fills
COMMAND_REGISTER_DOC: dict[CommandRegister, str] = {
    CommandRegister.CODE: "Command code: " + ", ".join(f"{code} {name}" for code, name in COMMAND_CODES.items()),
    CommandRegister.PARAMETER: "Parameter, float32 (registers +1, +2): slow -> parameters.factor in (0, 1]",
    CommandRegister.SEQUENCE: "Sequence: writing a value other than the current one sends the command",
    CommandRegister.RESULT: "Last command: 0 none, 1 sent, 2 not sent (broker away), 3 done, 4 rejected (asset's ack)",
    CommandRegister.SENT: "Commands sent from this slot, modulo 65536",
}


# ---- encoding --------------------------------------------------------------------------------


def float_registers(value: float | None) -> tuple[int, int]:
    """float32, big-endian words and bytes (ABCD); None is NaN; out of range is +-inf."""
    number = math.nan if value is None else float(value)
    try:
        packed = struct.pack(">f", number)
    except OverflowError:
        packed = struct.pack(">f", math.copysign(math.inf, number))
    high, low = struct.unpack(">HH", packed)
    return high, low


def registers_float(high: int, low: int) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", high, low))[0])


def text_registers(text: str, count: int) -> list[int]:
    """UTF-8, two bytes a register (first byte high), NUL padded and cut to `count` registers."""
    data = text.encode()[: 2 * count].ljust(2 * count, b"\0")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, 2 * count, 2)]


# ---- slots -----------------------------------------------------------------------------------


def default_slots_path(data_dir: Path) -> Path:
    return Path(data_dir) / "scada_bridge" / SLOTS_FILE_NAME


class AssetSlots:
    """Asset -> slot, in order of first sight, kept in a JSON file so addresses survive restarts."""

    def __init__(self, capacity: int, path: Path | None = None) -> None:
        if not 1 <= capacity <= MAX_SLOTS:
            raise ValueError(f"the Modbus map holds 1 to {MAX_SLOTS} asset slots, got {capacity}")
        self.capacity = capacity
        self.path = path
        self.refused = 0
        self._lock = threading.Lock()
        self._slots: list[str] = self._load()
        self._index = {asset_id: slot for slot, asset_id in enumerate(self._slots)}

    def _load(self) -> list[str]:
        if self.path is None or not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text())
            slots = data["slots"]
            if not isinstance(slots, list) or not all(isinstance(a, str) for a in slots):
                raise ValueError("'slots' must be a list of asset ids")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"cannot read the Modbus slot file {self.path}: {exc}; fix it, or delete it to assign slots anew "
                "(PLC addresses then change)"
            ) from exc
        if len(slots) > self.capacity:
            log.warning(
                "%s holds %d slots but the bridge has %d: assets past slot %d get no registers",
                self.path,
                len(slots),
                self.capacity,
                self.capacity - 1,
            )
        return list(slots[: self.capacity])

    def _save(self) -> None:
        if self.path is None:
            return
        body = {
            "version": SLOTS_FILE_VERSION,
            "about": "Modbus asset slots of the SCADA bridge, in order of first sight; PLC addresses depend on them.",
            "slots": self._slots,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.path, (json.dumps(body, indent=1) + "\n").encode())

    def assign(self, asset_id: str) -> int | None:
        """The asset's slot, given now if it has none; None when every slot is taken."""
        with self._lock:
            slot = self._index.get(asset_id)
            if slot is not None:
                return slot
            if len(self._slots) >= self.capacity:
                self.refused += 1
                return None
            slot = len(self._slots)
            self._slots.append(asset_id)
            self._index[asset_id] = slot
            self._save()
            return slot

    def slot_of(self, asset_id: str) -> int | None:
        with self._lock:
            return self._index.get(asset_id)

    def asset_at(self, slot: int) -> str | None:
        with self._lock:
            return self._slots[slot] if 0 <= slot < len(self._slots) else None

    def assigned(self) -> list[tuple[int, str]]:
        with self._lock:
            return list(enumerate(self._slots))

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)


# ---- layout ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterLayout:
    """Where everything is, for `capacity` slots and the float points of a point list."""

    capacity: int
    points: tuple[Point, ...]  # the float32 points of an asset block, in order
    offsets: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.capacity <= MAX_SLOTS:
            raise ValueError(f"the Modbus map holds 1 to {MAX_SLOTS} asset slots, got {self.capacity}")
        if IR_POINTS_OFFSET + 2 * len(self.points) > IR_BLOCK:
            raise ValueError(f"{len(self.points)} float points do not fit an asset block of {IR_BLOCK} registers")
        offsets = {p.key: IR_POINTS_OFFSET + 2 * index for index, p in enumerate(self.points)}
        object.__setattr__(self, "offsets", offsets)

    @classmethod
    def of(cls, capacity: int, points: Sequence[Point]) -> RegisterLayout:
        """Telemetry and prediction points become float32 registers; alert counts have their own registers."""
        return cls(capacity, tuple(p for p in points if p.group != PointGroup.ALERTS))

    def ir_base(self, slot: int) -> int:
        return ASSET_BASE + slot * IR_BLOCK

    def di_base(self, slot: int) -> int:
        return ASSET_BASE + slot * DI_BLOCK

    def hr_base(self, slot: int) -> int:
        return ASSET_BASE + slot * HR_BLOCK

    @property
    def ir_size(self) -> int:
        return ASSET_BASE + self.capacity * IR_BLOCK

    @property
    def di_size(self) -> int:
        return ASSET_BASE + self.capacity * DI_BLOCK

    @property
    def hr_size(self) -> int:
        return ASSET_BASE + self.capacity * HR_BLOCK


# ---- commands --------------------------------------------------------------------------------


@dataclass
class _CommandSlot:
    registers: list[int] = field(default_factory=lambda: [0] * WRITABLE_COMMAND_REGISTERS)
    result: CommandResult = CommandResult.NONE
    sent: int = 0
    last_command_id: str | None = None


@dataclass(frozen=True, slots=True)
class StagedWrite:
    """A holding register write that passed the checks; `command` is set when it sends one."""

    slot: int
    asset_id: str
    registers: tuple[int, ...]  # offsets 0..3 of the slot after the write
    command: str | None = None
    parameters: dict[str, float] = field(default_factory=dict)


class WriteRefused(Exception):
    """A write the bridge answers with a Modbus exception."""

    def __init__(self, code: ExcCodes, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# ---- the map ---------------------------------------------------------------------------------


class RegisterMap:
    """Renders any register range from the live state, and checks command writes.

    Protocol-neutral on purpose (lists of ints and bools): the pymodbus server only copies what
    this returns, so the map is tested and printed without a network.
    """

    def __init__(
        self,
        state: BridgeState,
        slots: AssetSlots,
        *,
        writes_enabled: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.slots = slots
        self.layout = RegisterLayout.of(slots.capacity, state.points)
        self.writes_enabled = writes_enabled
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._commands: dict[int, _CommandSlot] = {}
        self._unsubscribe = state.subscribe(self._on_change)
        for asset_id in state.assets():
            slots.assign(asset_id)

    def close(self) -> None:
        self._unsubscribe()

    def _on_change(self, change: StateChange) -> None:
        if change.kind != ChangeKind.ASSET_ADDED or change.asset_id is None:
            return
        if self.slots.assign(change.asset_id) is None:
            log.warning("no Modbus slot left for asset %s (bridge_max_assets reached)", change.asset_id)

    # ---- reads ----

    def input_registers(self, address: int, count: int) -> list[int]:
        return _span(address, count, IR_BLOCK, self._ir_header, self._ir_block)

    def discrete_inputs(self, address: int, count: int) -> list[bool]:
        return _span(address, count, DI_BLOCK, self._di_header, self._di_block)

    def holding_registers(self, address: int, count: int) -> list[int]:
        return _span(address, count, HR_BLOCK, self._hr_header, self._hr_block)

    def _ir_header(self) -> list[int]:
        header = {
            Header.MAP_VERSION: MAP_VERSION,
            Header.ASSET_BASE: ASSET_BASE,
            Header.IR_BLOCK: IR_BLOCK,
            Header.DI_BLOCK: DI_BLOCK,
            Header.HR_BLOCK: HR_BLOCK,
            Header.SLOTS: self.slots.capacity,
            Header.SLOTS_USED: len(self.slots),
            Header.BROKER_CONNECTED: int(self.state.connected),
            Header.WRITES_ENABLED: int(self.writes_enabled),
            Header.HEARTBEAT_S: int(self._clock() - self._started) % 65536,
            Header.FLOAT_POINTS: len(self.layout.points),
            Header.FLOAT_POINTS_OFFSET: IR_POINTS_OFFSET,
        }
        registers = [0] * ASSET_BASE
        for index, value in header.items():
            registers[index] = value
        return registers

    def _snapshot(self, slot: int) -> tuple[str | None, AssetSnapshot | None]:
        asset_id = self.slots.asset_at(slot)
        return asset_id, self.state.snapshot(asset_id) if asset_id is not None else None

    def _ir_block(self, slot: int) -> list[int]:
        asset_id, snapshot = self._snapshot(slot)
        registers = [0] * IR_BLOCK
        registers[AssetRegister.QUALITY] = snapshot.quality if snapshot else Quality.BAD
        age = snapshot.age_s if snapshot else None
        registers[AssetRegister.AGE_S] = NO_AGE if age is None else min(NO_AGE, int(age))
        if snapshot is not None:
            for register, severity in (
                (AssetRegister.OPEN_INFO, Severity.INFO),
                (AssetRegister.OPEN_WARNING, Severity.WARNING),
                (AssetRegister.OPEN_CRITICAL, Severity.CRITICAL),
            ):
                registers[register] = min(65535, snapshot.alert_counts.get(severity, 0))
            registers[AssetRegister.VALUES] = sum(k in self.layout.offsets for k in snapshot.values)
        registers[AssetRegister.IN_USE] = int(asset_id is not None)
        if asset_id is not None:
            end = IR_ASSET_ID_OFFSET + ASSET_ID_REGISTERS
            registers[IR_ASSET_ID_OFFSET:end] = text_registers(asset_id, ASSET_ID_REGISTERS)
        values = snapshot.values if snapshot else {}
        for key, offset in self.layout.offsets.items():
            held = values.get(key)
            registers[offset], registers[offset + 1] = float_registers(held.value if held else None)
        return registers

    def _di_header(self) -> list[bool]:
        bits = [False] * ASSET_BASE
        bits[BridgeBit.BROKER_CONNECTED] = self.state.connected
        bits[BridgeBit.WRITES_ENABLED] = self.writes_enabled
        return bits

    def _di_block(self, slot: int) -> list[bool]:
        asset_id, snapshot = self._snapshot(slot)
        bits = [False] * DI_BLOCK
        bits[AssetBit.IN_USE] = asset_id is not None
        if snapshot is None:
            return bits
        counts = snapshot.alert_counts
        bits[AssetBit.OPEN_INFO] = counts.get(Severity.INFO, 0) > 0
        bits[AssetBit.OPEN_WARNING] = counts.get(Severity.WARNING, 0) > 0
        bits[AssetBit.OPEN_CRITICAL] = counts.get(Severity.CRITICAL, 0) > 0
        bits[AssetBit.ANY_OPEN] = sum(counts.values()) > 0
        bits[AssetBit.UNACKNOWLEDGED] = snapshot.unacknowledged_alerts > 0
        bits[AssetBit.QUALITY_GOOD] = snapshot.quality == Quality.GOOD
        bits[AssetBit.QUALITY_STALE] = snapshot.quality == Quality.STALE
        return bits

    def _hr_header(self) -> list[int]:
        registers = [0] * ASSET_BASE
        for address, value in compat_values(self.state).items():
            registers[address] = u16(value)
        return registers

    def _hr_block(self, slot: int) -> list[int]:
        with self._lock:
            command = self._commands.get(slot) or _CommandSlot()
            registers = [*command.registers, command.result, command.sent % 65536, 0, 0]
            last_command_id = command.last_command_id
        if command.result == CommandResult.SENT and last_command_id is not None:
            asset_id, snapshot = self._snapshot(slot)
            ack = snapshot.last_ack if snapshot else None
            if ack is not None and ack.command_id == last_command_id:
                done = ack.status == "done"
                registers[CommandRegister.RESULT] = CommandResult.DONE if done else CommandResult.REJECTED
        return registers

    # ---- writes ----

    def stage_write(self, address: int, values: Sequence[int]) -> StagedWrite:
        """Check a holding register write; raises WriteRefused with the Modbus exception to answer."""
        if not self.writes_enabled:
            raise WriteRefused(ExcCodes.ILLEGAL_FUNCTION, "command writes are disabled (modbus_writes_enabled)")
        if address < ASSET_BASE:
            raise WriteRefused(ExcCodes.ILLEGAL_ADDRESS, f"holding register {address} is read-only")
        slot, offset = divmod(address - ASSET_BASE, HR_BLOCK)
        if offset + len(values) > WRITABLE_COMMAND_REGISTERS:
            raise WriteRefused(ExcCodes.ILLEGAL_ADDRESS, "only the code, parameter and sequence registers are writable")
        asset_id = self.slots.asset_at(slot)
        if asset_id is None:
            raise WriteRefused(ExcCodes.ILLEGAL_ADDRESS, f"slot {slot} has no asset")
        with self._lock:
            current = list((self._commands.get(slot) or _CommandSlot()).registers)
        after = list(current)
        after[offset : offset + len(values)] = [int(v) & 0xFFFF for v in values]
        staged = StagedWrite(slot, asset_id, tuple(after))
        sequence_written = offset <= CommandRegister.SEQUENCE < offset + len(values)
        if not sequence_written or after[CommandRegister.SEQUENCE] == current[CommandRegister.SEQUENCE]:
            return staged
        name = COMMAND_CODES.get(after[CommandRegister.CODE])
        if name is None:
            raise WriteRefused(ExcCodes.ILLEGAL_VALUE, f"unknown command code {after[CommandRegister.CODE]}")
        parameters: dict[str, float] = {}
        if name in COMMAND_PARAMETERS:
            value = registers_float(after[CommandRegister.PARAMETER], after[CommandRegister.PARAMETER + 1])
            if not math.isfinite(value):
                raise WriteRefused(ExcCodes.ILLEGAL_VALUE, f"the parameter of {name} is not a number")
            parameters[COMMAND_PARAMETERS[name]] = value
        return StagedWrite(slot, asset_id, tuple(after), name, parameters)

    def commit(self, staged: StagedWrite, result: CommandResult | None = None, command_id: str | None = None) -> None:
        """Keep a staged write; a command that was not sent keeps the old sequence, so the PLC can retry."""
        with self._lock:
            command = self._commands.setdefault(staged.slot, _CommandSlot())
            if result == CommandResult.NOT_SENT:
                command.registers[: CommandRegister.SEQUENCE] = staged.registers[: CommandRegister.SEQUENCE]
            else:
                command.registers = list(staged.registers)
            if result is not None:
                command.result = result
            if result == CommandResult.SENT:
                command.sent += 1
                command.last_command_id = command_id


def _span(
    address: int,
    count: int,
    block: int,
    header: Callable[[], list],
    render: Callable[[int], list],
) -> list:
    """`count` values from `address`: the header below ASSET_BASE, asset blocks above, each rendered once."""
    rendered: dict[int, list] = {}
    out = []
    for position in range(address, address + count):
        if position < ASSET_BASE:
            key, index = -1, position
        else:
            key, index = divmod(position - ASSET_BASE, block)
        if key not in rendered:
            rendered[key] = header() if key < 0 else render(key)
        out.append(rendered[key][index])
    return out


# ---- the printed map -------------------------------------------------------------------------


def _kind_label(point: Point) -> str:
    return {ValueKind.ANALOG: "float32", ValueKind.COUNT: "float32 (count)", ValueKind.CODE: "float32 (code)"}[
        point.kind
    ]


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def format_register_map(layout: RegisterLayout, slots: AssetSlots | None = None) -> str:
    """The whole map as Markdown: what `factory bridge --print-register-map` prints and the README shows."""
    lines = [
        "# Modbus TCP register map of the SCADA bridge",
        "",
        f"Map version {MAP_VERSION}. Every unit id answers the same (use unit {UNIT_ID}). Addresses are protocol "
        "addresses, zero-based: register N is what a client reading address N gets (holding register N is "
        '4(N+1) in 1-based "4xxxx" notation).',
        "",
        "float32 values take two registers, **big-endian word order and big-endian byte order (ABCD)**: the first "
        "register holds the high word, each register high byte first. NaN means no value. Single-register values "
        "are unsigned 16-bit, saturating at 65535.",
        "",
        f"Asset slot `s` (0..{layout.capacity - 1}) starts at input register `{ASSET_BASE} + {IR_BLOCK}*s`, "
        f"discrete input `{ASSET_BASE} + {DI_BLOCK}*s` and holding register `{ASSET_BASE} + {HR_BLOCK}*s`. An asset "
        "gets the next free slot when the bridge first sees it and keeps it across restarts (the slot file under the "
        "data dir).",
        "",
        "## Input registers (FC 4): bridge header",
        "",
        "| register | value |",
        "| --- | --- |",
        *(f"| {h.value} | {HEADER_DOC[h]} |" for h in Header),
        "",
        f"## Input registers (FC 4): asset block, at {ASSET_BASE} + {IR_BLOCK}*slot + offset",
        "",
        "| offset | value | type | unit |",
        "| --- | --- | --- | --- |",
        *(f"| {r.value} | {ASSET_REGISTER_DOC[r]} | uint16 | |" for r in AssetRegister),
        f"| {IR_ASSET_ID_OFFSET}-{IR_ASSET_ID_OFFSET + ASSET_ID_REGISTERS - 1} | Asset id, UTF-8, 2 bytes a "
        "register (first byte high), NUL padded | text | |",
    ]
    for point in layout.points:
        offset = layout.offsets[point.key]
        lines.append(
            f"| {offset}-{offset + 1} | `{point.key}`: {_cell(point.description)} | {_kind_label(point)} | "
            f"{_cell(point.unit)} |"
        )
    lines += [
        "",
        "## Discrete inputs (FC 2)",
        "",
        "| input | value |",
        "| --- | --- |",
        f"| {BridgeBit.BROKER_CONNECTED.value} | The bridge is connected to the MQTT broker |",
        f"| {BridgeBit.WRITES_ENABLED.value} | Command writes are enabled |",
        *(f"| {ASSET_BASE} + {DI_BLOCK}*slot + {b.value} | {ASSET_BIT_DOC[b]} |" for b in AssetBit),
        "",
        "## Holding registers (FC 3; FC 6 and 16 for commands)",
        "",
        f"Commands, at {ASSET_BASE} + {HR_BLOCK}*slot + offset. Writable only when the bridge runs with "
        "`modbus_writes_enabled` and only from a client address in `modbus_writers` (loopback when empty); "
        "otherwise every write is answered with exception 1 (illegal function). Write code "
        "and parameter, then a new sequence number (or all four registers in one FC 16 write): the bridge publishes a "
        "`Command` QoS 1 on `factory/{site}/{asset}/cmd`. An unknown code or a parameter that is not a number is "
        "exception 3 (illegal value); a broker that is away is exception 4 (nothing is queued: write the sequence "
        "again to retry); the compatibility block and the result registers are read-only (exception 2).",
        "",
        "| offset | value |",
        "| --- | --- |",
        *(
            f"| {r.value}{'-2' if r == CommandRegister.PARAMETER else ''} | {COMMAND_REGISTER_DOC[r]} |"
            for r in CommandRegister
        ),
        "",
        f"Compatibility block of the earlier SCADA bridge (read-only, 0-{COMPAT_SIZE - 1}; unlisted addresses read 0):",
        "",
        "| register | earlier meaning | filled from |",
        "| --- | --- | --- |",
        *(
            f"| {r.address} | {_cell(r.meaning)} | {'' if r.has_source else '**no source: 0**. '}{_cell(r.source)} |"
            for r in COMPAT_REGISTERS
        ),
    ]
    if slots is not None:
        assigned = slots.assigned()
        lines += ["", f"## Asset slots ({len(assigned)} of {slots.capacity} assigned)", ""]
        if assigned:
            lines += [
                "| slot | asset | input registers | discrete inputs | command registers |",
                "| --- | --- | --- | --- | --- |",
            ]
            for slot, asset_id in assigned:
                ir, di, hr = layout.ir_base(slot), layout.di_base(slot), layout.hr_base(slot)
                lines.append(
                    f"| {slot} | {_cell(asset_id)} | {ir}-{ir + IR_BLOCK - 1} | {di}-{di + DI_BLOCK - 1} | "
                    f"{hr}-{hr + HR_BLOCK - 1} |"
                )
        else:
            lines.append("None yet: assets get slots as the bridge first sees them.")
    return "\n".join(lines) + "\n"
