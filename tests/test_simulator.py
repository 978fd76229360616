"""The edge simulator: a deterministic, physically plausible fleet, and commands over a real broker."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from factory_pipelines.settings import FactorySettings
from factory_pipelines.simulator import (
    BEARING,
    Fleet,
    FleetConfig,
    SimulatorStats,
    iso_class_from_counts,
    iso_class_limit,
    parse_fault_specs,
    run_simulator,
)
from factory_pipelines.telemetry import (
    PARTICLE_SIZES_UM,
    CameraFrame,
    CleanroomStatus,
    Command,
    CommandAck,
    MachineTelemetry,
    RobotTelemetry,
    SafetyReading,
    command_topic,
    dump_payload,
    parse_telemetry,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _run(fleet: Fleet, steps: int, dt_s: float = 1.0, start: datetime = T0) -> list[dict[str, Any]]:
    """`steps` ticks of the fleet, each as {asset_id: payload model}."""
    return [
        {payload.asset_id: payload for _, payload in fleet.step(start + timedelta(seconds=i * dt_s))}
        for i in range(steps)
    ]


def _series(ticks: list[dict[str, Any]], asset_id: str, name: str) -> np.ndarray:
    return np.array([getattr(tick[asset_id], name) for tick in ticks], dtype=float)


def _command(name: str, **parameters: object) -> Command:
    return Command(command_id=f"cmd-{name}-{len(parameters)}", command=name, parameters=parameters)


# ---- the pure fleet ----


def test_same_seed_same_fleet_and_another_seed_differs() -> None:
    def dumps(seed: int) -> list[bytes]:
        fleet = Fleet(FleetConfig(seed=seed), {"robot-01": "bearing_outer"}, seq_start=0)
        return [dump_payload(payload) for tick in range(20) for _, payload in fleet.step(T0 + timedelta(seconds=tick))]

    assert dumps(7) == dumps(7)
    assert dumps(7) != dumps(8)


def test_every_payload_validates_against_the_contract_on_its_topic() -> None:
    fleet = Fleet(FleetConfig(machines=2, robots=2, cleanrooms=2, safety_stations=2, cameras=1), seq_start=100)
    seen: dict[str, type] = {}
    for tick in range(3):
        for topic, payload in fleet.step(T0 + timedelta(seconds=tick)):
            parsed = parse_telemetry(topic, dump_payload(payload))
            assert parsed is not None
            assert (parsed.asset_id, parsed.seq, parsed.ts) == (payload.asset_id, payload.seq, payload.ts)
            seen[topic] = type(parsed)
    assert seen == {
        "factory/main/machine-01/telemetry": MachineTelemetry,
        "factory/main/machine-02/telemetry": MachineTelemetry,
        "factory/main/robot-01/telemetry": RobotTelemetry,
        "factory/main/robot-02/telemetry": RobotTelemetry,
        "cleanroom/main/status": CleanroomStatus,
        "factory/main/cleanroom-main-02/telemetry": CleanroomStatus,
        "factory/main/safety-01/telemetry": SafetyReading,
        "factory/main/safety-02/telemetry": SafetyReading,
        "factory/main/camera-01/telemetry": CameraFrame,
    }


def test_seq_counts_up_per_asset_and_never_repeats_across_restarts() -> None:
    first = Fleet(FleetConfig(machines=1, robots=0, cleanrooms=0, safety_stations=0, cameras=0))
    seqs = [payload.seq for i in range(3) for _, payload in first.step(T0 + timedelta(seconds=i))]
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]
    restarted = Fleet(FleetConfig(machines=1, robots=0, cleanrooms=0, safety_stations=0, cameras=0))
    (_, payload), *_ = restarted.step(T0)
    assert payload.seq > seqs[-1]


def test_machine_power_follows_speed() -> None:
    ticks = _run(Fleet(FleetConfig(machines=5, robots=0, cleanrooms=0), seq_start=0), 600)
    all_speed, all_power = [], []
    for n in range(1, 6):
        speed = _series(ticks, f"machine-{n:02d}", "production_speed_units_per_hr")
        power = _series(ticks, f"machine-{n:02d}", "power_consumption_kw")
        all_speed.append(speed)
        all_power.append(power)
        if speed.std() > 1:
            assert np.corrcoef(speed, power)[0, 1] > 0.8, f"machine-{n:02d}"
    assert np.corrcoef(np.concatenate(all_speed), np.concatenate(all_power))[0, 1] > 0.8
    # Vibration follows speed as well.
    vibration = np.concatenate([_series(ticks, f"machine-{n:02d}", "vibration_hz") for n in range(1, 6)])
    assert np.corrcoef(np.concatenate(all_speed), vibration)[0, 1] > 0.8


def test_machine_temperature_follows_power_with_a_lag() -> None:
    fleet = Fleet(FleetConfig(machines=1, robots=0, cleanrooms=0), seq_start=0)
    fleet.apply_command("machine-01", _command("slow", factor=1.0), T0)  # pinned Active at full speed
    hot = _run(fleet, 300)
    fleet.apply_command("machine-01", _command("stop"), T0)
    cooling = _run(fleet, 400, start=T0 + timedelta(seconds=300))

    assert {tick["machine-01"].operation_mode for tick in cooling} == {"Idle"}
    hot_power = _series(hot, "machine-01", "power_consumption_kw")[-30:].mean()
    power = _series(cooling, "machine-01", "power_consumption_kw")
    assert power[20:].max() < 0.5 * hot_power  # power drops within seconds of stopping

    temperature = _series(cooling, "machine-01", "temperature_c")
    t_hot = _series(hot, "machine-01", "temperature_c")[-10:].mean()
    t_cold = temperature[-10:].mean()
    assert t_hot - t_cold > 20
    span = t_hot - t_cold
    assert temperature[10] > t_cold + 0.6 * span  # still hot 10 s after the power fell: a lag
    assert temperature[60] < t_cold + 0.5 * span  # but on its way down (tau about 45 s)
    assert np.all(np.diff(temperature[:200].reshape(-1, 20).mean(axis=1)) < 0)  # cooling, 20 s averages


def test_energy_spike_stands_out_in_window_aggregates_of_power_against_speed() -> None:
    fleet = Fleet(FleetConfig(machines=5, robots=0, cleanrooms=0), {"machine-02": "energy_spike"}, seq_start=0)
    ticks = _run(fleet, 1200)
    windows: dict[str, list[tuple[float, float]]] = {}
    for n in range(1, 6):
        asset = f"machine-{n:02d}"
        speed = _series(ticks, asset, "production_speed_units_per_hr").reshape(-1, 60).mean(axis=1)
        power = _series(ticks, asset, "power_consumption_kw").reshape(-1, 60).mean(axis=1)
        windows[asset] = list(zip(speed, power, strict=True))
    healthy = np.array([w for asset, ws in windows.items() if asset != "machine-02" for w in ws])
    slope, intercept = np.polyfit(healthy[:, 0], healthy[:, 1], 1)
    healthy_residuals = healthy[:, 1] - (slope * healthy[:, 0] + intercept)
    faulty = np.array(windows["machine-02"])
    faulty_residuals = faulty[:, 1] - (slope * faulty[:, 0] + intercept)
    assert faulty_residuals.min() > 3.0  # kW that speed does not explain, in every window
    assert faulty_residuals.min() > 5 * healthy_residuals.std()


def test_overheat_and_network_faults_show_in_payloads() -> None:
    faults = {"machine-01": "overheat", "machine-02": "network"}
    ticks = _run(Fleet(FleetConfig(machines=3, robots=0, cleanrooms=0), faults, seq_start=0), 400)
    overheated = _series(ticks, "machine-01", "temperature_c")[-60:].mean()
    normal = _series(ticks, "machine-03", "temperature_c")[-60:].mean()
    assert overheated > normal + 20
    assert _series(ticks, "machine-02", "network_latency_ms").mean() > 40
    assert _series(ticks, "machine-03", "network_latency_ms").mean() < 20
    assert _series(ticks, "machine-02", "packet_loss_pct").mean() > 3
    assert _series(ticks, "machine-02", "error_rate_pct").mean() > _series(ticks, "machine-03", "error_rate_pct").mean()


@pytest.mark.parametrize(
    ("fault", "band", "other_band"), [("bearing_outer", "bpfo", "bpfi"), ("bearing_inner", "bpfi", "bpfo")]
)
def test_robot_wears_out_with_known_rul_and_the_fault_band_grows(fault: str, band: str, other_band: str) -> None:
    fleet = Fleet(FleetConfig(machines=0, robots=1, cleanrooms=0), {"robot-01": fault}, seq_start=0)
    readings: list[RobotTelemetry] = []
    for tick in _run(fleet, 2000, dt_s=10.0):  # 5 cycles a tick
        reading = tick["robot-01"]
        assert isinstance(reading, RobotTelemetry)
        if readings and reading.true_rul_cycles > readings[-1].true_rul_cycles:
            replaced = reading
            break
        readings.append(reading)
    else:
        pytest.fail("the bearing was never replaced")

    rul = np.array([r.true_rul_cycles for r in readings], dtype=float)
    cycles = np.array([r.cycle_count for r in readings], dtype=float)
    assert len(readings) > 30
    assert np.all(np.diff(rul) < 0) and np.all(np.diff(cycles) > 0)
    assert np.ptp(rul + cycles) <= 2  # one cycle of life per cycle run: the ground truth is exact
    assert rul[-1] < 10

    energy = np.array([getattr(r.vibration, band) for r in readings])
    other = np.array([getattr(r.vibration, other_band) for r in readings])
    tenth = len(readings) // 10
    assert energy[-tenth:].mean() > 100 * energy[:tenth].mean()
    assert energy[-tenth:].mean() > 100 * other[-tenth:].mean()  # the energy sits at the defect's frequency
    assert np.corrcoef(np.argsort(np.argsort(energy)), np.argsort(np.argsort(-rul)))[0, 1] > 0.9  # Spearman
    for name in ("temperature", "motor_current"):
        series = np.array([getattr(r, name) for r in readings])
        assert series[-tenth:].mean() > series[:tenth].mean()
    rms = np.array([r.vibration.rms for r in readings])
    kurtosis = np.array([r.vibration.kurtosis for r in readings])
    assert rms[-tenth:].mean() > 3 * rms[:tenth].mean()
    assert np.median(kurtosis[-tenth:]) > np.median(kurtosis[:tenth])

    # Replacement: a new bearing, a fresh life, and the cycle count carries on.
    assert replaced.cycle_count >= readings[-1].cycle_count
    assert replaced.health_score is not None and replaced.health_score > 95


def test_bearing_frequencies_match_the_documented_geometry() -> None:
    freqs = BEARING.fault_frequencies(30.0)
    # Multiples of the shaft frequency published for the SKF 6205 (CWRU bearing data set).
    assert freqs["bpfo"] / 30 == pytest.approx(3.5848, rel=2e-3)
    assert freqs["bpfi"] / 30 == pytest.approx(5.4152, rel=2e-3)
    assert freqs["bsf"] / 30 == pytest.approx(2.357, rel=2e-3)
    assert freqs["ftf"] / 30 == pytest.approx(0.39828, rel=2e-3)


def test_iso_class_from_counts() -> None:
    at_class_5 = {size: iso_class_limit(5, float(size)) for size in PARTICLE_SIZES_UM}
    assert iso_class_from_counts(at_class_5) == 5.0
    assert iso_class_from_counts({size: 2 * count for size, count in at_class_5.items()}) == 5.4  # log10(2) = 0.30
    assert iso_class_from_counts({"0.5": 352_000, "5.0": 0}) == 7.0  # the ISO 7 limit at 0.5 um
    assert iso_class_from_counts({size: 0.0 for size in PARTICLE_SIZES_UM}) == 1.0
    assert iso_class_from_counts({"5.0": 1e12}) == 9.0


def test_cleanroom_class_is_consistent_with_its_counts_and_an_excursion_shows() -> None:
    fleet = Fleet(FleetConfig(machines=0, robots=0, cleanrooms=1), {"cleanroom-main": "excursion"}, seq_start=0)
    normal = Fleet(FleetConfig(machines=0, robots=0, cleanrooms=1), seq_start=0)
    for ticks in (_run(fleet, 200), _run(normal, 200)):
        for tick in ticks:
            status = tick["cleanroom-main"]
            assert isinstance(status, CleanroomStatus) and status.particles_per_m3 is not None
            counts = [status.particles_per_m3[size] for size in PARTICLE_SIZES_UM]
            assert counts == sorted(counts, reverse=True)  # cumulative counts fall with size
            for size, count in status.particles_per_m3.items():  # the class holds at every size...
                assert count <= iso_class_limit(status.iso_class, float(size)) * (1 + 1e-9)
            tighter = status.iso_class - 0.1
            assert any(
                c > iso_class_limit(tighter, float(s)) for s, c in status.particles_per_m3.items()
            )  # ...and is tight
    baseline = np.mean([tick["cleanroom-main"].iso_class for tick in _run(normal, 60)])
    excursion = _run(fleet, 60, start=T0 + timedelta(seconds=200))
    assert 4 <= baseline <= 5.5
    assert np.mean([t["cleanroom-main"].iso_class for t in excursion]) > baseline + 1
    assert np.mean([t["cleanroom-main"].differential_pressure_pa for t in excursion]) < 5


def test_unknown_faults_and_assets_are_refused_with_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="energy_spike, overheat, network"):
        Fleet(FleetConfig(), {"machine-01": "meltdown"})
    with pytest.raises(ValueError, match="bearing_outer, bearing_inner"):
        Fleet(FleetConfig(), {"robot-01": "energy_spike"})
    with pytest.raises(ValueError, match="machine-01, .*robot-03, cleanroom-main"):
        Fleet(FleetConfig(), {"machine-09": "overheat"})
    assert parse_fault_specs(["machine-02=energy_spike", " robot-01 = bearing_inner"]) == {
        "machine-02": "energy_spike",
        "robot-01": "bearing_inner",
    }
    with pytest.raises(ValueError, match="ASSET=KIND"):
        parse_fault_specs(["machine-02"])


# ---- over a real broker ----


def _acks(messages: list[Any]) -> dict[str, CommandAck]:
    acks = {}
    for message in messages:
        payload = json.loads(message.payload)
        if payload.get("kind") == "command_ack":
            acks[payload["command_id"]] = CommandAck.model_validate(payload)
    return acks


def _after(messages: list[Any], command_id: str, kind: str) -> list[dict[str, Any]]:
    """Payloads of `kind` published after the ack of `command_id` (one publisher, one topic: in order)."""
    seen, out = False, []
    for message in messages:
        payload = json.loads(message.payload)
        if payload.get("command_id") == command_id:
            seen = True
        elif seen and payload.get("kind") == kind:
            out.append(payload)
    return out


def _robot_after(recorder: Any, command_id: str, count: int) -> list[RobotTelemetry]:
    messages = recorder.wait_for(lambda ms: len(_after(ms, command_id, "robot")) >= count, what=f"after {command_id}")
    return [RobotTelemetry.model_validate(payload) for payload in _after(messages, command_id, "robot")]


def test_commands_are_obeyed_and_acknowledged_over_mqtt(
    factory_settings: FactorySettings, mqtt_recorder: Callable[..., Any]
) -> None:
    recorder = mqtt_recorder("factory/main/+/telemetry", "cleanroom/main/status")
    sender = mqtt_recorder("unused/topic")  # any connected client can send commands
    stop = threading.Event()
    result: list[SimulatorStats] = []
    fleet = FleetConfig(machines=1, robots=1, cleanrooms=1, rate_hz=20)
    runner = threading.Thread(target=lambda: result.append(run_simulator(factory_settings, fleet, stop=stop)))
    runner.start()
    try:

        def send(asset_id: str, command: Command) -> CommandAck:
            sender.client.publish(command_topic("main", asset_id), command.model_dump_json(), qos=1)
            messages = recorder.wait_for(lambda ms: command.command_id in _acks(ms), what=f"ack of {command.command}")
            return _acks(messages)[command.command_id]

        recorder.wait_for(lambda ms: len(ms) >= 6, what="telemetry from every asset")

        stopped = send("robot-01", Command(command_id="c1", command="stop"))
        assert (stopped.status, stopped.asset_id) == ("done", "robot-01")
        after = _robot_after(recorder, "c1", 5)
        assert {r.state for r in after} == {"stopped"}
        assert len({r.cycle_count for r in after}) == 1  # frozen

        slowed = send("robot-01", Command(command_id="c2", command="slow", parameters={"factor": 0.4}))
        assert slowed.status == "done"
        after = _robot_after(recorder, "c2", 3)
        assert {r.state for r in after} == {"slow"}
        assert all(r.motor_current is not None and r.motor_current < 3.0 for r in after)  # 0.4 of nominal

        resumed = send("robot-01", Command(command_id="c3", command="resume"))
        assert resumed.status == "done"
        after = _robot_after(recorder, "c3", 3)
        assert {r.state for r in after} == {"running"}

        machine_stop = send("machine-01", Command(command_id="c4", command="stop"))
        assert machine_stop.status == "done"
        messages = recorder.wait_for(lambda ms: len(_after(ms, "c4", "machine")) >= 3, what="machine after stop")
        assert {payload["Operation_Mode"] for payload in _after(messages, "c4", "machine")} == {"Idle"}

        unknown = send("robot-01", Command(command_id="c5", command="explode"))
        assert unknown.status == "rejected" and "stop, slow, resume" in (unknown.detail or "")
        bad_factor = send("robot-01", Command(command_id="c6", command="slow", parameters={"factor": 5}))
        assert bad_factor.status == "rejected" and "factor" in (bad_factor.detail or "")
        cleanroom = send("cleanroom-main", Command(command_id="c7", command="stop"))
        assert cleanroom.status == "rejected"

        messages = recorder.wait_for(lambda ms: True)
        for message in messages:  # everything published, acks included, fits the contract
            assert parse_telemetry(message.topic, message.payload) is not None
    finally:
        stop.set()
        runner.join(timeout=30)
    assert not runner.is_alive()
    stats = result[0]
    assert stats.commands_received == 7 and stats.commands_rejected == 3
    assert stats.published["command_ack"] == 7
    assert stats.unacknowledged == 0


def test_run_simulator_stops_at_max_messages_and_every_message_arrives(
    factory_settings: FactorySettings, mqtt_recorder: Callable[..., Any]
) -> None:
    recorder = mqtt_recorder("factory/main/+/telemetry", "cleanroom/main/status")
    fleet = FleetConfig(machines=2, robots=1, cleanrooms=1, safety_stations=0, cameras=0, rate_hz=50, seed=3)
    progress: list[int] = []
    stats = run_simulator(factory_settings, fleet, max_messages=40, progress=lambda s: progress.append(s.telemetry))
    assert stats.telemetry == 40 and stats.unacknowledged == 0
    assert stats.published == {"machine": 20, "robot": 10, "cleanroom": 10}
    assert progress and progress[-1] == 40
    messages = recorder.wait_for(lambda ms: len(ms) >= 40, what="all 40 messages")
    keys = {(p.asset_id, p.seq) for p in (parse_telemetry(m.topic, m.payload) for m in messages) if p is not None}
    assert len(keys) == 40  # (asset_id, seq) unique


def test_run_simulator_refuses_unknown_faults_before_connecting(factory_settings: FactorySettings) -> None:
    with pytest.raises(ValueError, match="valid faults"):
        run_simulator(factory_settings, FleetConfig(), faults={"machine-01": "gremlins"}, max_messages=1)


def test_run_simulator_runs_for_its_duration(factory_settings: FactorySettings) -> None:
    stats = run_simulator(factory_settings, FleetConfig(machines=1, robots=0, cleanrooms=0, rate_hz=4), duration_s=0.5)
    assert 0.5 <= stats.elapsed_s < 5
    assert stats.ticks >= 1 and stats.published["machine"] == stats.ticks
