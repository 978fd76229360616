"""Alert rules: a YAML file of conditions on predictions and typed telemetry, and their evaluation.

The rules are configuration, so an operator edits them by hand; a mistake there must stop the
platform at start with the file and line of the bad entry, not silently disarm an alert. Hence:
unknown keys, duplicate keys, duplicate rule names, unknown models, telemetry kinds or columns
and broken templates are all load-time errors (`RuleFileError`, one `file:line: ...` per problem).

File format (see `alert_rules.yaml`, the defaults that ship)::

    defaults:                    # optional; applies to every rule that does not say otherwise
      cooldown: 10m
      auto_clear_after: 30m      # null: only manual clearing
      dedup_key: "{source}:{type}:{asset_id}"
    escalation:                  # optional; stages for unacknowledged CRITICAL alerts, in order
      - {after: 15m, notify: [escalation]}            # on_call, escalation (the TWILIO_* lists) or +numbers
      - {after: 45m, notify: [escalation, "+15551230009"]}
    rules:
      - name: rul_low            # unique
        model: rul_lstm          # a prediction rule ... or `telemetry: machines` for typed rows
        when: {field: rul_lower, below: 200}
        severity: CRITICAL       # INFO, WARNING or CRITICAL
        type: RUL_LOW
        message: "Robot {asset_id}: RUL lower bound {rul_lower:.0f} cycles"
        extras: [rul_lower]      # prediction extras the templates may name (condition fields count)

A prediction condition is one mapping or a list of them (all must hold); each names a `field`
(default `score`; any Prediction field or extra) and one or more of `above`, `below` (strict),
`at_least`, `at_most`, `equals`, `in`, `not_in`. A telemetry condition names a numeric column of
the kind's typed rows, a band `outside: {low, high}` (either end optional, the ends themselves
inside) and `for_readings: M`, the consecutive out-of-band readings of one asset (by ts) it takes.

Evaluation never raises on bad data: a prediction lacking a field a rule needs, or a template that
cannot be filled, skips that rule for that prediction and is reported in `Evaluation.problems`.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, get_args, get_origin

import polars as pl
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from factory_pipelines.alert_model import AlertCandidate, AlertLineage
from factory_pipelines.model_catalog import CATALOG
from factory_pipelines.telemetry import (
    MACHINE_NUMERIC_FIELDS,
    MachineTelemetry,
    Prediction,
    Severity,
    UtcDatetime,
)
from factory_pipelines.window_rows import ENVELOPE_SCHEMA, ROBOT_ROWS_SCHEMA, SAFETY_ROWS_SCHEMA

DEFAULT_DEDUP_KEY = "{source}:{type}:{asset_id}"
DEFAULT_COOLDOWN_S = 600.0
DEFAULT_AUTO_CLEAR_S = 1800.0
DEFAULT_RULES_RESOURCE = "alert_rules.yaml"
TELEMETRY_ASSET_KEY = "telemetry_window"  # the Dagster asset that writes the typed rows

MACHINE_ROWS_COLUMNS: dict[str, pl.DataType] = {
    **ENVELOPE_SCHEMA,
    **{
        name: pl.Float64() if name in MACHINE_NUMERIC_FIELDS else pl.String()
        for name, field in MachineTelemetry.model_fields.items()
        if field.alias is not None
    },
}
TELEMETRY_COLUMNS: dict[str, dict[str, pl.DataType]] = {
    "machines": MACHINE_ROWS_COLUMNS,
    "robots": ROBOT_ROWS_SCHEMA,
    "safety": SAFETY_ROWS_SCHEMA,
}
"""Typed-row kinds a telemetry rule may watch (directory names under telemetry/) and their columns."""

PREDICTION_TEMPLATE_NAMES = frozenset(Prediction.model_fields) | frozenset(
    ["source", "type", "rule", "severity", "field", "value", "limit"]
)
"""Names every prediction template may use, besides the rule's condition fields and declared extras."""
TELEMETRY_TEMPLATE_NAMES = frozenset(
    [
        "source",
        "type",
        "rule",
        "severity",
        "kind",
        "asset_id",
        "window_key",
        "ts",
        "field",
        "value",
        "low",
        "high",
        "readings",
        "for_readings",
        "streak_started_at",
    ]
)
"""Names every telemetry template may use, besides the columns of the kind's rows."""


# ---- durations and the error type ------------------------------------------------------------

