"""The window partitions and the first asset on them: a sealed window's machine rows, typed.

Assets here do their own file I/O through `PartitionFilesResource` and return
`MaterializeResult` with metadata, instead of going through an IO manager: one run covers many
window partitions (see `sensors/window_sensor.py`), each partition is its own Parquet file that
other processes read by path, and writing those files explicitly keeps that contract visible.
"""

from collections import Counter
from collections.abc import Iterator

import dagster as dg

from factory_pipelines.energy_model import machine_frame_problems, type_machine_rows
from factory_pipelines.resources import PartitionFilesResource

window_partitions = dg.DynamicPartitionsDefinition(name="telemetry_windows")
"""One partition per sealed window key, added by `sealed_windows_sensor`, removed by retention."""

TELEMETRY_GROUP = "telemetry"


@dg.asset(
    partitions_def=window_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name=TELEMETRY_GROUP,
    kinds={"polars", "parquet"},
    check_specs=[
        dg.AssetCheckSpec(
            "machine_rows_valid",
            asset="telemetry_window",
            blocking=True,
            description="Typed schema as declared and no duplicate (asset_id, seq) in any window of the run.",
        )
    ],
)
def telemetry_window(
    context: dg.AssetExecutionContext, window_files: PartitionFilesResource
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """The machine rows of each sealed window, validated and typed, as Parquet per window."""
    rows_by_kind: Counter[str] = Counter()
    assets: set[str] = set()
    invalid = duplicates = machine_rows = 0
    problems: dict[str, list[str]] = {}
    for key in context.partition_keys:
        typed = type_machine_rows(window_files.read_sealed(key), key)
        window_files.write(typed.machines, window_files.telemetry_path(key))
        rows_by_kind.update(typed.rows_by_kind)
        assets.update(typed.machines["asset_id"].unique().to_list())
        invalid += typed.invalid_rows
        duplicates += typed.duplicate_rows
        machine_rows += typed.machines.height
        if typed.invalid_reasons:
            context.log.warning(f"{key}: {typed.invalid_rows} invalid machine rows, e.g. {typed.invalid_reasons[0]}")
        found = machine_frame_problems(typed.machines)
        if found:
            problems[key] = found
    yield dg.MaterializeResult(
        metadata={
            "windows": len(context.partition_keys),
            "machine_rows": machine_rows,
            "rows_by_kind": dg.MetadataValue.json(dict(sorted(rows_by_kind.items()))),
            "assets": dg.MetadataValue.json(sorted(assets)),
            "asset_count": len(assets),
            "invalid_rows": invalid,
            "duplicate_rows_dropped": duplicates,
            "path": dg.MetadataValue.path(str(window_files.telemetry_dir)),
        }
    )
    yield dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"windows_checked": len(context.partition_keys), "problems": dg.MetadataValue.json(problems)},
    )
