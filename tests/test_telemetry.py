"""The telemetry contract: topics, legacy devices, validation errors, schemas."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from factory_pipelines.telemetry import (
    MACHINE_EXPORT_COLUMNS,
    MACHINE_FIELD_BY_COLUMN,
    PUBLISHED_MODELS,
    CleanroomStatus,
    CommandAck,
    EnergyStats,
    MachineTelemetry,
    MaintenanceReading,
    NetworkStats,
    PayloadError,
    RobotTelemetry,
    alert_topic,
    dump_payload,
    json_schemas,
    parse_telemetry,
    parse_telemetry_topic,
    prediction_topic,
    telemetry_topic,
)

RECEIVED = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_export_columns_all_map_to_machine_fields() -> None:
    assert set(MACHINE_EXPORT_COLUMNS) - {"Timestamp"} == set(MACHINE_FIELD_BY_COLUMN)


def test_our_robot_message_round_trips() -> None:
    sent = RobotTelemetry(asset_id="robot-01", ts=RECEIVED, seq=7, temperature=41.5, cycle_count=100)
    got = parse_telemetry(telemetry_topic("main", "robot-01"), dump_payload(sent))
    assert got == sent


def test_legacy_robot_payload_takes_asset_from_topic_and_ts_from_receipt() -> None:
    raw = b'{"temperature": 45.2, "vibration": {"rms": 0.35}, "health_score": 85, "firmware": "1.2"}'
    got = parse_telemetry("factory/main/robot_7/telemetry", raw, received_at=RECEIVED)
    assert isinstance(got, RobotTelemetry)
    assert (got.asset_id, got.ts, got.seq) == ("robot_7", RECEIVED, None)
    assert got.vibration is not None and got.vibration.rms == 0.35
    assert got.model_extra == {"firmware": "1.2"}  # unknown fields are kept
    assert json.loads(dump_payload(got))["firmware"] == "1.2"


def test_legacy_machine_row_with_epoch_timestamp() -> None:
    row = {"timestamp": 1_700_000_000, "Machine_ID": 17, "Operation_Mode": "Active", "Power_Consumption_kW": 8.5}
    got = parse_telemetry("factory/machine/17/telemetry", json.dumps(row).encode(), received_at=RECEIVED)
    assert isinstance(got, MachineTelemetry)
    assert got.asset_id == "17" and got.machine_id == "17"
    assert got.ts == datetime.fromtimestamp(1_700_000_000, UTC)
    assert got.power_consumption_kw == 8.5
    assert json.loads(dump_payload(got))["Power_Consumption_kW"] == 8.5


@pytest.mark.parametrize(
    ("number", "text"), [("17", "17"), ("17.0", "17"), ("1.7e1", "17"), ("1e3", "1000"), ("2.5", "2.5"), ("-0.0", "0")]
)
def test_a_machine_id_sent_as_a_number_is_the_same_text_whichever_parser_reads_it(number: str, text: str) -> None:
    """A complete row takes pydantic's JSON parser, a legacy one `json.loads`; both must name the machine alike."""
    complete = f'{{"asset_id": {number}, "ts": "2026-01-01T00:00:00Z", "kind": "machine", "Machine_ID": {number}}}'
    legacy = f'{{"timestamp": 1700000000, "Machine_ID": {number}, "Operation_Mode": {number}}}'
    got_complete = parse_telemetry("factory/machine/m/telemetry", complete.encode(), received_at=RECEIVED)
    got_legacy = parse_telemetry("factory/machine/m/telemetry", legacy.encode(), received_at=RECEIVED)
    assert isinstance(got_complete, MachineTelemetry) and isinstance(got_legacy, MachineTelemetry)
    assert (got_complete.asset_id, got_complete.machine_id) == (text, text)
    assert (got_legacy.machine_id, got_legacy.operation_mode) == (text, text)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "true"])
