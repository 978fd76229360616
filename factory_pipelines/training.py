"""One training of a model family: an MLflow run, a registered version, and the champion gate.

Every family (energy, RUL, cyber, safety, PPE) trains the same way, so the bookkeeping lives
here once: the run carries the parameters, the input datasets with their digests, the Dagster
run id and the code version; the model is registered as a new version; and `gate_candidate`
decides whether it becomes `champion` or stays `challenger`. The family brings only what
differs: how to fit, evaluate, log and load its model (`ModelFamily`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from factory_pipelines.model_registry import ensure_experiment, use_tracking_uri
from factory_pipelines.promotion import PromotionRecord, gate_candidate

logger = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit on one parameter value


def frame_as_is(frame: pl.DataFrame, _attributes: Mapping[str, str]) -> pl.DataFrame:
    return frame


@dataclass(frozen=True, slots=True)
class ModelFamily:
    """What the training run and the gate need to know about one kind of model."""

    name: str  # the registered model that the plant's prediction asset serves
    primary_metric: str  # what the champion gate compares
    higher_is_better: bool
    log_model: Callable[..., str]  # (model, *, registered_name) -> version, inside an active run
    load_model: Callable[[str], Any]  # models:/... URI -> the family's model object
    evaluate: Callable[[Any, Any], Mapping[str, float]]  # (model, validation) -> metrics
    read_data: Callable[[Path], Any] = pl.read_parquet  # given data (file or folder) -> what evaluate takes
    from_stored: Callable[[pl.DataFrame, Mapping[str, str]], Any] = frame_as_is  # stored set + attributes -> same


@dataclass(frozen=True, slots=True)
class DatasetRecord:
    """One input of a training run, as `mlflow.log_input` records it."""

    name: str
    context: str  # training, validation or calibration
    source_uri: str
    digest: str
    rows: int
    frame: pl.DataFrame | None = None  # tabular inputs also log their schema

    @classmethod
    def from_frame(cls, frame: pl.DataFrame, *, name: str, context: str, source_uri: str) -> DatasetRecord:
        return cls(name, context, source_uri, frame_digest(frame), frame.height, frame)


def frame_digest(frame: pl.DataFrame) -> str:
    """A content digest of a frame: same rows in the same order, same digest."""
    hasher = hashlib.sha256(str(frame.schema).encode())
    if frame.height:
        hasher.update(frame.hash_rows(seed=0).to_numpy().tobytes())
    return hasher.hexdigest()[:16]


def files_digest(paths: Iterable[Path], root: Path | None = None) -> str:
    """A digest of a set of files by relative name, size and content (images, raw exports)."""
    hasher = hashlib.sha256()
    for path in sorted(paths):
        name = str(path.relative_to(root)) if root else path.name
        hasher.update(name.encode())
        hasher.update(hashlib.sha256(path.read_bytes()).digest())
    return hasher.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class TrainingReport:
    registered_name: str
    version: str
    run_id: str
    experiment_id: str
    params: dict[str, Any]
    metrics: dict[str, float]
    datasets: list[DatasetRecord]
    promotion: PromotionRecord
    train_seconds: float
    recorded_in_store: bool
    extra_metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.registered_name}/{self.version}"


def _loggable_params(params: Mapping[str, Any]) -> dict[str, str]:
    return {name: str(value)[:MAX_PARAM_CHARS] for name, value in params.items()}


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def _log_dataset(record: DatasetRecord) -> None:
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource  # registered dynamically by MLflow

    source = LocalArtifactDatasetSource(record.source_uri)
    if record.frame is not None:
        dataset = mlflow.data.from_polars(record.frame, source=source, name=record.name, digest=record.digest)
    else:
        dataset = MetaDataset(source, name=record.name, digest=record.digest)
    mlflow.log_input(dataset, context=record.context, tags={"rows": str(record.rows)})


def train_register_gate(
    family: ModelFamily,
    *,
    fit: Callable[[], Any],
    validation: Any,
    datasets: list[DatasetRecord],
    params: Mapping[str, Any],
    tracking_uri: str,
    artifacts_dir: Path | None,
    dagster_run_id: str,
    code_version: str | None,
    registered_name: str | None = None,
    force: bool = False,
    tolerance: float = 0.0,
    record_promotion: Callable[[PromotionRecord], None] | None = None,
    tags: Mapping[str, str] | None = None,
    describe_fit: Callable[[Any], Mapping[str, float]] | None = None,
) -> TrainingReport:
    """Fit, evaluate, log and register a new version, then gate it against the champion.

    `fit` is called inside the MLflow run, so what it logs (e.g. per-epoch losses) lands there.
    `record_promotion` is where the decision is kept besides MLflow (the serving store); when it
    fails, the decision is still in the version's tags and the report says it was not recorded.
    `describe_fit` adds figures about the fit itself (training rows, threshold, ...) to the run.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    name = registered_name or family.name
    use_tracking_uri(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri, name, artifacts_dir)
    run_tags = {"dagster_run_id": dagster_run_id, "model_family": family.name, **(tags or {})}
    if code_version:
        run_tags["mlflow.source.git.commit"] = code_version
    logged_params = {**params, "code_version": code_version or "unknown"}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{name}-{dagster_run_id[:8]}", tags=run_tags) as run:
        mlflow.log_params(_loggable_params(logged_params))
        for record in datasets:
            _log_dataset(record)
        started = time.perf_counter()
        model = fit()
        train_seconds = time.perf_counter() - started
        metrics = {
            **_finite(describe_fit(model) if describe_fit else {}),
            **_finite(family.evaluate(model, validation)),
        }
        mlflow.log_metrics({**metrics, "train_seconds": train_seconds})
        version = family.log_model(model, registered_name=name)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version_tags = {
        "dagster_run_id": dagster_run_id,
        "code_version": code_version or "unknown",
        **{f"dataset.{r.context}.{r.name}": r.digest for r in datasets},
    }
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, value)

    def score(model_uri: str) -> Mapping[str, float]:
        return family.evaluate(family.load_model(model_uri), validation)

    promotion = gate_candidate(
        tracking_uri,
        name,
        version,
        score=score,
        metric=family.primary_metric,
        higher_is_better=family.higher_is_better,
        decided_by=f"dagster run {dagster_run_id}",
        force=force,
        tolerance=tolerance,
        mlflow_run_id=run.info.run_id,
        dagster_run_id=dagster_run_id,
    )
    recorded = False
    if record_promotion is not None:
        try:
            record_promotion(promotion)
            recorded = True
        except Exception as exc:  # the decision stays in MLflow's version tags either way
            logger.warning("promotion of %s v%s not recorded in the store: %s", name, version, exc)
    return TrainingReport(
        registered_name=name,
        version=version,
        run_id=run.info.run_id,
        experiment_id=experiment_id,
        params=dict(logged_params),
        metrics={**metrics, "train_seconds": train_seconds},
        datasets=datasets,
        promotion=promotion,
        train_seconds=train_seconds,
        recorded_in_store=recorded,
    )