_DURATION_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_DURATION_TEXT = re.compile(r"(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d)\s*)+")


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like "90s", "10m", "2h", "1h30m"."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"duration must be seconds or a string like '90s', '10m', '2h', got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif _DURATION_TEXT.fullmatch(text):
            seconds = sum(float(n) * _DURATION_UNITS_S[unit] for n, unit in _DURATION_PART.findall(text))
        else:
            raise ValueError(f"duration must be seconds or a string like '90s', '10m', '2h', got {value!r}")
    else:
        seconds = float(value)
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {value!r}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class RuleFileError(ValueError):
    """A rule file that cannot be used; each of `problems` reads `file:line: what is wrong`."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# ---- conditions ------------------------------------------------------------------------------


def _single_value(value: object) -> object:
    if not isinstance(value, str | int | float | bool):
        raise ValueError(f"must be a single value (text, number, true or false), got {value!r}")
    return value


Scalar = Annotated[str | int | float | bool, BeforeValidator(_single_value)]


class _Incomparable(Exception):
    """A field whose value the condition cannot judge (missing, null, or of the wrong type)."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class PredictionCondition(BaseModel):
    """One test on one field of a prediction; every comparator given must hold."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)

    field: str = Field("score", min_length=1)
    above: float | None = None
    below: float | None = None
    at_least: float | None = None
    at_most: float | None = None
    equals: Scalar | None = None
    in_: tuple[Scalar, ...] | None = Field(None, alias="in", min_length=1)
    not_in: tuple[Scalar, ...] | None = Field(None, min_length=1)

    NUMERIC: ClassVar[tuple[str, ...]] = ("above", "below", "at_least", "at_most")

    @model_validator(mode="after")
    def _must_be_satisfiable(self) -> PredictionCondition:
        if all(getattr(self, name) is None for name in (*self.NUMERIC, "equals", "in_", "not_in")):
            raise ValueError("condition needs one of above, below, at_least, at_most, equals, in, not_in")
        # (bound, strict): the tightest lower and upper bounds; a strict bound wins a tie.
        lows = [(v, strict) for v, strict in ((self.above, True), (self.at_least, False)) if v is not None]
        highs = [(v, strict) for v, strict in ((self.below, True), (self.at_most, False)) if v is not None]
        if lows and highs:
            low, low_strict = max(lows, key=lambda bound: (bound[0], bound[1]))
            high, high_strict = min(highs, key=lambda bound: (bound[0], not bound[1]))
            if low > high or (low == high and (low_strict or high_strict)):
                raise ValueError(f"condition on {self.field!r} can never hold ({self.describe()})")
        return self

    def holds(self, value: Any) -> bool:
        """Whether `value` meets every comparator; _Incomparable when it cannot be judged."""
        if value is None:
            raise _Incomparable(f"field {self.field!r} is missing or null")
        if isinstance(value, float) and math.isnan(value):
            raise _Incomparable(f"field {self.field!r} is NaN")
        if any(getattr(self, name) is not None for name in self.NUMERIC) and not _is_number(value):
            raise _Incomparable(f"field {self.field!r} is {value!r}, not a number")
        checks = (
            self.above is None or value > self.above,
            self.below is None or value < self.below,
            self.at_least is None or value >= self.at_least,
            self.at_most is None or value <= self.at_most,
            self.equals is None or value == self.equals,
            self.in_ is None or value in self.in_,
            self.not_in is None or value not in self.not_in,
        )
        return all(checks)

    @property
    def limit(self) -> Any:
        """The condition's bound for messages and evidence: the first comparator given."""
        for name in (*self.NUMERIC, "equals"):
            if getattr(self, name) is not None:
                return getattr(self, name)
        return list(self.in_ or self.not_in or ())

    def describe(self) -> str:
        symbols = {"above": ">", "below": "<", "at_least": ">=", "at_most": "<=", "equals": "=="}
        parts = [
            f"{self.field} {symbols[name]} {getattr(self, name)!r}"
            for name in symbols
            if getattr(self, name) is not None
        ]
        if self.in_ is not None:
            parts.append(f"{self.field} in {list(self.in_)!r}")
        if self.not_in is not None:
            parts.append(f"{self.field} not in {list(self.not_in)!r}")
        return " and ".join(parts)


class Band(BaseModel):
    """The normal range of a telemetry value; a reading strictly below `low` or above `high` is out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _needs_an_end(self) -> Band:
        if self.low is None and self.high is None:
            raise ValueError("outside needs low, high or both")
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError(f"outside: low ({self.low}) must be below high ({self.high})")
        return self

    def excludes(self, value: float) -> bool:
        return (self.low is not None and value < self.low) or (self.high is not None and value > self.high)


class TelemetryCondition(BaseModel):
    """A numeric column out of its band for `for_readings` consecutive readings of one asset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field(min_length=1)
    outside: Band
    for_readings: int = Field(1, ge=1)

    def describe(self) -> str:
        return f"{self.field} outside [{self.outside.low}, {self.outside.high}] for {self.for_readings} readings"


