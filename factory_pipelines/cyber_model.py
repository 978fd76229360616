"""The `cyber_detector` model: attacks and anomalies in device and network telemetry.

One module, two data sets, two registered models in different feature spaces:
- `cyber_detector` learns the plant's network fields (latency, packet loss, error rate) per
  machine per window. Its training history comes from the simulator's `MachineModel`, driven here
  without MQTT, with labelled episodes: the simulator's own `network` fault and attacks this module
  adds by perturbing the network fields (DDoS, scanning, man-in-the-middle). `window_features`
  turns the typed machine rows of one live window into the same feature rows.
- `cyber_detector_ton_iot` learns the TON_IoT device readings (`ton_iot.py` reads them).

The estimator is a multi-class HistGradientBoostingClassifier over `type` (normal or an attack
kind), so one fit gives both the detector and the attack type: P(attack) = 1 - P(normal), a row
is an attack when P(attack) reaches a threshold chosen for F1 on the latest slice of the training
data, and its attack type is the most probable attack class. The `CyberModel` carries its feature
columns, classes, threshold and data set, so `score` and `evaluate` work on either model.

Splits are by time, never at random: neighbouring readings are near copies of each other, so a
random split scores memory, not detection. See `split_train_validation`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

from factory_pipelines import ton_iot
from factory_pipelines.energy_model import MACHINE_FRAME_SCHEMA, MACHINE_TEXT_FIELDS
from factory_pipelines.estimator_input import by_position, estimator_input, float_matrix
from factory_pipelines.model_registry import pinned_requirements
from factory_pipelines.native_threads import SCORING_THREADS, openmp_threads
from factory_pipelines.simulator import MachineModel, machine_asset_id
from factory_pipelines.telemetry import MACHINE_NUMERIC_FIELDS
from factory_pipelines.training import ModelFamily
from factory_pipelines.windows import window_key

MODEL_NAME = "cyber_detector"  # plant network features; what the prediction asset serves
TON_IOT_MODEL_NAME = "cyber_detector_ton_iot"  # TON_IoT device readings; another feature space
PRIMARY_METRIC = "f1"
HIGHER_IS_BETTER = True

NORMAL = "normal"
ATTACK = "attack"
DATASET_PLANT = "plant"
DATASET_TON_IOT = "ton_iot"
PLANT_ATTACK_TYPES: tuple[str, ...] = ("ddos", "scanning", "mitm", "network_fault")
SIMULATOR_NETWORK_FAULT = "network"  # MachineModel's fault that `network_fault` episodes switch on
HISTORY_COLLECTOR = "simulated"  # collector id in the window keys of the simulated history

ProgressCallback = Callable[[str], None]


# ---- parameters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CyberParams:
    """Hyper-parameters of the classifier and of how its threshold is chosen."""

    max_iter: int = 200  # boosting rounds (trees per class)
    learning_rate: float = 0.1  # shrinkage of each round
    max_leaf_nodes: int = 31  # leaves per tree
    min_samples_leaf: int = 20  # fewest training rows in a leaf
    l2_regularization: float = 0.0  # L2 penalty on leaf values
    class_weight: str = "none"  # "balanced": each type weighs the same in total (binning then takes ~20x longer)
    threshold_strategy: str = "f1"  # "f1": best F1 on the latest training slice; "fixed": fixed_threshold
    fixed_threshold: float = 0.5  # P(attack) cut when threshold_strategy is "fixed"
    threshold_slice: float = 0.2  # latest share of the training rows that chooses the threshold
    random_state: int = 42  # seeds the classifier's binning sample
    n_threads: int = 1  # OpenMP threads while fitting; more than the idle cores makes boosting far slower


@dataclass(frozen=True)
class PlantHistoryParams:
    """The simulated plant history that `cyber_detector` trains on."""

    n_machines: int = 10  # simulated machines
    n_windows: int = 240  # windows per machine (4 hours of 60 s windows)
    readings_per_window: int = 60  # readings per machine per window: match the live windows (60 s at 1 Hz)
    interval_s: float = 1.0  # seconds between readings (the simulator publishes at 1 Hz)
    attack_share: float = 0.15  # share of machine-windows inside an attack or fault episode
    min_episode_windows: int = 2  # shortest episode
    max_episode_windows: int = 6  # longest episode
    seed: int = 42  # seeds machines, episodes and perturbations
    validation_fraction: float = 0.3  # latest share of the windows held out for validation


@dataclass(frozen=True)
class TonIotParams:
    """Which TON_IoT data the `cyber_detector_ton_iot` model trains on."""

    devices: str = ""  # comma-separated device files (e.g. "Fridge,Modbus"); empty: all seven
    time_features: str = ton_iot.TIME_FEATURES_NONE  # "none"; "rate" and "clock" leak the capture schedule
    validation_fraction: float = 0.3  # latest share of each (device, type) held out for validation

    def device_list(self) -> tuple[str, ...]:
        chosen = tuple(name.strip() for name in self.devices.split(",") if name.strip())
        return chosen or ton_iot.DEVICES


# ---- labelled feature rows and the time split ----------------------------------------------


@dataclass(frozen=True, slots=True)
class LabelledFeatures:
    """Feature rows with their `type` (normal or an attack kind), and how they are split by time."""

    frame: pl.DataFrame
    feature_columns: tuple[str, ...]
    order_column: str  # time order within a split group: window_key (plant) or ts (TON_IoT)
    split_within: tuple[str, ...]  # groups cut separately: () for the plant, (device, type) for TON_IoT
    dataset: str  # DATASET_PLANT or DATASET_TON_IOT
    source_uri: str  # where the rows came from (files, or the generator and its parameters)

    def with_frame(self, frame: pl.DataFrame) -> LabelledFeatures:
        return replace(self, frame=frame)

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(sorted(self.frame["type"].unique().to_list()))


def split_train_validation(
    data: LabelledFeatures, validation_fraction: float
) -> tuple[LabelledFeatures, LabelledFeatures]:
    """The earlier rows for training, the later ones for validation; deterministic, no seed needed.

    Within each `split_within` group the latest `validation_fraction` of rows (by the order
    column, ties by position) go to validation. The plant history is cut once across all windows
    (its episodes are spread over time, so every type falls on both sides). TON_IoT is cut per
    (device, type): all its normal rows predate all its attacks and each attack type has its own
    period, so a single global cut would leave no normal rows, and whole attack types, on one side.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    groups = list(data.split_within)
    ordered = data.frame.with_row_index("_position").sort([*groups, data.order_column, "_position"])
    rank = pl.int_range(pl.len()).over(groups) if groups else pl.int_range(pl.len())
    size = pl.len().over(groups) if groups else pl.len()
    cut = (size.cast(pl.Float64) * (1.0 - validation_fraction)).ceil()
    marked = ordered.with_columns((rank.cast(pl.Float64) >= cut).alias("_late"))
    if not groups:
        # The plant cut must not split a window between the two sides.
        first_late = marked.filter(pl.col("_late"))[data.order_column].min()
        marked = marked.with_columns((pl.col(data.order_column) >= first_late).alias("_late"))
    restore = marked.sort("_position")
    train = restore.filter(~pl.col("_late")).drop("_position", "_late")
    validation = restore.filter(pl.col("_late")).drop("_position", "_late")
    return data.with_frame(train), data.with_frame(validation)


