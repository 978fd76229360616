"""Asset jobs of the code location: the window pipeline, and one training job per model family."""

from __future__ import annotations

import dagster as dg

from assets import window_assets
from factory_pipelines.model_catalog import CATALOG

window_predictions_job = dg.define_asset_job(
    "window_predictions_job",
    selection=dg.AssetSelection.assets(*window_assets),
    description="Type, featurize and score the sealed windows of one run (one window or a range of them).",
    # Three short steps in a row: running them in the run worker saves a process launch per step.
    executor_def=dg.in_process_executor,
)

training_jobs = [
    dg.define_asset_job(
        entry.training_job,
        selection=dg.AssetSelection.assets(entry.dataset_asset, entry.name),
        description=f"Build {entry.name}'s data sets, train it, register a version and gate it against the champion.",
        executor_def=dg.in_process_executor,
    )
    for entry in CATALOG.values()
]
