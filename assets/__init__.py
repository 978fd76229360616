"""Dagster asset and asset-check definitions, one module per domain."""

from assets.energy import energy_anomaly_predictions, energy_iforest, energy_iforest_dataset, machine_features
from assets.telemetry import telemetry_window, window_partitions

window_assets = [telemetry_window, machine_features, energy_anomaly_predictions]
"""The assets partitioned by sealed window, in pipeline order (what the sensor's job runs)."""

all_assets = [*window_assets, energy_iforest_dataset, energy_iforest]

__all__ = [
    "all_assets",
    "energy_anomaly_predictions",
    "energy_iforest",
    "energy_iforest_dataset",
    "machine_features",
    "telemetry_window",
    "window_assets",
    "window_partitions",
]