def types_missing_from(train: LabelledFeatures, validation: LabelledFeatures) -> dict[str, list[str]]:
    """Types present on one side of a split only (empty lists: every type is on both sides)."""
    train_types, validation_types = set(train.types), set(validation.types)
    return {
        "train": sorted(validation_types - train_types),
        "validation": sorted(train_types - validation_types),
    }


# ---- plant network features ---------------------------------------------------------------

_NETWORK_SIGNALS: dict[str, str] = {
    "latency": "network_latency_ms",
    "loss": "packet_loss_pct",
    "error": "error_rate_pct",
}
_SIGNAL_STATS: tuple[str, ...] = ("mean", "std", "max", "abs_change", "trend", "vs_fleet")
PLANT_FEATURE_COLUMNS: tuple[str, ...] = tuple(
    f"{short}_{stat}" for short in _NETWORK_SIGNALS for stat in _SIGNAL_STATS
)
PLANT_FEATURE_SCHEMA: dict[str, pl.DataType] = {
    "window_key": pl.String(),
    "asset_id": pl.String(),
    "n_rows": pl.Int64(),
    **{name: pl.Float64() for name in PLANT_FEATURE_COLUMNS},
}


def window_features(machine_rows: pl.DataFrame) -> pl.DataFrame:
    """Network features per machine per window (PLANT_FEATURE_SCHEMA) from typed machine rows.

    Rows as in MACHINE_FRAME_SCHEMA; one or many windows. For latency, packet loss and error
    rate: mean, std, max; mean absolute change between consecutive readings (jitter, bursts);
    trend (last minus first reading); and the mean's excess over the fleet's median mean in the
    same window, so a plant-wide slowdown does not make every machine look attacked. A machine that
    reported none of the three fields in a window says nothing about the network and gets no row.
    """
    signals = list(_NETWORK_SIGNALS.values())
    reported = machine_rows.filter(pl.any_horizontal(pl.col(name).is_not_null() for name in signals))
    if reported.is_empty():
        return pl.DataFrame(schema=PLANT_FEATURE_SCHEMA)
    aggregates: list[pl.Expr] = [pl.len().cast(pl.Int64).alias("n_rows")]
    for short, column in _NETWORK_SIGNALS.items():
        values = pl.col(column).cast(pl.Float64)
        present = values.drop_nulls()
        aggregates += [
            values.mean().alias(f"{short}_mean"),
            values.std().fill_null(0.0).alias(f"{short}_std"),
            values.max().alias(f"{short}_max"),
            present.diff().abs().mean().fill_null(0.0).alias(f"{short}_abs_change"),
            (present.last() - present.first()).alias(f"{short}_trend"),
        ]
    per_machine = reported.sort("window_key", "asset_id", "ts").group_by("window_key", "asset_id").agg(aggregates)
    per_machine = per_machine.with_columns(
        (pl.col(f"{short}_mean") - pl.col(f"{short}_mean").median().over("window_key")).alias(f"{short}_vs_fleet")
        for short in _NETWORK_SIGNALS
    )
    return per_machine.sort("window_key", "asset_id").select(
        pl.col(name).cast(dtype) for name, dtype in PLANT_FEATURE_SCHEMA.items()
    )


