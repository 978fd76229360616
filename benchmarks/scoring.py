"""Prediction scoring: the platform's path from a window's rows to its predictions frame vs the bare model.

For each model family that scores windows (energy_iforest, cyber_detector, safety_hazard, rul_lstm)
a champion is trained with the family's own training function, logged to a throw-away MLflow store
(SQLite in a temp dir), given the `champion` alias and loaded back with `load_champion`, exactly as a
prediction asset loads it. A simulated plant (`--machines`, `--robots`, `--safety-stations`) runs for
`--windows` windows (plus the robots' history that rul_lstm looks back on); each window becomes the
sealed-window frame the collector writes, is typed like `telemetry_window` does and featurised like
the feature assets do. Then, per window, as the prediction assets do it:

* platform: the family's scoring function on the window's input frame (its features; for rul_lstm
  the robot steps of the lookback windows, as `robot_steps` writes them per window), stamped into
  the window's predictions frame by `ScoringRun.stamped`, the frame written as the window's Parquet
  file (assets/prediction_output.py);
* bare: the estimator's own predict call (`score_samples`, `predict_proba`, Keras's `predict_on_batch`)
  on the already-featurised matrix of the same rows, built before the clock starts. The scikit-learn
  families make that very call; rul_lstm's platform calls its network through `RulModel.forward`,
  the same network's arithmetic as a lean TensorFlow graph (`lstm_inference`: Keras's numbers,
  fewer graph operations, no per-call Keras Python), so it alternates a third path too: that
  call alone on the same tensor, which shows what the platform adds beyond its model call.

Rounds alternate platform and bare; the medians give rows/s and the ratio (target >= 0.9). Both run
with one native thread, capped once outside the clock (a prediction asset caps OpenMP once around
its run's windows, which makes each scoring call's own cap free). File reads and writes, the store
and MQTT are not part of either (nor the `Prediction` objects `record_predictions` makes from the
frame for the store and MQTT: they are those sinks' work, and each costs more than the objects).

    .venv/bin/python benchmarks/scoring.py                  # about 2-3 min; writes results/scoring.md
    .venv/bin/python benchmarks/scoring.py --quick --no-write
    .venv/bin/python benchmarks/scoring.py --profile cyber_detector --no-write   # where the time goes
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message=".*is currently in beta")  # Dagster, on importing the assets

import mlflow  # noqa: E402
import polars as pl  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from assets import cyber as cyber_assets  # noqa: E402
from assets import energy as energy_assets  # noqa: E402
from assets import rul as rul_assets  # noqa: E402
from assets import safety as safety_assets  # noqa: E402
from assets.prediction_output import ScoringRun  # noqa: E402
from factory_pipelines import cyber_model, energy_model, rul_family, rul_model, safety_model  # noqa: E402
from factory_pipelines.estimator_input import estimator_input  # noqa: E402
from factory_pipelines.model_registry import (  # noqa: E402
    CHAMPION_ALIAS,
    LoadedChampion,
    ensure_experiment,
    load_champion,
    use_tracking_uri,
)
from factory_pipelines.simulator import Fleet, FleetConfig  # noqa: E402
from factory_pipelines.telemetry import dump_payload, parse_telemetry_topic  # noqa: E402
from factory_pipelines.training import ModelFamily  # noqa: E402
from factory_pipelines.window_rows import robot_rows, safety_rows  # noqa: E402
from factory_pipelines.windows import WINDOW_SCHEMA, window_key  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "scoring.md"
TARGET_RATIO = 0.9
SITE = "main"
FAMILIES = ("energy_iforest", "cyber_detector", "safety_hazard", "rul_lstm")


# ---- the plant's windows ------------------------------------------------------------------------


@dataclass(frozen=True)
class PlantWindows:
    """Sealed-window frames (WINDOW_SCHEMA) in time order; the last `scored` of them are the batch."""

    keys: list[str]
    frames: list[pl.DataFrame]
    scored: int
    window_seconds: float

    @property
    def scored_keys(self) -> list[str]:
        return self.keys[-self.scored :]


def _window_frame(fleet: Fleet, start: datetime, window_seconds: float) -> pl.DataFrame:
    """One window of `fleet` stepped once a second, as the collector writes it."""
    rows: list[dict[str, Any]] = []
    for second in range(int(window_seconds)):
        now = start + timedelta(seconds=second)
        for topic, payload in fleet.step(now):
            info = parse_telemetry_topic(topic, SITE)
            rows.append(
                {
                    "asset_id": payload.asset_id,  # type: ignore[attr-defined]
                    "kind": payload.kind,  # type: ignore[attr-defined]
                    "site": info.site if info else SITE,
                    "topic": topic,
                    "ts": now,
                    "received_at": now,
                    "seq": payload.seq,  # type: ignore[attr-defined]
                    "payload": dump_payload(payload).decode(),
                }
            )
    return pl.DataFrame(rows, schema=WINDOW_SCHEMA)


def simulate_plant(
    machines: int, robots: int, stations: int, scored: int, robot_history: int, window_seconds: float
) -> PlantWindows:
    """`scored` windows of the whole plant, after `robot_history - 1` windows of its robots alone.

    The robots run longer because rul_lstm scores a robot from the windows before the scored one
    too (`rul_model.robot_history_windows`); machines and zones are only scored on their own window.
    """
    robot_fleet = Fleet(FleetConfig(machines=0, robots=robots, cleanrooms=0, safety_stations=0, cameras=0), seq_start=0)
    rest = Fleet(
        FleetConfig(machines=machines, robots=0, cleanrooms=0, safety_stations=stations, cameras=0), seq_start=0
    )
    lead = max(0, robot_history - 1)
    first = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(seconds=(lead + scored) * window_seconds)
    keys, frames = [], []
    for number in range(lead + scored):
        start = first + timedelta(seconds=number * window_seconds)
        frame = _window_frame(robot_fleet, start, window_seconds)
        if number >= lead:
            frame = pl.concat([frame, _window_frame(rest, start, window_seconds)])
        keys.append(window_key(start, "collector-1"))
        frames.append(frame)
    return PlantWindows(keys, frames, scored, window_seconds)


# ---- champions, trained by each family's own code and loaded back through MLflow ---------------


@dataclass(frozen=True)
class TrainingSize:
    """How big a champion to train: the production architecture (`default`) or the tests' tiny one."""

    cyber: cyber_model.CyberParams
    cyber_history: cyber_model.PlantHistoryParams
    safety: safety_model.SafetyParams
    safety_history: tuple[int, int]  # zones, windows
    rul: rul_model.RulParams
    rul_robots: int


