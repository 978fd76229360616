"""The `energy_iforest` model: machine features per window, and an IsolationForest over them.

Plain functions, no Dagster: the assets in `assets/energy.py` call them, and the tests call them
directly. Polars does the tabular work; pandas appears only at the scikit-learn/MLflow boundary.

Scores follow the platform's convention for anomaly models: higher means more anomalous. The
score is IsolationForest's anomaly score (`-score_samples`, about 0.5 for ordinary points, near 1
for isolated ones) and the model's own threshold is `-offset_`, the cut that `contamination` set
at training time, so `label == "anomaly"` exactly when scikit-learn's `predict` says -1.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.ensemble import IsolationForest
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline

from factory_pipelines.estimator_input import by_position, estimator_input, float_matrix
from factory_pipelines.model_registry import log_sklearn_model
from factory_pipelines.storage import StoragePath, read_parquet
from factory_pipelines.telemetry import (
    MACHINE_EXPORT_COLUMNS,
    MACHINE_FIELD_BY_COLUMN,
    MACHINE_NUMERIC_FIELDS,
    MachineTelemetry,
    PayloadKind,
)
from factory_pipelines.training import ModelFamily
from factory_pipelines.window_rows import type_rows

MODEL_NAME = "energy_iforest"
EXPERIMENT_NAME = "energy_iforest"
TRAINING_SOURCE_HISTORY = "history"
TRAINING_SOURCE_BASELINE = "simulated-baseline"
ANOMALY = "anomaly"
NORMAL = "normal"

# ---- typed machine rows -------------------------------------------------------------------

MACHINE_TEXT_FIELDS: tuple[str, ...] = ("machine_id", "operation_mode", "efficiency_status")
MACHINE_FRAME_SCHEMA: dict[str, pl.DataType] = {
    "window_key": pl.String(),
    "asset_id": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
    "seq": pl.Int64(),
    **{name: pl.String() for name in MACHINE_TEXT_FIELDS},
    **{name: pl.Float64() for name in MACHINE_NUMERIC_FIELDS},
}


@dataclass(frozen=True, slots=True)
class TypedWindow:
    """The machine rows of one sealed window, typed, plus what was dropped on the way."""

    machines: pl.DataFrame
    rows_by_kind: dict[str, int]
    invalid_rows: int
    duplicate_rows: int
    invalid_reasons: list[str] = field(default_factory=list)


def _flatten_machine(row: MachineTelemetry) -> dict[str, Any]:
    return {name: getattr(row, name) for name in (*MACHINE_TEXT_FIELDS, *MACHINE_NUMERIC_FIELDS)}


LEGACY_MACHINE_FIELDS: dict[PayloadKind, dict[str, str]] = {
    PayloadKind.MAINTENANCE: {"vibration": "vibration_hz", "temperature": "temperature_c"},
    PayloadKind.ENERGY_STATS: {"current_load": "power_consumption_kw"},
    PayloadKind.NETWORK_STATS: {"latency": "network_latency_ms", "packet_loss": "packet_loss_pct"},
}
"""The earlier devices' partial readings (SEED-CLIENTS.md), as the export fields they carry.

The earlier CSV publisher cut each export row into these messages: a machine's maintenance
reading (`factory/machine/{id}/maintenance`), and the plant's energy (`factory/energy/stats`,
asset `plant-energy`, kW) and network stats (`factory/network/stats`, asset `plant-network`, ms
and %). As machine rows with the other fields null they reach the models that read those fields:
energy_iforest scores `plant-energy` from its power, cyber_detector scores `plant-network` from
latency and packet loss, and a machine's maintenance rows join its own export rows."""


def _legacy_flattener(fields: dict[str, str]) -> Callable[[Any], dict[str, Any]]:
    empty = dict.fromkeys((*MACHINE_TEXT_FIELDS, *MACHINE_NUMERIC_FIELDS))

    def flatten(reading: Any) -> dict[str, Any]:
        return empty | {machine_field: getattr(reading, name) for name, machine_field in fields.items()}

    return flatten


