"""`GET /predictions/latest` and `GET /predictions/history`: what the models said, with lineage.

Each row carries the model version, MLflow run and Dagster run that produced it, so a client can
trace any score back to the model and the data window behind it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from factory_pipelines.store import PredictionPage, ServingStore
from factory_pipelines.telemetry import Prediction
from serving.context import ServingContext, get_context
from serving.datetimes import IsoDatetime, as_utc
from serving.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Offset, next_offset
from serving.problems import problem_responses

router = APIRouter(prefix="/predictions", tags=["predictions"])

ModelFilter = Annotated[
    str | None, Query(max_length=64, description="Only this model, e.g. energy_iforest.", examples=["energy_iforest"])
]
AssetFilter = Annotated[str | None, Query(max_length=128, description="Only this asset.", examples=["M001"])]


class PredictionOut(Prediction):
    """One prediction as the API shows it: the contract's fields, times with an explicit +00:00 offset.

    Model-specific extras (e.g. an interval's bounds) follow the contract's fields.
    """

    produced_at: IsoDatetime
    window_start: IsoDatetime | None = None
    window_end: IsoDatetime | None = None

    @classmethod
    def of(cls, prediction: Prediction) -> PredictionOut:
        return cls.model_validate(prediction.model_dump())


class LatestPredictions(BaseModel):
    items: list[PredictionOut] = Field(description="The newest prediction per (model, asset), by model then asset.")


class PredictionHistory(BaseModel):
    items: list[PredictionOut] = Field(description="Newest window first.")
    total: int = Field(description="Predictions matching the filters, over all pages.")
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last page.")


@router.get(
    "/latest",
    summary="Latest prediction per (model, asset)",
    response_model=LatestPredictions,
    responses=problem_responses(422, 503),
)
async def latest_predictions(
    context: Annotated[ServingContext, Depends(get_context)],
    model: ModelFilter = None,
    asset_id: AssetFilter = None,
) -> Response:
    """The prediction of the newest window for every (model, asset) pair matching the filters.

    Answers may be up to a second old (predictions change once per window).
    """

    def answer() -> bytes:
        rows = context.store.use(lambda store: store.latest_predictions(model_name=model, asset_id=asset_id))
        return LatestPredictions(items=[PredictionOut.of(p) for p in rows]).model_dump_json().encode()

    body = await context.answers.answer(("predictions/latest", model, asset_id), answer)
    return Response(body, media_type="application/json")


@router.get(
    "/history",
    summary="Predictions over a time range, paged",
    response_model=PredictionHistory,
    responses=problem_responses(422, 503),
)
def prediction_history(
    context: Annotated[ServingContext, Depends(get_context)],
    model: ModelFilter = None,
    asset_id: AssetFilter = None,
    start: Annotated[datetime | None, Query(description="Windows starting at or after this time.")] = None,
    end: Annotated[datetime | None, Query(description="Windows starting before this time.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Page size.")] = DEFAULT_PAGE_SIZE,
    offset: Offset = 0,
) -> PredictionHistory:
    """Predictions whose window starts in [start, end), newest window first.

    Times are ISO 8601; a time without an offset is taken as UTC.
    """
    start_utc = as_utc(start) if start else None
    end_utc = as_utc(end) if end else None
    if start_utc and end_utc and start_utc >= end_utc:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "end"), "msg": "end must be later than start", "input": end}]
        )

    def read(store: ServingStore) -> PredictionPage:
        return store.prediction_history(
            model_name=model, asset_id=asset_id, start=start_utc, end=end_utc, limit=limit, offset=offset
        )

    page = context.store.use(read)
    return PredictionHistory(
        items=[PredictionOut.of(p) for p in page.items],
        total=page.total,
        limit=limit,
        offset=offset,
        next_offset=next_offset(offset, len(page.items), page.total),
    )