# ---- the simulated plant history ----------------------------------------------------------


def schedule_episodes(
    n_machines: int,
    n_windows: int,
    attack_share: float,
    rng: np.random.Generator,
    *,
    types: Sequence[str] = PLANT_ATTACK_TYPES,
    min_windows: int = 2,
    max_windows: int = 6,
) -> dict[tuple[int, int], str]:
    """{(machine index, window index): type} of the labelled episodes.

    Episodes are spread evenly over time (one per time slot, at a random start within it) and
    take the types in turn, so every type recurs across the whole history and a time split finds
    each on both sides. Each goes to a random machine that is free for its whole length.
    """
    if not 0.0 <= attack_share < 1.0:
        raise ValueError(f"attack_share must be in [0, 1), got {attack_share}")
    if not 1 <= min_windows <= max_windows:
        raise ValueError(f"need 1 <= min_episode_windows <= max_episode_windows, got {min_windows}, {max_windows}")
    cells = round(attack_share * n_machines * n_windows)
    if cells == 0 or not types:
        return {}
    mean_length = (min_windows + max_windows) / 2
    count = max(len(types), round(cells / mean_length))
    slot = n_windows / count
    episodes: dict[tuple[int, int], str] = {}
    for index in range(count):
        kind = types[index % len(types)]
        length = int(rng.integers(min_windows, max_windows + 1))
        start = int(index * slot + rng.uniform(0.0, slot))
        stop = min(start + length, n_windows)
        free = [m for m in range(n_machines) if all((m, w) not in episodes for w in range(start, stop))]
        if not free or start >= stop:
            continue
        machine = int(rng.choice(free))
        for window in range(start, stop):
            episodes[(machine, window)] = kind
    return episodes


@dataclass
class _Episode:
    """How hard one episode hits (drawn once per machine-episode)."""

    kind: str
    severity: float
    offset_ms: float  # mitm: the relay's extra delay
    error_per_loss: float  # ddos: how much of the loss the device reports as errors


def _perturb(reading: dict[str, Any], episode: _Episode | None, rng: np.random.Generator) -> None:
    """Change a reading's network fields the way the episode would (in place); benign spikes too.

    - ddos: the link saturates: latency several times higher and bursty, packets dropped; the
      error rate follows the loss by an amount that varies between devices (0-0.8 % per % lost;
      the simulator's own error model says 0.6), so the detector cannot lean on errors alone.
    - scanning: probes answered with errors: error-rate bursts on some readings, latency barely up.
    - mitm: a relay in the path: a steady extra delay, a little more errors, no loss.
    - network_fault: nothing here; the simulator's `network` fault is switched on for the episode.
    - normal: now and then one reading's latency jumps (a busy switch), so a single spike alone
      is no proof of an attack.
    """
    latency, loss, error = reading["network_latency_ms"], reading["packet_loss_pct"], reading["error_rate_pct"]
    if episode is None or episode.kind in (NORMAL, "network_fault"):
        if rng.random() < 0.02:
            latency *= rng.uniform(2.0, 4.0)
    elif episode.kind == "ddos":
        extra_loss = episode.severity * rng.uniform(2.0, 12.0)
        latency *= 1.0 + episode.severity * rng.uniform(2.0, 6.0) * float(np.exp(rng.normal(0.0, 0.4)))
        loss += extra_loss
        error += episode.error_per_loss * extra_loss + abs(rng.normal(0.0, 0.5)) * episode.severity
    elif episode.kind == "scanning":
        if rng.random() < 0.2 + 0.3 * episode.severity:
            error += episode.severity * rng.uniform(3.0, 15.0)
        latency += episode.severity * rng.uniform(0.0, 3.0)
    elif episode.kind == "mitm":
        latency += episode.offset_ms + rng.normal(0.0, 1.0)
        error += episode.severity * rng.uniform(0.2, 1.0)
    else:
        raise ValueError(f"unknown episode kind {episode.kind!r}")
    reading["network_latency_ms"] = round(max(latency, 0.1), 2)
    reading["packet_loss_pct"] = round(min(max(loss, 0.0), 100.0), 3)
    reading["error_rate_pct"] = round(min(max(error, 0.0), 100.0), 3)


