"""`rul_lstm` as a model family of the platform: data sets by source, and how they are stored.

Two sources share the one sequence model: the simulator's robots (what the prediction asset
serves, registered as `rul_lstm`) and NASA C-MAPSS (the benchmark, registered per subset as
`rul_lstm_cmapss_fd001` and so on: another feature space, so never the plant's champion).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import polars as pl

from factory_pipelines import rul_model
from factory_pipelines.training import ModelFamily

SOURCE_ROBOTS = "robots"
SOURCE_CMAPSS = "cmapss"


def registered_name_for(source: str, subset: str = "") -> str:
    return rul_model.MODEL_NAME if source == SOURCE_ROBOTS else f"{rul_model.MODEL_NAME}_cmapss_{subset.lower()}"


def cmapss_train_file(cmapss_dir: Path, subset: str) -> Path:
    path = Path(cmapss_dir) / f"train_{subset.upper()}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: cmapss_dir must hold NASA's train_FD00x.txt files")
    return path


def stored_attributes(dataset: rul_model.RulDataset) -> dict[str, str]:
    """What `from_stored` needs besides the rows (the dataset manifest keeps it)."""
    return {
        "feature_columns": ",".join(dataset.feature_columns),
        "rul_cap": f"{dataset.rul_cap:g}",
        "name": dataset.name,
        "source_uri": dataset.source_uri,
        "attributes": json.dumps(dataset.attributes),
    }


def from_stored(frame: pl.DataFrame, attributes: Mapping[str, str]) -> rul_model.RulDataset:
    return rul_model.RulDataset(
        frame=frame,
        feature_columns=tuple(c for c in attributes["feature_columns"].split(",") if c),
        rul_cap=float(attributes["rul_cap"]),
        name=attributes.get("name", "stored"),
        source_uri=attributes.get("source_uri", ""),
        attributes=json.loads(attributes.get("attributes", "{}")),
    )


def read_cmapss_test(path: Path) -> rul_model.RulDataset:
    """`factory evaluate --data` for C-MAPSS: a test_FD00x.txt whose RUL_FD00x.txt lies beside it."""
    rul_file = path.with_name(path.name.replace("test_", "RUL_"))
    if not path.name.startswith("test_") or not rul_file.is_file():
        raise FileNotFoundError(f"expected test_FD00x.txt with RUL_FD00x.txt beside it, got {path}")
    return rul_model.cmapss_test_dataset(path, rul_file)


def read_data(path: Path) -> rul_model.RulDataset:
    if path.suffix == ".txt":
        return read_cmapss_test(path)
    raise ValueError(f"rul_lstm reads C-MAPSS test files (test_FD00x.txt); got {path}")


FAMILY = ModelFamily(
    name=rul_model.MODEL_NAME,
    primary_metric=rul_model.PRIMARY_METRIC,
    higher_is_better=rul_model.HIGHER_IS_BETTER,
    log_model=rul_model.log_model,
    load_model=rul_model.load_model,
    evaluate=rul_model.evaluate,
    read_data=read_data,
    from_stored=from_stored,
)
