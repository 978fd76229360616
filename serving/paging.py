"""Paging shared by every list route: `limit` / `offset` in, `next_offset` out."""

from typing import Annotated

from fastapi import Query

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_OFFSET = 2**31 - 1  # past any real table; bounds what the database is asked (SQLite's integers are 64-bit)

Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Rows to skip.")]


def next_offset(offset: int, shown: int, total: int) -> int | None:
    """Offset of the next page; None on the last page (or an empty one)."""
    following = offset + shown
    return following if shown and following < total else None
