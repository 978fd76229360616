"""Shift backlogs over REST, read from a real SQLite serving store: the shift in progress, a shift
by key (JSON and Markdown), the list, the earlier backlog agent's routes, and a store outage."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from factory_pipelines.backlog_book import BacklogBook
from factory_pipelines.backlog_model import Backlog, BacklogTask, EvidenceItem, EvidenceKind, WriterInfo, task_id
from factory_pipelines.settings import FactorySettings, load_settings
from factory_pipelines.shifts import Shift, ShiftCalendar
from factory_pipelines.store import ServingStore
from serving import create_app
from serving.paging import MAX_PAGE_SIZE

PROBLEM_JSON = "application/problem+json"
DST_MORNING = "2026-03-29T06:00+0200"  # the first early shift after Berlin's clocks went forward


def make_settings(tmp_path: Path, unreachable_mqtt_url: str, **overrides: Any) -> FactorySettings:
    return load_settings(
        data_dir=tmp_path / "data",
        plant_timezone="Europe/Berlin",
        mqtt_url=unreachable_mqtt_url,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        **overrides,
    )


@pytest.fixture
def unreachable_mqtt_url(free_port: Callable[[], int]) -> str:
    return f"mqtt://127.0.0.1:{free_port()}"


@pytest.fixture
def settings(tmp_path: Path, unreachable_mqtt_url: str) -> FactorySettings:
    return make_settings(tmp_path, unreachable_mqtt_url)


@pytest.fixture
def calendar(settings: FactorySettings) -> ShiftCalendar:
    return settings.shift_calendar


@pytest.fixture
def api(settings: FactorySettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def save(settings: FactorySettings) -> Iterator[Callable[..., None]]:
    """Saves backlogs into the store the API reads, through the BacklogBook the writers use."""
    store = ServingStore(settings.resolved_db_url)
    book = BacklogBook(store.engine)

    def save_backlogs(*backlogs: Backlog) -> None:
        for backlog in backlogs:
            book.save(backlog)

    yield save_backlogs
    store.dispose()


def make_backlog(shift: Shift, task_count: int = 2, *, writer: WriterInfo | None = None) -> Backlog:
    evidence = [
        EvidenceItem(
            evidence_id=f"pred-rul-R-{n:02d}-{shift.key}",
            kind=EvidenceKind.RUL,
            asset_id=f"R-{n:02d}",
            observed_at=shift.start - timedelta(minutes=5),
            summary=f"R-{n:02d} RUL {40 + n} h",
            facts={"rul_hours": 40 + n},
        )
        for n in range(task_count)
    ]
    tasks = [
        BacklogTask(
            task_id=task_id(shift, n),
            asset_id=item.asset_id,
            action="SCHEDULE_MAINTENANCE_NEXT_SHIFT",
            title=f"Replace the bearing of {item.asset_id}",
            priority_score=90 - 10 * n,
            priority_reasons=[f"RUL {40 + n} h ends within the next shifts"],
            due_at=shift.end,
            estimated_minutes=45,
            required_skill="mechanic",
            evidence_ids=[item.evidence_id],
        )
        for n, item in enumerate(evidence)
    ]
    return Backlog(
        shift=shift,
        summary=f"{task_count} bearings to replace in the {shift.name} shift.",
        tasks=tasks,
        generated_at=shift.start + timedelta(seconds=30),
        writer=writer or WriterInfo(name="deterministic"),
        evidence=evidence,
    )


def previous_shift(calendar: ShiftCalendar, shift: Shift) -> Shift:
    return calendar.shift_at(shift.start - timedelta(minutes=1))


def shift_now(calendar: ShiftCalendar) -> Shift:
    return calendar.shift_at(datetime.now(UTC))


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert body["status"] == status and {"type", "title", "status", "detail"} <= body.keys()
    return body


# ---- the shift in progress ----


def test_current_answers_the_backlog_of_the_shift_in_progress(
    api: TestClient, calendar: ShiftCalendar, save: Callable[..., None]
) -> None:
    before = shift_now(calendar)
    # The following shift too, should the request land just after a shift change.
    backlogs = {shift.key: make_backlog(shift, 3) for shift in (before, *calendar.following(before, 1))}
    save(*backlogs.values())

    response = api.get("/backlog/current")
    after = shift_now(calendar)

    assert response.status_code == 200, response.text
    key = response.json()["shift"]["key"]
    assert key in {before.key, after.key}
    assert response.json() == backlogs[key].model_dump(mode="json")
    assert response.headers["content-location"] == f"/backlog/{key}"
    assert response.headers["vary"] == "Accept"


def test_current_without_a_backlog_is_404_naming_the_shift_or_falls_back_to_the_latest(
    api: TestClient, calendar: ShiftCalendar, save: Callable[..., None]
) -> None:
    assert_problem(api.get("/backlog/current", params={"fallback": "latest"}), 404)  # nothing written at all

    before = shift_now(calendar)
    previous = previous_shift(calendar, before)
    save(make_backlog(previous_shift(calendar, previous), 1), make_backlog(previous, 2))

    missing = api.get("/backlog/current")
    after = shift_now(calendar)
    body = assert_problem(missing, 404)
    assert before.key in body["detail"] or after.key in body["detail"]
    assert "factory backlog --shift-start" in body["detail"]

    fallback = api.get("/backlog/current", params={"fallback": "latest"})
    assert fallback.status_code == 200, fallback.text
    assert fallback.json() == make_backlog(previous, 2).model_dump(mode="json")  # the newest earlier one
    assert fallback.headers["content-location"] == f"/backlog/{previous.key}"

    assert_problem(api.get("/backlog/current", params={"fallback": "oldest"}), 422)


# ---- one shift by key ----


def test_a_shift_by_key_as_json_equals_the_saved_backlog(
    api: TestClient, calendar: ShiftCalendar, save: Callable[..., None]
) -> None:
    shift = calendar.shift_for_key(DST_MORNING)
    saved = make_backlog(shift, 2, writer=WriterInfo(name="gemini", model="gemini-2.5-flash", total_tokens=1234))
    save(saved, make_backlog(previous_shift(calendar, shift), 1))

    plain = api.get(f"/backlog/{DST_MORNING}")
    assert plain.status_code == 200, plain.text
    assert plain.headers["content-type"].startswith("application/json")
    assert plain.json() == saved.model_dump(mode="json")
    assert Backlog.model_validate(plain.json()) == saved
    # The same shift with its `+` percent-encoded, and when the client prefers JSON over Markdown.
    encoded = api.get("/backlog/2026-03-29T06:00%2B0200", headers={"Accept": "application/json, text/markdown"})
    assert encoded.json() == plain.json()


@pytest.mark.parametrize(
    ("accept", "markdown"),
    [
        ("text/markdown", True),
        ("text/markdown, application/json", True),
        ("text/html, text/markdown;q=0.9", True),
        ("application/json;q=0.5, text/markdown", True),
        ("application/json, text/markdown", False),
        ("text/markdown;q=0.5, application/json", False),
        ("*/*", False),
        ("text/markdown;q=0", False),
    ],
)
def test_markdown_is_answered_when_the_accept_header_prefers_it(
    api: TestClient, calendar: ShiftCalendar, save: Callable[..., None], accept: str, markdown: bool
) -> None:
    save(make_backlog(calendar.shift_for_key(DST_MORNING), 2))
    response = api.get(f"/backlog/{DST_MORNING}", headers={"Accept": accept})
    assert response.status_code == 200, response.text
    media_type = response.headers["content-type"].split(";")[0]
    assert media_type == ("text/markdown" if markdown else "application/json")
    assert response.headers["vary"] == "Accept"


def test_markdown_shows_the_shift_and_its_tasks(
    api: TestClient, calendar: ShiftCalendar, save: Callable[..., None]
) -> None:
    shift = calendar.shift_for_key(DST_MORNING)
    save(make_backlog(shift, 2))
    text = api.get(f"/backlog/{DST_MORNING}", headers={"Accept": "text/markdown"}).text
    assert text.startswith("# Shift backlog: early, 2026-03-29 06:00 to 14:00 (Europe/Berlin)")
    assert "2 bearings to replace in the early shift." in text
    assert "Replace the bearing of R-00" in text and "Replace the bearing of R-01" in text
    assert f"`pred-rul-R-01-{DST_MORNING}`" in text
    assert text.index("R-00") < text.index("R-01")  # highest priority first


def test_bad_keys_are_422_and_unknown_shifts_404(api: TestClient, calendar: ShiftCalendar) -> None:
    not_a_key = assert_problem(api.get("/backlog/yesterday"), 422)
    assert "2026-11-26T06:00+0100" in not_a_key["detail"]  # the expected shape
    not_a_start = assert_problem(api.get("/backlog/2026-03-29T07:00+0200"), 422)
    assert "not the start of a shift" in not_a_start["detail"] and "early 06:00" in not_a_start["detail"]
    wrong_offset = assert_problem(api.get("/backlog/2026-03-29T06:00+0100"), 422)  # it was summer time by then
    assert "not the start of a shift" in wrong_offset["detail"]

    unknown = assert_problem(api.get(f"/backlog/{DST_MORNING}"), 404)
    assert DST_MORNING in unknown["detail"]


# ---- the list ----


def test_backlogs_are_listed_newest_first_and_paged(
    api: TestClient, calendar: ShiftCalendar, save: Callable[..., None]
) -> None:
    first = calendar.shift_for_key("2026-03-28T14:00+0100")
    shifts = [first, *calendar.following(first, 4)]  # across the night the clocks went forward
    backlogs = [make_backlog(shift, n + 1) for n, shift in enumerate(shifts)]
    save(*random.Random(5).sample(backlogs, len(backlogs)))  # the order comes from shift starts

    page = api.get("/backlogs", params={"limit": 2}).json()
    assert [item["shift_key"] for item in page["items"]] == [shifts[4].key, shifts[3].key]
    assert (page["total"], page["limit"], page["offset"], page["next_offset"]) == (5, 2, 0, 2)
    newest = backlogs[4]
    assert page["items"][0] == {
        "shift_key": newest.shift.key,
        "shift_name": newest.shift.name,
        "start": iso_utc(newest.shift.start),
        "end": iso_utc(newest.shift.end),
        "generated_at": iso_utc(newest.generated_at),
        "writer": "deterministic",
        "task_count": 5,
    }

    last = api.get("/backlogs", params={"limit": 2, "offset": 4}).json()
    assert [item["shift_key"] for item in last["items"]] == [first.key] and last["next_offset"] is None
    night = next(item for item in api.get("/backlogs").json()["items"] if item["shift_key"] == "2026-03-28T22:00+0100")
    assert (night["start"], night["end"]) == ("2026-03-28T21:00:00+00:00", "2026-03-29T04:00:00+00:00")  # 7 h

    assert_problem(api.get("/backlogs", params={"limit": 0}), 422)
    assert_problem(api.get("/backlogs", params={"offset": -1}), 422)


# ---- the earlier backlog agent's routes ----


def test_compat_current_shift_lists_the_tasks_of_the_shift_in_progress(
    api: TestClient, calendar: ShiftCalendar, save: Callable[..., None]
) -> None:
    before = shift_now(calendar)
    empty = api.get("/api/backlog/current_shift").json()
    after = shift_now(calendar)
    assert set(empty) == {"shift_start", "events_count", "events"}
    assert empty["shift_start"] in {iso_utc(before.start), iso_utc(after.start)}
    assert (empty["events_count"], empty["events"]) == (0, [])

    backlogs = {iso_utc(shift.start): make_backlog(shift, 3) for shift in (before, *calendar.following(before, 1))}
    save(*backlogs.values())
    current = api.get("/api/backlog/current_shift").json()
    assert set(current) == {"shift_start", "events_count", "events"}
    backlog = backlogs[current["shift_start"]]
    assert current["events_count"] == 3
    assert current["events"] == [task.model_dump(mode="json") for task in backlog.tasks]


def test_compat_backlog_history_has_the_earlier_shape_and_a_bounded_limit(
    api: TestClient, calendar: ShiftCalendar, save: Callable[..., None]
) -> None:
    first = calendar.shift_for_key("2026-03-20T06:00+0100")
    shifts = [first, *calendar.following(first, 11)]
    backlogs = [make_backlog(shift, 1 + n % 3) for n, shift in enumerate(shifts)]
    save(*backlogs)

    default = api.get("/api/backlog/backlog_history").json()
    assert set(default) == {"history"}
    assert [entry["backlog_id"] for entry in default["history"]] == [b.backlog_id for b in reversed(backlogs)][:10]
    newest = backlogs[-1]
    assert default["history"][0] == {
        "backlog_id": f"backlog-{newest.shift.key}",
        "generated_at": iso_utc(newest.generated_at),
        "shift_period": {"start": iso_utc(newest.shift.start), "end": iso_utc(newest.shift.end)},
        "total_events": len(newest.tasks),
    }

    assert len(api.get("/api/backlog/backlog_history", params={"limit": 3}).json()["history"]) == 3
    everything = api.get("/api/backlog/backlog_history", params={"limit": MAX_PAGE_SIZE}).json()["history"]
    assert len(everything) == len(backlogs)
    for limit in (0, -1, MAX_PAGE_SIZE + 1):  # the earlier `limit=0` meant "all": a bug not kept
        assert_problem(api.get("/api/backlog/backlog_history", params={"limit": limit}), 422)


# ---- the store down, and the documentation ----


def test_every_backlog_route_is_503_while_the_store_is_down(tmp_path: Path, unreachable_mqtt_url: str) -> None:
    blocker = tmp_path / "db"
    blocker.write_text("a file where the database directory should be: the store cannot open")
    settings = make_settings(tmp_path, unreachable_mqtt_url, db_url=f"sqlite:///{blocker / 'serving.db'}")
    paths = [
        "/backlog/current",
        f"/backlog/{DST_MORNING}",
        "/backlogs",
        "/api/backlog/current_shift",
        "/api/backlog/backlog_history",
    ]
    with TestClient(create_app(settings)) as api:
        for path in paths:
            response = api.get(path)
            body = assert_problem(response, 503)
            assert body["title"] == "Serving store unavailable" and response.headers["retry-after"]
        assert_problem(api.get("/backlog/not-a-key"), 422)  # a bad key is refused before the store is asked

        blocker.unlink()  # the store comes back
        assert api.get("/backlogs").json()["total"] == 0


def test_openapi_documents_both_media_types_and_the_problems(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/backlog/current", "/backlog/{shift_key}", "/backlogs", "/api/backlog/current_shift"} <= set(paths)
    by_key = paths["/backlog/{shift_key}"]["get"]
    assert {"application/json", "text/markdown"} == set(by_key["responses"]["200"]["content"])
    assert by_key["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Backlog"
    }
    for status in ("404", "422", "503"):
        assert set(by_key["responses"][status]["content"]) == {PROBLEM_JSON}
    current = paths["/backlog/current"]["get"]
    assert {"application/json", "text/markdown"} == set(current["responses"]["200"]["content"])
    assert "fallback" in {parameter["name"] for parameter in current["parameters"]}
    assert "backlog" in api.get("/openapi.json").json()["info"]["description"]
