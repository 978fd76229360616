"""The MLflow model registry as the platform sees it: champions by alias, never stages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"


@dataclass(frozen=True, slots=True)
class ModelVersionInfo:
    name: str
    version: str
    alias: str | None
    run_id: str | None
    created_at: datetime | None
    metrics: dict[str, float]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def champion_info(tracking_uri: str, name: str, alias: str = CHAMPION_ALIAS) -> ModelVersionInfo | None:
    """The version holding `alias`, or None when the model or the alias does not exist yet."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}:
            return None
        raise
    metrics: dict[str, float] = {}
    if version.run_id:
        try:
            metrics = dict(client.get_run(version.run_id).data.metrics)
        except MlflowException:
            metrics = {}
    created = (
        datetime.fromtimestamp(version.creation_timestamp / 1000, UTC) if version.creation_timestamp else None
    )
    return ModelVersionInfo(
        name=name,
        version=str(version.version),
        alias=alias,
        run_id=version.run_id,
        created_at=created,
        metrics=metrics,
    )
