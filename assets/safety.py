"""Zone safety: per-window features, the `safety_hazard` model, and its hazard probabilities.

Thin: the work is in `factory_pipelines.safety_model` (tested without Dagster).
"""

from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg
import polars as pl
from pydantic import Field

from assets.model_gate import champion_gate_spec, params_from_config, training_config, training_result
from assets.prediction_output import champion_or_none, record_predictions
from assets.telemetry import window_partitions
from factory_pipelines import safety_model
from factory_pipelines.datasets import load_dataset, store_dataset
from factory_pipelines.model_registry import git_commit
from factory_pipelines.resources import (
    MlflowResource,
    MqttPublisherResource,
    PartitionFilesResource,
    ServingStoreResource,
)
from factory_pipelines.telemetry import Prediction
from factory_pipelines.training import train_register_gate
from factory_pipelines.windows import window_bounds

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
        readings = pl.read_parquet(path) if path.exists() else pl.DataFrame()
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
    training, train_rows = load_dataset(window_files.datasets_dir, MODEL, "training")
    validation, validation_rows = load_dataset(window_files.datasets_dir, MODEL, "validation")
    report = train_register_gate(
        safety_model.FAMILY,
        fit=lambda: safety_model.fit(train_rows, params, progress=context.log.info),
        validation=validation_rows,
        datasets=[training.record(train_rows), validation.record(validation_rows)],
        params={**params.__dict__, "training_source": training.source},
        tracking_uri=mlflow.tracking_uri,
        artifacts_dir=mlflow.artifacts_path,
        dagster_run_id=context.run.run_id,
        code_version=git_commit(),
        force=config.force_promotion,
        tolerance=config.promotion_tolerance,
        record_promotion=lambda record: serving_store.get_store().record_promotion(record),
        tags={"training_source": training.source},
        describe_fit=safety_model.describe_fit,
    )
    context.log.info(f"{MODEL} v{report.version}: {report.promotion.alias}; {report.promotion.reason}")
    return training_result(report, training_source=training.source)


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
    champion = champion_or_none(context, mlflow, safety_model.FAMILY)
    if champion is None:
        return
    produced_at = datetime.now(UTC)
    by_window: dict[str, list[Prediction]] = {}
    for key in context.partition_keys:
        features = pl.read_parquet(window_files.model_features_path(MODEL, key))
        start, end = window_bounds(key, window_files.window_seconds)
        by_window[key] = [
            Prediction(
                model_name=MODEL,
                model_version=champion.info.version,
                asset_id=row["asset_id"],
                window_key=key,
                score=row["probability"],
                label=row["risk_level"],
                produced_at=produced_at,
                window_start=start,
                window_end=end,
                mlflow_run_id=champion.info.run_id,
                dagster_run_id=context.run.run_id,
                zone=row["zone"],
            )
            for row in champion.model.predict_proba(features).iter_rows(named=True)
        ]
    metadata = record_predictions(context, MODEL, by_window, window_files, serving_store, mqtt)
    yield dg.MaterializeResult(metadata={**metadata, "model_version": champion.info.version})
