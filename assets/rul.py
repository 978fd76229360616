"""Remaining useful life: robot bearings scored by `rul_lstm`, an LSTM trained in Dagster.

Thin: the work is in `factory_pipelines.rul_model` (tested without Dagster). A prediction needs
the robot's recent history, not only its latest window: `robot_steps` bins each window's readings
into the model's time steps once, and each window is scored with the steps of the windows before it too.
"""

from collections.abc import Iterator
from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from assets.model_gate import (
    StoredSets,
    champion_gate_spec,
    params_as_dict,
    params_from_config,
    train_from_stored_sets,
    training_config,
)
from assets.prediction_output import ScoringRun, record_predictions, start_scoring
from assets.telemetry import window_partitions
from factory_pipelines import rul_family, rul_model
from factory_pipelines.datasets import store_dataset
from factory_pipelines.resources import (
    MlflowResource,
    MqttPublisherResource,
    PartitionFilesResource,
    ServingStoreResource,
)

RUL_GROUP = "rul"
MODEL = rul_model.MODEL_NAME
RUL_LOW_CYCLES = 200.0  # label a robot `rul_low` when its interval's lower end falls below this


class RulDatasetConfig(dg.Config):
    """Which run-to-failure histories rul_lstm trains on."""

    source: Literal["robots", "cmapss"] = Field(
        "robots", description="robots: the simulator's bearings (served); cmapss: NASA C-MAPSS (benchmark)."
    )
    cmapss_dir: str = Field("", description="source cmapss: folder with train_FD00x.txt.")
    subset: str = Field("FD001", description="source cmapss: FD001, FD002, FD003 or FD004.")
    n_robots: int = Field(24, ge=4, description="source robots: simulated robots, each run to failure.")
    lives_per_robot: int = Field(2, ge=1, description="source robots: bearing lives per robot.")
    seed: int = Field(42, description="Seed of the simulated histories, the unit split and the validation cuts.")
    validation_fraction: float = Field(
        0.2, gt=0, lt=1, description="Units held out, cut at random cycles like NASA's test split."
    )


@dg.asset(group_name=RUL_GROUP, kinds={"polars", "parquet"})
def rul_lstm_dataset(config: RulDatasetConfig, window_files: PartitionFilesResource) -> dg.MaterializeResult:
    """Run-to-failure series: training units, and held-out units cut at random cycles for validation."""
    if config.source == rul_family.SOURCE_CMAPSS:
        if not config.cmapss_dir:
            raise ValueError("source cmapss needs cmapss_dir (the folder with train_FD00x.txt)")
        dataset = rul_model.cmapss_dataset(rul_family.cmapss_train_file(config.cmapss_dir, config.subset))
    else:
        dataset = rul_model.robot_dataset(config.n_robots, config.seed, lives_per_robot=config.lives_per_robot)
    registered_name = rul_family.registered_name_for(config.source, config.subset)
    train, validation = rul_model.train_validation_split(
        dataset, validation_fraction=config.validation_fraction, seed=config.seed
    )
    stored = {
        name: store_dataset(
            window_files.datasets_dir,
            MODEL,
            name,
            split.frame,
            source=config.source if config.source == "robots" else f"cmapss-{config.subset.upper()}",
            source_uri=split.source_uri,
            registered_name=registered_name,
            attributes=rul_family.stored_attributes(split),
        )
        for name, split in (("training", train), ("validation", validation))
    }
    return dg.MaterializeResult(
        metadata={
            "source": config.source,
            "registered_name": registered_name,
            "training_units": train.n_units,
            "validation_units": validation.n_units,
            "training_rows": stored["training"].rows,
            "features": dg.MetadataValue.json(list(dataset.feature_columns)),
        }
    )


RulLstmConfig = training_config(
    "RulLstmConfig", rul_model.RulParams, "Hyper-parameters of rul_lstm (set them in the launchpad)."
)


@dg.asset(
    deps=[rul_lstm_dataset],
    group_name=RUL_GROUP,
    kinds={"tensorflow", "scikit-learn", "mlflow"},
    check_specs=[champion_gate_spec(MODEL)],
)
def rul_lstm(
    context: dg.AssetExecutionContext,
    config: RulLstmConfig,  # type: ignore[valid-type]
    window_files: PartitionFilesResource,
    mlflow: MlflowResource,
    serving_store: ServingStoreResource,
) -> dg.MaterializeResult:
    """LSTM RUL model (with history trees on C-MAPSS) and a conformal interval: logged, registered, gated."""
    params = params_from_config(rul_model.RulParams, config)
    sets = StoredSets.load(window_files, MODEL)
    train = rul_family.from_stored(sets.training_rows, sets.training.attributes)
    return train_from_stored_sets(
        context,
        rul_family.FAMILY,
        config,
        sets=sets,
        fit=lambda: rul_model.fit(train, params, progress=context.log.info),
        validation=rul_family.from_stored(sets.validation_rows, sets.validation.attributes),
        params=params_as_dict(params),
        mlflow=mlflow,
        serving_store=serving_store,
    )