# ---- rules -----------------------------------------------------------------------------------


class AlertRule(BaseModel):
    """What every rule shares: how the alert it raises is named, worded, deduplicated and cleared."""

    model_config = ConfigDict(frozen=True)

    name: str
    severity: Severity
    type: str
    message: str
    dedup_key: str = DEFAULT_DEDUP_KEY
    cooldown_s: float = Field(DEFAULT_COOLDOWN_S, ge=0)
    auto_clear_s: float | None = Field(DEFAULT_AUTO_CLEAR_S, gt=0)
    line: int | None = Field(None, description="Line of the rule in its file, for diagnostics.")

    @property
    def source(self) -> str:
        raise NotImplementedError

    def build_candidate(
        self,
        names: Mapping[str, Any],
        *,
        asset_id: str,
        observed_at: datetime,
        lineage: AlertLineage,
        evidence: dict[str, Any],
    ) -> AlertCandidate:
        """The candidate, or _Incomparable when a template names a field these values lack."""
        message = _fill(self.message, names, "message")
        dedup_key = _fill(self.dedup_key, names, "dedup_key")
        return AlertCandidate(
            rule=self.name,
            type=self.type,
            severity=self.severity,
            source=self.source,
            asset_id=asset_id,
            message=message,
            dedup_key=dedup_key,
            cooldown_s=self.cooldown_s,
            auto_clear_s=self.auto_clear_s,
            observed_at=observed_at,
            lineage=lineage,
            evidence=evidence,
        )


class PredictionRule(AlertRule):
    """A rule on one model's predictions."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    model: str
    when: tuple[PredictionCondition, ...] = Field(min_length=1)
    extras: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        return self.model

    def evaluate(
        self, prediction: Prediction, fields: Mapping[str, Any], asset_key: str | None
    ) -> AlertCandidate | None:
        """A candidate when every condition holds, None when one does not; _Incomparable if it cannot tell."""
        values = [fields.get(condition.field) for condition in self.when]
        if not all(condition.holds(value) for condition, value in zip(self.when, values, strict=True)):
            return None
        first = self.when[0]
        names = {
            **fields,
            "source": self.source,
            "type": self.type,
            "rule": self.name,
            "severity": self.severity.value,
            "field": first.field,
            "value": values[0],
            "limit": first.limit,
        }
        evidence: dict[str, Any] = {
            "field": first.field,
            "value": values[0],
            "threshold": first.limit,
            "score": prediction.score,
            "label": prediction.label,
            "conditions": [condition.describe() for condition in self.when],
        }
        for condition, value in zip(self.when[1:], values[1:], strict=True):
            evidence.setdefault(condition.field, value)
        model_threshold = fields.get("threshold")
        if _is_number(model_threshold):
            evidence["model_threshold"] = model_threshold
        lineage = AlertLineage(
            window_key=prediction.window_key,
            asset_key=asset_key,
            model_name=prediction.model_name,
            model_version=prediction.model_version,
            mlflow_run_id=prediction.mlflow_run_id,
            dagster_run_id=prediction.dagster_run_id,
            prediction_id=prediction.prediction_id,
        )
        return self.build_candidate(
            names,
            asset_id=prediction.asset_id,
            observed_at=prediction.window_end or prediction.produced_at,
            lineage=lineage,
            evidence=evidence,
        )


class TelemetryRule(AlertRule):
    """A rule on one kind of typed telemetry rows."""

    telemetry: str
    when: TelemetryCondition

    @property
    def source(self) -> str:
        return f"telemetry:{self.telemetry}"


# ---- the carry-over of telemetry streaks ---------------------------------------------------


class Streak(BaseModel):
    """An asset's run of consecutive out-of-band readings that was still going at the end of a window."""

    readings: int = Field(ge=1)
    started_at: UtcDatetime
    last_ts: UtcDatetime
    last_value: float


class TelemetryCarry(BaseModel):
    """What telemetry evaluation hands from one window to the next, so a streak may span windows.

    `streaks[rule name][asset id]` is the asset's open streak for that rule. Pass the `carry` of one
    `evaluate_telemetry` result into the call for the next window of the same kind (persist it as
    JSON between runs: `model_dump_json` / `model_validate_json`). Readings at or before a streak's
    `last_ts` are skipped, so evaluating a window again with its own output carry does not lengthen
    the streak; an asset with no readings in a window keeps its streak; a null value neither
    extends nor breaks one. Entries of rules that are not evaluated in a call are passed through.
    """

    streaks: dict[str, dict[str, Streak]] = Field(default_factory=dict)


