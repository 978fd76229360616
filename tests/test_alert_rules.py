"""Alert rules: the shipped defaults, the rule file's line-numbered errors, and evaluation on
predictions and typed telemetry rows (with the streak carried from one window to the next)."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from factory_pipelines.alert_model import AlertCandidate
from factory_pipelines.alert_rules import (
    MACHINE_ROWS_COLUMNS,
    RuleBook,
    RuleFileError,
    TelemetryCarry,
    load_rules,
    parse_duration,
)
from factory_pipelines.model_catalog import CATALOG
from factory_pipelines.telemetry import Prediction, Severity

WINDOW_START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
WINDOW_END = WINDOW_START + timedelta(seconds=60)
WINDOW_KEY = "20260302T080000Z-collector-1-0"


def prediction(
    model: str, *, asset: str = "asset-1", score: float = 0.5, label: str = "normal", **extras: Any
) -> Prediction:
    return Prediction(
        model_name=model,
        model_version="7",
        asset_id=asset,
        window_key=WINDOW_KEY,
        score=score,
        label=label,
        produced_at=WINDOW_END + timedelta(seconds=5),
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        mlflow_run_id="mlflow-run-abc",
        dagster_run_id="dagster-run-xyz",
        **extras,
    )


def write_rules(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "alerts.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> list[str]:
    path = write_rules(tmp_path, text)
    with pytest.raises(RuleFileError) as caught:
        load_rules(path)
    return caught.value.problems


@pytest.fixture(scope="module")
def defaults() -> RuleBook:
    return load_rules()


# ---- the defaults that ship ------------------------------------------------------------------


def test_packaged_defaults_cover_every_model_and_machine_temperature(defaults: RuleBook) -> None:
    assert set(defaults.models) == set(CATALOG)
    assert defaults.telemetry_kinds == ("machines",)
    assert defaults.origin.endswith("alert_rules.yaml")
    assert [r.name for r in defaults.rules_for_model("rul_lstm")] == ["rul_low", "rul_declining"]
    assert defaults.rules_for_model("no_such_model") == ()
    # the packaged file loads the same when named explicitly
    assert [r.name for r in load_rules(Path(defaults.origin)).rules] == [r.name for r in defaults.rules]


BREAKING = [
    # (prediction, rule expected to fire, severity, type)
    (
        prediction("energy_iforest", label="anomaly", score=0.71, threshold=0.6),
        "energy_anomaly",
        "WARNING",
        "ENERGY_OPTIMIZATION",
    ),
    (
        prediction("rul_lstm", score=260.0, label="rul_low", rul_lower=150.0, rul_upper=390.0),
        "rul_low",
        "CRITICAL",
        "RUL_LOW",
    ),
    (prediction("rul_lstm", score=520.0, rul_lower=200.0, rul_upper=800.0), "rul_declining", "WARNING", "RUL_LOW"),
    (
        prediction("cyber_detector", score=0.97, label="attack", attack_type="ddos", threshold=0.5),
        "cyber_ddos",
        "CRITICAL",
        "DDoS_RISK",
    ),
    (
        prediction("cyber_detector", score=0.81, label="attack", attack_type="scanning", threshold=0.5),
        "cyber_anomaly",
        "WARNING",
        "CYBER_ANOMALY",
    ),
    (
        prediction("safety_hazard", score=0.66, label="high", zone="press-hall"),
        "safety_hazard_high",
        "CRITICAL",
        "SAFETY_HAZARD",
    ),
    (
        prediction("safety_hazard", score=0.31, label="medium", zone="press-hall"),
        "safety_hazard_medium",
        "WARNING",
        "SAFETY_HAZARD",
    ),
    (
        prediction(
            "ppe_vision", score=0.93, label="violation", zone="dock", no_hardhat=False, no_vest=True, threshold=0.5
        ),
        "ppe_violation",
        "CRITICAL",
        "PPE_VIOLATION",
    ),
]


@pytest.mark.parametrize(("broken", "rule", "severity", "alert_type"), BREAKING, ids=[b[1] for b in BREAKING])
def test_each_default_rule_fires_on_a_prediction_that_breaks_it(
    defaults: RuleBook, broken: Prediction, rule: str, severity: str, alert_type: str
) -> None:
    result = defaults.evaluate_predictions([broken])
    assert result.problems == []
    assert [(c.rule, c.severity, c.type) for c in result.candidates] == [(rule, Severity(severity), alert_type)]
    candidate = result.candidates[0]
    assert candidate.source == broken.model_name
    assert candidate.asset_id == broken.asset_id
    assert candidate.dedup_key == f"{broken.model_name}:{alert_type}:{broken.asset_id}"
    assert "{" not in candidate.message and "}" not in candidate.message
    named = broken.model_extra.get("zone", broken.asset_id) if broken.model_extra else broken.asset_id
    assert named in candidate.message


CALM = [
    prediction("energy_iforest", label="normal", score=0.41, threshold=0.6),
    prediction("rul_lstm", score=1500.0, rul_lower=600.0, rul_upper=2000.0),  # 600 is outside the WARNING band
    prediction("cyber_detector", score=0.12, label="normal", attack_type="normal", threshold=0.5),
    prediction("safety_hazard", score=0.05, label="low", zone="press-hall"),
    prediction(
        "ppe_vision", score=0.08, label="compliant", zone="dock", no_hardhat=False, no_vest=False, threshold=0.5
    ),
]


@pytest.mark.parametrize("calm", CALM, ids=[c.model_name for c in CALM])
def test_no_default_rule_fires_on_a_prediction_within_limits(defaults: RuleBook, calm: Prediction) -> None:
    result = defaults.evaluate_predictions([calm])
    assert result.candidates == []
    assert result.problems == []


def test_candidate_carries_lineage_evidence_and_the_rule_settings(defaults: RuleBook) -> None:
    worn = prediction("rul_lstm", asset="robot-3", score=260.0, label="rul_low", rul_lower=150.0, rul_upper=390.0)
    now = datetime(2026, 3, 2, 8, 2, tzinfo=UTC)
    result = defaults.evaluate_predictions([worn], now=now)
    (candidate,) = result.candidates
    assert result.evaluated_at == now
    assert candidate.observed_at == WINDOW_END
    assert candidate.lineage.model_dump(exclude_none=True) == {
        "window_key": WINDOW_KEY,
        "asset_key": "rul_predictions",  # the catalog's prediction asset, when the caller names none
        "model_name": "rul_lstm",
        "model_version": "7",
        "mlflow_run_id": "mlflow-run-abc",
        "dagster_run_id": "dagster-run-xyz",
        "prediction_id": f"rul_lstm/{WINDOW_KEY}/robot-3",  # the prediction, as the store and backlogs name it
    }
    assert candidate.evidence["field"] == "rul_lower"
    assert candidate.evidence["value"] == 150.0
    assert candidate.evidence["threshold"] == 200.0
    assert candidate.evidence["score"] == 260.0
    assert candidate.evidence["label"] == "rul_low"
    assert candidate.message == "Robot robot-3: bearing RUL 260 cycles, worst case 150 (< 200): replace now"
    assert candidate.cooldown_s == 600.0
    assert candidate.auto_clear_s is None  # rul_low clears by hand only

    explicit = defaults.evaluate_predictions([worn], asset_key="custom_asset").candidates[0]
    assert explicit.lineage.asset_key == "custom_asset"


def test_observed_at_falls_back_to_production_time(defaults: RuleBook) -> None:
    unwindowed = prediction(
        "ppe_vision", label="violation", score=0.9, zone="dock", no_hardhat=True, no_vest=False, threshold=0.55
    ).model_copy(update={"window_end": None})
    (candidate,) = defaults.evaluate_predictions([unwindowed]).candidates
    assert candidate.observed_at == unwindowed.produced_at
    assert candidate.evidence["model_threshold"] == 0.55
    assert (
        candidate.message
        == "Camera asset-1 (zone dock): PPE violation, probability 0.90 (no hard hat: True, no vest: False)"
    )


def test_prediction_missing_a_field_is_reported_and_the_others_still_evaluate(defaults: RuleBook) -> None:
    predictions = [
        prediction("rul_lstm", asset="robot-1", score=90.0, rul_lower=40.0),
        prediction("rul_lstm", asset="robot-2", score=90.0),  # no rul_lower: the rules cannot judge it
        prediction("ppe_vision", asset="cam-1", label="violation", no_hardhat=True, no_vest=False),  # no zone
        prediction("energy_iforest", asset="machine-1", label="anomaly", score=0.8, threshold=0.6),
        prediction("not_watched", asset="x"),  # a model without rules is ignored, not a problem
    ]
    result = defaults.evaluate_predictions(predictions)
    assert [(c.rule, c.asset_id) for c in result.candidates] == [
        ("rul_low", "robot-1"),
        ("energy_anomaly", "machine-1"),
    ]
    assert len(result.problems) == 3  # robot-2 for rul_low and rul_declining, cam-1 for its message
    robot_2 = [p for p in result.problems if "robot-2" in p]
    assert len(robot_2) == 2 and all("'rul_lower'" in p and WINDOW_KEY in p for p in robot_2)
    (camera,) = [p for p in result.problems if "cam-1" in p]
    assert "ppe_violation" in camera and "'zone'" in camera


# ---- conditions ------------------------------------------------------------------------------


def test_conditions_compare_strictly_and_by_membership(tmp_path: Path) -> None:
    book = load_rules(
        write_rules(
            tmp_path,
            """
            rules:
              - name: hot_score
                model: energy_iforest
                when: {above: 0.8}
                severity: INFO
                type: SCORE_HIGH
                message: "{asset_id} {field}={value} over {limit}"
              - name: labelled
                model: cyber_detector
                when:
                  - {field: label, in: [attack, suspicious]}
                  - {field: attack_type, not_in: [network_fault]}
                severity: WARNING
                type: LABELLED
                message: "{asset_id} {attack_type}"
            """,
        )
    )
    fired = book.evaluate_predictions(
        [
            prediction("energy_iforest", asset="at-limit", score=0.8),
            prediction("energy_iforest", asset="over", score=0.81),
            prediction("cyber_detector", asset="mitm", label="attack", attack_type="mitm"),
            prediction("cyber_detector", asset="fault", label="attack", attack_type="network_fault"),
            prediction("cyber_detector", asset="quiet", label="normal", attack_type="normal"),
        ]
    )
    assert [c.asset_id for c in fired.candidates] == ["over", "mitm"]
    assert fired.candidates[0].message == "over score=0.81 over 0.8"
    assert fired.candidates[1].evidence["conditions"] == [
        "label in ['attack', 'suspicious']",
        "attack_type not in ['network_fault']",
    ]


def test_rule_settings_durations_and_defaults_block(tmp_path: Path) -> None:
    book = load_rules(
        write_rules(
            tmp_path,
            """
            defaults:
              cooldown: 2m
              auto_clear_after: 1h
              dedup_key: "{type}@{asset_id}"
            rules:
              - name: inherits
                model: energy_iforest
                when: {field: label, equals: anomaly}
                severity: warning
                type: A
                message: "{asset_id}"
              - name: overrides
                model: energy_iforest
                when: {field: label, equals: anomaly}
                severity: INFO
                type: B
                message: "{asset_id}"
                cooldown: 90s
                auto_clear_after: null
                dedup_key: "{source}/{asset_id}/{window_key}"
            """,
        )
    )
    first, second = book.evaluate_predictions([prediction("energy_iforest", label="anomaly")]).candidates
    assert (first.severity, first.cooldown_s, first.auto_clear_s, first.dedup_key) == (
        Severity.WARNING,
        120.0,
        3600.0,
        "A@asset-1",
    )
    assert (second.cooldown_s, second.auto_clear_s, second.dedup_key) == (
        90.0,
        None,
        f"energy_iforest/asset-1/{WINDOW_KEY}",
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (45, 45.0),
        (2.5, 2.5),
        ("90", 90.0),
        ("90s", 90.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("1d", 86400.0),
    ],
)
def test_durations_accept_seconds_and_unit_strings(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["10 minutes", "m10", "", "-5s", -1, True, None, "1h30"])
def test_durations_refuse_anything_else(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


# ---- line-numbered errors --------------------------------------------------------------------

GOOD_RULE = """
  - name: fine
    model: rul_lstm
    when: {field: rul_lower, below: 200}
    severity: CRITICAL
    type: RUL_LOW
    message: "{asset_id} {rul_lower}"
