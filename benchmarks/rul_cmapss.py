"""rul_lstm on NASA C-MAPSS: held-out engines cut at random cycles, scored at their last cycle.

The official test split is held out, so each run builds its own in NASA's file layout: a seeded
20 % of the training engines leaves the training file, and each of those engines is cut at random
cycles (`rul_model.cut_at_random_cycles`: true RUL uniform in 5..150 cycles, at least 20 cycles
kept), several times per engine so the test file has about as many engines as NASA's. Then
`rul_model.benchmark_cmapss` trains on the rest (which by default keeps 20 % of its engines aside to
calibrate the interval; `--param calibration_fraction=0` calibrates out of fold on all of them, one fold
per ensemble member) and scores every test engine against the RUL file. Prints one JSON object.

    .venv/bin/python benchmarks/rul_cmapss.py --subsets FD001
    .venv/bin/python benchmarks/rul_cmapss.py --subsets FD002 FD004 --param ensemble_size=3
    .venv/bin/python benchmarks/rul_cmapss.py --param calibration_fraction=0 --param ensemble_size=5  # cross-conformal
    /usr/bin/time -v .venv/bin/python benchmarks/rul_cmapss.py --subsets FD001   # peak memory too

With `--split-only --work-dir DIR` it only writes the split (DIR/FD00x/train_, test_ and RUL_FD00x.txt)
for `factory benchmark rul --cmapss-dir DIR/FD00x --test-dir DIR/FD00x`, the path through Dagster and MLflow.
`--fold 0` to `--fold 4` of one seed hold out disjoint fifths of the engines: together, every engine
once (a 5-fold cross-validation, pooled in benchmarks/results/models_rul.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from factory_pipelines import rul_model

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmapss"


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings as RulParams fields, typed like the field's default."""
    defaults = rul_model.RulParams()
    types = {f.name: type(getattr(defaults, f.name)) for f in fields(rul_model.RulParams)}
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"--param {pair!r}: expected NAME=VALUE with NAME one of {', '.join(types)}")
        kind = types[key]
        overrides[key] = value.lower() in {"1", "true", "yes"} if kind is bool else kind(value)
    return overrides


def write_split(train_file: Path, out_dir: Path, args: argparse.Namespace) -> rul_model.CmapssSplitFiles:
    """The dev split the arguments ask for; a fold that does not exist is a usage error, not a traceback."""
    try:
        return rul_model.write_cmapss_dev_split(
            train_file,
            out_dir,
            held_out_fraction=args.held_out_fraction,
            seed=args.seed,
            cuts_per_engine=args.cuts_per_engine,
            fold=args.fold,
        )
    except ValueError as error:
        raise SystemExit(f"rul_cmapss.py: {error}") from None


def run_subset(
    subset: str, data_dir: Path, work_dir: Path, params: rul_model.RulParams, args: argparse.Namespace
) -> dict[str, Any]:
    train_file = data_dir / f"train_{subset}.txt"
    if not train_file.is_file():
        raise SystemExit(f"{train_file} is missing (see shared/data/README.md)")
    split = write_split(train_file, work_dir / subset, args)
    started = time.perf_counter()

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"[{subset} {time.perf_counter() - started:7.1f} s] {message}", file=sys.stderr, flush=True)

    load_before = os.getloadavg()
    metrics = rul_model.benchmark_cmapss(split.train_file, split.test_file, split.rul_file, params, progress)
    return {
        "subset": subset,
        "held_out_engines": split.held_out_engines,
        "test_engines": split.test_engines,
        **metrics,
        "wall_seconds": time.perf_counter() - started,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "peak_rss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subsets", nargs="+", default=["FD001"], choices=["FD001", "FD002", "FD003", "FD004"])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--seed", type=int, default=0, help="seeds which engines are held out and where they are cut")
    parser.add_argument("--held-out-fraction", type=float, default=0.2)
    parser.add_argument(
        "--fold",
        type=int,
        default=0,
        help="which block of the seed's engine order is held out (folds 0-4 of one seed are disjoint at 0.2)",
    )
    parser.add_argument("--cuts-per-engine", type=int, default=5)
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a RulParams override")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the split files go (default: a temp dir)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")
    parser.add_argument("--split-only", action="store_true", help="write the split files to --work-dir and stop")
    args = parser.parse_args()
    if args.split_only:
        if args.work_dir is None:
            parser.error("--split-only needs --work-dir")
        for subset in args.subsets:
            split = write_split(args.data_dir / f"train_{subset}.txt", args.work_dir / subset, args)
            print(
                f"{subset}: {split.held_out_engines} engines held out, {split.test_engines} test engines in "
                f"{args.work_dir / subset}"
            )
        return

    params = replace(rul_model.RulParams(), **parse_overrides(args.param))
    with tempfile.TemporaryDirectory(prefix="rul-cmapss-") as tmp:
        work_dir = args.work_dir or Path(tmp)
        results = [run_subset(subset, args.data_dir, work_dir, params, args) for subset in args.subsets]
    print(
        json.dumps(
            {
                "command": shlex.join([".venv/bin/python", "benchmarks/rul_cmapss.py", *sys.argv[1:]]),
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "arch": platform.machine()},
                "protocol": {
                    "seed": args.seed,
                    "fold": args.fold,
                    "held_out_fraction": args.held_out_fraction,
                    "cuts_per_engine": args.cuts_per_engine,
                    "cut_true_rul_range": [
                        rul_model.CUT_MIN_RUL_FRACTION * 125.0,
                        rul_model.CUT_MAX_RUL_FRACTION * 125.0,
                    ],
                    "min_prefix_cycles": rul_model.CUT_MIN_PREFIX,
                },
                "params": asdict(params),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
