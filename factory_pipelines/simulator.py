"""Edge simulator (`factory simulate`): a seeded fleet of machines, robots and cleanrooms on MQTT.

Two layers. `Fleet` is pure and deterministic (numpy Generator per asset, time passed in):
`Fleet(config, faults).step(now)` returns the (topic, payload model) pairs of one tick, so
models and tests can use it without a broker. `run_simulator` paces a `Fleet` in real time,
publishes QoS 1 through a bounded window of unacknowledged messages and obeys commands.

Machines follow the plant export (MachineTelemetry): a Markov chain over Operation_Mode
(Active / Idle / Maintenance) sets the target Production_Speed (first-order response, AR(1) load
wander); Power_Consumption_kW = mode base + k * speed; Temperature_C follows power through a
first-order lag (ambient 24 degC + 4-5 degC/kW * power, tau 45 s); Vibration_Hz follows speed and
wear; Predictive_Maintenance_Score (0..1, higher = maintenance due sooner) comes from wear,
temperature and vibration; Efficiency_Status from units per kWh and the defect rate.
Faults: `energy_spike` adds 4-6 kW that speed does not explain, `overheat` raises the thermal
resistance and target temperature, `network` raises latency and packet loss.

Robots carry a ball bearing that wears towards failure. Each bearing life is a seeded number of
cycles; `true_rul_cycles` is what is left, and at 0 the bearing is replaced (new seeded life,
`cycle_count` continues). The defect severity, (life used)^2, drives a synthetic vibration
signal (fs = 8192 Hz, 4096 samples): shaft harmonics, noise, a sinusoid at the defect's
characteristic frequency and an impulse train at that frequency ringing a 3 kHz structural
resonance (which raises kurtosis). Features: RMS, kurtosis (Pearson, 3 for Gaussian) and the
band energy (g^2, one-sided Hann-windowed power spectrum summed over +-3 % around the frequency,
at least +-2 bins) at each bearing frequency. Bearing geometry: SKF 6205 (the CWRU test
bearing): n = 9 balls, ball diameter d = 7.94 mm, pitch diameter D = 39.04 mm, contact angle
phi = 0, shaft fr = 30 Hz (1800 rpm) when running, fr * factor when slowed:
    FTF  = fr/2 * (1 - d/D cos phi)                 ~ 0.398 fr
    BPFO = n fr/2 * (1 - d/D cos phi)               ~ 3.585 fr
    BPFI = n fr/2 * (1 + d/D cos phi)               ~ 5.415 fr
    BSF  = D/(2d) * fr * (1 - (d/D cos phi)^2)      ~ 2.357 fr
Faults `bearing_outer` / `bearing_inner` fix the defect at BPFO / BPFI and make wear 3x faster.
Temperature and motor current rise with severity.

The cleanroom reports cumulative particle counts per m^3 at >= 0.3/0.5/1.0/5.0 um (Poisson
counts of a 1 m^3 sample drawn from the ISO power law), the ISO 14644-1 class computed from them
(`iso_class_from_counts`, limits rounded as the standard rounds them), temperature, humidity and
differential pressure. Fault `excursion`: particles x30, pressure collapses, humidity rises.

Safety stations (`safety_sim.SafetyZoneModel`, one per zone) report gas, noise, temperature,
proximity to moving machinery, PPE violations and head count, with labelled hazard episodes
(`true_hazard`). Cameras send a small synthetic JPEG every 5 s (`ppe_images`), people with or
without hard hats and vests, with the truth in `true_violation`.

Every message carries asset_id, ts (UTC) and seq; seq counts up per asset from the wall-clock
epoch in microseconds at start, so it never repeats across restarts (at < 1e6 messages/s/asset).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import paho.mqtt.client as mqtt
import polars as pl
from pydantic import BaseModel, ValidationError

from factory_pipelines.mqtt import BoundedPublisher, connect_and_wait, make_client
from factory_pipelines.safety_sim import (
    SAFETY_FAULTS,
    SafetyZoneModel,
    safety_asset_id,
    safety_zone_models,
    safety_zone_name,
)
from factory_pipelines.settings import FactorySettings
from factory_pipelines.telemetry import (
    MACHINE_EXPORT_COLUMNS,
    MACHINE_FIELD_BY_COLUMN,
    PARTICLE_SIZES_UM,
    CameraFrame,
    CleanroomStatus,
    Command,
    CommandAck,
    MachineTelemetry,
    RobotTelemetry,
    SafetyReading,
    VibrationFeatures,
    cleanroom_topic,
    command_topic,
    dump_payload,
    first_seq,
    telemetry_topic,
)

log = logging.getLogger(__name__)

MACHINE_FAULTS = ("energy_spike", "overheat", "network")
ROBOT_FAULTS = ("bearing_outer", "bearing_inner")
CLEANROOM_FAULTS = ("excursion",)
CAMERA_FAULTS: tuple[str, ...] = ()
COMMANDS = ("stop", "slow", "resume")
MAX_PENDING_PUBLISHES = 1000
EXPORT_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"

RunState = Literal["running", "slow", "stopped"]


@dataclass
class FleetConfig:
    """What to simulate; rate_hz is messages per asset per second."""

    machines: int = 5
    robots: int = 3
    cleanrooms: int = 1
    safety_stations: int = 2
    cameras: int = 1
    rate_hz: float = 1.0
    seed: int = 42
    site: str = "main"

    def __post_init__(self) -> None:
        for name in ("machines", "robots", "cleanrooms", "safety_stations", "cameras"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {self.rate_hz}")
        if not self.site or "/" in self.site or "+" in self.site or "#" in self.site:
            raise ValueError(f"site must be a non-empty MQTT topic level, got {self.site!r}")


def machine_asset_id(number: int) -> str:
    return f"machine-{number:02d}"


def robot_asset_id(number: int) -> str:
    return f"robot-{number:02d}"


def camera_asset_id(number: int) -> str:
    return f"camera-{number:02d}"


def cleanroom_asset_id(site: str, number: int = 1) -> str:
    """The first cleanroom is `cleanroom-{site}` (the id `cleanroom/{site}/status` implies)."""
    return f"cleanroom-{site}" if number == 1 else f"cleanroom-{site}-{number:02d}"


# ---- ISO 14644-1 ----


def iso_class_limit(iso_class: float, size_um: float) -> float:
    """Cn: the most particles per m^3 at >= size_um that class `iso_class` allows.

    Cn = 10^N * (0.1/D)^2.08, rounded as the standard does (whole number, at most three
    significant figures), so the limits agree with its Table 1 (e.g. ISO 5 at 0.5 um: 3,520).
    """
    exact = 10**iso_class * (0.1 / size_um) ** 2.08
    return float(round(float(f"{exact:.3g}")))


def iso_class_from_counts(particles_per_m3: Mapping[str, float]) -> float:
    """ISO 14644-1 class met by these cumulative counts (per m^3 at >= each size in um).

    The smallest class, in the 0.1 steps the standard allows and within 1..9, whose limit
    `iso_class_limit` holds at every size. A count C at size D needs about
    N >= log10(C) + 2.08 * log10(D / 0.1); the rounded limits can lower that by one step.
    Sizes with no particles impose nothing.
    """
    counted = {float(size): count for size, count in particles_per_m3.items() if count > 0}
    if not counted:
        return 1.0
    estimate = max(math.log10(count) + 2.08 * math.log10(size / 0.1) for size, count in counted.items())
    first = math.ceil(estimate * 10 - 1e-9) - 1  # tenths of a class
    for tenths in range(max(first, 10), 91):
        if all(count <= iso_class_limit(tenths / 10, size) for size, count in counted.items()):
            return tenths / 10
    return 9.0


# ---- bearing geometry ----


@dataclass(frozen=True)
class BearingGeometry:
    """Rolling-element bearing; defaults are the SKF 6205 of the CWRU bearing data set."""

    balls: int = 9
    ball_diameter_mm: float = 7.94
    pitch_diameter_mm: float = 39.04
    contact_angle_deg: float = 0.0

    def fault_frequencies(self, shaft_hz: float) -> dict[str, float]:
        """Characteristic defect frequencies (Hz) at shaft speed `shaft_hz`."""
        ratio = self.ball_diameter_mm / self.pitch_diameter_mm * math.cos(math.radians(self.contact_angle_deg))
        return {
            "bpfo": self.balls * shaft_hz / 2 * (1 - ratio),
            "bpfi": self.balls * shaft_hz / 2 * (1 + ratio),
            "bsf": self.pitch_diameter_mm / (2 * self.ball_diameter_mm) * shaft_hz * (1 - ratio**2),
            "ftf": shaft_hz / 2 * (1 - ratio),
        }


BEARING = BearingGeometry()
SHAFT_HZ = 30.0
SAMPLE_RATE_HZ = 8192.0
SIGNAL_SAMPLES = 4096
RESONANCE_HZ = 3000.0
BAND_HALF_WIDTH = 0.03


def vibration_features(signal: np.ndarray, sample_rate_hz: float, frequencies: Mapping[str, float]) -> dict[str, float]:
    """RMS, kurtosis and band energies (g^2) of `signal` at the given frequencies."""
    centred = signal - signal.mean()
    rms = float(np.sqrt(np.mean(signal**2)))
    variance = float(np.mean(centred**2))
    kurtosis = float(np.mean(centred**4) / variance**2) if variance > 0 else 3.0
    window = np.hanning(len(signal))
    spectrum = np.abs(np.fft.rfft(centred * window)) ** 2
    power = 2 * spectrum / (len(signal) * np.sum(window**2))  # one-sided; sums to the mean square
    bin_hz = sample_rate_hz / len(signal)
    bins = np.arange(len(power)) * bin_hz
    features = {"rms": rms, "kurtosis": kurtosis}
    for name, freq in frequencies.items():
        half = max(freq * BAND_HALF_WIDTH, 2 * bin_hz)
        band = (bins >= freq - half) & (bins <= freq + half)
        features[name] = float(power[band].sum())
    return features


# ---- assets ----


def _step_probability(rate_per_s: float, dt: float) -> float:
    return 1.0 - math.exp(-rate_per_s * dt)


def _lag(current: float, target: float, dt: float, tau_s: float) -> float:
    """First-order response of `current` towards `target` over dt."""
    return target + (current - target) * math.exp(-dt / tau_s)


class _SimulatedAsset:
    """Common command handling: stop, slow (factor), resume."""

    kind: str = ""
    faults: tuple[str, ...] = ()

    def __init__(self, asset_id: str, rng: np.random.Generator, fault: str | None) -> None:
        self.asset_id = asset_id
        self.rng = rng
        self.fault = fault
        self.run_state: RunState = "running"
        self.speed_factor = 1.0

    def command(self, command: Command) -> tuple[Literal["done", "rejected"], str]:
        if command.command == "stop":
            self.run_state, self.speed_factor = "stopped", 0.0
            return "done", "stopped"
        if command.command == "slow":
            factor = command.parameters.get("factor", 0.5)
            if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 < factor <= 1:
                return "rejected", f"slow needs parameters.factor in (0, 1], got {factor!r}"
            self.run_state, self.speed_factor = "slow", float(factor)
            return "done", f"running at {factor:g} of nominal speed"
        if command.command == "resume":
            self.run_state, self.speed_factor = "running", 1.0
            return "done", "running at nominal speed"
        return "rejected", f"unknown command {command.command!r}; {self.kind} assets accept {', '.join(COMMANDS)}"


class MachineModel(_SimulatedAsset):
    """A production machine in the plant-export layout; see the module docstring."""

    kind = "machine"
    faults = MACHINE_FAULTS
    AMBIENT_C = 24.0
    # Mode switching rates (per second) of the Markov chain.
    RATES = {
        ("Active", "Idle"): 1 / 900,
        ("Active", "Maintenance"): 1 / 5400,
        ("Idle", "Active"): 1 / 180,
        ("Maintenance", "Active"): 1 / 600,
    }

    def __init__(self, asset_id: str, number: int, rng: np.random.Generator, fault: str | None) -> None:
        super().__init__(asset_id, rng, fault)
        self.number = number
        self.nominal_speed = rng.uniform(280, 460)
        self.kw_per_unit = rng.uniform(0.016, 0.020)
        self.idle_kw = rng.uniform(0.9, 1.3)
        self.thermal_c_per_kw = rng.uniform(4.0, 5.0)
        self.wear = rng.uniform(0.0, 0.3)
        self.mode = "Active"
        self.load = 1.0
        self.speed = self.nominal_speed
        self.temperature = self.AMBIENT_C + self.thermal_c_per_kw * self._power(self.speed)
        self.spike_kw = 0.0

    def _power(self, speed: float) -> float:
        base = {"Active": self.idle_kw + 0.5, "Idle": self.idle_kw, "Maintenance": 0.5}[self.mode]
        return base + self.kw_per_unit * speed

    def _switch_mode(self, dt: float) -> None:
        if self.run_state == "stopped":
            self.mode = "Idle"
            return
        if self.run_state == "slow":
            self.mode = "Active"
            return
        for (source, target), rate in self.RATES.items():
            if source != self.mode:
                continue
            if source == "Active" and target == "Maintenance":
                rate *= 1 + 5 * self.wear
            if self.rng.random() < _step_probability(rate, dt):
                if self.mode == "Maintenance":
                    self.wear = 0.05
                self.mode = target
                return

    def step(self, dt: float) -> dict[str, Any]:
        """Advance dt seconds; the reading as MachineTelemetry field values."""
        rng = self.rng
        self._switch_mode(dt)
        phi = math.exp(-dt / 30.0)
        self.load = float(np.clip(1 + phi * (self.load - 1) + 0.08 * math.sqrt(1 - phi**2) * rng.normal(), 0.6, 1.15))
        target_speed = self.nominal_speed * self.load * self.speed_factor if self.mode == "Active" else 0.0
        self.speed = max(0.0, _lag(self.speed, target_speed, dt, 4.0))
        speed = max(0.0, self.speed + (rng.normal(0, 2.0) if self.speed > 1 else 0.0))
        if self.mode == "Active":
            self.wear = min(1.0, self.wear + dt * self.load / 28_800)

        power = self._power(speed) + rng.normal(0, 0.15)
        if self.fault == "energy_spike":
            self.spike_kw = _lag(self.spike_kw, rng.uniform(4.0, 6.0), dt, 2.0)
            power += self.spike_kw
        power = max(0.2, power)

        thermal = self.thermal_c_per_kw * (1.3 if self.fault == "overheat" else 1.0)
        target_temp = self.AMBIENT_C + thermal * power + (25.0 if self.fault == "overheat" else 0.0)
        self.temperature = _lag(self.temperature, target_temp, dt, 45.0)
        temperature = self.temperature + rng.normal(0, 0.2)  # sensor noise, not in the thermal state

        vibration = max(0.1, 0.4 + speed / 110 * (1 + 0.3 * self.wear) + rng.normal(0, 0.08))
        latency = float(np.exp(rng.normal(math.log(8.0), 0.35)))
        packet_loss = 0.2 + abs(rng.normal(0, 0.15))
        if self.fault == "network":
            latency += 40 + float(np.exp(rng.normal(math.log(10.0), 0.5)))
            packet_loss += rng.uniform(3.0, 8.0)
        hot = max(0.0, temperature - 75.0)
        error_rate = 0.5 + 0.6 * packet_loss + 0.3 * hot + abs(rng.normal(0, 0.2))
        defect_rate = 1.0 + 4 * self.wear + 0.08 * max(0.0, temperature - 70) + 0.3 * max(0.0, vibration - 4.5)
        defect_rate = max(0.0, defect_rate + rng.normal(0, 0.2))
        maintenance_score = 0.1 + 0.6 * self.wear + 0.02 * hot + 0.05 * max(0.0, vibration - 4.5)
        maintenance_score = float(np.clip(maintenance_score + rng.normal(0, 0.02), 0.0, 1.0))
        units_per_kwh = speed / power
        if self.mode != "Active" or units_per_kwh < 22 or defect_rate > 7:
            efficiency = "Low"
        elif units_per_kwh >= 38 and defect_rate < 4:
            efficiency = "High"
        else:
            efficiency = "Medium"
        return {
            "machine_id": str(self.number),
            "operation_mode": self.mode,
            "temperature_c": round(temperature, 2),
            "vibration_hz": round(vibration, 3),
            "power_consumption_kw": round(power, 3),
            "network_latency_ms": round(latency, 2),
            "packet_loss_pct": round(packet_loss, 3),
            "quality_control_defect_rate_pct": round(defect_rate, 3),
            "production_speed_units_per_hr": round(speed, 2),
            "predictive_maintenance_score": round(maintenance_score, 4),
            "error_rate_pct": round(error_rate, 3),
            "efficiency_status": efficiency,
        }


class RobotModel(_SimulatedAsset):
    """A robot joint whose bearing wears towards failure; see the module docstring."""

    kind = "robot"
    faults = ROBOT_FAULTS
    CYCLES_PER_S = 0.5
    AMBIENT_C = 25.0
    FAULT_ACCELERATION = 3.0
    DEFECT_LOCATIONS = ("bpfo", "bpfi", "bsf")
    DEFECT_WEIGHTS = (0.5, 0.35, 0.15)

    def __init__(self, asset_id: str, rng: np.random.Generator, fault: str | None) -> None:
        super().__init__(asset_id, rng, fault)
        self.cycle_count = 0.0
        self.replacements = 0
        self.temperature = self.AMBIENT_C + 15.0
        self._new_bearing()
        self.wear = rng.uniform(0.0, 0.3) * self.lifetime  # robots start part-way through a life

    @property
    def acceleration(self) -> float:
        return self.FAULT_ACCELERATION if self.fault in ROBOT_FAULTS else 1.0

    def _new_bearing(self) -> None:
        self.lifetime = float(self.rng.uniform(1500, 4000))
        self.wear = 0.0
        if self.fault == "bearing_outer":
            self.defect = "bpfo"
        elif self.fault == "bearing_inner":
            self.defect = "bpfi"
        else:
            self.defect = str(self.rng.choice(self.DEFECT_LOCATIONS, p=self.DEFECT_WEIGHTS))

    @property
    def severity(self) -> float:
        return min(1.0, self.wear / self.lifetime) ** 2

    @property
    def true_rul_cycles(self) -> float:
        return max(0.0, self.lifetime - self.wear) / self.acceleration

    def signal(self, shaft_hz: float) -> np.ndarray:
        """One synthetic accelerometer record (g) at the current severity."""
        rng, severity = self.rng, self.severity
        t = np.arange(SIGNAL_SAMPLES) / SAMPLE_RATE_HZ
        x = rng.normal(0, 0.02 + 0.02 * severity, SIGNAL_SAMPLES)
        if shaft_hz <= 0:
            return x
        x += 0.03 * np.sin(2 * np.pi * shaft_hz * t + rng.uniform(0, 2 * np.pi))
        x += 0.015 * np.sin(2 * np.pi * 2 * shaft_hz * t + rng.uniform(0, 2 * np.pi))
        if severity <= 0:
            return x
        fault_hz = BEARING.fault_frequencies(shaft_hz)[self.defect]
        amplitude = 0.25 * severity
        modulation = 1 + 0.5 * np.cos(2 * np.pi * shaft_hz * t) if self.defect == "bpfi" else 1.0
        x += amplitude * modulation * np.sin(2 * np.pi * fault_hz * t + rng.uniform(0, 2 * np.pi))
        x += 0.5 * amplitude * np.sin(2 * np.pi * 2 * fault_hz * t + rng.uniform(0, 2 * np.pi))
        # Impacts: each defect strike rings the structure's resonance and decays.
        spikes = np.zeros(SIGNAL_SAMPLES)
        strike_times = np.arange(rng.uniform(0, 1 / fault_hz), t[-1], 1 / fault_hz)
        strike_times += rng.normal(0, 0.01 / fault_hz, strike_times.size)  # slip jitter
        indices = np.clip((strike_times * SAMPLE_RATE_HZ).astype(int), 0, SIGNAL_SAMPLES - 1)
        np.add.at(spikes, indices, 1.5 * severity * rng.uniform(0.7, 1.3, indices.size))
        ring_t = np.arange(int(0.01 * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
        ring = np.exp(-400 * ring_t) * np.sin(2 * np.pi * RESONANCE_HZ * ring_t)
        return x + np.convolve(spikes, ring)[:SIGNAL_SAMPLES]

    def step(self, dt: float) -> dict[str, Any]:
        """Advance dt seconds; the reading as RobotTelemetry field values."""
        rng = self.rng
        cycles = self.CYCLES_PER_S * self.speed_factor * dt
        self.cycle_count += cycles
        self.wear += cycles * self.acceleration
        if self.wear >= self.lifetime:
            self.replacements += 1
            self._new_bearing()
        severity = self.severity
        shaft_hz = SHAFT_HZ * self.speed_factor
        reference_hz = shaft_hz if shaft_hz > 0 else SHAFT_HZ
        features = vibration_features(self.signal(shaft_hz), SAMPLE_RATE_HZ, BEARING.fault_frequencies(reference_hz))
        target_temp = self.AMBIENT_C + 15.0 * self.speed_factor + 20.0 * severity * max(self.speed_factor, 0.2)
        self.temperature = _lag(self.temperature, target_temp, dt, 120.0)
        current = 0.4 + 4.5 * self.speed_factor * (1 + 0.25 * severity) + abs(rng.normal(0, 0.05))
        return {
            "vibration": VibrationFeatures(**{k: round(v, 9) for k, v in features.items()}),
            "temperature": round(self.temperature + rng.normal(0, 0.1), 2),
            "motor_current": round(current, 3),
            "cycle_count": int(self.cycle_count),
            "health_score": round(100 * (1 - severity), 2),
            "state": self.run_state,
            "true_rul_cycles": round(self.true_rul_cycles, 1),
        }


class CleanroomModel(_SimulatedAsset):
    """Particle counter and climate of one cleanroom; see the module docstring."""

    kind = "cleanroom"
    faults = CLEANROOM_FAULTS
    SAMPLE_M3 = 1.0
    EXCURSION_FACTOR = 30.0

    def __init__(self, asset_id: str, rng: np.random.Generator, fault: str | None) -> None:
        super().__init__(asset_id, rng, fault)
        self.base_class = rng.uniform(4.4, 4.8)
        self.log_factor = 0.0
        self.excursion = 0.0  # 0 (none) .. 1 (full excursion), first-order ramp
        self.temperature = 21.0
        self.humidity = 45.0
        self.pressure_pa = 12.5

    def command(self, command: Command) -> tuple[Literal["done", "rejected"], str]:
        return "rejected", "the cleanroom monitor takes no commands; machines and robots accept stop, slow, resume"

    def step(self, dt: float) -> dict[str, Any]:
        """Advance dt seconds; the reading as CleanroomStatus field values."""
        rng = self.rng
        phi = math.exp(-dt / 60.0)
        self.log_factor = phi * self.log_factor + 0.15 * math.sqrt(1 - phi**2) * rng.normal()
        self.excursion = _lag(self.excursion, 1.0 if self.fault == "excursion" else 0.0, dt, 15.0)
        concentration = math.exp(self.log_factor) * self.EXCURSION_FACTOR**self.excursion
        sizes = [float(size) for size in PARTICLE_SIZES_UM]
        cumulative = [10**self.base_class * (0.1 / size) ** 2.08 * concentration for size in sizes]
        # Counts in each size bin are independent Poisson draws; cumulative sums stay monotone.
        differential = [a - b for a, b in zip(cumulative, [*cumulative[1:], 0.0], strict=True)]
        sampled = rng.poisson(np.array(differential) * self.SAMPLE_M3)
        counts = np.cumsum(sampled[::-1])[::-1] / self.SAMPLE_M3
        particles = {size: float(count) for size, count in zip(PARTICLE_SIZES_UM, counts, strict=True)}

        self.temperature = _lag(self.temperature, 21.0, dt, 300.0) + rng.normal(0, 0.03)
        self.humidity = _lag(self.humidity, 45.0 + 6.0 * self.excursion, dt, 120.0) + rng.normal(0, 0.1)
        self.pressure_pa = _lag(self.pressure_pa, 12.5 - 9.5 * self.excursion, dt, 10.0) + rng.normal(0, 0.1)
        return {
            "particles_per_m3": particles,
            "iso_class": iso_class_from_counts(particles),
            "temperature": round(self.temperature, 2),
            "humidity": round(float(np.clip(self.humidity, 0, 100)), 2),
            "differential_pressure_pa": round(self.pressure_pa, 2),
        }


class CameraModel(_SimulatedAsset):
    """A PPE camera: a small synthetic JPEG every FRAME_INTERVAL_S, with its ground truth.

    Frames come from `ppe_images.synthetic_camera_frame` (people with or without hard hats and
    vests), seeded per camera and frame, so the same fleet seed shows the same pictures.
    """

    kind = "camera_frame"
    faults = CAMERA_FAULTS
    FRAME_INTERVAL_S = 5.0
    FRAME_WIDTH = 128
    WORKERS_IN_VIEW = 3

    def __init__(self, asset_id: str, rng: np.random.Generator, fault: str | None, *, zone: str) -> None:
        super().__init__(asset_id, rng, fault)
        self.zone = zone
        self.frames = 0
        self.since_last_s = self.FRAME_INTERVAL_S  # the first tick shows a frame

    def command(self, command: Command) -> tuple[Literal["done", "rejected"], str]:
        return "rejected", "cameras take no commands; machines and robots accept stop, slow, resume"

    def step(self, dt: float) -> dict[str, Any] | None:
        """The next frame as CameraFrame field values when one is due, else None."""
        self.since_last_s += dt
        if self.since_last_s < self.FRAME_INTERVAL_S:
            return None
        self.since_last_s = 0.0
        from factory_pipelines.ppe_images import synthetic_camera_frame  # Pillow: only when cameras run

        frame = synthetic_camera_frame(int(self.rng.integers(2**31)), width=self.FRAME_WIDTH)
        self.frames += 1
        return {
            "zone": self.zone,
            # The badge the camera's tracker read: its zone's workers take turns in front of it.
            "worker_id": f"{self.zone}-worker-{(self.frames - 1) % self.WORKERS_IN_VIEW + 1}",
            "image_jpeg_b64": base64.b64encode(frame.jpeg).decode("ascii"),
            "width": frame.width,
            "height": frame.height,
            "true_violation": frame.violation,
        }


# ---- the fleet ----


def _asset_rng(seed: int, kind_index: int, number: int) -> np.random.Generator:
    return np.random.default_rng([seed, kind_index, number])


def _machine_models(count: int, seed: int, faults: Mapping[str, str]) -> list[MachineModel]:
    return [
        MachineModel(machine_asset_id(n), n, _asset_rng(seed, 0, n), faults.get(machine_asset_id(n)))
        for n in range(1, count + 1)
    ]


def validate_faults(fault_options: Mapping[str, tuple[str, ...]], faults: Mapping[str, str]) -> None:
    """ValueError naming the valid assets and fault kinds when `faults` asks for anything else."""
    for asset_id, fault in faults.items():
        if asset_id not in fault_options:
            raise ValueError(f"unknown asset {asset_id!r} in faults; the fleet has: {', '.join(fault_options)}")
        valid = fault_options[asset_id]
        if fault not in valid:
            raise ValueError(f"unknown fault {fault!r} for {asset_id}; valid faults there: {', '.join(valid)}")


def fault_options(config: FleetConfig) -> dict[str, tuple[str, ...]]:
    """Every asset of the fleet and the faults it can be given."""
    options: dict[str, tuple[str, ...]] = {}
    options |= {machine_asset_id(n): MACHINE_FAULTS for n in range(1, config.machines + 1)}
    options |= {robot_asset_id(n): ROBOT_FAULTS for n in range(1, config.robots + 1)}
    options |= {cleanroom_asset_id(config.site, n): CLEANROOM_FAULTS for n in range(1, config.cleanrooms + 1)}
    options |= {safety_asset_id(n): SAFETY_FAULTS for n in range(1, config.safety_stations + 1)}
    options |= {camera_asset_id(n): CAMERA_FAULTS for n in range(1, config.cameras + 1)}
    return options


def parse_fault_specs(specs: Iterable[str]) -> dict[str, str]:
    """`["machine-02=energy_spike", ...]` (the CLI's --fault values) as {asset_id: fault}."""
    faults: dict[str, str] = {}
    for spec in specs:
        asset_id, sep, fault = spec.partition("=")
        if not sep or not asset_id.strip() or not fault.strip():
            raise ValueError(f"fault {spec!r} must look like ASSET=KIND, e.g. machine-02=energy_spike")
        faults[asset_id.strip()] = fault.strip()
    return faults


class Fleet:
    """The pure simulation: deterministic for a seed and a sequence of `now`s."""

    def __init__(
        self, config: FleetConfig, faults: Mapping[str, str] | None = None, *, seq_start: int | None = None
    ) -> None:
        self.config = config
        faults = dict(faults or {})
        validate_faults(fault_options(config), faults)
        self.assets: dict[str, _SimulatedAsset | SafetyZoneModel] = {}
        self.topics: dict[str, str] = {}
        for machine in _machine_models(config.machines, config.seed, faults):
            self.assets[machine.asset_id] = machine
        for n in range(1, config.robots + 1):
            asset_id = robot_asset_id(n)
            self.assets[asset_id] = RobotModel(asset_id, _asset_rng(config.seed, 1, n), faults.get(asset_id))
        for n in range(1, config.cleanrooms + 1):
            asset_id = cleanroom_asset_id(config.site, n)
            self.assets[asset_id] = CleanroomModel(asset_id, _asset_rng(config.seed, 2, n), faults.get(asset_id))
        station_ids = {safety_asset_id(n) for n in range(1, config.safety_stations + 1)}
        station_faults = {asset_id: fault for asset_id, fault in faults.items() if asset_id in station_ids}
        for station in safety_zone_models(config.safety_stations, config.seed, station_faults):
            self.assets[station.asset_id] = station
        for n in range(1, config.cameras + 1):
            asset_id = camera_asset_id(n)
            zone = safety_zone_name(n) if n <= config.safety_stations else asset_id
            self.assets[asset_id] = CameraModel(asset_id, _asset_rng(config.seed, 4, n), None, zone=zone)
        for asset_id in self.assets:
            first_cleanroom = asset_id == cleanroom_asset_id(config.site)
            self.topics[asset_id] = (
                cleanroom_topic(config.site) if first_cleanroom else telemetry_topic(config.site, asset_id)
            )
        start = seq_start if seq_start is not None else first_seq()
        self._next_seq = dict.fromkeys(self.assets, start)
        self._last_step: dict[str, datetime] = {}

    @property
    def asset_ids(self) -> list[str]:
        return list(self.assets)

    def next_seq(self, asset_id: str) -> int:
        """The asset's next sequence number (its telemetry and its command acks share one counter)."""
        seq = self._next_seq[asset_id]
        self._next_seq[asset_id] = seq + 1
        return seq

    def step(self, now: datetime) -> list[tuple[str, BaseModel]]:
        """One reading of every asset at `now` (UTC): [(topic, payload model), ...]."""
        now = now.astimezone(UTC)
        out: list[tuple[str, BaseModel]] = []
        for asset_id, asset in self.assets.items():
            last = self._last_step.get(asset_id)
            dt = 1.0 / self.config.rate_hz if last is None else (now - last).total_seconds()
            dt = min(max(dt, 0.0), 3600.0)
            self._last_step[asset_id] = now
            values = asset.step(dt)
            if values is None:  # a camera between frames
                continue
            envelope = {"asset_id": asset_id, "ts": now, "seq": self.next_seq(asset_id)}
            payload: BaseModel
            if isinstance(asset, MachineModel):
                payload = MachineTelemetry(**envelope, **values)
            elif isinstance(asset, RobotModel):
                payload = RobotTelemetry(**envelope, **values)
            elif isinstance(asset, SafetyZoneModel):
                payload = SafetyReading(**envelope, **values)
            elif isinstance(asset, CameraModel):
                payload = CameraFrame(**envelope, **values)
            else:
                payload = CleanroomStatus(**envelope, **values)
            out.append((self.topics[asset_id], payload))
        return out

    def apply_command(self, asset_id: str, command: Command, now: datetime) -> tuple[str, CommandAck] | None:
        """Obey (or reject) a command; the ack and its topic, None for assets not in this fleet."""
        asset = self.assets.get(asset_id)
        if asset is None:
            return None
        status, detail = asset.command(command)
        ack = CommandAck(
            asset_id=asset_id,
            ts=now.astimezone(UTC),
            seq=self.next_seq(asset_id),
            command_id=command.command_id,
            command=command.command,
            status=status,
            detail=detail,
        )
        return telemetry_topic(self.config.site, asset_id), ack


# ---- running on MQTT ----


@dataclass
class SimulatorStats:
    """What a simulator run published, by payload kind."""

    published: dict[str, int] = field(default_factory=dict)
    commands_received: int = 0
    commands_rejected: int = 0
    ticks: int = 0
    elapsed_s: float = 0.0
    unacknowledged: int = 0  # still pending at the end (0 after a clean flush)

    @property
    def total(self) -> int:
        return sum(self.published.values())

    @property
    def telemetry(self) -> int:
        return sum(count for kind, count in self.published.items() if kind != "command_ack")

    def count(self, kind: str) -> None:
        self.published[kind] = self.published.get(kind, 0) + 1


def _asset_from_command_topic(topic: str, site: str) -> str | None:
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == "factory" and parts[1] == site and parts[3] == "cmd":
        return parts[2]
    return None


def run_simulator(
    settings: FactorySettings,
    fleet: FleetConfig,
    *,
    faults: dict[str, str] | None = None,
    duration_s: float | None = None,
    max_messages: int | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[SimulatorStats], None] | None = None,
) -> SimulatorStats:
    """Publish the fleet in real time until duration_s, max_messages (telemetry) or `stop`.

    Blocking. `stop` is honoured within a quarter of a second; commands are obeyed as they
    arrive. Every message is QoS 1; at most MAX_PENDING_PUBLISHES wait for the broker's ack.
    """
    if fleet.site != settings.site:
        log.info("simulating site %r (settings.site is %r)", fleet.site, settings.site)
    model = Fleet(fleet, faults)  # validates faults before anything connects
    stop = stop or threading.Event()
    stats = SimulatorStats()
    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
    wake = threading.Event()
    command_filter = command_topic(fleet.site, "+")

    client = make_client(f"factory-simulator-{fleet.site}-{uuid.uuid4().hex[:8]}")

    connections = 0

    def _on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        nonlocal connections
        if getattr(reason, "is_failure", False):
            log.warning("simulator: the broker at %s refused the connection: %s", settings.mqtt_url, reason)
            return
        connections += 1
        if connections > 1:  # paho reconnected by itself; messages it held are sent again now
            log.info("simulator: reconnected to %s; publishing resumes", settings.mqtt_url)
        c.subscribe(command_filter, qos=1)

    def _on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not stop.is_set():
            log.warning(
                "simulator: connection to the broker lost (%s); reconnecting, unacknowledged messages are kept", reason
            )

    def _on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        inbox.put((message.topic, message.payload))
        wake.set()

    subscribed = threading.Event()
    client.on_connect = _on_connect
    client.on_disconnect = _on_disconnect
    client.on_subscribe = lambda *_args: subscribed.set()
    client.on_message = _on_message
    publisher = BoundedPublisher(client, max_pending=MAX_PENDING_PUBLISHES)
    connect_and_wait(client, settings.mqtt_connection)
    if not subscribed.wait(10.0):  # commands are obeyed from the first reading on
        client.disconnect()
        client.loop_stop()
        raise ConnectionError(f"the broker at {settings.mqtt_url} did not confirm the subscription to {command_filter}")

    interval = 1.0 / fleet.rate_hz
    started = time.monotonic()
    next_tick = started
    next_progress = started + 1.0
    try:
        while not stop.is_set():
            _handle_commands(model, inbox, publisher, stats, fleet.site, stop)
            now_mono = time.monotonic()
            if duration_s is not None and now_mono - started >= duration_s:
                break
            if now_mono >= next_tick:
                stats.ticks += 1
                for topic, payload in model.step(datetime.now(UTC)):
                    if max_messages is not None and stats.telemetry >= max_messages:
                        break
                    if not publisher.publish(topic, dump_payload(payload), abort=stop):
                        break
                    stats.count(str(getattr(payload, "kind", "unknown")))
                next_tick += interval
                if next_tick < now_mono - 10 * interval:  # far behind (slow host): do not try to catch up
                    next_tick = now_mono
            if max_messages is not None and stats.telemetry >= max_messages:
                break
            if progress is not None and now_mono >= next_progress:
                stats.elapsed_s = now_mono - started
                progress(stats)
                next_progress = now_mono + 1.0
            wait_s = max(0.0, next_tick - time.monotonic())
            if duration_s is not None:
                wait_s = min(wait_s, max(0.0, started + duration_s - time.monotonic()))
            wake.wait(min(wait_s, 0.25))
            wake.clear()
        _handle_commands(model, inbox, publisher, stats, fleet.site, stop)
    finally:
        publisher.close(flush_timeout=10.0)
        stats.unacknowledged = publisher.pending
        stats.elapsed_s = time.monotonic() - started
    if progress is not None:
        progress(stats)
    return stats


