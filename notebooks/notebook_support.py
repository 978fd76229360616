"""What the notebooks share: the platform's settings, figures, and data for an empty data dir.

Nothing here re-implements the platform. Demo data is made the way the platform makes it: the
simulator's `Fleet` writes sealed windows in the collector's file contract (as
`tests/fleet_windows.py` does), and the window pipeline, the orchestrator and the training jobs
run as Dagster runs in the platform's own instance (`DATA_DIR/dagster`), so they show in the
Dagster UI like any other run.

The notebooks import this module from their own folder (Jupyter starts a kernel in the
notebook's folder); `notebook_settings()` then moves to the repository root, so `.env`,
`factory.yaml` and the default data dir (`./.factory`) resolve as they do for `factory` commands.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used, after `quiet_known_warnings` (importing them is what warns)
    import dagster as dg

    from factory_pipelines.settings import FactorySettings

REPO_ROOT = Path(__file__).resolve().parent.parent
SIMULATED_COLLECTOR = "notebook-sim"  # the collector id in the keys of windows the notebooks simulate
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # a run's full log is in the Dagster UI


def env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


SMALL = env_flag("NOTEBOOK_SMALL")
"""NOTEBOOK_SMALL=1: the test suite's settings (few windows, few epochs), minutes become seconds."""


def notebook_settings() -> FactorySettings:
    """The platform's settings as `factory` commands read them (from the repository root), dirs made."""
    quiet_known_warnings()
    os.chdir(REPO_ROOT)
    from factory_pipelines.settings import load_settings

    settings = load_settings()
    settings.ensure_dirs()
    return settings


def quiet_known_warnings() -> None:
    """Silence the noise every notebook would otherwise show in its outputs, and nothing else."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up lines
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets (Dagster, MLflow)
    from dagster import BetaWarning

    warnings.filterwarnings("ignore", category=BetaWarning)  # the window assets' backfill policy, relied on knowingly
    # Dagster's in-process executor closing its event loop inside the kernel's running loop
    warnings.filterwarnings("ignore", message="coroutine 'BaseEventLoop.shutdown_asyncgens' was never awaited")


def figures_dir(settings: FactorySettings, notebook: str) -> Path:
    """Where a notebook writes its PNG figures: `DATA_DIR/notebooks/{notebook}/`."""
    path = settings.data_path / "notebooks" / notebook
    path.mkdir(parents=True, exist_ok=True)
    return path


def use_agg_backend() -> None:
    """Figures render to PNG files (and inline in Jupyter), with or without a display."""
    import matplotlib

    if not _in_jupyter():  # Jupyter's inline backend draws with Agg already
        matplotlib.use("Agg")


def _in_jupyter() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


# ---- sealed windows from the simulator --------------------------------------------------------


def simulate_windows(
    settings: FactorySettings,
    *,
    windows: int,
    faults: Mapping[str, str],
    machines: int = 5,
    robots: int = 3,
    cleanrooms: int = 1,
    seed: int = 42,
) -> list[str]:
    """Sealed windows of a simulated fleet ending now, one reading per asset per second; their keys.

    The files are what the collector writes (`windows.WINDOW_SCHEMA`, payloads as they cross
    MQTT), under the collector id `notebook-sim`. On a data dir where `factory up` runs, the
    platform's sensors take them up as well: the notebooks simulate only when there is no data yet.
    """
    import polars as pl

    from factory_pipelines.simulator import Fleet, FleetConfig
    from factory_pipelines.storage import write_parquet
    from factory_pipelines.telemetry import dump_payload, parse_telemetry_topic
    from factory_pipelines.windows import WINDOW_SCHEMA, aligned_window_start, sealed_window_path, window_key

    config = FleetConfig(
        machines=machines,
        robots=robots,
        cleanrooms=cleanrooms,
        safety_stations=0,
        cameras=0,
        seed=seed,
        site=settings.site,
    )
    fleet = Fleet(config, dict(faults))
    per_window = int(settings.window_seconds)
    first = aligned_window_start(datetime.now(UTC), settings.window_seconds) - timedelta(seconds=windows * per_window)
    keys = []
    for w in range(windows):
        start = first + timedelta(seconds=w * per_window)
        key = window_key(start, SIMULATED_COLLECTOR)
        rows = []
        for i in range(per_window):
            now = start + timedelta(seconds=i)
            for topic, payload in fleet.step(now):
                info = parse_telemetry_topic(topic, settings.site)
                rows.append(
                    {
                        "asset_id": payload.asset_id,  # type: ignore[attr-defined]
                        "kind": payload.kind,  # type: ignore[attr-defined]
                        "site": info.site if info else settings.site,
                        "topic": topic,
                        "ts": now,
                        "received_at": now,
                        "seq": payload.seq,  # type: ignore[attr-defined]
                        "payload": dump_payload(payload).decode(),
                    }
                )
        write_parquet(pl.DataFrame(rows, schema=WINDOW_SCHEMA), sealed_window_path(settings.store_windows_dir, key))
        keys.append(key)
    return keys


# ---- the platform's Dagster instance ----------------------------------------------------------


_DEFINITIONS: dict[int, tuple[FactorySettings, dg.Definitions]] = {}


def definitions(settings: FactorySettings) -> dg.Definitions:
    """The code location's definitions for these settings (what `dagster dev` loads), built once."""
    from factory_pipelines.definitions import build_definitions

    if id(settings) not in _DEFINITIONS:
        _DEFINITIONS[id(settings)] = (settings, build_definitions(settings))
    return _DEFINITIONS[id(settings)][1]


