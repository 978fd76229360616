"""The platform's one settings object.

Values come, highest priority first, from: keyword arguments, `FACTORY_*` environment
variables, a `.env` file, the YAML file named by `FACTORY_CONFIG` (default `factory.yaml` in
the working directory, if present), then the defaults below. Secrets (Twilio, Gemini) are read
only from the environment or `.env`, never from YAML.
"""

from __future__ import annotations

import os
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from factory_pipelines.api_keys import Role, parse_api_keys
from factory_pipelines.shifts import DEFAULT_SHIFTS, ShiftCalendar, ShiftSpec

CONFIG_ENV_VAR = "FACTORY_CONFIG"
DEFAULT_CONFIG_FILE = "factory.yaml"
SECRET_FIELDS = frozenset(
    {"twilio_account_sid", "twilio_auth_token", "twilio_from_number", "gemini_api_key", "api_keys", "opcua_users"}
)


class _YamlWithoutSecrets(YamlConfigSettingsSource):
    """YAML source that refuses secrets, so they never end up in a committed file."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        leaked = sorted(SECRET_FIELDS & {key.lower() for key in data})
        if leaked:
            raise ValueError(
                f"{self.yaml_file_path}: secrets {leaked} must come from the environment or .env, "
                "not from the YAML settings file"
            )
        return data


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
    mqtt_url: str = Field("mqtt://127.0.0.1:1883", description="MQTT broker every process talks to.")
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
    window_seconds: float = Field(60.0, ge=1, description="A window is sealed every this many seconds.")
    window_max_rows: int = Field(50_000, gt=0, description="A window is sealed early at this many rows.")
    collector_id: str = Field(
        "collector-1", description="Name of this collector (part of window keys and MQTT client id)."
    )
    collector_flush_ms: int = Field(
        50, gt=0, description="Longest time a received message waits before it is made durable and acknowledged."
    )
    max_payload_bytes: int = Field(262_144, gt=0, description="Payloads larger than this go to the dead-letter file.")
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
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """`NAME=` in .env (as in .env.example) means "not set", not an empty secret."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"mqtt", "tcp"} or not parts.hostname:
            raise ValueError(f"FACTORY_MQTT_URL must look like mqtt://host:1883, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_derived(self) -> FactorySettings:
        # A calendar or key list that cannot be built stops start-up with its reason.
        self.shift_calendar  # noqa: B018
        self.api_key_roles  # noqa: B018
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
        return self.data_path / "windows"

    @property
    def dead_letter_dir(self) -> Path:
        return self.data_path / "dead-letter"

    @property
    def predictions_dir(self) -> Path:
        return self.data_path / "predictions"

    @property
    def typed_rows_dir(self) -> Path:
        """Typed rows per payload kind and window (the `telemetry_window` asset)."""
        return self.data_path / "telemetry"

    @property
    def machine_rows_dir(self) -> Path:
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
    def features_dir(self) -> Path:
        return self.data_path / "features"

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
    def mqtt_host(self) -> str:
        return urlsplit(self.mqtt_url).hostname or "127.0.0.1"

    @property
    def mqtt_port(self) -> int:
        return urlsplit(self.mqtt_url).port or 1883

    def child_env(self) -> dict[str, str]:
        """Environment that hands these settings to a child process unchanged."""
        env = {
            "FACTORY_DATA_DIR": str(self.data_path),
            "FACTORY_SITE": self.site,
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
            path.mkdir(parents=True, exist_ok=True)


def _number_list(value: str | None) -> list[str]:
    return [number.strip() for number in (value or "").split(",") if number.strip()]


def load_settings(**overrides: Any) -> FactorySettings:
    """Settings from the environment, `.env` and the YAML file, with explicit overrides on top."""
    return FactorySettings(**overrides)