def test_a_machine_id_that_names_nothing_is_refused(number: str) -> None:
    row = f'{{"asset_id": "m", "ts": "2026-01-01T00:00:00Z", "kind": "machine", "Machine_ID": {number}}}'
    with pytest.raises(PayloadError, match="Machine_ID"):
        parse_telemetry("factory/machine/m/telemetry", row.encode(), received_at=RECEIVED)


def test_every_text_field_of_a_machine_row_takes_numbers_the_same_way() -> None:
    """The number-to-text validator names its fields; a text field added to the row must be named there too."""
    fields = MachineTelemetry.model_fields
    text_fields = {name for name, field in fields.items() if field.annotation in (str, str | None)}
    validated = set(MachineTelemetry.__pydantic_decorators__.field_validators["_text_from_numbers"].info.fields)
    assert validated == text_fields


@pytest.mark.parametrize(
    ("topic", "payload", "kind", "asset"),
    [
        (
            "factory/machine/3/maintenance",
            {"timestamp": 1, "vibration": 2.0, "temperature": 60},
            MaintenanceReading,
            "3",
        ),
        ("factory/energy/stats", {"timestamp": 1, "current_load": 80.5}, EnergyStats, "plant-energy"),
        ("factory/network/stats", {"timestamp": 1, "latency": 12, "packet_loss": 0.1}, NetworkStats, "plant-network"),
        ("cleanroom/main/status", {"iso_class": 5, "humidity": 40}, CleanroomStatus, "cleanroom-main"),
    ],
)
def test_other_legacy_topics(topic: str, payload: dict, kind: type, asset: str) -> None:
    got = parse_telemetry(topic, json.dumps(payload).encode(), received_at=RECEIVED)
    assert isinstance(got, kind)
    assert got.asset_id == asset


def test_earlier_cleanroom_names_fill_the_contract_fields_and_are_kept() -> None:
    """The earlier edge agent sent one `particles` count per m3; pressure came as `pressure`."""
    raw = b'{"particles": 180.5, "airflow": 0.5, "humidity": 44, "temperature": 21.4, "pressure": 12.5}'
    got = parse_telemetry("cleanroom/main/status", raw, received_at=RECEIVED)
    assert isinstance(got, CleanroomStatus)
    assert got.particles_per_m3 == {"0.5": 180.5} and got.differential_pressure_pa == 12.5
    assert (got.humidity, got.temperature, got.ts) == (44.0, 21.4, RECEIVED)
    wire = json.loads(dump_payload(got))
    assert (wire["particles"], wire["pressure"], wire["airflow"]) == (180.5, 12.5, 0.5)  # nothing sent is dropped
    assert parse_telemetry("cleanroom/main/status", dump_payload(got)) == got  # the stored form reads back the same

    # The contract's own names win; what is no number is kept as sent and fills nothing.
    both = b'{"particles": 1, "particles_per_m3": {"0.3": 9}, "pressure": 2, "differential_pressure_pa": 8}'
    kept = parse_telemetry("cleanroom/main/status", both, received_at=RECEIVED)
    assert isinstance(kept, CleanroomStatus)
    assert (kept.particles_per_m3, kept.differential_pressure_pa) == ({"0.3": 9.0}, 8.0)
    odd = parse_telemetry("cleanroom/main/status", b'{"particles": true, "pressure": "high"}', received_at=RECEIVED)
    assert isinstance(odd, CleanroomStatus)
    assert (odd.particles_per_m3, odd.differential_pressure_pa) == (None, None)


def test_earlier_robot_names_fill_the_cycle_count_and_motor_current() -> None:
    """The earlier robots sent `cycles` and `current`: the RUL model reads them as its own fields."""
    raw = b'{"temperature": 45.2, "vibration": {"rms": 0.35}, "cycles": 1200, "current": 3.5, "status": "ok"}'
    got = parse_telemetry("factory/main/R-3/telemetry", raw, received_at=RECEIVED)
    assert isinstance(got, RobotTelemetry)
    assert (got.asset_id, got.cycle_count, got.motor_current) == ("R-3", 1200, 3.5)
    wire = json.loads(dump_payload(got))
    assert (wire["cycles"], wire["current"], wire["status"]) == (1200, 3.5, "ok")  # nothing sent is dropped
    assert parse_telemetry("factory/main/R-3/telemetry", dump_payload(got)) == got
    own = parse_telemetry("factory/main/R-3/telemetry", b'{"cycles": 5, "cycle_count": 7}', received_at=RECEIVED)
    assert isinstance(own, RobotTelemetry) and own.cycle_count == 7  # the contract's own name wins