class Evaluation(BaseModel):
    """The outcome of evaluating rules on a batch: what to raise, what could not be judged, the carry."""

    candidates: list[AlertCandidate] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    carry: TelemetryCarry | None = Field(None, description="Telemetry only: hand it to the next window's call.")
    evaluated_at: UtcDatetime


# ---- the rule book ---------------------------------------------------------------------------


class RuleBook:
    """The loaded rules, indexed by the model or telemetry kind they watch."""

    def __init__(
        self, rules: Iterable[AlertRule], origin: str = "<rules>", escalation: Sequence[EscalationStage] = ()
    ) -> None:
        self.rules: tuple[AlertRule, ...] = tuple(rules)
        self.origin = origin
        self.escalation: tuple[EscalationStage, ...] = tuple(escalation)  # empty: the settings' one stage
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"duplicate rule name {rule.name!r}")
            seen.add(rule.name)
        self._by_model: dict[str, tuple[PredictionRule, ...]] = {}
        self._by_kind: dict[str, tuple[TelemetryRule, ...]] = {}
        for rule in self.rules:
            if isinstance(rule, PredictionRule):
                self._by_model[rule.model] = (*self._by_model.get(rule.model, ()), rule)
            elif isinstance(rule, TelemetryRule):
                self._by_kind[rule.telemetry] = (*self._by_kind.get(rule.telemetry, ()), rule)

    def __repr__(self) -> str:
        return f"RuleBook({len(self.rules)} rules from {self.origin})"

    @property
    def models(self) -> tuple[str, ...]:
        """Models that have at least one rule: the prediction partitions worth watching."""
        return tuple(sorted(self._by_model))

    @property
    def telemetry_kinds(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_kind))

    def rules_for_model(self, name: str) -> tuple[PredictionRule, ...]:
        return self._by_model.get(name, ())

    def rules_for_telemetry(self, kind: str) -> tuple[TelemetryRule, ...]:
        return self._by_kind.get(kind, ())

    def rule(self, name: str) -> AlertRule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(f"no rule named {name!r} in {self.origin}")

    def evaluate_predictions(
        self,
        predictions: Sequence[Prediction],
        *,
        asset_key: str | None = None,
        now: datetime | None = None,
    ) -> Evaluation:
        """Candidates for every prediction that breaks a rule of its model, in input order.

        `asset_key` is the Dagster asset that produced the predictions (default: the model's
        prediction asset from the catalog). `now` only stamps `evaluated_at`; each candidate is
        observed at its prediction's window end (or production time).
        """
        candidates: list[AlertCandidate] = []
        problems: list[str] = []
        for prediction in predictions:
            rules = self.rules_for_model(prediction.model_name)
            if not rules:
                continue
            fields = prediction.model_dump()
            entry = CATALOG.get(prediction.model_name)
            lineage_asset = asset_key or (entry.prediction_asset if entry else None)
            for rule in rules:
                try:
                    candidate = rule.evaluate(prediction, fields, lineage_asset)
                except _Incomparable as exc:
                    problems.append(
                        f"rule {rule.name!r}: prediction {prediction.model_name}/{prediction.asset_id} "
                        f"in window {prediction.window_key} skipped: {exc}"
                    )
                    continue
                if candidate is not None:
                    candidates.append(candidate)
        return Evaluation(candidates=candidates, problems=problems, evaluated_at=now or datetime.now(UTC))

    def evaluate_telemetry(
        self,
        kind: str,
        rows: pl.DataFrame,
        *,
        window_key: str,
        carry: TelemetryCarry | None = None,
        asset_key: str | None = TELEMETRY_ASSET_KEY,
        now: datetime | None = None,
    ) -> Evaluation:
        """Candidates for assets whose readings stayed out of band long enough, and the new carry.

        `rows` are one window's typed rows of `kind` (columns asset_id, ts and the rules' fields).
        A rule fires at most once per asset and window, on the last reading that completed or
        extended a long-enough streak; see `TelemetryCarry` for how streaks cross windows.
        """
        previous = carry or TelemetryCarry()
        streaks = {name: dict(by_asset) for name, by_asset in previous.streaks.items()}
        candidates: list[AlertCandidate] = []
        problems: list[str] = []
        for rule in self.rules_for_telemetry(kind):
            missing = [name for name in ("asset_id", "ts", rule.when.field) if name not in rows.columns]
            if missing:
                problems.append(f"rule {rule.name!r}: {kind} rows of window {window_key} lack columns {missing}")
                continue
            if not rows.schema[rule.when.field].is_numeric():
                problems.append(
                    f"rule {rule.name!r}: column {rule.when.field!r} of {kind} rows in window {window_key} "
                    f"is {rows.schema[rule.when.field]}, not numeric"
                )
                continue
            fired, open_streaks, rule_problems = _run_streaks(
                rule, kind, rows, window_key, streaks.get(rule.name, {}), asset_key
            )
            candidates.extend(fired)
            problems.extend(rule_problems)
            if open_streaks:
                streaks[rule.name] = open_streaks
            else:
                streaks.pop(rule.name, None)
        return Evaluation(
            candidates=candidates,
            problems=problems,
            carry=TelemetryCarry(streaks=streaks),
            evaluated_at=now or datetime.now(UTC),
        )


