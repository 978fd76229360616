"""The `rul_lstm` model: remaining useful life from multivariate run-to-failure series, with a calibrated interval.

One generic sequence model serves every source. Its input is a long frame, one row per unit per
cycle (or time step): `unit` (String), `cycle` (Int64, only its order matters), optionally
`condition` (String, the operating regime each sensor is normalised within), the declared
feature columns (Float64) and, for training and evaluation, `rul`, the true remaining life in
that source's cycles. NASA C-MAPSS (`cmapss_dataset`) and the simulator's robots
(`robot_run_to_failure_history`, `robot_sequences_from_rows`) both arrive in this shape, so the
same fit, evaluate, predict and MLflow code serves both; the model records its feature columns.

The network is an ensemble of small Keras LSTMs over the last `window` rows of a unit (units with
fewer rows are padded with their first row), trained on the piecewise-linear target capped at
the dataset's cap times `rul_cap_scale` (C-MAPSS: 125 x 1.08 = 135 cycles) with sensors normalised
per operating condition and constant sensors dropped; members differ by seed and average their
predictions. The interval is split conformal by default: units never fitted are cut at every
cycle where the official test split could have cut them, the ensemble predicts each cut, and the
nonconformity scores of those predictions give the interval at any confidence (the scores are
kept in the model, so a caller may ask for another confidence at prediction time). With
`calibration_fraction` 0 it is cross-conformal instead: every unit is fitted by all members but
one and scored out of fold by that one (see `fit`). The default score is scaled by the
prediction, since errors grow with the RUL: intervals are narrow near failure, where they matter.

For sources whose `cycle` is the unit's age (C-MAPSS), gradient-boosted trees over summaries of each
unit's whole history (`rul_history`) join the network; the blend's weight is chosen on the
calibration cuts, before the interval is calibrated on the blend.

TensorFlow is imported only where a network is built, trained or loaded: importing this module
(the Dagster code location does) stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np
import pandas as pd  # the pyfunc boundary; imported at run time so MLflow can read predict's type hints
import polars as pl

from factory_pipelines.cmapss import (
    CMAPSS_RUL_CAP,
    cmapss_long_frame,
    read_cmapss_file,
    read_rul_file,
    write_cmapss_file,
    write_rul_file,
)
from factory_pipelines.lstm_inference import inference_pass
from factory_pipelines.model_registry import pinned_requirements
from factory_pipelines.rul_history import TREE_FOLDS, HistoryMember, choose_weight, fit_trees, history_features

if TYPE_CHECKING:
    import keras

MODEL_NAME = "rul_lstm"
PRIMARY_METRIC = "rmse"
HIGHER_IS_BETTER = False

UNIT, CYCLE, CONDITION, RUL = "unit", "cycle", "condition", "rul"
RESERVED_COLUMNS: tuple[str, ...] = (UNIT, CYCLE, CONDITION, RUL)
PREDICTION_SCHEMA: dict[str, pl.DataType] = {
    UNIT: pl.String(),
    "rul": pl.Float64(),
    "lower": pl.Float64(),
    "upper": pl.Float64(),
}
NORMALISED_CLIP = 10.0  # z-scores beyond this are sensor faults, not wear: clipped so they cannot dominate

# How evaluation (and calibration) cuts a unit, like the official C-MAPSS test split: the true RUL
# at the cut is drawn uniformly between these fractions of the cap (5 and 150 cycles at a cap of
# 125; NASA's FD001 test engines have 7 to 145), leaving at least CUT_MIN_PREFIX rows.
CUT_MIN_RUL_FRACTION = 0.04
CUT_MAX_RUL_FRACTION = 1.2
CUT_MIN_PREFIX = 20

# A dataset attribute: "true" when `cycle` counts from the unit's first cycle, so a prediction knows the
# unit's age (C-MAPSS engines). Robot steps count the robot's cycles across bearing lives, and live
# predictions see only the lookback windows: there the age input stays off whatever `age_scale` says.
CYCLE_IS_AGE = "cycle_is_age"


# ---- data -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RulDataset:
    """A long frame of run-to-failure (or cut) series and what the model needs to know about it.

    `rul_cap` is the source's natural cap, in its own cycles (125 for C-MAPSS); it also scales
    the evaluation cuts. `attributes` travel into the trained model (e.g. a robot's cycles per
    step, which live rows must be binned with).
    """

    frame: pl.DataFrame
    feature_columns: tuple[str, ...]
    rul_cap: float
    name: str
    source_uri: str
    attributes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_frame(
        cls,
        frame: pl.DataFrame,
        *,
        rul_cap: float,
        name: str,
        source_uri: str,
        attributes: Mapping[str, str] | None = None,
    ) -> RulDataset:
        """A dataset from a stored long frame: every float column that is not reserved is a feature."""
        return cls(frame, infer_feature_columns(frame), rul_cap, name, source_uri, dict(attributes or {}))

    @property
    def n_units(self) -> int:
        return int(self.frame[UNIT].n_unique())

    def with_frame(self, frame: pl.DataFrame, name: str | None = None) -> RulDataset:
        return replace(self, frame=frame, name=name or self.name)


def infer_feature_columns(frame: pl.DataFrame) -> tuple[str, ...]:
    return tuple(name for name, dtype in frame.schema.items() if name not in RESERVED_COLUMNS and dtype.is_float())


def cmapss_dataset(train_file: Path) -> RulDataset:
    """A C-MAPSS training file (run to failure) as a dataset with the 21 sensors as features."""
    frame = cmapss_long_frame(read_cmapss_file(train_file))
    return RulDataset(
        frame=frame,
        feature_columns=infer_feature_columns(frame),
        rul_cap=CMAPSS_RUL_CAP,
        name=f"cmapss-{Path(train_file).stem}",
        source_uri=Path(train_file).resolve().as_uri(),
        attributes={"source": "cmapss", CYCLE_IS_AGE: "true"},
    )


def cmapss_test_dataset(test_file: Path, rul_file: Path) -> RulDataset:
    """A C-MAPSS test file with its RUL file: `rul` at each engine's last cycle is the RUL-file value."""
    frame = cmapss_long_frame(read_cmapss_file(test_file), read_rul_file(rul_file))
    return RulDataset(
        frame=frame,
        feature_columns=infer_feature_columns(frame),
        rul_cap=CMAPSS_RUL_CAP,
        name=f"cmapss-{Path(test_file).stem}",
        source_uri=Path(test_file).resolve().as_uri(),
        attributes={"source": "cmapss", CYCLE_IS_AGE: "true"},
    )


def split_units(dataset: RulDataset, fraction: float, seed: int) -> tuple[RulDataset, RulDataset]:
    """(kept, held out): a seeded `fraction` of the units, whole, held out (at least one each side)."""
    units = dataset.frame[UNIT].unique().sort().to_list()
    if len(units) < 2:
        raise ValueError(f"{dataset.name}: need at least 2 units to split, found {len(units)}")
    order = np.random.default_rng(seed).permutation(len(units))
    n_held = min(max(1, round(fraction * len(units))), len(units) - 1)
    held = {units[i] for i in order[:n_held]}
    is_held = pl.col(UNIT).is_in(sorted(held))
    return (
        dataset.with_frame(dataset.frame.filter(~is_held), f"{dataset.name}-kept"),
        dataset.with_frame(dataset.frame.filter(is_held), f"{dataset.name}-held-out"),
    )


def eligible_cut_rows(rul: np.ndarray, rul_cap: float, min_prefix: int = CUT_MIN_PREFIX) -> np.ndarray:
    """Positions in one unit's rows where a test-like cut may fall.

    Rows whose true RUL lies between CUT_MIN_RUL_FRACTION and CUT_MAX_RUL_FRACTION of `rul_cap`
    and which leave at least `min_prefix` rows (fewer when the unit is that short); any row that
    leaves enough rows when none qualifies.
    """
    position = np.arange(rul.size)
    enough = position >= min(min_prefix, rul.size) - 1
    in_range = (rul >= CUT_MIN_RUL_FRACTION * rul_cap) & (rul <= CUT_MAX_RUL_FRACTION * rul_cap)
    eligible = np.flatnonzero(enough & in_range)
    return eligible if eligible.size else np.flatnonzero(enough)


def cut_at_random_cycles(
    frame: pl.DataFrame,
    *,
    rul_cap: float,
    seed: int,
    cuts_per_unit: int = 1,
    min_prefix: int = CUT_MIN_PREFIX,
) -> pl.DataFrame:
    """Each unit stopped at a random row, the way the C-MAPSS test split is made.

    The cut falls uniformly on the unit's `eligible_cut_rows`, so the true RUL at the cut (the
    `rul` of the last row kept) is about uniform between 5 and 150 cycles at C-MAPSS's cap of
    125. With several cuts per unit, the copies are units of their own, named `unit~k`.
    """
    ordered = frame.sort(UNIT, CYCLE)
    rng = np.random.default_rng(seed)
    pieces: list[pl.DataFrame] = []
    for (unit,), rows in ordered.group_by(UNIT, maintain_order=True):
        eligible = eligible_cut_rows(rows[RUL].to_numpy(), rul_cap, min_prefix)
        for k in range(cuts_per_unit):
            end = int(rng.choice(eligible))
            name = str(unit) if cuts_per_unit == 1 else f"{unit}~{k}"
            pieces.append(rows.head(end + 1).with_columns(pl.lit(name).alias(UNIT)))
    return pl.concat(pieces) if pieces else frame.clear()


