"""Zone safety stations for the edge simulator: sensor readings with labelled hazard episodes.

One `SafetyZoneModel` is the sensor station of one plant zone (gas detector, sound level meter,
thermometer, a proximity sensor on the zone's moving machinery, a PPE camera and a head count).
It has the shape of the simulator's asset classes (`asset_id`, seeded `rng`, optional `fault`,
`kind`, `faults`, `command`, `step(dt) -> SafetyReading field values`) so the simulator's Fleet
can hold it; it does not import the simulator, which will import it.

Normal work is noisy and sometimes looks like a hazard: machinery switches on and off, crews take
breaks (hard hats come off, machines stop), shift changes crowd a zone, forklift exhaust or an
opened solvent drum puffs gas for a minute, bangs and horns spike the sound level for seconds,
operators reach into a machine for a few seconds, temperature drifts slowly, and every zone type
has its own levels (a press shop is louder than a crowded assembly line; a welding bay is warmer
than a warehouse on a hot afternoon).

Hazard episodes arrive at random (a Poisson process per zone) and ramp up gradually (smoothstep
over 1-5 minutes), hold for 1-10 minutes and fade out; their size varies, so mild ones hide in
the normal variation. Kinds (`HAZARD_KINDS`):
- `gas_leak`: gas builds up (tens to about a hundred ppm above background), turbulent;
- `crowding`: loud machinery with people close: sound up 6-12 dB, more people, closest person
  at about a metre from moving machinery;
- `heat`: air temperature rises 8-15 degC with a thermal lag of two minutes;
- `proximity`: someone stays within a metre of moving machinery;
- `ppe`: hard hats or vests off during hazardous (loud, machine-side) work.
`true_hazard` is true while the episode's intensity is at least half its peak: the ramp's first
half is a precursor, not yet a hazard. A `fault` of one of these kinds forces a full-size episode
of that kind that never ends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from factory_pipelines.telemetry import Command

HAZARD_KINDS: tuple[str, ...] = ("gas_leak", "crowding", "heat", "proximity", "ppe")
SAFETY_FAULTS: tuple[str, ...] = HAZARD_KINDS
SAFETY_RNG_KIND_INDEX = 3  # machines, robots and cleanrooms use 0, 1, 2 in the simulator's seed sequence
HAZARD_INTENSITY = 0.5  # share of an episode's peak from which on it counts as a hazard
PROXIMITY_RANGE_M = 12.0  # what the proximity sensor reports when nothing near it moves or nobody is near
LOUD_DB = 85.0  # EU upper exposure action value, dB(A)


@dataclass(frozen=True, slots=True)
class ZoneType:
    """Typical levels of one kind of plant zone, and how likely each hazard kind is there."""

    name: str
    noise_db: float  # background sound with machinery off, dB(A)
    machinery_db: float  # added while the zone's machinery runs
    temperature_c: float
    gas_ppm: float  # background gas reading
    workers: float  # usual head count
    machinery_duty: float  # share of the time the machinery runs
    hazard_weights: tuple[float, ...]  # relative odds of each of HAZARD_KINDS


ZONE_TYPES: tuple[ZoneType, ...] = (
    ZoneType("assembly", 68.0, 10.0, 22.0, 3.0, 8.0, 0.85, (0.5, 2.0, 0.5, 1.0, 1.5)),
    ZoneType("welding", 72.0, 12.0, 28.0, 8.0, 4.0, 0.70, (1.5, 0.5, 2.0, 1.0, 1.0)),
    ZoneType("paint-shop", 65.0, 8.0, 24.0, 12.0, 3.0, 0.80, (3.0, 0.5, 1.0, 0.5, 1.0)),
    ZoneType("press-shop", 78.0, 12.0, 23.0, 3.0, 5.0, 0.90, (0.3, 1.5, 0.5, 2.5, 1.0)),
    ZoneType("warehouse", 62.0, 8.0, 17.0, 5.0, 4.0, 0.60, (1.0, 1.0, 0.5, 2.0, 0.5)),
    ZoneType("machining", 70.0, 12.0, 24.0, 4.0, 6.0, 0.85, (0.5, 1.0, 0.5, 1.5, 2.0)),
)
ZONE_TYPE_BY_NAME: dict[str, ZoneType] = {zone_type.name: zone_type for zone_type in ZONE_TYPES}


def safety_asset_id(number: int) -> str:
    return f"safety-{number:02d}"


def safety_zone_name(number: int) -> str:
    """Zone names cycle through the zone types: assembly-1, welding-1, ..., assembly-2, ..."""
    zone_type = ZONE_TYPES[(number - 1) % len(ZONE_TYPES)]
    return f"{zone_type.name}-{(number - 1) // len(ZONE_TYPES) + 1}"


def safety_rng(seed: int, number: int) -> np.random.Generator:
    """The generator the simulator's seed sequence gives safety station `number`."""
    return np.random.default_rng([seed, SAFETY_RNG_KIND_INDEX, number])


