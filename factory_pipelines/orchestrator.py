"""The alert desk: one path from a proposed alert to a recorded, planned and notified one.

The Dagster orchestrator job (rules over new prediction partitions), the timer job (auto-clear,
escalation) and `POST /alert` all go through `AlertDesk`, so an alert is deduplicated, planned and
texted the same way wherever it comes from.

What fails, and what is kept:
- the planner: `Planner` falls back to the deterministic plan; a planner bug falls back too;
- Twilio: the notifier records FAILED / NOT_SENT notifications and returns; the alert stays;
- the serving store: the candidate is written to a durable outbox under the data dir and handled
  (recorded, planned, texted) by the next `run_timers`, which every orchestrator run and the timer
  schedule call.
  Texts wait for the store, because the store is what guarantees one text per alert.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from sqlalchemy.exc import OperationalError

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.alert_model import (
    ActionPlan,
    AlertCandidate,
    AlertRecord,
    NotificationRecord,
    RaiseOutcome,
)
from factory_pipelines.alert_rules import EscalationStage, load_rules
from factory_pipelines.durable_files import write_bytes_atomic
from factory_pipelines.planner import Planner, plan_for
from factory_pipelines.settings import FactorySettings
from factory_pipelines.sms import SmsNotifier
from factory_pipelines.telemetry import Alert, Severity, alert_topic, asset_alert_topic, dump_payload

log = logging.getLogger(__name__)

TEXTED_SEVERITY = Severity.CRITICAL  # what goes to the on-call phones (EMERGENCY maps onto it)


class Decision(BaseModel):
    """What the desk did with one candidate: the alert as recorded, its plan and the texts."""

    alert: AlertRecord
    created: bool
    reopened: bool = False
    severity_raised: bool = False
    plan: ActionPlan
    notifications: list[NotificationRecord] = Field(default_factory=list)


class QueuedDecision(BaseModel):
    """The store was unreachable: the candidate waits in the outbox; the plan is the deterministic one."""

    queued_as: str
    plan: ActionPlan
    reason: str


class TimerReport(BaseModel):
    auto_cleared: list[str] = Field(default_factory=list)
    escalated: list[tuple[str, int]] = Field(default_factory=list)
    drained: int = 0
    still_queued: int = 0


@dataclass
class AlertOutbox:
    """Candidates that could not be recorded yet, one JSON file each (written atomically)."""

    directory: Path

    def put(self, candidate: AlertCandidate) -> str:
        name = f"{candidate.observed_at:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.json"
        write_bytes_atomic(self.directory / name, candidate.model_dump_json().encode())
        return name

    def pending(self) -> list[Path]:
        return sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []

    def drain(self, handle: Callable[[AlertCandidate], object]) -> tuple[int, int]:
        """Handle queued candidates oldest first; stop at the first failure (the store is still down)."""
        done = 0
        paths = self.pending()
        for path in paths:
            try:
                candidate = AlertCandidate.model_validate_json(path.read_bytes())
            except ValueError as exc:  # a file we cannot read again must not block the rest
                log.error("alert outbox: %s is unreadable (%s); moved aside", path.name, exc)
                path.rename(path.with_suffix(".bad"))
                continue
            handle(candidate)
            path.unlink()
            done += 1
        return done, len(paths) - done


def queue_for_store(outbox: AlertOutbox, candidate: AlertCandidate, *, now: datetime, reason: str) -> QueuedDecision:
    """Keep the candidate until the store is back; answer with the deterministic plan meanwhile."""
    name = outbox.put(candidate)
    log.warning("serving store unavailable (%s); alert queued as %s", reason, name)
    return QueuedDecision(queued_as=name, plan=plan_for(candidate, now=now), reason=reason)


@dataclass
class AlertDesk:
    book: AlertBook
    planner: Planner
    notifier: SmsNotifier
    on_call: Sequence[str]
    escalation: Sequence[str] = ()
    escalate_after_s: float = 900.0
    escalation_stages: Sequence[EscalationStage] = ()  # from the rules file; empty: one stage from the settings
    outbox: AlertOutbox | None = None
    publish: Callable[[list[tuple[str, bytes]]], None] | None = None  # the live feed (MQTT), best-effort
    site: str = "main"
    is_store_outage: Callable[[BaseException], bool] = field(default=lambda exc: False)

    def handle(self, candidate: AlertCandidate, *, now: datetime) -> Decision:
        """Record (or count) the alert, plan it when it is new, text it when it is newly CRITICAL."""
        outcome = self.book.raise_or_repeat(candidate, now=now)
        alert = outcome.alert
        plan = alert.plan
        if plan is None or outcome.created or outcome.severity_raised:
            plan = self._plan(alert, now)
            self.book.attach_plan(alert.alert_id, plan)
            alert = alert.model_copy(update={"plan": plan})
        notifications: list[NotificationRecord] = []
        if self._texts_now(outcome):
            notifications = self.notifier.notify(alert, list(self.on_call), stage=0, ledger=self.book, now=now)
        decision = Decision(
            alert=alert,
            created=outcome.created,
            reopened=outcome.reopened,
            severity_raised=outcome.severity_raised,
            plan=plan,
            notifications=notifications,
        )
        if self.publish is not None:
            try:
                messages = alert_messages([decision], self.site)
                if messages:
                    self.publish(messages)
            except Exception as exc:  # the live feed never decides whether an alert is recorded
                log.warning("alert %s not published: %s", alert.alert_id, exc)
        return decision

    def handle_or_queue(self, candidate: AlertCandidate, *, now: datetime) -> Decision | QueuedDecision:
        """`handle`, or, when the store is down and an outbox is configured, queue the candidate."""
        try:
            return self.handle(candidate, now=now)
        except Exception as exc:
            if self.outbox is None or not self.is_store_outage(exc):
                raise
            return queue_for_store(self.outbox, candidate, now=now, reason=str(exc))

    def run_timers(self, *, now: datetime) -> TimerReport:
        """Drain the outbox, clear what has not recurred, escalate unacknowledged CRITICAL alerts."""
        report = TimerReport()
        if self.outbox is not None:
            report.drained, report.still_queued = self.outbox.drain(lambda c: self.handle(c, now=now))
        report.auto_cleared = [alert.alert_id for alert in self.book.clear_stale(now)]
        stages = self.stages
        for alert, stage in self.book.due_escalations(now, [s.after for s in stages], TEXTED_SEVERITY):
            recipients = self.recipients(stages[stage - 1])
            self.notifier.notify(alert, recipients, stage=stage, ledger=self.book, now=now)
            self.book.set_escalation_stage(alert.alert_id, stage)
            report.escalated.append((alert.alert_id, stage))
        return report

    @property
    def stages(self) -> list[EscalationStage]:
        if self.escalation_stages:
            return list(self.escalation_stages)
        return [EscalationStage(after=self.escalate_after_s, notify=("escalation",))]

    def recipients(self, stage: EscalationStage) -> list[str]:
        """A stage's numbers: the named lists expanded, numbers as written, each once."""
        lists = {"on_call": self.on_call, "escalation": self.escalation}
        numbers = [n for item in stage.notify for n in lists.get(item, [item])]
        return list(dict.fromkeys(numbers))

    def _plan(self, alert: AlertRecord, now: datetime) -> ActionPlan:
        try:
            return self.planner.plan(alert, now)
        except Exception as exc:  # the planner promises not to raise; a bug must not lose the alert
            log.exception("planner failed for %s; deterministic plan used", alert.alert_id)
            return plan_for(alert, now=now).model_copy(update={"fallback_reason": f"planner error: {exc}"})

    @staticmethod
    def _texts_now(outcome: RaiseOutcome) -> bool:
        """A text for a new CRITICAL alert, or for one a repeat made CRITICAL; never for a plain repeat."""
        if outcome.alert.severity != TEXTED_SEVERITY:
            return False
        return outcome.created or outcome.severity_raised


