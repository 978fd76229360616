"""The serving store as the API holds it: opened on first use, dropped and reopened after failures.

The API must start while the database is down and recover by itself when it returns, so nothing
opens the store at start-up, and any outage seen by a request discards the store object: the
next request opens it again (which also re-applies migrations to a database that came back empty).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from factory_pipelines.store import ServingStore, StoreUnavailableError
from serving.schema_lock import MIGRATION_LOCK

T = TypeVar("T")

log = logging.getLogger(__name__)

# What a read against the store raises when the database, not our code, is the problem.
_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (DBAPIError, PoolTimeoutError, OSError)
_MAX_DETAIL_CHARS = 300


def describe_error(exc: BaseException) -> str:
    """One short line (drivers add SQL and multi-line hints that mean nothing to API clients)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:_MAX_DETAIL_CHARS]


# Causes a client may be told, by a phrase of the driver's message; the message itself (hosts, ports,
# file paths, SQL) goes to the server's log only.
_OUTAGE_CAUSES = (
    ("connection refused", "the database refuses connections"),
    ("timeout", "the database does not answer in time"),
    ("timed out", "the database does not answer in time"),
    ("authentication failed", "the database refused our credentials"),
    ("password", "the database refused our credentials"),
    ("database is locked", "the database is locked by another writer"),
    ("unable to open database file", "the database file cannot be opened"),
    ("no space left", "the database's disk is full"),
    ("disk i/o error", "the database's disk failed"),
    ("does not exist", "the database does not exist"),
    ("shutting down", "the database is shutting down"),
    ("terminating connection", "the database closed our connection"),
    ("server closed the connection", "the database closed our connection"),
)


def describe_outage(exc: BaseException) -> str:
    """Why the store is unavailable, in words safe for any API client: no host, port, path or SQL."""
    text = str(exc).lower()
    for phrase, cause in _OUTAGE_CAUSES:
        if phrase in text:
            return cause
    return f"the database failed ({type(exc).__name__})"


class StoreConnection:
    """Hands out one shared `ServingStore`, opening it lazily and again after an outage."""

    def __init__(self, db_url: str, opener: Callable[[str], ServingStore] = ServingStore) -> None:
        self.db_url = db_url
        self._opener = opener
        self._store: ServingStore | None = None
        self._lock = threading.Lock()
        self._failures = 0  # open failures so far: callers queued behind a failed open don't retry it
        self._last_failure: StoreUnavailableError | None = None
        self._down = False

    @property
    def backend(self) -> str:
        """The database kind (sqlite, postgresql, ...), never the URL: it may carry a password."""
        try:
            return make_url(self.db_url).get_backend_name()
        except Exception:  # an unparsable URL is reported when opening fails
            return "unknown"

    def use(self, action: Callable[[ServingStore], T]) -> T:
        """Run `action` on the store; raise StoreUnavailableError when the store can't serve it."""
        store = self._open()
        try:
            result = action(store)
        except StoreUnavailableError as exc:
            error = StoreUnavailableError(f"serving store unavailable: {describe_outage(exc)}")
            self._discard(store, error, cause=exc)
            raise error from exc
        except _OUTAGE_ERRORS as exc:
            error = StoreUnavailableError(f"serving store unavailable: {describe_outage(exc)}")
            self._discard(store, error, cause=exc)
            raise error from exc
        self._mark_up()
        return result

    def close(self) -> None:
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.dispose()

    def _open(self) -> ServingStore:
        store = self._store
        if store is not None:
            return store
        failures_seen = self._failures
        with self._lock:
            if self._store is not None:
                return self._store
            if self._failures != failures_seen and self._last_failure is not None:
                raise self._last_failure  # it failed while we waited: don't queue another slow attempt
            try:
                with MIGRATION_LOCK:  # opening applies migrations
                    self._store = self._opener(self.db_url)
            except Exception as exc:  # any failure to open (driver, network, filesystem) means unavailable
                error = StoreUnavailableError(f"serving store unavailable: {describe_outage(exc)}")
                self._failures += 1
                self._last_failure = error
                self._log_down(error, exc)
                raise error from exc
            return self._store

    def _discard(self, store: ServingStore, error: StoreUnavailableError, cause: BaseException | None = None) -> None:
        with self._lock:
            if self._store is store:
                self._store = None
        store.dispose()
        self._log_down(error, cause)

    def _log_down(self, error: StoreUnavailableError, cause: BaseException | None) -> None:
        # Log transitions only, so a long outage doesn't write a line per request.
        if not self._down:
            self._down = True
            log.warning("%s (will reopen on the next request)", error, exc_info=cause)

    def _mark_up(self) -> None:
        if self._down:
            self._down = False
            log.info("serving store available again (%s)", self.backend)