def cut_dataset(dataset: RulDataset, *, seed: int, cuts_per_unit: int = 1) -> RulDataset:
    frame = cut_at_random_cycles(dataset.frame, rul_cap=dataset.rul_cap, seed=seed, cuts_per_unit=cuts_per_unit)
    return dataset.with_frame(frame, f"{dataset.name}-cut")


def train_validation_split(
    dataset: RulDataset, *, validation_fraction: float = 0.2, seed: int = 0, cuts_per_unit: int = 1
) -> tuple[RulDataset, RulDataset]:
    """(training units, held-out units cut at random cycles): the data `fit` and `evaluate` take."""
    train, held = split_units(dataset, validation_fraction, seed)
    return train, cut_dataset(held, seed=seed + 1, cuts_per_unit=cuts_per_unit)


# ---- parameters -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RulParams:
    """Hyper-parameters of `rul_lstm`; the defaults are the C-MAPSS setting measured in benchmarks/."""

    window: int = 50  # rows of history per prediction (shorter units are padded with their first row)
    rul_cap: float = 0.0  # cap of the piecewise-linear target; 0 = the dataset's own cap times rul_cap_scale
    rul_cap_scale: float = 1.08  # with rul_cap 0: the target's cap as a multiple of the dataset's (C-MAPSS:
    # 125 -> 135 cycles). Measured on FD001 dev: RMSE 13.4 at 1.08 vs 14.1 at 1.0; test-like cuts have true RUL up
    # to 150, which a 125 cap can never predict. Only the target moves: evaluation and calibration cuts still
    # use the dataset's cap. Not measured on the robots (set 1.0 there to keep their cap exactly).
    lstm_units: int = 32  # units of the first LSTM layer; each further layer has half as many
    lstm_layers: int = 2  # stacked LSTM layers
    conv_filters: int = 0  # 1-D convolution front-end filters (kernel 5) before the LSTMs; 0 = none
    unroll: bool = True  # unroll the LSTMs over the window: slower to build, several times faster per epoch on CPU
    dense_units: int = 32  # the dense layer between the LSTMs and the output
    dropout: float = 0.2  # dropout after the LSTMs and after the dense layer
    input_noise: float = 0.0  # Gaussian noise (in standard deviations) added to the inputs while training
    learning_rate: float = 0.001  # Adam's initial rate (cosine decay; with early stopping: halved on a stall)
    batch_size: int = 256  # windows per gradient step
    max_epochs: int = 30  # epochs per member (fewer when early stopping is on and the monitor loss stalls)
    patience: int = 8  # with early stopping: epochs without a better monitor loss before a member stops
    ensemble_size: int = 3  # members (different seeds, and monitor units if any) whose predictions are averaged
    smoothing: float = 0.0  # exponential smoothing inside each window: weight of the past (0 = off)
    age_scale: float = 0.0  # > 0: the unit's age (its `cycle` value) divided by this is one more input; 0 = none.
    # Only for datasets whose `cycle` is the unit's age (CYCLE_IS_AGE: C-MAPSS); ignored for the robots.
    history_weight: float = -1.0  # history trees' share of the prediction: -1 = chosen on calibration; 0 = none
    # The trees (`rul_history`) blend with the network: -1 keeps the weight in 0, 0.1, ..., 1 with the lowest RMSE
    # on the calibration cuts; 0 trains no trees. Trees only for sources whose `cycle` is the unit's age (C-MAPSS),
    # like age_scale.
    history_wear_rate: bool = True  # the trees also read each sensor's change since the unit's first 20 rows
    # divided by its age. Two 5-fold cross-validations through the platform (models_rul.md): FD001 RMSE 12.20
    # with it, 12.62 without; FD003 12.59 and 12.66.
    monitor_fraction: float = 0.0  # share of a member's fitting units kept aside for early stopping; 0 = none,
    # every fitting unit trains for max_epochs on a cosine learning-rate schedule (better on C-MAPSS)
    calibration_fraction: float = 0.2  # > 0: split conformal, this share of the training units never fitted
    # and kept to calibrate the interval; 0: cross-conformal, the units are dealt into `ensemble_size` folds,
    # member k trains on every fold but the k-th, and each unit's calibration scores come from the one member
    # that never saw it (out of fold), so every unit is both fitted and used for calibration
    confidence: float = 0.9  # default confidence of the interval (another may be asked at prediction)
    interval_score: str = "scaled"  # conformal score: "absolute" |y-p| or "scaled" |y-p|/(p + floor)
    interval_floor: float = 0.1  # the scaled score's floor, as a share of the cap (keeps it finite at p=0)
    seed: int = 42  # seeds the calibration split and every member's initialisation and shuffling


INTERVAL_SCORES = ("absolute", "scaled")


def check_params(params: RulParams) -> None:
    """ValueError for settings that cannot train, named, before minutes are spent on them."""
    problems = []
    if params.window < 1:
        problems.append(f"window must be >= 1, got {params.window}")
    if params.lstm_units < 1 or params.lstm_layers < 1:
        problems.append("lstm_units and lstm_layers must be >= 1")
    if params.ensemble_size < 1 or params.max_epochs < 1:
        problems.append("ensemble_size and max_epochs must be >= 1")
    if not 0.0 <= params.smoothing < 1.0:
        problems.append(f"smoothing must be in [0, 1), got {params.smoothing}")
    if not 0.0 <= params.calibration_fraction < 1.0 or not 0.0 <= params.monitor_fraction < 1.0:
        problems.append("calibration_fraction and monitor_fraction must be in [0, 1)")
    if params.calibration_fraction == 0 and params.ensemble_size < 2:
        problems.append("calibration_fraction 0 (cross-conformal) needs ensemble_size >= 2: one fold per member")
    if not 0.0 < params.confidence < 1.0:
        problems.append(f"confidence must be in (0, 1), got {params.confidence}")
    if params.interval_score not in INTERVAL_SCORES:
        problems.append(f"interval_score must be one of {INTERVAL_SCORES}, got {params.interval_score!r}")
    if params.age_scale < 0:
        problems.append(f"age_scale must be >= 0, got {params.age_scale}")
    if params.history_weight != -1.0 and not 0.0 <= params.history_weight <= 1.0:
        problems.append(
            f"history_weight must be -1 (chosen on the calibration cuts) or in [0, 1], got {params.history_weight}"
        )
    if params.rul_cap < 0 or params.rul_cap_scale <= 0 or params.interval_floor <= 0:
        problems.append("rul_cap must be >= 0, rul_cap_scale > 0 and interval_floor > 0")
    if problems:
        raise ValueError("; ".join(problems))


