"""Settings: YAML plus environment, the contract variable names, secrets kept out of YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from factory_pipelines.settings import FactorySettings, load_settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(__import__("os").environ):
        if name.startswith(("FACTORY_", "TWILIO_", "GEMINI_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_match_the_contract() -> None:
    settings = load_settings()
    assert settings.data_path == (Path.cwd() / ".factory").resolve()
    assert (settings.api_port, settings.dagster_port, settings.window_seconds, settings.site) == (
        8000,
        3000,
        60,
        "main",
    )
    assert settings.mqtt_url == "mqtt://127.0.0.1:1883"
    assert settings.resolved_db_url == f"sqlite:///{settings.data_path / 'serving.db'}"
    assert (
        settings.resolved_mlflow_uri.startswith("sqlite:///")
        and str(settings.mlflow_dir) in settings.resolved_mlflow_uri
    )


def test_environment_overrides_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "factory.yaml").write_text("window_seconds: 10\nsite: plant-a\napi_port: 8100\n")
    monkeypatch.setenv("FACTORY_API_PORT", "8200")
    monkeypatch.setenv("FACTORY_DATA_DIR", str(tmp_path / "state"))
    settings = load_settings()
    assert settings.window_seconds == 10
    assert settings.site == "plant-a"
    assert settings.api_port == 8200
    assert settings.dagster_home == tmp_path / "state" / "dagster"


def test_config_file_named_by_env_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FACTORY_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_settings()


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("twilio_auth_token: hunter2", "twilio_auth_token"),
        ("api_keys: key-1234567890:admin", "api_keys"),  # fields with an alias: either spelling is refused
        ("FACTORY_OPCUA_USERS: ana:pw-123456:operator", "opcua_users"),
    ],
)
def test_secrets_are_refused_in_yaml(tmp_path: Path, line: str, field: str) -> None:
    (tmp_path / "factory.yaml").write_text(line + "\n")
    with pytest.raises(ValueError, match=field) as refused:
        load_settings()
    assert line.split(": ", 1)[1] not in str(refused.value)


def test_secrets_come_from_dotenv_and_blank_means_unset(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TWILIO_AUTH_TOKEN=s3cret\nGEMINI_API_KEY=\nFACTORY_DB_URL=\n")
    settings = load_settings()
    assert settings.twilio_auth_token is not None and settings.twilio_auth_token.get_secret_value() == "s3cret"
    assert "s3cret" not in settings.model_dump_json()
    assert settings.gemini_api_key is None
    assert settings.db_url is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FACTORY_MQTT_URL", "http://broker:1883"),
        ("FACTORY_WINDOW_SECONDS", "0"),
        ("FACTORY_API_PORT", "eighty"),
        # dagster-postgres needs psycopg2; SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3
        ("FACTORY_DAGSTER_PG_URL", "postgresql+psycopg://u@127.0.0.1:5432/dagster"),
        ("FACTORY_DAGSTER_PG_URL", "postgresql://u@127.0.0.1:5432/dagster"),
    ],
)
def test_bad_values_are_rejected_with_the_setting_named(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("FACTORY_").lower()):
        load_settings()


def test_env_example_lists_every_setting() -> None:
    listed = {
        line.split("=", 1)[0]
        for line in (REPO / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    expected = set()
    for name, field in FactorySettings.model_fields.items():
        alias = field.validation_alias
        expected.add(alias.choices[0] if alias is not None else f"FACTORY_{name.upper()}")
    assert expected == listed


def test_child_env_round_trips(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "d", window_seconds=7, site="s2")
    env = settings.child_env()
    again = FactorySettings(
        **{k.removeprefix("FACTORY_").lower(): v for k, v in env.items() if k.startswith("FACTORY_")}
    )
    assert (again.data_path, again.window_seconds, again.site) == (settings.data_path, 7, "s2")
    assert again.resolved_db_url == settings.resolved_db_url


# ---- MQTT credentials and TLS ----


def test_mqtts_urls_default_to_port_8883() -> None:
    assert load_settings(mqtt_url="mqtts://broker.plant").mqtt_port == 8883
    assert load_settings(mqtt_url="mqtt://broker.plant").mqtt_port == 1883
    assert load_settings(mqtt_url="mqtts://broker.plant:9883").mqtt_connection.tls is True


def test_credentials_in_the_broker_url_are_refused_without_echoing_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACTORY_MQTT_URL", "mqtts://plant:hunter2@broker.plant:8883")
    with pytest.raises(ValidationError, match="FACTORY_MQTT_USERNAME and FACTORY_MQTT_PASSWORD") as refused:
        load_settings()
    assert "hunter2" not in str(refused.value)


def test_mqtt_password_is_a_secret_refused_in_yaml(tmp_path: Path) -> None:
    (tmp_path / "factory.yaml").write_text("mqtt_username: plant\nmqtt_password: hunter2\n")
    with pytest.raises(ValueError, match="mqtt_password"):
        load_settings()


def test_mqtt_credentials_from_dotenv_reach_the_connection_and_children_but_no_dump(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not parsed by the settings")
    (tmp_path / ".env").write_text(
        "FACTORY_MQTT_URL=mqtts://broker.plant\nFACTORY_MQTT_USERNAME=plant\nFACTORY_MQTT_PASSWORD=hunter2\n"
        "FACTORY_MQTT_CA_FILE=ca.pem\nFACTORY_MQTT_CLIENT_CERT_FILE=\n"
    )
    settings = load_settings()
    connection = settings.mqtt_connection
    assert (connection.username, connection.password) == ("plant", "hunter2")
    assert connection.ca_file == tmp_path / "ca.pem"  # made absolute: children may start elsewhere
    assert connection.client_cert_file is None
    assert "hunter2" not in settings.model_dump_json() and "hunter2" not in repr(connection)
    assert str(connection) == "mqtts://broker.plant"

    env = settings.child_env()
    assert env["FACTORY_MQTT_PASSWORD"] == "hunter2" and env["FACTORY_MQTT_CA_FILE"] == str(tmp_path / "ca.pem")
    (tmp_path / ".env").unlink()
    again = FactorySettings(
        **{k.removeprefix("FACTORY_").lower(): v for k, v in env.items() if k.startswith("FACTORY_")}
    )
    assert again.mqtt_connection == connection


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mqtt_url": "mqtts://b", "mqtt_ca_file": "missing-ca.pem"}, "FACTORY_MQTT_CA_FILE=.*missing-ca.pem: no such"),
        ({"mqtt_url": "mqtts://b", "mqtt_client_cert_file": "client.pem"}, "both FACTORY_MQTT_CLIENT_CERT_FILE"),
        ({"mqtt_url": "mqtt://b", "mqtt_ca_file": "client.pem"}, "only apply to TLS: use an mqtts://"),
        ({"mqtt_password": "hunter2"}, "FACTORY_MQTT_PASSWORD is set without FACTORY_MQTT_USERNAME"),
    ],
)
def test_inconsistent_mqtt_tls_settings_are_refused_with_the_setting_named(
    tmp_path: Path, values: dict[str, str], message: str
) -> None:
    (tmp_path / "client.pem").write_text("a certificate")
    with pytest.raises(ValidationError, match=message) as refused:
        load_settings(**values)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("windw_seconds: 5\n", "factory.yaml: unknown setting 'windw_seconds' (did you mean 'window_seconds'?)"),
        ("- window_seconds\n- 5\n", "factory.yaml: the settings file must be a mapping of setting names to values"),
        ("window_seconds: [1\nsite: x\n", 'in "factory.yaml", line'),  # YAML's own message, with the line
        ("window_seconds: zero\n", "window_seconds"),
    ],
)
def test_a_wrong_settings_file_stops_start_up_with_one_message_naming_it(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "factory.yaml").write_text(text)
    with pytest.raises(ValueError) as refused:
        load_settings()
    assert message in str(refused.value)
