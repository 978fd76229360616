"""Core library of the factory ML platform and its Dagster code location.

Plain, typed functions live here and are tested without Dagster; `definitions.py` assembles
the Dagster code location from `assets/` and `sensors/`.
"""

__version__ = "0.1.0"

import os as _os

# MLflow draws a progress bar for every artifact download, model loads included: noise in run logs.
_os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
