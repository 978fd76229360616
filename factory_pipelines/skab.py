"""The SKAB benchmark for the `energy_iforest` family: an IsolationForest per run, under SKAB's protocol.

SKAB (Katser and Kozitsin, 2020) records a water-circulation testbed once a second. Each labelled
run is scored on its own: a detector is fitted on the run's first 400 rows (normal operation) and
judges every later row against the `anomaly` label. Metrics are pooled over the concatenation of
all scored rows (SKAB's point-wise convention): F1, FAR = FP/(FP+TN), MAR = FN/(FN+TP).

The detector, and the choices behind it (measured on valve1 only, see
benchmarks/results/models_anomaly.md):

- Features per sensor, standardised on the fit part: a trailing rolling mean (level shifts such as
  a throttled flow) and a trailing rolling std (variance changes such as cavitation or imbalance).
  Trailing windows keep the detector causal, as it would run on a live stream.
- Thermal sensors (Temperature, Thermocouple) follow the fluid's heat balance and drift by several
  fit-part standard deviations within minutes of normal operation, in valve1 as in anomaly-free;
  judged by their level they raise false alarms. By default they are left out; `slope` judges them
  by their change over `slope_window` rows instead.
- An IsolationForest treats any point beyond the range it was fitted on like the most extreme
  fitted point, however far out it lies, so a small, harmless drift counts as much as a real fault.
  The fit rows are therefore augmented with copies jittered uniformly by +-`tolerance` (in fit-part
  standard deviations): deviations inside that band look normal, the ones beyond it stand out.
- The threshold comes from the fit part alone: a quantile of the fit rows' scores times a factor;
  an optional trailing majority vote smooths the alarms.

Polars does the tabular work; numpy and scikit-learn appear only at the model boundary.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.ensemble import IsolationForest

MODEL_FAMILY = "energy_iforest"  # energy_model.MODEL_NAME: the family this benchmark speaks for
BENCHMARK_NAME = "skab"
PRIMARY_METRIC = "f1"
HIGHER_IS_BETTER = True

SEPARATOR = ";"
DATETIME = "datetime"
ANOMALY = "anomaly"
CHANGEPOINT = "changepoint"
LABEL_COLUMNS: tuple[str, ...] = (ANOMALY, CHANGEPOINT)
THERMAL_SENSORS: tuple[str, ...] = ("Temperature", "Thermocouple")
THERMAL_MODES: tuple[str, ...] = ("none", "slope", "level")
SKAB_RUN_ROWS = 1150  # about the length of a SKAB run: how unlabelled recordings are cut into runs

SCORED_FRAME_SCHEMA: dict[str, pl.DataType] = {
    "row": pl.Int64(),  # position in the run, counting the fit part
    DATETIME: pl.Datetime("us"),
    "score": pl.Float64(),  # IsolationForest anomaly score (-score_samples): higher is more anomalous
    "threshold": pl.Float64(),
    "predicted": pl.Int8(),  # 1 = alarm, after smoothing
    ANOMALY: pl.Int8(),  # the run's label (null for an unlabelled recording)
}


class SkabFormatError(ValueError):
    """A file that does not follow the SKAB layout; the message names the file."""


@dataclass(frozen=True)
class SkabParams:
    """Every choice of the SKAB detector; the defaults are the ones chosen on valve1 (see module doc)."""

    fit_rows: int = 400  # rows at the start of each run that the detector is fitted on (SKAB: 400)
    window: int = 60  # trailing rolling window, in rows (1 s each), for the sensor features
    rolling_std: bool = True  # add each sensor's rolling std to its rolling mean
    thermal_features: str = "none"  # Temperature/Thermocouple: "none" (left out), "slope" or "level"
    slope_window: int = 60  # rows over which a thermal sensor's change is measured ("slope")
    tolerance: float = 2.0  # fit rows are jittered by +-tolerance (fit-part stds): drift inside it is normal
    relative_scale_floor: float = 0.01  # a sensor's scale is at least this share of its level (~ meter accuracy)
    augment_copies: int = 4  # jittered copies of the fit rows added to the forest's training set
    n_estimators: int = 200  # trees in the IsolationForest
    max_samples: int = 256  # rows drawn to grow each tree
    threshold_quantile: float = 1.0  # quantile of the fit rows' scores that sets the threshold...
    threshold_factor: float = 1.05  # ...times this factor
    smoothing: int = 1  # trailing majority vote over this many rows' alarms (1: no smoothing)
    seed: int = 42  # seeds the jitter and the forest: same seed, same alarms

    def validate(self) -> None:
        """Raise ValueError on a combination that cannot work (before any data is read)."""
        if self.thermal_features not in THERMAL_MODES:
            raise ValueError(f"thermal_features must be one of {THERMAL_MODES}, got {self.thermal_features!r}")
        if self.window < 2 or self.slope_window < 1:
            raise ValueError("window must be at least 2 rows and slope_window at least 1")
        if self.fit_rows - warmup_rows(self) < 20:
            raise ValueError(f"fit_rows={self.fit_rows} leaves fewer than 20 complete feature rows to fit on")
        if not 0.0 < self.threshold_quantile <= 1.0 or self.threshold_factor <= 0.0:
            raise ValueError("threshold_quantile must be in (0, 1] and threshold_factor positive")
        if self.tolerance < 0.0 or self.augment_copies < 0 or self.smoothing < 1:
            raise ValueError("tolerance and augment_copies must be >= 0, smoothing >= 1")
        if self.n_estimators < 1 or self.max_samples < 2:
            raise ValueError("n_estimators must be >= 1 and max_samples >= 2")


def warmup_rows(params: SkabParams) -> int:
    """Rows before the first complete feature row (incomplete windows are not fitted on)."""
    extra = params.slope_window if params.thermal_features == "slope" else 0
    return params.window - 1 + extra


# ---- reading runs -------------------------------------------------------------------------


def _header_columns(path: Path) -> list[str]:
    """The column names of a SKAB csv; raises SkabFormatError when it is not `;`-separated."""
    try:
        with path.open(encoding="utf-8-sig") as handle:
            header = handle.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SkabFormatError(f"{path}: cannot read the header ({exc})") from exc
    if SEPARATOR not in header:
        expected = "datetime;<sensors>;anomaly;changepoint"
        raise SkabFormatError(f"{path}: expected ';'-separated columns ({expected}), header is {header[:120]!r}")
    return [name.strip() for name in header.split(SEPARATOR)]


def read_skab_run(path: Path | str, *, require_labels: bool = True) -> pl.DataFrame:
    """One SKAB csv as a typed frame: `datetime`, Float64 sensors, Int8 `anomaly`/`changepoint` if present.

    A file without an `anomaly` column is an error unless `require_labels` is False (anomaly-free
    recordings). Gaps in a sensor are filled from the previous reading (then the next one).
    """
    path = Path(path)
    columns = _header_columns(path)
    if require_labels and ANOMALY not in columns:
        raise SkabFormatError(f"{path}: no '{ANOMALY}' column (columns: {', '.join(columns)}); is it a labelled run?")
    try:
        raw = pl.read_csv(path, separator=SEPARATOR, infer_schema_length=None, encoding="utf8-lossy")
    except pl.exceptions.PolarsError as exc:
        raise SkabFormatError(f"{path}: not a readable SKAB csv ({exc})") from exc
    raw = raw.rename({name: name.lstrip("\ufeff").strip() for name in raw.columns})
    sensors = [name for name in raw.columns if name != DATETIME and name not in LABEL_COLUMNS]
    if not sensors:
        raise SkabFormatError(f"{path}: no sensor columns besides {DATETIME} and the labels")
    if raw.height == 0:
        raise SkabFormatError(f"{path}: no rows")
    typed: list[pl.Expr] = []
    if DATETIME in raw.columns:
        stamp = pl.col(DATETIME)
        if raw.schema[DATETIME] == pl.String():
            stamp = stamp.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False)
        typed.append(stamp.cast(pl.Datetime("us")).alias(DATETIME))
    else:
        typed.append(pl.lit(None, pl.Datetime("us")).alias(DATETIME))
    try:
        frame = raw.select(
            *typed,
            *(pl.col(name).cast(pl.Float64).forward_fill().backward_fill() for name in sensors),
            *(pl.col(name).cast(pl.Float64).round().cast(pl.Int8) for name in LABEL_COLUMNS if name in raw.columns),
        )
    except pl.exceptions.PolarsError as exc:
        raise SkabFormatError(f"{path}: sensor and label columns must be numeric ({exc})") from exc
    empty = [name for name in sensors if frame[name].null_count() == frame.height]
    if empty:
        raise SkabFormatError(f"{path}: sensor columns without a single value: {', '.join(empty)}")
    if ANOMALY in frame.columns:
        bad = frame.filter(pl.col(ANOMALY).is_null() | ~pl.col(ANOMALY).is_in([0, 1])).height
        if bad:
            raise SkabFormatError(f"{path}: {bad} rows whose '{ANOMALY}' label is neither 0 nor 1")
    return frame


def sensor_columns(frame: pl.DataFrame) -> list[str]:
    return [name for name in frame.columns if name != DATETIME and name not in LABEL_COLUMNS]


def _natural_key(path: Path) -> tuple[tuple[int, int | str], ...]:
    """valve1/2.csv before valve1/10.csv."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in path.with_suffix("").parts)