@dataclass(frozen=True, slots=True)
class SimulatedNetwork:
    """Machine rows (MACHINE_FRAME_SCHEMA) of a simulated history and the type of each machine-window."""

    machines: pl.DataFrame
    labels: pl.DataFrame  # window_key, asset_id, type


HISTORY_START = datetime(2026, 1, 5, tzinfo=UTC)


def simulate_plant_network(params: PlantHistoryParams, start: datetime = HISTORY_START) -> SimulatedNetwork:
    """Drive `MachineModel`s directly (no MQTT) through windows with labelled attack and fault episodes.

    Machines are the ones `Fleet` builds for the same seed. Every machine-window outside an
    episode is `normal`.
    """
    if params.n_machines < 1 or params.n_windows < 1 or params.readings_per_window < 1 or params.interval_s <= 0:
        raise ValueError("need n_machines, n_windows, readings_per_window >= 1 and interval_s > 0")
    window_s = params.readings_per_window * params.interval_s
    if window_s < 1.0:
        raise ValueError(f"windows must last at least 1 s (window keys count whole seconds), got {window_s} s")
    episode_rng = np.random.default_rng([params.seed, 101])
    noise_rng = np.random.default_rng([params.seed, 102])
    machines = [
        MachineModel(machine_asset_id(n), n, np.random.default_rng([params.seed, 0, n]), None)
        for n in range(1, params.n_machines + 1)
    ]
    schedule = schedule_episodes(
        params.n_machines,
        params.n_windows,
        params.attack_share,
        episode_rng,
        min_windows=params.min_episode_windows,
        max_windows=params.max_episode_windows,
    )
    columns: dict[str, list[Any]] = {name: [] for name in MACHINE_FRAME_SCHEMA}
    labels: dict[str, list[str]] = {"window_key": [], "asset_id": [], "type": []}
    active: dict[int, _Episode] = {}
    for w in range(params.n_windows):
        window_start = start + timedelta(seconds=w * window_s)
        key = window_key(window_start, HISTORY_COLLECTOR)
        for m, machine in enumerate(machines):
            kind = schedule.get((m, w), NORMAL)
            if kind == NORMAL:
                active.pop(m, None)
            elif m not in active or active[m].kind != kind or (m, w - 1) not in schedule:
                severity = float(episode_rng.uniform(0.15, 1.0))  # the weakest are hard to tell from normal
                offset_ms = severity * float(episode_rng.uniform(6.0, 12.0))
                active[m] = _Episode(kind, severity, offset_ms, float(episode_rng.uniform(0.0, 0.8)))
            episode = active.get(m)
            machine.fault = SIMULATOR_NETWORK_FAULT if kind == "network_fault" else None
            labels["window_key"].append(key)
            labels["asset_id"].append(machine.asset_id)
            labels["type"].append(kind)
            for r in range(params.readings_per_window):
                reading = machine.step(params.interval_s)
                _perturb(reading, episode, noise_rng)
                columns["window_key"].append(key)
                columns["asset_id"].append(machine.asset_id)
                columns["ts"].append(window_start + timedelta(seconds=r * params.interval_s))
                columns["seq"].append(w * params.readings_per_window + r)
                for name in (*MACHINE_TEXT_FIELDS, *MACHINE_NUMERIC_FIELDS):
                    columns[name].append(reading.get(name))
    return SimulatedNetwork(
        machines=pl.DataFrame(columns, schema=MACHINE_FRAME_SCHEMA),
        labels=pl.DataFrame(labels, schema={"window_key": pl.String(), "asset_id": pl.String(), "type": pl.String()}),
    )


def plant_network_history(
    n_machines: int = 10,
    n_windows: int = 240,
    seed: int = 42,
    attack_share: float = 0.15,
    *,
    readings_per_window: int = 60,
    interval_s: float = 1.0,
) -> pl.DataFrame:
    """Labelled plant feature rows: `window_features` of a simulated history plus each row's `type`.

    Window statistics depend on how many readings a window holds (a max over 60 readings is
    higher than over 10), so `readings_per_window` should be the live window length times the rate.
    """
    params = PlantHistoryParams(
        n_machines=n_machines,
        n_windows=n_windows,
        readings_per_window=readings_per_window,
        interval_s=interval_s,
        attack_share=attack_share,
        seed=seed,
    )
    return labelled_plant_features(simulate_plant_network(params))


