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


def test_secrets_are_refused_in_yaml(tmp_path: Path) -> None:
    (tmp_path / "factory.yaml").write_text("twilio_auth_token: hunter2\n")
    with pytest.raises(ValueError, match="twilio_auth_token"):
        load_settings()


def test_secrets_come_from_dotenv_and_blank_means_unset(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TWILIO_AUTH_TOKEN=s3cret\nGEMINI_API_KEY=\nFACTORY_DB_URL=\n")
    settings = load_settings()
    assert settings.twilio_auth_token is not None and settings.twilio_auth_token.get_secret_value() == "s3cret"
    assert "s3cret" not in settings.model_dump_json()
    assert settings.gemini_api_key is None
    assert settings.db_url is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("FACTORY_MQTT_URL", "http://broker:1883"), ("FACTORY_WINDOW_SECONDS", "0"), ("FACTORY_API_PORT", "eighty")],
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
