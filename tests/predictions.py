"""A prediction of the minute before now, as a prediction asset would have written it (for live-feed tests)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from factory_pipelines.telemetry import Prediction


def recent_prediction(
    model: str, asset: str, score: float, label: str, minutes_ago: int = 0, **extra: Any
) -> Prediction:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=minutes_ago + 1)
    return Prediction(
        model_name=model,
        model_version="3",
        asset_id=asset,
        window_key=f"w-{start:%H%M}-{uuid.uuid4().hex[:4]}",
        score=score,
        label=label,
        produced_at=start + timedelta(seconds=70),
        window_start=start,
        window_end=start + timedelta(minutes=1),
        **extra,
    )