def _handle_commands(
    model: Fleet,
    inbox: queue.Queue[tuple[str, bytes]],
    publisher: BoundedPublisher,
    stats: SimulatorStats,
    site: str,
    stop: threading.Event,
) -> None:
    while True:
        try:
            topic, raw = inbox.get_nowait()
        except queue.Empty:
            return
        asset_id = _asset_from_command_topic(topic, site)
        if asset_id is None or asset_id not in model.assets:
            continue  # a command for some other device
        stats.commands_received += 1
        now = datetime.now(UTC)
        try:
            command = Command.model_validate_json(raw)
        except ValidationError as exc:
            stats.commands_rejected += 1
            command_id = _command_id_of(raw)
            if command_id is None:
                log.warning("ignoring a command without command_id on %s: %s", topic, exc.errors()[0]["msg"])
                continue
            ack_topic = telemetry_topic(site, asset_id)
            ack = CommandAck(
                asset_id=asset_id,
                ts=now,
                seq=model.next_seq(asset_id),
                command_id=command_id,
                command=str(_field_of(raw, "command")),
                status="rejected",
                detail=f"invalid command: {exc.errors()[0]['msg']}",
            )
        else:
            answer = model.apply_command(asset_id, command, now)
            assert answer is not None  # the asset is in the fleet
            ack_topic, ack = answer
            if ack.status == "rejected":
                stats.commands_rejected += 1
            log.info("%s %s: %s (%s)", asset_id, command.command, ack.status, ack.detail)
        if publisher.publish(ack_topic, dump_payload(ack), abort=stop):
            stats.count("command_ack")