def _as_aware(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


def _run_streaks(
    rule: TelemetryRule,
    kind: str,
    rows: pl.DataFrame,
    window_key: str,
    carried: Mapping[str, Streak],
    asset_key: str | None,
) -> tuple[list[AlertCandidate], dict[str, Streak], list[str]]:
    """One rule over one window: the candidates, every asset's open streak afterwards, the problems."""
    condition = rule.when
    column = pl.col(condition.field)
    usable = pl.col("asset_id").is_not_null() & pl.col("ts").is_not_null() & column.is_not_null()
    if rows.schema[condition.field].is_float():
        usable = usable & ~column.is_nan()
    readings = rows.filter(usable).sort("asset_id", "ts", maintain_order=True)
    open_streaks: dict[str, Streak] = dict(carried)
    candidates: list[AlertCandidate] = []
    problems: list[str] = []
    for (asset_id,), group in readings.group_by("asset_id", maintain_order=True):
        asset = str(asset_id)
        streak = open_streaks.pop(asset, None)
        count = streak.readings if streak else 0
        started_at = streak.started_at if streak else None
        last_ts = streak.last_ts if streak else None
        last_value = streak.last_value if streak else 0.0
        fired: tuple[dict[str, Any], int, datetime] | None = None
        for row in group.iter_rows(named=True):
            ts = _as_aware(row["ts"])
            if count and last_ts is not None and ts <= last_ts:
                continue  # counted already, in the window the carry came from
            value = float(row[condition.field])
            if not condition.outside.excludes(value):
                count, started_at, last_ts = 0, None, None
                continue
            if count == 0:
                started_at = ts
            count += 1
            last_ts, last_value = ts, value
            if count >= condition.for_readings and started_at is not None:
                fired = (row, count, started_at)
        if count and started_at is not None and last_ts is not None:
            open_streaks[asset] = Streak(readings=count, started_at=started_at, last_ts=last_ts, last_value=last_value)
        if fired is None:
            continue
        row, count_at_fire, streak_start = fired
        ts = _as_aware(row["ts"])
        value = float(row[condition.field])
        names = {
            **row,
            "source": rule.source,
            "type": rule.type,
            "rule": rule.name,
            "severity": rule.severity.value,
            "kind": kind,
            "asset_id": asset,
            "window_key": window_key,
            "ts": ts,
            "field": condition.field,
            "value": value,
            "low": condition.outside.low,
            "high": condition.outside.high,
            "readings": count_at_fire,
            "for_readings": condition.for_readings,
            "streak_started_at": streak_start,
        }
        evidence = {
            "kind": kind,
            "field": condition.field,
            "value": value,
            "low": condition.outside.low,
            "high": condition.outside.high,
            "readings": count_at_fire,
            "for_readings": condition.for_readings,
            "streak_started_at": streak_start.isoformat(),
        }
        try:
            candidates.append(
                rule.build_candidate(
                    names,
                    asset_id=asset,
                    observed_at=ts,
                    lineage=AlertLineage(window_key=window_key, asset_key=asset_key),
                    evidence=evidence,
                )
            )
        except _Incomparable as exc:
            problems.append(f"rule {rule.name!r}: {kind} asset {asset} in window {window_key} skipped: {exc}")
    return candidates, open_streaks, problems


# ---- templates -------------------------------------------------------------------------------


def template_names(template: str) -> set[str]:
    """The names a str.format template uses; ValueError if it is malformed or uses positional fields."""
    names: set[str] = set()
    for _literal, field_name, format_spec, conversion in string.Formatter().parse(template):
        if field_name is None:
            continue
        root = re.split(r"[.\[]", field_name, maxsplit=1)[0]
        if not root or root.isdigit():
            raise ValueError(f"positional field {{{field_name}}}: name a field instead, e.g. {{asset_id}}")
        if conversion not in (None, "r", "s", "a"):
            raise ValueError(f"unknown conversion !{conversion} in {{{field_name}}}")
        names.add(root)
        if format_spec and "{" in format_spec:
            names |= template_names(format_spec)
    return names


def _fill(template: str, names: Mapping[str, Any], what: str) -> str:
    try:
        return template.format_map(names)
    except KeyError as exc:
        raise _Incomparable(f"{what} template needs field {exc.args[0]!r}, which is missing") from None
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        raise _Incomparable(f"{what} template cannot be filled: {exc}") from None


# ---- loading ---------------------------------------------------------------------------------


def _severity_of(value: object) -> object:
    if isinstance(value, str) and value.strip().upper() in Severity.__members__:
        return Severity(value.strip().upper())
    raise ValueError(f"severity must be INFO, WARNING or CRITICAL, got {value!r}")


class _Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cooldown: Duration = DEFAULT_COOLDOWN_S
    auto_clear_after: Duration | None = DEFAULT_AUTO_CLEAR_S
    dedup_key: str = Field(DEFAULT_DEDUP_KEY, min_length=1)


RECIPIENT_LISTS = ("on_call", "escalation")  # names of the settings' number lists


class EscalationStage(BaseModel):
    """Stage k of escalation: who is texted when a CRITICAL alert is still unacknowledged `after_s`
    after it was first seen. `notify` holds list names (`on_call`, `escalation`) or numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    after: Duration = Field(gt=0)
    notify: tuple[str, ...] = Field(min_length=1)

    @field_validator("notify")
    @classmethod
    def _known_recipients(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if item not in RECIPIENT_LISTS and not re.fullmatch(r"\+\d{6,15}", item):
                raise ValueError(f"notify: {item!r} is neither {' nor '.join(RECIPIENT_LISTS)} nor a +E.164 number")
        return value


class _RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: _Defaults = Field(default_factory=_Defaults)
    escalation: list[EscalationStage] = Field(default_factory=list)
    rules: list[Any] = Field(min_length=1)

    @field_validator("escalation")
    @classmethod
    def _in_order(cls, value: list[EscalationStage]) -> list[EscalationStage]:
        delays = [stage.after for stage in value]
        if delays != sorted(delays):
            raise ValueError("escalation stages must be listed in the order of their `after` delays")
        return value


class _RuleEntry(BaseModel):
    """One entry of `rules:` as written; `when` is checked once the source says which kind it is."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: str | None = Field(None, min_length=1)
    telemetry: str | None = Field(None, min_length=1)
    when: Any
    severity: Annotated[Severity, BeforeValidator(_severity_of)]
    type: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    message: str = Field(min_length=1)
    dedup_key: str | None = Field(None, min_length=1)
    cooldown: Duration | None = None
    auto_clear_after: Duration | None = None
    extras: list[str] = Field(default_factory=list)


def _known_keys(model: type[BaseModel], path: Sequence[str | int]) -> list[str]:
    """The keys a mapping at `path` inside `model` accepts, for 'unknown key' messages."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        fields = {(f.alias or name): f for name, f in current.model_fields.items()}
        if part not in fields:
            return []
        annotation = fields[part].annotation
        nested = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return []
        current = nested[0]
    return [field.alias or name for name, field in current.model_fields.items()]


def _describe_error(error: Mapping[str, Any], model: type[BaseModel], prefix: Sequence[str | int]) -> str:
    loc: list[str | int] = [*prefix, *error["loc"]]
    where = ".".join(str(p) for p in loc)
    if error["type"] == "extra_forbidden":
        known = _known_keys(model, list(error["loc"])[:-1])
        hint = f" (known keys: {', '.join(known)})" if known else ""
        return f"unknown key {str(loc[-1])!r}{hint}"
    if error["type"] == "missing":
        return f"missing key {str(loc[-1])!r}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if loc and str(loc[-1]) == message.split(" ", 1)[0]:
        return message  # it names its key already ("severity must be ...")
    return f"{where}: {message}" if where else message


def _line_at(node: yaml.Node, loc: Sequence[str | int]) -> int:
    """1-based line of the entry at `loc` under `node`, or of the deepest part of it that exists."""
    line = node.start_mark.line
    current = node
    for part in loc:
        if isinstance(current, yaml.MappingNode):
            pair = next(
                ((k, v) for k, v in current.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None
            )
            if pair is None:
                break
            line, current = pair[0].start_mark.line, pair[1]
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(current.value):
            current = current.value[part]
            line = current.start_mark.line
        else:
            break
    return line + 1


def _duplicate_keys(node: yaml.Node, origin: str) -> list[str]:
    """PyYAML keeps the last of two equal keys silently; a rule file must not."""
    problems: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in seen:
                    problems.append(
                        f"{origin}:{key.start_mark.line + 1}: duplicate key {key.value!r} "
                        f"(first on line {seen[key.value]})"
                    )
                seen.setdefault(key.value, key.start_mark.line + 1)
            problems.extend(_duplicate_keys(value, origin))
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            problems.extend(_duplicate_keys(item, origin))
    return problems


def _compose(text: str, origin: str) -> tuple[yaml.Node | None, Any]:
    """The YAML node tree (for line numbers) and the data built from that same tree."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise RuleFileError([f"{origin}:{line}: not valid YAML: {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise RuleFileError([f"{origin}: not valid YAML: {exc}"]) from None
    finally:
        loader.dispose()
    return node, data


Report = Callable[[Sequence[str | int], str], None]
"""Records a problem at a path inside the rule being compiled (the path picks the line)."""


class _RuleCompiler:
    """Turns the entries of `rules:` into rules, collecting `file:line: rule 'name': ...` problems."""

    def __init__(self, origin: str, defaults: _Defaults) -> None:
        self.origin = origin
        self.defaults = defaults
        self.problems: list[str] = []

    def compile(self, raw: Any, node: yaml.Node, index: int) -> AlertRule | None:
        """The rule, or None when the entry has problems (then recorded in `problems`)."""
        name = raw.get("name") if isinstance(raw, dict) else None
        label = f"rule {name!r}" if isinstance(name, str) else f"rule #{index + 1}"
        before = len(self.problems)

        def report(loc: Sequence[str | int], text: str) -> None:
            self.problems.append(f"{self.origin}:{_line_at(node, loc)}: {label}: {text}")

        if not isinstance(raw, dict):
            report((), f"must be a mapping (name, model or telemetry, when, ...), got {type(raw).__name__}")
            return None
        try:
            entry = _RuleEntry.model_validate(raw)
        except ValidationError as exc:
            for error in exc.errors():
                report(error["loc"], _describe_error(error, _RuleEntry, ()))
            return None
        if (entry.model is None) == (entry.telemetry is None):
            which = "both" if entry.model is not None else "neither"
            report((), f"needs exactly one of `model:` (prediction rule) or `telemetry:` (typed rows), got {which}")
            return None
        auto_clear = (
            entry.auto_clear_after if "auto_clear_after" in entry.model_fields_set else self.defaults.auto_clear_after
        )
        if auto_clear == 0:
            report(("auto_clear_after",), "auto_clear_after must be positive, or null for manual clearing only")
        common: dict[str, Any] = {
            "name": entry.name,
            "severity": entry.severity,
            "type": entry.type,
            "message": entry.message,
            "dedup_key": entry.dedup_key or self.defaults.dedup_key,
            "cooldown_s": self.defaults.cooldown if entry.cooldown is None else entry.cooldown,
            "auto_clear_s": auto_clear,
            "line": node.start_mark.line + 1,
        }
        if entry.model is not None:
            build = self._prediction_rule(entry, entry.model, report)
        else:
            build = self._telemetry_rule(entry, str(entry.telemetry), report)
        if build is None or len(self.problems) > before:
            return None
        return build(common)

    def _prediction_rule(self, entry: _RuleEntry, model: str, report: Report) -> Callable[..., AlertRule] | None:
        if model not in CATALOG:
            report(("model",), f"unknown model {model!r}; known models: {', '.join(CATALOG)}")
        conditions: tuple[PredictionCondition, ...] = ()
        if isinstance(entry.when, dict):
            conditions = _validate_at(PredictionCondition, entry.when, report)
        elif isinstance(entry.when, list) and entry.when:
            conditions = _validate_at(list[PredictionCondition], entry.when, report)
        else:
            report(("when",), "when must be a condition mapping or a non-empty list of them")
        known = PREDICTION_TEMPLATE_NAMES | {c.field for c in conditions} | set(entry.extras) if conditions else None
        _check_templates(entry, self.defaults, known, report, "declare prediction extras under `extras:`")
        if not conditions:
            return None

        def build(common: dict[str, Any]) -> AlertRule:
            return PredictionRule(model=model, when=conditions, extras=tuple(entry.extras), **common)

        return build

    def _telemetry_rule(self, entry: _RuleEntry, kind: str, report: Report) -> Callable[..., AlertRule] | None:
        if entry.extras:
            report(("extras",), "extras is for prediction rules; telemetry templates may name any column of the rows")
        columns = TELEMETRY_COLUMNS.get(kind)
        if columns is None:
            report(
                ("telemetry",),
                f"telemetry kind {kind!r} has no typed rows; known kinds: {', '.join(TELEMETRY_COLUMNS)}",
            )
        hint = f"{kind} columns or {', '.join(sorted(TELEMETRY_TEMPLATE_NAMES))}"
        _check_templates(
            entry, self.defaults, TELEMETRY_TEMPLATE_NAMES | set(columns) if columns else None, report, hint
        )
        if not isinstance(entry.when, dict):
            report(("when",), "when must be a mapping {field, outside: {low, high}, for_readings}")
            return None
        validated = _validate_at(TelemetryCondition, entry.when, report)
        if not validated or columns is None:
            return None
        condition: TelemetryCondition = validated[0]
        dtype = columns.get(condition.field)
        if dtype is None or not dtype.is_numeric():
            numeric = [name for name, dtype in columns.items() if dtype.is_numeric() and name != "seq"]
            report(
                ("when", "field"),
                f"{kind} rows have no numeric column {condition.field!r}; numeric: {', '.join(numeric)}",
            )
            return None

        def build(common: dict[str, Any]) -> AlertRule:
            return TelemetryRule(telemetry=kind, when=condition, **common)

        return build


def _validate_at(kind: Any, raw: Any, report: Report) -> tuple[Any, ...]:
    """`raw` (the value of a rule's `when`) validated as `kind`; problems reported at their lines."""
    try:
        validated = TypeAdapter(kind).validate_python(raw)
    except ValidationError as exc:
        model = get_args(kind)[0] if get_origin(kind) is list else kind
        for error in exc.errors():
            keys_only = tuple(part for part in error["loc"] if not isinstance(part, int))
            report(("when", *error["loc"]), _describe_error({**error, "loc": keys_only}, model, ("when",)))
        return ()
    return tuple(validated) if isinstance(validated, list) else (validated,)


def _check_templates(entry: _RuleEntry, defaults: _Defaults, known: Set[str] | None, report: Report, hint: str) -> None:
    """Broken templates and unknown names are load-time errors: the alert must not fail when it matters.

    `known` None: the rule is broken elsewhere and its names are unknown; check the syntax only.
    """
    templates = {"message": entry.message, "dedup_key": entry.dedup_key or defaults.dedup_key}
    for key, template in templates.items():
        where = (key,) if key == "message" or entry.dedup_key else ()
        try:
            unknown = sorted(template_names(template) - (known or set()))
        except ValueError as exc:
            report(where, f"{key} template is broken: {exc}")
            continue
        if unknown and known is not None:
            report(where, f"{key} template names unknown field(s) {', '.join(map(repr, unknown))} ({hint})")


def parse_rules(text: str, origin: str = "<rules>") -> RuleBook:
    """A rule book from the text of a rule file; RuleFileError naming `origin` and the line of each problem."""
    root, data = _compose(text, origin)
    if root is None or data is None:
        raise RuleFileError([f"{origin}:1: no rules: expected a mapping with a `rules:` list"])
    problems = _duplicate_keys(root, origin)
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        raise RuleFileError([*problems, f"{origin}:1: expected a mapping with a `rules:` list"])
    try:
        rule_file = _RuleFile.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            problems.append(f"{origin}:{_line_at(root, error['loc'])}: {_describe_error(error, _RuleFile, ())}")
        raise RuleFileError(sorted(problems, key=_problem_line)) from None
    defaults = rule_file.defaults
    if defaults.auto_clear_after == 0:
        line = _line_at(root, ("defaults", "auto_clear_after"))
        problems.append(f"{origin}:{line}: auto_clear_after must be positive, or null for manual clearing only")

    rules_node = next(v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "rules")
    compiler = _RuleCompiler(origin, defaults)
    rules: list[AlertRule] = []
    first_line: dict[str, int] = {}
    for index, (raw, node) in enumerate(zip(rule_file.rules, rules_node.value, strict=True)):
        name = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(name, str):
            line = _line_at(node, ("name",))
            if name in first_line:
                problems.append(
                    f"{origin}:{line}: rule {name!r}: duplicate rule name (first defined on line {first_line[name]})"
                )
            first_line.setdefault(name, line)
        rule = compiler.compile(raw, node, index)
        if rule is not None and not problems:
            rules.append(rule)
    problems.extend(compiler.problems)
    if problems:
        raise RuleFileError(sorted(problems, key=_problem_line))
    return RuleBook(rules, origin, escalation=rule_file.escalation)


def _problem_line(problem: str) -> int:
    match = re.match(r"^.*?:(\d+): ", problem)
    return int(match.group(1)) if match else 0


def load_rules(path: Path | None = None) -> RuleBook:
    """The rules in `path`, or the ones shipped with the platform; RuleFileError with file:line otherwise."""
    if path is None:
        resource = resources.files("factory_pipelines").joinpath(DEFAULT_RULES_RESOURCE)
        return parse_rules(resource.read_text(encoding="utf-8"), str(resource))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleFileError([f"{path}: cannot read the rule file: {exc.strerror or exc}"]) from None
    return parse_rules(text, str(path))
