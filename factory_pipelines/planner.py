"""The planner: what to do about an alert, as a plan an operator can follow.

Deterministic first: each alert type maps to a plan template (action code, priority, owner, due
time, steps, parts, safety notes), filled in with the alert's asset and evidence. The earlier
planner's four types keep their action codes and priorities, because runbooks and dashboards key
on them (SEED-CLIENTS.md). When a Gemini key is set, the model may rewrite the summary and steps
in plainer language; everything that decides *what* happens (action, priority, due time, owner,
parts, safety notes) always comes from the rules, and any failure of the model falls back to the
rules' wording.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from google import genai
from pydantic import BaseModel, ConfigDict, Field, field_validator

from factory_pipelines.alert_model import ActionPlan, AlertCandidate, AlertRecord
from factory_pipelines.gemini import ask_for_json, gemini_client
from factory_pipelines.telemetry import Severity

log = logging.getLogger(__name__)

NEXT_SHIFT = timedelta(hours=8)


@dataclass(frozen=True, slots=True)
class PlanTemplate:
    """The plan for one alert type. Text fields are `str.format` templates over `_wording_fields`."""

    action: str
    priority: int
    owner_role: str
    due_in: timedelta
    summary: str
    steps: tuple[str, ...]
    parts_or_tools: tuple[str, ...] = ()
    safety_notes: tuple[str, ...] = ()
    # A CRITICAL alert of a type that is not urgent by itself may come sooner (our own types only:
    # the earlier types keep their priorities, which clients rely on).
    priority_when_critical: int | None = None
    due_in_when_critical: timedelta | None = None


LOCKOUT = "Lock out and tag out the machine before any hands-on work."

PLAN_TEMPLATES: dict[str, PlanTemplate] = {
    # ---- the earlier planner's types: codes and priorities unchanged ----
    "PPE_VIOLATION": PlanTemplate(
        action="STOP_MACHINE_IMMEDIATE",
        priority=1,
        owner_role="line supervisor",
        due_in=timedelta(0),
        summary="Stop {asset} now: {message}",
        steps=(
            "Stop {asset} with the nearest emergency stop.",
            "Keep the worker out of the machine's area until hard hat and vest are on.",
            "Check the camera evidence ({evidence}) and record the violation.",
            "Restart {asset} only after the supervisor confirms everyone nearby wears full PPE.",
        ),
        parts_or_tools=("spare hard hats", "high-visibility vests"),
        safety_notes=("Use the emergency stop; never reach into a running machine's area.", LOCKOUT),
    ),
    "DDoS_RISK": PlanTemplate(
        action="ISOLATE_NETWORK_SEGMENT",
        priority=2,
        owner_role="OT security engineer",
        due_in=timedelta(minutes=15),
        summary="Isolate the network segment of {asset}: {message}",
        steps=(
            "Put an operator at the machines on the segment of {asset}, running them locally.",
            "Isolate the segment at its managed switch or firewall.",
            "Capture the traffic that raised the alert ({evidence}) for analysis.",
            "Block the flooding sources, then reconnect the segment and confirm supervision is back.",
        ),
        parts_or_tools=("managed switch or firewall console", "packet capture tool"),
        safety_notes=("Isolating a segment cuts remote supervision of its machines: watch them on site.",),
    ),
    "RUL_LOW": PlanTemplate(
        action="SCHEDULE_MAINTENANCE_NEXT_SHIFT",
        priority=3,
        owner_role="maintenance planner",
        due_in=NEXT_SHIFT,
        summary="Schedule maintenance of {asset} in the next shift: {message}",
        steps=(
            "Book a maintenance slot for {asset} in the next shift.",
            "Order or reserve the bearing and seal kit for {asset}.",
            "Until then, watch the vibration and temperature of {asset} (evidence: {evidence}).",
            "Replace the worn parts, then confirm the predicted life is back above the threshold.",
        ),
        parts_or_tools=("bearing set", "seal kit", "grease", "vibration analyser"),
        safety_notes=(LOCKOUT,),
    ),
    "ENERGY_OPTIMIZATION": PlanTemplate(
        action="ADJUST_POWER_PROFILE",
        priority=4,
        owner_role="energy manager",
        due_in=timedelta(hours=24),
        summary="Adjust the power profile of {asset}: {message}",
        steps=(
            "Compare the consumption of {asset} with its usual profile ({evidence}).",
            "Move flexible loads of {asset} out of the peak or lower its idle power setting.",
            "Check the next day's consumption to confirm the saving.",
        ),
        parts_or_tools=("energy monitoring dashboard",),
    ),
    # ---- our own types ----
    "SAFETY_HAZARD": PlanTemplate(
        action="EVACUATE_ZONE",
        priority=1,
        owner_role="shift safety officer",
        due_in=timedelta(0),
        summary="Clear the zone around {asset} now: {message}",
        steps=(
            "Order everyone out of the zone around {asset}.",
            "Stop the machines in the zone with their emergency stops.",
            "Find the cause of the hazard reading ({evidence}) before anyone goes back in.",
            "Reopen the zone only when the safety officer has checked it.",
        ),
        parts_or_tools=("zone barrier tape", "gas and temperature meter"),
        safety_notes=("Nobody re-enters the zone until the safety officer clears it.", LOCKOUT),
    ),
    "CYBER_ANOMALY": PlanTemplate(
        action="INSPECT_NETWORK_TRAFFIC",
        priority=3,
        owner_role="OT security engineer",
        due_in=timedelta(hours=1),
        summary="Inspect the network traffic of {asset}: {message}",
        steps=(
            "Look at the recent traffic of {asset} for unknown peers or protocols ({evidence}).",
            "Compare its connections with the asset's allowed list.",
            "If anything is unexplained, isolate {asset} and raise a security incident.",
        ),
        parts_or_tools=("packet capture tool", "network inventory"),
        safety_notes=("Do not power-cycle a suspect controller: evidence in its memory would be lost.",),
        priority_when_critical=2,
        due_in_when_critical=timedelta(minutes=15),
    ),
    "TELEMETRY_OUT_OF_BAND": PlanTemplate(
        action="INSPECT_ASSET",
        priority=3,
        owner_role="maintenance technician",
        due_in=timedelta(hours=2),
        summary="Inspect {asset}: {message}",
        steps=(
            "Go to {asset} and check the reading that left its band ({evidence}).",
            "Compare the sensor with a handheld measurement to rule out a faulty sensor.",
            "If the reading is real, reduce the load of {asset} and call the maintenance planner.",
        ),
        parts_or_tools=("handheld thermometer", "vibration pen", "multimeter"),
        safety_notes=(LOCKOUT,),
        priority_when_critical=2,
        due_in_when_critical=timedelta(minutes=30),
    ),
    "MACHINE_OVERHEAT": PlanTemplate(
        action="REDUCE_LOAD_AND_COOL",
        priority=3,
        owner_role="maintenance technician",
        due_in=timedelta(hours=1),
        summary="Cool down {asset}: {message}",
        steps=(
            "Reduce the production speed of {asset} and check its temperature trend ({evidence}).",
            "Inspect cooling: fans, filters, coolant level and flow.",
            "If the temperature keeps rising, stop {asset} and call the maintenance planner.",
        ),
        parts_or_tools=("handheld thermometer", "replacement air filters"),
        safety_notes=(LOCKOUT, "Hot surfaces: wait for them to cool or wear heat-resistant gloves."),
        priority_when_critical=2,
        due_in_when_critical=timedelta(minutes=15),
    ),
    "CLEANROOM_EXCURSION": PlanTemplate(
        action="CONTAIN_CLEANROOM_EXCURSION",
        priority=2,
        owner_role="cleanroom supervisor",
        due_in=timedelta(minutes=15),
        summary="Contain the cleanroom excursion at {asset}: {message}",
        steps=(
            "Hold the open lots in {asset} and stop loading new ones.",
            "Check doors, filters and air handling against the readings ({evidence}).",
            "Log the affected lots for quality review.",
            "Resume once particle count, temperature, humidity and pressure are back in band.",
        ),
        parts_or_tools=("handheld particle counter", "spare HEPA filter"),
        safety_notes=("Keep full gowning on while investigating.",),
    ),
    "ENERGY_ANOMALY": PlanTemplate(
        action="INSPECT_POWER_DRAW",
        priority=4,
        owner_role="electrician",
        due_in=timedelta(hours=4),
        summary="Check the power draw of {asset}: {message}",
        steps=(
            "Compare the power draw of {asset} with its normal pattern ({evidence}).",
            "Look for a stuck drive, a dragging bearing or equipment left running.",
            "Fix the cause or hand it to maintenance, and note what you found.",
        ),
        parts_or_tools=("clamp meter", "thermal camera"),
        safety_notes=("Only qualified electricians open electrical cabinets.",),
        priority_when_critical=3,
        due_in_when_critical=timedelta(hours=1),
    ),
}

# Types the rules do not know: logged, unless CRITICAL, when somebody should look now.
UNKNOWN_TYPE_TEMPLATE = PlanTemplate(
    action="LOG_ONLY",
    priority=5,
    owner_role="shift supervisor",
    due_in=NEXT_SHIFT,
    summary="Note {type} from {source} on {asset}: {message}",
    steps=(
        "Read the alert and its evidence ({evidence}).",
        "Keep it in the shift log; no action unless it repeats.",
    ),
)
UNKNOWN_CRITICAL_TEMPLATE = PlanTemplate(
    action="INVESTIGATE_NOW",
    priority=2,
    owner_role="shift supervisor",
    due_in=timedelta(minutes=15),
    summary="Investigate {type} from {source} on {asset} now: {message}",
    steps=(
        "Go to {asset} or call the person responsible for it.",
        "Check what the alert reports ({evidence}).",
        "Decide whether to stop {asset}, and log what you found.",
    ),
    safety_notes=("If in doubt, stop the machine safely and keep people away.",),
)

_EVIDENCE_ITEMS = 6
_EVIDENCE_CHARS = 240


def template_for(alert_type: str, severity: Severity) -> PlanTemplate:
    """The plan template for an alert type (matched exactly, as the earlier clients send it)."""
    template = PLAN_TEMPLATES.get(alert_type)
    if template is not None:
        return template
    return UNKNOWN_CRITICAL_TEMPLATE if severity == Severity.CRITICAL else UNKNOWN_TYPE_TEMPLATE


def plan_for(alert: AlertRecord | AlertCandidate, *, now: datetime) -> ActionPlan:
    """The deterministic plan for an alert: same alert and time, same plan."""
    template = template_for(alert.type, alert.severity)
    critical = alert.severity == Severity.CRITICAL
    priority = template.priority_when_critical if critical and template.priority_when_critical else template.priority
    due_in = template.due_in_when_critical if critical and template.due_in_when_critical else template.due_in
    fields = _wording_fields(alert)
    return ActionPlan(
        action=template.action,
        priority=priority,
        summary=template.summary.format_map(fields),
        steps=[step.format_map(fields) for step in template.steps],
        owner_role=template.owner_role,
        due_at=now + due_in,
        parts_or_tools=list(template.parts_or_tools),
        safety_notes=list(template.safety_notes),
    )


def _wording_fields(alert: AlertRecord | AlertCandidate) -> dict[str, str]:
    return {
        "asset": alert.asset_id or f"the asset behind {alert.source}",
        "source": alert.source,
        "type": alert.type,
        "message": alert.message.strip() or alert.type,
        "evidence": describe_evidence(alert.evidence),
    }


def describe_evidence(evidence: dict[str, Any]) -> str:
    """`rul=180, threshold=200` from the evidence dict, short enough for a plan step."""
    if not evidence:
        return "no evidence attached"
    parts = [f"{name}={_evidence_value(value)}" for name, value in list(evidence.items())[:_EVIDENCE_ITEMS]]
    text = ", ".join(parts)
    return text if len(text) <= _EVIDENCE_CHARS else text[: _EVIDENCE_CHARS - 3] + "..."


def _evidence_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


# ---- the LLM's wording ----

PLAN_WORDING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "description": "One sentence: what to do, where, and why."},
        "steps": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "maxItems": 12,
            "description": "The plan's steps in order, one short imperative sentence each.",
        },
    },
    "required": ["summary", "steps"],
    "additionalProperties": False,
}

_INSTRUCTIONS = (
    "You rewrite maintenance and safety action plans for factory operators. Keep the meaning and the "
    "order of the steps; do not add actions, parts or safety advice the plan does not contain, and do "
    "not drop any. Use plain, short sentences a shift operator understands at a glance, name the asset, "
    "and keep the numbers from the evidence. Answer with JSON: {summary, steps}."
)


class PlanWording(BaseModel):
    """The only part of a plan the model may change."""

    model_config = ConfigDict(extra="forbid")

    summary: str = Field(min_length=1, max_length=600)
    steps: list[str] = Field(min_length=1, max_length=12)

    @field_validator("summary")
    @classmethod
    def _summary_has_words(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty summary")
        return value.strip()

    @field_validator("steps")
    @classmethod
    def _steps_have_words(cls, value: list[str]) -> list[str]:
        steps = [step.strip() for step in value]
        if not all(steps):
            raise ValueError("empty step")
        return steps


class GeminiPlanWriter:
    """Asks Gemini (google-genai) to reword a deterministic plan; any failure returns that plan unchanged."""

    def __init__(
        self,
        api_key: str | None,
        model: str = "gemini-2.5-flash",
        base_url: str | None = None,
        timeout_s: float = 10.0,
        api_version: str = "v1beta",  # structured output (responseJsonSchema) is documented on v1beta
    ) -> None:
        self.model = model
        self.timeout_s = timeout_s
        # Keep the client on the object: a client used inline is garbage-collected and then refuses to send.
        self._client: genai.Client | None = None
        if api_key:
            self._client = gemini_client(
                api_key,
                base_url=base_url,
                timeout_s=timeout_s,
                attempts=1,  # one try: an alert must not wait on retries
                api_version=api_version,
            )

    @property
    def written_by(self) -> str:
        return f"gemini:{self.model}"

    def rewrite(self, plan: ActionPlan, alert: AlertRecord | AlertCandidate) -> ActionPlan:
        """The plan with the model's summary and steps, or `plan` with fallback_reason set. Never raises."""
        if self._client is None:
            return plan.model_copy(update={"fallback_reason": "no Gemini API key"})
        try:
            wording = self._ask(plan, alert)
        except Exception as exc:  # timeouts, HTTP errors, bad JSON, schema mismatch: all mean "use the rules"
            reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
            log.warning("Gemini did not reword the plan for %s (%s); rules' wording kept", alert.type, reason)
            return plan.model_copy(update={"fallback_reason": reason})
        return plan.model_copy(
            update={
                "summary": wording.summary,
                "steps": wording.steps,
                "written_by": self.written_by,
                "fallback_reason": None,
            }
        )

    def _ask(self, plan: ActionPlan, alert: AlertRecord | AlertCandidate) -> PlanWording:
        assert self._client is not None
        answer = ask_for_json(
            self._client,
            model=self.model,
            system_instruction=_INSTRUCTIONS,
            prompt=_prompt(plan, alert),
            json_schema=PLAN_WORDING_SCHEMA,
            temperature=0.2,
        )
        return PlanWording.model_validate_json(answer.text)


