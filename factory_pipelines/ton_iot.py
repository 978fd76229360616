"""TON_IoT device telemetry (UNSW Canberra; Alsaedi et al., IEEE Access 8, 2020) as one typed frame.

The `Train_Test_IoT_<Device>.csv` files hold one device each: date, time, the device's readings,
`label` (0/1) and `type` (normal or the attack under way). What this reader does about them, and why:

- Exact duplicate rows are many (about a third of the rows of Garage_Door, Modbus, Motion_Light):
  they are dropped, and counted, before anything else, or a duplicate lands on both sides of a split.
- The spelling of a value differs between capture sessions, and so between normal and attack rows:
  `sphone_signal` is `false  `/`true  ` in every normal row and `0`/`1` in every attack row,
  `temp_condition` carries one, two or no trailing spaces, `time` is padded differently. Left as
  text, the spelling alone tells normal from attack. Readings are therefore stripped, lower-cased
  and turned into numbers (true/on/open/high -> 1, false/off/closed/low -> 0).
- Every normal row was captured 31 Mar-2 Apr 2019 and every attack 23-28 Apr 2019, each attack
  type in its own period. The absolute time (date, hour of day) therefore identifies the label
  and is not a feature; only stream-relative time features are offered (gap to the previous
  reading, readings in the same second). `CLOCK` features exist to measure that leak, not to use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

FILE_PREFIX = "Train_Test_IoT_"
DEVICES: tuple[str, ...] = ("Fridge", "GPS_Tracker", "Garage_Door", "Modbus", "Motion_Light", "Thermostat", "Weather")
NORMAL_TYPE = "normal"
RAW_LABEL_COLUMNS: tuple[str, ...] = ("date", "time", "label", "type")

# Words that stand for a binary reading; anything else must parse as a number.
_TRUE_WORDS = ("true", "on", "open", "high")
_FALSE_WORDS = ("false", "off", "closed", "low")

# Every device's readings, as lower-cased column names (they do not collide across devices).
READING_COLUMNS: dict[str, tuple[str, ...]] = {
    "Fridge": ("fridge_temperature", "temp_condition"),
    "GPS_Tracker": ("latitude", "longitude"),
    "Garage_Door": ("door_state", "sphone_signal"),
    "Modbus": ("fc1_read_input_register", "fc2_read_discrete_value", "fc3_read_holding_register", "fc4_read_coil"),
    "Motion_Light": ("motion_status", "light_status"),
    "Thermostat": ("current_temperature", "thermostat_status"),
    "Weather": ("temperature", "pressure", "humidity"),
}
ALL_READINGS: tuple[str, ...] = tuple(column for columns in READING_COLUMNS.values() for column in columns)

# Time features, by how much of the clock they see.
TIME_FEATURES_NONE = "none"  # readings only
TIME_FEATURES_RATE = "rate"  # + gap to the previous reading and readings in the same second (stream-relative)
TIME_FEATURES_CLOCK = "clock"  # + hour of day: leaks the capture schedule; for measuring the leak only
TIME_FEATURE_CHOICES: tuple[str, ...] = (TIME_FEATURES_NONE, TIME_FEATURES_RATE, TIME_FEATURES_CLOCK)
RATE_FEATURES: tuple[str, ...] = ("seconds_since_previous", "readings_in_second")
CLOCK_FEATURES: tuple[str, ...] = ("hour_sin", "hour_cos")
MAX_GAP_S = 3600.0  # a longer silence says "new capture session", not how long


def device_flag(device: str) -> str:
    """The one-hot column that marks rows of `device`."""
    return f"device_{device.lower()}"


DEVICE_FLAGS: tuple[str, ...] = tuple(device_flag(device) for device in DEVICES)


def feature_columns(time_features: str = TIME_FEATURES_NONE, devices: Sequence[str] = DEVICES) -> tuple[str, ...]:
    """The model inputs for some devices and a choice of time features (see TIME_FEATURE_CHOICES).

    Device flags only when there is more than one device to tell apart.
    """
    if time_features not in TIME_FEATURE_CHOICES:
        raise ValueError(f"time_features must be one of {', '.join(TIME_FEATURE_CHOICES)}, got {time_features!r}")
    flags = tuple(device_flag(device) for device in devices) if len(devices) > 1 else ()
    columns = (*flags, *(column for device in devices for column in READING_COLUMNS[device]))
    if time_features in (TIME_FEATURES_RATE, TIME_FEATURES_CLOCK):
        columns += RATE_FEATURES
    if time_features == TIME_FEATURES_CLOCK:
        columns += CLOCK_FEATURES
    return columns


@dataclass(frozen=True, slots=True)
class TonIotData:
    """Typed, de-duplicated rows of the chosen devices, and what reading them removed."""

    frame: pl.DataFrame  # device, ts, row_in_file, label, type, device flags, readings, time features
    paths: tuple[Path, ...]
    rows_read: int
    exact_duplicates_removed: int  # identical raw lines
    normalised_duplicates_removed: int  # lines identical once spelling is normalised

    @property
    def duplicates_removed(self) -> int:
        return self.exact_duplicates_removed + self.normalised_duplicates_removed


def device_path(data_dir: Path, device: str) -> Path:
    return Path(data_dir) / f"{FILE_PREFIX}{device}.csv"


def _numeric_reading(column: str) -> pl.Expr:
    text = pl.col(column).str.strip_chars().str.to_lowercase()
    words = {**dict.fromkeys(_TRUE_WORDS, "1"), **dict.fromkeys(_FALSE_WORDS, "0")}
    return text.replace(words).cast(pl.Float64, strict=False).alias(column)


def read_raw_device(path: Path) -> pl.DataFrame:
    """One device file as text columns, BOM and padding stripped from the header, names lower-cased."""
    if not path.is_file():
        raise FileNotFoundError(f"TON_IoT file {path} is missing (expected the shared data set next to the checkout)")
    raw = pl.read_csv(path, infer_schema_length=0, encoding="utf8-lossy")
    return raw.rename({name: name.lstrip("\ufeff").strip().lower() for name in raw.columns})


def type_device_rows(raw: pl.DataFrame, device: str) -> pl.DataFrame:
    """Typed rows of one device: timestamp, numeric readings, 0/1 label, stripped type; in file order.

    A reading that is neither a number nor one of the known words becomes null, and so does a
    timestamp that does not parse: the model treats nulls as missing, nothing is guessed.
    """
    expected = READING_COLUMNS[device]
    missing = [name for name in (*RAW_LABEL_COLUMNS, *expected) if name not in raw.columns]
    if missing:
        raise ValueError(f"TON_IoT {device}: columns {missing} missing; found {raw.columns}")
    stamp = pl.concat_str(pl.col("date").str.strip_chars(), pl.lit(" "), pl.col("time").str.strip_chars())
    return raw.with_row_index("row_in_file").select(
        pl.lit(device).alias("device"),
        stamp.str.to_datetime("%d-%b-%y %H:%M:%S", strict=False).alias("ts"),
        pl.col("row_in_file").cast(pl.Int64),
        pl.col("label").str.strip_chars().cast(pl.Int8, strict=False).alias("label"),
        pl.col("type").str.strip_chars().str.to_lowercase().alias("type"),
        *(_numeric_reading(name) for name in expected),
    )


def with_time_features(rows: pl.DataFrame) -> pl.DataFrame:
    """Stream-relative time features per device (gap to the previous reading, readings that second)
    and the clock features that the leak measurement uses."""
    ordered = rows.sort("device", "ts", "row_in_file")
    gap = (pl.col("ts") - pl.col("ts").shift(1)).over("device").dt.total_seconds(fractional=True)
    hour = pl.col("ts").dt.hour().cast(pl.Float64) + pl.col("ts").dt.minute().cast(pl.Float64) / 60.0
    angle = hour * (2.0 * 3.141592653589793 / 24.0)
    return ordered.with_columns(
        gap.clip(0.0, MAX_GAP_S).alias("seconds_since_previous"),
        pl.len().over("device", "ts").cast(pl.Float64).alias("readings_in_second"),
        angle.sin().alias("hour_sin"),
        angle.cos().alias("hour_cos"),
    )


def read_ton_iot(data_dir: Path, devices: Sequence[str] = DEVICES) -> TonIotData:
    """The chosen devices' files, de-duplicated and typed, as one frame in the union of their columns.

    Duplicates go twice: identical raw lines first, then lines that become identical once the
    spelling is normalised (same device, time, readings and type). Rows of the same time and
    readings but another attack type (overlapping attack periods) are kept: they are different rows.
    """
    unknown = [device for device in devices if device not in READING_COLUMNS]
    if unknown:
        raise ValueError(f"unknown TON_IoT devices {unknown}; known: {', '.join(DEVICES)}")
    if not devices:
        raise ValueError("choose at least one TON_IoT device")
    frames: list[pl.DataFrame] = []
    paths: list[Path] = []
    rows_read = exact = normalised = 0
    for device in devices:
        path = device_path(data_dir, device)
        raw = read_raw_device(path)
        unique_raw = raw.unique(maintain_order=True)
        typed = type_device_rows(unique_raw, device)
        identity = ["device", "ts", "label", "type", *READING_COLUMNS[device]]
        unique_typed = typed.unique(subset=identity, keep="first", maintain_order=True)
        rows_read += raw.height
        exact += raw.height - unique_raw.height
        normalised += typed.height - unique_typed.height
        frames.append(unique_typed)
        paths.append(path)
    combined = pl.concat(frames, how="diagonal_relaxed")
    flags = [(pl.col("device") == device).cast(pl.Float64).alias(device_flag(device)) for device in DEVICES]
    readings = [
        pl.col(name).cast(pl.Float64) if name in combined.columns else pl.lit(None, pl.Float64).alias(name)
        for name in ALL_READINGS
    ]
    frame = with_time_features(combined.select("device", "ts", "row_in_file", "label", "type", *flags, *readings))
    return TonIotData(
        frame=frame,
        paths=tuple(paths),
        rows_read=rows_read,
        exact_duplicates_removed=exact,
        normalised_duplicates_removed=normalised,
    )


def type_periods(frame: pl.DataFrame) -> pl.DataFrame:
    """First and last timestamp and row count of each (device, type): where each attack sits in time."""
    return (
        frame.group_by("device", "type")
        .agg(pl.len().alias("rows"), pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last"))
        .sort("device", "first")
    )