def type_machine_rows(window: pl.DataFrame, window_key: str) -> TypedWindow:
    """The machine rows of a sealed window, validated against `MachineTelemetry` and typed.

    The earlier devices' partial readings (LEGACY_MACHINE_FIELDS) come along as machine rows.
    """
    rows_by_kind = {str(k): int(n) for k, n in window.group_by("kind").len().iter_rows()}
    parts = [type_rows(window, window_key, PayloadKind.MACHINE, MACHINE_FRAME_SCHEMA, _flatten_machine)]
    for kind, fields in LEGACY_MACHINE_FIELDS.items():
        if rows_by_kind.get(kind.value):  # most windows hold none: no filter over the window for them
            parts.append(type_rows(window, window_key, kind, MACHINE_FRAME_SCHEMA, _legacy_flattener(fields)))
    machines = parts[0].frame
    if len(parts) > 1:
        machines = pl.concat([part.frame for part in parts]).sort("asset_id", "ts", "seq", nulls_last=True)
    return TypedWindow(
        machines=machines,
        rows_by_kind=rows_by_kind,
        invalid_rows=sum(part.invalid_rows for part in parts),
        duplicate_rows=sum(part.duplicate_rows for part in parts),
        invalid_reasons=[reason for part in parts for reason in part.invalid_reasons][:5],
    )


def machine_frame_problems(frame: pl.DataFrame) -> list[str]:
    """What is wrong with a typed machine frame (empty list: nothing); the blocking check's test."""
    problems: list[str] = []
    if dict(frame.schema) != MACHINE_FRAME_SCHEMA:
        problems.append(f"schema {dict(frame.schema)} differs from MACHINE_FRAME_SCHEMA")
        return problems
    duplicates = frame.filter(pl.col("seq").is_not_null() & pl.struct("asset_id", "seq").is_duplicated())
    if duplicates.height:
        problems.append(f"{duplicates.height} rows share an (asset_id, seq)")
    if frame["asset_id"].null_count() or frame["ts"].null_count():
        problems.append("rows without asset_id or ts")
    return problems


# ---- features -----------------------------------------------------------------------------

_SIGNALS: dict[str, str] = {
    "power_kw": "power_consumption_kw",
    "temperature_c": "temperature_c",
    "vibration_hz": "vibration_hz",
    "speed": "production_speed_units_per_hr",
}
FEATURE_COLUMNS: tuple[str, ...] = (
    *(f"{short}_{stat}" for short in _SIGNALS for stat in ("mean", "std", "max")),
    "power_per_speed_mean",
    "power_residual_mean",
    "power_residual_max",
)
MODEL_FEATURES: tuple[str, ...] = ("power_residual_mean", "power_residual_max", "power_kw_mean", "speed_mean")
"""What the forest sees: power against the work done. On labelled simulated windows, all of
FEATURE_COLUMNS gave an average precision of 0.35-0.65 for an energy spike (mode switches dominate
the other dimensions); these four gave 0.96-0.97."""
MIN_PRODUCING_SPEED = 1.0  # units/hr; below it a machine stands still and draws its idle power
FEATURE_FRAME_SCHEMA: dict[str, pl.DataType] = {
    "window_key": pl.String(),
    "asset_id": pl.String(),
    "n_rows": pl.Int64(),  # not polars' UInt32 count: MLflow's dataset schema has no unsigned ints
    **{name: pl.Float64() for name in FEATURE_COLUMNS},
}


def machine_features(machines: pl.DataFrame) -> pl.DataFrame:
    """Per machine per window aggregates; one row per (window_key, asset_id).

    Besides mean/std/max of power, temperature, vibration and speed, two features compare power
    with the work done: power per unit of speed (while producing), and the residual of power
    against what the fleet draws in the same window at that speed (its median kW per unit of
    speed, or its median standstill power). A machine drawing more power than its speed explains
    stands out in both, whatever the plant's overall load.
    """
    if machines.is_empty():
        return pl.DataFrame(schema=FEATURE_FRAME_SCHEMA)
    power, speed = pl.col("power_consumption_kw"), pl.col("production_speed_units_per_hr")
    moving = speed > MIN_PRODUCING_SPEED
    per_speed = pl.when(moving).then(power / speed)
    # What the fleet draws in this window: kW per unit of speed for producing machines, kW at a
    # standstill for the others. Medians, so that the machine that spikes does not drag the
    # others' residuals along with it.
    expected = pl.when(moving).then(per_speed.median().over("window_key") * speed)
    expected = expected.otherwise(power.filter(moving.not_()).median().over("window_key"))
    expected = pl.coalesce(expected, power.median().over("window_key"))
    prepared = machines.with_columns(per_speed.alias("_power_per_speed"), (power - expected).alias("_power_residual"))
    aggregates = [pl.len().cast(pl.Int64).alias("n_rows")]
    for short, column in _SIGNALS.items():
        aggregates += [
            pl.col(column).mean().alias(f"{short}_mean"),
            pl.col(column).std().fill_null(0.0).alias(f"{short}_std"),
            pl.col(column).max().alias(f"{short}_max"),
        ]
    aggregates += [
        pl.col("_power_per_speed").mean().alias("power_per_speed_mean"),
        pl.col("_power_residual").mean().alias("power_residual_mean"),
        pl.col("_power_residual").max().alias("power_residual_max"),
    ]
    features = prepared.group_by("window_key", "asset_id").agg(aggregates).sort("window_key", "asset_id")
    return features.select(pl.col(name).cast(dtype) for name, dtype in FEATURE_FRAME_SCHEMA.items())


