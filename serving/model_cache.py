"""Champion models loaded in the API process: `models:/NAME@champion`, loaded once per version.

Which version holds the alias comes from the app's `ChampionTracker` (serving.champions), which
re-resolves it once its answer is older than its TTL (DESIGN.md, "Models"): after a promotion the
next request past the TTL loads the new version and the old one is dropped, with no restart.

- One load per version: concurrent requests for a model that is loading wait for that one load.
- A load that fails is remembered until the tracker next re-resolves the alias (a broken version
  is not reloaded on every request, and is retried once per TTL) and raised as
  `ModelUnavailableError`, which the routes answer with a 503 problem naming the model. So is a
  model without a champion. Nothing here raises anything else.
- While the registry cannot be asked (down, or slower than the tracker waits), the version already
  loaded keeps serving: inference should not stop because MLflow is briefly away.
- TensorFlow is imported only when a model is loaded (the family's own loader imports it), so the
  API starts as quickly as before.

MLflow's `pyfunc.load_model` reads the registry through the process-wide tracking URI, so loads
set it (to the tracker's URI) and run one at a time. Inference with a loaded model runs under its
`lock`: a Keras model is not documented as safe to call from several threads at once, and the
API has two cores to share anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from factory_pipelines.model_registry import ModelVersionInfo, use_tracking_uri
from factory_pipelines.telemetry import utc_now
from serving.champions import ChampionTracker
from serving.problems import problem_response
from serving.store_connection import describe_error

log = logging.getLogger(__name__)

MODEL_UNAVAILABLE = "urn:factory-pipelines:problem:model-unavailable"
MODEL_RETRY_AFTER_S = 30

Loader = Callable[[str], Any]  # a models:/ URI -> the family's model object

_MLFLOW_GLOBALS = threading.Lock()  # the tracking URI is process-wide: one load at a time sets and uses it
_CACHE_ATTR = "ml_model_cache"
_CACHE_LOCK = threading.Lock()


def _load_rul(uri: str) -> Any:
    from factory_pipelines import rul_model

    return rul_model.load_model(uri)


def _load_ppe(uri: str) -> Any:
    from factory_pipelines import ppe_model

    return ppe_model.load_model(uri)


RUL_MODEL = "rul_lstm"
PPE_MODEL = "ppe_vision"
DEFAULT_LOADERS: dict[str, Loader] = {RUL_MODEL: _load_rul, PPE_MODEL: _load_ppe}
"""The families the API runs inference with (the others are served from the store's predictions)."""


class ModelUnavailableError(Exception):
    """No usable champion of `model_name`: none promoted, registry unreachable, or the load failed."""

    def __init__(self, model_name: str, reason: str) -> None:
        super().__init__(f"{model_name}: {reason}")
        self.model_name = model_name
        self.reason = reason

    def response(self, request: Request) -> JSONResponse:
        """The 503 problem: names the model, says why, and when to try again."""
        return problem_response(
            request,
            503,
            detail=f"model {self.model_name} is unavailable: {self.reason}",
            type_=MODEL_UNAVAILABLE,
            title="Model unavailable",
            headers={"Retry-After": str(MODEL_RETRY_AFTER_S)},
            model_name=self.model_name,
        )


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A loaded champion version, with its registry facts and the lock its inference runs under."""

    name: str
    model: Any
    info: ModelVersionInfo
    loaded_at: datetime
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class _FailedLoad:
    version: str
    reason: str
    resolved_at: datetime  # the alias lookup it failed under; a newer lookup tries again


class ModelCache:
    """The champion of each served model, loaded once per version and reloaded after a promotion."""

    def __init__(
        self,
        champions: ChampionTracker,
        loaders: Mapping[str, Loader] | None = None,
    ) -> None:
        self.champions = champions
        self.loaders = dict(DEFAULT_LOADERS if loaders is None else loaders)
        self._lock = threading.Lock()
        self._loaded: dict[str, ServedModel] = {}
        self._failures: dict[str, _FailedLoad] = {}
        self._load_locks: dict[str, threading.Lock] = {}
        self.loads = 0  # versions loaded since the cache was made (a figure for tests and /metrics)

    def get(self, name: str) -> ServedModel:
        """The current champion of `name`, loading it when the alias moved; ModelUnavailableError otherwise."""
        if name not in self.loaders:
            raise ModelUnavailableError(name, f"this API does not run {name}; it serves {', '.join(self.loaders)}")
        lookup = self.champions.get(name)
        current = self.loaded(name)
        if lookup.error is not None:
            if current is not None:
                return current  # registry away: keep serving the version we have
            raise ModelUnavailableError(name, f"the model registry could not be asked: {lookup.error}")
        if lookup.champion is None:
            self._drop(name)  # the alias was removed (or never set): nothing to serve
            raise ModelUnavailableError(
                name,
                f"models:/{name}@{self.champions.alias} does not exist yet: no version has been promoted "
                f"(train it first, e.g. `factory train {name}`)",
            )
        if current is not None and current.info.version == lookup.champion.version:
            return current
        return self._load(name, lookup.champion, lookup.resolved_at)

    def loaded(self, name: str) -> ServedModel | None:
        """The version of `name` this process has loaded, if any (no registry lookup)."""
        with self._lock:
            return self._loaded.get(name)

    def failure(self, name: str) -> str | None:
        """Why the last load of `name` failed, while that failure is remembered."""
        with self._lock:
            failed = self._failures.get(name)
        return failed.reason if failed is not None else None

    def _drop(self, name: str) -> None:
        with self._lock:
            self._loaded.pop(name, None)

    def _load_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._load_locks.setdefault(name, threading.Lock())

    def _load(self, name: str, info: ModelVersionInfo, resolved_at: datetime) -> ServedModel:
        with self._load_lock(name):
            with self._lock:
                current = self._loaded.get(name)
                failed = self._failures.get(name)
            if current is not None and current.info.version == info.version:
                return current  # loaded by the request we waited for
            if failed is not None and failed.version == info.version and failed.resolved_at == resolved_at:
                raise ModelUnavailableError(name, failed.reason)
            started = time.perf_counter()
            try:
                with _MLFLOW_GLOBALS:
                    use_tracking_uri(self.champions.tracking_uri)
                    model = self.loaders[name](info.uri)
            except Exception as exc:  # any failure of a load is the model's, never the API's
                reason = f"{info.uri} (champion) could not be loaded: {describe_error(exc)}"
                log.warning("%s", reason, exc_info=True)
                with self._lock:
                    self._failures[name] = _FailedLoad(info.version, reason, resolved_at)
                raise ModelUnavailableError(name, reason) from exc
            served = ServedModel(name=name, model=model, info=info, loaded_at=utc_now())
            with self._lock:
                self._loaded[name] = served  # the previous version, if any, is dropped here
                self._failures.pop(name, None)
                self.loads += 1
            log.info("loaded %s version %s in %.1f s", name, info.version, time.perf_counter() - started)
            return served


def model_cache_of(app: FastAPI) -> ModelCache:
    """The app's model cache, made on first use over the app's ChampionTracker (so it follows its TTL)."""
    cache: ModelCache | None = getattr(app.state, _CACHE_ATTR, None)
    if cache is None:
        with _CACHE_LOCK:
            cache = getattr(app.state, _CACHE_ATTR, None)
            if cache is None:
                tracker: ChampionTracker = app.state.serving.champions
                cache = ModelCache(tracker)
                setattr(app.state, _CACHE_ATTR, cache)
    return cache


async def model_cache_for(request: Request) -> ModelCache:
    """FastAPI dependency: the model cache of the app serving this request."""
    return model_cache_of(request.app)
