"""The MLflow model registry as the platform sees it: champions by alias, never stages.

Also the helpers every training asset shares: experiments with a proper artifact location,
logging a scikit-learn model with its signature, registering it, and moving an alias with a
record of the move (MLflow keeps no alias history).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import mlflow
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
    created = datetime.fromtimestamp(version.creation_timestamp / 1000, UTC) if version.creation_timestamp else None
    return ModelVersionInfo(
        name=name,
        version=str(version.version),
        alias=alias,
        run_id=version.run_id,
        created_at=created,
        metrics=metrics,
    )


# ---- logging, registering and promoting versions ------------------------------------------

SKOPS_TRUSTED_TYPES: tuple[str, ...] = ("sklearn.tree._tree.Tree", "numpy.dtype")
"""Types a scikit-learn tree ensemble (behind an imputer) needs to be loaded back through skops."""


def is_local_store(tracking_uri: str) -> bool:
    """True for a tracking URI that writes straight to a local database or directory (no server)."""
    scheme = urlsplit(tracking_uri).scheme
    return scheme in {"", "file", "sqlite"}


def use_tracking_uri(tracking_uri: str) -> None:
    """Point MLflow's fluent API (runs, log_model, load_model) at `tracking_uri` for this process."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def ensure_experiment(tracking_uri: str, name: str, artifacts_dir: Path | None = None) -> str:
    """The id of experiment `name`, created if missing.

    Against a local SQLite store, artifacts would otherwise land in `./mlruns` of whatever
    directory the process runs in, so the experiment gets `artifacts_dir/name` as its artifact
    location. A tracking server decides artifact locations itself.
    """
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = None
    if artifacts_dir is not None and is_local_store(tracking_uri):
        location = (artifacts_dir / name).resolve().as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException:  # created concurrently by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the checkout holding this code (the code version MLflow records), if any."""
    where = path or Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit or None


def pinned_requirements(*distributions: str) -> list[str]:
    """`name==version` for each installed distribution: explicit, so MLflow skips slow inference."""
    return [f"{name}=={metadata.version(name)}" for name in distributions]


def log_sklearn_model(
    model: Any,
    *,
    registered_name: str,
    input_example_frame: Any,
    output_example: Any,
    pip_requirements: list[str] | None = None,
) -> str:
    """Log `model` into the active MLflow run, register it under `registered_name`; the new version.

    The signature is inferred from an input frame and an output sample; the frame is also stored
    as the input example, so the MLflow UI and `mlflow models serve` show what a request looks like.
    """
    import mlflow.sklearn  # the flavor imports scikit-learn: only where a model is handled
    from mlflow.models import infer_signature

    signature = infer_signature(input_example_frame, output_example)
    info = mlflow.sklearn.log_model(
        model,
        name="model",
        signature=signature,
        input_example=input_example_frame,
        pip_requirements=pip_requirements or pinned_requirements("scikit-learn", "numpy", "scipy"),
        skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
        registered_model_name=registered_name,
    )
    if info.registered_model_version is None:
        raise RuntimeError(f"MLflow did not register a version of {registered_name}")
    return str(info.registered_model_version)


def set_alias(
    tracking_uri: str,
    name: str,
    version: str,
    *,
    decided_by: str,
    reason: str,
    alias: str = CHAMPION_ALIAS,
) -> str | None:
    """Point `alias` at `version`; the version it pointed at before (None: it was new).

    The move is also left as tags on the version, so the MLflow UI shows why it holds the alias.
    """
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    previous = champion_info(tracking_uri, name, alias)
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, str(version), f"{alias}.since", datetime.now(UTC).isoformat())
    client.set_model_version_tag(name, str(version), f"{alias}.by", decided_by)
    client.set_model_version_tag(name, str(version), f"{alias}.reason", reason[:4000])
    client.set_model_version_tag(name, str(version), f"{alias}.replaced", previous.version if previous else "")
    return previous.version if previous else None


@dataclass(frozen=True, slots=True)
class LoadedChampion:
    model: Any
    info: ModelVersionInfo


def load_champion(
    tracking_uri: str, name: str, load: Callable[[str], Any], alias: str = CHAMPION_ALIAS
) -> LoadedChampion:
    """The model behind `alias`, loaded by version number so model and metadata agree.

    `load` is the family's loader (models:/ URI -> its model object). Raises LookupError when
    there is no such alias yet (nothing has been trained).
    """
    info = champion_info(tracking_uri, name, alias)
    if info is None:
        raise LookupError(f"models:/{name}@{alias} does not exist yet: materialize the {name} asset first")
    use_tracking_uri(tracking_uri)
    return LoadedChampion(model=load(info.uri), info=info)