DEFAULT_SIZE = TrainingSize(
    # scoring cost follows the number and size of trees / layers, not how well they fit: keep the
    # production hyper-parameters, train on little data for few epochs
    cyber=cyber_model.CyberParams(),
    cyber_history=cyber_model.PlantHistoryParams(n_machines=6, n_windows=120, readings_per_window=60, seed=5),
    safety=safety_model.SafetyParams(calibration="sigmoid"),
    safety_history=(6, 480),
    rul=rul_model.RulParams(max_epochs=1, monitor_fraction=0.0),
    rul_robots=8,
)
QUICK_SIZE = TrainingSize(  # the tests' small models (tests/test_*_model.py)
    cyber=cyber_model.CyberParams(max_iter=40, max_leaf_nodes=15),
    cyber_history=cyber_model.PlantHistoryParams(n_machines=6, n_windows=120, readings_per_window=10, seed=5),
    safety=safety_model.SafetyParams(max_iter=60, learning_rate=0.1, min_samples_leaf=20, calibration="sigmoid"),
    safety_history=(6, 240),
    rul=rul_model.RulParams(
        window=10, lstm_units=16, lstm_layers=1, dense_units=16, max_epochs=1, ensemble_size=1, unroll=False
    ),
    rul_robots=6,
)


def train(name: str, size: TrainingSize, window_seconds: float, scratch: Path) -> Any:
    """A fitted model of family `name`, by the function its training asset calls."""
    if name == "energy_iforest":
        baseline = energy_model.simulated_baseline(scratch / "baselines", window_seconds)
        return energy_model.fit_iforest(baseline.features, energy_model.IForestParams())
    if name == "cyber_detector":
        data = cyber_model.plant_dataset(size.cyber_history)
        training, _ = cyber_model.split_train_validation(data, size.cyber_history.validation_fraction)
        return cyber_model.fit(training, size.cyber)
    if name == "safety_hazard":
        zones, windows = size.safety_history
        history = safety_model.safety_history(zones, windows, window_seconds, seed=11)
        split = safety_model.split_train_validation(history, 0.25, seed=5)
        return safety_model.fit(split.train, size.safety)
    if name == "rul_lstm":
        dataset = rul_model.robot_dataset(size.rul_robots, seed=4, lives_per_robot=2)
        training, _ = rul_model.train_validation_split(dataset, validation_fraction=0.2, seed=1)
        return rul_model.fit(training, size.rul)
    raise ValueError(f"unknown family {name}")