@dg.asset(
    partitions_def=window_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["telemetry_window"],
    group_name=RUL_GROUP,
    kinds={"polars", "parquet"},
)
def robot_steps(context: dg.AssetExecutionContext, window_files: PartitionFilesResource) -> dg.MaterializeResult:
    """Per robot and window: its readings binned into rul_lstm's time steps (the last reading of each step).

    Binned once per window here, so scoring a window reads the steps of its lookback windows
    instead of binning every one of their readings again.
    """
    steps = robots = 0
    for key in context.partition_keys:
        path = window_files.rows_path("robots", key)
        if not path.exists():
            continue  # no robot spoke in this window: nothing to bin, and no lookback reads it
        binned = rul_model.robot_steps(window_files.read(path))
        window_files.write(binned, window_files.model_features_path(MODEL, key))
        steps += binned.height
        robots = max(robots, binned.get_column("asset_id").n_unique())
    return dg.MaterializeResult(
        metadata={
            "windows": len(context.partition_keys),
            "steps": steps,
            "max_robots_per_window": robots,
            "cycles_per_step": rul_model.ROBOT_CYCLES_PER_STEP,
            "path": dg.MetadataValue.path(str(window_files.features_dir / MODEL)),
        }
    )


def window_predictions(run: ScoringRun, key: str, steps: pl.DataFrame) -> pl.DataFrame:
    """RUL per robot from the steps of the lookback windows up to `key` (benchmarks/scoring.py times this)."""
    verdicts = rul_model.robot_rul(run.model, steps)
    return run.stamped(
        key,
        {
            "asset_id": pl.Series(verdicts.asset_id, dtype=pl.String),
            "score": pl.Series(verdicts.rul),
            "label": pl.Series(["rul_low" if x < RUL_LOW_CYCLES else "normal" for x in verdicts.lower.tolist()]),
            "rul_lower": pl.Series(verdicts.lower),
            "rul_upper": pl.Series(verdicts.upper),
            "confidence": verdicts.confidence,
            "history_steps": pl.Series(verdicts.steps, dtype=pl.Int64),
        },
    )


class LookbackSteps:
    """The robot steps of a window and the windows before it, each window's file read once per run.

    Windows are those with robot rows. A window binned before `robot_steps` existed, or a model
    trained with another step size than the asset bins with, is binned here from its rows.
    """

    def __init__(self, window_files: PartitionFilesResource, model: rul_model.RulModel) -> None:
        self.window_files = window_files
        self.cycles_per_step = rul_model.robot_cycles_per_step(model)
        self.windows = rul_model.robot_history_windows(model, window_files.window_seconds)
        self._read: dict[str, pl.DataFrame] = {}

    def up_to(self, key: str) -> pl.DataFrame:
        keys = [path.stem for path in self.window_files.rows_history("robots", key, self.windows)]
        self._read = {k: self._read[k] if k in self._read else self._steps(k) for k in keys}  # drops the older
        return pl.concat(self._read.values()) if keys else pl.DataFrame(schema=rul_model.ROBOT_STEP_SCHEMA)

    def _steps(self, key: str) -> pl.DataFrame:
        binned = self.window_files.model_features_path(MODEL, key)
        if binned.exists() and self.cycles_per_step == rul_model.ROBOT_CYCLES_PER_STEP:
            return self.window_files.read(binned)
        rows = self.window_files.read(self.window_files.rows_path("robots", key))
        return rul_model.robot_steps(rows, cycles_per_step=self.cycles_per_step)


@dg.asset(
    partitions_def=window_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[robot_steps, rul_lstm],
    group_name=RUL_GROUP,
    kinds={"tensorflow", "parquet"},
    output_required=False,
)
def rul_predictions(
    context: dg.AssetExecutionContext,
    window_files: PartitionFilesResource,
    mlflow: MlflowResource,
    serving_store: ServingStoreResource,
    mqtt: MqttPublisherResource,
) -> Iterator[dg.MaterializeResult]:
    """Per robot and window: RUL in cycles with its conformal interval, from the robot's recent steps."""
    run = start_scoring(context, mlflow, rul_family.FAMILY, window_files)
    if run is None:
        return
    lookback = LookbackSteps(window_files, run.model)
    by_window: dict[str, pl.DataFrame] = {}
    for key in context.partition_keys:
        if not window_files.rows_path("robots", key).exists():
            by_window[key] = pl.DataFrame()
            continue
        by_window[key] = window_predictions(run, key, lookback.up_to(key))
    metadata = record_predictions(context, run, by_window, window_files, serving_store, mqtt)
    yield dg.MaterializeResult(metadata={**metadata, "lookback": lookback.windows})
