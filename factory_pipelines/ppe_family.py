"""`ppe_vision` as a model family of the platform: how its data sets are stored and read back.

A split of labelled frames is one Parquet file, one row per frame with its YOLO boxes nested, so
the dataset asset, the training asset and `factory evaluate` pass it around like any other set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from factory_pipelines.ppe_images import BOX_SCHEMA, LabelledFrames
from factory_pipelines.ppe_model import (
    HIGHER_IS_BETTER,
    MODEL_NAME,
    PRIMARY_METRIC,
    evaluate,
    load_frames,
    load_model,
    log_model,
)
from factory_pipelines.training import ModelFamily


def as_stored_frame(data: LabelledFrames) -> pl.DataFrame:
    """One row per frame with its boxes nested (`datasets.store_dataset` keeps one frame per split)."""
    boxes = data.boxes.group_by("frame_id").agg(pl.struct(pl.exclude("frame_id")).alias("boxes"))
    return data.frames.join(boxes, on="frame_id", how="left", maintain_order="left")


def from_stored(frame: pl.DataFrame, _attributes: Mapping[str, str]) -> LabelledFrames:
    """The LabelledFrames that `as_stored_frame` flattened."""
    boxes = frame.select("frame_id", "boxes").explode("boxes").drop_nulls("boxes").unnest("boxes")
    return LabelledFrames(frames=frame.drop("boxes"), boxes=boxes.select(list(BOX_SCHEMA)).cast(BOX_SCHEMA))


def worker_tallies(worker_ids: Sequence[str | None], violations: Sequence[bool]) -> list[dict[str, Any]]:
    """Per worker a camera's frames named (a frame's `worker_id`): frames, and frames in violation.

    The earlier PPE agent answered compliance per worker; a ppe_vision prediction carries these as
    `workers`, so `GET /api/ppe/worker/{id}/compliance` can add them up over any span.
    """
    counts: dict[str, list[int]] = {}
    for worker, violation in zip(worker_ids, violations, strict=True):
        if worker:
            tally = counts.setdefault(worker, [0, 0])
            tally[0] += 1
            tally[1] += int(violation)
    return [{"worker_id": w, "frames": n, "frames_in_violation": k} for w, (n, k) in sorted(counts.items())]


FAMILY = ModelFamily(
    name=MODEL_NAME,
    primary_metric=PRIMARY_METRIC,
    higher_is_better=HIGHER_IS_BETTER,
    log_model=log_model,
    load_model=load_model,
    evaluate=evaluate,
    read_data=load_frames,
    from_stored=from_stored,
)