FAMILY_OF: dict[str, ModelFamily] = {
    "energy_iforest": energy_model.FAMILY,
    "cyber_detector": cyber_model.FAMILY,
    "safety_hazard": safety_model.FAMILY,
    "rul_lstm": rul_family.FAMILY,
}


def champion(name: str, model: Any, tracking_uri: str, artifacts: Path) -> LoadedChampion:
    """Log `model`, make it the champion, load it back the way `MlflowResource.load_champion` does."""
    family = FAMILY_OF[name]
    use_tracking_uri(tracking_uri)
    experiment = ensure_experiment(tracking_uri, name, artifacts)
    with mlflow.start_run(experiment_id=experiment):
        version = family.log_model(model, registered_name=name)
    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return load_champion(tracking_uri, name, family.load_model)


# ---- the two paths per family ---------------------------------------------------------------


@dataclass
class Workload:
    """One family's batch: per window the platform's input frame and the bare model's prepared input."""

    name: str
    run: ScoringRun
    inputs: list[tuple[str, pl.DataFrame]]  # (window key, what the prediction asset scores)
    matrices: list[Any]  # per window: the already-featurised matrix the estimator takes
    platform: Callable[[ScoringRun, str, pl.DataFrame], pl.DataFrame]
    bare: Callable[[Any], Any]
    extra: dict[str, Any] = field(default_factory=dict)
    own_call: Callable[[Any], Any] | None = None  # the platform's model call, when it is not `bare`


# Each platform function below is the body of the family's prediction asset for one window, minus its
# file reads: the same scoring call and the same `run.stamped(...)` (assets/<family>.py).


