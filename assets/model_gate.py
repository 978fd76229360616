"""What every training asset shares: the promotion knobs and the `champion_gate` check.

The gate runs inside the training asset's step (`check_specs`), because it must score the
version that step just registered; the check result carries the decision and both scores.
"""

import dataclasses
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import dagster as dg
import polars as pl
from pydantic import Field, create_model

from factory_pipelines.datasets import StoredDataset, load_dataset
from factory_pipelines.model_registry import git_commit
from factory_pipelines.resources import MlflowResource, PartitionFilesResource, ServingStoreResource
from factory_pipelines.training import ModelFamily, TrainingReport, train_register_gate

CHAMPION_GATE = "champion_gate"
P = TypeVar("P")


class PromotionConfig(dg.Config):
    """Knobs of the champion gate; every training Config inherits them."""

    force_promotion: bool = Field(False, description="Make the new version champion even if it scores worse.")
    promotion_tolerance: float = Field(
        0.0, ge=0, description="How much worse on the gate's metric still counts as 'at least as good'."
    )


def champion_gate_spec(asset_name: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        CHAMPION_GATE,
        asset=asset_name,
        blocking=True,
        description=(
            "Scores the new version and the current champion on the same validation data; only a version "
            "at least as good takes the `champion` alias, otherwise it becomes `challenger`."
        ),
    )


def training_result(report: TrainingReport, **metadata: object) -> dg.MaterializeResult:
    """The training asset's materialization with the gate's check result in it.

    A refused candidate is a failed check of WARN severity: the champion keeps serving, so what
    runs downstream is not blocked.
    """
    promotion = report.promotion
    check = dg.AssetCheckResult(
        check_name=CHAMPION_GATE,
        passed=promotion.promoted,
        severity=dg.AssetCheckSeverity.WARN,
        description=promotion.reason,
        metadata={
            "candidate_version": promotion.candidate_version,
            "alias": promotion.alias,
            "previous_champion": promotion.previous_champion or "",
            "metric": promotion.metric,
            "candidate_score": promotion.candidate_score,
            "champion_score": promotion.champion_score,
            "forced": promotion.forced,
            "reason": promotion.reason,
            "candidate_metrics": dg.MetadataValue.json(promotion.candidate_metrics),
            "champion_metrics": dg.MetadataValue.json(promotion.champion_metrics or {}),
            "recorded_in_store": report.recorded_in_store,
        },
    )
    return dg.MaterializeResult(
        metadata={
            "model_version": report.version,
            "model_uri": report.model_uri,
            "registered_name": report.registered_name,
            "alias": promotion.alias,
            "promoted": promotion.promoted,
            "mlflow_run_id": report.run_id,
            "train_seconds": round(report.train_seconds, 3),
            "datasets": dg.MetadataValue.json({r.name: {"digest": r.digest, "rows": r.rows} for r in report.datasets}),
            "promotion": dg.MetadataValue.json(promotion.as_dict()),
            **{name: float(value) for name, value in report.metrics.items()},
            **metadata,
        },
        check_results=[check],
    )


@dataclasses.dataclass(frozen=True)
class StoredSets:
    """A family's training and validation sets as its dataset asset stored them."""

    training: StoredDataset
    training_rows: pl.DataFrame
    validation: StoredDataset
    validation_rows: pl.DataFrame

    @classmethod
    def load(cls, window_files: PartitionFilesResource, family: str) -> "StoredSets":
        training, training_rows = load_dataset(window_files.datasets_dir, family, "training")
        validation, validation_rows = load_dataset(window_files.datasets_dir, family, "validation")
        return cls(training, training_rows, validation, validation_rows)


def train_from_stored_sets(
    context: dg.AssetExecutionContext,
    family: ModelFamily,
    config: PromotionConfig,
    *,
    sets: StoredSets,
    fit: Callable[[], Any],
    validation: Any,
    params: Mapping[str, Any],
    mlflow: MlflowResource,
    serving_store: ServingStoreResource,
    describe_fit: Callable[[Any], Mapping[str, float]] | None = None,
) -> dg.MaterializeResult:
    """What every training asset does once its data is in memory: one MLflow run, a new version,
    the gate, the promotion kept in the store; the materialization with the gate's check result."""
    source = sets.training.source
    report = train_register_gate(
        family,
        fit=fit,
        validation=validation,
        datasets=[sets.training.record(sets.training_rows), sets.validation.record(sets.validation_rows)],
        params={**params, "training_source": source},
        tracking_uri=mlflow.tracking_uri,
        artifacts_dir=mlflow.artifacts_path,
        dagster_run_id=context.run.run_id,
        code_version=git_commit(),
        registered_name=sets.training.registered_name or family.name,
        force=config.force_promotion,
        tolerance=config.promotion_tolerance,
        record_promotion=lambda record: serving_store.get_store().record_promotion(record),
        tags={"training_source": source},
        describe_fit=describe_fit,
    )
    context.log.info(
        f"{report.registered_name} v{report.version} trained on {source} ({sets.training.rows} rows): "
        f"{report.promotion.alias}; {report.promotion.reason}"
    )
    return training_result(report, training_source=source)


def _field_comments(params_cls: type) -> dict[str, str]:
    """`name: type = default  # meaning` lines of a params dataclass, as {name: meaning}."""
    comments: dict[str, str] = {}
    for line in inspect.getsource(params_cls).splitlines():
        match = re.match(r"\s+(\w+)\s*:[^=]+=[^#]*#\s*(.+)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


def training_config(name: str, params_cls: type, doc: str) -> type[PromotionConfig]:
    """A launchpad Config with every field of a family's params dataclass, plus the gate's knobs.

    Derived, so the family's dataclass stays the one place where a hyper-parameter, its default
    and its meaning are written down.
    """
    hints = typing.get_type_hints(params_cls)
    comments = _field_comments(params_cls)
    fields: dict[str, Any] = {
        f.name: (hints[f.name], Field(f.default, description=comments.get(f.name)))
        for f in dataclasses.fields(params_cls)
        if f.default is not dataclasses.MISSING
    }
    config = create_model(name, __base__=PromotionConfig, __doc__=doc, **fields)
    config.__module__ = params_cls.__module__
    return config


def params_from_config(params_cls: type[P], config: PromotionConfig) -> P:
    names = {f.name for f in dataclasses.fields(params_cls)}  # type: ignore[arg-type]
    return params_cls(**{k: v for k, v in config.model_dump().items() if k in names})


def params_as_dict(params: Any) -> dict[str, Any]:
    """A params dataclass (slotted or not) as the MLflow run's parameters."""
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
