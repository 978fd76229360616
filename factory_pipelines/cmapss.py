"""NASA C-MAPSS turbofan files: read and write them, and turn them into the RUL model's long frame.

The files are space separated, without a header, 26 columns: unit, cycle, three operational
settings, 21 sensors (NASA's own files end every line with two spaces, which we tolerate). A
training file runs every engine to failure; a test file stops each engine some cycles before
failure, and the matching RUL file holds, one line per engine in unit order, how many cycles it
still had. Cite Saxena, Goebel, Simon, Eklund, PHM08 (2008).

FD002 and FD004 mix six operating conditions (altitude, Mach number, throttle angle). The
settings sit on six tight clusters, so rounding them names the condition; the RUL model then
normalises each sensor per condition, which removes most of the variance that is not wear.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

OPERATING_COLUMNS: tuple[str, ...] = ("op1", "op2", "op3")
SENSOR_COLUMNS: tuple[str, ...] = tuple(f"s{i}" for i in range(1, 22))
CMAPSS_COLUMNS: tuple[str, ...] = ("unit", "cycle", *OPERATING_COLUMNS, *SENSOR_COLUMNS)
CMAPSS_RUL_CAP = 125.0  # the usual piecewise-linear target: flat at 125 cycles, then linear to 0
SUBSETS: tuple[str, ...] = ("FD001", "FD002", "FD003", "FD004")


def read_cmapss_file(path: Path) -> pl.DataFrame:
    """A train_FD00x / test_FD00x file as a frame with CMAPSS_COLUMNS (unit and cycle Int64)."""
    raw = pl.read_csv(path, separator=" ", has_header=False, infer_schema=False)
    # NASA's lines end with two spaces: two empty trailing columns that we drop.
    raw = raw.select(raw.columns[: len(CMAPSS_COLUMNS)])
    if raw.width != len(CMAPSS_COLUMNS):
        raise ValueError(f"{path}: expected {len(CMAPSS_COLUMNS)} columns, found {raw.width}")
    raw.columns = list(CMAPSS_COLUMNS)
    return raw.with_columns(
        pl.col("unit", "cycle").cast(pl.Float64).cast(pl.Int64),
        pl.col(*OPERATING_COLUMNS, *SENSOR_COLUMNS).cast(pl.Float64),
    ).sort("unit", "cycle")


def read_rul_file(path: Path) -> list[float]:
    """The RUL file's values, one per test engine in unit order."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    return [float(line) for line in lines if line]


def write_cmapss_file(frame: pl.DataFrame, path: Path) -> Path:
    """`frame` (CMAPSS_COLUMNS) in the NASA layout, so a reader of the real files reads it too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.select(CMAPSS_COLUMNS).sort("unit", "cycle").write_csv(path, separator=" ", include_header=False)
    return path


def write_rul_file(values: Sequence[float], path: Path) -> Path:
    """One whole number of cycles per line, in unit order, like NASA's RUL_FD00x.txt."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{round(value)}\n" for value in values))
    return path


def operating_condition() -> pl.Expr:
    """The operating condition's name from the rounded settings (one name in FD001/FD003, six in FD002/FD004).

    Integers, so that a setting of -0.0004 and one of 0.0003 land in the same condition.
    """
    return pl.format(
        "alt{}_mach{}_tra{}",
        pl.col("op1").round(0).cast(pl.Int64),
        (pl.col("op2") * 100).round(0).cast(pl.Int64),
        pl.col("op3").round(0).cast(pl.Int64),
    )


def cmapss_long_frame(raw: pl.DataFrame, final_rul: Sequence[float] | None = None) -> pl.DataFrame:
    """The RUL model's long frame: unit (String), cycle, condition, the 21 sensors, rul.

    `rul` is the true remaining life at every cycle: for a training file the cycles to the
    engine's last one; for a test file that plus the engine's RUL-file value (`final_rul`, in
    unit order). The true value, not capped: the model caps its own target.
    """
    units = raw["unit"].unique().sort()
    if final_rul is None:
        at_end = pl.lit(0.0)
    else:
        if len(final_rul) != units.len():
            raise ValueError(f"{len(final_rul)} RUL values for {units.len()} engines")
        ends = pl.DataFrame({"unit": units, "_final_rul": [float(v) for v in final_rul]})
        raw = raw.join(ends, on="unit", how="left")
        at_end = pl.col("_final_rul")
    remaining = (pl.col("cycle").max().over("unit") - pl.col("cycle")).cast(pl.Float64) + at_end
    return raw.sort("unit", "cycle").select(
        pl.col("unit").cast(pl.String),
        pl.col("cycle").cast(pl.Int64),
        operating_condition().alias("condition"),
        *(pl.col(name) for name in SENSOR_COLUMNS),
        remaining.alias("rul"),
    )
