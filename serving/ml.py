"""On-demand inference with the champions: robot RUL (the earlier ML service's routes) and PPE checks.

- `POST /api/ml/predict`: one robot reading -> remaining useful life (cycles) with a conformal
  interval at the requested confidence, a health score (0-100) and a maintenance priority.
- `POST /api/ml/batch_predict`: up to MAX_BATCH such requests, one model lookup and one inference call.
- `GET /api/ml/model_info`: every model family's champion (version, alias, trained-at, metrics, run).
- `POST /api/ppe/check`: an uploaded JPEG or PNG -> per-person hard-hat and vest verdicts with their
  regions, and the frame verdict, from the `ppe_vision` champion.

The reading. The earlier clients send `"features": [5 floats]`; their meaning and order here are
FEATURE_ORDER, the robot contract's fields (`RobotTelemetry`, `ROBOT_ROWS_SCHEMA` columns):
vibration RMS (g), vibration kurtosis, bearing temperature (degC), motor current (A), cycle count.
A richer form, `"reading": {...}`, names the fields instead and may add the four band energies
(`vibration_bpfo`, `_bpfi`, `_bsf`, `_ftf`) and the device's own `health_score`; the contract's
nested `"vibration": {"rms": ..., "bpfo": ...}` object, as a robot publishes it, is accepted too.
What a reading leaves out, the model takes as its training mean (a neutral value), so the 5-float
form predicts without band energies.

History. `rul_lstm` reads the last `window` steps of the robot's current bearing (one step per
`cycles_per_step` cycles). The API adds to the given reading, which is always the newest step:
the robot's typed rows of the newest windows (`settings.typed_rows_dir / "robots"`, as many
windows as the prediction asset reads, see `rul_model.robot_history_windows`) and the latest reading
of the live MQTT feed when it is newer. Readings at a higher cycle count than the given one are
left out (they cannot precede it). A reading without a cycle count is placed one step after the
history (cycle 0 without history). `history_steps` in the answer says how many steps the model
saw (1: the reading alone; fewer than `model_window` means the rest was padded); `use_history:
false` predicts from the reading alone.

Health score and priority are fleet's (`serving.fleet.health_of`, `maintenance_priority`): the
device's health score when given, else derived from vibration and temperature; the priority uses
the lower end of the interval at the requested confidence (a higher confidence is more cautious).

Models come from `serving.model_cache` (loaded once per champion version, reloaded after a
promotion); no champion or a failed load is a 503 problem naming the model.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import polars as pl
from fastapi import APIRouter, Body, Depends, File, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationError, model_validator

from factory_pipelines.model_catalog import CATALOG
from factory_pipelines.settings import FactorySettings
from factory_pipelines.storage import StoragePath, parquet_files, scan_parquet
from factory_pipelines.telemetry import INT64_MAX, PayloadKind, RobotTelemetry, VibrationFeatures, utc_now
from factory_pipelines.windows import WindowKeyError, window_start
from serving.champions import ChampionLookup
from serving.context import ServingContext, get_context
from serving.datetimes import IsoDatetime
from serving.fleet import HealthSource, Priority, health_of, live_of, maintenance_priority
from serving.model_cache import (
    PPE_MODEL,
    RUL_MODEL,
    ModelCache,
    ModelUnavailableError,
    ServedModel,
    model_cache_for,
)
from serving.problems import CONTENT_TOO_LARGE, ProblemError, problem_responses
from serving.store_connection import describe_error

if TYPE_CHECKING:
    from factory_pipelines.ppe_model import FrameVerdict, PersonRegion
    from factory_pipelines.rul_model import RulModel

router = APIRouter()

MAX_BATCH = 100
PPE_CHECK_PATH = "/api/ppe/check"
MAX_IMAGE_BYTES = 5 * 1024 * 1024
MAX_UPLOAD_BODY_BYTES = MAX_IMAGE_BYTES + 64 * 1024  # the image plus multipart headers and boundaries
MAX_IMAGE_PIXELS = 40_000_000  # a 5 MB PNG of one colour may decode to gigabytes: refuse before decoding
DEFAULT_CONFIDENCE = 0.95  # what the earlier robot backend's clients send

FEATURE_ORDER: tuple[str, ...] = ("vibration_rms", "vibration_kurtosis", "temperature", "motor_current", "cycle_count")
BAND_FIELDS: tuple[str, ...] = ("bpfo", "bpfi", "bsf", "ftf")

UNSUPPORTED_MEDIA = "urn:factory-pipelines:problem:unsupported-media-type"
UNDECODABLE_IMAGE = "urn:factory-pipelines:problem:undecodable-image"

IMAGE_TYPES: dict[str, str] = {"image/jpeg": "JPEG", "image/jpg": "JPEG", "image/pjpeg": "JPEG", "image/png": "PNG"}
UNDECLARED_TYPES = frozenset({"", "application/octet-stream"})  # then the file's first bytes decide
IMAGE_SIGNATURES: dict[bytes, str] = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}

HistorySource = Literal["typed_rows", "live", "request"]
RobotId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^/#+]+$", description="The robot's asset id.")]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


# ---- request and response models ----


class RobotFeatures(BaseModel):
    """One robot reading with named fields (the contract's, flattened as in ROBOT_ROWS_SCHEMA)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    vibration_rms: float | None = Field(None, ge=0, description="Vibration RMS (g).")
    vibration_kurtosis: float | None = Field(None, description="Vibration kurtosis (3 for a healthy bearing).")
    temperature: float | None = Field(None, description="Bearing temperature (degC).")
    motor_current: float | None = Field(None, ge=0, description="Motor current (A).")
    cycle_count: int | None = Field(None, ge=0, le=INT64_MAX, description="The robot's cycle counter.")
    vibration_bpfo: float | None = Field(None, ge=0, description="Band energy at the outer-race frequency.")
    vibration_bpfi: float | None = Field(None, ge=0, description="Band energy at the inner-race frequency.")
    vibration_bsf: float | None = Field(None, ge=0, description="Band energy at the ball spin frequency.")
    vibration_ftf: float | None = Field(None, ge=0, description="Band energy at the cage frequency.")
    health_score: float | None = Field(None, ge=0, le=100, description="The device's own health score, if it has one.")

    @model_validator(mode="before")
    @classmethod
    def _flatten_vibration(cls, data: Any) -> Any:
        """Take the contract's nested `vibration` object as the robot publishes it."""
        if not isinstance(data, dict) or data.get("vibration") is None:
            return data
        nested = data["vibration"]
        if not isinstance(nested, dict):
            raise ValueError("vibration must be an object such as {'rms': 0.35, 'kurtosis': 3.1}")
        flat = {k: v for k, v in data.items() if k != "vibration"}
        for name in ("rms", "kurtosis", *BAND_FIELDS):
            if name in nested:
                flat.setdefault(f"vibration_{name}", nested[name])
        return flat

    @classmethod
    def from_vector(cls, features: Sequence[float]) -> RobotFeatures:
        """The 5-float form, in FEATURE_ORDER; the cycle count is rounded down."""
        values = dict(zip(FEATURE_ORDER, features, strict=True))
        cycles = values.pop("cycle_count")
        return cls(**values, cycle_count=math.floor(cycles))

    def telemetry(self, robot_id: str, ts: datetime) -> RobotTelemetry:
        """As the contract's RobotTelemetry (what fleet's health score reads)."""
        vibration = VibrationFeatures(
            rms=self.vibration_rms,
            kurtosis=self.vibration_kurtosis,
            **{name: getattr(self, f"vibration_{name}") for name in BAND_FIELDS},
        )
        return RobotTelemetry(
            asset_id=robot_id,
            ts=ts,
            vibration=vibration,
            temperature=self.temperature,
            motor_current=self.motor_current,
            cycle_count=self.cycle_count,
            health_score=self.health_score,
        )


class PredictRequest(BaseModel):
    """A robot and its current reading: `features` (5 floats) or `reading` (named fields), not both."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"robot_id": "robot-01", "features": [0.35, 3.4, 52.0, 4.1, 18250], "confidence_level": 0.95},
                {
                    "robot_id": "robot-02",
                    "reading": {"temperature": 58.5, "cycle_count": 20400, "vibration": {"rms": 0.6, "bpfo": 0.02}},
                    "confidence_level": 0.9,
                },
            ]
        }
    )

    robot_id: RobotId
    features: list[FiniteFloat] | None = Field(
        None,
        min_length=len(FEATURE_ORDER),
        max_length=len(FEATURE_ORDER),
        description=f"In this order: {', '.join(FEATURE_ORDER)} (units as in `reading`).",
    )
    reading: RobotFeatures | None = Field(None, description="The reading with named fields (richer than `features`).")
    confidence_level: float = Field(DEFAULT_CONFIDENCE, gt=0, lt=1, description="Coverage of the RUL interval.")
    use_history: bool = Field(
        True, description="Add the robot's recent readings known to the API (else: this one alone)."
    )

    _named: RobotFeatures | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _one_form(self) -> PredictRequest:
        if (self.features is None) == (self.reading is None):
            raise ValueError("send either `features` (5 floats) or `reading` (named fields), exactly one of them")
        if self.features is not None:
            try:
                self._named = RobotFeatures.from_vector(self.features)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
                raise ValueError(f"features ({', '.join(FEATURE_ORDER)}): {problems}") from None
        return self

    def named(self) -> RobotFeatures:
        """The reading with named fields, whichever form it came in."""
        named = self.reading if self.reading is not None else self._named
        assert named is not None  # the validator made sure
        return named


class BatchPredictRequest(BaseModel):
    requests: list[PredictRequest] = Field(min_length=1, max_length=MAX_BATCH)


def _batch_form(value: Any) -> str:
    return "list" if isinstance(value, list) else "object"


BatchBody = Annotated[
    Annotated[list[PredictRequest], Field(min_length=1, max_length=MAX_BATCH), Tag("list")]
    | Annotated[BatchPredictRequest, Tag("object")],
    Discriminator(_batch_form),
]


class ModelRef(BaseModel):
    """Which champion answered."""

    name: str = Field(description="Model family, e.g. rul_lstm.")
    registered_name: str = Field(description="Name in the MLflow registry.")
    version: str
    alias: str | None
    mlflow_run_id: str | None


class ConfidenceInterval(BaseModel):
    lower: float = Field(description="Lower end (cycles, never below 0).")
    upper: float | None = Field(description="Upper end (cycles); null when the model has no calibration to bound it.")
    confidence_level: float


class PredictResponse(BaseModel):
    robot_id: str
    rul_cycles: float = Field(description="Remaining useful life of the bearing, in robot cycles.")
    confidence_interval: ConfidenceInterval
    health_score: float | None = Field(description="0-100; null when the reading tells nothing of health.")
    health_source: HealthSource | None = Field(description="'device' (sent in the reading) or 'derived'.")
    maintenance_priority: Priority
    priority_reason: str
    history_steps: int = Field(description="Steps of history the model saw, the given reading included (1: it alone).")
    model_window: int = Field(description="Steps the model reads; fewer history steps are padded.")
    cycles_per_step: float = Field(description="Robot cycles per model step.")
    history_sources: list[HistorySource] = Field(description="Where the readings came from.")
    history_since: IsoDatetime | None = Field(description="Time of the oldest history reading used; null without one.")
    features_used: RobotFeatures = Field(description="The given reading with named fields.")
    model: ModelRef
    predicted_at: IsoDatetime
    warnings: list[str] = Field(default_factory=list, description="History that could not be read.")


class ModelInfo(BaseModel):
    name: str = Field(description="Model family.")
    registered_name: str = Field(description="Name in the MLflow registry.")
    summary: str
    status: Literal["champion", "no_champion", "unknown"] = Field(
        description="champion: a version holds the alias; no_champion: none yet; unknown: the registry didn't answer."
    )
    alias: str
    version: str | None
    trained_at: IsoDatetime | None = Field(description="When the champion version was registered.")
    metrics: dict[str, float] = Field(description="Metrics of the MLflow run that produced it (finite ones).")
    mlflow_run_id: str | None
    resolved_at: IsoDatetime = Field(description="When the alias was last looked up (re-resolved periodically).")
    inference: bool = Field(description="This API runs the model on demand (/api/ml/predict, /api/ppe/check).")
    loaded_version: str | None = Field(description="The version this API process has loaded; null if none yet.")
    detail: str | None = Field(description="Why there is no champion, or why loading it failed.")


class ModelInfoList(BaseModel):
    models: list[ModelInfo] = Field(description="Every model family, in catalog order.")
    registry_reachable: bool


class RegionBox(BaseModel):
    """A box as fractions of the frame (0-1)."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float


class PixelBox(BaseModel):
    """The same box in pixels of the uploaded image."""

    x_min: int
    y_min: int
    x_max: int
    y_max: int


PpeVerdict = Literal["worn", "missing", "unknown"]


class PersonCheck(BaseModel):
    box: RegionBox
    box_px: PixelBox
    person_score: float = Field(description="How surely the region is a person (an unexplained violation blob: low).")
    hardhat: PpeVerdict
    vest: PpeVerdict
    hardhat_probability: float
    no_hardhat_probability: float
    vest_probability: float
    no_vest_probability: float


class ImageFacts(BaseModel):
    format: Literal["JPEG", "PNG"]
    width: int
    height: int
    bytes: int


class PpeCheckResponse(BaseModel):
    violation: bool = Field(description="violation_probability reached the threshold.")
    violation_probability: float
    no_hardhat: bool
    no_hardhat_probability: float
    no_vest: bool
    no_vest_probability: float
    threshold: float = Field(description="The champion's verdict threshold, chosen when it was trained.")
    regions: list[PersonCheck] = Field(description="One per person (or unexplained violation) in the frame.")
    image: ImageFacts
    model: ModelRef
    checked_at: IsoDatetime


def _model_ref(served: ServedModel) -> ModelRef:
    info = served.info
    return ModelRef(
        name=served.name,
        registered_name=info.name,
        version=info.version,
        alias=info.alias,
        mlflow_run_id=info.run_id,
    )


# ---- history of a robot ----


def _cycles_per_step(model: RulModel) -> float:
    from factory_pipelines.rul_model import robot_cycles_per_step

    return robot_cycles_per_step(model)


def history_windows(model: RulModel, window_seconds: float) -> int:
    from factory_pipelines.rul_model import robot_history_windows

    return robot_history_windows(model, window_seconds)


def newest_window_files(directory: StoragePath, windows: int) -> list[StoragePath]:
    """Typed-row files of the newest `windows` windows (every collector's part of each), oldest first.

    Window keys start with the window's start time, so names sort by time: only the newest are parsed.
    """
    chosen: list[StoragePath] = []
    starts: set[datetime] = set()
    for path in reversed(parquet_files(directory)):
        try:
            start = window_start(path.stem)
        except WindowKeyError:
            continue
        if start not in starts and len(starts) == windows:
            break
        starts.add(start)
        chosen.append(path)
    return chosen[::-1]


def _robot_rows(frame: pl.DataFrame | pl.LazyFrame, present: Sequence[str]) -> Any:
    """`frame` with ROBOT_ROW_SCHEMA's columns (absent ones null), in order."""
    from factory_pipelines.rul_model import ROBOT_ROW_SCHEMA

    return frame.select(
        pl.col(c).cast(t) if c in present else pl.lit(None, t).alias(c) for c, t in ROBOT_ROW_SCHEMA.items()
    )


def _empty_rows() -> pl.DataFrame:
    from factory_pipelines.rul_model import ROBOT_ROW_SCHEMA

    return pl.DataFrame(schema=ROBOT_ROW_SCHEMA)


def stored_history(settings: FactorySettings, robot_ids: set[str], windows: int) -> tuple[pl.DataFrame, list[str]]:
    """Typed robot rows of `robot_ids` from the newest `windows` windows; warnings for files not read."""
    frames: list[pl.DataFrame] = []
    warnings: list[str] = []
    directory = settings.typed_rows_dir / "robots"
    try:
        paths = newest_window_files(directory, windows)
    except Exception as exc:  # object storage that does not answer raises its client's own errors
        return _empty_rows(), [f"robot rows not listed at {directory}: {describe_error(exc)}"]
    for path in paths:
        try:
            scan = scan_parquet(path)
            present = scan.collect_schema().names()
            if "asset_id" not in present:
                continue
            rows = _robot_rows(scan.filter(pl.col("asset_id").is_in(sorted(robot_ids))), present).collect()
        except Exception as exc:  # a file not read costs a warning, not the answer (OSError, polars, the store's)
            warnings.append(f"robot rows {path.name} not read: {describe_error(exc)}")
            continue
        frames.append(rows)
    if not frames:
        return _empty_rows(), warnings
    return pl.concat(frames), warnings


def _reading_row(robot_id: str, ts: datetime, reading: RobotTelemetry | RobotFeatures) -> dict[str, Any]:
    if isinstance(reading, RobotFeatures):
        vibration = {f"vibration_{n}": getattr(reading, f"vibration_{n}") for n in ("rms", "kurtosis", *BAND_FIELDS)}
    else:
        nested = reading.vibration
        vibration = {
            f"vibration_{n}": getattr(nested, n) if nested else None for n in ("rms", "kurtosis", *BAND_FIELDS)
        }
    return {
        "asset_id": robot_id,
        "ts": ts,
        "cycle_count": reading.cycle_count,
        "temperature": reading.temperature,
        "motor_current": reading.motor_current,
        "health_score": reading.health_score,
        **vibration,
        "true_rul_cycles": None,
    }


@dataclass(frozen=True, slots=True)
class _Prepared:
    """One request's rows for the model (its own unit key), and where they came from."""

    request: PredictRequest
    reading: RobotFeatures  # the given reading, with its cycle count filled in
    unit: str
    rows: pl.DataFrame
    sources: list[HistorySource]
    history_since: datetime | None
    at: datetime


def _prepare(
    index: int,
    request: PredictRequest,
    stored: pl.DataFrame,
    live: RobotTelemetry | None,
    cycles_per_step: float,
) -> _Prepared:
    from factory_pipelines.rul_model import ROBOT_ROW_SCHEMA

    reading = request.named()
    history = stored.filter(pl.col("asset_id") == request.robot_id) if request.use_history else stored.clear()
    history = history.with_columns(pl.lit("typed_rows").alias("_source"))
    if request.use_history and live is not None:
        newest = history["ts"].max() if history.height else None
        if newest is None or live.ts > newest:  # type: ignore[operator]
            live_row = pl.DataFrame([_reading_row(request.robot_id, live.ts, live)], ROBOT_ROW_SCHEMA)
            history = pl.concat([history, live_row.with_columns(pl.lit("live").alias("_source"))])
    if reading.cycle_count is None:
        last = history["cycle_count"].max() if history.height else None
        cycle = int(last) + math.ceil(cycles_per_step) if last is not None else 0  # type: ignore[call-overload]
        reading = reading.model_copy(update={"cycle_count": cycle})
    history = history.filter(pl.col("cycle_count") <= reading.cycle_count)  # what may precede the reading
    present = set(history["_source"].to_list())
    sources: list[HistorySource] = [s for s in ("typed_rows", "live") if s in present]
    newest = history["ts"].max() if history.height else None
    now = utc_now()
    at = max(now, newest + timedelta(milliseconds=1)) if isinstance(newest, datetime) else now
    given = pl.DataFrame([_reading_row(request.robot_id, at, reading)], ROBOT_ROW_SCHEMA)
    unit = f"request-{index}"  # two requests for one robot in a batch stay apart
    rows = pl.concat([history.drop("_source"), given]).with_columns(pl.lit(unit).alias("asset_id"))
    since = history["ts"].min() if history.height else None
    return _Prepared(
        request=request,
        reading=reading,
        unit=unit,
        rows=rows,
        sources=[*sources, "request"],
        history_since=since if isinstance(since, datetime) else None,
        at=at,
    )


def _live_readings(request: Request, robot_ids: set[str]) -> dict[str, RobotTelemetry]:
    live = live_of(request.app)  # started on first use, like the fleet routes; absent readings are simply absent
    readings: dict[str, RobotTelemetry] = {}
    for robot_id in robot_ids:
        latest = live.reading(PayloadKind.ROBOT, robot_id)
        if latest is not None and isinstance(latest.model, RobotTelemetry):
            readings[robot_id] = latest.model
    return readings


def predict_robots(
    request: Request, context: ServingContext, cache: ModelCache, requests: Sequence[PredictRequest]
) -> list[PredictResponse]:
    """Answers for `requests`, in order: one model lookup, one history read, one inference call."""
    from factory_pipelines.rul_model import predict_robot_rul

    served = cache.get(RUL_MODEL)
    model: RulModel = served.model
    cycles_per_step = _cycles_per_step(model)
    wanted = {r.robot_id for r in requests if r.use_history}
    stored, warnings = _empty_rows(), []
    live: dict[str, RobotTelemetry] = {}
    if wanted:
        stored, warnings = stored_history(
            context.settings, wanted, history_windows(model, context.settings.window_seconds)
        )
        live = _live_readings(request, wanted)
    prepared = [_prepare(i, r, stored, live.get(r.robot_id), cycles_per_step) for i, r in enumerate(requests)]
    with served.lock:
        answers = predict_robot_rul(model, pl.concat([p.rows for p in prepared]))
    by_unit = {row["asset_id"]: row for row in answers.iter_rows(named=True)}
    ref = _model_ref(served)
    return [_answer(p, by_unit[p.unit], model, ref, cycles_per_step, warnings) for p in prepared]


def _answer(
    prepared: _Prepared,
    row: dict[str, Any],
    model: RulModel,
    ref: ModelRef,
    cycles_per_step: float,
    warnings: list[str],
) -> PredictResponse:
    request = prepared.request
    confidence = request.confidence_level
    lower, upper = (float(v[0]) for v in model.interval(np.array([row["rul"]], dtype=np.float64), confidence))
    health, source = health_of(prepared.reading.telemetry(request.robot_id, prepared.at))
    priority, reason = maintenance_priority(lower, health)
    return PredictResponse(
        robot_id=request.robot_id,
        rul_cycles=float(row["rul"]),
        confidence_interval=ConfidenceInterval(
            lower=lower, upper=upper if math.isfinite(upper) else None, confidence_level=confidence
        ),
        health_score=health,
        health_source=source,
        maintenance_priority=priority,
        priority_reason=reason,
        history_steps=int(row["steps"]),
        model_window=model.window,
        cycles_per_step=cycles_per_step,
        history_sources=prepared.sources,
        history_since=prepared.history_since,
        features_used=prepared.reading,
        model=ref,
        predicted_at=utc_now(),
        warnings=warnings,
    )


# ---- routes: robots ----


@router.post(
    "/api/ml/predict",
    tags=["ml"],
    summary="Remaining useful life of a robot's bearing, with health score and maintenance priority",
    response_model=PredictResponse,
    responses=problem_responses(401, 422, 503),
)
def predict(
    body: PredictRequest,
    request: Request,
    context: Annotated[ServingContext, Depends(get_context)],
    cache: Annotated[ModelCache, Depends(model_cache_for)],
) -> Any:
    """RUL (cycles) with an interval at `confidence_level`, from the rul_lstm champion.

    The given reading is the newest step of the robot's history (see `history_steps`); 503 when
    there is no rul_lstm champion or it cannot be loaded.
    """
    try:
        return predict_robots(request, context, cache, [body])[0]
    except ModelUnavailableError as exc:
        return exc.response(request)


@router.post(
    "/api/ml/batch_predict",
    tags=["ml"],
    summary=f"Up to {MAX_BATCH} predictions in one call",
    response_model=list[PredictResponse],
    responses=problem_responses(401, 422, 503),
)
def batch_predict(
    body: Annotated[
        BatchBody, Body(description=f"A list of predict requests (or {{'requests': [...]}}), at most {MAX_BATCH}.")
    ],
    request: Request,
    context: Annotated[ServingContext, Depends(get_context)],
    cache: Annotated[ModelCache, Depends(model_cache_for)],
) -> Any:
    """One answer per request, in order, all from the same champion version."""
    requests = body.requests if isinstance(body, BatchPredictRequest) else body
    try:
        return predict_robots(request, context, cache, requests)
    except ModelUnavailableError as exc:
        return exc.response(request)


@router.get(
    "/api/ml/model_info",
    tags=["ml"],
    summary="Champion of every model family: version, trained-at, metrics, MLflow run",
    response_model=ModelInfoList,
    responses=problem_responses(401),
)
def model_info(
    context: Annotated[ServingContext, Depends(get_context)],
    cache: Annotated[ModelCache, Depends(model_cache_for)],
) -> ModelInfoList:
    """Every family of the catalog; one without a champion says so (`status`, `detail`)."""
    names = list(CATALOG)
    with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="model-info") as pool:
        lookups = list(pool.map(context.champions.get, names))  # wait for all at once, not one after another
    models = [_model_info(lookup, cache, context.champions.alias) for lookup in lookups]
    return ModelInfoList(models=models, registry_reachable=all(lookup.registry_reachable for lookup in lookups))