"""


def test_bad_severity_names_file_line_and_rule(tmp_path: Path) -> None:
    problems = load_error(
        tmp_path,
        "rules:"
        + GOOD_RULE
        + """
  - name: rul_low
    model: rul_lstm
    when: {field: rul_lower, below: 200}
    severity: HIGH
    type: RUL_LOW
    message: "{asset_id}"
""",
    )
    assert problems == [
        f"{tmp_path / 'alerts.yaml'}:12: rule 'rul_low': severity must be INFO, WARNING or CRITICAL, got 'HIGH'"
    ]


def test_unknown_key_is_an_error_not_ignored(tmp_path: Path) -> None:
    problems = load_error(
        tmp_path,
        """
        rules:
          - name: typo
            model: rul_lstm
            when: {field: rul_lower, below: 200}
            severity: CRITICAL
            type: RUL_LOW
            message: "{asset_id}"
            cooldwn: 5m
        """,
    )
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'alerts.yaml'}:8: rule 'typo': unknown key 'cooldwn'")
    assert "cooldown" in problems[0]  # the known keys are listed


def test_unknown_key_inside_a_condition_points_at_its_line(tmp_path: Path) -> None:
    problems = load_error(
        tmp_path,
        """
        rules:
          - name: nested
            telemetry: machines
            when:
              field: temperature_c
              outside: {hihg: 85}
              for_readings: 3
            severity: WARNING
            type: HOT
            message: "{asset_id}"
        """,
    )
    assert problems[0].startswith(f"{tmp_path / 'alerts.yaml'}:6: rule 'nested': unknown key 'hihg'")


def test_duplicate_rule_name_names_both_lines(tmp_path: Path) -> None:
    problems = load_error(tmp_path, "rules:" + GOOD_RULE + GOOD_RULE)
    assert problems == [f"{tmp_path / 'alerts.yaml'}:9: rule 'fine': duplicate rule name (first defined on line 2)"]


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    problems = load_error(tmp_path, "rules:" + GOOD_RULE + "    severity: INFO\n")
    assert problems == [f"{tmp_path / 'alerts.yaml'}:8: duplicate key 'severity' (first on line 5)"]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ('"Robot {asset_id"', "message template is broken"),
        ('"Robot {} is worn"', "positional field"),
        ('"Robot {asset_id}: {rul_lowr:.0f}"', "unknown field(s) 'rul_lowr'"),
        ('"Zone {zone}"', "unknown field(s) 'zone'"),  # an extra must be declared under `extras:`
    ],
)
def test_broken_template_is_refused_at_load_time(tmp_path: Path, message: str, expected: str) -> None:
    problems = load_error(
        tmp_path,
        f"""
        rules:
          - name: worded
            model: rul_lstm
            when: {{field: rul_lower, below: 200}}
            severity: CRITICAL
            type: RUL_LOW
            message: {message}
        """,
    )
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'alerts.yaml'}:7: rule 'worded': ")
    assert expected in problems[0]


def test_declared_extras_may_be_named_in_templates(tmp_path: Path) -> None:
    book = load_rules(
        write_rules(
            tmp_path,
            """
            rules:
              - name: zoned
                model: safety_hazard
                when: {field: label, equals: high}
                severity: CRITICAL
                type: SAFETY_HAZARD
                message: "Zone {zone}"
                dedup_key: "{source}:{type}:{zone}"
                extras: [zone]
            """,
        )
    )
    (candidate,) = book.evaluate_predictions([prediction("safety_hazard", label="high", zone="paint")]).candidates
    assert (candidate.message, candidate.dedup_key) == ("Zone paint", "safety_hazard:SAFETY_HAZARD:paint")


@pytest.mark.parametrize(
    ("entry", "line", "expected"),
    [
        ("model: rul_lstn\n    when: {below: 1}", 3, "unknown model 'rul_lstn'"),
        ("telemetry: cleanroom\n    when: {field: humidity, outside: {high: 60}}", 3, "telemetry kind 'cleanroom'"),
        ("telemetry: machines\n    when: {field: efficiency_status, outside: {high: 1}}", 4, "no numeric column"),
        ("telemetry: machines\n    when: {field: temperature_c, outside: {}}", 4, "outside needs low, high or both"),
        ("model: rul_lstm\n    when: {field: rul_lower, above: 300, below: 200}", 4, "can never hold"),
        ("model: rul_lstm\n    when: {field: rul_lower}", 4, "condition needs one of"),
        ("model: rul_lstm\n    telemetry: machines\n    when: {below: 1}", 2, "exactly one of"),
    ],
)
def test_sources_and_conditions_are_checked_at_load_time(tmp_path: Path, entry: str, line: int, expected: str) -> None:
    text = f'rules:\n  - name: checked\n    {entry}\n    severity: INFO\n    type: X\n    message: "{{asset_id}}"\n'
    problems = load_error(tmp_path, text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{tmp_path / 'alerts.yaml'}:{line}: rule 'checked': ")
    assert expected in problems[0]


def test_every_problem_of_a_file_is_reported_in_line_order(tmp_path: Path) -> None:
    problems = load_error(
        tmp_path,
        """
        rules:
          - name: one
            model: rul_lstm
            when: {below: 1}
            severity: SEVERE
            type: X
            message: "{asset_id}"
          - name: two
            model: rul_lstm
            when: {below: 1}
            severity: INFO
            type: X
            message: "{nope}"
        """,
    )
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in problems] == ["5", "13"]


def test_unreadable_and_malformed_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(RuleFileError, match="absent.yaml"):
        load_rules(missing)
    problems = load_error(tmp_path, "rules:\n  - name: x\n    when: {below: [1\n")
    assert problems[0].startswith(f"{tmp_path / 'alerts.yaml'}:") and "not valid YAML" in problems[0]
    assert load_error(tmp_path, "# nothing but a comment\n") == [
        f"{tmp_path / 'alerts.yaml'}:1: no rules: expected a mapping with a `rules:` list"
    ]
    assert any("unknown key 'rule'" in p for p in load_error(tmp_path, "rule: []\n"))


# ---- telemetry streaks -----------------------------------------------------------------------


def machine_rows(readings: dict[str, list[float | None]], start: datetime = WINDOW_START) -> pl.DataFrame:
    """Typed machine rows (one a second per asset) with the given temperatures, in shuffled order."""
    rows = [
        {
            "window_key": WINDOW_KEY,
            "asset_id": asset,
            "ts": start + timedelta(seconds=i),
            "seq": i,
            "temperature_c": value,
        }
        for asset, values in readings.items()
        for i, value in enumerate(values)
    ]
    frame = pl.DataFrame(rows, schema={name: MACHINE_ROWS_COLUMNS[name] for name in rows[0]})
    return frame.sample(fraction=1.0, shuffle=True, seed=3)  # the evaluator orders by ts itself


def overheating(result_candidates: list[AlertCandidate]) -> list[tuple[str | None, int]]:
    return [(c.asset_id, c.evidence["readings"]) for c in result_candidates]


def test_telemetry_streak_of_m_readings_fires_and_m_minus_one_does_not(defaults: RuleBook) -> None:
    rows = machine_rows(
        {
            "machine-hot": [70.0, 86.0, 87.5, 88.0, 71.0],  # three above 85 in a row
            "machine-warm": [86.0, 87.0, 70.0, 86.0, 90.0],  # two, a break, two
            "machine-cool": [60.0, 61.0, 62.0, 63.0, 64.0],
        }
    )
    result = defaults.evaluate_telemetry("machines", rows, window_key=WINDOW_KEY)
    assert result.problems == []
    (candidate,) = result.candidates
    assert (candidate.rule, candidate.type, candidate.severity) == (
        "machine_overheating",
        "MACHINE_OVERHEAT",
        Severity.WARNING,
    )
    assert (candidate.source, candidate.asset_id) == ("telemetry:machines", "machine-hot")
    assert candidate.dedup_key == "telemetry:machines:MACHINE_OVERHEAT:machine-hot"
    assert candidate.observed_at == WINDOW_START + timedelta(seconds=3)
    assert candidate.message == "Machine machine-hot: temperature 88.0 degC above 85 degC for 3 readings"
    assert candidate.evidence["streak_started_at"] == (WINDOW_START + timedelta(seconds=1)).isoformat()
    assert candidate.lineage.window_key == WINDOW_KEY
    assert candidate.lineage.asset_key == "telemetry_window"
    # machine-warm ends the window two readings into a streak: carried, not fired
    assert result.carry is not None
    assert result.carry.streaks["machine_overheating"]["machine-warm"].readings == 2
    assert "machine-hot" not in result.carry.streaks["machine_overheating"]  # its streak ended at 71 degC


def test_a_streak_across_two_windows_fires_through_the_carry(defaults: RuleBook) -> None:
    first = defaults.evaluate_telemetry("machines", machine_rows({"machine-1": [60.0, 86.0, 87.0]}), window_key="w1")
    assert first.candidates == []
    # the caller persists the carry between runs, e.g. as JSON
    carried = TelemetryCarry.model_validate_json(first.carry.model_dump_json() if first.carry else "{}")
    later = WINDOW_START + timedelta(seconds=60)
    second = defaults.evaluate_telemetry(
        "machines", machine_rows({"machine-1": [88.0, 70.0]}, start=later), window_key="w2", carry=carried
    )
    assert overheating(second.candidates) == [("machine-1", 3)]
    assert second.candidates[0].evidence["streak_started_at"] == (WINDOW_START + timedelta(seconds=1)).isoformat()
    assert second.carry is not None and second.carry.streaks == {}  # 70 degC ended it

    # without the carry the same second window raises nothing
    alone = defaults.evaluate_telemetry(
        "machines", machine_rows({"machine-1": [88.0, 70.0]}, start=later), window_key="w2"
    )
    assert alone.candidates == []


def test_streak_bookkeeping_nulls_silent_assets_and_repeats(defaults: RuleBook) -> None:
    first = defaults.evaluate_telemetry(
        "machines", machine_rows({"machine-1": [86.0, None, 87.0], "machine-2": [90.0]}), window_key="w1"
    )
    assert first.candidates == []  # a null reading neither extends nor breaks the streak
    assert first.carry is not None
    assert first.carry.streaks["machine_overheating"]["machine-1"].readings == 2

    # machine-2 sends nothing in w2: its streak waits; machine-1 completes and keeps going
    later = WINDOW_START + timedelta(seconds=60)
    second = defaults.evaluate_telemetry(
        "machines", machine_rows({"machine-1": [88.0, 89.0, 90.0]}, start=later), window_key="w2", carry=first.carry
    )
    assert overheating(second.candidates) == [("machine-1", 5)]  # once per asset and window, at its last reading
    assert second.carry is not None
    assert second.carry.streaks["machine_overheating"]["machine-2"].readings == 1

    # the same window again with its own output carry does not count its readings twice
    again = defaults.evaluate_telemetry(
        "machines", machine_rows({"machine-1": [88.0, 89.0, 90.0]}, start=later), window_key="w2", carry=second.carry
    )
    assert again.candidates == []
    assert again.carry == second.carry


def test_telemetry_rows_without_the_rule_column_are_reported_not_raised(defaults: RuleBook) -> None:
    rows = pl.DataFrame({"asset_id": ["machine-1"], "ts": [WINDOW_START], "power_consumption_kw": [9.0]})
    carry = TelemetryCarry.model_validate(
        {
            "streaks": {
                "machine_overheating": {
                    "machine-1": {
                        "readings": 2,
                        "started_at": WINDOW_START,
                        "last_ts": WINDOW_START,
                        "last_value": 90.0,
                    }
                }
            }
        }
    )
    result = defaults.evaluate_telemetry("machines", rows, window_key="w9", carry=carry)
    assert result.candidates == []
    assert len(result.problems) == 1 and "temperature_c" in result.problems[0] and "w9" in result.problems[0]
    assert result.carry == carry  # the streak survives a window it could not read
    assert defaults.evaluate_telemetry("robots", rows, window_key="w9").candidates == []  # no rules for robots


def test_telemetry_band_with_both_ends_and_row_columns_in_templates(tmp_path: Path) -> None:
    book = load_rules(
        write_rules(
            tmp_path,
            """
            rules:
              - name: gas
                telemetry: safety
                when: {field: gas_ppm, outside: {low: 0, high: 50}, for_readings: 2}
                severity: CRITICAL
                type: GAS
                message: "{zone}: {field} {value:g} outside {low:g}..{high:g} for {readings}"
                auto_clear_after: 5m
            """,
        )
    )
    rows = pl.DataFrame(
        {
            "asset_id": ["station-1"] * 4,
            "ts": [WINDOW_START + timedelta(seconds=i) for i in range(4)],
            "zone": ["paint"] * 4,
            "gas_ppm": [50.0, 51.0, 49.0, 60.0],  # the band's ends are inside it
        }
    )
    assert book.evaluate_telemetry("safety", rows, window_key="w").candidates == []
    rows = rows.with_columns(pl.Series("gas_ppm", [50.0, 51.0, 70.0, 10.0]))
    (candidate,) = book.evaluate_telemetry("safety", rows, window_key="w").candidates
    assert candidate.message == "paint: gas_ppm 70 outside 0..50 for 2"
    assert candidate.auto_clear_s == 300.0
