"""Where every prediction asset's verdicts go: Parquet per window, the serving store, MQTT.

The files and the store are the record; MQTT is the live feed, best-effort (see
`MqttPublisherResource`). Shared by the prediction assets of every model family.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import polars as pl

from factory_pipelines.model_registry import LoadedChampion
from factory_pipelines.resources import (
    MlflowResource,
    MqttPublisherResource,
    PartitionFilesResource,
    ServingStoreResource,
)
from factory_pipelines.telemetry import Prediction
from factory_pipelines.training import ModelFamily


def champion_or_none(
    context: dg.AssetExecutionContext, mlflow: MlflowResource, family: ModelFamily
) -> LoadedChampion | None:
    """The family's champion, loaded once for every window of the run; None (and a warning) if none yet.

    Prediction assets are `output_required=False`: without a champion they materialize nothing, so
    their partitions stay missing in the UI, ready to be backfilled once a version is promoted.
    """
    try:
        return mlflow.load_champion(family)
    except LookupError as exc:
        context.log.warning(f"{exc}; {len(context.partition_keys)} windows not scored (backfill them later)")
        return None


def predictions_frame(predictions: Sequence[Prediction]) -> pl.DataFrame:
    """Predictions as a Parquet partition stores them: the contract's fields and each family's extras."""
    return pl.DataFrame([p.model_dump() for p in predictions], infer_schema_length=None)


def record_predictions(
    context: dg.AssetExecutionContext,
    model_name: str,
    by_window: Mapping[str, Sequence[Prediction]],
    window_files: PartitionFilesResource,
    serving_store: ServingStoreResource,
    mqtt: MqttPublisherResource,
) -> dict[str, Any]:
    """Write, store and publish the predictions of every window of the run; the asset's metadata."""
    everything: list[Prediction] = []
    for key, predictions in by_window.items():
        if predictions:
            window_files.write(predictions_frame(predictions), window_files.predictions_path(model_name, key))
        everything.extend(predictions)
    stored = serving_store.get_store().upsert_predictions(everything)
    published = mqtt.publish_predictions(everything, context.log)
    return {
        "windows": len(by_window),
        "windows_with_data": sum(1 for predictions in by_window.values() if predictions),
        "predictions": len(everything),
        "stored": stored,
        "published": published,
        "labels": dg.MetadataValue.json(
            {label: sum(1 for p in everything if p.label == label) for label in sorted({p.label for p in everything})}
        ),
        "path": dg.MetadataValue.path(str(window_files.predictions_dir(model_name))),
    }