def test_command_ack_is_recognised_on_the_telemetry_topic() -> None:
    raw = b'{"command_id": "c1", "command": "stop", "status": "done"}'
    assert isinstance(parse_telemetry("factory/main/robot-01/telemetry", raw), CommandAck)


def test_cmd_and_alert_topics_carry_no_telemetry() -> None:
    assert parse_telemetry("factory/main/robot-01/cmd", b"{}") is None
    assert parse_telemetry_topic("factory/main/robot-01/alerts") is None


@pytest.mark.parametrize(
    ("topic", "raw", "reason"),
    [
        ("factory/main/r1/telemetry", b"{not json", "not valid JSON"),
        ("factory/main/r1/telemetry", b"\xff\xfe", "not valid JSON"),
        ("factory/main/r1/telemetry", b"[1, 2]", "must be a JSON object"),
        ("factory/main/r1/telemetry", b'{"temperature": "hot"}', "temperature"),
        ("factory/main/r1/telemetry", b'{"kind": "toaster"}', "unknown payload kind"),
        ("factory/main/r1/telemetry", b'{"kind": "command_ack", "status": "done"}', "command_id"),
        ("factory/main/r1/telemetry", b'{"health_score": 250}', "health_score"),
        ("factory/main/telemetry", b"{}", "fits no telemetry layout"),
        ("elsewhere/x", b"{}", "not under factory/"),
        ("cleanroom/main/status", b'{"kind": "robot"}', "does not match topic"),
        ("factory/machine/1/telemetry", b'{"timestamp": 1e20}', "not a usable epoch time"),
        ("factory/machine/1/telemetry", b'{"timestamp": NaN}', "not a usable epoch time"),
        ("factory/main/r1/telemetry", b'{"seq": 18446744073709551616}', "seq"),
    ],
)
def test_bad_payloads_say_why(topic: str, raw: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_telemetry(topic, raw)
    assert reason in info.value.reason


def test_output_topics() -> None:
    assert prediction_topic("energy_iforest", "machine-01") == "predictions/energy_iforest/machine-01"
    assert alert_topic("CRITICAL") == "alerts/critical"
    with pytest.raises(ValueError):
        alert_topic("LOUD")


def test_schemas_cover_every_payload_with_export_column_names() -> None:
    schemas = json_schemas()
    assert set(schemas) == set(PUBLISHED_MODELS)
    assert "Power_Consumption_kW" in schemas["MachineTelemetry"]["properties"]


@pytest.mark.parametrize(
    ("kind", "field"),
    [("robot", "cycle_count"), ("safety", "workers"), ("safety", "ppe_violations"), ("camera_frame", "width")],
)
def test_an_integer_past_64_bits_is_refused_at_the_door_not_in_the_windows_typed_rows(kind: str, field: str) -> None:
    """Windows type these fields as Int64: one such payload accepted would fail its whole window later."""
    payload = {"asset_id": "a1", "ts": "2026-11-26T10:00:00Z", "seq": 1, "kind": kind, field: 2**63}
    if kind == "camera_frame":
        payload["image_jpeg_b64"] = "AAAA"
    with pytest.raises(PayloadError, match=field):
        parse_telemetry("factory/main/a1/telemetry", json.dumps(payload).encode(), received_at=RECEIVED)
    payload[field] = 2**63 - 1
    assert (
        getattr(parse_telemetry("factory/main/a1/telemetry", json.dumps(payload).encode(), received_at=RECEIVED), field)
        == 2**63 - 1
    )