def _skab_csv_files(directory: Path | str) -> tuple[list[Path], list[Path]]:
    """(labelled, unlabelled) csv files under `directory`, recursively, in natural order."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory holding SKAB runs")
    labelled: list[Path] = []
    unlabelled: list[Path] = []
    for path in sorted(root.rglob("*.csv"), key=lambda p: _natural_key(p.relative_to(root))):
        if path.is_file():
            (labelled if ANOMALY in _header_columns(path) else unlabelled).append(path)
    return labelled, unlabelled


def find_labelled_runs(directory: Path | str) -> list[Path]:
    """Every csv under `directory` (recursively) with an `anomaly` column; a non-SKAB csv is an error."""
    return _skab_csv_files(directory)[0]


def find_unlabelled_recordings(directory: Path | str) -> list[Path]:
    """SKAB csvs under `directory` without labels (anomaly-free): not scored for F1, only for FAR."""
    return _skab_csv_files(directory)[1]


# ---- features and the per-run detector ----------------------------------------------------


def feature_frame(frame: pl.DataFrame, params: SkabParams) -> pl.DataFrame:
    """Per row, features of the trailing window, in fit-part standard deviations.

    Each sensor is standardised on the first `fit_rows` rows: minus its median, over its std, but
    the scale is at least `relative_scale_floor` of its level: a sensor that hardly moves during
    the fit part (a smooth vibration RMS, a steady flow) would otherwise turn a drift the size of
    the meter's accuracy into many standard deviations.
    """
    fit = frame.head(params.fit_rows)
    expressions: list[pl.Expr] = []
    for name in sensor_columns(frame):
        centre = float(fit[name].median())  # type: ignore[arg-type]
        spread = float(fit[name].std() or 0.0)
        scale = max(spread, abs(centre) * params.relative_scale_floor, 1e-9)
        z = (pl.col(name) - centre) / scale
        thermal = name in THERMAL_SENSORS
        if thermal and params.thermal_features == "none":
            continue
        level = z.rolling_mean(params.window, min_samples=1)
        if thermal and params.thermal_features == "slope":
            expressions.append((level - level.shift(params.slope_window)).fill_null(0.0).alias(f"{name}__change"))
            continue
        expressions.append(level.alias(f"{name}__mean"))
        if params.rolling_std:
            # minus 1: about zero in normal operation, like the other features
            spread_now = z.rolling_std(params.window, min_samples=2).fill_null(1.0) - 1.0
            expressions.append(spread_now.alias(f"{name}__std"))
    if not expressions:
        raise ValueError("no features: every sensor is thermal and thermal_features is 'none'")
    return frame.select(expressions)


@dataclass(frozen=True, slots=True)
class RunDetector:
    """The IsolationForest fitted on one run's fit part, with the threshold taken from that part."""

    forest: IsolationForest
    feature_names: tuple[str, ...]
    threshold: float
    fit_scores: np.ndarray  # scores of the (unjittered) fit rows, for diagnostics


