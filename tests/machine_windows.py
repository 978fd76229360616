"""Sealed windows of machine telemetry as the collector writes them, for tests of the window pipeline."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl

from factory_pipelines.durable_files import write_parquet_atomic
from factory_pipelines.settings import FactorySettings
from factory_pipelines.telemetry import MachineTelemetry, dump_payload
from factory_pipelines.windows import WINDOW_SCHEMA, sealed_window_path, window_key

MACHINES = 4
SPIKE = "machine-2"
SPIKE_KW = 12.0  # far out of line with the work done, in any window length
# The shipped energy rule raises a WARNING on the model's own label (recorded, not texted); a plant
# may text on a score of its own choosing instead, as these tests do.
CRITICAL_ENERGY_RULES = """
rules:
  - name: energy_spike_critical
    model: energy_iforest
    when: {field: score, above: 0.6}
    severity: CRITICAL
    type: ENERGY_OPTIMIZATION
    message: "{asset_id}: power anomaly (score {score:.2f}) in {window_key}"
    cooldown: 10m
    auto_clear_after: 30m
"""


def write_sealed_window(
    settings: FactorySettings, start: datetime, seed: int, spike: str | None = None, spike_kw: float = 5.0
) -> str:
    """A sealed window file as the collector would write it: MACHINES machines, one reading a second."""
    rng = np.random.default_rng(seed)
    key = window_key(start, "collector-1")
    rows = []
    for m in range(MACHINES):
        asset = f"machine-{m}"
        for i in range(int(settings.window_seconds)):
            ts = start + timedelta(seconds=i)
            speed = rng.normal(380, 30)
            power = 1.6 + 0.018 * speed + rng.normal(0, 0.15) + (spike_kw if asset == spike else 0.0)
            payload = MachineTelemetry(
                asset_id=asset,
                ts=ts,
                seq=int(start.timestamp()) + i,
                Machine_ID=str(m + 1),
                Operation_Mode="Active",
                Temperature_C=24 + 4.5 * power + rng.normal(0, 0.2),
                Vibration_Hz=0.4 + speed / 110,
                Power_Consumption_kW=power,
                Production_Speed_units_per_hr=speed,
            )
            rows.append(
                {
                    "asset_id": asset,
                    "kind": "machine",
                    "site": settings.site,
                    "topic": f"factory/{settings.site}/{asset}/telemetry",
                    "ts": ts,
                    "received_at": ts,
                    "seq": payload.seq,
                    "payload": dump_payload(payload).decode(),
                }
            )
    write_parquet_atomic(pl.DataFrame(rows, schema=WINDOW_SCHEMA), sealed_window_path(settings.windows_dir, key))
    return key
