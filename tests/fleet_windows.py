"""Sealed windows made from the simulator's fleet, as the collector would write them (no broker).

For tests of the window assets: a fleet stepped at its own pace, each window a Parquet file in
`windows/sealed/`, with the payloads as they would have crossed MQTT.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from factory_pipelines.durable_files import write_parquet_atomic
from factory_pipelines.settings import FactorySettings
from factory_pipelines.simulator import Fleet
from factory_pipelines.telemetry import dump_payload, parse_telemetry_topic
from factory_pipelines.windows import WINDOW_SCHEMA, sealed_window_path, window_key


def write_fleet_windows(settings: FactorySettings, fleet: Fleet, start: datetime, windows: int) -> list[str]:
    """Step `fleet` once a second for `windows` windows from `start`; the sealed window keys."""
    keys = []
    per_window = int(settings.window_seconds)
    for w in range(windows):
        window_start = start + timedelta(seconds=w * per_window)
        key = window_key(window_start, "collector-1")
        rows = []
        for i in range(per_window):
            now = window_start + timedelta(seconds=i)
            for topic, payload in fleet.step(now):
                info = parse_telemetry_topic(topic, settings.site)
                assert info is not None
                rows.append(
                    {
                        "asset_id": payload.asset_id,  # type: ignore[attr-defined]
                        "kind": payload.kind,  # type: ignore[attr-defined]
                        "site": info.site,
                        "topic": topic,
                        "ts": now,
                        "received_at": now,
                        "seq": payload.seq,  # type: ignore[attr-defined]
                        "payload": dump_payload(payload).decode(),
                    }
                )
        write_parquet_atomic(pl.DataFrame(rows, schema=WINDOW_SCHEMA), sealed_window_path(settings.windows_dir, key))
        keys.append(key)
    return keys