def fit_run_detector(features: pl.DataFrame, params: SkabParams) -> RunDetector:
    """Fit on the complete feature rows of the fit part (plus jittered copies) and set the threshold."""
    fit_rows = features.slice(warmup_rows(params), params.fit_rows - warmup_rows(params)).to_numpy()
    rng = np.random.default_rng(params.seed)
    training = np.vstack([fit_rows, *_jittered_copies(fit_rows, params, rng)])
    forest = IsolationForest(
        n_estimators=params.n_estimators,
        max_samples=min(params.max_samples, training.shape[0]),
        random_state=params.seed,
        n_jobs=1,
    ).fit(training)
    fit_scores = -forest.score_samples(fit_rows)
    threshold = threshold_from_fit_scores(fit_scores, params.threshold_quantile, params.threshold_factor)
    return RunDetector(forest, tuple(features.columns), threshold, fit_scores)


def threshold_from_fit_scores(fit_scores: np.ndarray, quantile: float, factor: float) -> float:
    return float(np.quantile(fit_scores, quantile)) * factor


def _jittered_copies(rows: np.ndarray, params: SkabParams, rng: np.random.Generator) -> list[np.ndarray]:
    return [rows + rng.uniform(-params.tolerance, params.tolerance, rows.shape) for _ in range(params.augment_copies)]


