"""One tick of the window sensor as the daemon applies it, then the run it asks for, in this process."""

from __future__ import annotations

import dagster as dg

from factory_pipelines.definitions import build_definitions
from factory_pipelines.resources import build_resources
from factory_pipelines.settings import FactorySettings

WINDOW_PARTITIONS = "telemetry_windows"


def hand_over_and_run(
    settings: FactorySettings, instance: dg.DagsterInstance
) -> tuple[list[str], dg.ExecuteInProcessResult]:
    """The window keys the tick added as partitions, and the result of the one run it requested."""
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def("sealed_windows_sensor")
    with dg.build_sensor_context(instance=instance, resources=build_resources(settings)) as context:
        result = sensor.evaluate_tick(context)
    # The daemon applies a tick's partition requests; evaluate_tick only returns them.
    added: list[str] = []
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        added += request.partition_keys
    (run_request,) = result.run_requests
    run = defs.resolve_job_def("window_predictions_job").execute_in_process(instance=instance, tags=run_request.tags)
    return added, run