def build_workload(name: str, loaded: LoadedChampion, plant: PlantWindows) -> Workload:
    """The family's inputs for every scored window, typed and featurised as the upstream assets do."""
    run = ScoringRun(name, loaded, "bench-run", plant.window_seconds)
    model = loaded.model
    by_key = dict(zip(plant.keys, plant.frames, strict=True))
    inputs: list[tuple[str, pl.DataFrame]] = []
    matrices: list[Any] = []
    if name == "rul_lstm":
        lookback = rul_model.robot_history_windows(model, plant.window_seconds)
        steps = {key: rul_model.robot_steps(robot_rows(frame, key).frame) for key, frame in by_key.items()}
        for index, key in enumerate(plant.keys):
            if key not in plant.scored_keys:
                continue
            history = pl.concat([steps[k] for k in plant.keys[max(0, index - lookback + 1) : index + 1]])
            inputs.append((key, history))
            # the model's general path (a long frame, then each unit's last window), not the one timed
            matrices.append(model.last_windows(rul_model.robot_sequences(history, latest_life_only=True))[1])
        return Workload(
            name,
            run,
            inputs,
            matrices,
            PLATFORM_PATHS[name],
            bare_call(name, model),
            extra={"lookback_windows": lookback},
            own_call=model.forward(),
        )
    for key in plant.scored_keys:
        window = by_key[key]
        if name == "energy_iforest":
            features = energy_model.machine_features(energy_model.type_machine_rows(window, key).machines)
            inputs.append((key, features))
            matrices.append(estimator_input(model, energy_model.scoreable(features), energy_model.MODEL_FEATURES))
        elif name == "cyber_detector":
            features = cyber_model.window_features(energy_model.type_machine_rows(window, key).machines)
            inputs.append((key, features))
            matrices.append(estimator_input(model.estimator, features, model.feature_columns, absent_as_missing=True))
        elif name == "safety_hazard":
            features = safety_model.window_features(safety_rows(window, key).frame)
            inputs.append((key, features))
            matrices.append(estimator_input(model.classifier, features, model.feature_columns))
    return Workload(name, run, inputs, matrices, PLATFORM_PATHS[name], bare_call(name, model))


def bare_call(name: str, model: Any) -> Callable[[Any], Any]:
    """The estimator call the family's scoring function makes: what the bare side times."""
    if name == "energy_iforest":
        return model.score_samples  # the imputer + IsolationForest pipeline
    if name == "cyber_detector":
        return model.estimator.predict_proba
    if name == "safety_hazard":
        return model.classifier.predict_proba
    return model.network.predict_on_batch


PLATFORM_PATHS: dict[str, Callable[[ScoringRun, str, pl.DataFrame], pl.DataFrame]] = {
    "energy_iforest": energy_assets.window_predictions,
    "cyber_detector": cyber_assets.window_predictions,
    "safety_hazard": safety_assets.window_predictions,
    "rul_lstm": rul_assets.window_predictions,
}


# ---- timing ---------------------------------------------------------------------------------


@dataclass
class Timing:
    """Seconds per round (the whole batch) of each path, wall clock and this process's CPU time."""

    name: str
    rows: int
    windows: int
    platform_s: list[float]
    bare_s: list[float]
    platform_cpu_s: list[float]
    bare_cpu_s: list[float]
    extra: dict[str, Any]
    own_call_s: list[float] = field(default_factory=list)  # the platform's own model call, when timed

    @property
    def platform_rate(self) -> float:
        return self.rows / statistics.median(self.platform_s)

    @property
    def bare_rate(self) -> float:
        return self.rows / statistics.median(self.bare_s)

    @property
    def ratio(self) -> float:
        """Median over rounds of bare time / platform time (the two measured side by side)."""
        return statistics.median(b / p for p, b in zip(self.platform_s, self.bare_s, strict=True))

    @property
    def cpu_ratio(self) -> float:
        """The same in CPU time: less sensitive to other processes taking the cores."""
        return statistics.median(b / p for p, b in zip(self.platform_cpu_s, self.bare_cpu_s, strict=True))

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "windows": self.windows,
            "platform_rows_per_s": round(self.platform_rate, 1),
            "bare_rows_per_s": round(self.bare_rate, 1),
            "ratio": round(self.ratio, 3),
            "cpu_time_ratio": round(self.cpu_ratio, 3),
            "platform_ms_per_window": round(statistics.median(self.platform_s) / self.windows * 1e3, 3),
            "bare_ms_per_window": round(statistics.median(self.bare_s) / self.windows * 1e3, 3),
            "target": TARGET_RATIO,
            "met": self.ratio >= TARGET_RATIO,
            **self.extra,
            **(
                {
                    "own_call_ms_per_window": round(statistics.median(self.own_call_s) / self.windows * 1e3, 3),
                    "own_call_ratio": round(
                        statistics.median(o / p for p, o in zip(self.platform_s, self.own_call_s, strict=True)), 3
                    ),
                }
                if self.own_call_s
                else {}
            ),
        }


