"""Walk an alert back to where it came from: alert -> prediction -> window file -> model version ->
MLflow run -> training datasets -> Dagster runs and code version.

Each step reads the system that owns that fact (the serving store, the data dir, the MLflow
registry and tracking store, the Dagster instance), so the walk shows what is recorded, not what
the alert claims. A step that cannot be followed says why and the walk goes on with what is known.
`factory lineage ALERT_ID` prints it; notebooks call `walk_lineage`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.alert_model import AlertRecord
from factory_pipelines.settings import FactorySettings
from factory_pipelines.storage import StoragePath
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import Prediction
from factory_pipelines.windows import WindowKeyError, sealed_window_path

StepKind = Literal[
    "alert", "prediction", "window", "model_version", "mlflow_run", "dataset", "dagster_run", "code_version"
]


class LineageStep(BaseModel):
    kind: StepKind
    ref: str | None = Field(description="The id or path of this step, e.g. a window key, an MLflow run id.")
    found: bool = Field(description="Whether the system that owns it still has it.")
    summary: str
    details: dict[str, Any] = Field(default_factory=dict)


class Lineage(BaseModel):
    alert_id: str
    steps: list[LineageStep]

    def step(self, kind: StepKind) -> LineageStep | None:
        return next((s for s in self.steps if s.kind == kind), None)

    def as_text(self) -> str:
        lines = [f"lineage of alert {self.alert_id}"]
        for number, step in enumerate(self.steps):
            mark = "" if step.found else "  [not found]"
            lines.append(f"{'  ' * min(number, 1)}{'└─ ' if number else ''}{step.kind}: {step.summary}{mark}")
            for key, value in step.details.items():
                if value not in (None, "", [], {}):
                    lines.append(f"      {key}: {value}")
        return "\n".join(lines) + "\n"


class UnknownAlertError(LookupError):
    pass


def walk_lineage(settings: FactorySettings, alert_id: str) -> Lineage:
    """The alert's lineage, step by step; UnknownAlertError when the store has no such alert."""
    store = ServingStore(settings.resolved_db_url)
    try:
        try:
            alert = AlertBook(store.engine).get(alert_id)
        except KeyError:
            raise UnknownAlertError(
                f"no alert {alert_id!r} in the serving store at {settings.resolved_db_url}"
            ) from None
        steps = [_alert_step(alert)]
        prediction = _prediction(store, alert)
        steps.append(_prediction_step(alert, prediction))
    finally:
        store.dispose()
    window_key = alert.lineage.window_key or (prediction.window_key if prediction else None)
    steps.append(_window_step(settings, window_key, alert.lineage.model_name))
    model_name = alert.lineage.model_name or (prediction.model_name if prediction else None)
    version = alert.lineage.model_version or (prediction.model_version if prediction else None)
    run_id = alert.lineage.mlflow_run_id or (prediction.mlflow_run_id if prediction else None)
    steps += _mlflow_steps(settings, model_name, version, run_id)
    training_run = next((s.details.get("dagster_run_id") for s in steps if s.kind == "mlflow_run"), None)
    scoring_run = alert.lineage.dagster_run_id or (prediction.dagster_run_id if prediction else None)
    for role, dagster_run_id in (
        ("scored the window", scoring_run),
        ("raised the alert", alert.lineage.orchestrator_run_id),
        ("trained the model", training_run),
    ):
        if dagster_run_id:
            steps.append(_dagster_step(settings, dagster_run_id, role))
    return Lineage(alert_id=alert_id, steps=steps)


def _alert_step(alert: AlertRecord) -> LineageStep:
    return LineageStep(
        kind="alert",
        ref=alert.alert_id,
        found=True,
        summary=f"{alert.severity.value} {alert.type} on {alert.asset_id or alert.source}: {alert.message}",
        details={
            "state": alert.state.value,
            "first_seen": alert.first_seen.isoformat(),
            "rule": alert.rule,
            "source": alert.source,
            "evidence": alert.evidence,
            "plan_action": alert.plan.action if alert.plan else None,
        },
    )


def _prediction(store: ServingStore, alert: AlertRecord) -> Prediction | None:
    lineage = alert.lineage
    if not (lineage.model_name and lineage.window_key and alert.asset_id):
        return None
    return store.prediction(lineage.model_name, lineage.window_key, alert.asset_id)


def _prediction_step(alert: AlertRecord, prediction: Prediction | None) -> LineageStep:
    expected = alert.lineage.prediction_id
    if prediction is None:
        why = "the alert came from telemetry or another system" if not alert.lineage.model_name else "not in the store"
        return LineageStep(kind="prediction", ref=expected, found=False, summary=f"no prediction ({why})")
    extra = prediction.model_extra or {}
    return LineageStep(
        kind="prediction",
        ref=prediction.prediction_id,
        found=True,
        summary=f"{prediction.model_name} v{prediction.model_version} said {prediction.label} "
        f"(score {prediction.score:.4g}) for {prediction.asset_id}",
        details={
            "window_start": prediction.window_start.isoformat() if prediction.window_start else None,
            "produced_at": prediction.produced_at.isoformat(),
            **{k: v for k, v in extra.items() if isinstance(v, int | float | str)},
        },
    )


