"""How the API reads and writes times: ISO 8601, always with an explicit UTC offset.

Naive query times are taken as UTC (the plant's earlier clients sent naive UTC strings), and
answers carry `+00:00` rather than `Z`, which every ISO parser (old Python ones too) accepts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainSerializer, WithJsonSchema


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso_utc(value: datetime) -> str:
    return as_utc(value).isoformat()


IsoDatetime = Annotated[
    datetime,
    PlainSerializer(iso_utc, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2025-01-31T14:00:00+00:00"]}),
]