def labelled_plant_features(simulated: SimulatedNetwork) -> pl.DataFrame:
    return window_features(simulated.machines).join(simulated.labels, on=["window_key", "asset_id"], how="left")


def plant_dataset(params: PlantHistoryParams) -> LabelledFeatures:
    """The simulated plant history as training data for `cyber_detector`."""
    frame = labelled_plant_features(simulate_plant_network(params))
    described = ",".join(f"{name}={value}" for name, value in asdict(params).items())
    return LabelledFeatures(
        frame=frame,
        feature_columns=PLANT_FEATURE_COLUMNS,
        order_column="window_key",
        split_within=(),
        dataset=DATASET_PLANT,
        source_uri=f"simulator:cyber_model.simulate_plant_network?{described}",
    )


# ---- TON_IoT as training data -------------------------------------------------------------


def ton_iot_dataset(
    data_dir: Path, params: TonIotParams = TonIotParams()
) -> tuple[LabelledFeatures, ton_iot.TonIotData]:
    """De-duplicated TON_IoT rows as training data for `cyber_detector_ton_iot`, and the read's counts."""
    data = ton_iot.read_ton_iot(Path(data_dir), params.device_list())
    labelled = LabelledFeatures(
        frame=data.frame,
        feature_columns=ton_iot.feature_columns(params.time_features, params.device_list()),
        order_column="ts",
        split_within=("device", "type"),
        dataset=DATASET_TON_IOT,
        source_uri=",".join(str(path) for path in data.paths),
    )
    return labelled, data


# ---- the model ----------------------------------------------------------------------------

ID_COLUMNS: tuple[str, ...] = ("window_key", "asset_id", "device", "ts")


def feature_matrix(frame: pl.DataFrame, columns: Sequence[str]) -> Any:
    """The estimator's input at the scikit-learn boundary: pandas, float columns in model order.

    A column the frame lacks (another device's readings) is all-missing, which the estimator
    handles natively.
    """
    return float_matrix(frame, columns, absent_as_missing=True)