def _field_of(raw: bytes, name: str) -> Any:
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return payload.get(name) if isinstance(payload, dict) else None


def _command_id_of(raw: bytes) -> str | None:
    value = _field_of(raw, "command_id")
    return str(value) if isinstance(value, str | int) and str(value) else None


# ---- the plant export ----


def export_plant_csv(
    path: Path,
    rows: int,
    *,
    machines: int = 5,
    seed: int = 42,
    interval_s: float = 1.0,
    start: datetime | None = None,
    faults: Mapping[str, str] | None = None,
) -> Path:
    """Write `rows` rows in the manufacturing_6G_dataset.csv layout from the simulator's machine model.

    One row per machine per interval (rows sharing a Timestamp), Machine_ID an integer,
    Timestamp like `2024-01-01 00:00:00` (with microseconds only if interval_s is fractional).
    The same seed gives the same machines as `Fleet` with that seed.
    """
    if rows < 0 or machines < 1 or interval_s <= 0:
        raise ValueError("export_plant_csv needs rows >= 0, machines >= 1 and interval_s > 0")
    faults = dict(faults or {})
    validate_faults({machine_asset_id(n): MACHINE_FAULTS for n in range(1, machines + 1)}, faults)
    models = _machine_models(machines, seed, faults)
    start = start or datetime(2024, 1, 1)
    if start.tzinfo is not None:
        start = start.astimezone(UTC).replace(tzinfo=None)
    time_format = EXPORT_TIMESTAMP_FORMAT if float(interval_s).is_integer() else EXPORT_TIMESTAMP_FORMAT + ".%f"
    column_by_field = {name: column for column, name in MACHINE_FIELD_BY_COLUMN.items()}
    columns: dict[str, list[Any]] = {column: [] for column in MACHINE_EXPORT_COLUMNS}
    tick = 0
    while len(columns["Timestamp"]) < rows:
        stamp = (start + timedelta(seconds=tick * interval_s)).strftime(time_format)
        for model in models:
            if len(columns["Timestamp"]) >= rows:
                break
            values = model.step(interval_s)
            columns["Timestamp"].append(stamp)
            for name, value in values.items():
                column = column_by_field[name]
                columns[column].append(int(value) if column == "Machine_ID" else value)
        tick += 1
    schema = {column: pl.Float64 for column in MACHINE_EXPORT_COLUMNS}
    schema |= {"Timestamp": pl.String, "Machine_ID": pl.Int64, "Operation_Mode": pl.String}
    schema |= {"Efficiency_Status": pl.String}
    frame = pl.DataFrame(columns, schema=schema).select(MACHINE_EXPORT_COLUMNS)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(path)
    return path
