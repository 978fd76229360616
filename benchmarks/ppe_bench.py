"""Model quality of `ppe_vision`: train on labelled YOLO folders, score frames and boxes of a test folder.

Calls `factory_pipelines.ppe_model.benchmark_ppe` (the function the acceptance run calls) and writes
the figures with the command that produced them. Besides F1 at the model's own threshold, the figures
hold `violation_auc` and `best_f1` (the F1 of the best cut on the test frames): diagnostics of how
well the frame score ranks frames, telling a weak network from a badly placed threshold. Peak memory
is measured by wrapping the command in `/usr/bin/time -v` (see benchmarks/results/models_ppe.md).

    .venv/bin/python benchmarks/ppe_bench.py                      # train_subset -> valid; ~20-40 min on 2 busy cores
    .venv/bin/python benchmarks/ppe_bench.py --epochs 2 --no-write  # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from factory_pipelines.ppe_model import PpeParams, benchmark_ppe  # noqa: E402 - after the TF log level

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT.parent / "shared" / "data" / "ppe"
RESULTS = REPO_ROOT / "benchmarks" / "results" / "models_ppe.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-dir", type=Path, default=DATA / "train_subset")
    parser.add_argument("--test-dir", type=Path, default=DATA / "valid")
    defaults = PpeParams()
    for field in fields(PpeParams):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(getattr(defaults, field.name)))
    parser.add_argument("--no-write", action="store_true", help="print the figures, don't append to the results")
    args = parser.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in fields(PpeParams) if getattr(args, f.name) is not None}
    params = PpeParams(**overrides)
    figures = benchmark_ppe(args.train_dir, args.test_dir, params)
    print(json.dumps(figures, indent=2))
    if not args.no_write:
        command = "python benchmarks/ppe_bench.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        row = {
            "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "train": str(args.train_dir.name),
            "test": str(args.test_dir.name),
            **{k: round(v, 3) for k, v in figures.items()},
            "params": asdict(params),
            "python": platform.python_version(),
            "command": command.strip(),
        }
        with RESULTS.open("a") as results:
            results.write(f"\n<!-- raw run -->\n```json\n{json.dumps(row, indent=1)}\n```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
