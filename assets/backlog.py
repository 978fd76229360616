"""The shift backlog: one partition per shift, written at the shift's start from the evidence known then.

The partitions come from the plant's shift calendar (settings: shifts, plant_timezone), so the
asset is built by `build_shift_backlog(calendar)` when the code location loads its settings.
The asset only wires resources: evidence, ranking and Gemini are plain functions in
`factory_pipelines` (backlog_evidence, backlog_writer, backlog_gemini).
"""

import json
from typing import Any

import dagster as dg
from pydantic import Field

from assets.alerts import window_alerts
from assets.cyber import cyber_detector_predictions
from assets.energy import energy_anomaly_predictions
from assets.ppe import ppe_vision_predictions
from assets.rul import rul_predictions
from assets.safety import safety_hazard_predictions
from assets.telemetry import telemetry_window
from factory_pipelines.backlog_book import BacklogBook
from factory_pipelines.backlog_evidence import EvidenceLimits, gather_evidence
from factory_pipelines.backlog_model import Backlog, backlog_markdown, legacy_backlog_payload
from factory_pipelines.backlog_writer import write_backlog
from factory_pipelines.resources import (
    GeminiResource,
    MqttPublisherResource,
    PartitionFilesResource,
    ServingStoreResource,
)
from factory_pipelines.shifts import ShiftCalendar
from factory_pipelines.telemetry import LEGACY_BACKLOG_TOPIC, backlog_topic

BACKLOG_GROUP = "backlog"
EVIDENCE_ASSETS = [
    rul_predictions,
    energy_anomaly_predictions,
    cyber_detector_predictions,
    safety_hazard_predictions,
    ppe_vision_predictions,
    window_alerts,
    telemetry_window,
]


class BacklogConfig(dg.Config):
    """Knobs of one backlog run; the defaults are what the shift schedule uses."""

    horizon_shifts: int = Field(
        3, ge=1, le=21, description="Plan for robots whose RUL interval ends within this many shifts."
    )
    max_tasks: int = Field(40, ge=1, le=200, description="Longest backlog; the lowest-ranked tasks are left out.")
    use_gemini: bool = Field(True, description="Let Gemini refine the backlog when a key is set.")
    ppe_compliance_target: float = Field(0.95, gt=0, le=1, description="Zones below this PPE compliance get a task.")
    cleanroom_iso_class_max: float = Field(
        5.0, ge=1, le=9, description="ISO 14644-1 class above which a reading is an excursion."
    )


def build_shift_backlog(calendar: ShiftCalendar, site: str) -> dg.AssetsDefinition:
    @dg.asset(
        name="shift_backlog",
        partitions_def=calendar.partitions_def,
        group_name=BACKLOG_GROUP,
        kinds={"gemini", "sql"},
        # Lineage in the asset graph: the backlog reads what these wrote (any window before the shift).
        deps=[dg.AssetDep(asset, partition_mapping=dg.AllPartitionMapping()) for asset in EVIDENCE_ASSETS],
        description=f"Prioritized tasks for each shift ({calendar.describe()}), from the evidence at its start.",
    )
    def shift_backlog(
        context: dg.AssetExecutionContext,
        config: BacklogConfig,
        serving_store: ServingStoreResource,
        window_files: PartitionFilesResource,
        mqtt: MqttPublisherResource,
        gemini: GeminiResource,
    ) -> dg.MaterializeResult:
        shift = calendar.shift_for_key(context.partition_key)
        store = serving_store.get_store()
        evidence = gather_evidence(
            shift,
            calendar,
            store=store,
            rows_dir=window_files.layout.typed_rows_dir,
            horizon_shifts=config.horizon_shifts,
            limits=EvidenceLimits(
                ppe_compliance_target=config.ppe_compliance_target,
                cleanroom_iso_class_max=config.cleanroom_iso_class_max,
            ),
        )
        for note in evidence.notes:
            context.log.warning(f"evidence: {note}")
        refiner = gemini.backlog_writer() if config.use_gemini else None
        backlog = write_backlog(evidence, refiner=refiner, max_tasks=config.max_tasks)
        if backlog.writer.fallback_reason and config.use_gemini and gemini.api_key:
            context.log.warning(f"Gemini's backlog not used: {backlog.writer.fallback_reason}")
        BacklogBook(store.engine).save(backlog)
        published = mqtt.publish(backlog_messages(backlog, site), context.log, retain=True)
        context.log.info(f"{shift.key}: {len(backlog.tasks)} tasks from {len(evidence.items)} evidence items")
        return dg.MaterializeResult(metadata=backlog_metadata(backlog) | {"mqtt_published": published})

    return shift_backlog


def backlog_messages(backlog: Backlog, site: str) -> list[tuple[str, bytes]]:
    """The backlog on `backlog/{site}`, and in the earlier agent's shape on its topic."""
    return [
        (backlog_topic(site), backlog.model_dump_json().encode()),
        (LEGACY_BACKLOG_TOPIC, json.dumps(legacy_backlog_payload(backlog)).encode()),
    ]


def backlog_metadata(backlog: Backlog) -> dict[str, Any]:
    writer = backlog.writer
    kinds: dict[str, int] = {}
    for item in backlog.evidence:
        kinds[item.kind.value] = kinds.get(item.kind.value, 0) + 1
    metadata: dict[str, Any] = {
        "shift": backlog.shift.key,
        "writer": writer.name,
        "tasks": len(backlog.tasks),
        "urgent_tasks": sum(task.priority_score >= 70 for task in backlog.tasks),
        "evidence_by_kind": dg.MetadataValue.json(kinds),
        "backlog": dg.MetadataValue.md(backlog_markdown(backlog)),
    }
    if writer.model:
        metadata["model"] = writer.model
    for name in ("prompt_tokens", "output_tokens", "total_tokens"):
        value = getattr(writer, name)
        if value is not None:
            metadata[name] = value
    if writer.fallback_reason:
        metadata["fallback_reason"] = writer.fallback_reason
    if writer.dropped_tasks:
        metadata["dropped_tasks"] = dg.MetadataValue.json(writer.dropped_tasks)
    if backlog.notes:
        metadata["notes"] = dg.MetadataValue.json(backlog.notes)
    return metadata