def trailing_majority(alarms: np.ndarray, rows: int) -> np.ndarray:
    """Alarm where more than half of the last `rows` raw alarms (fewer at the start) are alarms."""
    if rows <= 1:
        return alarms.astype(np.int8)
    counts = np.cumsum(np.concatenate([[0], alarms.astype(np.int64)]))
    ends = np.arange(1, alarms.size + 1)
    starts = np.maximum(ends - rows, 0)
    return (2 * (counts[ends] - counts[starts]) > ends - starts).astype(np.int8)


def alarms_from_scores(scores: np.ndarray, threshold: float, smoothing: int) -> np.ndarray:
    """1 where the (smoothed) score verdict is an alarm."""
    return trailing_majority(scores > threshold, smoothing)


def _detector_and_scores(frame: pl.DataFrame, params: SkabParams) -> tuple[RunDetector, np.ndarray]:
    """Fit on the run's fit part; the anomaly scores of the rows after it."""
    params.validate()
    if frame.height <= params.fit_rows:
        raise ValueError(f"a run needs more than fit_rows={params.fit_rows} rows to be scored, it has {frame.height}")
    features = feature_frame(frame, params)
    detector = fit_run_detector(features, params)
    return detector, -detector.forest.score_samples(features.slice(params.fit_rows).to_numpy())


def score_run(frame: pl.DataFrame, params: SkabParams) -> pl.DataFrame:
    """SKAB's protocol on one run: fit on the first `fit_rows` rows, one verdict per later row.

    Columns: SCORED_FRAME_SCHEMA (row, datetime, score, threshold, predicted, anomaly). A frame
    without labels (anomaly-free) gets a null `anomaly`.
    """
    detector, scores = _detector_and_scores(frame, params)
    scored = frame.slice(params.fit_rows)
    labels = scored[ANOMALY] if ANOMALY in scored.columns else pl.Series(ANOMALY, [None] * scored.height)
    stamps = scored[DATETIME] if DATETIME in scored.columns else pl.Series(DATETIME, [None] * scored.height)
    return pl.DataFrame(
        {
            "row": np.arange(params.fit_rows, frame.height),
            DATETIME: stamps,
            "score": scores,
            "threshold": np.full(scores.size, detector.threshold),
            "predicted": alarms_from_scores(scores, detector.threshold, params.smoothing),
            ANOMALY: labels,
        },
        schema=SCORED_FRAME_SCHEMA,
    )