@dataclass(frozen=True)
class CyberModel:
    """A fitted detector: the estimator plus what is needed to feed it and read its answers."""

    estimator: HistGradientBoostingClassifier
    feature_columns: tuple[str, ...]
    classes: tuple[str, ...]  # the estimator's classes_, in its order; includes NORMAL
    threshold: float  # P(attack) at or above which a row is an attack
    dataset: str
    example_rows: pl.DataFrame | None = field(default=None, compare=False)  # one training row per type

    def attack_probability(self, frame: pl.DataFrame) -> np.ndarray:
        proba = self.class_probabilities(frame)
        return 1.0 - proba[:, self.classes.index(NORMAL)]

    def class_probabilities(self, frame: pl.DataFrame) -> np.ndarray:
        if frame.is_empty():
            return np.zeros((0, len(self.classes)))
        with openmp_threads(SCORING_THREADS):
            matrix = estimator_input(self.estimator, frame, self.feature_columns, absent_as_missing=True)
            return np.asarray(self.estimator.predict_proba(matrix))

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Per row: its id columns (those present of window_key, asset_id, device, ts), `probability`
        of an attack, `label` ("attack"/"normal") and `attack_type` (the most probable attack kind
        for an attack, "normal" otherwise)."""
        proba = self.class_probabilities(frame)
        normal_index = self.classes.index(NORMAL)
        attack_probability = 1.0 - proba[:, normal_index]
        is_attack = (attack_probability >= self.threshold).tolist()
        masked = proba.copy()
        masked[:, normal_index] = -1.0
        attack_types = [
            self.classes[index] if attack else NORMAL
            for attack, index in zip(is_attack, masked.argmax(axis=1).tolist(), strict=True)
        ]
        # Series, never a select: a polars query after the estimator's call waits for polars' thread pool to wake.
        return pl.DataFrame(
            [
                *(frame.get_column(name) for name in ID_COLUMNS if name in frame.columns),
                pl.Series("probability", attack_probability, dtype=pl.Float64),
                pl.Series("label", [ATTACK if attack else NORMAL for attack in is_attack], dtype=pl.String),
                pl.Series("attack_type", attack_types, dtype=pl.String),
            ]
        )


def _classifier(params: CyberParams) -> HistGradientBoostingClassifier:
    if params.class_weight not in ("balanced", "none"):
        raise ValueError(f"class_weight must be 'balanced' or 'none', got {params.class_weight!r}")
    return HistGradientBoostingClassifier(
        max_iter=params.max_iter,
        learning_rate=params.learning_rate,
        max_leaf_nodes=params.max_leaf_nodes,
        min_samples_leaf=params.min_samples_leaf,
        l2_regularization=params.l2_regularization,
        class_weight="balanced" if params.class_weight == "balanced" else None,
        early_stopping=False,
        random_state=params.random_state,
    )


def _check_trainable(data: LabelledFeatures) -> None:
    if data.frame.is_empty():
        raise ValueError(f"no {data.dataset} rows to train on")
    if NORMAL not in data.types or len(data.types) < 2:
        raise ValueError(f"training needs normal rows and at least one attack type, got types {data.types}")
    empty = [name for name in data.feature_columns if name not in data.frame.columns or data.frame[name].count() == 0]
    if empty:
        # scikit-learn's binning fails on a column without a single value
        raise ValueError(f"feature columns without any value in the training rows: {empty}")


def _boost(data: LabelledFeatures, params: CyberParams, progress: ProgressCallback, stage: str) -> Any:
    _check_trainable(data)
    features = feature_matrix(data.frame, data.feature_columns)
    target = data.frame["type"].to_numpy()
    progress(f"{stage}: {params.max_iter} boosting rounds on {data.frame.height} rows, {len(data.types)} types")
    started = time.perf_counter()
    with openmp_threads(params.n_threads):
        estimator = _classifier(params).fit(features, target)
    progress(f"{stage}: fitted in {time.perf_counter() - started:.1f} s")
    return estimator


def best_f1_threshold(is_attack: np.ndarray, attack_probability: np.ndarray, fallback: float = 0.5) -> float:
    """The P(attack) cut with the best F1 on these rows (fallback when they hold only one class).

    The cut sits halfway between the lowest probability the best F1 flags and the next lower
    one, not on the flagged probability itself: when the slice separates perfectly, the latter
    would be about 0.9999 and any new attack a shade less sure would be missed.
    """
    if is_attack.all() or not is_attack.any():
        return fallback
    precision, recall, thresholds = precision_recall_curve(is_attack, attack_probability)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    lowest_flagged = float(thresholds[int(np.argmax(f1))])
    below = attack_probability[attack_probability < lowest_flagged]
    next_lower = float(below.max()) if below.size else 0.0
    return (lowest_flagged + next_lower) / 2


def fit(
    train: LabelledFeatures, params: CyberParams = CyberParams(), progress: ProgressCallback | None = None
) -> CyberModel:
    """Fit the classifier on `train`; with threshold_strategy "f1", first choose the threshold.

    The threshold comes from a model fitted on all but the latest `threshold_slice` of the
    training rows (cut by time as `split_train_validation` does) and scored on that slice; the
    model kept is then fitted on all of `train`.
    """
    report = progress or (lambda _message: None)
    if params.threshold_strategy == "fixed":
        threshold = params.fixed_threshold
    elif params.threshold_strategy == "f1":
        inner_train, inner_slice = split_train_validation(train, params.threshold_slice)
        inner = _boost(inner_train, params, report, "threshold model")
        inner_model = CyberModel(inner, train.feature_columns, tuple(inner.classes_), 0.5, train.dataset)
        is_attack = inner_slice.frame["type"].to_numpy() != NORMAL
        threshold = best_f1_threshold(is_attack, inner_model.attack_probability(inner_slice.frame))
        report(f"threshold {threshold:.4f} chosen on the latest {inner_slice.frame.height} training rows")
    else:
        raise ValueError(f"threshold_strategy must be 'f1' or 'fixed', got {params.threshold_strategy!r}")
    estimator = _boost(train, params, report, "final model")
    example = train.frame.group_by("type", maintain_order=True).head(1).select(train.feature_columns)
    return CyberModel(
        estimator=estimator,
        feature_columns=tuple(train.feature_columns),
        classes=tuple(str(name) for name in estimator.classes_),
        threshold=float(threshold),
        dataset=train.dataset,
        example_rows=example,
    )


# ---- evaluation ---------------------------------------------------------------------------


def _binary_scores(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    true_positive = float(np.sum(truth & predicted))
    precision = true_positive / max(float(predicted.sum()), 1.0)
    recall = true_positive / max(float(truth.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def evaluate(model: CyberModel, validation: LabelledFeatures) -> dict[str, float]:
    """Detector and attack-type figures on `validation`, as flat MLflow metric names.

    Overall (attack vs normal): precision, recall, f1 (PRIMARY_METRIC), roc_auc,
    average_precision, false_positive_rate; per type T present in the rows: detect_recall_T (share
    of T's rows the detector flags, whatever type it names), and the attack-type classifier's
    precision_T, recall_T, f1_T, support_T; macro_f1 over types. Baselines: baseline_f1 (always
    say attack; always saying normal scores 0) and baseline_macro_f1 (always name the most
    common type).
    """
    frame = validation.frame
    truth_type = frame["type"].to_numpy().astype(str)
    scored = model.score(frame)
    predicted_type = scored["attack_type"].to_numpy().astype(str)
    truth = truth_type != NORMAL
    predicted = scored["label"].to_numpy() == ATTACK
    probability = scored["probability"].to_numpy()
    precision, recall, f1 = _binary_scores(truth, predicted)
    metrics: dict[str, float] = {
        "n_rows": float(frame.height),
        "n_attacks": float(truth.sum()),
        "threshold": model.threshold,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_positive_rate": float(np.sum(predicted & ~truth) / max(np.sum(~truth), 1)),
        "accuracy_type": float(np.mean(truth_type == predicted_type)) if frame.height else 0.0,
    }
    if truth.any() and not truth.all():
        metrics["roc_auc"] = float(roc_auc_score(truth, probability))
        metrics["average_precision"] = float(average_precision_score(truth, probability))
    prevalence = float(truth.mean()) if frame.height else 0.0
    metrics["baseline_f1"] = 2 * prevalence / (1 + prevalence) if prevalence > 0 else 0.0
    present = sorted(set(truth_type.tolist()))
    type_precision, type_recall, type_f1, support = precision_recall_fscore_support(
        truth_type, predicted_type, labels=present, zero_division=0
    )
    for index, kind in enumerate(present):
        metrics[f"precision_{kind}"] = float(type_precision[index])
        metrics[f"recall_{kind}"] = float(type_recall[index])
        metrics[f"f1_{kind}"] = float(type_f1[index])
        metrics[f"support_{kind}"] = float(support[index])
        if kind != NORMAL:
            metrics[f"detect_recall_{kind}"] = float(predicted[truth_type == kind].mean())
    metrics["macro_f1"] = float(np.mean(type_f1)) if present else 0.0
    if present:
        majority = max(present, key=lambda kind: int(np.sum(truth_type == kind)))
        _, _, majority_f1, _ = precision_recall_fscore_support(
            truth_type, np.full(truth_type.shape, majority), labels=present, zero_division=0
        )
        metrics["baseline_macro_f1"] = float(np.mean(majority_f1))
    return metrics


# ---- MLflow -------------------------------------------------------------------------------

SKOPS_TRUSTED_TYPES: tuple[str, ...] = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)
"""What skops must be told to trust to load a HistGradientBoostingClassifier back (found with
skops.io.get_untrusted_types on a saved one)."""
MODEL_METADATA_KEY = "cyber_model"


def _requirements() -> list[str]:
    names = ["scikit-learn", "numpy", "scipy", "pandas"]
    try:
        metadata.version("skops")
        names.append("skops")
    except metadata.PackageNotFoundError:
        pass
    return pinned_requirements(*names)


def log_model(model: CyberModel, *, registered_name: str) -> str:
    """Log the estimator into the active MLflow run and register it; the new version.

    The feature columns, classes, threshold and data set travel in the MLmodel metadata, so
    `load_model` rebuilds the same CyberModel. The input example is the model's `example_rows`
    (one training row per type) or, for a model without them, one all-missing row, which the
    estimator accepts.
    """
    import mlflow.sklearn  # the flavor imports scikit-learn: only where a model is handled
    from mlflow.models import infer_signature

    example = model.example_rows
    sample = example if example is not None and example.height else pl.DataFrame({"_": [None]})
    inputs = feature_matrix(sample, model.feature_columns)
    signature = infer_signature(inputs, model.estimator.predict(inputs))
    info = mlflow.sklearn.log_model(
        model.estimator,
        name="model",
        signature=signature,
        input_example=inputs,
        pip_requirements=_requirements(),
        skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
        registered_model_name=registered_name,
        metadata={
            MODEL_METADATA_KEY: {
                "feature_columns": list(model.feature_columns),
                "classes": list(model.classes),
                "threshold": model.threshold,
                "dataset": model.dataset,
            }
        },
    )
    if info.registered_model_version is None:
        raise RuntimeError(f"MLflow did not register a version of {registered_name}")
    return str(info.registered_model_version)


def load_model(model_uri: str) -> CyberModel:
    """The CyberModel that `log_model` wrote, from any model URI (models:/NAME/3, models:/NAME@champion)."""
    import mlflow.sklearn
    from mlflow.models import get_model_info

    recorded = (get_model_info(model_uri).metadata or {}).get(MODEL_METADATA_KEY)
    if not recorded:
        raise ValueError(f"{model_uri} was not logged by cyber_model.log_model (no {MODEL_METADATA_KEY} metadata)")
    estimator = mlflow.sklearn.load_model(model_uri)
    classes = tuple(str(name) for name in estimator.classes_)
    if classes != tuple(recorded["classes"]):
        raise ValueError(f"{model_uri}: estimator classes {classes} differ from the recorded {recorded['classes']}")
    feature_columns = tuple(recorded["feature_columns"])
    return CyberModel(
        estimator=by_position(estimator, feature_columns),
        feature_columns=feature_columns,
        classes=classes,
        threshold=float(recorded["threshold"]),
        dataset=str(recorded["dataset"]),
    )


# ---- the TON_IoT benchmark ----------------------------------------------------------------


def ton_iot_benchmark(
    data_dir: Path,
    params: CyberParams = CyberParams(),
    ton_iot_params: TonIotParams = TonIotParams(),
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Train on the earlier and test on the later part of each (device, type) of TON_IoT; the figures.

    Returns the overall and per-type metrics of `evaluate` on the later part, per device too,
    the split's sizes, the duplicates removed, which types a split left on one side only (none,
    by construction), how a single global time cut would have split the types instead, and the
    training time.
    """
    labelled, data = ton_iot_dataset(data_dir, ton_iot_params)
    train, test = split_train_validation(labelled, ton_iot_params.validation_fraction)
    started = time.perf_counter()
    model = fit(train, params, progress)
    train_seconds = time.perf_counter() - started
    metrics = evaluate(model, test)
    per_device: dict[str, dict[str, float]] = {}
    for device in sorted(test.frame["device"].unique().to_list()):
        rows = test.with_frame(test.frame.filter(pl.col("device") == device))
        figures = evaluate(model, rows)
        per_device[device] = {name: figures[name] for name in ("n_rows", "precision", "recall", "f1", "baseline_f1")}
    global_cut = labelled.frame["ts"].sort()[int(labelled.frame.height * (1 - ton_iot_params.validation_fraction))]
    global_types = {
        "cut_at": str(global_cut),
        "earlier": sorted(labelled.frame.filter(pl.col("ts") < global_cut)["type"].unique().to_list()),
        "later": sorted(labelled.frame.filter(pl.col("ts") >= global_cut)["type"].unique().to_list()),
    }
    types = sorted(set(labelled.types) - {NORMAL})
    return {
        "overall": {name: metrics[name] for name in _OVERALL_KEYS if name in metrics},
        "per_type": {
            kind: {stat: metrics[f"{stat}_{kind}"] for stat in _TYPE_STATS if f"{stat}_{kind}" in metrics}
            for kind in [NORMAL, *types]
        },
        "per_device": per_device,
        "n_train": train.frame.height,
        "n_test": test.frame.height,
        "rows_read": data.rows_read,
        "duplicates_removed": data.duplicates_removed,
        "exact_duplicates_removed": data.exact_duplicates_removed,
        "normalised_duplicates_removed": data.normalised_duplicates_removed,
        "types_missing": types_missing_from(train, test),
        "global_time_cut": global_types,
        "threshold": model.threshold,
        "train_seconds": train_seconds,
        "devices": list(ton_iot_params.device_list()),
        "time_features": ton_iot_params.time_features,
        "params": asdict(params),
    }


_OVERALL_KEYS: tuple[str, ...] = (
    "n_rows",
    "n_attacks",
    "precision",
    "recall",
    "f1",
    "false_positive_rate",
    "roc_auc",
    "average_precision",
    "accuracy_type",
    "macro_f1",
    "baseline_f1",
    "baseline_macro_f1",
)
_TYPE_STATS: tuple[str, ...] = ("support", "detect_recall", "precision", "recall", "f1")


# ---- what the Dagster assets and `factory evaluate` need ----------------------------------


def stored_attributes(data: LabelledFeatures) -> dict[str, str]:
    """How to read a stored split of `data` back into LabelledFeatures (the dataset manifest keeps it)."""
    return {
        "feature_columns": ",".join(data.feature_columns),
        "order_column": data.order_column,
        "split_within": ",".join(data.split_within),
        "dataset": data.dataset,
        "source_uri": data.source_uri,
    }


def from_stored(frame: pl.DataFrame, attributes: Mapping[str, str]) -> LabelledFeatures:
    def names(key: str) -> tuple[str, ...]:
        return tuple(name for name in attributes.get(key, "").split(",") if name)

    return LabelledFeatures(
        frame=frame,
        feature_columns=names("feature_columns"),
        order_column=attributes["order_column"],
        split_within=names("split_within"),
        dataset=attributes["dataset"],
        source_uri=attributes.get("source_uri", ""),
    )


def registered_name_for(dataset: str) -> str:
    """The plant model is what the prediction asset serves; TON_IoT's lives in another feature space."""
    return MODEL_NAME if dataset == DATASET_PLANT else TON_IOT_MODEL_NAME


FAMILY = ModelFamily(
    name=MODEL_NAME,
    primary_metric=PRIMARY_METRIC,
    higher_is_better=HIGHER_IS_BETTER,
    log_model=log_model,
    load_model=load_model,
    evaluate=evaluate,
    from_stored=from_stored,
)
