"""Which version of each model is champion, re-resolved periodically from the MLflow registry.

MLflow has no notification for alias changes, so the API looks the alias up again once its
answer is older than the TTL: a promotion reaches the API without a restart.

Lookups run in background threads and callers wait for them only briefly: against a tracking
server that is down, MLflow's HTTP client retries for minutes, and /health must not hang that long.
Meanwhile callers get the last answer (or "unknown"), and the lookup fills the cache when it ends.

A lookup never creates a registry: a SQLite tracking database that does not exist yet is reported
as an error rather than created by MLflow as a side effect of a health check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from factory_pipelines.model_catalog import CATALOG
from factory_pipelines.model_registry import CHAMPION_ALIAS, ModelVersionInfo, champion_info
from factory_pipelines.telemetry import utc_now
from serving.schema_lock import MIGRATION_LOCK
from serving.store_connection import describe_error
from serving.ttl_cache import Clock

log = logging.getLogger(__name__)

# Models the platform serves: every family in the catalog.
KNOWN_MODELS: tuple[str, ...] = tuple(CATALOG)  # every model family the platform trains and serves
DEFAULT_CHAMPION_TTL_S = 30.0
DEFAULT_ANSWER_WITHIN_S = 3.0

# URI schemes for which MLflow opens the database in this process (and may migrate it).
_DATABASE_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mssql"})


def _database_scheme(tracking_uri: str) -> str | None:
    scheme = tracking_uri.split(":", 1)[0].split("+", 1)[0].lower()
    return scheme if scheme in _DATABASE_SCHEMES else None


def _missing_sqlite_file(tracking_uri: str) -> Path | None:
    if _database_scheme(tracking_uri) != "sqlite":
        return None
    database = make_url(tracking_uri).database
    if not database or database == ":memory:":
        return None
    path = Path(database)
    return None if path.exists() else path


@dataclass(frozen=True, slots=True)
class ChampionLookup:
    """The answer for one model: its champion, none yet, or why the registry couldn't tell."""

    name: str
    champion: ModelVersionInfo | None
    error: str | None
    resolved_at: datetime

    @property
    def registry_reachable(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class _Pending:
    done: threading.Event
    deadline: float  # time.monotonic() after which callers stop waiting for this lookup


class ChampionTracker:
    """Champion of each served model, cached for `ttl_s`; waits at most `answer_within_s` for a lookup."""

    def __init__(
        self,
        tracking_uri: str,
        model_names: Sequence[str] = KNOWN_MODELS,
        *,
        ttl_s: float = DEFAULT_CHAMPION_TTL_S,
        answer_within_s: float = DEFAULT_ANSWER_WITHIN_S,
        clock: Clock = time.monotonic,
        alias: str = CHAMPION_ALIAS,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.model_names = tuple(model_names)
        self.alias = alias
        self.ttl_s = ttl_s
        self.answer_within_s = answer_within_s
        self._clock = clock  # for the TTL; waiting always uses real time
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[ChampionLookup, float]] = {}
        self._pending: dict[str, _Pending] = {}
        # Until one lookup has succeeded, MLflow may still migrate a database-backed registry.
        self._registry_opened = _database_scheme(tracking_uri) is None

    def get(self, name: str) -> ChampionLookup:
        return self._collect(name, self._refresh_if_stale(name))

    def all(self) -> list[ChampionLookup]:
        pending = {name: self._refresh_if_stale(name) for name in self.model_names}  # start all, then wait
        return [self._collect(name, lookup) for name, lookup in pending.items()]

    def expire(self) -> None:
        """Re-resolve every alias on the next lookup (e.g. right after a promotion)."""
        with self._lock:
            self._answers.clear()

    def _refresh_if_stale(self, name: str) -> _Pending | None:
        with self._lock:
            answer = self._answers.get(name)
            if answer is not None and self._clock() - answer[1] < self.ttl_s:
                return None
            pending = self._pending.get(name)
            if pending is None:
                pending = _Pending(threading.Event(), time.monotonic() + self.answer_within_s)
                self._pending[name] = pending
                thread = threading.Thread(
                    target=self._lookup, args=(name, pending), name=f"champion-lookup-{name}", daemon=True
                )
                thread.start()
            return pending

    def _collect(self, name: str, pending: _Pending | None) -> ChampionLookup:
        if pending is not None:
            pending.done.wait(max(0.0, pending.deadline - time.monotonic()))
        with self._lock:
            answer = self._answers.get(name)
        if answer is not None:
            return answer[0]  # fresh, or the last known one while a slow lookup runs
        return ChampionLookup(name, None, f"model registry did not answer within {self.answer_within_s:g} s", utc_now())

    def _resolve(self, name: str) -> ModelVersionInfo | None:
        missing = _missing_sqlite_file(self.tracking_uri)
        if missing is not None:
            raise FileNotFoundError(f"MLflow tracking database {missing} does not exist")
        if self._registry_opened:
            return champion_info(self.tracking_uri, name, self.alias)
        with MIGRATION_LOCK:
            champion = champion_info(self.tracking_uri, name, self.alias)
        self._registry_opened = True
        return champion

    def _lookup(self, name: str, pending: _Pending) -> None:
        try:
            result = ChampionLookup(name, self._resolve(name), None, utc_now())
        except Exception as exc:  # registry down or misconfigured: report it, keep serving
            log.warning("champion lookup for %s failed: %s", name, describe_error(exc))
            result = ChampionLookup(name, None, describe_error(exc), utc_now())
        with self._lock:
            self._answers[name] = (result, self._clock())
            del self._pending[name]
        pending.done.set()