def run_platform(work: Workload) -> int:
    return sum(len(work.platform(work.run, key, frame)) for key, frame in work.inputs)


def measure(work: Workload, rounds: int) -> Timing:
    """Rounds over the batch after a warm-up of each path; within a round the paths alternate window
    by window in rotation (ABBA with two), so a change in the machine's load weighs on all alike."""
    rows = run_platform(work)
    calls: dict[str, Callable[[Any], Any]] = {"bare": work.bare}
    if work.own_call is not None:
        calls["own_call"] = work.own_call
    for call in calls.values():
        for matrix in work.matrices:
            call(matrix)
    paths = ["platform", *calls]
    totals: dict[str, list[float]] = {name: [] for path in paths for name in (path, f"{path}_cpu")}
    turn = 0
    for _ in range(rounds):
        spent = dict.fromkeys(totals, 0.0)
        for (key, frame), matrix in zip(work.inputs, work.matrices, strict=True):
            for path in paths[turn:] + paths[:turn]:  # with two paths, ABBA
                wall, cpu = time.perf_counter(), time.process_time()
                if path == "platform":
                    work.platform(work.run, key, frame)
                else:
                    calls[path](matrix)
                spent[path] += time.perf_counter() - wall
                spent[f"{path}_cpu"] += time.process_time() - cpu
            turn = (turn + 1) % len(paths)
        for name, seconds in spent.items():
            totals[name].append(seconds)
    return Timing(
        work.name, rows, len(work.inputs), totals["platform"], totals["bare"], totals["platform_cpu"],
        totals["bare_cpu"], work.extra, totals.get("own_call", []),
    )  # fmt: skip


def profile(work: Workload, rounds: int, top: int = 25) -> str:
    """cProfile of the platform path over `rounds` batches (after a warm-up): own time, then time inside."""
    run_platform(work)  # warm-up: Keras traces its predict function on the first call
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(rounds):
        run_platform(work)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# ---- report ---------------------------------------------------------------------------------


