"""Dagster asset and asset-check definitions, one module per domain."""

from assets.alerts import window_alerts
from assets.cyber import cyber_detector, cyber_detector_dataset, cyber_detector_predictions, network_features
from assets.energy import energy_anomaly_predictions, energy_iforest, energy_iforest_dataset, machine_features
from assets.ppe import ppe_vision, ppe_vision_dataset, ppe_vision_predictions
from assets.rul import robot_steps, rul_lstm, rul_lstm_dataset, rul_predictions
from assets.safety import safety_features, safety_hazard, safety_hazard_dataset, safety_hazard_predictions
from assets.telemetry import telemetry_window, window_partitions

window_assets = [
    telemetry_window,
    machine_features,
    energy_anomaly_predictions,
    safety_features,
    safety_hazard_predictions,
    network_features,
    cyber_detector_predictions,
    ppe_vision_predictions,
    robot_steps,
    rul_predictions,
]
"""The assets partitioned by sealed window, in pipeline order (what the sensor's job runs)."""

training_assets = [
    energy_iforest_dataset,
    energy_iforest,
    safety_hazard_dataset,
    safety_hazard,
    cyber_detector_dataset,
    cyber_detector,
    ppe_vision_dataset,
    ppe_vision,
    rul_lstm_dataset,
    rul_lstm,
]
"""Each model family's dataset and training asset (what `factory train` and the launchpad run)."""

all_assets = [*window_assets, *training_assets, window_alerts]

__all__ = [
    "all_assets",
    "cyber_detector",
    "cyber_detector_dataset",
    "cyber_detector_predictions",
    "energy_anomaly_predictions",
    "energy_iforest",
    "energy_iforest_dataset",
    "machine_features",
    "network_features",
    "ppe_vision",
    "ppe_vision_dataset",
    "ppe_vision_predictions",
    "robot_steps",
    "rul_lstm",
    "rul_lstm_dataset",
    "rul_predictions",
    "safety_features",
    "safety_hazard",
    "safety_hazard_dataset",
    "safety_hazard_predictions",
    "telemetry_window",
    "training_assets",
    "window_alerts",
    "window_assets",
    "window_partitions",
]
