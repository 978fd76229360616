"""Paging shared by every list route: `limit` / `offset` in, `next_offset` out."""

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def next_offset(offset: int, shown: int, total: int) -> int | None:
    """Offset of the next page; None on the last page (or an empty one)."""
    following = offset + shown
    return following if shown and following < total else None
