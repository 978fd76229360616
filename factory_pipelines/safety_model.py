"""The `safety_hazard` model: a calibrated probability that a zone is in a hazard, per data window.

Plain functions, no Dagster: the training and prediction assets call them, and the tests call
them directly. Polars does the tabular work; pandas appears only at the scikit-learn/MLflow boundary.

Readings of a zone's safety station (`SafetyReading`) are aggregated per window and zone into one
feature row (`window_features`): levels, peaks and trends of gas, sound and temperature, how close
and how long people stood by moving machinery, PPE violations, head count, and two co-occurrence
shares (close while loud; PPE violations near moving machinery) that per-window means cannot
recover. A window's label is `hazard`: true when ANY of its readings had `true_hazard` (a window
with a hazardous moment is a hazardous window), null when no reading carries ground truth.

The classifier is histogram gradient boosting (or a logistic regression) inside scikit-learn's
`CalibratedClassifierCV`, whose folds are whole zone-episode blocks (`episode_blocks`), so the
calibrator never learns from windows of an episode the classifier has already seen. Isotonic or
sigmoid calibration is chosen by the Brier score on a held-out slice of the training data.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
from sklearn import config_context
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from factory_pipelines import window_rows
from factory_pipelines.estimator_input import by_position, estimator_input, float_matrix
from factory_pipelines.model_registry import SKOPS_TRUSTED_TYPES, pinned_requirements
from factory_pipelines.native_threads import SCORING_THREADS, openmp_threads
from factory_pipelines.safety_sim import LOUD_DB, safety_zone_models
from factory_pipelines.storage import StoragePath, read_parquet
from factory_pipelines.training import ModelFamily
from factory_pipelines.windows import window_key as make_window_key

log = logging.getLogger(__name__)

MODEL_NAME = "safety_hazard"
EXPERIMENT_NAME = "safety_hazard"
PRIMARY_METRIC = "brier"
HIGHER_IS_BETTER = False
LABEL_RULE = "any"  # a window is hazardous when any of its readings is
RISK_LEVELS = ("low", "medium", "high")

# ---- typed safety rows --------------------------------------------------------------------

SAFETY_ROWS_SCHEMA: dict[str, pl.DataType] = window_rows.SAFETY_ROWS_SCHEMA
SAFETY_FLOAT_FIELDS: tuple[str, ...] = window_rows.SAFETY_FLOAT_FIELDS
SAFETY_COUNT_FIELDS: tuple[str, ...] = window_rows.SAFETY_COUNT_FIELDS


def safety_rows_from_window(window: pl.DataFrame, window_key: str) -> pl.DataFrame:
    """The "safety" rows of a sealed window (WINDOW_SCHEMA), validated by `SafetyReading`, typed
    (SAFETY_ROWS_SCHEMA), redeliveries dropped; a missing zone is the asset id, as the contract says.

    Rows that fail validation are dropped and logged: the collector validated them already, so
    this only happens when the contract drifted.
    """
    typed = window_rows.safety_rows(window, window_key)
    if typed.invalid_rows:
        log.warning(
            "window %s: %d safety rows failed validation, e.g. %s",
            window_key,
            typed.invalid_rows,
            typed.invalid_reasons[0],
        )
    return typed.frame


# ---- features -----------------------------------------------------------------------------

CLOSE_M = 1.0  # closer than this to moving machinery counts as "close"
NEAR_MACHINERY_M = 3.0  # a PPE violation this near moving machinery is one during hazardous work

FEATURE_COLUMNS: tuple[str, ...] = (
    "gas_ppm_mean",
    "gas_ppm_min",
    "gas_ppm_max",
    "gas_ppm_std",
    "gas_ppm_slope",
    "noise_db_mean",
    "noise_db_median",
    "noise_db_max",
    "noise_db_std",
    "loud_share",
    "temperature_mean",
    "temperature_max",
    "temperature_slope",
    "proximity_m_min",
    "proximity_m_mean",
    "close_share",
    "ppe_violations_mean",
    "ppe_violations_max",
    "ppe_violation_share",
    "workers_mean",
    "workers_max",
    "close_while_loud_share",
    "ppe_near_machinery_share",
)
FEATURE_FRAME_SCHEMA: dict[str, pl.DataType] = {
    "window_key": pl.String(),
    "zone": pl.String(),
    "asset_id": pl.String(),
    "window_start": pl.Datetime("us", "UTC"),  # the zone's first reading in the window
    "n_readings": pl.Int64(),  # not polars' UInt32 count: MLflow's dataset schema has no unsigned ints
    **{name: pl.Float64() for name in FEATURE_COLUMNS},
    "hazard": pl.Boolean(),  # any reading of the window hazardous; null without ground truth
    "hazard_share": pl.Float64(),  # share of the window's readings that were hazardous
}


def _share(condition: pl.Expr) -> pl.Expr:
    """Share of readings (with the values the condition needs) for which it holds."""
    return condition.cast(pl.Float64).mean()


def _slope_per_minute(column: str) -> pl.Expr:
    """Least-squares trend of `column` over the window, per minute (0 for a single reading)."""
    valid = pl.col(column).is_not_null()
    t = pl.col("_t").filter(valid)
    x = pl.col(column).filter(valid).cast(pl.Float64)
    t_centred = t - t.mean()
    spread = (t_centred * t_centred).sum()
    return pl.when(spread > 0).then((t_centred * (x - x.mean())).sum() / spread * 60.0).otherwise(0.0)


def window_features(safety_rows: pl.DataFrame) -> pl.DataFrame:
    """One feature row per window and zone (FEATURE_FRAME_SCHEMA) from typed safety rows."""
    if safety_rows.is_empty():
        return pl.DataFrame(schema=FEATURE_FRAME_SCHEMA)
    gas, noise, temperature = pl.col("gas_ppm"), pl.col("noise_db"), pl.col("temperature")
    proximity, ppe, workers, truth = (
        pl.col("proximity_m"),
        pl.col("ppe_violations"),
        pl.col("workers"),
        pl.col("true_hazard"),
    )
    prepared = safety_rows.with_columns(
        pl.coalesce("zone", "asset_id").alias("zone"),
        (pl.col("ts").dt.epoch("us").cast(pl.Float64) / 1e6).alias("_t"),
    )
    aggregates = [
        pl.col("asset_id").first(),
        pl.col("ts").min().alias("window_start"),
        pl.len().cast(pl.Int64).alias("n_readings"),
        gas.mean().alias("gas_ppm_mean"),
        gas.min().alias("gas_ppm_min"),
        gas.max().alias("gas_ppm_max"),
        gas.std().fill_null(0.0).alias("gas_ppm_std"),
        _slope_per_minute("gas_ppm").alias("gas_ppm_slope"),
        noise.mean().alias("noise_db_mean"),
        noise.median().alias("noise_db_median"),
        noise.max().alias("noise_db_max"),
        noise.std().fill_null(0.0).alias("noise_db_std"),
        _share(noise >= LOUD_DB).alias("loud_share"),
        temperature.mean().alias("temperature_mean"),
        temperature.max().alias("temperature_max"),
        _slope_per_minute("temperature").alias("temperature_slope"),
        proximity.min().alias("proximity_m_min"),
        proximity.mean().alias("proximity_m_mean"),
        _share(proximity < CLOSE_M).alias("close_share"),
        ppe.mean().alias("ppe_violations_mean"),
        ppe.max().alias("ppe_violations_max"),
        _share(ppe > 0).alias("ppe_violation_share"),
        workers.mean().alias("workers_mean"),
        workers.max().alias("workers_max"),
        _share((proximity < 2 * CLOSE_M) & (noise >= LOUD_DB)).alias("close_while_loud_share"),
        _share((ppe > 0) & (proximity < NEAR_MACHINERY_M)).alias("ppe_near_machinery_share"),
        pl.when(truth.count() > 0).then(truth.any()).alias("hazard"),
        truth.cast(pl.Float64).mean().alias("hazard_share"),
    ]
    features = prepared.group_by("window_key", "zone").agg(aggregates).sort("window_start", "zone")
    return features.select(pl.col(name).cast(dtype) for name, dtype in FEATURE_FRAME_SCHEMA.items())


# ---- data: simulated history and stored feature partitions --------------------------------

HISTORY_START = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)
HISTORY_COLLECTOR = "safety-history"
HISTORY_SCHEMA: dict[str, pl.DataType] = {**FEATURE_FRAME_SCHEMA, "hazard_kind": pl.String()}
NO_HAZARD = "none"


def safety_history(
    n_zones: int = 12,
    n_windows: int = 480,
    window_seconds: float = 60.0,
    seed: int = 42,
    *,
    rate_hz: float = 1.0,
    faults: Mapping[str, str] | None = None,
    start: datetime = HISTORY_START,
) -> pl.DataFrame:
    """Labelled feature rows (HISTORY_SCHEMA) of `n_zones` simulated zones over `n_windows` windows.

    Steps the zone models directly (no MQTT) at the simulator's pace, `rate_hz` readings a second,
    and aggregates with the same `window_features` the prediction asset uses on live windows. Train
    with the live `window_seconds` and rate: peaks, shares and trends depend on both.
    Labels follow LABEL_RULE ("any"); `hazard_kind` is the hazard kind most readings of the window
    had, "none" for a quiet window.
    """
    if n_zones < 1 or n_windows < 1 or window_seconds <= 0 or rate_hz <= 0:
        raise ValueError("safety_history needs n_zones >= 1, n_windows >= 1, window_seconds > 0 and rate_hz > 0")
    models = safety_zone_models(n_zones, seed, faults)
    dt = 1.0 / rate_hz
    per_window = max(1, round(window_seconds * rate_hz))
    start_us = round(start.timestamp() * 1e6)
    fields = (*SAFETY_FLOAT_FIELDS, *SAFETY_COUNT_FIELDS, "true_hazard")
    columns: dict[str, list[Any]] = {
        name: [] for name in ("window_key", "asset_id", "ts_us", "seq", "zone", *fields, "hazard_kind")
    }
    for w in range(n_windows):
        key = make_window_key(start + timedelta(seconds=w * window_seconds), HISTORY_COLLECTOR)
        for i in range(per_window):
            ts_us = start_us + round((w * window_seconds + i * dt) * 1e6)
            for model in models:
                values = model.step(dt)
                columns["window_key"].append(key)
                columns["asset_id"].append(model.asset_id)
                columns["ts_us"].append(ts_us)
                columns["seq"].append(w * per_window + i)
                columns["zone"].append(values["zone"])
                for name in fields:
                    columns[name].append(values[name])
                columns["hazard_kind"].append(model.hazard_kind)
    schema = {**SAFETY_ROWS_SCHEMA, "ts_us": pl.Int64(), "hazard_kind": pl.String()}
    del schema["ts"]
    rows = pl.DataFrame(columns, schema=schema).with_columns(
        pl.from_epoch("ts_us", time_unit="us").dt.replace_time_zone("UTC").alias("ts")
    )
    kinds = (
        rows.filter(pl.col("hazard_kind").is_not_null())
        .group_by("window_key", "zone")
        .agg(pl.col("hazard_kind").mode().sort().first())
    )
    features = window_features(rows.select(list(SAFETY_ROWS_SCHEMA)))
    return (
        features.join(kinds, on=["window_key", "zone"], how="left")
        .with_columns(pl.col("hazard_kind").fill_null(NO_HAZARD))
        .select(pl.col(name).cast(dtype) for name, dtype in HISTORY_SCHEMA.items())
    )


def read_feature_history(paths: Sequence[StoragePath]) -> pl.DataFrame:
    """Every `window_features` partition file in `paths` (local or object storage), as one frame."""
    if not paths:
        return pl.DataFrame(schema=FEATURE_FRAME_SCHEMA)
    return pl.concat([read_parquet(path) for path in paths], how="vertical_relaxed").select(
        pl.col(name).cast(dtype) for name, dtype in FEATURE_FRAME_SCHEMA.items()
    )


def labelled(features: pl.DataFrame) -> pl.DataFrame:
    """Rows with ground truth: the only ones a fit or an evaluation can use."""
    return features.filter(pl.col("hazard").is_not_null())


# ---- splitting without leaking episodes ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrainValidation:
    train: pl.DataFrame
    validation: pl.DataFrame


QUIET_WINDOWS = 3  # a block may only start after this many windows without a hazard


def episode_blocks(features: pl.DataFrame, block_windows: int = 20) -> pl.DataFrame:
    """`features` plus `block`: runs of about `block_windows` consecutive windows of one zone.

    A new block starts only at a quiet window (no hazard in it or the QUIET_WINDOWS - 1 before),
    so no hazard episode is ever split between two blocks: blocks are the unit for the
    train/validation split and for the calibration folds.
    """
    if block_windows < 1:
        raise ValueError(f"block_windows must be >= 1, got {block_windows}")
    hazard = pl.col("hazard").fill_null(False)
    recent = hazard
    for lag in range(1, QUIET_WINDOWS):
        recent = recent | hazard.shift(lag).over("zone").fill_null(False)
    ordered = features.sort("zone", "window_start", "window_key").with_columns(
        (~recent).alias("_quiet"), (pl.int_range(pl.len()).over("zone") // block_windows).alias("_raw")
    )
    starts = pl.col("_quiet") & (pl.col("_quiet").cast(pl.Int64).cum_sum().over("zone", "_raw") == 1)
    starts = starts & (pl.col("_raw") > 0)
    return (
        ordered.with_columns(starts.cast(pl.Int64).cum_sum().over("zone").alias("_block"))
        .with_columns(pl.struct("zone", "_block").rank("dense").cast(pl.Int64).alias("block"))
        .drop("_quiet", "_raw", "_block")
    )


def split_train_validation(
    features: pl.DataFrame, validation_fraction: float = 0.25, seed: int = 42, *, block_windows: int = 20
) -> TrainValidation:
    """A seeded split by whole zone-episode blocks (`episode_blocks`): about `validation_fraction`
    of the rows go to validation, and no episode has windows on both sides."""
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    blocked = episode_blocks(features, block_windows)
    sizes = blocked.group_by("block").len().sort("block")
    order = np.random.default_rng(seed).permutation(sizes.height)
    cumulative = np.cumsum(sizes["len"].to_numpy()[order])
    wanted = validation_fraction * blocked.height
    chosen = sizes["block"].to_numpy()[order[: int(np.searchsorted(cumulative, wanted)) + 1]]
    in_validation = pl.col("block").is_in(chosen.tolist())
    ordered = ("window_start", "zone")
    return TrainValidation(
        train=blocked.filter(~in_validation).drop("block").sort(ordered),
        validation=blocked.filter(in_validation).drop("block").sort(ordered),
    )


# ---- the model ----------------------------------------------------------------------------

CLASSIFIERS = ("hist_gradient_boosting", "logistic_regression")
CALIBRATIONS = ("auto", "isotonic", "sigmoid")


@dataclass(frozen=True)
class SafetyParams:
    """Hyper-parameters of `safety_hazard`; each becomes a field of the training asset's config."""

    classifier: str = "hist_gradient_boosting"  # "hist_gradient_boosting" or "logistic_regression"
    calibration: str = "auto"  # "isotonic", "sigmoid", or "auto": the lower Brier on a held-out training slice
    calibration_folds: int = 3  # folds of zone-episode blocks for CalibratedClassifierCV
    learning_rate: float = 0.05  # gradient boosting: shrinkage per tree
    max_iter: int = 200  # gradient boosting: number of trees
    max_leaf_nodes: int = 15  # gradient boosting: leaves per tree
    min_samples_leaf: int = 40  # gradient boosting: windows per leaf at least
    l2_regularization: float = 1.0  # gradient boosting: L2 penalty on leaf values
    logistic_c: float = 1.0  # logistic regression: inverse regularisation strength
    validation_fraction: float = 0.25  # windows held out (whole blocks): validation, and choosing calibration
    block_windows: int = 20  # windows per zone-episode block of the splits
    medium_cutoff: float = 0.2  # probability from which a zone's risk level is "medium"
    high_cutoff: float = 0.5  # probability from which it is "high"
    threads: int = 1  # OpenMP threads while fitting; more only on an idle machine (busy cores make them spin)
    random_state: int = 42  # seeds the splits, the folds and the classifier

    def __post_init__(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {', '.join(CLASSIFIERS)}, got {self.classifier!r}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}")
        if not 0 < self.medium_cutoff < self.high_cutoff < 1:
            raise ValueError(f"need 0 < medium_cutoff < high_cutoff < 1, got {self.medium_cutoff}, {self.high_cutoff}")
        if self.calibration_folds < 2:
            raise ValueError(f"calibration_folds must be >= 2, got {self.calibration_folds}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def feature_matrix(features: pl.DataFrame) -> Any:
    """The model's input at the scikit-learn boundary: a pandas frame of FEATURE_COLUMNS (NaN: missing)."""
    return float_matrix(features, FEATURE_COLUMNS)


RISK_LEVELS: tuple[str, ...] = ("low", "medium", "high")


def risk_level(probability: np.ndarray, medium_cutoff: float, high_cutoff: float) -> pl.Series:
    """ "high" from `high_cutoff` up, "medium" from `medium_cutoff`, "low" below."""
    index = np.searchsorted(np.array([medium_cutoff, high_cutoff]), probability, side="right")
    return pl.Series("risk_level", [RISK_LEVELS[i] for i in index.tolist()], dtype=pl.String)


PREDICTION_SCHEMA: dict[str, pl.DataType] = {
    "window_key": pl.String(),
    "zone": pl.String(),
    "asset_id": pl.String(),
    "probability": pl.Float64(),
    "risk_level": pl.String(),
}


@dataclass(frozen=True)
class SafetyModel:
    """A fitted calibrated classifier and what is needed to use it (all of it round-trips MLflow)."""

    classifier: CalibratedClassifierCV
    calibration: str  # the method in use: "isotonic" or "sigmoid"
    classifier_kind: str
    medium_cutoff: float
    high_cutoff: float
    input_example: pl.DataFrame  # a few rows of FEATURE_COLUMNS: MLflow's input example
    training_rows: int
    training_positive_rate: float
    calibration_scores: dict[str, float] = field(default_factory=dict)  # Brier per method when chosen by "auto"
    feature_columns: tuple[str, ...] = FEATURE_COLUMNS

    def probabilities(self, features: pl.DataFrame) -> np.ndarray:
        if features.is_empty():
            return np.empty(0)
        with openmp_threads(SCORING_THREADS):
            return self.classifier.predict_proba(estimator_input(self.classifier, features, self.feature_columns))[:, 1]

    def predict_proba(self, features: pl.DataFrame) -> pl.DataFrame:
        """window_key, zone, asset_id, probability of a hazard, risk_level ("low"/"medium"/"high")."""
        if features.is_empty():
            return pl.DataFrame(schema=PREDICTION_SCHEMA)
        probability = self.probabilities(features)
        # Series, never a select: a polars query after the estimator's call waits for polars' thread pool to wake.
        return pl.DataFrame(
            [
                *(features.get_column(name) for name in ("window_key", "zone", "asset_id")),
                pl.Series("probability", probability, dtype=pl.Float64),
                risk_level(probability, self.medium_cutoff, self.high_cutoff),
            ]
        )


def _base_classifier(params: SafetyParams) -> Any:
    if params.classifier == "logistic_regression":
        return Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("scale", StandardScaler()),
                ("logistic", LogisticRegression(C=params.logistic_c, max_iter=2000)),
            ]
        )
    return HistGradientBoostingClassifier(  # handles missing values itself
        learning_rate=params.learning_rate,
        max_iter=params.max_iter,
        max_leaf_nodes=params.max_leaf_nodes,
        min_samples_leaf=params.min_samples_leaf,
        l2_regularization=params.l2_regularization,
        early_stopping=False,  # its random validation rows would mix windows of one episode
        random_state=params.random_state,
    )


