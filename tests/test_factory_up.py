"""`factory up` as a new user runs it: one command, then predictions at REST and partitions in Dagster.

Runs the real command in a subprocess with nothing listening on its MQTT port, so it must start
its own broker, MLflow server, collector, simulator, API and Dagster (webserver and daemon), and
stop all of them on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymodbus.client import ModbusTcpClient

from factory_pipelines.mqtt import broker_reachable

READY_DEADLINE_S = 300  # the budget is 3 minutes at 60 s windows; this runs 5 s windows

MATERIALIZED_PARTITIONS = """
query ($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { partitionStats { numMaterialized numPartitions } }
  }
}
"""
ASSET_GRAPH = "{ assetNodes { assetKey { path } dependencyKeys { path } } }"


def _poll(what: str, probe: Callable[[], Any], deadline: float, process: subprocess.Popen[bytes], log: Path) -> Any:
    """Probe until it returns something truthy; fail with the command's output if it exits or time runs out."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"factory up exited with {process.returncode} before {what}:\n{log.read_text()[-4000:]}")
        try:
            result = probe()
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            result = None
        if result:
            return result
        time.sleep(1.0)
    pytest.fail(f"no {what} within {READY_DEADLINE_S} s:\n{log.read_text()[-4000:]}")


# The other families' first trainings would compete for the CPU with what this test times.
UP_ARGS = ("--machines", "3", "--robots", "1", "--no-train-missing")


@pytest.mark.e2e
def test_factory_up_serves_predictions_and_stops_cleanly(tmp_path: Path, free_port: Callable[[], int]) -> None:
    ports = {name: free_port() for name in ("MQTT", "API", "DAGSTER", "MLFLOW", "MODBUS", "OPCUA")}
    mqtt_url = f"mqtt://127.0.0.1:{ports['MQTT']}"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("FACTORY_", "MLFLOW_", "DAGSTER_"))}
    env.update(
        FACTORY_DATA_DIR=str(tmp_path / "data"),
        FACTORY_MQTT_URL=mqtt_url,
        FACTORY_API_PORT=str(ports["API"]),
        FACTORY_DAGSTER_PORT=str(ports["DAGSTER"]),
        FACTORY_MLFLOW_PORT=str(ports["MLFLOW"]),
        FACTORY_MODBUS_PORT=str(ports["MODBUS"]),
        FACTORY_OPCUA_PORT=str(ports["OPCUA"]),
        FACTORY_WINDOW_SECONDS="5",
        FACTORY_SENSOR_INTERVAL_SECONDS="2",
    )
    log = tmp_path / "factory-up.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "factory_pipelines.cli",
                "up",
                "--machines",
                "3",
                "--robots",
                "1",
                "--no-train-missing",
            ],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api = f"http://127.0.0.1:{ports['API']}"
    graphql = f"http://127.0.0.1:{ports['DAGSTER']}/graphql"
    try:
        deadline = time.monotonic() + READY_DEADLINE_S
        rows = _poll(
            "predictions at /predictions/latest",
            lambda: httpx.get(f"{api}/predictions/latest?model=energy_iforest", timeout=5).json()["items"],
            deadline,
            process,
            log,
        )
        assert {row["asset_id"] for row in rows} == {"machine-01", "machine-02", "machine-03"}
        assert {(row["model_name"], row["model_version"]) for row in rows} == {("energy_iforest", "1")}

        graph = httpx.post(graphql, json={"query": ASSET_GRAPH}, timeout=10).json()["data"]["assetNodes"]
        edges = {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} for n in graph}
        assert edges["machine_features"] == {"telemetry_window"}
        assert "machine_features" in edges["energy_anomaly_predictions"]

        def materialized() -> int:
            answer = httpx.post(
                graphql,
                json={"query": MATERIALIZED_PARTITIONS, "variables": {"path": ["energy_anomaly_predictions"]}},
                timeout=10,
            ).json()
            return answer["data"]["assetNodeOrError"]["partitionStats"]["numMaterialized"]

        assert _poll("materialized partitions in Dagster", materialized, deadline, process, log) >= 1

        def bridge_header() -> list[int] | None:  # the SCADA bridge serves the simulated fleet over Modbus TCP
            client = ModbusTcpClient("127.0.0.1", port=ports["MODBUS"], timeout=2)
            try:
                if not client.connect():
                    return None
                answer = client.read_input_registers(0, count=12, device_id=1)
                return None if answer.isError() or answer.registers[6] < 1 else answer.registers  # slots in use
            finally:
                client.close()

        header = _poll("assets at the bridge's Modbus server", bridge_header, deadline, process, log)
        assert header[0] == 1  # the register map's version

        output = log.read_text()
        assert f"started mosquitto at {mqtt_url}" in output or f"started amqtt at {mqtt_url}" in output
        for url in (f"http://127.0.0.1:{ports['DAGSTER']}", f"http://127.0.0.1:{ports['MLFLOW']}", f"{api}/docs"):
            assert url in output
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        try:
            code = process.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    assert code == 0, log.read_text()[-4000:]
    assert "stopped." in log.read_text()
    # Nothing is left behind: the API, Dagster, MLflow and the broker it started are all gone.
    for port in (ports["API"], ports["DAGSTER"], ports["MLFLOW"], ports["MODBUS"]):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
    assert not broker_reachable(mqtt_url, timeout=1)
