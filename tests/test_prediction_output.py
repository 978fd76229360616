"""A window's predictions frame (`ScoringRun.stamped`) and the `Prediction`s the store and MQTT get from it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from pydantic import ValidationError

from assets.prediction_output import PREDICTION_COLUMNS, ScoringRun, predictions_of
from factory_pipelines.model_registry import LoadedChampion, ModelVersionInfo
from factory_pipelines.telemetry import Prediction
from factory_pipelines.windows import window_key

START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
KEY = window_key(START, "collector-1")


def scoring_run(run_id: str | None = "mlflow-run-1") -> ScoringRun:
    info = ModelVersionInfo("energy_iforest", "7", "champion", run_id, None, {})
    return ScoringRun("energy_iforest", LoadedChampion(model=None, info=info), "dagster-run-1", 60.0)


def test_the_columns_are_the_contract_fields_in_order() -> None:
    assert list(PREDICTION_COLUMNS) == list(Prediction.model_fields)


def test_stamped_rows_are_the_predictions_a_row_by_row_build_would_make() -> None:
    run = scoring_run()
    verdicts = pl.DataFrame(
        {"asset_id": ["m-1", "m-2"], "score": [0.25, 0.75], "label": ["normal", "anomaly"], "threshold": [0.5, 0.5]}
    )
    frame = run.stamped(KEY, verdicts)
    assert frame.columns == [*PREDICTION_COLUMNS, "threshold"]
    assert dict(frame.schema) == {**PREDICTION_COLUMNS, "threshold": pl.Float64()}
    expected = [
        Prediction(
            model_name="energy_iforest",
            model_version="7",
            asset_id=asset_id,
            window_key=KEY,
            score=score,
            label=label,
            produced_at=run.produced_at,
            window_start=START,
            window_end=START + timedelta(seconds=60),
            mlflow_run_id="mlflow-run-1",
            dagster_run_id="dagster-run-1",
            threshold=0.5,
        )
        for asset_id, score, label in [("m-1", 0.25, "normal"), ("m-2", 0.75, "anomaly")]
    ]
    got = predictions_of(frame)
    assert got == expected
    assert [p.model_dump_json() for p in got] == [p.model_dump_json() for p in expected]


def test_a_champion_without_a_run_id_stamps_null_and_an_empty_window_stays_empty() -> None:
    run = scoring_run(run_id=None)
    frame = run.stamped(KEY, pl.DataFrame({"asset_id": ["m-1"], "score": [1], "label": ["normal"]}))
    assert frame["mlflow_run_id"].to_list() == [None]
    assert frame.schema["score"] == pl.Float64()
    no_rows = pl.DataFrame(schema={"asset_id": pl.String(), "score": pl.Float64(), "label": pl.String()})
    empty = run.stamped(KEY, no_rows)
    assert empty.height == 0 and list(empty.schema) == list(PREDICTION_COLUMNS)
    assert predictions_of(empty) == []


def test_a_frame_breaking_the_contract_is_refused_before_the_store_or_mqtt_see_it() -> None:
    frame = scoring_run().stamped(KEY, pl.DataFrame({"asset_id": ["m-1"], "score": [0.1], "label": [None]}))
    with pytest.raises(ValidationError, match="label"):
        predictions_of(frame)


def test_verdicts_given_as_columns_take_one_value_for_every_row_and_must_agree_in_length() -> None:
    run = scoring_run()
    scores = pl.Series("probability", [0.25, 0.75])
    columns = {"asset_id": pl.Series(["m-1", "m-2"]), "score": scores, "label": pl.Series(["normal", "anomaly"])}
    frame = run.stamped(KEY, {**columns, "threshold": 0.5, "window_key": pl.Series(["ignored", "ignored"])})
    assert frame.columns == [*PREDICTION_COLUMNS, "threshold"]
    assert frame["threshold"].to_list() == [0.5, 0.5] and frame["score"].to_list() == [0.25, 0.75]
    assert frame["window_key"].to_list() == [KEY, KEY]  # the stamp's, never a verdict's
    assert frame.equals(run.stamped(KEY, pl.DataFrame({**columns, "score": scores.alias("score"), "threshold": 0.5})))
    with pytest.raises(ValueError, match="'label' has 1 rows"):
        run.stamped(KEY, {**columns, "label": pl.Series(["normal"])})
    with pytest.raises(ValueError, match="lack score"):
        run.stamped(KEY, {"asset_id": columns["asset_id"], "label": columns["label"]})