# ---- metrics ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Confusion:
    """Point-wise counts; pooled over runs by adding them (SKAB's concatenation)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def rows(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def metrics(self) -> dict[str, float]:
        """f1, far, mar, precision, recall as fractions; a ratio with nothing to count is 0."""

        def ratio(num: int, den: int) -> float:
            return num / den if den else 0.0

        return {
            "f1": ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn),
            "far": ratio(self.fp, self.fp + self.tn),
            "mar": ratio(self.fn, self.fn + self.tp),
            "precision": ratio(self.tp, self.tp + self.fp),
            "recall": ratio(self.tp, self.tp + self.fn),
        }


def confusion(labels: np.ndarray, predicted: np.ndarray) -> Confusion:
    truth, alarm = labels.astype(bool), predicted.astype(bool)
    return Confusion(
        tp=int(np.sum(truth & alarm)),
        fp=int(np.sum(~truth & alarm)),
        fn=int(np.sum(truth & ~alarm)),
        tn=int(np.sum(~truth & ~alarm)),
    )


def _run_figures(counts: Confusion, seconds: float | None = None) -> dict[str, float]:
    figures: dict[str, float] = {**counts.metrics(), "n_rows": counts.rows, "anomaly_rows": counts.tp + counts.fn}
    figures["alarms"] = counts.tp + counts.fp
    if seconds is not None:
        figures["seconds"] = round(seconds, 3)
    return figures


def _run_name(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# ---- the benchmark and its baselines ------------------------------------------------------


def _labelled_runs_or_fail(directory: Path | str) -> list[Path]:
    runs = find_labelled_runs(directory)
    if not runs:
        raise FileNotFoundError(f"no labelled SKAB runs (csv files with an '{ANOMALY}' column) under {directory}")
    return runs


def _read_scoreable(path: Path, fit_rows: int) -> pl.DataFrame:
    frame = read_skab_run(path)
    if frame.height <= fit_rows:
        raise SkabFormatError(f"{path}: {frame.height} rows, a run needs more than fit_rows={fit_rows}")
    return frame


def benchmark_skab(
    directory: Path | str,
    params: SkabParams | None = None,
    *,
    check_unlabelled: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """SKAB's protocol over every labelled run under `directory`, pooled; JSON-ready.

    Keys: f1, far, mar, precision, recall (pooled fractions), n_runs, n_rows (scored rows),
    seconds, runs (per run, keyed by path relative to `directory`), all_anomaly_f1 (the F1 of
    alarming on every row: the trivial bar on SKAB, whose scored rows are about half anomalous),
    params; with `check_unlabelled`, `unlabelled` holds the FAR on recordings without labels.
    """
    params = params or SkabParams()
    params.validate()
    started = time.perf_counter()
    root = Path(directory)
    runs = _labelled_runs_or_fail(root)
    total = Confusion()
    per_run: dict[str, dict[str, float]] = {}
    for index, path in enumerate(runs, start=1):
        run_started = time.perf_counter()
        scored = score_run(_read_scoreable(path, params.fit_rows), params)
        counts = confusion(scored[ANOMALY].to_numpy(), scored["predicted"].to_numpy())
        total += counts
        per_run[_run_name(path, root)] = _run_figures(counts, time.perf_counter() - run_started)
        if progress:
            progress(f"{index}/{len(runs)} {_run_name(path, root)}: f1 {counts.metrics()['f1']:.3f}")
    positives = total.tp + total.fn
    result: dict[str, Any] = {
        "benchmark": BENCHMARK_NAME,
        "model_family": MODEL_FAMILY,
        **total.metrics(),
        "n_runs": len(runs),
        "n_rows": total.rows,
        "all_anomaly_f1": Confusion(tp=positives, fp=total.rows - positives).metrics()["f1"],
    }
    if check_unlabelled:
        result["unlabelled"] = {
            _run_name(path, root): far_on_unlabelled(path, params) for path in find_unlabelled_recordings(root)
        }
    result["seconds"] = round(time.perf_counter() - started, 3)
    result["runs"] = per_run
    result["params"] = asdict(params)
    return result


def _normal_pieces(path: Path, params: SkabParams, run_rows: int = SKAB_RUN_ROWS) -> list[pl.DataFrame]:
    """A recording of normal operation cut into run-sized pieces (a tail too short to score is dropped)."""
    frame = read_skab_run(path, require_labels=False).drop(LABEL_COLUMNS, strict=False)
    pieces = [frame.slice(start, run_rows) for start in range(0, frame.height, run_rows)]
    return [piece for piece in pieces if piece.height > params.fit_rows + params.window]


def far_on_unlabelled(path: Path | str, params: SkabParams, run_rows: int = SKAB_RUN_ROWS) -> dict[str, float]:
    """False alarm rate on a recording of normal operation, cut into run-sized pieces.

    Each piece gets the protocol of a labelled run (fit on its first `fit_rows` rows), so the
    figure is comparable with a run's FAR.
    """
    alarms = scored_rows = 0
    pieces = _normal_pieces(Path(path), params, run_rows)
    for piece in pieces:
        predicted = score_run(piece, params)["predicted"]
        alarms += int(predicted.sum())
        scored_rows += predicted.len()
    return {"far": alarms / scored_rows if scored_rows else 0.0, "n_rows": scored_rows, "pieces": len(pieces)}


def random_score_baseline(
    directory: Path | str, seed: int, *, alarm_rate: float | None = None, fit_rows: int = 400
) -> dict[str, Any]:
    """The same protocol with random alarms: each scored row alarms with probability `alarm_rate`.

    `alarm_rate=None` uses the true share of anomalous scored rows (an oracle rate); 1.0 is the
    all-anomaly detector, the strongest trivial F1 on SKAB.
    """
    started = time.perf_counter()
    root = Path(directory)
    labels = {
        _run_name(path, root): _read_scoreable(path, fit_rows)[ANOMALY].slice(fit_rows).to_numpy()
        for path in _labelled_runs_or_fail(root)
    }
    if alarm_rate is None:
        alarm_rate = float(np.mean(np.concatenate(list(labels.values()))))
    rng = np.random.default_rng(seed)
    total = Confusion()
    per_run: dict[str, dict[str, float]] = {}
    for name, truth in labels.items():
        counts = confusion(truth, rng.random(truth.size) < alarm_rate)
        total += counts
        per_run[name] = _run_figures(counts)
    return {
        "benchmark": f"{BENCHMARK_NAME}-random-baseline",
        **total.metrics(),
        "alarm_rate": alarm_rate,
        "n_runs": len(labels),
        "n_rows": total.rows,
        "seconds": round(time.perf_counter() - started, 3),
        "runs": per_run,
    }


# ---- choosing the parameters: leave-runs-out cross-validation -----------------------------

POST_FIT_FIELDS: tuple[str, ...] = ("threshold_quantile", "threshold_factor", "smoothing")


@dataclass(frozen=True)
class TuningGrid:
    """Values tried for each tuned SkabParams field (field names match SkabParams)."""

    window: tuple[int, ...] = (20, 60)
    thermal_features: tuple[str, ...] = ("none", "slope")
    tolerance: tuple[float, ...] = (1.0, 2.0, 3.0)
    relative_scale_floor: tuple[float, ...] = (0.0, 0.01, 0.02)
    threshold_quantile: tuple[float, ...] = (0.95, 0.99, 1.0)
    threshold_factor: tuple[float, ...] = (1.0, 1.05, 1.1)
    smoothing: tuple[int, ...] = (1, 15)

    def model_candidates(self, base: SkabParams) -> list[SkabParams]:
        """One SkabParams per combination of the fields that change the fitted forest."""
        names = [f.name for f in fields(self) if f.name not in POST_FIT_FIELDS]
        combos = itertools.product(*(getattr(self, name) for name in names))
        return [replace(base, **dict(zip(names, combo, strict=True))) for combo in combos]

    def post_fit_choices(self) -> list[dict[str, Any]]:
        """Threshold and smoothing combinations: applied to scores, no refit needed."""
        combos = itertools.product(*(getattr(self, name) for name in POST_FIT_FIELDS))
        return [dict(zip(POST_FIT_FIELDS, combo, strict=True)) for combo in combos]


def _post_fit_counts(
    fit_scores: np.ndarray, scores: np.ndarray, labels: np.ndarray, post: Sequence[dict[str, Any]]
) -> np.ndarray:
    """(tp, fp, fn, tn) of one run's cached scores under each threshold/smoothing choice."""
    out = np.zeros((len(post), 4), dtype=np.int64)
    for p, choice in enumerate(post):
        threshold = threshold_from_fit_scores(fit_scores, choice["threshold_quantile"], choice["threshold_factor"])
        c = confusion(labels, alarms_from_scores(scores, threshold, choice["smoothing"]))
        out[p] = (c.tp, c.fp, c.fn, c.tn)
    return out


