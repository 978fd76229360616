"""Gemini's shift backlog: the deterministic backlog, refined by the model, checked against the evidence.

The model gets the shift, the evidence, the action codes it may use and the deterministic writer's
backlog for the same evidence, so it refines (merges, reorders, rewords) rather than invents. Its
answer is structured output against `BacklogDraft`'s JSON schema and is validated again here: a task
that names an asset or evidence id the input does not contain is dropped and logged, because an
operations lead must be able to open the prediction or alert behind every task. Any failure of the
whole answer (HTTP error after retries, timeout, not JSON, schema mismatch, nothing usable) returns
the deterministic backlog with the reason, so a shift always starts with a backlog.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from zoneinfo import ZoneInfo

from google import genai
from google.genai import errors as genai_errors
from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from factory_pipelines.backlog_model import (
    Backlog,
    BacklogDraft,
    BacklogTask,
    ShiftEvidence,
    TaskDraft,
    WriterInfo,
    task_id,
)
from factory_pipelines.gemini import GeminiAnswer, ask_for_json, gemini_client, response_schema_for
from factory_pipelines.planner import PLAN_TEMPLATES

log = logging.getLogger(__name__)

BACKLOG_DRAFT_SCHEMA: dict[str, Any] = response_schema_for(BacklogDraft)
_REASON_CHARS = 300

_INSTRUCTIONS = (
    "You write the task backlog an operations lead reads at the start of a factory shift. "
    "Use only the evidence given; do not invent assets, readings or events. "
    "Every task must name in asset_id an asset that appears in the evidence, and cite in evidence_ids "
    "only ids from the evidence (an item's id or one of its related ids). "
    "Use only the allowed action codes. "
    "Start from the deterministic draft: keep its tasks unless the evidence contradicts them, merge "
    "tasks that are about the same asset and concern, and adjust priority scores (0-100, higher first) "
    "with a reason for each score. "
    "Every due_at lies within the horizon and carries its UTC offset. "
    "Write titles, reasons and the summary in plain, short sentences a shift operator understands at a "
    "glance; keep the numbers from the evidence. The summary says in two or three sentences what matters "
    "most this shift. Answer with JSON matching the schema."
)


class GeminiBacklogWriter:
    """Asks Gemini (google-genai) for the shift backlog; any failure returns the deterministic one, with the reason."""

    def __init__(
        self,
        api_key: str | None,
        model: str = "gemini-2.5-flash",
        base_url: str | None = None,
        timeout_s: float = 60.0,
        attempts: int = 3,
    ) -> None:
        self.model = model
        # Keep the client on the object: a client used inline is garbage-collected and then refuses to send.
        self._client: genai.Client | None = None
        if api_key:
            self._client = gemini_client(api_key, base_url=base_url, timeout_s=timeout_s, attempts=attempts)

    def write(self, evidence: ShiftEvidence, fallback: Backlog) -> Backlog:
        """Gemini's backlog for `evidence`, or `fallback` (the deterministic one) with the reason. Never raises."""
        if self._client is None:
            return _fell_back(fallback, "no Gemini API key")
        try:
            return self._write(self._client, evidence, fallback)
        except Exception as exc:  # a bug here must not cost the shift its backlog
            log.exception("Gemini backlog writer failed for shift %s", evidence.shift.key)
            return _fell_back(fallback, f"writer error: {_describe(exc)}")

    def _write(self, client: genai.Client, evidence: ShiftEvidence, fallback: Backlog) -> Backlog:
        try:
            answer = ask_for_json(
                client,
                model=self.model,
                system_instruction=_INSTRUCTIONS,
                prompt=backlog_prompt(evidence, fallback),
                json_schema=BACKLOG_DRAFT_SCHEMA,
                temperature=0.2,
            )
        except Exception as exc:  # HTTP errors after retries, timeouts, unreadable or empty answers
            return _fell_back(fallback, _describe(exc), shift_key=evidence.shift.key)
        try:
            draft = BacklogDraft.model_validate_json(answer.text)
        except ValidationError as exc:
            return _fell_back(fallback, _describe_mismatch(exc), shift_key=evidence.shift.key)

        accepted, dropped = _grounded_tasks(draft.tasks, evidence)
        if not accepted and fallback.tasks:
            reason = (
                f"all {len(dropped)} of Gemini's tasks named assets or evidence not in the input"
                if dropped
                else f"Gemini's answer had no tasks, the deterministic writer found {len(fallback.tasks)}"
            )
            return _fell_back(fallback, reason, shift_key=evidence.shift.key, dropped_tasks=dropped)
        return self._backlog(evidence, fallback, draft, accepted, dropped, answer)

    def _backlog(
        self,
        evidence: ShiftEvidence,
        fallback: Backlog,
        draft: BacklogDraft,
        accepted: list[TaskDraft],
        dropped: list[str],
        answer: GeminiAnswer,
    ) -> Backlog:
        shift = evidence.shift
        zone = ZoneInfo(shift.timezone)
        ranked = sorted(accepted, key=lambda task: -task.priority_score)  # stable: ties keep Gemini's order
        tasks = [
            BacklogTask(
                task_id=task_id(shift, number),
                **task.model_dump(exclude={"due_at"}),
                due_at=task.due_at.astimezone(zone),
            )
            for number, task in enumerate(ranked, start=1)
        ]
        return Backlog(
            shift=shift,
            summary=draft.summary,
            tasks=tasks,
            generated_at=fallback.generated_at,
            writer=WriterInfo(
                name="gemini",
                model=self.model,
                prompt_tokens=answer.prompt_tokens,
                output_tokens=answer.output_tokens,
                total_tokens=answer.total_tokens,
                dropped_tasks=dropped,
            ),
            evidence=fallback.evidence,
            notes=fallback.notes,
        )


