"""Network security: per-machine network features per window, `cyber_detector`, and its verdicts.

Thin: the work is in `factory_pipelines.cyber_model` (tested without Dagster). The plant model
(`cyber_detector`) is what the prediction asset serves; training on TON_IoT registers
`cyber_detector_ton_iot`, a model of another feature space, for the benchmark.
"""

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from assets.model_gate import champion_gate_spec, params_from_config, training_config, training_result
from assets.prediction_output import champion_or_none, record_predictions
from assets.telemetry import window_partitions
from factory_pipelines import cyber_model
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

CYBER_GROUP = "cyber"
MODEL = cyber_model.MODEL_NAME


@dg.asset(
    partitions_def=window_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["telemetry_window"],
    group_name=CYBER_GROUP,
    kinds={"polars", "parquet"},
)
def network_features(context: dg.AssetExecutionContext, window_files: PartitionFilesResource) -> dg.MaterializeResult:
    """Per machine per window: latency, packet loss and error rate statistics, against the fleet."""
    rows = 0
    for key in context.partition_keys:
        features = cyber_model.window_features(pl.read_parquet(window_files.telemetry_path(key)))
        window_files.write(features, window_files.model_features_path(MODEL, key))
        rows += features.height
    return dg.MaterializeResult(metadata={"windows": len(context.partition_keys), "machine_windows": rows})


class CyberDatasetConfig(dg.Config):
    """Which rows cyber_detector trains on: the plant's simulated network history, or TON_IoT."""

    source: Literal["plant", "ton_iot"] = Field("plant", description="plant: served model; ton_iot: benchmark.")
    ton_iot_dir: str = Field("", description="Folder with Train_Test_IoT_*.csv (source ton_iot).")
    ton_iot_devices: str = Field("", description="Comma-separated device files; empty: all seven.")
    n_machines: int = Field(10, ge=2, description="Machines of the simulated plant history.")
    n_windows: int = Field(240, ge=20, description="Windows per machine of the simulated plant history.")
    seed: int = Field(42, description="Seed of the simulated plant history.")
    validation_fraction: float = Field(0.3, gt=0, lt=1, description="Latest share held out (split by time).")


@dg.asset(deps=[network_features], group_name=CYBER_GROUP, kinds={"polars", "parquet"})
def cyber_detector_dataset(config: CyberDatasetConfig, window_files: PartitionFilesResource) -> dg.MaterializeResult:
    """Labelled network feature rows split by time: the plant's simulated history, or TON_IoT de-duplicated."""
    if config.source == "ton_iot":
        if not config.ton_iot_dir:
            raise ValueError("source ton_iot needs ton_iot_dir (the folder with Train_Test_IoT_*.csv)")
        data, _read = cyber_model.ton_iot_dataset(
            config.ton_iot_dir,
            cyber_model.TonIotParams(devices=config.ton_iot_devices, validation_fraction=config.validation_fraction),
        )
    else:
        data = cyber_model.plant_dataset(
            cyber_model.PlantHistoryParams(
                n_machines=config.n_machines,
                n_windows=config.n_windows,
                readings_per_window=int(window_files.window_seconds),
                seed=config.seed,
                validation_fraction=config.validation_fraction,
            )
        )
    train, validation = cyber_model.split_train_validation(data, config.validation_fraction)
    missing = cyber_model.types_missing_from(train, validation)
    stored = {
        name: store_dataset(
            window_files.datasets_dir,
            MODEL,
            name,
            split.frame,
            source=data.dataset,
            source_uri=data.source_uri,
            registered_name=cyber_model.registered_name_for(data.dataset),
            attributes=cyber_model.stored_attributes(split),
        )
        for name, split in (("training", train), ("validation", validation))
    }
    return dg.MaterializeResult(
        metadata={
            "source": data.dataset,
            "registered_name": cyber_model.registered_name_for(data.dataset),
            "training_rows": stored["training"].rows,
            "validation_rows": stored["validation"].rows,
            "types": dg.MetadataValue.json(list(data.types)),
            "types_on_one_side_only": dg.MetadataValue.json(missing),
        }
    )


CyberDetectorConfig = training_config(
    "CyberDetectorConfig", cyber_model.CyberParams, "Hyper-parameters of cyber_detector (set them in the launchpad)."
)


@dg.asset(
    deps=[cyber_detector_dataset],
    group_name=CYBER_GROUP,
    kinds={"sklearn", "mlflow"},
    check_specs=[champion_gate_spec(MODEL)],
)
def cyber_detector(
    context: dg.AssetExecutionContext,
    config: CyberDetectorConfig,  # type: ignore[valid-type]
    window_files: PartitionFilesResource,
    mlflow: MlflowResource,
    serving_store: ServingStoreResource,
) -> dg.MaterializeResult:
    """Attack classifier: logged to MLflow, registered (plant or TON_IoT variant), gated against its champion."""
    params = params_from_config(cyber_model.CyberParams, config)
    training, train_frame = load_dataset(window_files.datasets_dir, MODEL, "training")
    validation, validation_frame = load_dataset(window_files.datasets_dir, MODEL, "validation")
    train = cyber_model.from_stored(train_frame, training.attributes)
    checked = cyber_model.from_stored(validation_frame, validation.attributes)
    report = train_register_gate(
        cyber_model.FAMILY,
        fit=lambda: cyber_model.fit(train, params, progress=context.log.info),
        validation=checked,
        datasets=[training.record(train_frame), validation.record(validation_frame)],
        params={**params.__dict__, "training_source": training.source},
        tracking_uri=mlflow.tracking_uri,
        artifacts_dir=mlflow.artifacts_path,
        dagster_run_id=context.run.run_id,
        code_version=git_commit(),
        registered_name=training.registered_name,
        force=config.force_promotion,
        tolerance=config.promotion_tolerance,
        record_promotion=lambda record: serving_store.get_store().record_promotion(record),
        tags={"training_source": training.source},
    )
    context.log.info(f"{report.registered_name} v{report.version}: {report.promotion.alias}; {report.promotion.reason}")
    return training_result(report, training_source=training.source)


@dg.asset(
    partitions_def=window_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[network_features, cyber_detector],
    group_name=CYBER_GROUP,
    kinds={"sklearn", "parquet"},
    output_required=False,
)
def cyber_detector_predictions(
    context: dg.AssetExecutionContext,
    window_files: PartitionFilesResource,
    mlflow: MlflowResource,
    serving_store: ServingStoreResource,
    mqtt: MqttPublisherResource,
) -> Iterator[dg.MaterializeResult]:
    """Attack probability and the most likely attack type per machine and window, from the champion."""
    champion = champion_or_none(context, mlflow, cyber_model.FAMILY)
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
                label=row["label"],
                produced_at=produced_at,
                window_start=start,
                window_end=end,
                mlflow_run_id=champion.info.run_id,
                dagster_run_id=context.run.run_id,
                attack_type=row["attack_type"],
                threshold=champion.model.threshold,
            )
            for row in champion.model.score(features).iter_rows(named=True)
        ]
    metadata = record_predictions(context, MODEL, by_window, window_files, serving_store, mqtt)
    yield dg.MaterializeResult(metadata={**metadata, "model_version": champion.info.version})
