"""Asset jobs of the code location."""

from __future__ import annotations

import dagster as dg

from assets import energy_iforest, energy_iforest_dataset, window_assets

window_predictions_job = dg.define_asset_job(
    "window_predictions_job",
    selection=dg.AssetSelection.assets(*window_assets),
    description="Type, featurize and score the sealed windows of one run (one window or a range of them).",
    # Three short steps in a row: running them in the run worker saves a process launch per step.
    executor_def=dg.in_process_executor,
)

energy_training_job = dg.define_asset_job(
    "energy_training_job",
    selection=dg.AssetSelection.assets(energy_iforest_dataset, energy_iforest),
    description="Build energy_iforest's data sets, train it, register a version and gate it against the champion.",
    executor_def=dg.in_process_executor,
)
