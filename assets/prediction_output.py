"""What every prediction asset shares: the champion loaded once per run, the stamp each prediction
carries (model, version, MLflow and Dagster runs, window bounds), and where the verdicts go:
Parquet per window, the serving store, MQTT.

The files and the store are the record; MQTT is the live feed, best-effort (see
`MqttPublisherResource`).
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
from factory_pipelines.windows import window_bounds


@dataclass(frozen=True)
class ScoringRun:
    """One run of a prediction asset: the champion it loaded, and what each of its predictions carries."""

    model_name: str
    champion: LoadedChampion
    dagster_run_id: str
    window_seconds: float
    produced_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # window key -> (start, end): parsed once per window, not per row (it was half of each row's cost)
    _bounds: dict[str, tuple[datetime, datetime]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def model(self) -> Any:
        return self.champion.model

    @property
    def version(self) -> str:
        return self.champion.info.version

    def prediction(self, window_key: str, asset_id: str, score: float, label: str, **extras: Any) -> Prediction:
        """A prediction for one asset in one window; `extras` are the family's own fields."""
        bounds = self._bounds.get(window_key)
        if bounds is None:
            bounds = self._bounds[window_key] = window_bounds(window_key, self.window_seconds)
        start, end = bounds
        return Prediction(
            model_name=self.model_name,
            model_version=self.version,
            asset_id=asset_id,
            window_key=window_key,
            score=score,
            label=label,
            produced_at=self.produced_at,
            window_start=start,
            window_end=end,
            mlflow_run_id=self.champion.info.run_id,
            dagster_run_id=self.dagster_run_id,
            **extras,
        )


def start_scoring(
    context: dg.AssetExecutionContext,
    mlflow: MlflowResource,
    family: ModelFamily,
    window_files: PartitionFilesResource,
) -> ScoringRun | None:
    """The family's champion, loaded once for every window of the run; None (and a warning) if none yet.

    Prediction assets are `output_required=False`: without a champion they materialize nothing, so
    their partitions stay missing in the UI, ready to be backfilled once a version is promoted.
    """
    try:
        champion = mlflow.load_champion(family)
    except LookupError as exc:
        context.log.warning(f"{exc}; {len(context.partition_keys)} windows not scored (backfill them later)")
        return None
    return ScoringRun(family.name, champion, context.run.run_id, window_files.window_seconds)


def predictions_frame(predictions: Sequence[Prediction]) -> pl.DataFrame:
    """Predictions as a Parquet partition stores them: the contract's fields and each family's extras."""
    return pl.DataFrame([p.model_dump() for p in predictions], infer_schema_length=None)


def record_predictions(
    context: dg.AssetExecutionContext,
    run: ScoringRun,
    by_window: Mapping[str, Sequence[Prediction]],
    window_files: PartitionFilesResource,
    serving_store: ServingStoreResource,
    mqtt: MqttPublisherResource,
    as_frame: Callable[[Sequence[Prediction]], pl.DataFrame] = predictions_frame,
) -> dict[str, Any]:
    """Write, store and publish the predictions of every window of the run; the asset's metadata."""
    everything: list[Prediction] = []
    for key, predictions in by_window.items():
        if predictions:
            window_files.write(as_frame(predictions), window_files.predictions_path(run.model_name, key))
        everything.extend(predictions)
    stored = serving_store.get_store().upsert_predictions(everything)
    published = mqtt.publish_predictions(everything, context.log)
    return {
        "model_version": run.version,
        "mlflow_run_id": run.champion.info.run_id or "",
        "windows": len(by_window),
        "windows_with_data": sum(1 for predictions in by_window.values() if predictions),
        "predictions": len(everything),
        "stored": stored,
        "published": published,
        "labels": dg.MetadataValue.json(
            {label: sum(1 for p in everything if p.label == label) for label in sorted({p.label for p in everything})}
        ),
        "path": dg.MetadataValue.path(str(window_files.predictions_dir(run.model_name))),
    }
