"""Property-based tests of the telemetry parser: whatever arrives, a valid model or a PayloadError.

`parse_telemetry` faces bytes from any device on the plant network. For arbitrary bytes, and for
near-valid JSON built from the payload models' own fields (fields missing, wrong types, NaN and
infinities, numbers too big for anything, unicode, lone surrogates, nested junk) on arbitrary
topics, it must return a model (or None for topics without telemetry) or raise `PayloadError`
with a reason: never any other exception, which would stop a collector. A model it returns must
be storable (`dump_payload`), and a valid payload must come back unchanged from its wire form.
The strategies are derived from the models (`model_fields`, their types and bounds), so a field
added to the contract is fuzzed too. The examples pinned with `@example` are the findings that
made `parse_telemetry` change.
"""

from __future__ import annotations

import json
import math
import types
import typing
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import AwareDatetime, BaseModel
from pydantic.fields import FieldInfo

from factory_pipelines.telemetry import (
    InboundTelemetry,
    PayloadError,
    PayloadKind,
    _accept_any,
    _accept_complete,
    dump_payload,
    parse_telemetry,
    parse_telemetry_topic,
)

MODELS: dict[str, type[BaseModel]] = {
    model.model_fields["kind"].default: model for model in typing.get_args(InboundTelemetry)
}
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Which topics carry which kind: legacy device topics fix the kind, the generic one reads it from the payload.
names = st.text(st.characters(categories=["L", "N"], include_characters="-_."), min_size=1, max_size=12)
TOPICS_BY_KIND: dict[str, st.SearchStrategy[str]] = {
    "cleanroom": names.map(lambda site: f"cleanroom/{site}/status"),
    "maintenance": names.map(lambda asset: f"factory/machine/{asset}/maintenance"),
    "energy_stats": st.just("factory/energy/stats"),
    "network_stats": st.just("factory/network/stats"),
}
GENERIC_TOPIC = st.tuples(names.filter(lambda site: site != "machine"), names).map(
    lambda parts: f"factory/{parts[0]}/{parts[1]}/telemetry"
)
any_topic = st.one_of(
    st.text(max_size=80),
    GENERIC_TOPIC,
    *TOPICS_BY_KIND.values(),
    names.map(lambda asset: f"factory/machine/{asset}/telemetry"),
    names.map(lambda asset: f"factory/main/{asset}/cmd"),
    st.lists(names, min_size=1, max_size=6).map("/".join),
)


def topic_for(kind: str) -> st.SearchStrategy[str]:
    if kind in TOPICS_BY_KIND:
        return TOPICS_BY_KIND[kind]
    if kind == "machine":
        return st.one_of(GENERIC_TOPIC, names.map(lambda asset: f"factory/machine/{asset}/telemetry"))
    return GENERIC_TOPIC


# ---- valid values, from a field's type and bounds ----


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    """ge, gt, le, lt, min_length, max_length of a field (annotated_types objects in its metadata)."""
    names = ("ge", "gt", "le", "lt", "min_length", "max_length")
    return {name: getattr(item, name) for item in metadata for name in names if getattr(item, name, None) is not None}


def valid_value(annotation: Any, metadata: list[Any]) -> st.SearchStrategy[Any]:
    """Values of `annotation` that respect the bounds in `metadata`, as JSON would carry them."""
    bounds = _bounds(metadata)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return st.one_of(*(valid_value(arg, metadata) for arg in options))
    if origin is Literal:
        return st.sampled_from(typing.get_args(annotation))
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        return st.dictionaries(valid_value(key_type, []), valid_value(value_type, []), max_size=4)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_payload(annotation)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        low = bounds["ge"] if "ge" in bounds else bounds["gt"] + 1 if "gt" in bounds else -(2**63)
        return st.integers(min_value=low, max_value=bounds.get("le", 2**63 - 1))
    if annotation is float:
        low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
        return st.floats(
            min_value=low,
            max_value=high,
            exclude_min="gt" in bounds,
            exclude_max="lt" in bounds,
            allow_nan=low is None and high is None,
            allow_infinity=high is None,
        )
    if annotation is str:
        return st.text(min_size=bounds.get("min_length", 0), max_size=min(bounds.get("max_length", 40), 40))
    if annotation is AwareDatetime or (isinstance(annotation, type) and issubclass(annotation, datetime)):
        offsets = st.integers(-23 * 60, 23 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
        moments = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets)
        return moments.map(datetime.isoformat)
    raise NotImplementedError(f"no strategy for {annotation!r}: teach valid_value the new field type")


def _key(name: str, info: FieldInfo) -> str:
    return info.alias or name