# ---- normalisation and windows ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureScaling:
    """Mean and standard deviation of each feature, per operating condition and over all rows."""

    mean: dict[str, list[float]]  # condition -> per feature; "" holds the statistics over all rows
    std: dict[str, list[float]]
    # condition -> (mean, std with 1 for constant features) as arrays, made on first use
    _arrays: dict[str, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    @classmethod
    def fit(cls, frame: pl.DataFrame, features: Sequence[str]) -> FeatureScaling:
        mean = {"": [float(frame[c].mean() or 0.0) for c in features]}  # type: ignore[arg-type]
        std = {"": [float(frame[c].std() or 0.0) for c in features]}  # type: ignore[arg-type]
        if CONDITION in frame.columns:
            grouped = frame.group_by(CONDITION).agg(
                *(pl.col(c).mean().alias(f"mean:{c}") for c in features),
                *(pl.col(c).std().fill_null(0.0).alias(f"std:{c}") for c in features),
            )
            for row in grouped.iter_rows(named=True):
                mean[str(row[CONDITION])] = [float(row[f"mean:{c}"] or 0.0) for c in features]
                std[str(row[CONDITION])] = [float(row[f"std:{c}"] or 0.0) for c in features]
        return cls(mean, std)

    def informative(self) -> np.ndarray:
        """Features that vary within at least one condition (constant sensors carry nothing)."""
        stds = np.array([values for key, values in self.std.items() if key or len(self.std) == 1])
        return (stds > 1e-9).any(axis=0)

    def select(self, keep: np.ndarray) -> FeatureScaling:
        return FeatureScaling(
            {k: [v for v, kept in zip(vs, keep, strict=True) if kept] for k, vs in self.mean.items()},
            {k: [v for v, kept in zip(vs, keep, strict=True) if kept] for k, vs in self.std.items()},
        )

    def transform(self, frame: pl.DataFrame, features: Sequence[str]) -> np.ndarray:
        """z-scores (float32, rows x features) within each row's condition; unknown conditions and
        frames without one use the overall statistics; missing values become the mean (0)."""
        values = frame.select(pl.col(c).cast(pl.Float64) for c in features).to_numpy().astype(np.float64)
        if CONDITION in frame.columns and len(self.mean) > 1:
            return self.standardise(values, frame[CONDITION].cast(pl.String).fill_null("").to_list())
        return self.standardise(values)

    def standardise(self, values: np.ndarray, conditions: Sequence[str] | None = None) -> np.ndarray:
        """`transform` of a float matrix (rows x the fitted features), with each row's condition if any."""
        if conditions is None or len(self.mean) == 1:
            mean, std = self._overall()
        else:
            keys = [c if c in self.mean else "" for c in conditions]
            names = sorted(set(keys))
            index = np.array([names.index(k) for k in keys], dtype=np.int64) if keys else np.zeros(0, np.int64)
            means = np.array([self.mean[k] for k in names]).reshape(-1, values.shape[1])
            stds = np.array([self.std[k] for k in names]).reshape(-1, values.shape[1])
            mean, std = means[index], np.where(stds > 1e-9, stds, 1.0)[index]
        z = values - mean
        z /= std
        np.clip(z, -NORMALISED_CLIP, NORMALISED_CLIP, out=z)  # +-inf to the clip; NaN stays NaN
        z[np.isnan(z)] = 0.0
        return z.astype(np.float32)

    def _overall(self) -> tuple[np.ndarray, np.ndarray]:
        arrays = self._arrays.get("")
        if arrays is None:
            std = np.array(self.std[""], dtype=np.float64)
            arrays = self._arrays[""] = (np.array(self.mean[""], dtype=np.float64), np.where(std > 1e-9, std, 1.0))
        return arrays


def _row_layout(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """For a frame sorted by unit and cycle: each row's unit start row, and each unit's last row."""
    positions = frame.with_row_index("_row").select(
        pl.col("_row").min().over(UNIT).cast(pl.Int64).alias("start"),
        (pl.col(UNIT) != pl.col(UNIT).shift(-1)).fill_null(True).alias("last"),
    )
    return positions["start"].to_numpy(), np.flatnonzero(positions["last"].to_numpy())


def window_tensor(
    values: np.ndarray, starts: np.ndarray, ends: np.ndarray, window: int, smoothing: float
) -> np.ndarray:
    """Windows (samples x window x features) ending at rows `ends`, padded with each unit's first row.

    Smoothing runs inside the window only, so a prediction from a unit's last `window` rows
    sees exactly what training saw, however much history the caller passed.
    """
    windows = values[window_rows(starts, ends, window)]
    return smoothed(windows, smoothing) if smoothing > 0 else windows


def window_rows(starts: np.ndarray, ends: np.ndarray, window: int) -> np.ndarray:
    """Row numbers (samples x window) of the windows ending at `ends`, repeating `starts` where a unit is short."""
    offsets = np.arange(window - 1, -1, -1)
    return np.maximum(ends[:, None] - offsets[None, :], starts[:, None])


def smoothed(windows: np.ndarray, smoothing: float) -> np.ndarray:
    """Exponential smoothing along each window's steps (samples x window x channels), in place."""
    for t in range(1, windows.shape[1]):
        windows[:, t] = (1 - smoothing) * windows[:, t] + smoothing * windows[:, t - 1]
    return windows


def model_inputs(
    ordered: pl.DataFrame, features: Sequence[str], scaling: FeatureScaling, age_scale: float
) -> np.ndarray:
    """Normalised features per row (float32), and with `age_scale` > 0 the row's `cycle` / age_scale after them."""
    values = scaling.transform(ordered, features)
    if age_scale <= 0:
        return values
    return with_age(values, ordered[CYCLE].cast(pl.Float64).fill_null(0.0).to_numpy(), age_scale)


def with_age(values: np.ndarray, cycles: np.ndarray, age_scale: float) -> np.ndarray:
    """Normalised features with each row's cycle / age_scale (clipped like them) as one more channel."""
    age = np.clip(cycles.astype(np.float64) / age_scale, 0.0, NORMALISED_CLIP)
    return np.hstack([values, age[:, None].astype(np.float32)])


HISTORY_FILE = "history.skops"  # the history trees, saved beside rul_model.json


# ---- the model --------------------------------------------------------------------------------


def conformal_quantile(scores: np.ndarray, confidence: float) -> float:
    """The split-conformal quantile: the ceil((n+1)c)-th smallest score (the largest when n is too small)."""
    if scores.size == 0:
        return math.inf
    ordered = np.sort(scores)
    rank = math.ceil((ordered.size + 1) * confidence)
    return float(ordered[min(rank, ordered.size) - 1])


@dataclass
class RulModel:
    """The trained network(s) and everything a prediction needs besides them."""

    network: keras.Model  # the ensemble as one Keras model: windows -> RUL / rul_cap
    feature_columns: tuple[str, ...]
    scaling: FeatureScaling
    window: int
    rul_cap: float
    smoothing: float
    interval_score: str
    interval_floor: float
    calibration_scores: np.ndarray  # nonconformity scores of the calibration predictions
    confidence: float
    dropped_columns: tuple[str, ...] = ()
    attributes: dict[str, str] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    age_scale: float = 0.0  # RulParams.age_scale: > 0 adds the unit's age as an input
    history: HistoryMember | None = None  # the trees over each unit's whole history, blended with the network
    # confidence -> half_width_factor; not copied by `replace`, which may change the scores
    _half_widths: dict[float, float] = field(default_factory=dict, init=False, compare=False, repr=False)
    # the network's forward pass traced once (`forward`); not copied by `replace`, which may change the network
    _forward: Callable[[np.ndarray], np.ndarray] | None = field(default=None, init=False, compare=False, repr=False)

    def inputs(self, ordered: pl.DataFrame) -> np.ndarray:
        """The network's input per row (rows x channels) of a frame sorted by unit and cycle."""
        return model_inputs(ordered, self.feature_columns, self.scaling, self.age_scale)

    @property
    def uses_conditions(self) -> bool:
        return len(self.scaling.mean) > 1

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The columns `predict` reads."""
        return (UNIT, CYCLE, *((CONDITION,) if self.uses_conditions else ()), *self.feature_columns)

    def calibrate(self, scores: np.ndarray) -> None:
        """Keep these nonconformity scores for the interval (and forget factors of the previous ones)."""
        self.calibration_scores = np.sort(scores)
        self._half_widths.clear()

    def half_width_factor(self, confidence: float | None = None) -> float:
        confidence = self.confidence if confidence is None else confidence
        factor = self._half_widths.get(confidence)
        if factor is None:
            factor = self._half_widths[confidence] = conformal_quantile(self.calibration_scores, confidence)
        return factor

    def interval(self, predicted: np.ndarray, confidence: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) around predictions; lower never below 0."""
        factor = self.half_width_factor(confidence)
        half = factor * self._score_scale(predicted)
        return np.maximum(predicted - half, 0.0), predicted + half

    def _score_scale(self, predicted: np.ndarray) -> np.ndarray:
        if self.interval_score == "absolute":
            return np.ones_like(predicted)
        return np.clip(predicted, 0.0, self.rul_cap) + self.interval_floor * self.rul_cap

    def scores(self, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        return np.abs(truth - predicted) / self._score_scale(predicted)

    def predict_windows(self, windows: np.ndarray) -> np.ndarray:
        """RUL (cycles, >= 0) for a batch of prepared windows; batched, never one call per unit."""
        if windows.shape[0] == 0:
            return np.zeros(0)
        forward = self.forward()
        out = [forward(windows[i : i + 4096]).reshape(-1) for i in range(0, windows.shape[0], 4096)]
        return np.maximum(np.concatenate(out).astype(np.float64) * self.rul_cap, 0.0)

    def forward(self) -> Callable[[np.ndarray], np.ndarray]:
        """The network's inference pass for any batch size, built on first use (`lstm_inference`).

        Keras's numbers without Keras's per-call Python (input adapter, step function, output
        conversion, 0.3-1.1 ms a call) and in fewer graph operations than its LSTM cell: a prediction
        asset calls the network once per window, at tens of robots, where dispatching the operations
        costs as much as their arithmetic.
        """
        if self._forward is None:
            self._forward = inference_pass(self.network)
        return self._forward

    def network_and_trees(self, ordered: pl.DataFrame, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The network's and the history trees' RUL (cycles; None without trees) at rows `ends` of a frame
        sorted by unit and cycle, each from its unit's rows up to that row."""
        values = self.inputs(ordered)
        starts, _ = _row_layout(ordered)
        network = self.predict_windows(window_tensor(values, starts[ends], ends, self.window, self.smoothing))
        if self.history is None:
            return network, None
        cycles = ordered[CYCLE].cast(pl.Float64).fill_null(0.0).to_numpy()
        normalised = values[:, : len(self.feature_columns)]  # without the age channel, if any
        return network, np.maximum(self.history.predict(normalised, starts, cycles, ends) * self.rul_cap, 0.0)

    def predict_rows(self, ordered: pl.DataFrame, ends: np.ndarray) -> np.ndarray:
        """RUL (cycles) at rows `ends` of a frame sorted by unit and cycle: the network, blended with the trees."""
        network, trees = self.network_and_trees(ordered, ends)
        return network if trees is None or self.history is None else self.history.blend(network, trees)

    def _recent(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The rows a prediction reads, sorted by unit and cycle: each unit's last `window` rows, or its
        whole history when the history trees need it."""
        missing = [c for c in self.input_columns if c not in frame.columns]
        if missing:
            raise ValueError(f"the frame lacks columns {missing}; rul_lstm reads {list(self.input_columns)}")
        recent = frame.with_columns(pl.col(UNIT).cast(pl.String)).sort(UNIT, CYCLE)
        return recent if self.history is not None else recent.group_by(UNIT, maintain_order=True).tail(self.window)

    def last_windows(self, frame: pl.DataFrame) -> tuple[list[str], np.ndarray]:
        """Units (in order) and the network's window ending at each unit's last row."""
        recent = self._recent(frame)
        values = self.inputs(recent)
        starts, ends = _row_layout(recent)
        units = recent[UNIT].gather(ends).to_list() if ends.size else []
        return units, window_tensor(values, starts[ends], ends, self.window, self.smoothing)

    def predict_last(self, frame: pl.DataFrame) -> tuple[list[str], np.ndarray]:
        """Units (in order) and the RUL at each unit's last row."""
        recent = self._recent(frame)
        _, ends = _row_layout(recent)
        units = recent[UNIT].gather(ends).to_list() if ends.size else []
        return units, self.predict_rows(recent, ends)

    def predict(self, frame: pl.DataFrame, confidence: float | None = None) -> pl.DataFrame:
        """One row per unit (unit, rul, lower, upper) from each unit's last `window` rows (its whole
        history with the history trees)."""
        if frame.is_empty():
            return pl.DataFrame(schema=PREDICTION_SCHEMA)
        units, predicted = self.predict_last(frame)
        lower, upper = self.interval(predicted, confidence)
        return pl.DataFrame({UNIT: units, "rul": predicted, "lower": lower, "upper": upper}, schema=PREDICTION_SCHEMA)

    # -- persistence: the network as a .keras file, the rest as JSON --

    def state(self) -> dict[str, Any]:
        return {
            "feature_columns": list(self.feature_columns),
            "dropped_columns": list(self.dropped_columns),
            "scaling": {"mean": self.scaling.mean, "std": self.scaling.std},
            "window": self.window,
            "rul_cap": self.rul_cap,
            "smoothing": self.smoothing,
            "interval_score": self.interval_score,
            "interval_floor": self.interval_floor,
            "calibration_scores": [float(s) for s in self.calibration_scores],
            "confidence": self.confidence,
            "age_scale": self.age_scale,
            "history_weight": None if self.history is None else self.history.weight,
            "attributes": self.attributes,
            "summary": self.summary,
        }

    def save(self, directory: Path) -> tuple[Path, Path]:
        """network.keras and rul_model.json, and history.skops (the trees) beside them when there are any."""
        directory.mkdir(parents=True, exist_ok=True)
        network_path, state_path = directory / "network.keras", directory / "rul_model.json"
        self.network.save(network_path)
        state_path.write_text(json.dumps(self.state(), indent=1))
        if self.history is not None:
            self.history.save(directory / HISTORY_FILE)
        return network_path, state_path

    @classmethod
    def load(cls, network_path: Path, state_path: Path, history_path: Path | None = None) -> RulModel:
        """The model `save` wrote; its trees, when it has any, from `history_path` (default: beside the state)."""
        import keras

        state = json.loads(Path(state_path).read_text())
        network = keras.models.load_model(network_path, compile=False)
        weight = state.get("history_weight")  # None: no trees (and versions logged before they existed)
        history = (
            None
            if weight is None
            else HistoryMember.load(history_path or Path(state_path).parent / HISTORY_FILE, float(weight))
        )
        return cls(
            network=network,
            feature_columns=tuple(state["feature_columns"]),
            scaling=FeatureScaling(state["scaling"]["mean"], state["scaling"]["std"]),
            window=int(state["window"]),
            rul_cap=float(state["rul_cap"]),
            smoothing=float(state["smoothing"]),
            interval_score=str(state["interval_score"]),
            interval_floor=float(state["interval_floor"]),
            calibration_scores=np.asarray(state["calibration_scores"], dtype=np.float64),
            confidence=float(state["confidence"]),
            dropped_columns=tuple(state["dropped_columns"]),
            attributes=dict(state["attributes"]),
            summary={k: float(v) for k, v in state["summary"].items()},
            age_scale=float(state.get("age_scale", 0.0)),  # versions logged before it existed had none
            history=history,
        )


# ---- training ---------------------------------------------------------------------------------


def _build_member(window: int, n_features: int, params: RulParams) -> keras.Model:
    import keras

    inputs = keras.Input(shape=(window, n_features), name="windows")
    x = inputs
    if params.input_noise > 0:
        x = keras.layers.GaussianNoise(params.input_noise)(x)
    if params.conv_filters > 0:
        x = keras.layers.Conv1D(params.conv_filters, 5, padding="causal", activation="relu")(x)
    for layer in range(params.lstm_layers):
        units = max(params.lstm_units // 2**layer, 4)
        x = keras.layers.LSTM(units, return_sequences=layer < params.lstm_layers - 1, unroll=params.unroll)(x)
    x = keras.layers.Dropout(params.dropout)(x)
    x = keras.layers.Dense(params.dense_units, activation="relu")(x)
    x = keras.layers.Dropout(params.dropout)(x)
    outputs = keras.layers.Dense(1)(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(params.learning_rate), loss="mse")
    return model


def _ensemble(members: list[keras.Model], window: int, n_features: int) -> keras.Model:
    """The members as one model (their mean): one file to save, one call per batch to predict."""
    import keras

    if len(members) == 1:
        return members[0]
    inputs = keras.Input(shape=(window, n_features), name="windows")
    return keras.Model(inputs, keras.layers.Average()([member(inputs) for member in members]), name="rul_ensemble")


@dataclass(frozen=True, slots=True)
class _Prepared:
    """Training windows of some units, built once and sliced per member."""

    units: np.ndarray  # unit of each window
    windows: np.ndarray
    targets: np.ndarray  # capped RUL / cap


def _prepare(
    frame: pl.DataFrame,
    features: Sequence[str],
    scaling: FeatureScaling,
    params: RulParams,
    cap: float,
    age_scale: float,
) -> _Prepared:
    ordered = frame.sort(UNIT, CYCLE)
    values = model_inputs(ordered, features, scaling, age_scale)
    starts, _ = _row_layout(ordered)
    ends = np.arange(ordered.height)
    windows = window_tensor(values, starts, ends, params.window, params.smoothing)
    targets = (np.minimum(ordered[RUL].to_numpy(), cap) / cap).astype(np.float32)
    return _Prepared(ordered[UNIT].to_numpy(), windows, targets)


def _epoch_reporter(member: int, members: int, cap: float, progress: Callable[[str], None] | None) -> Any:
    """A Keras callback: progress per epoch, and the member's losses (in cycles) to an active MLflow run."""
    import keras
    import mlflow

    logging_to_mlflow = mlflow.active_run() is not None

    class EpochReporter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            fit_rmse = math.sqrt(logs.get("loss", math.nan)) * cap
            monitor_rmse = math.sqrt(logs.get("val_loss", math.nan)) * cap
            monitored = not math.isnan(monitor_rmse)
            if progress is not None:
                on_monitor = f", monitor RMSE {monitor_rmse:.2f}" if monitored else ""
                progress(f"member {member + 1}/{members} epoch {epoch + 1}: fit RMSE {fit_rmse:.2f}{on_monitor} cycles")
            if logging_to_mlflow:
                figures = {f"member{member + 1}_fit_rmse": fit_rmse}
                if monitored:
                    figures[f"member{member + 1}_monitor_rmse"] = monitor_rmse
                mlflow.log_metrics(figures, step=epoch)

    return EpochReporter()


def _cosine_schedule(params: RulParams) -> Callable[[int, float], float]:
    """Learning rate per epoch: cosine from the initial rate down to 1 % of it at the last epoch."""

    def rate(epoch: int, _current: float) -> float:
        progress = epoch / max(params.max_epochs - 1, 1)
        return params.learning_rate * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))

    return rate


def fold_of_units(units: Sequence[str], folds: int, seed: int) -> dict[str, int]:
    """Each unit's fold (0..folds-1): a seeded shuffle dealt round-robin, so fold sizes differ by at most one."""
    ordered = sorted(units)
    order = np.random.default_rng([seed, folds]).permutation(len(ordered))
    return {ordered[i]: position % folds for position, i in enumerate(order)}


def fit(train: RulDataset, params: RulParams, progress: Callable[[str], None] | None = None) -> RulModel:
    """Train the ensemble and calibrate its interval on predictions of units the predicting network never saw.

    Units split by unit, so no engine leaks across. With `calibration_fraction` > 0 (split
    conformal) that share of the units is never fitted and calibrates the whole ensemble. With
    `calibration_fraction` 0 (cross-conformal) the units are dealt into `ensemble_size` folds;
    member k trains on all folds but the k-th and predicts the k-th for calibration, so every unit
    is fitted (by all members but one) and calibrates. An out-of-fold score comes from one member,
    not the ensemble's mean, so the interval errs on the wide side. The feature scaling (means and
    standard deviations of the sensors) is fitted on all fitting units in both modes.

    Each member trains on its units for `max_epochs` on a cosine schedule, or, with
    `monitor_fraction` > 0, keeps its own share of them aside for early stopping (which also makes
    the members differ beyond their seeds, at the price of less data each).
    """
    import keras

    check_params(params)
    started = time.perf_counter()
    say = progress or (lambda _message: None)
    cap = params.rul_cap or train.rul_cap * params.rul_cap_scale
    cross = params.calibration_fraction == 0
    if cross:
        fitting, calibration = train, train
        folds = fold_of_units(train.frame[UNIT].cast(pl.String).unique().to_list(), params.ensemble_size, params.seed)
    else:
        fitting, calibration = split_units(train, params.calibration_fraction, params.seed)
        folds = {}
    scaling = FeatureScaling.fit(fitting.frame, train.feature_columns)
    keep = scaling.informative()
    features = tuple(c for c, kept in zip(train.feature_columns, keep, strict=True) if kept)
    dropped = tuple(c for c, kept in zip(train.feature_columns, keep, strict=True) if not kept)
    scaling = scaling.select(keep)
    how = (
        f"all {fitting.n_units} units fit and calibrate ({params.ensemble_size} folds, out of fold)"
        if cross
        else f"{fitting.n_units} units to fit, {calibration.n_units} to calibrate"
    )
    say(f"{how}; {len(features)} features (constant, dropped: {', '.join(dropped) or 'none'})")
    age_scale = params.age_scale if train.attributes.get(CYCLE_IS_AGE) == "true" else 0.0
    if params.age_scale > 0:
        say(f"age input: cycle / {age_scale:g}" if age_scale else "age input off: this source's cycle is not an age")
    prepared = _prepare(fitting.frame, features, scaling, params, cap, age_scale)
    n_inputs = len(features) + (age_scale > 0)  # the age, when on, is the last channel (`model_inputs`)
    window_units = prepared.units.astype(str)
    window_fold = np.array([folds[u] for u in window_units]) if cross else np.full(window_units.size, -1)
    members: list[keras.Model] = []
    epochs: list[int] = []
    for member in range(params.ensemble_size):
        keras.utils.set_random_seed(params.seed + 1000 * member)
        network = _build_member(params.window, n_inputs, params)
        reporter = _epoch_reporter(member, params.ensemble_size, cap, progress)
        trains = window_fold != member  # all windows in split mode; all but this member's fold when cross
        pool = np.unique(window_units[trains])
        if params.monitor_fraction > 0:
            order = np.random.default_rng([params.seed, member]).permutation(pool.size)
            n_monitor = min(max(1, round(params.monitor_fraction * pool.size)), pool.size - 1)
            monitored = trains & np.isin(window_units, pool[order[:n_monitor]])
            validation = (prepared.windows[monitored], prepared.targets[monitored])
            callbacks = [
                keras.callbacks.EarlyStopping(patience=params.patience, restore_best_weights=True),
                keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=max(params.patience // 2, 1), min_lr=1e-5),
                reporter,
            ]
        else:  # every unit of the member trains; a fixed cosine schedule instead of a noisy early stop
            monitored = np.zeros(window_units.size, dtype=bool)
            validation = None
            callbacks = [keras.callbacks.LearningRateScheduler(_cosine_schedule(params)), reporter]
        fitted = trains & ~monitored
        history = network.fit(
            prepared.windows[fitted],
            prepared.targets[fitted],
            validation_data=validation,
            batch_size=params.batch_size,
            epochs=params.max_epochs,
            shuffle=True,
            verbose=0,
            callbacks=callbacks,
        )
        members.append(network)
        epochs.append(len(history.history["loss"]))
    with_trees = params.history_weight != 0 and train.attributes.get(CYCLE_IS_AGE) == "true"
    # Units -> fold for the calibration predictions: cross-conformal, the members' folds; otherwise, with trees,
    # TREE_FOLDS folds of every unit (the trees learn from the calibration units too, and each calibration unit
    # is predicted by the fold trees that never saw it); otherwise one fold.
    if cross:
        calibration_folds, n_folds = folds, params.ensemble_size
    elif with_trees:
        units = train.frame[UNIT].cast(pl.String).unique().to_list()
        calibration_folds, n_folds = fold_of_units(units, TREE_FOLDS, params.seed), TREE_FOLDS
    else:
        calibration_folds, n_folds = {}, 1
    trees_on_all, fold_trees = None, []
    if with_trees:
        tree_rows = _tree_rows(train.frame, features, scaling, cap, wear_rate=params.history_wear_rate)
        tree_folds = np.array([calibration_folds[u] for u in tree_rows.units])
        trees_on_all = fit_trees(tree_rows.features, tree_rows.targets, params.seed)
        fold_trees = [
            fit_trees(tree_rows.features[tree_folds != k], tree_rows.targets[tree_folds != k], params.seed)
            for k in range(n_folds)
        ]
        say(
            f"history trees fitted on {tree_rows.targets.size} rows of {train.n_units} units, and once per "
            f"fold for calibration ({time.perf_counter() - started:.0f} s so far)"
        )
    model = RulModel(
        network=_ensemble(members, params.window, n_inputs),
        feature_columns=features,
        scaling=scaling,
        window=params.window,
        rul_cap=cap,
        smoothing=params.smoothing,
        interval_score=params.interval_score,
        interval_floor=params.interval_floor,
        calibration_scores=np.zeros(0),
        confidence=params.confidence,
        dropped_columns=dropped,
        attributes=dict(train.attributes),
        age_scale=age_scale,
    )
    fold_frames = (
        [
            calibration.frame.filter(
                pl.col(UNIT).cast(pl.String).is_in([u for u, f in calibration_folds.items() if f == k])
            )
            for k in range(n_folds)
        ]
        if calibration_folds
        else [calibration.frame]
    )
    pieces = [  # each fold predicted by the member (cross-conformal) and the trees that never saw it
        _calibration_predictions(
            replace(
                model,
                network=members[k] if cross else model.network,
                history=HistoryMember(fold_trees[k], 0.0) if fold_trees else None,
            ),
            frame,
            train.rul_cap,
        )
        for k, frame in enumerate(fold_frames)
        if not frame.is_empty()
    ]
    truth = np.concatenate([t for t, _, _ in pieces])
    network_predicted = np.concatenate([n for _, n, _ in pieces])
    tree_pieces = [t for _, _, t in pieces if t is not None]
    trees_predicted = np.concatenate(tree_pieces) if tree_pieces else None
    predicted = network_predicted
    if trees_on_all is not None and trees_predicted is not None:
        weight = params.history_weight
        if weight == -1.0:
            weight = choose_weight(truth, network_predicted, trees_predicted) if truth.size else 0.5
        model.history = HistoryMember(trees_on_all, weight)
        predicted = model.history.blend(network_predicted, trees_predicted)
        model.summary["history_weight"] = weight
        model.summary["tree_units"] = float(train.n_units)
        model.summary["network_calibration_rmse"] = _rmse(truth, network_predicted)
        model.summary["trees_calibration_rmse"] = _rmse(truth, trees_predicted)
        say(
            f"blend: trees {weight:.1f}, network {1 - weight:.1f} (calibration RMSE: network "
            f"{model.summary['network_calibration_rmse']:.2f}, trees {model.summary['trees_calibration_rmse']:.2f})"
        )
    model.calibrate(model.scores(truth, predicted))
    model.summary |= {
        "train_seconds": time.perf_counter() - started,
        "fit_units": float(fitting.n_units),
        "calibration_units": float(calibration.n_units),
        "calibration_folds": float(params.ensemble_size if cross else 0),
        "calibration_samples": float(truth.size),
        "calibration_rmse": _rmse(truth, predicted),
        "epochs_mean": float(np.mean(epochs)),
        "training_windows": float(prepared.windows.shape[0]),
    }
    say(
        f"calibrated on {truth.size} cuts of {calibration.n_units} units{' (out of fold)' if cross else ''}: "
        f"RMSE {model.summary['calibration_rmse']:.2f}; trained in {model.summary['train_seconds']:.0f} s"
    )
    return model


@dataclass(frozen=True, slots=True)
class _TreeRows:
    """The history trees' training rows: every row of the fitting units."""

    units: np.ndarray  # unit of each row (String)
    features: np.ndarray  # `history_features`
    targets: np.ndarray  # capped RUL / cap


def _tree_rows(
    frame: pl.DataFrame, features: Sequence[str], scaling: FeatureScaling, cap: float, *, wear_rate: bool
) -> _TreeRows:
    ordered = frame.with_columns(pl.col(UNIT).cast(pl.String)).sort(UNIT, CYCLE)
    starts, _ = _row_layout(ordered)
    cycles = ordered[CYCLE].cast(pl.Float64).fill_null(0.0).to_numpy()
    values = history_features(scaling.transform(ordered, features), starts, cycles, wear_rate=wear_rate)
    targets = np.minimum(ordered[RUL].to_numpy().astype(np.float64), cap) / cap
    return _TreeRows(ordered[UNIT].to_numpy(), values, targets)


def _calibration_predictions(
    model: RulModel, frame: pl.DataFrame, rul_cap: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Truth, the network's and the trees' predictions (None without trees) at every test-like cut of these units."""
    ordered, ends = every_cut(frame, rul_cap)
    network, trees = model.network_and_trees(ordered, ends)
    return ordered[RUL].to_numpy().astype(np.float64)[ends], network, trees


def _rmse(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.sqrt(np.mean((truth - predicted) ** 2))) if truth.size else math.nan


def every_cut(frame: pl.DataFrame, rul_cap: float) -> tuple[pl.DataFrame, np.ndarray]:
    """The frame sorted by unit and cycle, and its rows where a test-like cut may fall (`eligible_cut_rows`).

    What calibration uses: every cut the test split could make of these units, instead of a few
    random ones, so the scores carry no sampling noise of the cuts themselves.
    """
    ordered = frame.with_columns(pl.col(UNIT).cast(pl.String)).sort(UNIT, CYCLE)
    _, lasts = _row_layout(ordered)
    rul = ordered[RUL].to_numpy().astype(np.float64)
    firsts = np.concatenate([[0], lasts[:-1] + 1]) if lasts.size else lasts
    ends = np.concatenate(
        [first + eligible_cut_rows(rul[first : last + 1], rul_cap) for first, last in zip(firsts, lasts, strict=True)]
        or [np.zeros(0, dtype=np.int64)]
    ).astype(np.int64)
    return ordered, ends


def last_cycle_truth_and_prediction(model: RulModel, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """True RUL at each unit's last row, and the model's prediction there (same unit order)."""
    units, predicted = model.predict_last(frame)
    truth_by_unit = dict(
        frame.with_columns(pl.col(UNIT).cast(pl.String))
        .sort(UNIT, CYCLE)
        .group_by(UNIT, maintain_order=True)
        .agg(pl.col(RUL).last())
        .iter_rows()
    )
    truth = np.array([truth_by_unit[u] for u in units], dtype=np.float64)
    return truth, predicted


def phm08_score(truth: np.ndarray, predicted: np.ndarray) -> float:
    """The PHM08 challenge score: late predictions cost more than early ones (lower is better).

    Defined in C-MAPSS cycles: on other scales (robots count thousands of cycles) it explodes, so
    the exponent is bounded to keep it finite; compare it only between models of one source.
    """
    d = predicted - truth
    exponent = np.minimum(np.where(d < 0, -d / 13.0, d / 10.0), 200.0)
    return float(np.sum(np.expm1(exponent)))


def evaluate(model: RulModel, validation: RulDataset, confidence: float | None = None) -> dict[str, float]:
    """Metrics at each unit's last row against its true RUL (as given, not capped).

    `rmse_capped` also caps the truth at the model's cap, the convention of part of the
    C-MAPSS literature; `coverage` and `mean_interval_width` are at `confidence` (default: the
    model's).
    """
    truth, predicted = last_cycle_truth_and_prediction(model, validation.frame)
    if truth.size == 0:
        raise ValueError(f"{validation.name} has no units to evaluate")
    lower, upper = model.interval(predicted, confidence)
    errors = predicted - truth
    return {
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "mae": float(np.mean(np.abs(errors))),
        "rmse_capped": float(np.sqrt(np.mean((predicted - np.minimum(truth, model.rul_cap)) ** 2))),
        "phm08_score": phm08_score(truth, predicted),
        "coverage": float(np.mean((truth >= lower) & (truth <= upper))),
        "mean_interval_width": float(np.mean(upper - lower)),
        "confidence": float(model.confidence if confidence is None else confidence),
        "n_engines": float(truth.size),
    }


# ---- MLflow -----------------------------------------------------------------------------------


class RulPyfunc(mlflow.pyfunc.PythonModel):
    """The MLflow face of a RulModel: a long frame in, one row per unit (unit, rul, lower, upper) out."""

    def __init__(self) -> None:
        self.rul_model: RulModel | None = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        history = context.artifacts.get("history")
        self.rul_model = RulModel.load(
            Path(context.artifacts["network"]), Path(context.artifacts["state"]), Path(history) if history else None
        )

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        if self.rul_model is None:
            raise RuntimeError("the RUL model was not loaded (load_context did not run)")
        confidence = (params or {}).get("confidence")
        frame = pl.from_pandas(model_input)
        return self.rul_model.predict(frame, None if confidence is None else float(confidence)).to_pandas()


def input_example(model: RulModel, frame: pl.DataFrame) -> pl.DataFrame:
    """A small input: the last `window` rows of the first unit, only the columns the model reads."""
    first = frame.sort(UNIT, CYCLE)[UNIT][0]
    rows = frame.filter(pl.col(UNIT) == first).sort(CYCLE).tail(model.window)
    return rows.select(
        pl.col(UNIT).cast(pl.String),
        pl.col(CYCLE).cast(pl.Int64),
        *((pl.col(CONDITION).cast(pl.String),) if model.uses_conditions else ()),
        *(pl.col(c).cast(pl.Float64) for c in model.feature_columns),
    )


def _example_rows(model: RulModel) -> pl.DataFrame:
    """Synthetic rows at the training means (the model keeps no training data): `window` rows of one unit."""
    condition = next((k for k in model.scaling.mean if k), "")
    means = model.scaling.mean[condition]
    return pl.DataFrame(
        {
            UNIT: ["unit-1"] * model.window,
            CYCLE: list(range(1, model.window + 1)),
            **({CONDITION: [condition] * model.window} if model.uses_conditions else {}),
            **{c: [float(m)] * model.window for c, m in zip(model.feature_columns, means, strict=True)},
        },
        schema={
            UNIT: pl.String(),
            CYCLE: pl.Int64(),
            **({CONDITION: pl.String()} if model.uses_conditions else {}),
            **dict.fromkeys(model.feature_columns, pl.Float64()),
        },
    )


def log_model(model: RulModel, *, registered_name: str, example: pl.DataFrame | None = None) -> str:
    """Log `model` into the active MLflow run as a pyfunc and register it; the new version.

    The network travels as a .keras artifact and the rest as JSON; `load_model` puts them back
    together. The signature has a `confidence` parameter, so a pyfunc caller may ask for another
    interval too.
    """
    from mlflow.models import infer_signature

    rows = input_example(model, example) if example is not None else _example_rows(model)
    output = model.predict(rows)
    signature = infer_signature(rows.to_pandas(), output.to_pandas(), params={"confidence": model.confidence})
    with tempfile.TemporaryDirectory(prefix="rul-model-") as tmp:
        network_path, state_path = model.save(Path(tmp))
        artifacts = {"network": str(network_path), "state": str(state_path)}
        if model.history is not None:
            artifacts["history"] = str(Path(tmp) / HISTORY_FILE)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=RulPyfunc(),
            artifacts=artifacts,
            signature=signature,
            input_example=rows.to_pandas(),
            pip_requirements=pinned_requirements(
                "tensorflow-cpu", "keras", "polars", "numpy", "pandas", "mlflow", "scikit-learn", "skops"
            ),
            registered_model_name=registered_name,
        )
    if info.registered_model_version is None:
        raise RuntimeError(f"MLflow did not register a version of {registered_name}")
    return str(info.registered_model_version)


def load_model(model_uri: str) -> RulModel:
    """The RulModel behind `model_uri` (models:/NAME/3, models:/NAME@champion, runs:/...)."""
    wrapper = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    if not isinstance(wrapper, RulPyfunc) or wrapper.rul_model is None:
        raise TypeError(f"{model_uri} is not a {MODEL_NAME} model")
    return wrapper.rul_model


# ---- C-MAPSS benchmark ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CmapssSplitFiles:
    train_file: Path
    test_file: Path
    rul_file: Path
    held_out_engines: int
    test_engines: int


def write_cmapss_dev_split(
    train_file: Path,
    out_dir: Path,
    *,
    held_out_fraction: float = 0.2,
    seed: int = 0,
    cuts_per_engine: int = 1,
    fold: int = 0,
) -> CmapssSplitFiles:
    """A development stand-in for the held-out official test split, written in NASA's layout.

    A seeded `held_out_fraction` of the training engines is removed from the training file; each
    is cut at random cycles (`cut_at_random_cycles`) `cuts_per_engine` times, and the cut copies,
    numbered 1.., form the test file with their true RUL in the RUL file.

    `fold` picks which block of the seeded engine order is held out. The folds of one seed are
    disjoint, so with `held_out_fraction=0.2` folds 0-4 hold out every engine once: pooled, they
    score as many independent engines as NASA's test file has. Fold 0 is the split of earlier runs.
    """
    raw = read_cmapss_file(train_file)
    stem = Path(train_file).stem.replace("train_", "")
    engines = raw["unit"].unique().sort().to_list()
    order = np.random.default_rng(seed).permutation(len(engines))
    n_held = min(max(1, round(held_out_fraction * len(engines))), len(engines) - 1)
    folds = len(engines) // n_held
    if not 0 <= fold < folds:
        raise ValueError(
            f"fold {fold} does not exist: {len(engines)} engines with held_out_fraction {held_out_fraction} "
            f"give folds 0-{folds - 1}"
        )
    held = sorted(engines[i] for i in order[fold * n_held : (fold + 1) * n_held])
    with_rul = raw.filter(pl.col("unit").is_in(held)).with_columns(
        pl.col("unit").cast(pl.String),
        (pl.col("cycle").max().over("unit") - pl.col("cycle")).cast(pl.Float64).alias(RUL),
    )
    cut = cut_at_random_cycles(with_rul, rul_cap=CMAPSS_RUL_CAP, seed=seed + 1, cuts_per_unit=cuts_per_engine)
    # Number the cut copies 1..n in the order they were cut (engine, then cut).
    numbering = cut.select(UNIT).unique(maintain_order=True).with_row_index("_number", offset=1)
    cut = cut.join(numbering, on=UNIT).with_columns(pl.col("_number").cast(pl.Int64).alias("unit"))
    truth = cut.group_by("unit").agg(pl.col(RUL).last()).sort("unit")[RUL].to_list()
    out_dir.mkdir(parents=True, exist_ok=True)
    return CmapssSplitFiles(
        train_file=write_cmapss_file(raw.filter(~pl.col("unit").is_in(held)), out_dir / f"train_{stem}.txt"),
        test_file=write_cmapss_file(cut, out_dir / f"test_{stem}.txt"),
        rul_file=write_rul_file(truth, out_dir / f"RUL_{stem}.txt"),
        held_out_engines=len(held),
        test_engines=len(truth),
    )


def benchmark_cmapss(
    train_file: Path,
    test_file: Path,
    rul_file: Path,
    params: RulParams,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Train on a C-MAPSS training file, score every test engine at its last cycle against the RUL file.

    Keys: rmse, phm08_score, coverage, mean_interval_width, n_engines, train_seconds (and mae,
    rmse_capped, calibration figures). RMSE is against the RUL file's values as they are.
    """
    train = cmapss_dataset(train_file)
    started = time.perf_counter()
    model = fit(train, params, progress)
    train_seconds = time.perf_counter() - started
    metrics = evaluate(model, cmapss_test_dataset(test_file, rul_file))
    return {
        **metrics,
        "train_seconds": train_seconds,
        "epochs_mean": model.summary["epochs_mean"],
        "calibration_samples": model.summary["calibration_samples"],
        "calibration_rmse": model.summary["calibration_rmse"],
        "fit_units": model.summary["fit_units"],
        "calibration_units": model.summary["calibration_units"],
        "rul_cap": model.rul_cap,
        "history_weight": model.history.weight if model.history is not None else 0.0,
    }


# ---- robots: run-to-failure histories from the simulator, and live rows -----------------------

ROBOT_ROW_SCHEMA: dict[str, pl.DataType] = {
    "asset_id": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
    "cycle_count": pl.Int64(),
    "temperature": pl.Float64(),
    "motor_current": pl.Float64(),
    "health_score": pl.Float64(),
    "vibration_rms": pl.Float64(),
    "vibration_kurtosis": pl.Float64(),
    "vibration_bpfo": pl.Float64(),
    "vibration_bpfi": pl.Float64(),
    "vibration_bsf": pl.Float64(),
    "vibration_ftf": pl.Float64(),
    "true_rul_cycles": pl.Float64(),
}
"""RobotTelemetry flattened, as the prediction asset collects it from windows (and as the generator writes it)."""

ROBOT_BAND_COLUMNS: tuple[str, ...] = ("vibration_bpfo", "vibration_bpfi", "vibration_bsf", "vibration_ftf")
ROBOT_FEATURE_COLUMNS: tuple[str, ...] = (
    "temperature",
    "motor_current",
    "vibration_rms",
    "vibration_kurtosis",
    *(f"{c}_log10" for c in ROBOT_BAND_COLUMNS),
)
"""What the model sees of a robot. Not health_score: only the simulator sends it, and it is the
simulator's own wear state; not cycle_count: it runs on across bearing replacements."""

ROBOT_CYCLES_PER_STEP = 10  # one model time step per this many robot cycles (20 s at full speed)
ROBOT_RUL_CAP = 1000.0  # cycles; bearings live 1500-4000 cycles (a third of that with a bearing fault)
ROBOT_REPLACEMENT_HEALTH_JUMP = 20.0  # health_score rising this much between readings: a new bearing
ROBOT_BAND_FLOOR = 1e-12  # g^2; band energies are logged, and a silent band is not minus infinity


def robot_run_to_failure_rows(
    n_robots: int,
    seed: int,
    *,
    cycles_per_step: float = ROBOT_CYCLES_PER_STEP,
    lives_per_robot: int = 1,
    fault_share: float = 0.25,
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
) -> pl.DataFrame:
    """Readings (ROBOT_ROW_SCHEMA) of simulated robots whose bearings run to failure, no MQTT.

    Each robot is the simulator's `RobotModel`, stepped by `cycles_per_step` cycles at a time
    until `lives_per_robot` bearings have failed; the first bearing starts part-way through its
    life, as in the simulator. A seeded `fault_share` of the robots carries a bearing fault (3x
    faster wear). Deterministic for a seed.
    """
    from factory_pipelines.simulator import ROBOT_FAULTS, RobotModel, robot_asset_id

    fault_rng = np.random.default_rng([seed, 99])
    dt = cycles_per_step / RobotModel.CYCLES_PER_S
    records: list[dict[str, Any]] = []
    for number in range(1, n_robots + 1):
        fault = str(fault_rng.choice(ROBOT_FAULTS)) if fault_rng.random() < fault_share else None
        asset_id = robot_asset_id(number)
        robot = RobotModel(asset_id, np.random.default_rng([seed, 1, number]), fault)
        ts = start
        while robot.replacements < lives_per_robot:
            values = robot.step(dt)
            ts += timedelta(seconds=dt)
            if robot.replacements >= lives_per_robot:
                break  # the reading after the last failure belongs to a bearing we do not follow
            vibration = values["vibration"]
            records.append(
                {
                    "asset_id": asset_id,
                    "ts": ts,
                    "cycle_count": values["cycle_count"],
                    "temperature": values["temperature"],
                    "motor_current": values["motor_current"],
                    "health_score": values["health_score"],
                    **{
                        f"vibration_{k}": getattr(vibration, k)
                        for k in ("rms", "kurtosis", "bpfo", "bpfi", "bsf", "ftf")
                    },
                    "true_rul_cycles": values["true_rul_cycles"],
                }
            )
    return pl.DataFrame(records, schema=ROBOT_ROW_SCHEMA)


ROBOT_STEP_SCHEMA: dict[str, pl.DataType] = {
    "asset_id": pl.String(),
    "robot_key": pl.Int64(),
    CYCLE: pl.Int64(),
    "health_score": pl.Float64(),
    "true_rul_cycles": pl.Float64(),
    **dict.fromkeys(ROBOT_FEATURE_COLUMNS, pl.Float64()),
}
"""A robot's readings binned into the model's time steps (`robot_steps`): the input of `robot_sequences`."""


def robot_key(asset_id: str) -> int:
    """A robot's number in `robot_steps`: the first 63 bits of the blake2b digest of its asset id.

    Steps of many windows are grouped by robot after every model call (`RobotSteps`); numbers
    group there at a quarter of the cost of comparing the ids. Stable across processes and
    versions (unlike a hash of polars'), and two of even a million robots share one with a
    probability under 1e-7.
    """
    return int.from_bytes(hashlib.blake2b(asset_id.encode(), digest_size=8).digest(), "big") >> 1


def robot_steps(rows: pl.DataFrame, *, cycles_per_step: float = ROBOT_CYCLES_PER_STEP) -> pl.DataFrame:
    """Robot readings binned into model time steps: per robot and step of `cycles_per_step` cycles, the last reading.

    Binning makes live telemetry at any rate look like the training history (one reading per
    step). Band energies enter as log10. Rows without asset_id or cycle_count cannot be placed and
    are dropped. Sorted by robot and step; `cycle` is the step number (cycle_count // cycles_per_step,
    which runs on across bearing replacements, so steps of a window line up with the next window's).
    """
    present = rows.select(
        [pl.col(c).cast(t) if c in rows.columns else pl.lit(None, t).alias(c) for c, t in ROBOT_ROW_SCHEMA.items()]
    )
    present = present.filter(pl.col("asset_id").is_not_null() & pl.col("cycle_count").is_not_null())
    ordered = present.sort("asset_id", "ts", "cycle_count", nulls_last=True)
    step = (pl.col("cycle_count") // cycles_per_step).cast(pl.Int64)
    binned = ordered.with_columns(step.alias(CYCLE)).group_by("asset_id", CYCLE, maintain_order=True).last()
    steps = binned.select(
        "asset_id",
        CYCLE,
        "health_score",
        "true_rul_cycles",
        pl.col("temperature"),
        pl.col("motor_current"),
        pl.col("vibration_rms"),
        pl.col("vibration_kurtosis"),
        *(pl.col(c).clip(lower_bound=ROBOT_BAND_FLOOR).log10().alias(f"{c}_log10") for c in ROBOT_BAND_COLUMNS),
    ).sort("asset_id", CYCLE)
    names = steps.get_column("asset_id").to_list()
    keys = {name: robot_key(name) for name in set(names)}
    return steps.insert_column(1, pl.Series("robot_key", [keys[name] for name in names], dtype=pl.Int64))


@dataclass(frozen=True, slots=True)
class RobotSteps:
    """`robot_steps` of one window or several (in window order), arranged robot by robot in numpy.

    Rows are grouped by robot (in `robot_key` order), steps ascending within a robot; a step cut
    in two by a window boundary appears in both windows, and the later window's reading wins. A
    new bearing life starts where health_score jumps up by ROBOT_REPLACEMENT_HEALTH_JUMP or
    true_rul_cycles rises (a replacement). Numpy after one conversion of the frame, never a polars
    query, and few array operations: the prediction asset does this after each window's model
    call, where every operation runs on cold caches and costs tens of microseconds whatever its size.
    """

    names: list[str]  # per robot
    first: np.ndarray  # per robot: its first row
    last: np.ndarray  # per robot: its last row
    step: np.ndarray  # int64 per row
    life_start: np.ndarray  # bool per row: a new bearing starts here (never on a robot's first row)
    values: np.ndarray  # float64, rows x (health_score, true_rul_cycles, *feature columns asked for)

    @classmethod
    def of(cls, steps: pl.DataFrame, feature_columns: Sequence[str] = ROBOT_FEATURE_COLUMNS) -> RobotSteps:
        key = steps.get_column("robot_key").to_numpy()
        order = np.lexsort((steps.get_column(CYCLE).to_numpy(), key))  # stable: the later window last
        key = key[order]
        step = steps.get_column(CYCLE).to_numpy()[order].astype(np.int64)
        keep = np.ones(order.size, dtype=bool)
        keep[:-1] = (key[1:] != key[:-1]) | (step[1:] != step[:-1])  # the last of a repeated step
        order, key, step = order[keep], key[keep], step[keep]
        same_robot = np.zeros(order.size, dtype=bool)
        same_robot[1:] = key[1:] == key[:-1]
        first = np.flatnonzero(~same_robot)
        last = np.append(first[1:] - 1, order.size - 1) if first.size else first
        columns = ("health_score", "true_rul_cycles", *feature_columns)
        values = np.empty((order.size, len(columns)), dtype=np.float64)
        for i, name in enumerate(columns):
            values[:, i] = steps.get_column(name).to_numpy()[order]  # float columns: nulls arrive as NaN
        life_start = np.zeros(order.size, dtype=bool)
        with np.errstate(invalid="ignore"):  # a difference with a missing reading starts nothing
            rises = values[1:, :2] - values[:-1, :2]
            life_start[1:] = same_robot[1:] & ((rises[:, 0] > ROBOT_REPLACEMENT_HEALTH_JUMP) | (rises[:, 1] > 0))
        return cls(_robot_names(steps, key[first], order[first]), first, last, step, life_start, values)

    @property
    def features(self) -> np.ndarray:
        return self.values[:, 2:]

    @property
    def truth(self) -> np.ndarray:
        return self.values[:, 1]

    def robot(self) -> np.ndarray:
        """Each row's robot (an index into `names`)."""
        return np.repeat(np.arange(len(self.names)), self.last - self.first + 1)

    def life(self) -> np.ndarray:
        """Each row's bearing life within its robot, from 0."""
        started = np.cumsum(self.life_start)
        return started - np.repeat(started[self.first], self.last - self.first + 1)

    def current_first(self) -> np.ndarray:
        """Per robot: the first row of its current bearing (its last life)."""
        if not self.first.size:
            return self.first
        starts = np.where(self.life_start, np.arange(self.step.size), -1)
        return np.maximum(np.maximum.reduceat(starts, self.first), self.first)


_NAMES_BY_KEY: dict[int, str] = {}  # robot_key -> asset id: a pure function's inverse, so never stale
_NAMES_BY_KEY_MAX = 100_000


def _robot_names(steps: pl.DataFrame, keys: np.ndarray, rows: np.ndarray) -> list[str]:
    """The asset ids of `keys` (found at `rows`): from the keys already seen, else read from the frame.

    A plant's robots are the same window after window; reading their ids off the frame (a gather
    and a list) costs more than the rest of arranging their steps.
    """
    names = [_NAMES_BY_KEY.get(key) for key in keys.tolist()]
    if None in names:
        names = steps.get_column("asset_id")[rows].to_list()  # a native gather, one id per robot
        if len(_NAMES_BY_KEY) > _NAMES_BY_KEY_MAX:
            _NAMES_BY_KEY.clear()
        _NAMES_BY_KEY.update(zip(keys.tolist(), names, strict=True))
    return names  # type: ignore[return-value]


def robot_sequences(
    steps: pl.DataFrame, *, latest_life_only: bool = False, feature_columns: Sequence[str] = ROBOT_FEATURE_COLUMNS
) -> pl.DataFrame:
    """Robot steps (`robot_steps`, of one or more windows) as the model's long frame: a unit per bearing life.

    A unit is one bearing life (`asset_id/life-n`), or the robot itself with `latest_life_only`.
    """
    arranged = RobotSteps.of(steps, feature_columns)
    robot = arranged.robot()
    if latest_life_only:
        rows = np.arange(robot.size) >= arranged.current_first()[robot]
        units = [arranged.names[r] for r in robot[rows].tolist()]
    else:
        rows = np.ones(robot.size, dtype=bool)
        lives = arranged.life().tolist()
        units = [f"{arranged.names[r]}/life-{n}" for r, n in zip(robot.tolist(), lives, strict=True)]
    return pl.DataFrame(
        [
            pl.Series(UNIT, units, dtype=pl.String),
            pl.Series(CYCLE, arranged.step[rows], dtype=pl.Int64),
            *(pl.Series(name, arranged.features[rows, i], nan_to_null=True) for i, name in enumerate(feature_columns)),
            pl.Series(RUL, arranged.truth[rows], nan_to_null=True),  # NaN was a missing reading: null again
        ]
    ).sort(UNIT, CYCLE)


def robot_sequences_from_rows(
    rows: pl.DataFrame, *, cycles_per_step: float = ROBOT_CYCLES_PER_STEP, latest_life_only: bool = False
) -> pl.DataFrame:
    """Robot readings (ROBOT_ROW_SCHEMA) as the model's long frame: `robot_steps`, then `robot_sequences`."""
    return robot_sequences(robot_steps(rows, cycles_per_step=cycles_per_step), latest_life_only=latest_life_only)


def robot_run_to_failure_history(
    n_robots: int,
    seed: int,
    *,
    cycles_per_step: float = ROBOT_CYCLES_PER_STEP,
    lives_per_robot: int = 1,
    fault_share: float = 0.25,
) -> pl.DataFrame:
    """Simulated run-to-failure histories in the model's long frame (unit, cycle, features, rul)."""
    rows = robot_run_to_failure_rows(
        n_robots, seed, cycles_per_step=cycles_per_step, lives_per_robot=lives_per_robot, fault_share=fault_share
    )
    return robot_sequences_from_rows(rows, cycles_per_step=cycles_per_step)


def robot_dataset(
    n_robots: int,
    seed: int,
    *,
    cycles_per_step: float = ROBOT_CYCLES_PER_STEP,
    lives_per_robot: int = 1,
    fault_share: float = 0.25,
) -> RulDataset:
    """`robot_run_to_failure_history` as a dataset (cap ROBOT_RUL_CAP); the step size travels into the model."""
    frame = robot_run_to_failure_history(
        n_robots, seed, cycles_per_step=cycles_per_step, lives_per_robot=lives_per_robot, fault_share=fault_share
    )
    return RulDataset(
        frame=frame,
        feature_columns=ROBOT_FEATURE_COLUMNS,
        rul_cap=ROBOT_RUL_CAP,
        name=f"robots-{n_robots}x{lives_per_robot}-seed{seed}",
        source_uri=(
            f"simulator:RobotModel?robots={n_robots}&lives={lives_per_robot}&seed={seed}"
            f"&cycles_per_step={cycles_per_step:g}&fault_share={fault_share:g}"
        ),
        attributes={"source": "robots", "cycles_per_step": f"{cycles_per_step:g}"},
    )


def robot_cycles_per_step(model: RulModel) -> float:
    """The step size the model was trained with: live rows must be binned the same way."""
    return float(model.attributes.get("cycles_per_step", ROBOT_CYCLES_PER_STEP))


MAX_HISTORY_WINDOWS = 200  # a robot standing still for hours adds no steps: look back no further


def robot_history_windows(model: RulModel, window_seconds: float) -> int:
    """Windows of robot steps that hold the model's window of steps at the robots' full speed."""
    from factory_pipelines.simulator import RobotModel

    seconds = model.window * robot_cycles_per_step(model) / RobotModel.CYCLES_PER_S
    return min(MAX_HISTORY_WINDOWS, math.ceil(seconds / window_seconds) + 1)


@dataclass(frozen=True, slots=True)
class RobotRul:
    """Per robot (in asset_id order): RUL in cycles, its interval, and how many steps of history it saw.

    `steps` below the model's window means the rest of the window was padded with the first step.
    """

    asset_id: list[str]
    rul: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    confidence: float
    steps: np.ndarray

    def frame(self) -> pl.DataFrame:
        """Columns: asset_id, rul, lower, upper, confidence, steps."""
        return pl.DataFrame(
            {
                "asset_id": pl.Series(self.asset_id, dtype=pl.String),
                "rul": self.rul,
                "lower": self.lower,
                "upper": self.upper,
                "confidence": np.full(len(self.asset_id), self.confidence),
                "steps": self.steps.astype(np.int64),
            }
        )


def robot_rul(model: RulModel, steps: pl.DataFrame, confidence: float | None = None) -> RobotRul:
    """RUL per robot from its current bearing's most recent `window` steps (`robot_steps` of one or more windows)."""
    missing = [c for c in model.feature_columns if c not in steps.columns]
    if missing:
        raise ValueError(f"the robot steps lack {missing}; rul_lstm reads {list(model.feature_columns)}")
    arranged = RobotSteps.of(steps, model.feature_columns)
    confidence = model.confidence if confidence is None else confidence
    if not arranged.names:
        nothing = np.zeros(0)
        return RobotRul([], nothing, nothing, nothing, confidence, np.zeros(0, dtype=np.int64))
    first, last = arranged.current_first(), arranged.last
    rows = window_rows(first, last, model.window)  # padded with the bearing's first step
    windows = model.scaling.standardise(arranged.features[rows.reshape(-1)]).reshape(*rows.shape, -1)
    if model.age_scale > 0:
        windows = with_age(windows.reshape(rows.size, -1), arranged.step[rows.reshape(-1)], model.age_scale)
        windows = windows.reshape(*rows.shape, -1)
    if model.smoothing > 0:
        windows = smoothed(windows, model.smoothing)
    predicted = model.predict_windows(windows)
    lower, upper = model.interval(predicted, confidence)
    by_name = np.array(sorted(range(len(arranged.names)), key=arranged.names.__getitem__), dtype=np.int64)
    return RobotRul(
        asset_id=[arranged.names[i] for i in by_name.tolist()],
        rul=predicted[by_name],
        lower=lower[by_name],
        upper=upper[by_name],
        confidence=confidence,
        steps=np.minimum(last - first + 1, model.window)[by_name],
    )


def predict_robot_rul(model: RulModel, rows: pl.DataFrame, confidence: float | None = None) -> pl.DataFrame:
    """`robot_rul` from RobotTelemetry readings (ROBOT_ROW_SCHEMA columns; true_rul_cycles may be null), as a frame."""
    steps = robot_steps(rows, cycles_per_step=robot_cycles_per_step(model))
    return robot_rul(model, steps, confidence).frame()