def _prompt(plan: ActionPlan, alert: AlertRecord | AlertCandidate) -> str:
    facts = {
        "alert": {
            "type": alert.type,
            "severity": alert.severity.value,
            "source": alert.source,
            "asset": alert.asset_id,
            "message": alert.message,
            "evidence": alert.evidence,
        },
        "plan": {
            "action": plan.action,
            "priority": plan.priority,
            "owner_role": plan.owner_role,
            "summary": plan.summary,
            "steps": plan.steps,
            "safety_notes": plan.safety_notes,
        },
    }
    return "Rewrite the summary and steps of this plan.\n" + json.dumps(facts, default=str, indent=1)


class Planner:
    """The deterministic planner, with an optional writer that rewords its plans."""

    def __init__(self, writer: GeminiPlanWriter | None = None) -> None:
        self.writer = writer

    def plan(self, alert: AlertRecord | AlertCandidate, now: datetime) -> ActionPlan:
        """A plan for the alert. Never raises: a failing writer leaves the rules' plan, with the reason."""
        try:
            plan = plan_for(alert, now=now)
        except Exception as exc:  # a template bug must not cost the alert its plan
            log.exception("deterministic plan failed for %s", alert.type)
            return _bare_plan(alert, now, reason=f"planner error: {type(exc).__name__}: {exc}"[:300])
        if self.writer is None:
            return plan
        try:
            return self.writer.rewrite(plan, alert)
        except Exception as exc:  # rewrite promises not to raise; a bug in it must not cost the plan
            log.exception("plan writer failed for %s", alert.type)
            return plan.model_copy(update={"fallback_reason": f"writer error: {type(exc).__name__}: {exc}"[:300]})


def _bare_plan(alert: AlertRecord | AlertCandidate, now: datetime, *, reason: str) -> ActionPlan:
    """The template's codes with the alert's own words, for when filling the template in failed."""
    template = template_for(alert.type, alert.severity)
    return ActionPlan(
        action=template.action,
        priority=template.priority,
        summary=alert.message or alert.type,
        steps=[f"Check {alert.asset_id or alert.source}: {alert.message or alert.type}"],
        owner_role=template.owner_role,
        due_at=now + template.due_in,
        parts_or_tools=list(template.parts_or_tools),
        safety_notes=list(template.safety_notes),
        fallback_reason=reason,
    )


__all__ = [
    "PLAN_TEMPLATES",
    "GeminiPlanWriter",
    "PlanTemplate",
    "PlanWording",
    "Planner",
    "describe_evidence",
    "plan_for",
    "template_for",
]