def model_payload(model: type[BaseModel], *, with_all_required: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects valid for `model`: the required fields, any subset of the optional ones, extra fields."""
    required = {
        _key(name, info): valid_value(info.annotation, info.metadata)
        for name, info in model.model_fields.items()
        if info.is_required() and name != "ts" and with_all_required
    }
    optional = {
        _key(name, info): valid_value(info.annotation, info.metadata)
        for name, info in model.model_fields.items()
        if not info.is_required() or name == "ts"  # ts may be left out: the time of receipt fills it
    }
    known = {*model.model_fields, *(_key(name, info) for name, info in model.model_fields.items()), "timestamp"}
    extras = st.dictionaries(st.text(max_size=10).filter(lambda key: key not in known), json_values, max_size=3)
    return st.tuples(st.fixed_dictionaries(required, optional=optional), extras).map(
        lambda both: {**both[1], **both[0]}
    )


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def valid_messages(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    """(topic, kind, payload) that the contract accepts."""
    kind = draw(st.sampled_from(sorted(MODELS)))
    payload = draw(model_payload(MODELS[kind]))
    payload["kind"] = kind
    return draw(topic_for(kind)), kind, payload


# ---- near-valid payloads: a valid one, then junk where a field was ----

# Raw JSON text the json module would never write: a placeholder string in the payload is swapped for it.
RAW_TOKENS = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1" * 5000,  # past Python's 4300-digit int conversion limit
    "18446744073709551616",  # 2**64
    '"\\ud800"',  # a lone surrogate escape
    '"\\udc00x\\ud83d"',
    "[" * 2000 + "]" * 2000,  # deeper than json.loads goes
    '{"a":' * 400 + "1" + "}" * 400,  # parses, but deeper than the serializer goes
    '"0001-01-01T00:00:00+01:00"',  # before year 1 once in UTC
    '"9999-12-31T23:59:59-01:00"',  # after year 9999 once in UTC
    '"2026-13-45T99:99:99Z"',
    "true",
    "null",
    '""',
)
raw_tokens = st.sampled_from(RAW_TOKENS).map(lambda token: ("raw", token))
junk_values = st.one_of(
    raw_tokens,  # twice: the tokens found most of what was wrong
    raw_tokens,
    json_values,
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(codec="utf-8"), max_size=30),
)


@st.composite
def near_valid_messages(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid message with a few fields dropped or replaced by junk, on its topic or any other."""
    topic, _kind, payload = draw(valid_messages())
    keys = sorted(payload)
    for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()):
            del payload[key]
        else:
            payload[key] = draw(junk_values)
    if draw(st.booleans()):
        payload[draw(st.sampled_from(["kind", "asset_id", "seq", "ts", "timestamp", "vibration", "zzz"]))] = draw(
            junk_values
        )
    if draw(st.integers(0, 9)) == 0:
        topic = draw(any_topic)
    raw_tokens: list[str] = []

    def swap_raw(value: Any) -> Any:
        if isinstance(value, tuple) and value[0] == "raw":
            raw_tokens.append(value[1])
            return f"__raw_{len(raw_tokens) - 1}__"
        if isinstance(value, dict):
            return {key: swap_raw(item) for key, item in value.items()}
        return value

    text = json.dumps(swap_raw(payload), allow_nan=True)
    for index, token in enumerate(raw_tokens):
        text = text.replace(f'"__raw_{index}__"', token)
    return topic, text.encode("utf-8", "surrogatepass")


# ---- the properties ----


def outcome(topic: str, raw: bytes) -> BaseModel | PayloadError | None:
    """parse_telemetry's answer, checked: None, a storable model, or the PayloadError (with a reason)."""
    try:
        model = parse_telemetry(topic, raw)
    except PayloadError as exc:
        assert isinstance(exc.reason, str) and exc.reason.strip(), f"empty reason for {raw[:80]!r} on {topic!r}"
        return exc
    if model is not None:
        wire = dump_payload(model)  # a model that was accepted can always be stored
        again = parse_telemetry(topic, wire)
        assert again is not None and dump_payload(again) == wire
    return model


@FUZZ
@given(topic=any_topic, raw=st.binary(max_size=300))
@example(topic="factory/main/a/telemetry", raw=b"[" * 100_000)
@example(topic="factory/main/a/telemetry", raw=b'{"temperature": ' + b"1" * 5000 + b"}")
@example(topic="factory/main/a/telemetry", raw=b'{"ts": "0001-01-01T00:00:00+01:00"}')
@example(topic="factory/main/a/telemetry", raw=b'{"note": "\\ud800"}')
@example(topic="factory/main/a/telemetry", raw=b'{"x": ' + b"[" * 900 + b"]" * 900 + b"}")
@example(topic="factory/main/a/telemetry", raw=b"\xff\xfe{}")
def test_arbitrary_bytes_give_a_model_or_a_payload_error(topic: str, raw: bytes) -> None:
    outcome(topic, raw)  # any other exception fails the test


