"""`GET /schemas`: the JSON schema of every MQTT payload, generated from the telemetry contract.

Device makers and dashboard authors validate against these rather than against prose.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from factory_pipelines.telemetry import PUBLISHED_MODELS, json_schemas
from serving.problems import NOT_FOUND, ProblemError, problem_responses

router = APIRouter(prefix="/schemas", tags=["schemas"])

JsonSchema = dict[str, Any]


@router.get("", summary="JSON schema of every MQTT payload, by model name", response_model=dict[str, JsonSchema])
def all_schemas() -> dict[str, JsonSchema]:
    return json_schemas()


@router.get(
    "/{name}",
    summary="JSON schema of one MQTT payload",
    response_model=JsonSchema,
    responses=problem_responses(404, 422),
)
def one_schema(name: str) -> JsonSchema:
    model = PUBLISHED_MODELS.get(name)
    if model is None:
        known = ", ".join(sorted(PUBLISHED_MODELS))
        raise ProblemError(404, f"no payload schema named {name!r}; known: {known}", type_=NOT_FOUND)
    return model.model_json_schema(by_alias=True)
