"""Training and validation sets on disk: one Parquet file per set and a manifest beside it.

A model family's dataset asset writes its sets here; its training asset, `factory evaluate`
and the notebooks read them back. The manifest says where the rows came from (source and URI)
and their digest, which is what the MLflow run records as its input, so a version can be traced
to the exact rows it saw.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from factory_pipelines.durable_files import write_bytes_atomic, write_parquet_atomic
from factory_pipelines.training import DatasetRecord, frame_digest


@dataclass(frozen=True, slots=True)
class StoredDataset:
    family: str
    name: str  # e.g. training, validation, calibration
    source: str  # where the rows came from: history, simulated-baseline, cmapss-FD001, ...
    source_uri: str
    digest: str
    rows: int
    path: str
    registered_name: str = ""  # the registered model this set trains / validates (e.g. a benchmark variant)
    attributes: dict[str, str] = field(default_factory=dict)  # what the family needs to read the rows back

    def record(self, frame: pl.DataFrame) -> DatasetRecord:
        """The MLflow input record of this set (context: its name)."""
        return DatasetRecord(
            name=f"{self.family}-{self.name}-{self.source}",
            context=self.name,
            source_uri=self.source_uri,
            digest=self.digest,
            rows=self.rows,
            frame=frame,
        )


def dataset_path(root: Path, family: str, name: str) -> Path:
    return root / family / f"{name}.parquet"


def store_dataset(
    root: Path,
    family: str,
    name: str,
    frame: pl.DataFrame,
    *,
    source: str,
    source_uri: str,
    registered_name: str | None = None,
    attributes: Mapping[str, str] | None = None,
) -> StoredDataset:
    """Write the set and then its manifest (a reader that finds the manifest finds the rows)."""
    path = dataset_path(root, family, name)
    write_parquet_atomic(frame, path)
    stored = StoredDataset(
        family,
        name,
        source,
        source_uri,
        frame_digest(frame),
        frame.height,
        str(path),
        registered_name or family,
        dict(attributes or {}),
    )
    write_bytes_atomic(path.with_suffix(".json"), json.dumps(asdict(stored), indent=2).encode())
    return stored


def load_dataset(root: Path, family: str, name: str) -> tuple[StoredDataset, pl.DataFrame]:
    """The set and its manifest; FileNotFoundError naming the asset to materialize first."""
    path = dataset_path(root, family, name)
    manifest = path.with_suffix(".json")
    if not manifest.is_file() or not path.is_file():
        raise FileNotFoundError(
            f"no {name} set for {family} at {path}: materialize the {family}_dataset asset first "
            f"(Dagster UI, or `factory train {family}`)"
        )
    stored = StoredDataset(**json.loads(manifest.read_text()))
    return stored, pl.read_parquet(path)