def allowed_actions(fallback: Backlog) -> list[str]:
    """The action codes Gemini may use: the planner's and any the deterministic backlog used."""
    return sorted({template.action for template in PLAN_TEMPLATES.values()} | {task.action for task in fallback.tasks})


def backlog_prompt(evidence: ShiftEvidence, fallback: Backlog) -> str:
    """The request's text: shift, horizon, evidence, allowed actions and the deterministic draft, as JSON."""
    shift = evidence.shift
    horizon_end = evidence.next_shifts[-1].end if evidence.next_shifts else shift.end
    facts = {
        "shift": {
            "key": shift.key,
            "name": shift.name,
            "start": shift.start,
            "end": shift.end,
            "timezone": shift.timezone,
        },
        "horizon": {"from": shift.start, "until": horizon_end},
        "evidence": [
            {
                "id": item.evidence_id,
                "kind": item.kind.value,
                "asset": item.asset_id,
                "observed_at": item.observed_at,
                "summary": item.summary,
                "facts": item.facts,
                "related_ids": item.related_ids,
            }
            for item in evidence.items
        ],
        "allowed_actions": allowed_actions(fallback),
        "deterministic_draft": {
            "summary": fallback.summary,
            "tasks": [task.model_dump(exclude={"task_id"}) for task in fallback.tasks],
        },
    }
    return "Write the backlog for this shift.\n" + json.dumps(to_jsonable_python(facts, fallback=str), indent=1)


def _grounded_tasks(tasks: list[TaskDraft], evidence: ShiftEvidence) -> tuple[list[TaskDraft], list[str]]:
    """The tasks whose asset and evidence ids are all in the input, and the titles of the others (logged)."""
    known_assets = evidence.assets
    known_ids = evidence.ids
    accepted: list[TaskDraft] = []
    dropped: list[str] = []
    for task in tasks:
        unknown_ids = [evidence_id for evidence_id in task.evidence_ids if evidence_id not in known_ids]
        unknown_asset = task.asset_id not in known_assets
        if not unknown_asset and not unknown_ids:
            accepted.append(task)
            continue
        log.warning(
            "dropped Gemini task %r for shift %s: %s",
            task.title,
            evidence.shift.key,
            "; ".join(
                ([f"unknown asset {task.asset_id!r}"] if unknown_asset else [])
                + ([f"unknown evidence ids {unknown_ids}"] if unknown_ids else [])
            ),
        )
        dropped.append(task.title)
    return accepted, dropped


def _fell_back(
    fallback: Backlog, reason: str, *, shift_key: str | None = None, dropped_tasks: list[str] | None = None
) -> Backlog:
    """`fallback` (its writer stays "deterministic") with the reason Gemini's backlog was not used."""
    if shift_key is not None:
        log.warning("Gemini's backlog for shift %s not used (%s); the deterministic one stands", shift_key, reason)
    update: dict[str, Any] = {"fallback_reason": reason[:_REASON_CHARS]}
    if dropped_tasks:
        update["dropped_tasks"] = dropped_tasks
    return fallback.model_copy(update={"writer": fallback.writer.model_copy(update=update)})


def _describe(exc: Exception) -> str:
    if isinstance(exc, genai_errors.APIError):
        text = f"Gemini API error {exc.code} {exc.status or ''}: {exc.message or ''}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:_REASON_CHARS]


def _describe_mismatch(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    if any(error["type"] == "json_invalid" for error in errors):
        return "answer is not JSON"
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "answer"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"answer does not fit the backlog schema: {where}: {first['msg']}{more}"[:_REASON_CHARS]


__all__ = ["BACKLOG_DRAFT_SCHEMA", "GeminiBacklogWriter", "allowed_actions", "backlog_prompt"]
