"""The scikit-learn boundary: what estimators are handed for a polars frame."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import polars as pl
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline

from factory_pipelines.estimator_input import by_position, estimator_input, float_matrix

FRAME = pl.DataFrame(
    {
        "asset_id": ["m1", "m2", "m3"],
        "temperature": [60.5, None, 71.0],
        "count": pl.Series([1, 2, None], dtype=pl.Int32),
        "load": pl.Series([0.5, 0.25, 1.0], dtype=pl.Float32),
    }
)


def test_the_columns_come_in_the_estimators_order_as_float64_with_nulls_as_nan() -> None:
    matrix = float_matrix(FRAME, ["load", "temperature", "count"])
    assert list(matrix.columns) == ["load", "temperature", "count"]
    assert all(dtype == np.float64 for dtype in matrix.dtypes)
    assert matrix["load"].tolist() == [0.5, 0.25, 1.0]
    assert matrix["temperature"].iloc[0] == 60.5 and math.isnan(matrix["temperature"].iloc[1])
    assert matrix["count"].iloc[1] == 2.0 and math.isnan(matrix["count"].iloc[2])


def test_it_equals_what_pyarrows_conversion_makes() -> None:
    columns = ["temperature", "count", "load"]
    slow = FRAME.select(pl.col(name).cast(pl.Float64) for name in columns).to_pandas()
    fast = float_matrix(FRAME, columns)
    assert fast.equals(slow)


def test_a_column_the_frame_lacks_is_an_error_unless_it_may_be_missing() -> None:
    with pytest.raises(pl.exceptions.ColumnNotFoundError, match="packet_loss"):
        float_matrix(FRAME, ["temperature", "packet_loss"])
    matrix = float_matrix(FRAME, ["temperature", "packet_loss"], absent_as_missing=True)
    assert matrix.shape == (3, 2) and matrix["packet_loss"].isna().all()


def test_an_empty_window_gives_an_empty_matrix_with_the_columns() -> None:
    matrix = float_matrix(FRAME.head(0), ["temperature", "load"])
    assert matrix.shape == (0, 2) and list(matrix.columns) == ["temperature", "load"]


def training_frame(rows: int = 120) -> tuple[pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(7)
    values = rng.normal(size=(rows, 3))
    values[::9, 1] = np.nan
    frame = pl.DataFrame({"a": values[:, 0], "b": values[:, 1], "c": values[:, 2], "asset_id": ["m"] * rows})
    return frame, (values[:, 0] + np.nan_to_num(values[:, 2]) > 0).astype(int)


@pytest.mark.parametrize(
    "fitted",
    [
        lambda x, y: CalibratedClassifierCV(HistGradientBoostingClassifier(max_iter=10), cv=3).fit(x, y),
        lambda x, y: Pipeline([("impute", SimpleImputer()), ("forest", IsolationForest(random_state=0))]).fit(x),
    ],
    ids=["calibrated-boosting", "imputer-forest-pipeline"],
)
def test_an_estimator_by_position_answers_as_it_did_by_name(fitted) -> None:  # noqa: ANN001
    """Names checked once, then a bare array: the same answers, and no name warning (errors in this suite)."""
    frame, labels = training_frame()
    columns = ["a", "b", "c"]
    estimator = fitted(float_matrix(frame, columns), labels)
    answer = estimator.predict_proba if hasattr(estimator, "predict_proba") else estimator.score_samples
    by_name = answer(estimator_input(estimator, frame, columns))
    assert isinstance(estimator_input(estimator, frame, columns), pd.DataFrame)
    by_position(estimator, columns)
    given = estimator_input(estimator, frame, columns)
    assert isinstance(given, np.ndarray) and given.shape == (frame.height, 3)
    np.testing.assert_array_equal(answer(given), by_name)


def test_an_estimator_fitted_on_other_columns_is_refused() -> None:
    frame, labels = training_frame()
    estimator = HistGradientBoostingClassifier(max_iter=5).fit(float_matrix(frame, ["a", "b", "c"]), labels)
    with pytest.raises(ValueError, match="fitted on columns"):
        by_position(estimator, ["a", "c", "b"])
    assert list(estimator.feature_names_in_) == ["a", "b", "c"]  # untouched when refused