def render(timings: Sequence[Timing], command: str, plant: dict[str, Any], size: str) -> str:
    lines = [
        "# Prediction scoring: platform path vs bare model",
        "",
        f"`{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average {plant['load']} before the run. Plant: "
        f"{plant['machines']} machines, {plant['robots']} robots, {plant['stations']} safety stations; "
        f"{plant['windows']} windows of {plant['window_seconds']:g} s scored per round, median of "
        f"{plant['rounds']} interleaved rounds. Champions: {size} size, trained by each family's own code, "
        "loaded back from MLflow by alias. One native thread on both sides.",
        "",
        "| model | rows | platform rows/s | bare rows/s | ratio | target | CPU-time ratio "
        "| ms per window (platform / bare) |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for t in timings:
        d = t.as_dict()
        lines.append(
            f"| {t.name} | {t.rows} | {t.platform_rate:,.0f} | {t.bare_rate:,.0f} | **{t.ratio:.2f}** | "
            f"{'met' if d['met'] else 'not met'} (>= {TARGET_RATIO}) | {t.cpu_ratio:.2f} | "
            f"{d['platform_ms_per_window']:.2f} / {d['bare_ms_per_window']:.2f} |"
        )
    lines += [
        "",
        "Platform: the prediction asset's work for each window, from the frame it reads (features; for",
        "rul_lstm the robot steps of the lookback windows, binned once per window by `robot_steps`) to the",
        "predictions frame written as the window's Parquet file, through the family's scoring function and",
        "`ScoringRun.stamped`. Bare: the estimator's own call on the featurised matrix of the same rows,",
        "prepared before timing (IsolationForest pipeline `score_samples`,",
        "HistGradientBoosting `predict_proba`, CalibratedClassifierCV `predict_proba`, Keras `predict_on_batch`",
        "on the prepared window tensor). Rows: predictions made (machines, zones or robots per window).",
        "Ratio: the median over rounds of bare time / platform time, the paths alternating window by",
        "window; the CPU-time ratio is the same in this process's CPU seconds (steadier on a busy machine).",
    ]
    for t in timings:
        if t.own_call_s:  # rul_lstm
            d = t.as_dict()
            lines += [
                f"{t.name}'s platform calls its network through `RulModel.forward`: the network's arithmetic as",
                "a lean TensorFlow graph (`lstm_inference`; Keras's numbers in fewer graph operations, without",
                "`predict_on_batch`'s per-call Python). That call alone, alternated as a third path:",
                f"{d['own_call_ms_per_window']:.2f} ms per window, {d['own_call_ratio']:.2f} of the platform's time.",
            ]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machines", type=int, default=50)
    parser.add_argument("--robots", type=int, default=20)
    parser.add_argument("--safety-stations", type=int, default=12)
    parser.add_argument("--windows", type=int, default=5, help="windows scored per round (one run's backlog)")
    parser.add_argument("--window-seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--quick", action="store_true", help="the tests' tiny models, a small plant, 5 rounds")
    parser.add_argument("--profile", metavar="FAMILY", help="print a cProfile of FAMILY's platform path")
    parser.add_argument("--no-write", action="store_true", help="print only; don't write results/scoring.md")
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.machines, args.robots, args.safety_stations = min(args.machines, 10), min(args.robots, 4), 4
        args.windows, args.rounds = min(args.windows, 2), min(args.rounds, 5)
    size = QUICK_SIZE if args.quick else DEFAULT_SIZE
    names = [n.strip() for n in args.families.split(",") if n.strip()]
    command = shlex.join([".venv/bin/python", "benchmarks/scoring.py", *(argv if argv is not None else sys.argv[1:])])
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    warnings.filterwarnings("ignore", category=UserWarning)

    timings: list[Timing] = []
    with tempfile.TemporaryDirectory(prefix="scoring-bench-") as temp, threadpool_limits(limits=1):
        scratch = Path(temp)
        tracking_uri = f"sqlite:///{scratch / 'mlflow.db'}"
        loaded: dict[str, LoadedChampion] = {}
        for name in names:
            started = time.perf_counter()
            model = train(name, size, args.window_seconds, scratch)
            loaded[name] = champion(name, model, tracking_uri, scratch / "artifacts")
            print(f"{name}: champion trained and loaded in {time.perf_counter() - started:.1f} s", flush=True)
        rul = loaded.get("rul_lstm")
        lookback = rul_model.robot_history_windows(rul.model, args.window_seconds) if rul is not None else 1
        started = time.perf_counter()
        plant = simulate_plant(
            args.machines, args.robots if "rul_lstm" in loaded else 0, args.safety_stations, args.windows, lookback,
            args.window_seconds,
        )  # fmt: skip
        print(f"plant simulated: {len(plant.keys)} windows in {time.perf_counter() - started:.1f} s", flush=True)
        for name in names:
            work = build_workload(name, loaded[name], plant)
            if args.profile == name:
                print(profile(work, args.rounds))
            timing = measure(work, args.rounds)
            timings.append(timing)
            print(
                f"{name:15} {timing.rows:5} rows  platform {timing.platform_rate:10,.0f} rows/s  "
                f"bare {timing.bare_rate:10,.0f} rows/s  ratio {timing.ratio:.2f}",
                flush=True,
            )
    plant_info = {
        "machines": args.machines, "robots": args.robots, "stations": args.safety_stations, "windows": args.windows,
        "window_seconds": args.window_seconds, "rounds": args.rounds, "load": load,
    }  # fmt: skip
    text = render(timings, command, plant_info, "tests' tiny" if args.quick else "production hyper-parameters")
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"wrote {RESULTS.relative_to(REPO)}")
    if args.json_out:
        figures = {"benchmark": "scoring", "plant": plant_info, "families": {t.name: t.as_dict() for t in timings}}
        args.json_out.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