def _step_probability(rate_per_s: float, dt: float) -> float:
    return 1.0 - math.exp(-rate_per_s * dt)


def _lag(current: float, target: float, dt: float, tau_s: float) -> float:
    return target + (current - target) * math.exp(-dt / tau_s)


def _ar1(current: float, dt: float, tau_s: float, sigma: float, shock: float) -> float:
    """One step of a mean-zero AR(1) with stationary deviation `sigma` and correlation time tau_s."""
    phi = math.exp(-dt / tau_s)
    return phi * current + sigma * math.sqrt(1 - phi * phi) * shock


def _smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3 - 2 * x)


@dataclass(slots=True)
class HazardEpisode:
    """One hazard: its kind, its timeline (s) and its size (`severity` scales every effect)."""

    kind: str
    ramp_s: float
    hold_s: float  # math.inf for an episode a fault forces
    fade_s: float
    severity: float
    peak: float  # kind-specific: ppm of gas, dB of noise, degC of heat, metres of distance, people without PPE
    age_s: float = 0.0

    @property
    def intensity(self) -> float:
        """0..1 share of the peak: smoothstep up, hold, smoothstep down."""
        if self.age_s < self.ramp_s:
            return _smoothstep(self.age_s / self.ramp_s)
        after_hold = self.age_s - self.ramp_s - self.hold_s
        if after_hold < 0:
            return 1.0
        return 1.0 - _smoothstep(after_hold / self.fade_s)

    @property
    def over(self) -> bool:
        return self.age_s >= self.ramp_s + self.hold_s + self.fade_s

    @property
    def hazardous(self) -> bool:
        return not self.over and self.intensity >= HAZARD_INTENSITY


