"""Zone safety: per-window features, the `safety_hazard` model, and its hazard probabilities.

Thin: the work is in `factory_pipelines.safety_model` (tested without Dagster).
"""

from collections.abc import Iterator

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
from factory_pipelines import safety_model
from factory_pipelines.datasets import store_dataset
from factory_pipelines.native_threads import SCORING_THREADS, openmp_threads
from factory_pipelines.resources import (
    MlflowResource,
    MqttPublisherResource,
    PartitionFilesResource,
    ServingStoreResource,
)

SAFETY_GROUP = "safety"
MODEL = safety_model.MODEL_NAME


@dg.asset(
    partitions_def=window_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["telemetry_window"],
    group_name=SAFETY_GROUP,
    kinds={"polars", "parquet"},
)
def safety_features(context: dg.AssetExecutionContext, window_files: PartitionFilesResource) -> dg.MaterializeResult:
    """Per zone per window: gas, noise, temperature, proximity and PPE aggregates and trends."""
    rows = 0
    for key in context.partition_keys:
        path = window_files.rows_path("safety", key)
        readings = window_files.read(path) if path.exists() else pl.DataFrame()
        features = (
            safety_model.window_features(readings)
            if readings.height
            else safety_model.window_features(pl.DataFrame(schema=safety_model.SAFETY_ROWS_SCHEMA))
        )
        window_files.write(features, window_files.model_features_path(MODEL, key))
        rows += features.height
    return dg.MaterializeResult(metadata={"windows": len(context.partition_keys), "zone_windows": rows})


class SafetyDatasetConfig(dg.Config):
    """Which rows safety_hazard trains and is validated on."""

    min_history_windows: int = Field(
        500, ge=1, description="Labelled zone-windows of history needed to train on it; below, a simulated history."
    )
    simulated_zones: int = Field(12, ge=1, description="Zones of the simulated history.")
    simulated_windows: int = Field(480, ge=10, description="Windows per zone of the simulated history.")
    seed: int = Field(42, description="Seed of the simulated history and of the train/validation split.")
    validation_fraction: float = Field(0.25, gt=0, lt=1, description="Share of whole zone-episode blocks held out.")


@dg.asset(deps=[safety_features], group_name=SAFETY_GROUP, kinds={"polars", "parquet"})
def safety_hazard_dataset(config: SafetyDatasetConfig, window_files: PartitionFilesResource) -> dg.MaterializeResult:
    """Labelled zone-windows (history, or a simulated one on a first start) split by zone-episode blocks."""
    history = safety_model.labelled(safety_model.read_feature_history(window_files.model_feature_history(MODEL)))
    if history.height >= config.min_history_windows:
        features, source, uri = history, "history", str(window_files.features_dir / MODEL)
    else:
        features = safety_model.safety_history(
            config.simulated_zones, config.simulated_windows, window_files.window_seconds, config.seed
        )
        source = "simulated"
        uri = f"safety_sim://zones={config.simulated_zones}&windows={config.simulated_windows}&seed={config.seed}"
    split = safety_model.split_train_validation(features, config.validation_fraction, config.seed)
    root = window_files.datasets_dir
    training = store_dataset(root, MODEL, "training", split.train, source=source, source_uri=uri)
    validation = store_dataset(root, MODEL, "validation", split.validation, source=source, source_uri=uri)
    return dg.MaterializeResult(
        metadata={
            "source": source,
            "training_rows": training.rows,
            "validation_rows": validation.rows,
            "hazard_share": float(features["hazard"].cast(pl.Float64).mean() or 0.0),
            "training_digest": training.digest,
            "validation_digest": validation.digest,
        }
    )


SafetyHazardConfig = training_config(
    "SafetyHazardConfig", safety_model.SafetyParams, "Hyper-parameters of safety_hazard (set them in the launchpad)."
)


@dg.asset(
    deps=[safety_hazard_dataset],
    group_name=SAFETY_GROUP,
    kinds={"sklearn", "mlflow"},
    check_specs=[champion_gate_spec(MODEL)],
)
def safety_hazard(
    context: dg.AssetExecutionContext,
    config: SafetyHazardConfig,  # type: ignore[valid-type]
    window_files: PartitionFilesResource,
    mlflow: MlflowResource,
    serving_store: ServingStoreResource,
) -> dg.MaterializeResult:
    """Calibrated hazard classifier: logged to MLflow, registered, gated against the champion."""
    params = params_from_config(safety_model.SafetyParams, config)
    sets = StoredSets.load(window_files, MODEL)
    return train_from_stored_sets(
        context,
        safety_model.FAMILY,
        config,
        sets=sets,
        fit=lambda: safety_model.fit(sets.training_rows, params, progress=context.log.info),
        validation=sets.validation_rows,
        params=params_as_dict(params),
        mlflow=mlflow,
        serving_store=serving_store,
        describe_fit=safety_model.describe_fit,
    )


def window_predictions(run: ScoringRun, key: str, features: pl.DataFrame) -> pl.DataFrame:
    """One window's zone features scored by the champion (benchmarks/scoring.py times this)."""
    verdicts = run.model.predict_proba(features)
    return run.stamped(
        key,
        {
            "asset_id": verdicts["asset_id"],
            "score": verdicts["probability"],
            "label": verdicts["risk_level"],
            "zone": verdicts["zone"],
        },
    )


@dg.asset(
    partitions_def=window_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[safety_features, safety_hazard],
    group_name=SAFETY_GROUP,
    kinds={"sklearn", "parquet"},
    output_required=False,
)
def safety_hazard_predictions(
    context: dg.AssetExecutionContext,
    window_files: PartitionFilesResource,
    mlflow: MlflowResource,
    serving_store: ServingStoreResource,
    mqtt: MqttPublisherResource,
) -> Iterator[dg.MaterializeResult]:
    """Hazard probability and risk level per zone and window, from the champion."""
    run = start_scoring(context, mlflow, safety_model.FAMILY, window_files)
    if run is None:
        return
    with openmp_threads(SCORING_THREADS):  # once for the run: each window's own cap is then free
        by_window = {
            key: window_predictions(run, key, window_files.read(window_files.model_features_path(MODEL, key)))
            for key in context.partition_keys
        }
    yield dg.MaterializeResult(metadata=record_predictions(context, run, by_window, window_files, serving_store, mqtt))
