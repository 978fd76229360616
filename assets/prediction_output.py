"""What every prediction asset shares: the champion loaded once per run, the stamp each prediction
carries (model, version, MLflow and Dagster runs, window bounds), and where the verdicts go:
Parquet per window, the serving store, MQTT.

The files and the store are the record; MQTT is the live feed, best-effort (see
`MqttPublisherResource`).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import polars as pl
from pydantic import TypeAdapter

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

PREDICTION_COLUMNS: dict[str, pl.DataType] = {
    "model_name": pl.String(),
    "model_version": pl.String(),
    "asset_id": pl.String(),
    "window_key": pl.String(),
    "score": pl.Float64(),
    "label": pl.String(),
    "produced_at": pl.Datetime("us", "UTC"),
    "window_start": pl.Datetime("us", "UTC"),
    "window_end": pl.Datetime("us", "UTC"),
    "mlflow_run_id": pl.String(),
    "dagster_run_id": pl.String(),
}
"""`Prediction`'s fields as a window's predictions Parquet file holds them (in that order, each family's
own fields after them); tests/test_prediction_output.py keeps the two in step."""

Verdict = pl.Series | float | int | str | None
"""A verdict column: a Series, or one value for every row of the window."""

_PREDICTION_LIST: TypeAdapter[list[Prediction]] = TypeAdapter(list[Prediction])


@dataclass(frozen=True)
class ScoringRun:
    """One run of a prediction asset: the champion it loaded, and what each of its predictions carries."""

    model_name: str
    champion: LoadedChampion
    dagster_run_id: str
    window_seconds: float
    produced_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # window key -> what every prediction of that window carries, as one-row columns: made once per window
    # (a datetime literal costs polars about 0.5 ms each time, more than scoring 50 machines' features)
    _stamps: dict[str, dict[str, pl.Series]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def model(self) -> Any:
        return self.champion.model

    @property
    def version(self) -> str:
        return self.champion.info.version

    def _stamp(self, window_key: str) -> dict[str, pl.Series]:
        stamp = self._stamps.get(window_key)
        if stamp is None:
            start, end = window_bounds(window_key, self.window_seconds)
            shared = {
                "model_name": self.model_name,
                "model_version": self.version,
                "window_key": window_key,
                "produced_at": self.produced_at,
                "window_start": start,
                "window_end": end,
                "mlflow_run_id": self.champion.info.run_id,
                "dagster_run_id": self.dagster_run_id,
            }
            stamp = self._stamps[window_key] = {
                name: pl.Series(name, [value], dtype=PREDICTION_COLUMNS[name]) for name, value in shared.items()
            }
        return stamp

    def stamped(self, window_key: str, verdicts: pl.DataFrame | Mapping[str, Verdict]) -> pl.DataFrame:
        """A window's verdicts (`asset_id`, `score`, `label` and the family's own columns) as its predictions.

        `verdicts` is a frame, or columns by name where a plain value (a threshold) holds for every row.
        Whole columns, not a `Prediction` per row: the frame is the record (the window's Parquet
        file). Built from Series alone, never a `select`: polars runs queries on its thread pool, and
        waking the pool after the estimator's call cost 0.3 ms a window, a twentieth of scoring 50
        machines (benchmarks/scoring.py).
        """
        if isinstance(verdicts, pl.DataFrame):
            given, height = dict(verdicts.to_dict()), verdicts.height
        else:
            given = dict(verdicts)
            height = next((len(value) for value in given.values() if isinstance(value, pl.Series)), 0)
        shared = self._stamp(window_key)
        missing = [name for name in PREDICTION_COLUMNS if name not in shared and name not in given]
        if missing:
            raise ValueError(f"the verdicts lack {', '.join(missing)}")
        columns = [
            shared[name].new_from_index(0, height) if name in shared else _column(name, given.pop(name), dtype, height)
            for name, dtype in PREDICTION_COLUMNS.items()
        ]
        columns += [_column(name, value, None, height) for name, value in given.items() if name not in shared]
        return pl.DataFrame(columns)


def _column(name: str, value: Verdict, dtype: pl.DataType | None, height: int) -> pl.Series:
    if not isinstance(value, pl.Series):
        return pl.Series(name, [value], dtype=dtype).new_from_index(0, height)
    if len(value) != height:
        raise ValueError(f"verdict column {name!r} has {len(value)} rows, the others {height}")
    value = value.alias(name)
    return value if dtype is None or value.dtype == dtype else value.cast(dtype)


def predictions_of(frame: pl.DataFrame) -> list[Prediction]:
    """The rows of a predictions frame as `Prediction`s (validated), for the serving store and MQTT."""
    return _PREDICTION_LIST.validate_python(frame.to_dicts())


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


def record_predictions(
    context: dg.AssetExecutionContext,
    run: ScoringRun,
    by_window: Mapping[str, pl.DataFrame],
    window_files: PartitionFilesResource,
    serving_store: ServingStoreResource,
    mqtt: MqttPublisherResource,
) -> dict[str, Any]:
    """Write, store and publish every window's predictions (`ScoringRun.stamped`); the asset's metadata."""
    everything: list[Prediction] = []
    for key, predictions in by_window.items():
        if predictions.height:
            window_files.write(predictions, window_files.predictions_path(run.model_name, key))
            everything.extend(predictions_of(predictions))
    stored = serving_store.get_store().upsert_predictions(everything)
    published = mqtt.publish_predictions(everything, context.log)
    return {
        "model_version": run.version,
        "mlflow_run_id": run.champion.info.run_id or "",
        "windows": len(by_window),
        "windows_with_data": sum(1 for predictions in by_window.values() if predictions.height),
        "predictions": len(everything),
        "stored": stored,
        "published": published,
        "labels": dg.MetadataValue.json(
            {label: sum(1 for p in everything if p.label == label) for label in sorted({p.label for p in everything})}
        ),
        "path": dg.MetadataValue.path(str(window_files.predictions_dir(run.model_name))),
    }
