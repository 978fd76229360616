"""The model families of the platform, by registered name, and where each one's code lives.

The single list that `factory train`, `factory evaluate`, the training jobs and the docs derive
from. Each family module exposes `FAMILY` (a `training.ModelFamily`); it is imported only when
asked for, so a command about the energy model never pays for importing TensorFlow.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from factory_pipelines.training import ModelFamily


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    name: str
    module: str
    summary: str
    prediction_asset: str  # the window-partitioned asset that serves the champion's predictions

    @property
    def dataset_asset(self) -> str:
        return f"{self.name}_dataset"

    @property
    def training_job(self) -> str:
        return f"{self.name}_training_job"

    def family(self) -> ModelFamily:
        from factory_pipelines.training import ModelFamily

        family = importlib.import_module(self.module).FAMILY
        if not isinstance(family, ModelFamily):
            raise TypeError(f"{self.module}.FAMILY is not a ModelFamily")
        return family


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (  # quick ones first: `factory train --missing` goes in this order
        CatalogEntry(
            "energy_iforest",
            "factory_pipelines.energy_model",
            "power-consumption anomalies per machine",
            "energy_anomaly_predictions",
        ),
        CatalogEntry(
            "safety_hazard",
            "factory_pipelines.safety_model",
            "calibrated hazard probability per zone",
            "safety_hazard_predictions",
        ),
        CatalogEntry(
            "cyber_detector",
            "factory_pipelines.cyber_model",
            "network attacks per machine and window",
            "cyber_detector_predictions",
        ),
        CatalogEntry(
            "rul_lstm",
            "factory_pipelines.rul_family",
            "robot bearing remaining useful life, with interval",
            "rul_predictions",
        ),
        CatalogEntry(
            "ppe_vision",
            "factory_pipelines.ppe_family",
            "hard-hat and vest compliance per camera frame",
            "ppe_vision_predictions",
        ),
    )
}


def catalog_entry(name: str) -> CatalogEntry:
    """The entry for `name`; KeyError listing the known models otherwise."""
    try:
        return CATALOG[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(CATALOG)}") from None