def read_feature_history(paths: Sequence[StoragePath]) -> pl.DataFrame:
    """Every machine_features partition file in `paths` (local or object storage), as one frame."""
    if not paths:
        return pl.DataFrame(schema=FEATURE_FRAME_SCHEMA)
    return pl.concat([read_parquet(path) for path in paths], how="vertical_relaxed").select(
        pl.col(name).cast(dtype) for name, dtype in FEATURE_FRAME_SCHEMA.items()
    )


# ---- baseline for the first start ---------------------------------------------------------


MIN_BASELINE_WINDOWS = 20
BASELINE_WINDOWS = 100
BASELINE_GENERATOR = "simulator.export_plant_csv"


def _utc_timestamp(dtype: pl.DataType) -> pl.Expr:
    column = pl.col("Timestamp")
    if dtype == pl.String():
        column = column.str.to_datetime(time_zone="UTC")
    elif isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
        column = column.dt.replace_time_zone("UTC")
    else:
        column = column.dt.convert_time_zone("UTC")
    return column.dt.cast_time_unit("us")


def machine_rows_from_plant_export(export: pl.DataFrame, window_seconds: float) -> pl.DataFrame:
    """Typed machine rows (MACHINE_FRAME_SCHEMA) from a frame in the plant-export layout.

    Rows are grouped into windows by time when the export is dense and long enough (two readings
    per machine per window, MIN_BASELINE_WINDOWS windows), which is what live windows look like.
    Otherwise (an export sampled once a minute, or a short one) consecutive readings of each
    machine are chunked so that there are enough windows to train on.
    """
    renamed = export.rename({c: MACHINE_FIELD_BY_COLUMN[c] for c in export.columns if c in MACHINE_FIELD_BY_COLUMN})
    frame = renamed.with_columns(
        _utc_timestamp(renamed.schema["Timestamp"]).alias("ts"),
        pl.col("machine_id").cast(pl.String).alias("asset_id"),
        pl.col("machine_id").cast(pl.String),
        pl.lit(None, pl.Int64).alias("seq"),
    ).sort("asset_id", "ts")
    per_machine = frame.height / max(frame["asset_id"].n_unique(), 1)
    span_s = (frame["ts"].max() - frame["ts"].min()).total_seconds() if frame.height else 0.0  # type: ignore[operator,union-attr]
    windows_spanned = max(span_s / window_seconds, 1.0)
    readings_per_window = per_machine / windows_spanned
    if readings_per_window >= 2 and windows_spanned >= MIN_BASELINE_WINDOWS:
        epoch_s = pl.col("ts").dt.epoch("s")
        window_index = epoch_s - epoch_s % int(window_seconds)
    else:
        chunk = max(2, min(int(readings_per_window), int(per_machine) // MIN_BASELINE_WINDOWS))
        window_index = pl.int_range(pl.len()).over("asset_id") // chunk
    frame = frame.with_columns(pl.format("baseline-{}", window_index).alias("window_key"))
    return frame.select(
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in MACHINE_FRAME_SCHEMA.items()
    )


@dataclass(frozen=True, slots=True)
class BaselineData:
    features: pl.DataFrame
    generator: str
    source_uri: str


def baseline_rows(window_seconds: float, machines: int) -> int:
    """About BASELINE_WINDOWS windows' worth of readings per machine at one reading a second."""
    return machines * min(max(int(window_seconds * BASELINE_WINDOWS), 4 * BASELINE_WINDOWS), 6000)


def simulated_baseline(
    out_dir: Path, window_seconds: float, *, rows: int | None = None, machines: int = 5, seed: int = 42
) -> BaselineData:
    """Features of normal operation from the machine simulator's plant export (for the first start).

    By default about 100 windows' worth of readings per machine at one reading a second (the
    simulator's own pace). The export is written to `out_dir` and kept, so the MLflow dataset
    source points at a real file.
    """
    from factory_pipelines.simulator import export_plant_csv  # the simulator's machine model, pure

    if rows is None:
        rows = baseline_rows(window_seconds, machines)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"plant-baseline-{machines}m-{rows}r-seed{seed}.csv"
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:  # then renamed: a reader never sees half a file
        written = Path(export_plant_csv(Path(tmp) / path.name, rows, machines=machines, seed=seed))
        written.replace(path)
    export = pl.read_csv(path, try_parse_dates=True)
    export = export.select([c for c in export.columns if c in MACHINE_EXPORT_COLUMNS])
    features = machine_features(machine_rows_from_plant_export(export, window_seconds))
    return BaselineData(features=features, generator=BASELINE_GENERATOR, source_uri=str(path))


# ---- the model ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IForestParams:
    n_estimators: int = 200
    contamination: float = 0.02
    max_samples: int = 256
    random_state: int = 42


def feature_matrix(features: pl.DataFrame) -> Any:
    """The model's input at the scikit-learn boundary: a pandas frame of MODEL_FEATURES."""
    return float_matrix(features, MODEL_FEATURES)


def scoreable(features: pl.DataFrame) -> pl.DataFrame:
    """Rows the energy model can judge: a machine that reported no power says nothing about energy."""
    if features.get_column("power_kw_mean").null_count() == 0:  # the usual window: no query (polars' pool stays asleep)
        return features
    return features.filter(pl.col("power_kw_mean").is_not_null())


def fit_iforest(features: pl.DataFrame, params: IForestParams) -> Pipeline:
    """Median imputation (legacy devices omit fields) then an IsolationForest."""
    rows = scoreable(features)
    if rows.height < 2:
        raise ValueError(f"need at least 2 feature rows with power to train, got {rows.height}")
    forest = IsolationForest(
        n_estimators=params.n_estimators,
        contamination=params.contamination,
        max_samples=min(params.max_samples, rows.height),
        random_state=params.random_state,
        n_jobs=1,
    )
    imputer = SimpleImputer(strategy="median", keep_empty_features=True)
    return Pipeline([("impute", imputer), ("iforest", forest)]).fit(feature_matrix(rows))


def model_threshold(model: Pipeline) -> float:
    """The score above which the model calls a point an anomaly."""
    return float(-model[-1].offset_)


def anomaly_scores(model: Pipeline, features: pl.DataFrame) -> np.ndarray:
    return -model.score_samples(estimator_input(model, features, MODEL_FEATURES))


def score_features(model: Pipeline, features: pl.DataFrame) -> pl.DataFrame:
    """One verdict per scoreable machine and window: window_key, asset_id, score, threshold, label."""
    rows = scoreable(features)
    if rows.is_empty():
        return pl.DataFrame(
            schema={
                "window_key": pl.String(),
                "asset_id": pl.String(),
                "score": pl.Float64(),
                "threshold": pl.Float64(),
                "label": pl.String(),
            }
        )
    threshold = model_threshold(model)
    scores = anomaly_scores(model, rows)
    # Series, never a select: a polars query after the estimator's call waits for polars' thread pool to wake.
    return pl.DataFrame(
        [
            rows.get_column("window_key"),
            rows.get_column("asset_id"),
            pl.Series("score", scores, dtype=pl.Float64),
            pl.Series("threshold", [threshold], dtype=pl.Float64).new_from_index(0, rows.height),
            pl.Series(
                "label", [ANOMALY if score > threshold else NORMAL for score in scores.tolist()], dtype=pl.String
            ),
        ]
    )


def training_metrics(model: Pipeline, features: pl.DataFrame) -> dict[str, float]:
    """What MLflow records about a fit: data size, score quantiles, threshold, anomaly share."""
    rows = scoreable(features)
    scores = anomaly_scores(model, rows)
    threshold = model_threshold(model)
    quantiles = np.quantile(scores, [0.5, 0.9, 0.99])
    return {
        "training_rows": float(rows.height),
        "training_windows": float(rows["window_key"].n_unique()),
        "training_machines": float(rows["asset_id"].n_unique()),
        "threshold": threshold,
        "anomaly_share": float(np.mean(scores > threshold)),
        "score_p50": float(quantiles[0]),
        "score_p90": float(quantiles[1]),
        "score_p99": float(quantiles[2]),
        "score_max": float(scores.max()),
    }


def count_windows(features: pl.DataFrame) -> int:
    return int(features["window_key"].n_unique()) if features.height else 0


def history_paths_newest(paths: Iterable[StoragePath], limit: int) -> list[StoragePath]:
    """The newest `limit` partition files; window keys sort by time, so names do too."""
    ordered = sorted(paths, key=lambda p: p.name)
    return ordered[-limit:] if limit > 0 else []


# ---- training data, validation data, and the family's evaluate / log / load --------------


@dataclass(frozen=True, slots=True)
class TrainingData:
    features: pl.DataFrame
    source: str  # TRAINING_SOURCE_HISTORY or TRAINING_SOURCE_BASELINE
    source_uri: str
    baseline_generator: str | None = None


def choose_training_data(
    history: pl.DataFrame,
    history_uri: str,
    *,
    min_history_windows: int,
    baseline: Callable[[], BaselineData],
) -> TrainingData:
    """Feature history when there is enough of it, else the simulated baseline (first start)."""
    if count_windows(scoreable(history)) >= min_history_windows:
        return TrainingData(history, TRAINING_SOURCE_HISTORY, history_uri)
    data = baseline()
    return TrainingData(data.features, TRAINING_SOURCE_BASELINE, data.source_uri, data.generator)


VALIDATION_FAULT = "energy_spike"
VALIDATION_FAULTY_MACHINE = 2


@dataclass(frozen=True, slots=True)
class LabelledFeatures:
    """Feature rows with the truth (`is_anomaly`): the gate's validation data."""

    features: pl.DataFrame
    source_uri: str


def labelled_validation(
    out_dir: Path, window_seconds: float, *, machines: int = 5, windows: int = 60, seed: int = 42
) -> LabelledFeatures:
    """Simulated plant windows where one machine draws power its work does not explain.

    The plant's own history carries no labels, so every candidate and champion is judged on the
    same simulation: the baseline's fleet (same seed, so the same machines) run on past the
    baseline's span, with machine VALIDATION_FAULTY_MACHINE given an `energy_spike` fault. Only
    readings after the baseline's span are kept, so nothing is scored on rows it was fitted on.
    """
    from factory_pipelines.simulator import export_plant_csv, machine_asset_id

    skipped = baseline_rows(window_seconds, machines)
    rows = machines * int(max(window_seconds, 4) * windows)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"plant-validation-{machines}m-{skipped}+{rows}r-seed{seed}-{VALIDATION_FAULT}.csv"
    if not path.exists():
        faults = {machine_asset_id(VALIDATION_FAULTY_MACHINE): VALIDATION_FAULT}
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            total = skipped + rows
            written = export_plant_csv(Path(tmp) / path.name, total, machines=machines, seed=seed, faults=faults)
            pl.read_csv(written).slice(skipped).write_csv(written)
            Path(written).replace(path)
    export = pl.read_csv(path, try_parse_dates=True)
    export = export.select([c for c in export.columns if c in MACHINE_EXPORT_COLUMNS])
    features = scoreable(machine_features(machine_rows_from_plant_export(export, window_seconds)))
    labelled = features.with_columns((pl.col("asset_id") == str(VALIDATION_FAULTY_MACHINE)).alias("is_anomaly"))
    return LabelledFeatures(labelled, str(path))


def evaluate(model: Pipeline, validation: pl.DataFrame) -> dict[str, float]:
    """Verdicts at the model's own threshold against `is_anomaly`: what the plant would be told."""
    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

    rows = validation
    truth = rows["is_anomaly"].to_numpy()
    scores = anomaly_scores(model, rows)
    flagged = scores > model_threshold(model)
    return {
        "f1": float(f1_score(truth, flagged, zero_division=0)),
        "precision": float(precision_score(truth, flagged, zero_division=0)),
        "recall": float(recall_score(truth, flagged, zero_division=0)),
        "average_precision": float(average_precision_score(truth, scores)),
        "alarm_share": float(flagged.mean()),
        "validation_rows": float(rows.height),
    }


def log_model(model: Pipeline, *, registered_name: str, example: pl.DataFrame | None = None) -> str:
    """Log the pipeline with its signature into the active run and register a version."""
    rows = example if example is not None else pl.DataFrame(schema=FEATURE_FRAME_SCHEMA)
    if rows.is_empty():
        rows = pl.DataFrame({name: [0.0] for name in MODEL_FEATURES})
    sample = rows.head(5)
    return log_sklearn_model(
        model,
        registered_name=registered_name,
        input_example_frame=feature_matrix(sample),
        output_example=-model.score_samples(feature_matrix(sample)),
    )


def load_model(model_uri: str) -> Pipeline:
    import mlflow.sklearn

    return by_position(mlflow.sklearn.load_model(model_uri), MODEL_FEATURES)


FAMILY = ModelFamily(
    name=MODEL_NAME,
    primary_metric="f1",
    higher_is_better=True,
    log_model=log_model,
    load_model=load_model,
    evaluate=evaluate,
)
