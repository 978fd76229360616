"""The history member of `rul_lstm`: gradient-boosted trees over summaries of each unit's whole history.

The LSTM sees a unit's last `window` rows, so it cannot tell how old the unit is, nor how far its
sensors have moved from where this unit started. That start differs from unit to unit: C-MAPSS
engines begin with unknown manufacturing variation and initial wear. Trees over a few summaries of
the whole history can see both:
- the unit's age (its cycle);
- the means of its last 5 and 20 rows;
- the change of the last 20 rows' mean since its first 20 rows;
- least-squares slopes over its last 30 and 60 rows;
- a wear rate: that change divided by the unit's age (at least `BASELINE_ROWS`), so a unit that
  drifted far in few cycles reads differently from one that drifted as far over a long life.

On the C-MAPSS development splits this member alone beat the LSTM by 1 to 6 cycles of RMSE. The
gap was widest on the two-fault-mode and six-condition subsets. `rul_lstm` predicts a blend of both,
weighted on units that neither saw (`choose_weight`). The figures are in
benchmarks/results/models_rul.md.

Every summary is causal (rows up to the predicted one), so training rows see what a prediction at
that row would. It needs each unit's history from its first cycle, so it is only trained for
sources whose `cycle` is the unit's age (C-MAPSS), like the age input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sklearn.ensemble import HistGradientBoostingRegressor

MEAN_ROWS: tuple[int, ...] = (5, 20)  # trailing means over this many rows
BASELINE_ROWS = 20  # a unit's first rows that define its own starting point
SLOPE_ROWS: tuple[int, ...] = (30, 60)  # trailing least-squares slopes over this many rows
TREE_FOLDS = 5  # the trees learn from every training unit; each calibration unit is predicted out of fold
WEIGHT_GRID = np.linspace(0.0, 1.0, 11)  # blend weights `choose_weight` tries
TRUSTED_TYPES: tuple[str, ...] = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)
"""Types a HistGradientBoostingRegressor needs to be loaded back through skops."""


def history_features(
    values: np.ndarray, starts: np.ndarray, cycles: np.ndarray, *, wear_rate: bool = True
) -> np.ndarray:
    """Per row (rows x 1 + 6 * features): age, trailing means, change since the baseline, slopes, wear rate.

    `values` are a frame's normalised features sorted by unit and cycle, `starts` each row's unit
    start row, `cycles` each row's cycle. Units shorter than a span use the rows they have. The wear
    rate comes last, so trees trained without it (`wear_rate=False`, or before it existed) read the
    first 1 + 5 * features columns.
    """
    rows = np.arange(values.shape[0])
    totals = _prefix_sums(values)
    columns = [cycles.astype(np.float64)[:, None]]
    trailing_20 = None
    for span in MEAN_ROWS:
        first = np.maximum(rows - span + 1, starts)
        mean = (totals[rows + 1] - totals[first]) / (rows - first + 1)[:, None]
        columns.append(mean)
        if span == BASELINE_ROWS:
            trailing_20 = mean
    baseline_last = np.minimum(rows, starts + BASELINE_ROWS - 1)
    baseline = (totals[baseline_last + 1] - totals[starts]) / (baseline_last - starts + 1)[:, None]
    change = (trailing_20 if trailing_20 is not None else values) - baseline
    columns.append(change)
    steps = (rows - starts).astype(np.float64)  # the row's step within its unit: small numbers, exact sums
    step_totals, step_squares = _prefix_sums(steps[:, None]), _prefix_sums(steps[:, None] ** 2)
    cross_totals = _prefix_sums(values * steps[:, None])
    for span in SLOPE_ROWS:
        first = np.maximum(rows - span + 1, starts)
        n = (rows - first + 1)[:, None].astype(np.float64)
        s_t = step_totals[rows + 1] - step_totals[first]
        s_tt = step_squares[rows + 1] - step_squares[first]
        s_v = totals[rows + 1] - totals[first]
        s_tv = cross_totals[rows + 1] - cross_totals[first]
        spread = n * s_tt - s_t**2  # 0 for a single row: no slope yet
        columns.append(np.where(spread > 0, (n * s_tv - s_t * s_v) / np.where(spread > 0, spread, 1.0), 0.0))
    if wear_rate:
        columns.append(change / np.maximum(cycles.astype(np.float64), BASELINE_ROWS)[:, None])
    return np.hstack(columns)


def _prefix_sums(values: np.ndarray) -> np.ndarray:
    """Row-wise running totals with a leading zero row: the sum of rows a..b is totals[b + 1] - totals[a]."""
    return np.vstack([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0, dtype=np.float64)])


def fit_trees(features: np.ndarray, targets: np.ndarray, seed: int) -> HistGradientBoostingRegressor:
    """The trees: targets are the capped RUL as a share of the cap, like the LSTM's."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    # Settings from a small sweep on FD001 and FD003 development splits (models_rul.md): many shallow
    # steps, and leaves of at least 100 rows, since neighbouring rows of one unit are near copies.
    return HistGradientBoostingRegressor(
        max_iter=600,
        learning_rate=0.04,
        max_leaf_nodes=31,
        min_samples_leaf=100,
        l2_regularization=1.0,
        random_state=seed,
    ).fit(features, targets)


def choose_weight(truth: np.ndarray, network: np.ndarray, trees: np.ndarray) -> float:
    """The weight of the trees in (1 - w) * network + w * trees that gives the lowest RMSE on these cuts."""
    errors = [np.mean(((1 - w) * network + w * trees - truth) ** 2) for w in WEIGHT_GRID]
    return float(WEIGHT_GRID[int(np.argmin(errors))])


@dataclass(frozen=True, slots=True)
class HistoryMember:
    """The fitted trees and their weight in the blend."""

    trees: HistGradientBoostingRegressor
    weight: float  # share of the trees in the prediction; the network has the rest

    def predict(self, values: np.ndarray, starts: np.ndarray, cycles: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """The trees' RUL, as a share of the cap, at rows `ends` (arguments as for `history_features`)."""
        if ends.size == 0:
            return np.zeros(0)
        features = history_features(values, starts, cycles)[ends]
        # trees without the wear rate (trained without it, or before it existed) read the columns they know
        return np.asarray(self.trees.predict(features[:, : self.trees.n_features_in_]), dtype=np.float64)

    def blend(self, network: np.ndarray, trees: np.ndarray) -> np.ndarray:
        return (1.0 - self.weight) * network + self.weight * trees

    def save(self, path: Path) -> Path:
        import skops.io

        skops.io.dump(self.trees, path)
        return path

    @classmethod
    def load(cls, path: Path, weight: float) -> HistoryMember:
        import skops.io

        return cls(skops.io.load(path, trusted=list(TRUSTED_TYPES)), weight)
