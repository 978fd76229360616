"""The plant's shifts: names, start times and time zone, and the partition key of each shift.

One calendar decides everything shift-shaped: the backlog asset's partitions, the schedule's cron
string, which shift a moment falls in and when it ends. It wraps Dagster's cron-based
`TimeWindowPartitionsDefinition` so the keys served over REST are exactly the Dagster partition
keys, and shifts follow local time across daylight-saving changes (a shift that spans the change
is an hour shorter or longer). Keys carry the UTC offset (`2026-03-29T06:00+0200`), so they stay
unique and readable in any zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field, field_validator

SHIFT_KEY_FORMAT = "%Y-%m-%dT%H:%M%z"


class ShiftSpec(BaseModel):
    """One shift of the plant's day, as configured (`{name: early, start: "06:00"}`)."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, max_length=40)
    start: time = Field(description="Local start time, HH:MM.")

    @field_validator("start")
    @classmethod
    def _whole_minutes(cls, value: time) -> time:
        if value.second or value.microsecond or value.tzinfo is not None:
            raise ValueError("a shift starts on a whole minute of local time, e.g. '06:00'")
        return value


DEFAULT_SHIFTS: tuple[ShiftSpec, ...] = (
    ShiftSpec(name="early", start=time(6, 0)),
    ShiftSpec(name="late", start=time(14, 0)),
    ShiftSpec(name="night", start=time(22, 0)),
)


class Shift(BaseModel):
    """One concrete shift: its partition key and local start and end."""

    model_config = ConfigDict(frozen=True)

    key: str = Field(description="Partition key: local start time with its UTC offset, e.g. 2026-11-26T06:00+0100.")
    name: str
    start: datetime = Field(description="Local start, with offset.")
    end: datetime = Field(description="Local end (the next shift's start), with offset.")
    timezone: str

    @property
    def hours(self) -> float:
        # Aware datetimes in one ZoneInfo subtract as wall clocks: go through UTC for elapsed time.
        return (self.end.astimezone(UTC) - self.start.astimezone(UTC)).total_seconds() / 3600


class ShiftConfigError(ValueError):
    """The shift settings cannot make a calendar; the message names the setting."""


@dataclass(frozen=True)
class ShiftCalendar:
    specs: tuple[ShiftSpec, ...] = DEFAULT_SHIFTS
    timezone: str = "UTC"
    first_day: date = date(2026, 1, 1)

    def __post_init__(self) -> None:
        if not self.specs:
            raise ShiftConfigError("shifts: at least one shift is needed")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ShiftConfigError(
                f"plant_timezone: unknown time zone {self.timezone!r} (e.g. Europe/Berlin)"
            ) from None
        names = [spec.name for spec in self.specs]
        starts = [spec.start for spec in self.specs]
        if len(set(names)) != len(names):
            raise ShiftConfigError(f"shifts: duplicate shift names in {names}")
        if len(set(starts)) != len(starts):
            raise ShiftConfigError(
                f"shifts: two shifts start at the same time ({[s.isoformat('minutes') for s in starts]})"
            )
        if len({start.minute for start in starts}) != 1:
            # One cron string drives the partitions: its minute field must be shared.
            raise ShiftConfigError(
                "shifts: every shift must start at the same minute past the hour "
                f"(got {[s.isoformat('minutes') for s in starts]})"
            )

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def cron_schedule(self) -> str:
        hours = ",".join(str(spec.start.hour) for spec in sorted(self.specs, key=lambda s: s.start))
        return f"{self.specs[0].start.minute} {hours} * * *"

    @cached_property
    def partitions_def(self) -> dg.TimeWindowPartitionsDefinition:
        """One partition per shift; the shift in progress is included, so its backlog exists from its start."""
        first = min(self.specs, key=lambda s: s.start)
        start = datetime.combine(self.first_day, first.start, tzinfo=self.zone)
        return dg.TimeWindowPartitionsDefinition(
            cron_schedule=self.cron_schedule,
            start=start.strftime(SHIFT_KEY_FORMAT),
            fmt=SHIFT_KEY_FORMAT,
            timezone=self.timezone,
            end_offset=1,
        )

    def _name_at(self, local_start: datetime) -> str:
        wall = local_start.time().replace(tzinfo=None)
        for spec in self.specs:
            if spec.start == wall:
                return spec.name
        # A start moved by a daylight-saving gap (02:30 does not exist on the spring day).
        return min(
            self.specs, key=lambda s: abs(s.start.hour * 60 + s.start.minute - wall.hour * 60 - wall.minute)
        ).name

    def shift_for_key(self, key: str) -> Shift:
        """The shift of a partition key; ValueError naming the expected shape when it is not one."""
        try:
            parsed = datetime.strptime(key, SHIFT_KEY_FORMAT)
        except ValueError:
            raise ValueError(f"{key!r} is not a shift key (expected e.g. 2026-11-26T06:00+0100)") from None
        window = self.partitions_def.time_window_for_partition_key(key)
        start = window.start.astimezone(self.zone)
        if start.strftime(SHIFT_KEY_FORMAT) != key or parsed.utcoffset() != start.utcoffset():
            raise ValueError(f"{key!r} is not the start of a shift (shifts start at {self.describe()})")
        return self._shift(start, window.end.astimezone(self.zone))

    def shift_at(self, moment: datetime) -> Shift:
        """The shift that `moment` (aware) falls in."""
        if moment.tzinfo is None:
            raise ValueError("shift_at needs an aware datetime (with a UTC offset)")
        key = self.partitions_def.get_partition_key_for_timestamp(moment.timestamp(), end_closed=False)
        return self.shift_for_key(key)

    def following(self, shift: Shift, count: int) -> list[Shift]:
        """The `count` shifts after `shift`, in order."""
        shifts: list[Shift] = []
        current = shift
        for _ in range(count):
            current = self.shift_at(current.end)
            shifts.append(current)
        return shifts

    def describe(self) -> str:
        return (
            ", ".join(f"{spec.name} {spec.start.isoformat('minutes')}" for spec in self.specs) + f" ({self.timezone})"
        )

    def _shift(self, start: datetime, end: datetime) -> Shift:
        return Shift(
            key=start.strftime(SHIFT_KEY_FORMAT),
            name=self._name_at(start),
            start=start,
            end=end,
            timezone=self.timezone,
        )
