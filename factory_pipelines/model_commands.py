"""`factory train`, `factory evaluate` and `factory benchmark`: the model side of the command line.

`train` runs the same Dagster job as the launchpad, in the platform's instance, so the run is in
the Dagster UI and MLflow like any other. `evaluate` scores a registered version on given data.
Each prints one JSON object with `--json` (progress and logs go to stderr).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from factory_pipelines.model_catalog import CATALOG, catalog_entry
from factory_pipelines.settings import FactorySettings, load_settings

console = Console(stderr=True)
benchmark_app = typer.Typer(help="Train and score a model family on a standard data set.", no_args_is_help=True)

MODEL_NAMES = ", ".join(CATALOG)


def settings_or_exit() -> FactorySettings:
    try:
        settings = load_settings()
    except Exception as exc:  # a bad setting must read as one clear line, not a traceback
        console.print(f"[red]settings error:[/red] {exc}")
        raise typer.Exit(2) from exc
    settings.ensure_dirs()
    return settings


def parse_assignments(values: list[str] | None, option: str) -> dict[str, Any]:
    """`["epochs=3", "dataset=cmapss"]` as a config mapping; values typed as YAML scalars."""
    config: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        config[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return config


def emit(result: dict[str, Any], as_json: bool) -> None:
    """One JSON object on stdout with --json; a readable summary on stderr otherwise."""
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
        return
    for key, value in result.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
        console.print(f"[bold]{key}[/bold]: {value}")


def _known_model(name: str) -> str:
    try:
        catalog_entry(name)
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0]), param_hint="NAME") from None
    return name


def _train_one(
    settings: FactorySettings, name: str, dataset_config: dict[str, Any], training_config: dict[str, Any]
) -> dict[str, Any]:
    from factory_pipelines.dagster_instance import run_training_job

    console.print(f"training {name} (Dagster instance {settings.dagster_home}) ...")
    run = run_training_job(settings, name, dataset_config=dataset_config, training_config=training_config)
    meta = run.materialization
    if not run.success:
        console.print(f"[red]training {name} failed[/red]: see run {run.run_id} in the Dagster UI")
    return {
        "model": name,
        "success": run.success,
        "dagster_run_id": run.run_id,
        "registered_name": meta.get("registered_name"),
        "version": meta.get("model_version"),
        "alias": meta.get("alias"),
        "promoted": meta.get("promoted"),
        "reason": run.gate.get("reason"),
        "mlflow_run_id": meta.get("mlflow_run_id"),
        "train_seconds": meta.get("train_seconds"),
        "metrics": run.gate.get("candidate_metrics", {}),
        "champion_metrics": run.gate.get("champion_metrics", {}),
    }


def train(
    name: Annotated[str | None, typer.Argument(help=f"Model to train: {MODEL_NAMES}.")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Training config KEY=VALUE (repeatable).")
    ] = None,
    data: Annotated[
        list[str] | None, typer.Option("--data", "-d", help="Dataset config KEY=VALUE (repeatable).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Promote to champion even if the gate would refuse.")] = False,
    missing: Annotated[
        bool, typer.Option("--missing", help="Train every model that has no champion yet, with its defaults.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="With --missing: list the models it would train, train none.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Build the model's data sets, train it, register a version and gate it, as a Dagster run."""
    if missing:
        if name or param or data:
            raise typer.BadParameter(
                "--missing trains every model without a champion, with defaults: no NAME, -p or -d"
            )
        from factory_pipelines.model_registry import champion_info

        settings = settings_or_exit()
        todo = [n for n in CATALOG if champion_info(settings.resolved_mlflow_uri, n) is None]
        console.print(f"models without a champion: {', '.join(todo) or 'none'}")
        if dry_run:
            emit({"would_train": todo}, as_json)
            return
        results = [_train_one(settings, n, {}, {}) for n in todo]
        emit({"trained": results}, as_json)
        if not all(r["success"] for r in results):
            raise typer.Exit(1)
        return
    if dry_run:
        raise typer.BadParameter("--dry-run goes with --missing", param_hint="--dry-run")
    if name is None:
        raise typer.BadParameter(f"name a model ({MODEL_NAMES}) or pass --missing", param_hint="NAME")
    _known_model(name)
    training_config = parse_assignments(param, "--param")
    if force:
        training_config["force_promotion"] = True
    result = _train_one(settings_or_exit(), name, parse_assignments(data, "--data"), training_config)
    emit(result, as_json)
    if not result["success"]:
        raise typer.Exit(1)


