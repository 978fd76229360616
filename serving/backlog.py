"""Shift backlogs over REST: the shift in progress, any shift by its key, the list of written ones,
and the earlier backlog agent's two routes for the clients built against it.

A backlog is answered as JSON (the `Backlog` contract) or, when the request prefers
`text/markdown`, as the Markdown an operations lead reads. Backlogs are written elsewhere (the
shift schedule, `factory backlog`); these routes only read them from the serving store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field

from factory_pipelines.backlog_book import BacklogBook, BacklogPage
from factory_pipelines.backlog_model import Backlog, WriterName, backlog_markdown
from factory_pipelines.shifts import Shift
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import utc_now
from serving.context import ServingContext, get_context
from serving.datetimes import IsoDatetime, iso_utc
from serving.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Offset, next_offset
from serving.problems import NOT_FOUND, VALIDATION_ERROR, ProblemError, problem_responses

router = APIRouter(tags=["backlog"])

MARKDOWN_MEDIA_TYPE = "text/markdown"
JSON_MEDIA_TYPE = "application/json"
COMPAT_HISTORY_DEFAULT_LIMIT = 10  # the earlier backlog agent's default

# The 200 answer comes in two media types; FastAPI documents the JSON one from response_model.
BACKLOG_MEDIA_TYPES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The backlog: JSON by default, Markdown when the request prefers text/markdown.",
        "content": {MARKDOWN_MEDIA_TYPE: {"schema": {"type": "string"}}},
    }
}

ShiftKey = Annotated[
    str,
    Path(
        max_length=40,
        description="The shift's partition key: local start time with its UTC offset.",
        examples=["2026-11-26T06:00+0100"],
    ),
]


class BacklogSummary(BaseModel):
    """One written backlog in a list: enough to pick one and fetch it by key."""

    shift_key: str
    shift_name: str
    start: IsoDatetime = Field(description="Shift start (UTC).")
    end: IsoDatetime = Field(description="Shift end, the next shift's start (UTC).")
    generated_at: IsoDatetime
    writer: WriterName = Field(description="Which writer produced it.")
    task_count: int

    @classmethod
    def of(cls, backlog: Backlog) -> BacklogSummary:
        return cls(
            shift_key=backlog.shift.key,
            shift_name=backlog.shift.name,
            start=backlog.shift.start,
            end=backlog.shift.end,
            generated_at=backlog.generated_at,
            writer=backlog.writer.name,
            task_count=len(backlog.tasks),
        )


class BacklogList(BaseModel):
    items: list[BacklogSummary] = Field(description="Newest shift first.")
    total: int = Field(description="Backlogs written, over all pages.")
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last page.")


class CurrentShiftCompat(BaseModel):
    """The earlier backlog agent's `current_shift` answer; `events` are the shift's tasks."""

    shift_start: str = Field(description="Start of the shift in progress (ISO 8601, UTC).")
    events_count: int
    events: list[dict[str, Any]] = Field(description="The tasks of the shift's backlog, highest priority first.")


class ShiftPeriodCompat(BaseModel):
    start: str
    end: str


class BacklogHistoryEntryCompat(BaseModel):
    backlog_id: str
    generated_at: str
    shift_period: ShiftPeriodCompat
    total_events: int


class BacklogHistoryCompat(BaseModel):
    history: list[BacklogHistoryEntryCompat] = Field(description="Newest shift first.")


def prefers_markdown(accept: str | None) -> bool:
    """Whether an Accept header asks for Markdown over JSON.

    Markdown wins when it is listed with a higher q than application/json, or with the same q and
    earlier; media-type wildcards count for neither, so `*/*` alone keeps JSON.
    """
    if not accept:
        return False
    ranked: dict[str, tuple[float, int]] = {}
    for position, part in enumerate(accept.split(",")):
        media_type, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        ranked.setdefault(media_type.lower(), (quality, position))
    markdown = ranked.get(MARKDOWN_MEDIA_TYPE)
    if markdown is None or markdown[0] <= 0:
        return False
    json = ranked.get(JSON_MEDIA_TYPE)
    if json is None or json[0] <= 0:
        return True
    return markdown[0] > json[0] or (markdown[0] == json[0] and markdown[1] < json[1])


def backlog_answer(backlog: Backlog, request: Request, response: Response) -> Backlog | Response:
    """The backlog in the media type the request prefers; `Vary: Accept` tells caches both exist."""
    location = f"/backlog/{backlog.shift.key}"
    if prefers_markdown(request.headers.get("accept")):
        return Response(
            backlog_markdown(backlog),
            media_type=MARKDOWN_MEDIA_TYPE,
            headers={"Vary": "Accept", "Content-Location": location},
        )
    response.headers["Vary"] = "Accept"
    response.headers["Content-Location"] = location
    return backlog


def _book(store: ServingStore) -> BacklogBook:
    return BacklogBook(store.engine)


def current_shift(context: ServingContext, now: datetime) -> Shift:
    return context.settings.shift_calendar.shift_at(now)


def shift_of_key(shift_key: str, context: ServingContext) -> Shift:
    """The shift a path key names; a 422 problem naming the expected shape when it names none."""
    try:
        return context.settings.shift_calendar.shift_for_key(shift_key)
    except ValueError as exc:
        raise ProblemError(422, str(exc), type_=VALIDATION_ERROR) from None


@router.get(
    "/backlog/current",
    summary="The backlog of the shift in progress",
    response_model=Backlog,
    responses={**BACKLOG_MEDIA_TYPES, **problem_responses(404, 503)},
)
def current_backlog(
    request: Request,
    response: Response,
    context: Annotated[ServingContext, Depends(get_context)],
    fallback: Annotated[
        Literal["latest"] | None,
        Query(description="`latest`: when the shift in progress has no backlog yet, answer the newest earlier one."),
    ] = None,
) -> Backlog | Response:
    """The backlog written for the shift in progress now, in the plant's shift calendar.

    Until that shift's backlog is written (at the shift's start by the schedule, or by
    `factory backlog --shift-start <key>`), the answer is a 404 naming the shift's key. With
    `?fallback=latest` the newest backlog of an earlier shift is answered instead; its `shift.key`
    (and the `Content-Location` header) then differ from the shift in progress. JSON by default,
    Markdown with `Accept: text/markdown`.
    """
    now = utc_now()
    shift = current_shift(context, now)

    def read(store: ServingStore) -> Backlog | None:
        book = _book(store)
        backlog = book.get(shift.key)
        if backlog is None and fallback == "latest":
            backlog = book.latest(at=now)
        return backlog

    backlog = context.store.use(read)
    if backlog is None:
        how = f"write it with `factory backlog --shift-start {shift.key}` or wait for the shift schedule"
        detail = f"no backlog yet for the current shift {shift.key} ({shift.name}): {how}"
        if fallback == "latest":
            detail += "; no earlier shift has a backlog either"
        raise ProblemError(404, detail, type_=NOT_FOUND)
    return backlog_answer(backlog, request, response)


@router.get(
    "/backlog/{shift_key}",
    summary="The backlog of one shift",
    response_model=Backlog,
    responses={**BACKLOG_MEDIA_TYPES, **problem_responses(404, 422, 503)},
)
def backlog_of_shift(
    shift_key: ShiftKey,
    request: Request,
    response: Response,
    context: Annotated[ServingContext, Depends(get_context)],
) -> Backlog | Response:
    """The backlog written for the shift starting at `shift_key` (as listed by `GET /backlogs`).

    A key that is not the start of a shift is a 422 naming the expected shape; a shift without a
    backlog is a 404. In a URL the key's `+` may be sent as is or as `%2B`. JSON by default,
    Markdown with `Accept: text/markdown`.
    """
    shift = shift_of_key(shift_key, context)
    backlog = context.store.use(lambda store: _book(store).get(shift.key))
    if backlog is None:
        how = f"write it with `factory backlog --shift-start {shift.key}`"
        raise ProblemError(404, f"no backlog for shift {shift.key} ({shift.name}): {how}", type_=NOT_FOUND)
    return backlog_answer(backlog, request, response)


@router.get(
    "/backlogs",
    summary="Written backlogs, newest shift first, paged",
    response_model=BacklogList,
    responses=problem_responses(422, 503),
)
def list_backlogs(
    context: Annotated[ServingContext, Depends(get_context)],
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Page size.")] = DEFAULT_PAGE_SIZE,
    offset: Offset = 0,
) -> BacklogList:
    page: BacklogPage = context.store.use(lambda store: _book(store).history(limit=limit, offset=offset))
    return BacklogList(
        items=[BacklogSummary.of(backlog) for backlog in page.items],
        total=page.total,
        limit=limit,
        offset=offset,
        next_offset=next_offset(offset, len(page.items), page.total),
    )


# ---- the earlier backlog agent's routes (SEED-CLIENTS.md); times in UTC, as its clients read them ----


@router.get(
    "/api/backlog/current_shift",
    summary="The shift in progress and its tasks (earlier backlog agent's shape)",
    response_model=CurrentShiftCompat,
    responses=problem_responses(503),
)
def current_shift_compat(context: Annotated[ServingContext, Depends(get_context)]) -> CurrentShiftCompat:
    """`events` are the tasks of the current shift's backlog; before it is written, none (`events_count` 0)."""
    shift = current_shift(context, utc_now())
    backlog = context.store.use(lambda store: _book(store).get(shift.key))
    events = [task.model_dump(mode="json") for task in backlog.tasks] if backlog is not None else []
    return CurrentShiftCompat(shift_start=iso_utc(shift.start), events_count=len(events), events=events)


@router.get(
    "/api/backlog/backlog_history",
    summary="Recent backlogs (earlier backlog agent's shape)",
    response_model=BacklogHistoryCompat,
    responses=problem_responses(422, 503),
)
def backlog_history_compat(
    context: Annotated[ServingContext, Depends(get_context)],
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description="How many, newest shift first (0 is refused, not 'all').")
    ] = COMPAT_HISTORY_DEFAULT_LIMIT,
) -> BacklogHistoryCompat:
    page = context.store.use(lambda store: _book(store).history(limit=limit, offset=0))
    return BacklogHistoryCompat(
        history=[
            BacklogHistoryEntryCompat(
                backlog_id=backlog.backlog_id,
                generated_at=iso_utc(backlog.generated_at),
                shift_period=ShiftPeriodCompat(start=iso_utc(backlog.shift.start), end=iso_utc(backlog.shift.end)),
                total_events=len(backlog.tasks),
            )
            for backlog in page.items
        ]
    )
