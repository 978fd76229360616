"""The scikit-learn boundary: a polars frame handed to a fitted estimator in the form it takes.

Estimators are fitted on named pandas columns, so the models in MLflow carry their column names
and a pyfunc user gets them checked. For scoring, `by_position` checks the names once when a
champion is loaded and lets it take a bare float array after that: scikit-learn otherwise compares
a frame's names on every call (a calibrated classifier once per calibration member), which cost
as much as a tenth of a window's scoring (benchmarks/scoring.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import polars as pl
from sklearn.base import BaseEstimator

E = TypeVar("E")


def float_columns(frame: pl.DataFrame, columns: Sequence[str], *, absent_as_missing: bool = False) -> np.ndarray:
    """`columns` of `frame` as one float64 array (rows x columns, in that order), nulls as NaN.

    Column by column through numpy: pyarrow's `to_pandas()` cost a 50-row window four times as much.
    With `absent_as_missing` a column the frame lacks is all NaN (the estimators handle missing
    values themselves); otherwise it is an error.
    """
    arrays = []
    for name in columns:
        if name in frame.columns:
            arrays.append(frame.get_column(name).cast(pl.Float64).to_numpy())
        elif absent_as_missing:
            arrays.append(np.full(frame.height, np.nan))
        else:
            raise pl.exceptions.ColumnNotFoundError(f"the estimator needs column {name!r}, which the frame lacks")
    return np.column_stack(arrays) if arrays else np.empty((frame.height, 0))


def float_matrix(frame: pl.DataFrame, columns: Sequence[str], *, absent_as_missing: bool = False) -> pd.DataFrame:
    """The same values as a pandas frame named by `columns`: what estimators are fitted on."""
    matrix = float_columns(frame, columns, absent_as_missing=absent_as_missing)
    return pd.DataFrame(matrix, columns=list(columns), copy=False)


def estimator_input(
    estimator: Any, frame: pl.DataFrame, columns: Sequence[str], *, absent_as_missing: bool = False
) -> np.ndarray | pd.DataFrame:
    """What `estimator` takes: a bare array once `by_position` has checked its names, else the named frame."""
    if getattr(estimator, "feature_names_in_", None) is None:
        return float_columns(frame, columns, absent_as_missing=absent_as_missing)
    return float_matrix(frame, columns, absent_as_missing=absent_as_missing)


def by_position(estimator: E, columns: Sequence[str]) -> E:
    """`estimator` (changed in place) taking columns by position, after checking it was fitted on `columns`."""
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None and list(names) != list(columns):
        raise ValueError(f"the estimator was fitted on columns {list(names)}, not the model's {list(columns)}")
    for part in _fitted_parts(estimator):
        part.__dict__.pop("feature_names_in_", None)
    return estimator


def _fitted_parts(estimator: Any) -> Iterator[Any]:
    """The estimator and every scikit-learn object inside it (pipeline steps, calibration members), once each."""
    seen: set[int] = set()
    pending = [estimator]
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, list | tuple):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif hasattr(item, "__dict__") and (
            isinstance(item, BaseEstimator) or type(item).__module__.startswith("sklearn.")
        ):  # calibration members (_CalibratedClassifier) are not BaseEstimators; compiled trees have no __dict__
            yield item
            pending.extend(vars(item).values())