@FUZZ
@given(message=near_valid_messages())
def test_near_valid_payloads_give_a_model_or_a_payload_error(message: tuple[str, bytes]) -> None:
    topic, raw = message
    outcome(topic, raw)  # any other exception fails the test


def _same(sent: Any, kept: Any) -> bool:
    """Equal as JSON values, NaN equal to NaN."""
    if isinstance(sent, float) and isinstance(kept, float | int) and math.isnan(sent):
        return math.isnan(kept)
    if isinstance(sent, dict) and isinstance(kept, dict):  # None may be left out (absent fields stay absent)
        return all(_same(value, kept.get(key)) for key, value in sent.items() if value is not None)
    if isinstance(sent, list) and isinstance(kept, list):
        return len(sent) == len(kept) and all(_same(a, b) for a, b in zip(sent, kept, strict=True))
    return sent == kept and (type(sent) is type(kept) or {type(sent), type(kept)} == {int, float})


@FUZZ
@given(message=valid_messages())
@example(
    message=(
        "factory/main/r1/telemetry",
        "robot",
        {"asset_id": "r1", "kind": "robot", "vibration": {"kurtosis": math.inf}},
    )
)
def test_valid_payloads_are_accepted_and_round_trip_unchanged(message: tuple[str, str, dict[str, Any]]) -> None:
    topic, kind, payload = message
    model = outcome(topic, json.dumps(payload, allow_nan=True).encode())
    assert isinstance(model, BaseModel), model
    assert model.kind == PayloadKind(kind)
    kept = json.loads(dump_payload(model))
    for key, value in payload.items():
        if key == "ts":
            assert datetime.fromisoformat(kept["ts"]) == datetime.fromisoformat(value)
            assert datetime.fromisoformat(kept["ts"]).utcoffset() == timedelta(0)
        elif value is not None:
            assert _same(value, kept[key]), (key, value, kept.get(key))
    if "ts" not in payload:
        assert abs(datetime.fromisoformat(kept["ts"]) - datetime.now(UTC)) < timedelta(minutes=5)


@FUZZ
@given(message=st.one_of(near_valid_messages(), valid_messages().map(lambda m: (m[0], json.dumps(m[2]).encode()))))
@example(message=("factory/main/r1/telemetry", b'{"asset_id": "r1", "kind": "robot", "ts": 1, "ts": "x"}'))
@example(message=("factory/main/r1/telemetry", b'{"asset_id": "r1", "kind": "robot", "ts": 1e999, "seq": 1e3}'))
@example(message=("factory/machine/m1/telemetry", b'{"asset_id": "m1", "kind": "robot", "ts": 0}'))
@example(message=("factory/machine/m1/telemetry", b'{"asset_id": 1e3, "ts": "2026-01-01T00:00Z", "kind": "machine"}'))
@example(  # NaN kept in an extra field: equal on both paths, though NaN != NaN
    message=(
        "factory/ppe/cam1/telemetry",
        b'{"asset_id": "cam1", "ts": "2026-01-01T00:00:00Z", "seq": 0, "kind": "camera_frame", "zone": "",'
        b' "image_jpeg_b64": "0000", "width": 1, "height": 1, "true_violation": false, "{": NaN}',
    )
)
def test_the_fast_path_accepts_only_what_the_general_path_accepts_the_same_way(message: tuple[str, bytes]) -> None:
    """`accept_telemetry` tries a fast parse first; whatever it takes must be exactly what the general path makes."""
    topic, raw = message
    try:
        info = parse_telemetry_topic(topic)
    except ValueError:
        return
    if info is None:
        return
    fast = _accept_complete(info, raw)
    if fast is None:
        return
    general = _accept_any(topic, info, raw, datetime(2000, 1, 1, tzinfo=UTC))  # a receipt time the fast path cannot use
    assert general.wire == fast.wire
    assert type(general.model) is type(fast.model)
    assert repr(general.model) == repr(fast.model)  # not ==: a NaN kept in an extra field never equals itself


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_model_field_has_a_strategy(kind: str) -> None:
    """A field type added to the contract fails here first, asking for a strategy, rather than going unfuzzed."""
    for info in MODELS[kind].model_fields.values():
        valid_value(info.annotation, info.metadata)
