"""Dagster resources: one `ConfigurableResource` per external system the assets and sensors touch.

Each is a thin, configurable handle; the work happens in plain functions of `factory_pipelines`.
`build_resources(settings)` wires them from the one settings object (the `FACTORY_*` variables
decide), so `definitions.py`, `factory up` and the tests get the same wiring.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from pydantic import PrivateAttr, SecretStr

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.alert_rules import RuleBook, TelemetryCarry, load_rules
from factory_pipelines.backlog_gemini import GeminiBacklogWriter
from factory_pipelines.durable_files import write_bytes_atomic
from factory_pipelines.model_registry import LoadedChampion, ensure_experiment, load_champion
from factory_pipelines.mqtt import BoundedPublisher, BrokerConnection, connect_and_wait, make_client
from factory_pipelines.orchestrator import AlertDesk, build_alert_desk
from factory_pipelines.settings import FactorySettings
from factory_pipelines.storage import StoragePath, parquet_files, read_parquet, write_parquet
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import Prediction, dump_payload, prediction_topic
from factory_pipelines.training import ModelFamily
from factory_pipelines.windows import read_window


class PartitionFilesResource(dg.ConfigurableResource):
    """Where window partitions live: sealed windows in, typed rows, features, predictions out.

    Paths derive from `FactorySettings` (the single place that decides where state lives), so
    the Dagster side and the rest of the platform can never disagree about a location. They are
    under the storage root (`storage.py`): the data dir, or object storage when `storage_url` is
    set; read and write them through `read` and `write`, which work on either.
    """

    data_dir: str
    window_seconds: float = 60.0
    storage_url: str | None = None
    storage_endpoint_url: str | None = None

    @property
    def layout(self) -> FactorySettings:
        # model_construct: only the locations, without re-reading the environment in a run worker.
        return FactorySettings.model_construct(
            data_dir=Path(self.data_dir),
            window_seconds=self.window_seconds,
            storage_url=self.storage_url,
            storage_endpoint_url=self.storage_endpoint_url,
        )

    @property
    def windows_dir(self) -> StoragePath:
        """Sealed windows as the collectors published them."""
        return self.layout.store_windows_dir

    @property
    def telemetry_dir(self) -> StoragePath:
        return self.layout.machine_rows_dir

    @property
    def features_dir(self) -> StoragePath:
        return self.layout.features_dir

    @property
    def baselines_dir(self) -> Path:
        return self.layout.baselines_dir

    @property
    def datasets_dir(self) -> Path:
        return self.layout.datasets_dir

    def read_sealed(self, key: str) -> pl.DataFrame:
        return read_window(self.windows_dir, key)

    def telemetry_path(self, key: str) -> StoragePath:
        return self.telemetry_dir / f"{key}.parquet"

    def rows_path(self, kind: str, key: str) -> StoragePath:
        """Typed rows of one payload kind (robots, safety, cameras, ...) of one window."""
        return self.layout.typed_rows_dir / kind / f"{key}.parquet"

    def rows_history(self, kind: str, up_to: str, windows: int) -> list[StoragePath]:
        """The typed-row files of `kind` for the newest `windows` windows up to key `up_to` (included).

        Window keys sort by time, so file names do too.
        """
        names = [p for p in parquet_files(self.layout.typed_rows_dir / kind) if p.stem <= up_to]
        return names[-windows:]

    def features_path(self, key: str) -> StoragePath:
        return self.features_dir / f"{key}.parquet"

    def predictions_dir(self, model_name: str) -> StoragePath:
        return self.layout.predictions_dir / model_name

    def predictions_path(self, model_name: str, key: str) -> StoragePath:
        return self.predictions_dir(model_name) / f"{key}.parquet"

    def model_features_path(self, model_name: str, key: str) -> StoragePath:
        """Per-window features of a model family other than energy (energy's live at the top level)."""
        return self.features_dir / model_name / f"{key}.parquet"

    def model_feature_history(self, model_name: str) -> list[StoragePath]:
        return parquet_files(self.features_dir / model_name)

    def feature_history(self) -> list[StoragePath]:
        """Every machine_features partition file (window keys sort by time, so do the names)."""
        return parquet_files(self.features_dir)

    def write(self, frame: pl.DataFrame, path: StoragePath) -> None:
        write_parquet(frame, path)

    def read(self, path: StoragePath, columns: list[str] | None = None) -> pl.DataFrame:
        return read_parquet(path, columns)


class MlflowResource(dg.ConfigurableResource):
    """The MLflow tracking server and model registry (one URI for both)."""

    tracking_uri: str
    artifacts_dir: str | None = None  # used for experiments created against a local SQLite store

    @property
    def artifacts_path(self) -> Path | None:
        return Path(self.artifacts_dir) if self.artifacts_dir else None

    def experiment_id(self, name: str) -> str:
        return ensure_experiment(self.tracking_uri, name, self.artifacts_path)

    def load_champion(self, family: ModelFamily) -> LoadedChampion:
        """`models:/{family.name}@champion`, loaded once by the caller for all windows of its run."""
        return load_champion(self.tracking_uri, family.name, family.load_model)


class ServingStoreResource(dg.ConfigurableResource):
    """The serving store the REST API reads predictions from; opened once per run."""

    db_url: str
    _store: ServingStore | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._store = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._store is not None:
            self._store.dispose()
            self._store = None

    def get_store(self) -> ServingStore:
        if self._store is None:
            self._store = ServingStore(self.db_url)
        return self._store


class MqttPublisherResource(dg.ConfigurableResource):
    """Publishes predictions to `predictions/{model}/{asset_id}`, best-effort.

    The serving store and the Parquet files are the record; MQTT is the live feed. So a broker
    that is down or slow costs a warning and a count, never the run. Credentials and TLS files
    come from the settings (`build_resources`); the password by name (`EnvVar`), like every secret.
    """

    mqtt_url: str
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_ca_file: str | None = None
    mqtt_client_cert_file: str | None = None
    mqtt_client_key_file: str | None = None
    client_id_prefix: str = "factory-predictions"
    connect_timeout_s: float = 3.0
    publish_timeout_s: float = 10.0
    qos: int = 1

    def publish_predictions(self, predictions: Sequence[Prediction], log: Any) -> int:
        """Publish each prediction; the number the broker acknowledged (0 when it is unreachable)."""
        if not predictions:
            return 0
        messages = [(prediction_topic(p.model_name, p.asset_id), dump_payload(p)) for p in predictions]
        return self.publish(messages, log)

    @property
    def connection(self) -> BrokerConnection:
        def _path(value: str | None) -> Path | None:
            return Path(value) if value else None

        return BrokerConnection(
            self.mqtt_url,
            username=self.mqtt_username,
            password=self.mqtt_password,
            ca_file=_path(self.mqtt_ca_file),
            client_cert_file=_path(self.mqtt_client_cert_file),
            client_key_file=_path(self.mqtt_client_key_file),
        )

    def publish(self, messages: Sequence[tuple[str, bytes]], log: Any, *, retain: bool = False) -> int:
        client = make_client(f"{self.client_id_prefix}-{uuid.uuid4().hex[:12]}")
        try:
            connect_and_wait(client, self.connection, timeout=self.connect_timeout_s)
        except ConnectionError as exc:
            log.warning(f"{exc}; {len(messages)} messages not published")
            return 0
        publisher = BoundedPublisher(client)
        try:
            for topic, payload in messages:
                if not publisher.publish(topic, payload, qos=self.qos, timeout=self.publish_timeout_s, retain=retain):
                    break
        except ConnectionError as exc:
            log.warning(f"MQTT publish failed: {exc}")
        finally:
            publisher.close(self.publish_timeout_s)
        sent = publisher.acknowledged
        if sent < len(messages):
            log.warning(f"MQTT: {len(messages) - sent} of {len(messages)} messages not acknowledged by the broker")
        return sent


class AlertDeskResource(dg.ConfigurableResource):
    """The alert desk (rules, alert book, planner, Twilio notifier) for the orchestrator and timer jobs.

    Secrets arrive through `EnvVar` (see `build_resources`), so the Dagster UI shows their names only.
    """

    db_url: str
    data_dir: str
    site: str = "main"
    rules_file: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_from_number: str | None = None
    twilio_api_base_url: str | None = None
    on_call_numbers: list[str] = []
    escalation_numbers: list[str] = []
    sms_tag: str = "[6G-MAS ALERT]"
    sms_rate_limit: int = 5
    sms_rate_window_s: float = 600.0
    escalate_after_s: float = 900.0
    gemini_api_key: str | None = None
    gemini_model: str = "gemini-2.5-flash"
    gemini_base_url: str | None = None
    _store: ServingStore | None = PrivateAttr(default=None)
    _desk: AlertDesk | None = PrivateAttr(default=None)
    _rules: RuleBook | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._store, self._desk, self._rules = None, None, None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._store is not None:
            self._store.dispose()
        self._store, self._desk, self._rules = None, None, None

    @property
    def layout(self) -> FactorySettings:
        return FactorySettings(data_dir=Path(self.data_dir), site=self.site)

    def rule_book(self) -> RuleBook:
        """The rules, read once per run (the evaluation and the desk's escalation stages share them)."""
        if self._rules is None:
            self._rules = load_rules(Path(self.rules_file) if self.rules_file else None)
        return self._rules

    @property
    def _carry_path(self) -> Path:
        return self.layout.alerts_dir / "telemetry_streaks.json"

    def telemetry_carry(self) -> dict[str, TelemetryCarry]:
        """Streaks of telemetry rules that may go on in the next window, per telemetry kind."""
        if not self._carry_path.is_file():
            return {}
        stored = json.loads(self._carry_path.read_text())
        return {kind: TelemetryCarry.model_validate(carry) for kind, carry in stored.items()}

    def save_telemetry_carry(self, carry: dict[str, TelemetryCarry]) -> None:
        data = {kind: value.model_dump(mode="json") for kind, value in carry.items()}
        write_bytes_atomic(self._carry_path, json.dumps(data).encode())

    def get_desk(self) -> AlertDesk:
        if self._desk is None:
            self._store = ServingStore(self.db_url)
            self._desk = build_alert_desk(
                AlertBook(self._store.engine),
                outbox_dir=self.layout.alert_outbox_dir,
                twilio_account_sid=self.twilio_account_sid,
                twilio_auth_token=self.twilio_auth_token,
                twilio_from_number=self.twilio_from_number,
                twilio_api_base_url=self.twilio_api_base_url,
                on_call=self.on_call_numbers,
                escalation=self.escalation_numbers,
                sms_tag=self.sms_tag,
                sms_rate_limit=self.sms_rate_limit,
                sms_rate_window_s=self.sms_rate_window_s,
                escalate_after_s=self.escalate_after_s,
                escalation_stages=self.rule_book().escalation,
                gemini_api_key=self.gemini_api_key,
                gemini_model=self.gemini_model,
                gemini_base_url=self.gemini_base_url,
            )
        return self._desk


class GeminiResource(dg.ConfigurableResource):
    """Google Gemini (google-genai) for the shift backlog; without a key the deterministic writer writes it.

    The key arrives through `EnvVar` (see `build_resources`), so the Dagster UI shows its name only.
    """

    api_key: str | None = None
    model: str = "gemini-2.5-flash"
    base_url: str | None = None
    timeout_s: float = 60.0
    attempts: int = 3

    def backlog_writer(self) -> GeminiBacklogWriter:
        return GeminiBacklogWriter(
            self.api_key, model=self.model, base_url=self.base_url, timeout_s=self.timeout_s, attempts=self.attempts
        )


def _secret(env_name: str, value: SecretStr | None) -> str | dg.EnvVar | None:
    """A secret for a resource: by name (`EnvVar`) when it is in the environment; the value read
    from `.env` otherwise (pydantic-settings reads that file, the process environment lacks it)."""
    if value is None:
        return None
    return dg.EnvVar(env_name) if os.environ.get(env_name) else value.get_secret_value()


def build_resources(settings: FactorySettings) -> dict[str, dg.ConfigurableResource]:
    """The resources every definition of the code location uses, from one settings object."""
    return {
        "window_files": PartitionFilesResource(
            data_dir=str(settings.data_path),
            window_seconds=settings.window_seconds,
            storage_url=str(settings.storage_root) if settings.storage_url else None,
            storage_endpoint_url=settings.storage_endpoint_url,
        ),
        "mlflow": MlflowResource(
            tracking_uri=settings.resolved_mlflow_uri, artifacts_dir=str(settings.mlflow_artifacts_dir)
        ),
        "serving_store": ServingStoreResource(db_url=settings.resolved_db_url),
        "mqtt": MqttPublisherResource(
            mqtt_url=settings.mqtt_url,
            mqtt_username=settings.mqtt_username,
            mqtt_password=_secret("FACTORY_MQTT_PASSWORD", settings.mqtt_password),
            mqtt_ca_file=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
            mqtt_client_cert_file=str(settings.mqtt_client_cert_file) if settings.mqtt_client_cert_file else None,
            mqtt_client_key_file=str(settings.mqtt_client_key_file) if settings.mqtt_client_key_file else None,
        ),
        "alert_desk": AlertDeskResource(
            db_url=settings.resolved_db_url,
            data_dir=str(settings.data_path),
            site=settings.site,
            rules_file=str(settings.alert_rules_file) if settings.alert_rules_file else None,
            twilio_account_sid=_secret("TWILIO_ACCOUNT_SID", settings.twilio_account_sid),
            twilio_auth_token=_secret("TWILIO_AUTH_TOKEN", settings.twilio_auth_token),
            twilio_from_number=settings.twilio_from_number,
            twilio_api_base_url=settings.twilio_api_base_url,
            on_call_numbers=settings.on_call_numbers,
            escalation_numbers=settings.escalation_numbers,
            sms_tag=settings.sms_tag,
            sms_rate_limit=settings.sms_rate_limit,
            sms_rate_window_s=settings.sms_rate_window_s,
            escalate_after_s=settings.escalate_after_s,
            gemini_api_key=_secret("GEMINI_API_KEY", settings.gemini_api_key),
            gemini_model=settings.gemini_model,
            gemini_base_url=settings.gemini_base_url,
        ),
        "gemini": GeminiResource(
            api_key=_secret("GEMINI_API_KEY", settings.gemini_api_key),
            model=settings.gemini_model,
            base_url=settings.gemini_base_url,
        ),
    }
