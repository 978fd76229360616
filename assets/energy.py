"""Energy anomalies: per-machine features per window, the `energy_iforest` model, its predictions.

Thin on purpose: each asset reads and writes through resources and calls the plain functions of
`factory_pipelines.energy_model` (tested without Dagster). Partitioned assets handle every window
of their run (`context.partition_keys`), so a run that covers a backlog of windows loads the
model once and launches once.
"""

from collections.abc import Iterator

import dagster as dg
import polars as pl
from pydantic import Field

from assets.model_gate import PromotionConfig, StoredSets, champion_gate_spec, params_as_dict, train_from_stored_sets
from assets.prediction_output import ScoringRun, record_predictions, start_scoring
from assets.telemetry import window_partitions
from factory_pipelines import energy_model
from factory_pipelines.datasets import store_dataset
from factory_pipelines.resources import (
    MlflowResource,
    MqttPublisherResource,
    PartitionFilesResource,
    ServingStoreResource,
)
from factory_pipelines.settings import load_settings

ENERGY_GROUP = "energy"


@dg.asset(
    partitions_def=window_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["telemetry_window"],
    group_name=ENERGY_GROUP,
    kinds={"polars", "parquet"},
)
def machine_features(context: dg.AssetExecutionContext, window_files: PartitionFilesResource) -> dg.MaterializeResult:
    """Per machine per window: power, temperature, vibration, speed aggregates and power-vs-work residuals."""
    rows = machines = 0
    for key in context.partition_keys:
        typed = window_files.read(window_files.telemetry_path(key))
        features = energy_model.machine_features(typed)
        window_files.write(features, window_files.features_path(key))
        rows += features.height
        machines = max(machines, features.height)
    return dg.MaterializeResult(
        metadata={
            "windows": len(context.partition_keys),
            "feature_rows": rows,
            "max_machines_per_window": machines,
            "features": dg.MetadataValue.json(list(energy_model.FEATURE_COLUMNS)),
            "path": dg.MetadataValue.path(str(window_files.features_dir)),
        }
    )


class EnergyDatasetConfig(dg.Config):
    """Which rows energy_iforest trains on (set them in the launchpad)."""

    min_history_windows: int = Field(
        30, ge=1, description="Train on feature history from this many windows on; below, on the simulated baseline."
    )
    max_history_windows: int = Field(5000, ge=1, description="Use at most the newest this many windows of history.")
    validation_windows: int = Field(60, ge=10, description="Windows of labelled simulated validation data.")


@dg.asset(deps=[machine_features], group_name=ENERGY_GROUP, kinds={"polars", "parquet"})
def energy_iforest_dataset(config: EnergyDatasetConfig, window_files: PartitionFilesResource) -> dg.MaterializeResult:
    """Training rows (feature history, or the simulated baseline on a first start) and labelled validation rows."""
    history_paths = energy_model.history_paths_newest(window_files.feature_history(), config.max_history_windows)
    data = energy_model.choose_training_data(
        energy_model.read_feature_history(history_paths),
        str(window_files.features_dir),
        min_history_windows=config.min_history_windows,
        baseline=lambda: energy_model.simulated_baseline(window_files.baselines_dir, window_files.window_seconds),
    )
    validation = energy_model.labelled_validation(
        window_files.baselines_dir, window_files.window_seconds, windows=config.validation_windows
    )
    root, family = window_files.datasets_dir, energy_model.MODEL_NAME
    training = store_dataset(
        root, family, "training", energy_model.scoreable(data.features), source=data.source, source_uri=data.source_uri
    )
    checked = store_dataset(
        root,
        family,
        "validation",
        validation.features,
        source="simulated-energy-spike",
        source_uri=validation.source_uri,
    )
    return dg.MaterializeResult(
        metadata={
            "training_source": training.source,
            "training_rows": training.rows,
            "training_digest": training.digest,
            "validation_rows": checked.rows,
            "validation_anomalies": int(validation.features["is_anomaly"].sum()),
            "validation_digest": checked.digest,
            "path": dg.MetadataValue.path(str(root / family)),
        }
    )


class EnergyIForestConfig(PromotionConfig):
    """Hyper-parameters of a training run (set them in the launchpad)."""

    n_estimators: int = Field(200, gt=0, description="Trees in the forest.")
    contamination: float | None = Field(
        None, gt=0, lt=0.5, description="Expected anomaly share; empty: FACTORY_ANOMALY_CONTAMINATION."
    )
    max_samples: int = Field(256, gt=1, description="Rows per tree (capped at the training rows).")
    random_state: int = Field(42, description="Seed: the same data and seed give the same model.")


@dg.asset(
    deps=[energy_iforest_dataset],
    group_name=ENERGY_GROUP,
    kinds={"sklearn", "mlflow"},
    check_specs=[champion_gate_spec("energy_iforest")],
)
def energy_iforest(
    context: dg.AssetExecutionContext,
    config: EnergyIForestConfig,
    window_files: PartitionFilesResource,
    mlflow: MlflowResource,
    serving_store: ServingStoreResource,
) -> dg.MaterializeResult:
    """IsolationForest over machine features: logged to MLflow, registered, gated against the champion."""
    family = energy_model.FAMILY
    sets = StoredSets.load(window_files, family.name)
    contamination = config.contamination or load_settings().anomaly_contamination
    params = energy_model.IForestParams(
        n_estimators=config.n_estimators,
        contamination=contamination,
        max_samples=config.max_samples,
        random_state=config.random_state,
    )
    return train_from_stored_sets(
        context,
        family,
        config,
        sets=sets,
        fit=lambda: energy_model.fit_iforest(sets.training_rows, params),
        validation=sets.validation_rows,
        params={**params_as_dict(params), "features": ",".join(energy_model.MODEL_FEATURES)},
        mlflow=mlflow,
        serving_store=serving_store,
        describe_fit=lambda model: energy_model.training_metrics(model, sets.training_rows),
    )


def window_predictions(run: ScoringRun, key: str, features: pl.DataFrame) -> pl.DataFrame:
    """One window's machine features scored by the champion (benchmarks/scoring.py times this)."""
    verdicts = energy_model.score_features(run.model, features)
    return run.stamped(key, {name: verdicts[name] for name in ("asset_id", "score", "label", "threshold")})


@dg.asset(
    partitions_def=window_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[machine_features, energy_iforest],
    group_name=ENERGY_GROUP,
    kinds={"sklearn", "parquet"},
    output_required=False,
)
def energy_anomaly_predictions(
    context: dg.AssetExecutionContext,
    window_files: PartitionFilesResource,
    mlflow: MlflowResource,
    serving_store: ServingStoreResource,
    mqtt: MqttPublisherResource,
) -> Iterator[dg.MaterializeResult]:
    """Each machine in each window scored by the champion; Parquet, serving store, MQTT (best-effort)."""
    run = start_scoring(context, mlflow, energy_model.FAMILY, window_files)
    if run is None:
        return
    by_window = {
        key: window_predictions(run, key, window_files.read(window_files.features_path(key)))
        for key in context.partition_keys
    }
    metadata = record_predictions(context, run, by_window, window_files, serving_store, mqtt)
    anomalies = sorted(
        (key, asset_id)
        for key, predictions in by_window.items()
        for asset_id in predictions.filter(pl.col("label") == energy_model.ANOMALY)["asset_id"]
    )
    yield dg.MaterializeResult(
        metadata={
            **metadata,
            "anomalies": len(anomalies),
            "anomalous": dg.MetadataValue.json([f"{window}/{asset}" for window, asset in anomalies[:50]]),
        }
    )