def _model_info(lookup: ChampionLookup, cache: ModelCache, alias: str) -> ModelInfo:
    champion = lookup.champion
    loaded = cache.loaded(lookup.name)
    if lookup.error is not None:
        status: Literal["champion", "no_champion", "unknown"] = "unknown"
        detail: str | None = f"the model registry could not be asked: {lookup.error}"
    elif champion is None:
        status, detail = "no_champion", f"no version holds the {alias} alias yet (the model has not been trained)"
    else:
        status, detail = "champion", cache.failure(lookup.name)
    return ModelInfo(
        name=lookup.name,
        registered_name=champion.name if champion else lookup.name,
        summary=CATALOG[lookup.name].summary,
        status=status,
        alias=alias,
        version=champion.version if champion else None,
        trained_at=champion.created_at if champion else None,
        metrics={k: float(v) for k, v in (champion.metrics if champion else {}).items() if math.isfinite(v)},
        mlflow_run_id=champion.run_id if champion else None,
        resolved_at=lookup.resolved_at,
        inference=lookup.name in cache.loaders,
        loaded_version=loaded.info.version if loaded else None,
        detail=detail,
    )


# ---- route: PPE check ----


def _read_upload(file: UploadFile) -> bytes:
    """The upload's bytes; 413 past MAX_IMAGE_BYTES (reads at most one byte more)."""
    if file.size is not None and file.size > MAX_IMAGE_BYTES:
        raise _too_large(file.size)
    data = file.file.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise _too_large(None)
    return data


