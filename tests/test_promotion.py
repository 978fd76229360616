"""The champion gate's decision rule, and the gate against a real MLflow registry."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from factory_pipelines.model_registry import champion_info, ensure_experiment, use_tracking_uri
from factory_pipelines.promotion import GateError, PromotionRecord, decide, gate_candidate
from factory_pipelines.store import ServingStore


@pytest.mark.parametrize(
    ("higher", "candidate", "champion", "tolerance", "promote"),
    [
        (True, 0.8, 0.7, 0.0, True),
        (True, 0.7, 0.7, 0.0, True),  # "at least as good" includes a tie
        (True, 0.69, 0.7, 0.0, False),
        (True, 0.69, 0.7, 0.02, True),
        (False, 11.0, 12.0, 0.0, True),  # RMSE: lower is better
        (False, 12.5, 12.0, 0.0, False),
        (False, 12.5, 12.0, 0.5, True),
    ],
)
def test_decision_compares_in_the_metric_direction(
    higher: bool, candidate: float, champion: float, tolerance: float, promote: bool
) -> None:
    decision = decide(
        "m",
        higher_is_better=higher,
        candidate_score=candidate,
        champion_score=champion,
        champion_version="3",
        tolerance=tolerance,
    )
    assert decision.promote is promote
    assert "champion v3" in decision.reason


def test_first_version_forced_and_unscorable_champion() -> None:
    assert decide("m", higher_is_better=True, candidate_score=0.1, champion_score=None, champion_version=None).promote
    forced = decide(
        "m", higher_is_better=True, candidate_score=0.1, champion_score=0.9, champion_version="2", force=True
    )
    assert forced.promote and "forced" in forced.reason
    blind = decide(
        "m",
        higher_is_better=True,
        candidate_score=0.9,
        champion_score=None,
        champion_version="2",
        champion_error="KeyError: 'feature_x'",
    )
    assert not blind.promote and "feature_x" in blind.reason


def _register(tracking_uri: str, name: str, cut: float, tmp: Path) -> str:
    """A version whose only content is its run's `cut` parameter: the scorer reads it back."""
    import mlflow
    from mlflow.pyfunc import PythonModel

    class Cut(PythonModel):
        def predict(self, context: Any, model_input: list[float], params: dict[str, Any] | None = None) -> list[float]:
            return model_input

    use_tracking_uri(tracking_uri)
    experiment = ensure_experiment(tracking_uri, name, tmp / "artifacts")
    with mlflow.start_run(experiment_id=experiment):
        mlflow.log_param("cut", cut)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=Cut(), registered_model_name=name, pip_requirements=[]
        )
    return str(info.registered_model_version)


def test_gate_scores_both_versions_moves_aliases_and_the_store_keeps_the_record(tmp_path: Path) -> None:
    import mlflow

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    name = "toy"
    cuts = {}
    truth = np.array([0.1, 0.4, 0.6, 0.9]) > 0.5

    def score(uri: str) -> dict[str, float]:
        version = uri.rsplit("/", 1)[1]
        run = mlflow.get_run(mlflow.MlflowClient().get_model_version(name, version).run_id)
        cut = float(run.data.params["cut"])
        cuts[version] = cut
        predicted = np.array([0.1, 0.4, 0.6, 0.9]) > cut
        return {"accuracy": float((predicted == truth).mean())}

    first = _register(tracking_uri, name, 0.5, tmp_path)
    record = gate_candidate(
        tracking_uri, name, first, score=score, metric="accuracy", higher_is_better=True, decided_by="test"
    )
    assert record.promoted and record.previous_champion is None and record.candidate_score == 1.0

    worse = _register(tracking_uri, name, 0.95, tmp_path)
    refused = gate_candidate(
        tracking_uri, name, worse, score=score, metric="accuracy", higher_is_better=True, decided_by="test"
    )
    assert not refused.promoted and refused.alias == "challenger"
    assert refused.champion_score == 1.0 and refused.candidate_score == 0.5
    assert cuts == {"1": 0.5, "2": 0.95}  # both versions were loaded and scored
    assert champion_info(tracking_uri, name).version == "1"  # type: ignore[union-attr]
    assert champion_info(tracking_uri, name, "challenger").version == "2"  # type: ignore[union-attr]

    with pytest.raises(GateError, match="no finite 'recall'"):
        gate_candidate(tracking_uri, name, worse, score=score, metric="recall", higher_is_better=True, decided_by="t")

    store = ServingStore(f"sqlite:///{tmp_path / 'serving.db'}")
    try:
        store.record_promotion(record)
        store.record_promotion(refused)
        history = store.promotion_history(model_name=name)
        assert [r.candidate_version for r in history] == ["2", "1"]
        assert history[0] == refused
        assert store.promotion_history(model_name="other") == []
    finally:
        store.dispose()


def test_record_round_trips_through_a_dict() -> None:
    record = PromotionRecord(
        model_name="m",
        candidate_version="2",
        alias="champion",
        previous_champion="1",
        promoted=True,
        forced=False,
        metric="f1",
        higher_is_better=True,
        candidate_score=0.9,
        champion_score=0.8,
        reason="at least as good",
        decided_at=datetime(2026, 11, 25, tzinfo=UTC),
        decided_by="dagster run x",
        candidate_metrics={"f1": 0.9},
        champion_metrics={"f1": 0.8},
    )
    data = record.as_dict()
    assert data["decided_at"] == "2026-11-25T00:00:00+00:00" and data["champion_metrics"] == {"f1": 0.8}
