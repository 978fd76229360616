"""PPE compliance: camera frames per window scored by `ppe_vision`, a CNN trained in Dagster.

Thin: the work is in `factory_pipelines.ppe_model` and `ppe_images` (tested without Dagster).
Frames travel over MQTT as small JPEGs (`CameraFrame`); the model gives each a violation
probability, hard-hat and vest verdicts and person regions.
"""

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import polars as pl
from pydantic import Field

from assets.model_gate import (
    StoredSets,
    champion_gate_spec,
    params_as_dict,
    params_from_config,
    train_from_stored_sets,
    training_config,
)
from assets.prediction_output import record_predictions, start_scoring
from assets.telemetry import window_partitions
from factory_pipelines import ppe_family, ppe_images, ppe_model
from factory_pipelines.datasets import store_dataset
from factory_pipelines.resources import (
    MlflowResource,
    MqttPublisherResource,
    PartitionFilesResource,
    ServingStoreResource,
)
from factory_pipelines.training import files_digest

PPE_GROUP = "ppe"
MODEL = ppe_model.MODEL_NAME


class PpeDatasetConfig(dg.Config):
    """Which labelled frames ppe_vision trains on."""

    source: Literal["generated", "folders"] = Field(
        "generated", description="generated: synthetic frames (what the simulated cameras show); folders: YOLO images."
    )
    train_dir: str = Field("", description="source folders: a YOLO folder (images/, labels/) or its split folders.")
    generated_frames: int = Field(600, ge=20, description="source generated: frames to draw.")
    seed: int = Field(42, description="Seed of the generated frames and of the split.")
    validation_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of frames held out (stratified, each clip kept on one side)."
    )


@dg.asset(group_name=PPE_GROUP, kinds={"polars", "parquet"})
def ppe_vision_dataset(config: PpeDatasetConfig, window_files: PartitionFilesResource) -> dg.MaterializeResult:
    """Labelled frames (image paths, YOLO boxes, frame verdicts) split into training and validation."""
    if config.source == "folders":
        if not config.train_dir:
            raise ValueError("source folders needs train_dir (a YOLO folder with images/ and labels/)")
        root = Path(config.train_dir).resolve()
        registered_name = f"{MODEL}_folders"
    else:
        root = window_files.datasets_dir / MODEL / f"generated-{config.generated_frames}-seed{config.seed}"
        if not (root / "images").is_dir():
            ppe_images.write_synthetic_folder(root, config.generated_frames, seed=config.seed)
        registered_name = MODEL
    data = ppe_model.load_frames(root)
    if data.n_frames < 10:
        raise ValueError(f"{root} holds {data.n_frames} labelled frames; at least 10 are needed")
    train, validation = ppe_model.split_frames(data, config.validation_fraction, config.seed)
    source_uri = f"{root}#files={files_digest(Path(p) for p in data.frames['image_path'])}"
    stored = {
        name: store_dataset(
            window_files.datasets_dir,
            MODEL,
            name,
            ppe_family.as_stored_frame(split),
            source=config.source,
            source_uri=source_uri,
            registered_name=registered_name,
        )
        for name, split in (("training", train), ("validation", validation))
    }
    return dg.MaterializeResult(
        metadata={
            "source": config.source,
            "registered_name": registered_name,
            "frames": data.n_frames,
            "violation_share": float(data.frames["violation"].mean() or 0.0),  # type: ignore[arg-type]
            "training_frames": stored["training"].rows,
            "validation_frames": stored["validation"].rows,
            "path": dg.MetadataValue.path(str(root)),
        }
    )


PpeVisionConfig = training_config(
    "PpeVisionConfig", ppe_model.PpeParams, "Hyper-parameters of ppe_vision (set them in the launchpad)."
)


@dg.asset(
    deps=[ppe_vision_dataset],
    group_name=PPE_GROUP,
    kinds={"tensorflow", "mlflow"},
    check_specs=[champion_gate_spec(MODEL)],
)
def ppe_vision(
    context: dg.AssetExecutionContext,
    config: PpeVisionConfig,  # type: ignore[valid-type]
    window_files: PartitionFilesResource,
    mlflow: MlflowResource,
    serving_store: ServingStoreResource,
) -> dg.MaterializeResult:
    """CNN over frames: logged to MLflow, registered, gated against the champion."""
    params = params_from_config(ppe_model.PpeParams, config)
    sets = StoredSets.load(window_files, MODEL)
    train = ppe_family.from_stored(sets.training_rows, sets.training.attributes)
    return train_from_stored_sets(
        context,
        ppe_family.FAMILY,
        config,
        sets=sets,
        fit=lambda: ppe_model.fit(train, params, progress=context.log.info),
        validation=ppe_family.from_stored(sets.validation_rows, sets.validation.attributes),
        params=params_as_dict(params),
        mlflow=mlflow,
        serving_store=serving_store,
    )


@dg.asset(
    partitions_def=window_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["telemetry_window", ppe_vision],
    group_name=PPE_GROUP,
    kinds={"tensorflow", "parquet"},
    output_required=False,
)
def ppe_vision_predictions(
    context: dg.AssetExecutionContext,
    window_files: PartitionFilesResource,
    mlflow: MlflowResource,
    serving_store: ServingStoreResource,
    mqtt: MqttPublisherResource,
) -> Iterator[dg.MaterializeResult]:
    """Per camera and window: the worst frame's violation probability, with its hard-hat and vest verdicts."""
    run = start_scoring(context, mlflow, ppe_family.FAMILY, window_files)
    if run is None:
        return
    by_window: dict[str, pl.DataFrame] = {}
    frames_scored = 0
    for key in context.partition_keys:
        path = window_files.rows_path("cameras", key)
        cameras = window_files.read(path) if path.exists() else pl.DataFrame()
        # Frames that name a worker (older rows files have no such column): tally them per worker too.
        named = "worker_id" in cameras.columns and cameras["worker_id"].null_count() < cameras.height
        verdicts: list[dict[str, Any]] = []
        for (camera,), frames in cameras.group_by("asset_id", maintain_order=True) if cameras.height else []:
            images = [base64.b64decode(text) for text in frames["image_jpeg_b64"]]
            scored = run.model.predict_frames(images)
            frames_scored += len(scored)
            worst = max(range(len(scored)), key=lambda i: scored[i].violation_probability)
            verdict = scored[worst]
            flags = [v.violation for v in scored]
            verdicts.append(
                {
                    "asset_id": str(camera),
                    "score": verdict.violation_probability,
                    "label": "violation" if verdict.violation else "compliant",
                    "zone": frames["zone"][worst],
                    "frames": len(scored),
                    "frames_in_violation": sum(flags),
                    "no_hardhat": verdict.no_hardhat,
                    "no_vest": verdict.no_vest,
                    "threshold": verdict.threshold,
                    **({"workers": ppe_family.worker_tallies(frames["worker_id"].to_list(), flags)} if named else {}),
                }
            )
        by_window[key] = run.stamped(key, pl.DataFrame(verdicts)) if verdicts else pl.DataFrame()
    metadata = record_predictions(context, run, by_window, window_files, serving_store, mqtt)
    yield dg.MaterializeResult(metadata={**metadata, "frames_scored": frames_scored})