class SafetyZoneModel:
    """The safety sensor station of one zone; see the module docstring."""

    kind = "safety"
    faults = SAFETY_FAULTS
    MEAN_GAP_S = 3600.0  # mean time between spontaneous hazard episodes in a zone
    MACHINERY_OFF_MEAN_S = 300.0
    BREAK_EVERY_S = 5400.0
    BREAK_MEAN_S = 900.0
    SHIFT_CHANGE_EVERY_S = 7200.0
    SHIFT_CHANGE_S = 300.0
    GAS_PUFF_EVERY_S = 1500.0
    BANG_EVERY_S = 240.0
    APPROACH_EVERY_S = 300.0
    DROPOUT = 0.002  # chance that a sensor's value is missing from a reading

    def __init__(
        self,
        asset_id: str,
        rng: np.random.Generator,
        fault: str | None = None,
        *,
        zone: str | None = None,
        zone_type: str | None = None,
    ) -> None:
        if fault is not None and fault not in SAFETY_FAULTS:
            raise ValueError(f"unknown fault {fault!r} for a safety station; valid faults: {', '.join(SAFETY_FAULTS)}")
        self.asset_id = asset_id
        self.rng = rng
        self.fault = fault
        self.run_state: Literal["running", "slow", "stopped"] = "running"  # the simulator's asset interface
        self.speed_factor = 1.0
        self.zone = zone or asset_id
        if zone_type is None:
            prefix = self.zone.rsplit("-", 1)[0]
            chosen = ZONE_TYPE_BY_NAME.get(prefix) or ZONE_TYPES[int(rng.integers(len(ZONE_TYPES)))]
        else:
            chosen = ZONE_TYPE_BY_NAME[zone_type]
        self.zone_type = chosen
        # This zone's own levels around its type's.
        self.noise_base = chosen.noise_db + rng.normal(0, 2.0)
        self.machinery_db = chosen.machinery_db + rng.normal(0, 1.5)
        self.temperature_base = chosen.temperature_c + rng.normal(0, 1.5)
        self.gas_base = chosen.gas_ppm * float(np.exp(rng.normal(0, 0.3)))
        self.crew = chosen.workers * rng.uniform(0.7, 1.3)
        duty = chosen.machinery_duty
        self.machinery_on_mean_s = self.MACHINERY_OFF_MEAN_S * duty / (1 - duty)
        self.hazard_weights = np.array(chosen.hazard_weights) / sum(chosen.hazard_weights)
        # Latent state.
        self.machinery_on = bool(rng.random() < duty)
        self.on_break = False
        self.shift_change_s = 0.0
        self.workers_level = self.crew
        self.violators = 0
        self.gas_wander = 0.0
        self.gas_puff = 0.0
        self.gas_puff_tau = 30.0
        self.gas_turbulence = 0.0
        self.noise_wander = 0.0
        self.bang_s = 0.0
        self.bang_db = 0.0
        self.temperature_drift = rng.normal(0, 1.5)
        self.machinery_heat = 1.5 if self.machinery_on else 0.0
        self.heat_extra = 0.0
        self.distance_wander = 0.0
        self.approach_s = 0.0
        self.approach_m = 1.0
        self.episode: HazardEpisode | None = None

    # ---- the simulator's asset interface ----

    def command(self, command: Command) -> tuple[Literal["done", "rejected"], str]:
        return "rejected", "a safety sensor station takes no commands; machines and robots accept stop, slow, resume"

    @property
    def hazard_kind(self) -> str | None:
        """The kind of the hazard going on right now (None when there is none): ground truth."""
        return self.episode.kind if self.episode is not None and self.episode.hazardous else None

    def step(self, dt: float) -> dict[str, Any]:
        """Advance dt seconds; the reading as SafetyReading field values."""
        # One draw of each kind per step, as Python floats (numpy scalars make the arithmetic slow).
        shock: list[float] = self.rng.standard_normal(12).tolist()
        chance: list[float] = self.rng.random(16).tolist()
        self._advance_episode(dt, chance[0])
        episode = self.episode
        kind = episode.kind if episode is not None else None
        size = episode.intensity * episode.severity if episode is not None else 0.0
        peak = episode.peak if episode is not None else 0.0
        hazardous_work = kind in {"crowding", "proximity", "ppe"} and size > 0.05
        self._advance_routine(dt, chance, hazardous_work)

        workers = self._workers(dt, kind, size, shock[0])
        gas = self._gas(dt, kind, size, peak, chance[5], shock[1:4])
        noise = self._noise(dt, kind, size, peak, workers, chance[6], shock[4:6])
        temperature = self._temperature(dt, kind, size, peak, shock[6:8])
        proximity = self._proximity(dt, kind, size, peak, workers, chance[7], shock[8:10])
        ppe_violations = self._ppe_violations(dt, kind, size, peak, chance[8], chance[9])
        values: dict[str, Any] = {
            "gas_ppm": round(gas, 1),
            "noise_db": round(noise, 1),
            "temperature": round(temperature, 2),
            "proximity_m": round(proximity, 2),
            "ppe_violations": ppe_violations,
            "workers": workers,
        }
        dropped = (draw < self.DROPOUT for draw in chance[10 : 10 + len(values)])
        reading = {name: None if gone else value for (name, value), gone in zip(values.items(), dropped, strict=True)}
        return {"zone": self.zone, **reading, "true_hazard": episode is not None and episode.hazardous}

    # ---- episodes and the zone's routine ----

    def _new_episode(self, kind: str, *, forced: bool) -> HazardEpisode:
        rng = self.rng
        peaks = {
            "gas_leak": rng.uniform(25.0, 120.0),  # ppm above background
            "crowding": rng.uniform(6.0, 12.0),  # dB added; people close in at about a metre
            "heat": rng.uniform(8.0, 15.0),  # degC added
            "proximity": rng.uniform(0.3, 0.9),  # metres from moving machinery
            "ppe": rng.uniform(1.0, 3.0),  # people without hard hat or vest
        }
        return HazardEpisode(
            kind=kind,
            ramp_s=rng.uniform(60.0, 300.0),
            hold_s=math.inf if forced else rng.uniform(60.0, 600.0),
            fade_s=rng.uniform(30.0, 150.0),
            severity=1.0 if forced else rng.uniform(0.4, 1.0),
            peak=float(peaks[kind]),
        )

    def _advance_episode(self, dt: float, chance: float) -> None:
        if self.fault is not None:
            if self.episode is None or self.episode.kind != self.fault or math.isfinite(self.episode.hold_s):
                self.episode = self._new_episode(self.fault, forced=True)
        elif self.episode is None and chance < _step_probability(1 / self.MEAN_GAP_S, dt):
            kind = HAZARD_KINDS[int(self.rng.choice(len(HAZARD_KINDS), p=self.hazard_weights))]
            self.episode = self._new_episode(kind, forced=False)
        if self.episode is not None:
            self.episode.age_s += dt
            if self.episode.over:
                self.episode = None

    def _advance_routine(self, dt: float, chance: list[float], hazardous_work: bool) -> None:
        if self.on_break:
            if chance[1] < _step_probability(1 / self.BREAK_MEAN_S, dt) or hazardous_work:
                self.on_break = False
        elif chance[1] < _step_probability(1 / self.BREAK_EVERY_S, dt):
            self.on_break = True
            self.machinery_on = chance[2] > 0.8
        if hazardous_work:
            self.machinery_on = True
        elif self.machinery_on:
            if chance[2] < _step_probability(1 / self.machinery_on_mean_s, dt):
                self.machinery_on = False
        elif not self.on_break and chance[2] < _step_probability(1 / self.MACHINERY_OFF_MEAN_S, dt):
            self.machinery_on = True
        self.shift_change_s = max(0.0, self.shift_change_s - dt)
        if chance[3] < _step_probability(1 / self.SHIFT_CHANGE_EVERY_S, dt):
            self.shift_change_s = self.SHIFT_CHANGE_S * (0.5 + chance[4])

    # ---- sensors ----

    def _workers(self, dt: float, kind: str | None, size: float, shock: float) -> int:
        target = self.crew * (0.15 if self.on_break else 1.0) * (1.8 if self.shift_change_s > 0 else 1.0)
        if kind == "crowding":
            target += size * 6.0
        elif kind in {"proximity", "ppe", "heat"} and size > 0.05:
            target = max(target, 2.0)
        self.workers_level = _lag(self.workers_level, target, dt, 90.0)
        return max(0, round(self.workers_level + 0.6 * shock))

    def _gas(self, dt: float, kind: str | None, size: float, peak: float, chance: float, shock: list[float]) -> float:
        self.gas_wander = _ar1(self.gas_wander, dt, 180.0, 0.3, shock[0])
        self.gas_puff *= math.exp(-dt / self.gas_puff_tau)
        if chance < _step_probability(1 / self.GAS_PUFF_EVERY_S, dt):  # exhaust, an opened drum: harmless, brief
            self.gas_puff += 10.0 + 40.0 * self.rng.random()
            self.gas_puff_tau = 15.0 + 30.0 * self.rng.random()
        self.gas_turbulence = _ar1(self.gas_turbulence, dt, 15.0, 0.25, shock[1])
        leak = size * peak * math.exp(self.gas_turbulence) if kind == "gas_leak" else 0.0
        level = self.gas_base * math.exp(self.gas_wander) + self.gas_puff + leak
        return max(0.0, level + (0.5 + 0.05 * level) * shock[2])

    def _noise(
        self, dt: float, kind: str | None, size: float, peak: float, workers: int, chance: float, shock: list[float]
    ) -> float:
        self.noise_wander = _ar1(self.noise_wander, dt, 30.0, 1.5, shock[0])
        self.bang_s = max(0.0, self.bang_s - dt)
        if chance < _step_probability(1 / self.BANG_EVERY_S, dt):  # a dropped part, a horn
            self.bang_s = self.rng.uniform(1.0, 4.0)
            self.bang_db = self.rng.uniform(8.0, 16.0)
        level = self.noise_base + (self.machinery_db if self.machinery_on else 0.0) + self.noise_wander
        level += 0.4 * max(0.0, workers - self.crew)
        if self.bang_s > 0:
            level += self.bang_db
        if kind == "crowding":
            level += size * peak
        elif kind == "ppe":
            level += size * 4.0  # grinding, cutting
        return level + 0.7 * shock[1]

    def _temperature(self, dt: float, kind: str | None, size: float, peak: float, shock: list[float]) -> float:
        self.temperature_drift = _ar1(self.temperature_drift, dt, 2400.0, 1.5, shock[0])
        self.machinery_heat = _lag(self.machinery_heat, 1.5 if self.machinery_on else 0.0, dt, 900.0)
        self.heat_extra = _lag(self.heat_extra, size * peak if kind == "heat" else 0.0, dt, 120.0)
        level = self.temperature_base + self.temperature_drift + self.machinery_heat + self.heat_extra
        return level + 0.15 * shock[1]

    def _proximity(
        self, dt: float, kind: str | None, size: float, peak: float, workers: int, chance: float, shock: list[float]
    ) -> float:
        self.distance_wander = _ar1(self.distance_wander, dt, 25.0, 0.35, shock[0])
        self.approach_s = max(0.0, self.approach_s - dt)
        if self.machinery_on and chance < _step_probability(1 / self.APPROACH_EVERY_S, dt):  # loading a part
            self.approach_s = self.rng.uniform(2.0, 8.0)
            self.approach_m = self.rng.uniform(0.4, 1.2)
        if not self.machinery_on or workers == 0:
            return PROXIMITY_RANGE_M
        usual = min(max(4.0 / math.sqrt(max(self.workers_level, 0.5) / self.crew), 1.5), 8.0)
        log_distance = math.log(usual) + self.distance_wander
        if kind in {"proximity", "crowding"}:
            close = peak if kind == "proximity" else 1.2
            weight = min(1.0, size * 1.5)
            log_distance = (1 - weight) * log_distance + weight * math.log(close)
        distance = math.exp(log_distance)
        if self.approach_s > 0:
            distance = min(distance, self.approach_m)
        return min(max(distance * (1 + 0.05 * shock[1]), 0.05), PROXIMITY_RANGE_M)

    def _ppe_violations(
        self, dt: float, kind: str | None, size: float, peak: float, chance: float, false: float
    ) -> int:
        arrive = self.workers_level / 6000.0 * (4.0 if self.on_break else 1.0)
        if chance < _step_probability(arrive, dt):
            self.violators += 1
        elif self.violators and chance > 1 - _step_probability(self.violators / 150.0, dt):
            self.violators -= 1
        present = self.violators + (round(size * peak) if kind == "ppe" else 0)
        seen = int(self.rng.binomial(present, 0.85)) if present else 0
        return seen + (1 if false < 0.01 else 0)  # the camera's occasional false detection


def safety_zone_models(count: int, seed: int, faults: Mapping[str, str] | None = None) -> list[SafetyZoneModel]:
    """`count` stations `safety-01..`, zones named by `safety_zone_name`, seeded like the simulator's assets."""
    faults = dict(faults or {})
    ids = {safety_asset_id(n) for n in range(1, count + 1)}
    for asset_id, fault in faults.items():
        if asset_id not in ids:
            raise ValueError(f"unknown safety station {asset_id!r} in faults; there are: {', '.join(sorted(ids))}")
        if fault not in SAFETY_FAULTS:
            raise ValueError(f"unknown fault {fault!r} for {asset_id}; valid faults: {', '.join(SAFETY_FAULTS)}")
    return [
        SafetyZoneModel(
            safety_asset_id(n), safety_rng(seed, n), faults.get(safety_asset_id(n)), zone=safety_zone_name(n)
        )
        for n in range(1, count + 1)
    ]