def _window_step(settings: FactorySettings, window_key: str | None, model_name: str | None) -> LineageStep:
    if not window_key:
        return LineageStep(kind="window", ref=None, found=False, summary="the alert names no data window")
    try:
        sealed = sealed_window_path(settings.store_windows_dir, window_key)
    except WindowKeyError as exc:
        return LineageStep(kind="window", ref=window_key, found=False, summary=str(exc))
    files: dict[str, StoragePath] = {"sealed window": sealed}
    if model_name:
        files["prediction partition"] = settings.predictions_dir / model_name / f"{window_key}.parquet"
    try:
        present = {name: str(path) for name, path in files.items() if path.exists()}
    except Exception as exc:  # object storage that does not answer raises its client's own errors
        return LineageStep(
            kind="window",
            ref=window_key,
            found=False,
            summary=f"window {window_key} (storage not reachable: {type(exc).__name__})",
        )
    found = "sealed window" in present
    return LineageStep(
        kind="window",
        ref=window_key,
        found=found,
        summary=f"window {window_key}" + ("" if found else f" (no sealed file at {sealed})"),
        details=present,
    )


def _mlflow_steps(
    settings: FactorySettings, model_name: str | None, version: str | None, run_id: str | None
) -> list[LineageStep]:
    if not (model_name and (version or run_id)):
        return []
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.resolved_mlflow_uri, registry_uri=settings.resolved_mlflow_uri)
    steps: list[LineageStep] = []
    if version:
        try:
            registered = client.get_model_version(model_name, version)
            run_id = run_id or registered.run_id
            steps.append(
                LineageStep(
                    kind="model_version",
                    ref=f"models:/{model_name}/{version}",
                    found=True,
                    summary=f"{model_name} version {version}, registered from run {registered.run_id}",
                    details={
                        "aliases": list(registered.aliases),
                        "created": datetime.fromtimestamp(registered.creation_timestamp / 1000, UTC).isoformat(),
                    },
                )
            )
        except MlflowException as exc:
            steps.append(_missing("model_version", f"models:/{model_name}/{version}", exc))
    if not run_id:
        return steps
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        return [*steps, _missing("mlflow_run", run_id, exc)]
    tags = run.data.tags
    steps.append(
        LineageStep(
            kind="mlflow_run",
            ref=run_id,
            found=True,
            summary=f"MLflow run {run.info.run_name or run_id} ({run.info.status})",
            details={
                "dagster_run_id": tags.get("dagster_run_id"),
                "metrics": {k: round(v, 4) for k, v in sorted(run.data.metrics.items())},
                "params": dict(sorted(run.data.params.items())),
            },
        )
    )
    for dataset_input in run.inputs.dataset_inputs:
        dataset = dataset_input.dataset
        context = next((t.value for t in dataset_input.tags if t.key == "mlflow.data.context"), None)
        steps.append(
            LineageStep(
                kind="dataset",
                ref=dataset.digest,
                found=True,
                summary=f"{context or 'input'} dataset {dataset.name}, digest {dataset.digest}",
                details={"source": dataset.source, "source_type": dataset.source_type},
            )
        )
    commit = tags.get("mlflow.source.git.commit") or run.data.params.get("code_version")
    steps.append(
        LineageStep(
            kind="code_version",
            ref=commit,
            found=bool(commit and commit != "unknown"),
            summary=f"trained from commit {commit}" if commit else "no code version recorded",
        )
    )
    return steps


def _dagster_step(settings: FactorySettings, run_id: str, role: str) -> LineageStep:
    from dagster import DagsterInstance

    home = settings.dagster_home
    if not (home / "dagster.yaml").is_file():
        return LineageStep(
            kind="dagster_run", ref=run_id, found=False, summary=f"{role}: no Dagster instance at {home}"
        )
    with DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_run_by_id(run_id)
    if run is None:
        return LineageStep(kind="dagster_run", ref=run_id, found=False, summary=f"{role}: run not in the instance")
    return LineageStep(
        kind="dagster_run",
        ref=run_id,
        found=True,
        summary=f"{role}: Dagster run of {run.job_name} ({run.status.value})",
        details={
            "partition": run.tags.get("dagster/partition"),
            "partition_range": " .. ".join(
                v
                for k in ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
                if (v := run.tags.get(k))
            ),
        },
    )


def _missing(kind: StepKind, ref: str, exc: Exception) -> LineageStep:
    return LineageStep(kind=kind, ref=ref, found=False, summary=str(exc).splitlines()[0][:200])