def _tuned_fields(params: SkabParams, grid: TuningGrid) -> dict[str, Any]:
    return {f.name: getattr(params, f.name) for f in fields(grid)}


def cross_validate(
    directory: Path | str,
    grid: TuningGrid | None = None,
    *,
    base: SkabParams | None = None,
    folds: int = 4,
    seed: int = 0,
    normal_recordings: Sequence[Path | str] = (),
    max_normal_far: float | None = None,
    f1_tolerance: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Leave-runs-out CV of the whole tuning procedure over the labelled runs under `directory`.

    Runs are dealt into `folds` groups (seeded; folds = number of runs is leave-one-run-out). For
    each group, the grid point with the best pooled F1 on the other runs is chosen and scored on
    the group's runs; pooling those held-out verdicts gives the honest `cv` figures.
    `best_on_all_runs` is the grid point chosen on every run, with its in-sample figures.

    `normal_recordings` (unlabelled, e.g. anomaly-free) are cut into run-sized pieces and only
    give each grid point's false alarm rate on normal operation (`normal_far`); with
    `max_normal_far`, grid points above it are not eligible; with `f1_tolerance`, grid points
    whose training F1 is within it of the best count as tied, and the one with the fewest false
    alarms on normal operation is chosen (F1 differences of about 0.01 are seed noise).

    Each detector depends only on its own run, so forests are fitted once per run and model
    candidate; thresholds and smoothing are applied to the cached scores.
    """
    grid, base = grid or TuningGrid(), base or SkabParams()
    started = time.perf_counter()
    root = Path(directory)
    runs = _labelled_runs_or_fail(root)
    if not 2 <= folds <= len(runs):
        raise ValueError(f"folds must be between 2 and the number of runs ({len(runs)}), got {folds}")
    frames = [_read_scoreable(path, base.fit_rows) for path in runs]
    pieces = [piece for path in normal_recordings for piece in _normal_pieces(Path(path), base)]
    if max_normal_far is not None and not pieces:
        raise ValueError("max_normal_far needs normal_recordings with at least one run-sized piece")
    models = grid.model_candidates(base)
    post = grid.post_fit_choices()
    for candidate in models:
        for choice in post:
            replace(candidate, **choice).validate()
    # counts[m, p, r] = (tp, fp, fn, tn) of model candidate m with post-fit choice p on run r;
    # normal[m, p] the same summed over the pieces of normal operation (all negatives)
    counts = np.zeros((len(models), len(post), len(runs), 4), dtype=np.int64)
    normal = np.zeros((len(models), len(post), 4), dtype=np.int64)
    for m, candidate in enumerate(models):
        for r, frame in enumerate(frames):
            detector, scores = _detector_and_scores(frame, candidate)
            labels = frame[ANOMALY].slice(base.fit_rows).to_numpy()
            counts[m, :, r] = _post_fit_counts(detector.fit_scores, scores, labels, post)
        for piece in pieces:
            detector, scores = _detector_and_scores(piece, candidate)
            normal[m] += _post_fit_counts(detector.fit_scores, scores, np.zeros(scores.size, np.int8), post)
        if progress:
            progress(f"model candidate {m + 1}/{len(models)} scored on {len(runs)} runs and {len(pieces)} pieces")
    fp, tn = normal[..., 1], normal[..., 3]
    normal_far = np.divide(fp, fp + tn, out=np.zeros(fp.shape), where=(fp + tn) > 0)
    eligible = normal_far <= max_normal_far if max_normal_far is not None else np.ones(normal_far.shape, bool)
    if not eligible.any():
        raise ValueError(f"no grid point keeps the false alarm rate on normal recordings at or below {max_normal_far}")

    def pooled_f1(run_indices: Sequence[int]) -> np.ndarray:
        """F1 of every (model, post) pair pooled over `run_indices`, shape (models, post)."""
        tp, fp, fn, _ = np.moveaxis(counts[:, :, list(run_indices)].sum(axis=2), -1, 0)
        return np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(tp.shape), where=(2 * tp + fp + fn) > 0)

    def chosen(run_indices: Sequence[int]) -> tuple[int, int]:
        """The eligible grid point with the best pooled F1; within `f1_tolerance` of it, the lowest
        false alarm rate on normal recordings wins (then the higher F1, then the first listed)."""
        f1 = np.where(eligible, pooled_f1(run_indices), -1.0).ravel()
        near = f1 >= f1.max() - f1_tolerance
        far = normal_far.ravel() if pieces else np.zeros(f1.size)
        order = np.lexsort((np.arange(f1.size), -f1, far, ~near))
        m, p = np.unravel_index(int(order[0]), normal_far.shape)
        return int(m), int(p)

    def report(m: int, p: int, run_indices: Sequence[int]) -> dict[str, Any]:
        pooled = Confusion(*(int(x) for x in counts[m, p, list(run_indices)].sum(axis=0)))
        return {
            "params": _tuned_fields(replace(models[m], **post[p]), grid),
            **pooled.metrics(),
            "normal_far": float(normal_far[m, p]) if pieces else None,
        }

    def top_candidates(run_indices: Sequence[int], count: int) -> list[tuple[int, int]]:
        """The `count` grid points with the best pooled F1 (eligible or not), for the record."""
        best = np.argsort(-pooled_f1(run_indices).ravel(), kind="stable")[:count]
        return [(int(k) // len(post), int(k) % len(post)) for k in best]

    order = np.random.default_rng(seed).permutation(len(runs))
    held_out_total = Confusion()
    fold_reports: list[dict[str, Any]] = []
    for k in range(folds):
        test = sorted(int(i) for i in order[k::folds])
        train = [i for i in range(len(runs)) if i not in test]
        m, p = chosen(train)
        held_out_total += Confusion(*(int(x) for x in counts[m, p, test].sum(axis=0)))
        fold_reports.append(
            {
                "held_out_runs": [_run_name(runs[i], root) for i in test],
                "chosen": _tuned_fields(replace(models[m], **post[p]), grid),
                "train_f1": float(pooled_f1(train)[m, p]),
                "held_out": report(m, p, test),
            }
        )
    everything = list(range(len(runs)))
    result: dict[str, Any] = {
        "n_runs": len(runs),
        "folds": folds,
        "seed": seed,
        "candidates": len(models) * len(post),
        "eligible_candidates": int(eligible.sum()),
        "normal_pieces": len(pieces),
        "max_normal_far": max_normal_far,
        "f1_tolerance": f1_tolerance,
        "cv": held_out_total.metrics(),
        "fold_choices": fold_reports,
        "best_on_all_runs": report(*chosen(everything), everything),
        "top_on_all_runs": [report(m, p, everything) for m, p in top_candidates(everything, 15)],
        "grid": asdict(grid),
        "base": asdict(base),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return result


def summarise(result: dict[str, Any], keys: Iterable[str] = ("f1", "far", "mar")) -> str:
    """`f1 0.812  far 0.104  mar 0.231`: the headline of a benchmark result, for logs."""
    return "  ".join(f"{key} {result[key]:.3f}" for key in keys if isinstance(result.get(key), int | float))
