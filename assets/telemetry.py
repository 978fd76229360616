"""The window partitions and the first asset on them: a sealed window's rows, typed per kind.

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
from factory_pipelines.window_rows import TypedRows, camera_rows, cleanroom_rows, robot_rows, safety_rows

TYPED_KINDS = {"robots": robot_rows, "safety": safety_rows, "cameras": camera_rows, "cleanrooms": cleanroom_rows}
"""Besides machines: the typed-row files each window gets, by directory name under telemetry/."""

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
    """The rows of each sealed window, validated and typed per kind (machines, robots, safety, cameras)."""
    rows_by_kind: Counter[str] = Counter()
    typed_by_kind: Counter[str] = Counter()
    assets: set[str] = set()
    invalid = duplicates = machine_rows = 0
    problems: dict[str, list[str]] = {}
    for key in context.partition_keys:
        window = window_files.read_sealed(key)
        typed = type_machine_rows(window, key)
        window_files.write(typed.machines, window_files.telemetry_path(key))
        rows_by_kind.update(typed.rows_by_kind)
        assets.update(typed.machines["asset_id"].unique().to_list())
        invalid += typed.invalid_rows
        duplicates += typed.duplicate_rows
        machine_rows += typed.machines.height
        if typed.invalid_reasons:
            context.log.warning(f"{key}: {typed.invalid_rows} invalid machine rows, e.g. {typed.invalid_reasons[0]}")
        for kind, type_kind in TYPED_KINDS.items():
            rows: TypedRows = type_kind(window, key)
            if rows.frame.height or window_files.rows_path(kind, key).exists():
                window_files.write(rows.frame, window_files.rows_path(kind, key))
            typed_by_kind[kind] += rows.frame.height
            invalid += rows.invalid_rows
            duplicates += rows.duplicate_rows
            if rows.invalid_reasons:
                context.log.warning(f"{key}: {rows.invalid_rows} invalid {kind} rows, e.g. {rows.invalid_reasons[0]}")
        found = machine_frame_problems(typed.machines)
        if found:
            problems[key] = found
    yield dg.MaterializeResult(
        metadata={
            "windows": len(context.partition_keys),
            "machine_rows": machine_rows,
            "rows_by_kind": dg.MetadataValue.json(dict(sorted(rows_by_kind.items()))),
            "typed_rows": dg.MetadataValue.json({"machines": machine_rows, **typed_by_kind}),
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