def _too_large(size: int | None) -> ProblemError:
    got = f"{size} bytes" if size is not None else "more"
    return ProblemError(
        413, f"the image is too large: {got}, at most {MAX_IMAGE_BYTES} bytes (5 MB)", type_=CONTENT_TOO_LARGE
    )


def image_format(content_type: str | None, data: bytes) -> str:
    """JPEG or PNG by the declared type (by the first bytes when none is declared); 415 otherwise."""
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    if declared in IMAGE_TYPES:
        return IMAGE_TYPES[declared]
    if declared in UNDECLARED_TYPES:
        for signature, kind in IMAGE_SIGNATURES.items():
            if data.startswith(signature):
                return kind
    raise ProblemError(
        415,
        f"{declared or 'a file of no declared type'} is not supported: upload a JPEG or PNG image",
        type_=UNSUPPORTED_MEDIA,
    )


def decode_upload(data: bytes, kind: str) -> tuple[np.ndarray, str]:
    """The image as RGB (H, W, 3) uint8 and its real format; 422 when it does not decode, 413 when huge."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ProblemError(
                    413,
                    f"the image is {width} x {height} pixels; at most {MAX_IMAGE_PIXELS} pixels are checked",
                    type_=CONTENT_TOO_LARGE,
                )
            image.load()
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
            found = str(image.format)
    except ProblemError:
        raise
    except Exception as exc:  # Pillow raises many kinds (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise ProblemError(
            422, f"the upload is not a decodable {kind} image: {describe_error(exc)}", type_=UNDECODABLE_IMAGE
        ) from exc
    return pixels, found


def _person(region: PersonRegion, width: int, height: int) -> PersonCheck:
    x0, y0, x1, y1 = region.box
    return PersonCheck(
        box=RegionBox(x_min=x0, y_min=y0, x_max=x1, y_max=y1),
        box_px=PixelBox(
            x_min=round(x0 * width), y_min=round(y0 * height), x_max=round(x1 * width), y_max=round(y1 * height)
        ),
        person_score=region.person_score,
        hardhat=region.hardhat,  # type: ignore[arg-type]
        vest=region.vest,  # type: ignore[arg-type]
        hardhat_probability=region.hardhat_probability,
        no_hardhat_probability=region.no_hardhat_probability,
        vest_probability=region.vest_probability,
        no_vest_probability=region.no_vest_probability,
    )


@router.post(
    PPE_CHECK_PATH,
    tags=["ppe"],
    summary="Hard-hat and vest verdicts for an uploaded camera frame",
    response_model=PpeCheckResponse,
    responses=problem_responses(401, 413, 415, 422, 503),
)
def check_ppe(
    request: Request,
    file: Annotated[UploadFile, File(description="A JPEG or PNG frame, at most 5 MB.")],
    cache: Annotated[ModelCache, Depends(model_cache_for)],
) -> Any:
    """Per-person regions (boxes as fractions and in pixels) with hard-hat and vest verdicts, and the
    frame verdict, from the ppe_vision champion. 415: not a JPEG or PNG; 413: over 5 MB; 422: does not decode.
    """
    data = _read_upload(file)
    kind = image_format(file.content_type, data)
    pixels, found = decode_upload(data, kind)
    try:
        served = cache.get(PPE_MODEL)
    except ModelUnavailableError as exc:
        return exc.response(request)
    with served.lock:
        verdict: FrameVerdict = served.model.predict_frames([pixels])[0]
    height, width = pixels.shape[:2]
    return PpeCheckResponse(
        violation=verdict.violation,
        violation_probability=verdict.violation_probability,
        no_hardhat=verdict.no_hardhat,
        no_hardhat_probability=verdict.no_hardhat_probability,
        no_vest=verdict.no_vest,
        no_vest_probability=verdict.no_vest_probability,
        threshold=verdict.threshold,
        regions=[_person(region, width, height) for region in verdict.regions],
        image=ImageFacts(format=found, width=width, height=height, bytes=len(data)),  # type: ignore[arg-type]
        model=_model_ref(served),
        checked_at=utc_now(),
    )