def _fit_calibrated(rows: pl.DataFrame, params: SafetyParams, method: str) -> CalibratedClassifierCV:
    """CalibratedClassifierCV whose folds are zone-episode blocks (groups routed to the splitter)."""
    blocked = episode_blocks(rows, params.block_windows)
    labels = blocked["hazard"].cast(pl.Int64).to_numpy()
    if len(np.unique(labels)) < 2:
        raise ValueError("the training windows hold only one class: simulate or collect more history")
    folds = min(params.calibration_folds, int(min(np.bincount(labels))), int(blocked["block"].n_unique()))
    if folds < 2:
        raise ValueError("too few hazard windows or blocks to calibrate on two folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=params.random_state)
    # ensemble=True (one calibrated classifier per fold, averaged) measured a lower Brier and ECE than one
    # classifier calibrated on out-of-fold predictions; and only this path routes `groups` to the splitter.
    calibrated = CalibratedClassifierCV(_base_classifier(params), method=method, cv=splitter, ensemble=True)
    with config_context(enable_metadata_routing=True), openmp_threads(params.threads):
        calibrated.fit(feature_matrix(blocked), labels, groups=blocked["block"].to_numpy())
    return calibrated


def fit(train: pl.DataFrame, params: SafetyParams, progress: Callable[[str], None] | None = None) -> SafetyModel:
    """Fit the calibrated classifier on the labelled rows of `train`."""
    say = progress or (lambda _message: None)
    rows = labelled(train)
    scores: dict[str, float] = {}
    method = params.calibration
    if method == "auto":
        inner = split_train_validation(
            rows, params.validation_fraction, params.random_state + 1, block_windows=params.block_windows
        )
        truth = labelled(inner.validation)["hazard"].cast(pl.Int64).to_numpy()
        for candidate in ("isotonic", "sigmoid"):
            say(f"choosing calibration: fitting {candidate} on {inner.train.height} windows")
            trial = _fit_calibrated(inner.train, params, candidate)
            with openmp_threads(params.threads):
                predicted = trial.predict_proba(feature_matrix(labelled(inner.validation)))[:, 1]
            scores[candidate] = float(brier_score_loss(truth, predicted))
            say(f"{candidate}: Brier {scores[candidate]:.4f} on {truth.size} held-out training windows")
        method = min(scores, key=lambda name: scores[name])
    say(f"fitting {params.classifier} with {method} calibration on {rows.height} windows")
    classifier = _fit_calibrated(rows, params, method)
    complete = rows.drop_nulls(list(FEATURE_COLUMNS))
    example = (complete if complete.height else rows).head(5).select(FEATURE_COLUMNS)
    say("fitted")
    return SafetyModel(
        classifier=classifier,
        calibration=method,
        classifier_kind=params.classifier,
        medium_cutoff=params.medium_cutoff,
        high_cutoff=params.high_cutoff,
        input_example=example,
        training_rows=rows.height,
        training_positive_rate=float(rows["hazard"].mean()),  # type: ignore[arg-type]
        calibration_scores=scores,
    )


def describe_fit(model: SafetyModel) -> dict[str, float]:
    """Figures about the fit itself for the MLflow run: training size and the calibration choice."""
    figures = {
        "training_rows": float(model.training_rows),
        "training_positive_rate": model.training_positive_rate,
        "calibration_isotonic": float(model.calibration == "isotonic"),
    }
    return figures | {f"calibration_brier_{name}": score for name, score in model.calibration_scores.items()}


# ---- evaluation ---------------------------------------------------------------------------

RELIABILITY_SCHEMA: dict[str, pl.DataType] = {
    "bin_low": pl.Float64(),
    "bin_high": pl.Float64(),
    "n": pl.Int64(),
    "mean_predicted": pl.Float64(),
    "observed_rate": pl.Float64(),
}


def _reliability(probabilities: np.ndarray, truth: np.ndarray, bins: int) -> pl.DataFrame:
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    scored = pl.DataFrame({"bin": index, "p": probabilities, "y": truth.astype(np.float64)})
    by_bin = scored.group_by("bin").agg(
        pl.len().cast(pl.Int64).alias("n"),
        pl.col("p").mean().alias("mean_predicted"),
        pl.col("y").mean().alias("observed_rate"),
    )
    edges = pl.DataFrame(
        {"bin": np.arange(bins), "bin_low": np.arange(bins) / bins, "bin_high": np.arange(1, bins + 1) / bins}
    )
    table = edges.join(by_bin, on="bin", how="left").sort("bin").with_columns(pl.col("n").fill_null(0))
    return table.select(pl.col(name).cast(dtype) for name, dtype in RELIABILITY_SCHEMA.items())


def reliability_table(model: SafetyModel, validation: pl.DataFrame, bins: int = 10) -> pl.DataFrame:
    """Mean predicted probability against the observed hazard rate, in `bins` equal-width bins of
    the probability (empty bins have n = 0 and nulls)."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    rows = labelled(validation)
    return _reliability(model.probabilities(rows), rows["hazard"].cast(pl.Int64).to_numpy(), bins)


def expected_calibration_error(table: pl.DataFrame) -> float:
    """Row-weighted mean gap between predicted and observed, over a reliability table's bins."""
    filled = table.filter(pl.col("n") > 0)
    total = filled["n"].sum()
    if not total:
        return math.nan
    gaps = (filled["mean_predicted"] - filled["observed_rate"]).abs() * filled["n"]
    return float(gaps.sum() / total)


def evaluate(model: SafetyModel, validation: pl.DataFrame) -> dict[str, float]:
    """Brier (PRIMARY_METRIC, lower is better) and the rest on the labelled rows of `validation`.

    `brier_prevalence` is the Brier score of always predicting the validation's own hazard rate,
    the trivial baseline; `brier_skill` is 1 - brier / brier_prevalence (above 0: better than it).
    ROC AUC and average precision are NaN when the rows hold one class only.
    """
    rows = labelled(validation)
    if rows.is_empty():
        raise ValueError("no labelled validation rows to evaluate on")
    truth = rows["hazard"].cast(pl.Int64).to_numpy()
    predicted = model.probabilities(rows)
    prevalence = float(truth.mean())
    brier = float(brier_score_loss(truth, predicted))
    brier_prevalence = prevalence * (1 - prevalence)
    both_classes = 0 < prevalence < 1
    return {
        "brier": brier,
        "brier_prevalence": brier_prevalence,
        "brier_skill": 1 - brier / brier_prevalence if brier_prevalence > 0 else math.nan,
        "roc_auc": float(roc_auc_score(truth, predicted)) if both_classes else math.nan,
        "average_precision": float(average_precision_score(truth, predicted)) if both_classes else math.nan,
        "log_loss": float(log_loss(truth, predicted, labels=[0, 1])),
        "ece": expected_calibration_error(_reliability(predicted, truth, 10)),
        "n_rows": float(rows.height),
        "positive_rate": prevalence,
    }


# ---- MLflow -------------------------------------------------------------------------------

SAFETY_SKOPS_TRUSTED_TYPES: tuple[str, ...] = (
    *SKOPS_TRUSTED_TYPES,
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.model_selection._split.StratifiedGroupKFold",
)
"""What skops does not trust by default in a fitted SafetyModel classifier (any classifier/calibration choice)."""


def log_model(model: SafetyModel, *, registered_name: str) -> str:
    """Log `model` into the active MLflow run and register it; the new version.

    The sklearn flavour (skops) holds the calibrated classifier; its pyfunc predicts
    `predict_proba`. Cut-offs, calibration and feature names travel in the MLmodel metadata.
    """
    import mlflow.sklearn  # the flavor imports scikit-learn: only where a model is handled
    from mlflow.models import infer_signature

    example = feature_matrix(model.input_example)
    metadata = {
        "calibration": model.calibration,
        "classifier_kind": model.classifier_kind,
        "medium_cutoff": model.medium_cutoff,
        "high_cutoff": model.high_cutoff,
        "feature_columns": list(model.feature_columns),
        "calibration_scores": dict(model.calibration_scores),
        "training_rows": model.training_rows,
        "training_positive_rate": model.training_positive_rate,
        "label_rule": LABEL_RULE,
    }
    with openmp_threads(SCORING_THREADS):  # MLflow also predicts on the example to validate it
        info = mlflow.sklearn.log_model(
            model.classifier,
            name="model",
            signature=infer_signature(example, model.classifier.predict_proba(example)),
            input_example=example,
            pip_requirements=pinned_requirements("scikit-learn", "numpy", "scipy", "skops"),
            skops_trusted_types=list(SAFETY_SKOPS_TRUSTED_TYPES),
            pyfunc_predict_fn="predict_proba",
            registered_model_name=registered_name,
            metadata={"safety_model": metadata},
        )
    if info.registered_model_version is None:
        raise RuntimeError(f"MLflow did not register a version of {registered_name}")
    return str(info.registered_model_version)


def load_model(model_uri: str) -> SafetyModel:
    """The SafetyModel that `log_model` wrote, from any model URI (`models:/NAME@champion`, ...)."""
    import mlflow.artifacts
    import mlflow.sklearn
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        description = Model.load(local)
        classifier = mlflow.sklearn.load_model(local)
        example = description.load_input_example(local)
    meta = (description.metadata or {}).get("safety_model")
    if meta is None:
        raise ValueError(f"{model_uri} was not logged by safety_model.log_model (no safety_model metadata)")
    columns = tuple(meta["feature_columns"])
    if columns != FEATURE_COLUMNS:
        raise ValueError(f"{model_uri} expects features {columns}, this code computes {FEATURE_COLUMNS}")
    return SafetyModel(
        classifier=by_position(classifier, columns),
        calibration=str(meta["calibration"]),
        classifier_kind=str(meta["classifier_kind"]),
        medium_cutoff=float(meta["medium_cutoff"]),
        high_cutoff=float(meta["high_cutoff"]),
        input_example=pl.from_pandas(example).select(pl.col(name).cast(pl.Float64) for name in columns),
        training_rows=int(meta["training_rows"]),
        training_positive_rate=float(meta["training_positive_rate"]),
        calibration_scores={str(k): float(v) for k, v in (meta.get("calibration_scores") or {}).items()},
        feature_columns=columns,
    )


FAMILY = ModelFamily(
    name=MODEL_NAME,
    primary_metric=PRIMARY_METRIC,
    higher_is_better=HIGHER_IS_BETTER,
    log_model=log_model,
    load_model=load_model,
    evaluate=evaluate,
)
