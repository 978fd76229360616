"""Errors as RFC 9457 problem details (`application/problem+json`), for every route and status.

One shape for every failure, validation errors and an unavailable store included, so clients
parse a single format and branch on `status` and `type`.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from factory_pipelines.store import StoreUnavailableError

PROBLEM_MEDIA_TYPE = "application/problem+json"

# Problem types of our own; "about:blank" stands for "nothing more than the HTTP status".
VALIDATION_ERROR = "urn:factory-pipelines:problem:validation-error"
STORE_UNAVAILABLE = "urn:factory-pipelines:problem:store-unavailable"
NOT_FOUND = "urn:factory-pipelines:problem:not-found"
UNAUTHENTICATED = "urn:factory-pipelines:problem:unauthenticated"
FORBIDDEN = "urn:factory-pipelines:problem:forbidden"
INTERNAL_ERROR = "urn:factory-pipelines:problem:internal-error"
CONTENT_TOO_LARGE = "urn:factory-pipelines:problem:content-too-large"

STORE_RETRY_AFTER_S = 5


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where the bad value was, e.g. ['query', 'limit'].")
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details; extension members (such as `errors`) may follow."""

    model_config = ConfigDict(extra="allow")

    type: str = Field("about:blank", description="URI identifying the kind of problem.")
    title: str = Field(description="Short, human-readable summary of the kind of problem.")
    status: int = Field(description="HTTP status code.")
    detail: str | None = Field(None, description="Explanation specific to this occurrence.")
    instance: str | None = Field(None, description="The request path that caused it.")
    errors: list[FieldError] | None = Field(None, description="Validation errors, one per bad value (422 only).")


class ProblemError(Exception):
    """Raised by route code to answer with a problem of our own type."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type_: str = "about:blank",
        title: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers


def problem_response(
    request: Request,
    status: int,
    *,
    detail: str | None = None,
    type_: str = "about:blank",
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body = Problem(
        type=type_,
        title=title or HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=request.url.path,
        **extensions,
    )
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting problem+json answers for these statuses."""
    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


def _field_errors(errors: Sequence[Any]) -> list[FieldError]:
    return [
        FieldError(
            loc=[part if isinstance(part, int) else str(part) for part in err.get("loc", ())],
            msg=err["msg"],
            type=err["type"],
        )
        for err in errors
    ]


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _field_errors(exc.errors())
    detail = "; ".join(f"{'.'.join(str(p) for p in e.loc)}: {e.msg}" for e in errors) or "invalid request"
    return problem_response(
        request,
        422,
        detail=detail,
        type_=VALIDATION_ERROR,
        title="Request validation failed",
        errors=[e.model_dump() for e in errors],
    )


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else None
    return problem_response(request, exc.status_code, detail=detail, headers=dict(exc.headers or {}))


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(
        request, exc.status, detail=exc.detail, type_=exc.type, title=exc.title, headers=exc.headers
    )


async def _on_store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return problem_response(
        request,
        503,
        detail=str(exc),
        type_=STORE_UNAVAILABLE,
        title="Serving store unavailable",
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after answering, so the server logs the traceback; the client learns no internals.
    return problem_response(request, 500, detail="internal server error", type_=INTERNAL_ERROR)


def _document_problems_only(app: FastAPI) -> None:
    """FastAPI lists every `responses=` model as application/json too; errors are only problem+json."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()  # FastAPI caches it, so this clean-up runs once
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for response in operation.get("responses", {}).values():
                    content = response.get("content", {})
                    if PROBLEM_MEDIA_TYPE in content:
                        content.pop("application/json", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error, including FastAPI's own 404/405/422, as problem+json, and document it so."""
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(StoreUnavailableError, _on_store_unavailable)
    app.add_exception_handler(Exception, _on_unexpected)
    _document_problems_only(app)
