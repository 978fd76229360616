"""Network security: per-machine network features per window, `cyber_detector`, and its verdicts.

Thin: the work is in `factory_pipelines.cyber_model` (tested without Dagster). The plant model
(`cyber_detector`) is what the prediction asset serves; training on TON_IoT registers
`cyber_detector_ton_iot`, a model of another feature space, for the benchmark.
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
from factory_pipelines import cyber_model
from factory_pipelines.datasets import store_dataset
from factory_pipelines.native_threads import SCORING_THREADS, openmp_threads
from factory_pipelines.resources import (
    MlflowResource,
    MqttPublisherResource,
    PartitionFilesResource,
    ServingStoreResource,
)

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
        features = cyber_model.window_features(window_files.read(window_files.telemetry_path(key)))
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
    sets = StoredSets.load(window_files, MODEL)
    train = cyber_model.from_stored(sets.training_rows, sets.training.attributes)
    return train_from_stored_sets(
        context,
        cyber_model.FAMILY,
        config,
        sets=sets,
        fit=lambda: cyber_model.fit(train, params, progress=context.log.info),
        validation=cyber_model.from_stored(sets.validation_rows, sets.validation.attributes),
        params=params_as_dict(params),
        mlflow=mlflow,
        serving_store=serving_store,
    )


def window_predictions(run: ScoringRun, key: str, features: pl.DataFrame) -> pl.DataFrame:
    """One window's network features scored by the champion (benchmarks/scoring.py times this)."""
    verdicts = run.model.score(features)
    return run.stamped(
        key,
        {
            "asset_id": verdicts["asset_id"],
            "score": verdicts["probability"],
            "label": verdicts["label"],
            "attack_type": verdicts["attack_type"],
            "threshold": run.model.threshold,
        },
    )


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
    run = start_scoring(context, mlflow, cyber_model.FAMILY, window_files)
    if run is None:
        return
    with openmp_threads(SCORING_THREADS):  # once for the run: each window's own cap is then free
        by_window = {
            key: window_predictions(run, key, window_files.read(window_files.model_features_path(MODEL, key)))
            for key in context.partition_keys
        }
    yield dg.MaterializeResult(metadata=record_predictions(context, run, by_window, window_files, serving_store, mqtt))