def alert_messages(decisions: Sequence[Decision], site: str) -> list[tuple[str, bytes]]:
    """New, reopened or more severe alerts for `alerts/{severity}` and `factory/{site}/{asset}/alerts`."""
    messages: list[tuple[str, bytes]] = []
    for decision in decisions:
        if not (decision.created or decision.reopened or decision.severity_raised):
            continue
        record = decision.alert
        payload = dump_payload(
            Alert(
                alert_id=record.alert_id,
                severity=record.severity,
                source=record.source,
                type=record.type,
                asset_id=record.asset_id,
                message=record.message,
                ts=record.last_seen,
                window_key=record.lineage.window_key,
                model_name=record.lineage.model_name,
                model_version=record.lineage.model_version,
                count=record.count,
                state=record.state.value,
                level=record.level,
                action=decision.plan.action,
            )
        )
        messages.append((alert_topic(record.severity), payload))
        if record.asset_id:
            messages.append((asset_alert_topic(site, record.asset_id), payload))
    return messages


def decision_summary(decision: Decision | QueuedDecision) -> dict[str, object]:
    """A compact, JSON-ready line per decision for run metadata and logs."""
    if isinstance(decision, QueuedDecision):
        return {"queued_as": decision.queued_as, "action": decision.plan.action, "reason": decision.reason}
    return {
        "alert_id": decision.alert.alert_id,
        "type": decision.alert.type,
        "severity": decision.alert.severity.value,
        "asset_id": decision.alert.asset_id,
        "count": decision.alert.count,
        "created": decision.created,
        "action": decision.plan.action,
        "texts": [n.status.value for n in decision.notifications],
    }