@contextmanager
def platform_instance(settings: FactorySettings) -> Iterator[dg.DagsterInstance]:
    """The Dagster instance the UI shows (`DATA_DIR/dagster`, its dagster.yaml written on first use)."""
    from dagster import DagsterInstance

    from factory_pipelines.dagster_instance import write_dagster_yaml

    if not (settings.dagster_home / "dagster.yaml").is_file():
        write_dagster_yaml(settings)
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        yield instance


def score_windows(settings: FactorySettings, keys: Sequence[str]) -> str:
    """Run `window_predictions_job` on these windows, as the sealed-windows sensor would; the run id."""
    from sensors.window_sensor import windows_run_request

    job = definitions(settings).resolve_job_def("window_predictions_job")
    request = windows_run_request(list(keys))
    with platform_instance(settings) as instance:
        new = [key for key in keys if not instance.has_dynamic_partition("telemetry_windows", key)]
        instance.add_dynamic_partitions("telemetry_windows", new)
        result = job.execute_in_process(
            instance=instance,
            partition_key=request.partition_key,
            run_config=QUIET,
            tags={**request.tags, "factory/trigger": "notebook"},
            raise_on_error=False,
        )
    if not result.success:
        raise RuntimeError(f"window_predictions_job failed: run {result.run_id} in the Dagster UI")
    return result.run_id


def raise_alerts(settings: FactorySettings, keys: Sequence[str]) -> list[str]:
    """Tick `prediction_alerts_sensor` and run `orchestrator_job` for its requests about these windows.

    The same run requests the sensor makes in `dagster dev`, executed here; the orchestrator run ids.
    """
    import dagster as dg

    defs = definitions(settings)
    sensor = defs.resolve_sensor_def("prediction_alerts_sensor")
    job = defs.resolve_job_def("orchestrator_job")
    run_ids = []
    with platform_instance(settings) as instance:
        result = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
        requests = [] if isinstance(result, dg.SkipReason) else result.run_requests
        for request in requests:
            if request.partition_key not in keys:
                continue  # windows the platform's own sensor is in charge of
            run = job.execute_in_process(
                instance=instance,
                partition_key=request.partition_key,
                run_config={**(request.run_config or {}), **QUIET},
                tags={**request.tags, "factory/trigger": "notebook"},
                raise_on_error=False,
            )
            if not run.success:
                raise RuntimeError(f"orchestrator_job failed: run {run.run_id} in the Dagster UI")
            run_ids.append(run.run_id)
    return run_ids


def materialize_dataset(
    settings: FactorySettings, model_name: str, config: Mapping[str, Any]
) -> dg.ExecuteInProcessResult:
    """Materialize only `{model_name}_dataset` (its training and validation sets), as a run of the training job."""
    import dagster as dg

    from factory_pipelines.model_catalog import catalog_entry

    entry = catalog_entry(model_name)
    job = definitions(settings).resolve_job_def(entry.training_job)
    with platform_instance(settings) as instance:
        result = job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey(entry.dataset_asset)],
            run_config={"ops": {entry.dataset_asset: {"config": dict(config)}}, **QUIET},
            tags={"factory/trigger": "notebook"},
            raise_on_error=False,
        )
    if not result.success:
        raise RuntimeError(f"{entry.dataset_asset} failed: run {result.run_id} in the Dagster UI")
    return result
