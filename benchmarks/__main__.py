"""`python -m benchmarks`: the same as `python benchmarks/run_all.py` (same options)."""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).with_name("run_all.py")), run_name="__main__")