def build_alert_desk(
    book: AlertBook,
    *,
    outbox_dir: Path | None,
    twilio_account_sid: str | None,
    twilio_auth_token: str | None,
    twilio_from_number: str | None,
    twilio_api_base_url: str | None,
    on_call: Sequence[str],
    escalation: Sequence[str],
    sms_tag: str,
    sms_rate_limit: int,
    sms_rate_window_s: float,
    escalate_after_s: float,
    escalation_stages: Sequence[EscalationStage] = (),
    gemini_api_key: str | None,
    gemini_model: str,
    gemini_base_url: str | None,
) -> AlertDesk:
    """The desk with its planner and notifier; without credentials both still work (rules, 'not sent')."""
    from factory_pipelines.planner import GeminiPlanWriter
    from factory_pipelines.store import StoreUnavailableError

    writer = (
        GeminiPlanWriter(api_key=gemini_api_key, model=gemini_model, base_url=gemini_base_url)
        if gemini_api_key
        else None
    )
    notifier = SmsNotifier(
        account_sid=twilio_account_sid,
        auth_token=twilio_auth_token,
        from_number=twilio_from_number,
        api_base_url=twilio_api_base_url,
        tag=sms_tag,
        rate_limit=sms_rate_limit,
        rate_window_s=sms_rate_window_s,
    )
    return AlertDesk(
        book=book,
        planner=Planner(writer),
        notifier=notifier,
        on_call=list(on_call),
        escalation=list(escalation),
        escalate_after_s=escalate_after_s,
        escalation_stages=list(escalation_stages),
        outbox=AlertOutbox(outbox_dir) if outbox_dir is not None else None,
        is_store_outage=lambda exc: isinstance(exc, StoreUnavailableError | OperationalError),
    )


def alert_desk_for(settings: FactorySettings, book: AlertBook) -> AlertDesk:
    """The desk as the settings (environment, .env, YAML) describe it."""

    def secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None

    return build_alert_desk(
        book,
        outbox_dir=settings.alert_outbox_dir,
        twilio_account_sid=secret(settings.twilio_account_sid),
        twilio_auth_token=secret(settings.twilio_auth_token),
        twilio_from_number=settings.twilio_from_number,
        twilio_api_base_url=settings.twilio_api_base_url,
        on_call=settings.on_call_numbers,
        escalation=settings.escalation_numbers,
        sms_tag=settings.sms_tag,
        sms_rate_limit=settings.sms_rate_limit,
        sms_rate_window_s=settings.sms_rate_window_s,
        escalate_after_s=settings.escalate_after_s,
        escalation_stages=load_rules(settings.alert_rules_file).escalation,
        gemini_api_key=secret(settings.gemini_api_key),
        gemini_model=settings.gemini_model,
        gemini_base_url=settings.gemini_base_url,
    )
