"""The earlier SCADA bridge's holding registers (SEED-CLIENTS.md, "Modbus TCP"), filled from the platform.

PLC programs built for the earlier per-agent services read these holding registers (function code 3,
unit 1) at fixed addresses: 0-3 PM, 100-104 energy, 200-203 cyber, 300-303 safety, 400-404 PPE,
500/501/503 overall. Each earlier agent is now one model (as in the REST compatibility layer:
pm -> rul_lstm, energy -> energy_iforest, cyber -> cyber_detector, safety -> safety_hazard,
ppe -> ppe_vision), so each register is computed from the latest prediction of that model per asset,
the open alerts its rules raised (or that were sent in the earlier agent's name), and a few
telemetry points. Register N is what a client reading address N gets (no off-by-one).

Scores the platform gives in 0..1 are scaled to 0..100 (the earlier agents' truncated to 0). Every
value is an unsigned 16-bit integer, rounded and clamped to 0..65535. A register whose meaning has
no source in the platform reads 0, and says so in `COMPAT_REGISTERS` (and the printed map); so does
every register before the first prediction of its model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from statistics import mean

from factory_pipelines.alert_model import SEVERITY_RANK
from factory_pipelines.telemetry import Prediction, Severity
from scada_bridge.points import is_good_number
from scada_bridge.state import BridgeState, OpenAlert

U16_MAX = 65535

# The earlier agents' ids per model: alerts sent in their name count as the model's (as in serving/agents.py).
AGENT_SOURCES: dict[str, tuple[str, ...]] = {
    "rul_lstm": ("rul_lstm", "pm_agent"),
    "energy_iforest": ("energy_iforest", "energy_agent"),
    "cyber_detector": ("cyber_detector", "cyber_agent"),
    "safety_hazard": ("safety_hazard", "hazard_agent"),
    "ppe_vision": ("ppe_vision", "ppe_agent"),
}
SAFETY_RISK_CODES = {"low": 0, "medium": 1, "high": 2}


@dataclass(frozen=True, slots=True)
class CompatRegister:
    address: int
    meaning: str  # what the earlier system put there (SEED-CLIENTS.md)
    source: str  # where the platform's value comes from
    has_source: bool = True


COMPAT_REGISTERS: tuple[CompatRegister, ...] = (
    CompatRegister(
        0,
        "PM: RUL hours",
        "Lowest over robots of the latest rul_lstm RUL (cycles) / the robot's cycle rate (cycles per hour, from its "
        "cycle_count telemetry over the last ~10 min); 0 until a robot has both",
    ),
    CompatRegister(1, "PM: health score", "Lowest latest robot health_score telemetry (0..100)"),
    CompatRegister(
        2, "PM: alert level (normal 0, warning 1, critical 2)", "Worst open alert of rul_lstm / pm_agent (INFO -> 0)"
    ),
    CompatRegister(3, "PM: failure probability x100", "rul_lstm gives an RUL interval, not a probability", False),
    CompatRegister(
        100,
        "Energy: consumption kWh x10",
        "Sum of the machines' latest Power_Consumption_kW x10: a power (kW), the platform keeps no energy counter",
    ),
    CompatRegister(
        101, "Energy: efficiency score", "100 x share of machines whose latest energy_iforest window is normal"
    ),
    CompatRegister(102, "Energy: predicted consumption x10", "energy_iforest forecasts nothing", False),
    CompatRegister(103, "Energy: anomaly 0/1", "1 when any machine's latest energy_iforest label is anomaly"),
    CompatRegister(104, "Energy: anomaly score", "Highest latest energy_iforest score x100 (clamped to 0..100)"),
    CompatRegister(
        200,
        "Cyber: threat level (low 0 .. critical 3)",
        "Worst open alert of cyber_detector / cyber_agent: none 0, INFO 1, WARNING 2, CRITICAL 3",
    ),
    CompatRegister(201, "Cyber: anomaly score", "Highest latest cyber_detector attack probability x100"),
    CompatRegister(202, "Cyber: active threats", "Machines whose latest cyber_detector label is attack"),
    CompatRegister(203, "Cyber: network health", "100 x share of machines whose latest cyber_detector label is normal"),
    CompatRegister(
        300, "Safety: risk level (low 0, medium 1, high 2)", "Worst latest safety_hazard risk label over zones"
    ),
    CompatRegister(301, "Safety: hazard count", "Zones whose latest safety_hazard risk is medium or high"),
    CompatRegister(302, "Safety: safety score", "100 x (1 - highest latest safety_hazard probability)"),
    CompatRegister(303, "Safety: active warnings", "Open alerts of safety_hazard / hazard_agent"),
    CompatRegister(
        400,
        "PPE: compliance rate",
        "100 x (1 - frames in violation / frames) over the cameras' latest ppe_vision windows",
    ),
    CompatRegister(401, "PPE: violations", "Cameras whose latest ppe_vision label is violation"),
    CompatRegister(402, "PPE: workers monitored", "Sum of the safety stations' latest workers telemetry"),
    CompatRegister(
        403,
        "PPE: helmet compliance",
        "100 x share of cameras whose latest window saw no missing hard hat (no_hardhat false)",
    ),
    CompatRegister(
        404, "PPE: vest compliance", "100 x share of cameras whose latest window saw no missing vest (no_vest false)"
    ),
    CompatRegister(500, "Overall health", "Mean of the health figures above that have data: 1, 101, 203, 302, 400"),
    CompatRegister(501, "Agent count", "Models (of the five) with at least one latest prediction"),
    CompatRegister(
        503,
        "System status (0 ok, 1 degraded, 2 critical)",
        "2 with any open CRITICAL alert, 1 with any open WARNING or while the bridge has no broker connection",
    ),
)
COMPAT_ADDRESSES = frozenset(r.address for r in COMPAT_REGISTERS)


def u16(value: float) -> int:
    """Rounded and clamped to an unsigned 16-bit register; NaN reads 0."""
    if not is_good_number(value):
        return U16_MAX if value == float("inf") else 0
    return max(0, min(U16_MAX, round(value)))


def percent(fraction: float) -> int:
    """A 0..1 score as 0..100."""
    return max(0, min(100, u16(100.0 * fraction)))


def _extra(prediction: Prediction, name: str) -> object:
    return (prediction.model_extra or {}).get(name)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _worst(alerts: Iterable[OpenAlert], model: str) -> Severity | None:
    sources = AGENT_SOURCES[model]
    found = [a.severity for a in alerts if a.source in sources]
    return max(found, key=SEVERITY_RANK.__getitem__, default=None)


def _share(predictions: list[Prediction], good: Callable[[Prediction], bool]) -> float | None:
    return sum(good(p) for p in predictions) / len(predictions) if predictions else None


def _finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if is_good_number(v)]


def compat_values(state: BridgeState) -> dict[int, int]:
    """Every register of the compatibility block, by address, from the bridge's live picture."""
    alerts = state.open_alerts()
    rul = state.latest_predictions("rul_lstm")
    energy = state.latest_predictions("energy_iforest")
    cyber = state.latest_predictions("cyber_detector")
    safety = state.latest_predictions("safety_hazard")
    ppe = state.latest_predictions("ppe_vision")
    out = dict.fromkeys(COMPAT_ADDRESSES, 0)

    # PM
    hours = []
    for prediction in rul:
        rate = state.cycle_rate_per_hour(prediction.asset_id)
        if rate:
            hours.append(max(0.0, prediction.score) / rate)
    out[0] = u16(min(hours)) if hours else 0
    health = _finite(v.value for v in state.values_of("robot/health_score").values())
    out[1] = u16(min(health)) if health else 0
    pm_worst = _worst(alerts, "rul_lstm")
    out[2] = {Severity.WARNING: 1, Severity.CRITICAL: 2}.get(pm_worst, 0) if pm_worst else 0

    # energy
    power = _finite(v.value for v in state.values_of("machine/power_consumption_kw").values())
    out[100] = u16(10.0 * sum(power)) if power else 0
    efficiency = _share(energy, lambda p: p.label == "normal")
    out[101] = percent(efficiency) if efficiency is not None else 0
    out[103] = int(any(p.label == "anomaly" for p in energy))
    out[104] = percent(max(p.score for p in energy)) if energy else 0

    # cyber
    cyber_worst = _worst(alerts, "cyber_detector")
    out[200] = {Severity.INFO: 1, Severity.WARNING: 2, Severity.CRITICAL: 3}[cyber_worst] if cyber_worst else 0
    out[201] = percent(max(p.score for p in cyber)) if cyber else 0
    out[202] = sum(p.label == "attack" for p in cyber)
    network_health = _share(cyber, lambda p: p.label != "attack")
    out[203] = percent(network_health) if network_health is not None else 0

    # safety
    risks = [SAFETY_RISK_CODES[p.label] for p in safety if p.label in SAFETY_RISK_CODES]
    out[300] = max(risks, default=0)
    out[301] = len({str(_extra(p, "zone") or p.asset_id) for p in safety if p.label in ("medium", "high")})
    out[302] = percent(1.0 - max(p.score for p in safety)) if safety else 0
    out[303] = sum(a.source in AGENT_SOURCES["safety_hazard"] for a in alerts)

    # PPE
    frames = violating = 0.0
    for prediction in ppe:
        seen = _number(_extra(prediction, "frames")) or 1.0
        bad = _number(_extra(prediction, "frames_in_violation"))
        frames += seen
        violating += bad if bad is not None else (seen if prediction.label == "violation" else 0.0)
    out[400] = percent(1.0 - violating / frames) if frames else 0
    out[401] = sum(p.label == "violation" for p in ppe)
    workers = _finite(v.value for v in state.values_of("safety/workers").values())
    out[402] = u16(sum(workers)) if workers else 0
    for address, verdict in ((403, "no_hardhat"), (404, "no_vest")):
        judged = [p for p in ppe if isinstance(_extra(p, verdict), bool)]
        share = _share(judged, lambda p, name=verdict: not _extra(p, name))
        out[address] = percent(share) if share is not None else 0

    # overall
    figures = [
        float(out[1]) if health else None,
        float(out[101]) if energy else None,
        float(out[203]) if cyber else None,
        float(out[302]) if safety else None,
        float(out[400]) if frames else None,
    ]
    present = [f for f in figures if f is not None]
    out[500] = u16(mean(present)) if present else 0
    out[501] = sum(bool(p) for p in (rul, energy, cyber, safety, ppe))
    severities = {a.severity for a in alerts}
    if Severity.CRITICAL in severities:
        out[503] = 2
    elif Severity.WARNING in severities or not state.connected:
        out[503] = 1
    return out
