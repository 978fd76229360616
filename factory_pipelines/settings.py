"""The platform's one settings object.

Values come, highest priority first, from: keyword arguments, `FACTORY_*` environment
variables, a `.env` file, the YAML file named by `FACTORY_CONFIG` (default `factory.yaml` in
the working directory, if present), then the defaults below. Secrets (Twilio, Gemini, the MQTT
password, API keys, OPC UA users) are read only from the environment or `.env`, never from YAML.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
from collections.abc import Iterable
from datetime import date
from functools import cached_property
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from factory_pipelines.api_keys import Role, parse_api_keys
from factory_pipelines.mqtt import BrokerConnection, parse_broker_url
from factory_pipelines.shifts import DEFAULT_SHIFTS, ShiftCalendar, ShiftSpec

if TYPE_CHECKING:
    from upath import UPath

CONFIG_ENV_VAR = "FACTORY_CONFIG"
DEFAULT_CONFIG_FILE = "factory.yaml"
SECRET_FIELDS = frozenset(
    {
        "twilio_account_sid",
        "twilio_auth_token",
        "twilio_from_number",
        "gemini_api_key",
        "api_keys",
        "opcua_users",
        "mqtt_password",
    }
)


def _alias_choices(alias: object) -> list[str]:
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasChoices):
        return [choice for choice in alias.choices if isinstance(choice, str)]
    return []


class _YamlWithoutSecrets(YamlConfigSettingsSource):
    """The YAML settings file, checked: a mapping of known setting names, and no secrets in it.

    The environment may hold anything (other programs' variables), but every key in our own file is
    meant for us: a misspelt one would be silently ignored, so it is refused with a suggestion.
    """

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except yaml.YAMLError as exc:
            raise ValueError(f"{file_path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(
                f"{file_path}: the settings file must be a mapping of setting names to values, "
                f"not a {type(data).__name__}"
            )
        return data

    def _names(self, fields: Iterable[str] | None = None) -> dict[str, str]:
        """Lower-cased names the file may use (field names and aliases), each with its field."""
        model_fields = self.settings_cls.model_fields
        return {
            name.lower(): field
            for field in (model_fields if fields is None else fields)
            for name in (field, *_alias_choices(model_fields[field].validation_alias))
        }

    def __call__(self) -> dict[str, Any]:
        known = self._names()
        for key in self.yaml_data:
            if str(key).lower() not in known:
                close = difflib.get_close_matches(str(key).lower(), sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{self.yaml_file_path}: unknown setting {key!r}{hint}")
        data = super().__call__()
        # The source reports a field that has a validation alias under the alias: refuse either spelling.
        secret_names = self._names(SECRET_FIELDS)
        leaked = sorted({secret_names[key.lower()] for key in data if key.lower() in secret_names})
        if leaked:
            raise ValueError(
                f"{self.yaml_file_path}: secrets {leaked} must come from the environment or .env, "
                "not from the YAML settings file"
            )
        return data


DAGSTER_PG_SCHEME = "postgresql+psycopg2"


class FactorySettings(BaseSettings):
    """Everything the platform's processes need to find each other and their state."""

    model_config = SettingsConfigDict(
        env_prefix="FACTORY_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,  # an error must not echo a secret (API keys, tokens); messages name the setting
    )

    data_dir: Path = Field(Path(".factory"), description="All state: windows, predictions, DAGSTER_HOME, MLflow store.")
    site: str = Field("main", description="Site name used in MQTT topics factory/{site}/...")
    mqtt_url: str = Field(
        "mqtt://127.0.0.1:1883",
        description="MQTT broker every process talks to: mqtt://host:1883 (plain TCP) or mqtts://host:8883 (TLS).",
    )
    mqtt_username: str | None = Field(None, description="User name presented to the broker; unset: anonymous.")
    mqtt_ca_file: Path | None = Field(
        None, description="CA bundle (PEM) that verifies the broker's TLS certificate; default: the system CAs."
    )
    mqtt_client_cert_file: Path | None = Field(
        None, description="Client certificate (PEM) for brokers that require mutual TLS; needs the key file too."
    )
    mqtt_client_key_file: Path | None = Field(None, description="Private key (PEM) of the client certificate.")
    api_host: str = Field("127.0.0.1", description="Interface the REST API binds to.")
    api_port: int = Field(8000, description="Port of the REST API.")
    dagster_port: int = Field(3000, description="Port of the Dagster UI started by `factory up`.")
    mlflow_port: int = Field(5000, description="Port of the MLflow server started by `factory up`.")
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; default: the SQLite store under the data dir.",
    )
    db_url: str | None = Field(
        None, description="SQLAlchemy URL of the serving store; default: SQLite under the data dir."
    )
    storage_url: str | None = Field(
        None,
        description="Where sealed windows, typed rows, features and predictions live: a local path or an fsspec URL "
        "such as s3://bucket/prefix; default: the data dir. Open windows stay on the collector's local disk.",
    )
    storage_endpoint_url: str | None = Field(
        None,
        description="Endpoint of an S3-compatible store (MinIO, Ceph, ...), e.g. http://minio:9000; default: AWS. "
        "Credentials come only from AWS's standard variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...).",
    )
    dagster_pg_url: str | None = Field(
        None,
        description="PostgreSQL URL (postgresql+psycopg2://...) of the Dagster instance's runs, event log and "
        "schedules (dagster-postgres); default: SQLite under DAGSTER_HOME.",
    )
    mlflow_backend_store_uri: str | None = Field(
        None,
        description="Backend store of the MLflow server `factory up` starts (e.g. postgresql+psycopg://...); "
        "default: SQLite under the data dir.",
    )
    dagster_executor: Literal["in_process", "celery"] = Field(
        "in_process",
        description="Where the steps of the platform's runs execute: in the run's own process, or on Celery "
        "workers (dagster-celery; start them with `factory celery-worker`).",
    )
    dagster_run_launcher: Literal["default", "celery"] = Field(
        "default",
        description="Where runs execute: subprocesses of the Dagster code server, or tasks on Celery workers "
        "(dagster-celery's run launcher; their steps then execute inside the run, dagster_executor in_process).",
    )
    celery_broker_url: str | None = Field(
        None,
        description="Broker of the Celery workers, redis://host:6379/0 or amqp://user@host:5672//; "
        "required when dagster_executor is celery.",
    )
    window_seconds: float = Field(60.0, ge=1, description="A window is sealed every this many seconds.")
    window_max_rows: int = Field(50_000, gt=0, description="A window is sealed early at this many rows.")
    collector_id: str = Field(
        "collector-1", description="Name of this collector (part of window keys and MQTT client id)."
    )
    collector_flush_ms: int = Field(
        50, gt=0, description="Longest time a received message waits before it is made durable and acknowledged."
    )
    max_payload_bytes: int = Field(262_144, gt=0, description="Payloads larger than this go to the dead-letter file.")
    dead_letter_lines_per_topic_minute: int = Field(
        60, gt=0, description="Dead-letter lines one topic may write per minute; the rest are counted in one line."
    )
    dead_letter_lines_per_minute: int = Field(
        1000, gt=0, description="Dead-letter lines all topics together may write per minute; the rest are counted."
    )
    dead_letter_payload_bytes_per_topic_hour: int = Field(
        4 * 1024 * 1024,
        ge=0,
        description="Bytes of rejected payloads one topic may store per hour; beyond, lines keep size and sha256 only.",
    )
    dead_letter_payload_bytes_per_hour: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Bytes of rejected payloads all topics together may store per hour (inline and blob files).",
    )
    retention_days: float = Field(
        30.0, gt=0, description="Window partitions older than this are removed from Dagster (files stay)."
    )
    max_live_partitions: int = Field(50_000, gt=0, description="Upper bound on live window partitions in Dagster.")
    sensor_interval_seconds: int = Field(5, gt=0, description="How often the window sensor polls for sealed windows.")
    anomaly_contamination: float = Field(0.02, gt=0, lt=0.5, description="Expected anomaly share for energy_iforest.")
    alert_rules_file: Path | None = Field(
        None, description="YAML file of alert rules; default: the rules shipped with the platform."
    )
    sms_tag: str = Field("[6G-MAS ALERT]", description="First-line tag of alert texts (on-call phones filter on it).")
    sms_rate_limit: int = Field(5, ge=1, description="Most texts one number gets per sms_rate_window_s.")
    sms_rate_window_s: float = Field(600.0, gt=0, description="Window of the per-number text rate limit.")
    escalate_after_s: float = Field(
        900.0, gt=0, description="A CRITICAL alert still unacknowledged this long is texted to the escalation list."
    )
    allow_anonymous_read: bool = Field(
        False, description="Let requests without a credential read (viewer); mutating calls always need a key."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description='Browser origins allowed to call the API, e.g. ["https://hmi.plant"].'
    )
    modbus_host: str = Field(
        "127.0.0.1", description="Interface the bridge's Modbus TCP server binds to (0.0.0.0: all)."
    )
    modbus_port: int = Field(5020, ge=1, le=65535, description="Port of the bridge's Modbus TCP server.")
    modbus_writes_enabled: bool = Field(
        False, description="Let Modbus clients write command registers (each write becomes an MQTT command)."
    )
    modbus_writers: Annotated[list[ipaddress.IPv4Network | ipaddress.IPv6Network], NoDecode] = Field(
        default_factory=list,
        description='Client addresses or networks whose Modbus writes are accepted, e.g. ["10.0.5.20", "10.0.6.0/24"] '
        "or 10.0.5.20,10.0.6.0/24; empty: loopback only (127.0.0.0/8, ::1). Reads stay open to every client.",
    )

    @field_validator("modbus_writers", mode="before")
    @classmethod
    def _parse_modbus_writers(cls, value: object) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """A JSON or YAML list, or comma-separated; a bad entry stops start-up with the setting and entry named."""
        if isinstance(value, str):
            text = value.strip()
            try:
                value = json.loads(text) if text.startswith("[") else text.split(",")
            except ValueError as exc:
                raise ValueError(f"modbus_writers: {text!r} is not a JSON list ({exc})") from exc
        if not isinstance(value, list | tuple):
            raise ValueError(f"modbus_writers: expected a list of IP addresses or networks, got {value!r}")
        networks = []
        for entry in value:
            written = str(entry).strip()
            if not written:
                continue
            try:
                networks.append(ipaddress.ip_network(written))
            except ValueError as exc:
                try:  # strict: "10.0.6.5/24" is refused as ambiguous, with the network it may have meant
                    meant = f": host bits set, write {ipaddress.ip_network(written, strict=False)}"
                except ValueError:
                    meant = " is not an IP address or CIDR network"
                raise ValueError(f"modbus_writers entry {written!r}{meant}") from exc
        return networks

    opcua_host: str = Field("127.0.0.1", description="Interface the bridge's OPC UA server binds to (0.0.0.0: all).")
    opcua_port: int = Field(4840, ge=1, le=65535, description="Port of the bridge's OPC UA server.")
    opcua_security: Literal["secure", "none"] = Field(
        "secure",
        description="secure: Basic256Sha256 Sign and SignAndEncrypt with users; none: no security (local demo).",
    )
    bridge_max_assets: int = Field(200, ge=1, le=322, description="Assets the bridge gives registers and nodes to.")
    bridge_alert_resync_s: float = Field(
        30.0, gt=0, description="How often the bridge re-reads open alerts from the store (clears are not on MQTT)."
    )
    shifts: list[ShiftSpec] = Field(
        default_factory=lambda: list(DEFAULT_SHIFTS),
        description='The plant\'s shifts, e.g. [{name: early, start: "06:00"}, ...]; all start on the same minute.',
    )
    plant_timezone: str = Field(
        "UTC", description="Time zone of the shift start times (IANA name, e.g. Europe/Berlin)."
    )
    shifts_first_day: date = Field(
        date(2026, 1, 1), description="First day with shift partitions (backfills reach back to it)."
    )

    # Secrets: only from the environment or .env (names are the vendors' usual ones).
    twilio_account_sid: SecretStr | None = Field(None, validation_alias=AliasChoices("TWILIO_ACCOUNT_SID"))
    twilio_auth_token: SecretStr | None = Field(None, validation_alias=AliasChoices("TWILIO_AUTH_TOKEN"))
    twilio_from_number: str | None = Field(None, validation_alias=AliasChoices("TWILIO_FROM_NUMBER"))
    twilio_to_numbers: str | None = Field(
        None, validation_alias=AliasChoices("TWILIO_TO_NUMBERS"), description="On-call numbers, comma-separated."
    )
    twilio_escalation_numbers: str | None = Field(
        None,
        validation_alias=AliasChoices("TWILIO_ESCALATION_NUMBERS"),
        description="Second list, texted when a CRITICAL alert stays unacknowledged past escalate_after_s.",
    )
    twilio_api_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("TWILIO_API_BASE_URL"),
        description="A Twilio-compatible endpoint; default: Twilio's own API.",
    )
    gemini_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("GEMINI_API_KEY"))
    # No validation_alias: the YAML source would then report it under the alias and slip past the refusal.
    mqtt_password: SecretStr | None = Field(None, description="Password for FACTORY_MQTT_USERNAME at the broker.")
    opcua_users: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("FACTORY_OPCUA_USERS", "opcua_users"),
        description="OPC UA users, comma-separated USER:PASSWORD:ROLE (viewer reads, operator may call methods).",
    )
    api_keys: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("FACTORY_API_KEYS", "api_keys"),
        description="API keys with their roles, comma-separated KEY:ROLE (roles: viewer, operator, admin).",
    )
    gemini_model: str = Field("gemini-2.5-flash", validation_alias=AliasChoices("GEMINI_MODEL"))
    gemini_base_url: str | None = Field(None, validation_alias=AliasChoices("GEMINI_BASE_URL"))

    @field_validator(
        "db_url",
        "storage_url",
        "storage_endpoint_url",
        "dagster_pg_url",
        "mlflow_backend_store_uri",
        "celery_broker_url",
        "mlflow_tracking_uri",
        "twilio_account_sid",
        "twilio_auth_token",
        "twilio_from_number",
        "twilio_to_numbers",
        "twilio_escalation_numbers",
        "twilio_api_base_url",
        "alert_rules_file",
        "gemini_api_key",
        "gemini_base_url",
        "api_keys",
        "opcua_users",
        "mqtt_username",
        "mqtt_password",
        "mqtt_ca_file",
        "mqtt_client_cert_file",
        "mqtt_client_key_file",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """`NAME=` in .env (as in .env.example) means "not set", not an empty secret."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("dagster_pg_url")
    @classmethod
    def _check_dagster_pg_url(cls, value: str | None) -> str | None:
        """dagster-postgres needs psycopg2, named in the URL: SQLAlchemy 2.1 reads a bare postgresql:// as
        psycopg 3, under which Dagster's event log fails (its NOTIFY takes no bound parameter)."""
        if value is None or value.startswith(DAGSTER_PG_SCHEME + "://"):
            return value
        scheme = value.split("://", 1)[0] if "://" in value else "(none)"
        raise ValueError(
            f"must start with {DAGSTER_PG_SCHEME}:// (dagster-postgres runs on the psycopg2 driver), "
            f"e.g. {DAGSTER_PG_SCHEME}://user:password@host:5432/dagster; the scheme given was {scheme}"
        )

    @field_validator("storage_url")
    @classmethod
    def _no_credentials_in_storage_url(cls, value: str | None) -> str | None:
        """A URL gets logged and shown in the UI: keys belong in AWS_* variables, never in it."""
        if value and "://" in value and "@" in value.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError("must not hold credentials (user:secret@): set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str) -> str:
        parse_broker_url(value)  # the one place that decides what a broker URL may be
        return value

    @field_validator("mqtt_ca_file", "mqtt_client_cert_file", "mqtt_client_key_file")
    @classmethod
    def _absolute_path(cls, value: Path | None) -> Path | None:
        """Absolute, so a child process started elsewhere finds the same file."""
        return None if value is None else value.expanduser().resolve()

    @model_validator(mode="after")
    def _check_derived(self) -> FactorySettings:
        on_celery = self.dagster_executor == "celery" or self.dagster_run_launcher == "celery"
        if on_celery and self.celery_broker_url is None:
            raise ValueError("celery_broker_url (FACTORY_CELERY_BROKER_URL) is required to run on Celery workers")
        if self.dagster_executor == "celery" and self.dagster_run_launcher == "celery":
            # A run that is itself a Celery task may not wait on step tasks (Celery refuses result.get() there).
            raise ValueError(
                "dagster_run_launcher celery runs each run, steps included, on a Celery worker: "
                "leave dagster_executor in_process (steps on Celery are for runs launched by the code server)"
            )
        # A calendar or key list that cannot be built stops start-up with its reason.
        self.shift_calendar  # noqa: B018
        self.api_key_roles  # noqa: B018
        self.mqtt_connection  # noqa: B018
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_path = Path(os.environ.get(CONFIG_ENV_VAR, DEFAULT_CONFIG_FILE))
        if CONFIG_ENV_VAR in os.environ and not yaml_path.is_file():
            raise FileNotFoundError(f"{CONFIG_ENV_VAR}={yaml_path} does not exist")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        if yaml_path.is_file():
            sources.append(_YamlWithoutSecrets(settings_cls, yaml_file=yaml_path))
        return tuple(sources)

    # ---- derived locations: one place decides where every kind of state lives ----
    @cached_property
    def data_path(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def windows_dir(self) -> Path:
        """The collector's own windows on local disk: open ones, and sealed ones until they are published."""
        return self.data_path / "windows"

    @cached_property
    def storage_root(self) -> UPath:
        """Root of the partition files every process shares: FACTORY_STORAGE_URL, else the data dir."""
        from factory_pipelines.storage import storage_root

        return storage_root(self.storage_url, default=self.data_path, endpoint_url=self.storage_endpoint_url)

    @property
    def store_windows_dir(self) -> UPath:
        """Sealed windows as the platform sees them (the collector's `windows_dir` when the store is the data dir)."""
        return self.storage_root / "windows"

    @property
    def dead_letter_dir(self) -> Path:
        return self.data_path / "dead-letter"

    @property
    def predictions_dir(self) -> UPath:
        return self.storage_root / "predictions"

    @property
    def typed_rows_dir(self) -> UPath:
        """Typed rows per payload kind and window (the `telemetry_window` asset)."""
        return self.storage_root / "telemetry"

    @property
    def machine_rows_dir(self) -> UPath:
        return self.typed_rows_dir / "machines"

    @property
    def baselines_dir(self) -> Path:
        """Simulated training data for a first model, before there is history."""
        return self.data_path / "baselines"

    @property
    def datasets_dir(self) -> Path:
        """Training and validation sets of every model family, with their manifests."""
        return self.data_path / "datasets"

    @property
    def features_dir(self) -> UPath:
        return self.storage_root / "features"

    @property
    def alerts_dir(self) -> Path:
        """The alert desk's files: the outbox of alerts waiting for the store, telemetry-rule streaks."""
        return self.data_path / "alerts"

    @property
    def alert_outbox_dir(self) -> Path:
        return self.alerts_dir / "outbox"

    @property
    def dagster_home(self) -> Path:
        return self.data_path / "dagster"

    @property
    def mlflow_dir(self) -> Path:
        return self.data_path / "mlflow"

    @property
    def logs_dir(self) -> Path:
        return self.data_path / "logs"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @property
    def resolved_mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def resolved_mlflow_backend_store_uri(self) -> str:
        """Where the MLflow server `factory up` starts keeps runs and the registry."""
        return self.mlflow_backend_store_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def resolved_db_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_path / 'serving.db'}"

    @cached_property
    def api_key_roles(self) -> dict[str, Role]:
        return parse_api_keys(self.api_keys.get_secret_value() if self.api_keys else None)

    @cached_property
    def shift_calendar(self) -> ShiftCalendar:
        return ShiftCalendar(tuple(self.shifts), self.plant_timezone, self.shifts_first_day)

    @property
    def on_call_numbers(self) -> list[str]:
        return _number_list(self.twilio_to_numbers)

    @property
    def escalation_numbers(self) -> list[str]:
        return _number_list(self.twilio_escalation_numbers)

    @property
    def mqtt_connection(self) -> BrokerConnection:
        """How every process reaches the broker: URL, credentials, TLS files (validated here)."""
        return BrokerConnection(
            self.mqtt_url,
            username=self.mqtt_username,
            password=self.mqtt_password.get_secret_value() if self.mqtt_password else None,
            ca_file=self.mqtt_ca_file,
            client_cert_file=self.mqtt_client_cert_file,
            client_key_file=self.mqtt_client_key_file,
        )

    @property
    def mqtt_host(self) -> str:
        return parse_broker_url(self.mqtt_url)[1]

    @property
    def mqtt_port(self) -> int:
        """The URL's port, else 1883 (mqtt://) or 8883 (mqtts://)."""
        return parse_broker_url(self.mqtt_url)[2]

    def child_env(self) -> dict[str, str]:
        """Environment that hands these settings to a child process unchanged."""
        env = {
            "FACTORY_DATA_DIR": str(self.data_path),
            "FACTORY_SITE": self.site,
            "FACTORY_DAGSTER_EXECUTOR": self.dagster_executor,
            "FACTORY_DAGSTER_RUN_LAUNCHER": self.dagster_run_launcher,
            "FACTORY_MQTT_URL": self.mqtt_url,
            "FACTORY_API_HOST": self.api_host,
            "FACTORY_API_PORT": str(self.api_port),
            "FACTORY_DAGSTER_PORT": str(self.dagster_port),
            "FACTORY_MLFLOW_PORT": str(self.mlflow_port),
            "FACTORY_WINDOW_SECONDS": str(self.window_seconds),
            "FACTORY_WINDOW_MAX_ROWS": str(self.window_max_rows),
            "FACTORY_DB_URL": self.resolved_db_url,
            "FACTORY_MLFLOW_TRACKING_URI": self.resolved_mlflow_uri,
            "MLFLOW_TRACKING_URI": self.resolved_mlflow_uri,
            "DAGSTER_HOME": str(self.dagster_home),
        }
        optional = {
            "FACTORY_MQTT_USERNAME": self.mqtt_username,
            "FACTORY_MQTT_PASSWORD": self.mqtt_password.get_secret_value() if self.mqtt_password else None,
            "FACTORY_MQTT_CA_FILE": self.mqtt_ca_file,
            "FACTORY_MQTT_CLIENT_CERT_FILE": self.mqtt_client_cert_file,
            "FACTORY_MQTT_CLIENT_KEY_FILE": self.mqtt_client_key_file,
            "FACTORY_DAGSTER_PG_URL": self.dagster_pg_url,
            "FACTORY_MLFLOW_BACKEND_STORE_URI": self.mlflow_backend_store_uri,
            "FACTORY_CELERY_BROKER_URL": self.celery_broker_url,
            "FACTORY_STORAGE_URL": str(self.storage_root) if self.storage_url else None,
            "FACTORY_STORAGE_ENDPOINT_URL": self.storage_endpoint_url,
        }
        env.update({name: str(value) for name, value in optional.items() if value is not None})
        return env

    def ensure_dirs(self) -> None:
        for path in (
            self.windows_dir,
            self.dead_letter_dir,
            self.predictions_dir,
            self.features_dir,
            self.dagster_home,
            self.mlflow_artifacts_dir,
            self.logs_dir,
        ):
            if isinstance(path, Path):  # object storage has no folders to make (and may be down at start)
                path.mkdir(parents=True, exist_ok=True)


def _number_list(value: str | None) -> list[str]:
    return [number.strip() for number in (value or "").split(",") if number.strip()]


def load_settings(**overrides: Any) -> FactorySettings:
    """Settings from the environment, `.env` and the YAML file, with explicit overrides on top."""
    return FactorySettings(**overrides)
