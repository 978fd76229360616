"""Tiny `rul_lstm` and `ppe_vision` champions, trained in seconds and registered in a real MLflow store.

For tests of the routes that serve them (tests/test_ml_api.py) and of the whole API surface
(tests/test_api_fuzz.py): the models are small, not good; the routes and the registry are what is tested.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow

from factory_pipelines import ppe_images as pi
from factory_pipelines import ppe_model as pm
from factory_pipelines import rul_model as rm
from factory_pipelines.model_registry import ensure_experiment, set_alias, use_tracking_uri

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LOGGED_RMSE = 123.5  # a metric the tiny champions' runs carry, for model_info

# Seconds to train, not to be good: the routes are under test, not the models.
TINY_RUL = rm.RulParams(
    window=8,
    lstm_units=8,
    lstm_layers=1,
    dense_units=8,
    dropout=0.0,
    learning_rate=0.01,
    batch_size=64,
    max_epochs=2,
    ensemble_size=1,
    unroll=False,
    calibration_fraction=0.25,
    seed=2,
)
TINY_PPE = pm.PpeParams(
    image_size=64,
    crop_size=64,
    zoom_min=1.0,
    zoom_max=1.0,
    base_filters=4,
    epochs=1,
    batch_size=8,
    calibration_fraction=0.0,
    mirror_at_inference=False,
    region_threshold=0.0,  # every frame then has a person region to report, trained or not
    members=1,
    seed=3,
)
CYCLES_PER_STEP = 40  # the tiny RUL model's steps


@dataclass(frozen=True)
class Champions:
    tracking_uri: str
    rul: rm.RulModel
    ppe: pm.PpeModel


def register(tracking_uri: str, artifacts: Path, name: str, log: Callable[[], str]) -> str:
    """Log a model in a run of its own (with a metric), register it, give it the champion alias."""
    use_tracking_uri(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri, name, artifacts)
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.log_metric("rmse", LOGGED_RMSE)
        version = log()
    set_alias(tracking_uri, name, version, decided_by="test", reason="tiny champion")
    return version


def train_tiny_champions(root: Path) -> Champions:
    """Both tiny models trained and registered as champions in an MLflow store under `root`."""
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    rul = rm.fit(rm.robot_dataset(n_robots=4, seed=4, cycles_per_step=CYCLES_PER_STEP), TINY_RUL)
    ppe = pm.fit(pm.load_frames(pi.write_synthetic_folder(root / "frames", 24, seed=1, size=64)), TINY_PPE)
    register(tracking_uri, root / "artifacts", "rul_lstm", lambda: rm.log_model(rul, registered_name="rul_lstm"))
    register(tracking_uri, root / "artifacts", "ppe_vision", lambda: pm.log_model(ppe, registered_name="ppe_vision"))
    return Champions(tracking_uri, rul, ppe)
