"""The shift calendar: partition keys follow local shift starts across daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from factory_pipelines.settings import FactorySettings
from factory_pipelines.shifts import DEFAULT_SHIFTS, ShiftCalendar, ShiftConfigError, ShiftSpec

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture
def berlin() -> ShiftCalendar:
    return ShiftCalendar(DEFAULT_SHIFTS, "Europe/Berlin", date(2026, 1, 1))


def keys_between(calendar: ShiftCalendar, start: datetime, end: datetime) -> list[str]:
    keys = []
    shift = calendar.shift_at(start)
    while shift.start < end:
        keys.append(shift.key)
        shift = calendar.following(shift, 1)[0]
    return keys


def test_spring_forward_keeps_local_starts_and_shortens_the_night(berlin: ShiftCalendar) -> None:
    keys = keys_between(berlin, datetime(2026, 3, 28, 6, tzinfo=BERLIN), datetime(2026, 3, 30, 6, tzinfo=BERLIN))
    assert keys == [
        "2026-03-28T06:00+0100",
        "2026-03-28T14:00+0100",
        "2026-03-28T22:00+0100",
        "2026-03-29T06:00+0200",
        "2026-03-29T14:00+0200",
        "2026-03-29T22:00+0200",
    ]
    hours = [berlin.shift_for_key(key).hours for key in keys]
    assert hours == [8, 8, 7, 8, 8, 8]  # the clocks skip 02:00-03:00 in the night shift
    # The keys are exactly the Dagster partitions.
    partitions = berlin.partitions_def.get_partition_keys(current_time=datetime(2026, 3, 30, 7, tzinfo=BERLIN))
    assert keys == partitions[partitions.index(keys[0]) : partitions.index(keys[-1]) + 1]


def test_fall_back_lengthens_the_night_and_keys_stay_unique(berlin: ShiftCalendar) -> None:
    keys = keys_between(berlin, datetime(2026, 10, 24, 22, tzinfo=BERLIN), datetime(2026, 10, 25, 22, tzinfo=BERLIN))
    assert keys == ["2026-10-24T22:00+0200", "2026-10-25T06:00+0100", "2026-10-25T14:00+0100"]
    assert [berlin.shift_for_key(key).hours for key in keys] == [9, 8, 8]
    night = berlin.shift_for_key("2026-10-24T22:00+0200")
    # Both 02:30s of that night (CEST, then CET) fall in it.
    for fold in (0, 1):
        assert berlin.shift_at(datetime(2026, 10, 25, 2, 30, fold=fold, tzinfo=BERLIN)) == night
    assert night.name == "night" and night.end == datetime(2026, 10, 25, 6, tzinfo=BERLIN)


def test_shift_at_uses_half_open_intervals(berlin: ShiftCalendar) -> None:
    start = datetime(2026, 11, 26, 6, tzinfo=BERLIN)
    assert berlin.shift_at(start).key == "2026-11-26T06:00+0100"
    assert berlin.shift_at(start - timedelta(microseconds=1)).key == "2026-11-25T22:00+0100"
    assert berlin.shift_at(datetime(2026, 11, 26, 12, 59, tzinfo=UTC)).name == "early"  # 13:59 in Berlin
    assert berlin.shift_at(datetime(2026, 11, 26, 13, 0, tzinfo=UTC)).name == "late"  # 14:00 in Berlin
    with pytest.raises(ValueError, match="aware"):
        berlin.shift_at(datetime(2026, 11, 26, 6))


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("2026-11-26T07:00+0100", "not the start of a shift"),
        ("2026-11-26T06:00+0200", "not the start of a shift"),  # the right wall time with the wrong offset
        ("2026-11-26 06:00", "not a shift key"),
        ("tomorrow", "not a shift key"),
    ],
)
def test_keys_that_are_not_shift_starts_are_refused(berlin: ShiftCalendar, key: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        berlin.shift_for_key(key)


def test_custom_shifts_and_cron() -> None:
    calendar = ShiftCalendar(
        (ShiftSpec(name="day", start=time(7, 30)), ShiftSpec(name="night", start=time(19, 30))), "America/Chicago"
    )
    assert calendar.cron_schedule == "30 7,19 * * *"
    shift = calendar.shift_at(datetime(2026, 7, 1, 12, tzinfo=UTC))  # 07:00 in Chicago: still last night's shift
    assert (shift.key, shift.name, shift.hours) == ("2026-06-30T19:30-0500", "night", 12)


@pytest.mark.parametrize(
    ("specs", "zone", "message"),
    [
        ((), "UTC", "at least one shift"),
        (DEFAULT_SHIFTS, "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ((ShiftSpec(name="a", start=time(6)), ShiftSpec(name="a", start=time(18))), "UTC", "duplicate shift names"),
        ((ShiftSpec(name="a", start=time(6)), ShiftSpec(name="b", start=time(6))), "UTC", "same time"),
        ((ShiftSpec(name="a", start=time(6)), ShiftSpec(name="b", start=time(18, 30))), "UTC", "same minute"),
    ],
)
def test_impossible_calendars_are_refused(specs: tuple[ShiftSpec, ...], zone: str, message: str) -> None:
    with pytest.raises(ShiftConfigError, match=message):
        ShiftCalendar(specs, zone)


def test_settings_build_the_calendar_and_refuse_a_bad_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACTORY_SHIFTS", '[{"name": "day", "start": "08:00"}, {"name": "night", "start": "20:00"}]')
    monkeypatch.setenv("FACTORY_PLANT_TIMEZONE", "Asia/Tokyo")
    calendar = FactorySettings().shift_calendar
    assert calendar.cron_schedule == "0 8,20 * * *" and calendar.timezone == "Asia/Tokyo"
    assert FactorySettings(shifts=list(DEFAULT_SHIFTS), plant_timezone="UTC").shift_calendar.describe() == (
        "early 06:00, late 14:00, night 22:00 (UTC)"
    )
    monkeypatch.setenv("FACTORY_PLANT_TIMEZONE", "Europe/Atlantis")
    with pytest.raises(ValidationError, match="plant_timezone: unknown time zone"):
        FactorySettings()
    monkeypatch.setenv("FACTORY_PLANT_TIMEZONE", "UTC")
    monkeypatch.setenv("FACTORY_SHIFTS", '[{"name": "day", "start": "08:00:30"}]')
    with pytest.raises(ValidationError, match="whole minute"):
        FactorySettings()
