"""The champion gate: a new version takes `champion` only if it scores at least as well.

Both the candidate and the current champion are loaded from the registry and scored on the same
validation data by the family's own `evaluate`, so the comparison is of what would be served,
not of numbers logged at different times on different data. A refused candidate keeps the
`challenger` alias. MLflow keeps no alias history, so every decision becomes a
`PromotionRecord`: returned to the training asset (its check metadata), written to the serving
store, and left as tags on the version.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from factory_pipelines.model_registry import ModelVersionInfo

Scorer = Callable[[str], Mapping[str, float]]
"""Scores the model at a `models:/...` URI on the validation data; its metrics by name."""


class GateError(RuntimeError):
    """The candidate could not be scored: nothing was promoted (the check fails with an error)."""


@dataclass(frozen=True, slots=True)
class GateDecision:
    promote: bool
    reason: str


def decide(
    metric: str,
    *,
    higher_is_better: bool,
    candidate_score: float,
    champion_score: float | None,
    champion_version: str | None,
    tolerance: float = 0.0,
    force: bool = False,
    champion_error: str | None = None,
) -> GateDecision:
    """Promote when there is no champion, when forced, or when the candidate is at least as good.

    `tolerance` is how much worse (in the metric's units) still counts as "as good", for noisy
    metrics; 0 means strictly no worse.
    """
    if force:
        return GateDecision(True, f"forced promotion by config ({metric} {candidate_score:.6g})")
    if champion_version is None:
        return GateDecision(True, f"first version: no champion yet ({metric} {candidate_score:.6g})")
    if champion_score is None:
        why = champion_error or "no score"
        return GateDecision(
            False, f"champion v{champion_version} could not be scored on this data ({why}); force to replace it"
        )
    if higher_is_better:
        good_enough = candidate_score >= champion_score - tolerance
        direction = "higher is better"
    else:
        good_enough = candidate_score <= champion_score + tolerance
        direction = "lower is better"
    comparison = f"{metric} {candidate_score:.6g} vs champion v{champion_version} {champion_score:.6g} ({direction}"
    comparison += f", tolerance {tolerance:g})" if tolerance else ")"
    if good_enough:
        return GateDecision(True, f"at least as good: {comparison}")
    return GateDecision(False, f"worse than the champion: {comparison}")


@dataclass(frozen=True, slots=True)
class PromotionRecord:
    """One gate decision; `alias` is what the candidate got (`champion` or `challenger`)."""

    model_name: str
    candidate_version: str
    alias: str
    previous_champion: str | None
    promoted: bool
    forced: bool
    metric: str
    higher_is_better: bool
    candidate_score: float | None
    champion_score: float | None
    reason: str
    decided_at: datetime
    decided_by: str
    mlflow_run_id: str | None = None
    dagster_run_id: str | None = None
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["decided_at"] = self.decided_at.isoformat()
        return data


def _finite_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items() if isinstance(value, int | float)}


def gate_candidate(
    tracking_uri: str,
    name: str,
    candidate_version: str,
    *,
    score: Scorer,
    metric: str,
    higher_is_better: bool,
    decided_by: str,
    force: bool = False,
    tolerance: float = 0.0,
    mlflow_run_id: str | None = None,
    dagster_run_id: str | None = None,
) -> PromotionRecord:
    """Score candidate and champion with `score`, move the alias, and return the record of it."""
    # Imported here, not at the top: the serving store imports this module for PromotionRecord, and
    # the collector reaches the store through its settings; it must not pay MLflow's import on every start.
    from factory_pipelines.model_registry import CHALLENGER_ALIAS, CHAMPION_ALIAS, champion_info, set_alias

    champion: ModelVersionInfo | None = champion_info(tracking_uri, name)
    if champion is not None and champion.version == str(candidate_version):
        champion = None  # re-gating the champion itself: nothing to compare against
    try:
        candidate_metrics = _finite_metrics(score(f"models:/{name}/{candidate_version}"))
    except Exception as exc:  # a model that cannot be scored must never be promoted
        raise GateError(f"{name} v{candidate_version} could not be scored: {exc}") from exc
    candidate_score = candidate_metrics.get(metric)
    if candidate_score is None or not math.isfinite(candidate_score):
        raise GateError(f"{name} v{candidate_version} has no finite {metric!r} (got {candidate_metrics})")

    champion_metrics: dict[str, float] | None = None
    champion_error: str | None = None
    if champion is not None:
        try:
            champion_metrics = _finite_metrics(score(champion.uri))
        except Exception as exc:  # e.g. a champion from before a feature change
            champion_error = f"{type(exc).__name__}: {exc}"
    champion_score = champion_metrics.get(metric) if champion_metrics else None
    if champion_score is not None and not math.isfinite(champion_score):
        champion_score, champion_error = None, f"non-finite {metric}"

    decision = decide(
        metric,
        higher_is_better=higher_is_better,
        candidate_score=candidate_score,
        champion_score=champion_score,
        champion_version=champion.version if champion else None,
        tolerance=tolerance,
        force=force,
        champion_error=champion_error,
    )
    alias = CHAMPION_ALIAS if decision.promote else CHALLENGER_ALIAS
    set_alias(tracking_uri, name, str(candidate_version), alias=alias, decided_by=decided_by, reason=decision.reason)
    return PromotionRecord(
        model_name=name,
        candidate_version=str(candidate_version),
        alias=alias,
        previous_champion=champion.version if champion else None,
        promoted=decision.promote,
        forced=force,
        metric=metric,
        higher_is_better=higher_is_better,
        candidate_score=candidate_score,
        champion_score=champion_score,
        reason=decision.reason,
        decided_at=datetime.now(UTC),
        decided_by=decided_by,
        mlflow_run_id=mlflow_run_id,
        dagster_run_id=dagster_run_id,
        candidate_metrics=candidate_metrics,
        champion_metrics=champion_metrics,
    )