def evaluate(
    name: Annotated[str, typer.Argument(help=f"Registered model: {MODEL_NAMES} (or a benchmark variant).")],
    version: Annotated[str | None, typer.Option(help="Version number; default: the alias.")] = None,
    alias: Annotated[str, typer.Option(help="Alias to score when no --version is given.")] = "champion",
    data: Annotated[
        Path | None,
        typer.Option(
            help="Data to score on (Parquet in the validation layout, or the family's own format); "
            "default: the validation set the dataset asset stored."
        ),
    ] = None,
    family_name: Annotated[
        str | None, typer.Option("--family", help="Model family, when NAME is a variant (e.g. rul_lstm_cmapss_fd001).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Score an already registered version on given data."""
    from factory_pipelines.datasets import load_dataset
    from factory_pipelines.model_registry import champion_info, use_tracking_uri

    entry = catalog_entry(_known_model(family_name or name))
    family = entry.family()
    settings = settings_or_exit()
    tracking_uri = settings.resolved_mlflow_uri
    if version is None:
        info = champion_info(tracking_uri, name, alias)
        if info is None:
            console.print(f"[red]models:/{name}@{alias} does not exist[/red]: train it first (`factory train {name}`)")
            raise typer.Exit(1)
        version = info.version
    if data is None:
        try:
            stored, frame = load_dataset(settings.datasets_dir, entry.name, "validation")
        except FileNotFoundError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
        if stored.registered_name != name:
            console.print(
                f"[red]the stored validation set is {stored.registered_name}'s ({stored.source})[/red]: "
                f"pass --data, or rebuild {entry.dataset_asset} for {name}"
            )
            raise typer.Exit(1)
        validation, source = family.from_stored(frame, stored.attributes), stored.path
    else:
        if not data.exists():
            raise typer.BadParameter(f"{data} does not exist", param_hint="--data")
        validation, source = family.read_data(data), str(data)
    use_tracking_uri(tracking_uri)
    model = family.load_model(f"models:/{name}/{version}")
    metrics = {k: float(v) for k, v in family.evaluate(model, validation).items()}
    emit({"model": name, "version": version, "data": source, "metrics": metrics}, as_json)


def _train_for_benchmark(
    settings: FactorySettings, name: str, dataset_config: dict[str, Any], training_config: dict[str, Any]
) -> dict[str, Any]:
    """Run the model's training job (so the run is in Dagster and MLflow); its materialization metadata."""
    from factory_pipelines.dagster_instance import run_training_job

    console.print(f"training {name} through its Dagster assets ...")
    run = run_training_job(
        settings, name, dataset_config=dataset_config, training_config=training_config, trigger="factory benchmark"
    )
    if not run.success:
        console.print(f"[red]the training run failed[/red]: see run {run.run_id} in the Dagster UI")
        raise typer.Exit(1)
    return {**run.materialization, "dagster_run_id": run.run_id, "gate": run.gate}


PER_TYPE_PREFIXES = ("precision_", "recall_", "f1_", "support_", "detect_recall_")


@benchmark_app.command("cyber")
def benchmark_cyber(
    ton_iot_dir: Annotated[Path, typer.Option(help="Folder with TON_IoT's Train_Test_IoT_*.csv.", exists=True)],
    devices: Annotated[str, typer.Option(help="Comma-separated device files; empty: all seven.")] = "",
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Training config KEY=VALUE.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train cyber_detector_ton_iot on TON_IoT (de-duplicated, earlier rows) and score the later rows."""
    settings = settings_or_exit()
    meta = _train_for_benchmark(
        settings,
        "cyber_detector",
        {"source": "ton_iot", "ton_iot_dir": str(ton_iot_dir.resolve()), "ton_iot_devices": devices},
        parse_assignments(param, "--param"),
    )
    metrics = meta["gate"].get("candidate_metrics", {})
    emit(
        {
            "model": meta.get("registered_name"),
            "version": meta.get("model_version"),
            "f1": metrics.get("f1"),
            "precision": metrics.get("precision"),
            "recall": metrics.get("recall"),
            "baseline_f1": metrics.get("baseline_f1"),
            "per_type": {
                k: v for k, v in metrics.items() if k.split("_")[0] in {"precision", "recall", "f1"} and "_" in k
            },
            "n_test": metrics.get("n_rows"),
            "train_seconds": meta.get("train_seconds"),
            "dagster_run_id": meta["dagster_run_id"],
        },
        as_json,
    )


@benchmark_app.command("safety")
def benchmark_safety(
    zones: Annotated[int, typer.Option(help="Simulated zones.")] = 12,
    windows: Annotated[int, typer.Option(help="Windows per zone (24 h at 60 s windows).")] = 1440,
    seed: Annotated[int, typer.Option(help="Seed of the simulated history.")] = 42,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train safety_hazard on simulated labelled hazard episodes; ROC AUC, Brier and a reliability table."""
    from factory_pipelines import safety_model
    from factory_pipelines.datasets import load_dataset
    from factory_pipelines.model_registry import use_tracking_uri

    settings = settings_or_exit()
    meta = _train_for_benchmark(
        settings,
        "safety_hazard",
        {"simulated_zones": zones, "simulated_windows": windows, "seed": seed, "min_history_windows": 10**9},
        {},
    )
    use_tracking_uri(settings.resolved_mlflow_uri)
    model = safety_model.load_model(str(meta["model_uri"]))
    _stored, validation = load_dataset(settings.datasets_dir, "safety_hazard", "validation")
    metrics = safety_model.evaluate(model, validation)
    table = safety_model.reliability_table(model, validation)
    emit(
        {
            "model": "safety_hazard",
            "version": meta.get("model_version"),
            "roc_auc": metrics["roc_auc"],
            "brier": metrics["brier"],
            "brier_prevalence": metrics["brier_prevalence"],
            "ece": metrics.get("ece"),
            "n_rows": metrics["n_rows"],
            "reliability": table.to_dicts(),
            "train_seconds": meta.get("train_seconds"),
            "dagster_run_id": meta["dagster_run_id"],
        },
        as_json,
    )


@benchmark_app.command("rul")
def benchmark_rul(
    cmapss_dir: Annotated[Path, typer.Option(help="Folder with train_FD00x.txt.", exists=True, file_okay=False)],
    test_dir: Annotated[
        Path, typer.Option(help="Folder with test_FD00x.txt and RUL_FD00x.txt.", exists=True, file_okay=False)
    ],
    subset: Annotated[str, typer.Option(help="FD001, FD002, FD003 or FD004.")] = "FD001",
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Training config KEY=VALUE.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train rul_lstm on TRAIN_DIR/train_FD00x.txt through its assets; score each test engine at its last cycle."""
    from factory_pipelines import rul_model
    from factory_pipelines.model_registry import use_tracking_uri

    subset = subset.upper()
    test_file, rul_file = test_dir / f"test_{subset}.txt", test_dir / f"RUL_{subset}.txt"
    for path in (test_file, rul_file):
        if not path.is_file():
            raise typer.BadParameter(f"{path} not found", param_hint="--test-dir")
    settings = settings_or_exit()
    meta = _train_for_benchmark(
        settings,
        "rul_lstm",
        # 10 % of the engines for the gate's validation: each held-out engine is one fewer to learn from
        {"source": "cmapss", "cmapss_dir": str(cmapss_dir.resolve()), "subset": subset, "validation_fraction": 0.1},
        parse_assignments(param, "--param"),
    )
    use_tracking_uri(settings.resolved_mlflow_uri)
    model = rul_model.load_model(str(meta["model_uri"]))
    metrics = rul_model.evaluate(model, rul_model.cmapss_test_dataset(test_file, rul_file))
    emit(
        {
            "model": meta.get("registered_name"),
            "version": meta.get("model_version"),
            "subset": subset,
            "rmse": metrics["rmse"],
            "phm08_score": metrics["phm08_score"],
            "coverage": metrics["coverage"],
            "mean_interval_width": metrics["mean_interval_width"],
            "confidence": metrics.get("confidence"),
            "n_engines": int(metrics["n_engines"]),
            "history_weight": model.history.weight if model.history is not None else 0.0,
            "train_seconds": meta.get("train_seconds"),
            "dagster_run_id": meta["dagster_run_id"],
        },
        as_json,
    )


@benchmark_app.command("ppe")
def benchmark_ppe(
    train_dir: Annotated[Path, typer.Option(help="YOLO folder (or its train_subset/ valid/ folders).", exists=True)],
    test_dir: Annotated[Path, typer.Option(help="YOLO folder to score (images/, labels/).", exists=True)],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Training config KEY=VALUE.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train ppe_vision on TRAIN_DIR through its assets; per-frame violation P/R/F1 and crop accuracy on TEST_DIR."""
    from factory_pipelines import ppe_model
    from factory_pipelines.model_registry import use_tracking_uri

    settings = settings_or_exit()
    meta = _train_for_benchmark(
        settings,
        "ppe_vision",
        {"source": "folders", "train_dir": str(train_dir.resolve()), "validation_fraction": 0.1},
        parse_assignments(param, "--param"),
    )
    use_tracking_uri(settings.resolved_mlflow_uri)
    model = ppe_model.load_model(str(meta["model_uri"]))
    metrics = ppe_model.evaluate(model, ppe_model.load_frames(test_dir))
    emit(
        {
            "model": meta.get("registered_name"),
            "version": meta.get("model_version"),
            "precision": metrics["precision"],
            "recall": metrics["recall"],
            "f1": metrics["f1"],
            "crop_accuracy": metrics.get("crop_accuracy"),
            # diagnostics: how well the frame score ranks the frames, and the F1 of the best cut on them
            "violation_auc": metrics["violation_auc"],
            "best_f1": metrics["best_f1"],
            "threshold": metrics["threshold"],
            "n_frames": int(metrics["n_frames"]),
            "train_seconds": meta.get("train_seconds"),
            "dagster_run_id": meta["dagster_run_id"],
        },
        as_json,
    )


@benchmark_app.command("anomaly")
def benchmark_anomaly(
    skab_dir: Annotated[Path, typer.Option(help="Folder searched for labelled SKAB runs.", exists=True)],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """energy_iforest's detector under the SKAB protocol: fit each run's first 400 rows, score the rest."""
    from factory_pipelines import skab

    try:  # a bad file under the folder reads as one clear line naming it, not a traceback
        runs = skab.find_labelled_runs(skab_dir)
        if not runs:
            raise typer.BadParameter(f"no labelled SKAB runs (CSV with an `anomaly` column) under {skab_dir}")
        console.print(f"scoring {len(runs)} labelled runs under {skab_dir} ...")
        result = skab.benchmark_skab(skab_dir, skab.SkabParams(), progress=console.print)
    except skab.SkabFormatError as exc:
        raise typer.BadParameter(str(exc), param_hint="--skab-dir") from None
    emit(result if as_json else {k: v for k, v in result.items() if k != "runs"}, as_json)
