"""`factory bridge` as a new user runs it: both servers up, values from MQTT, Ctrl-C stops it cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
from asyncua import Client
from pymodbus.client import ModbusTcpClient

from factory_pipelines.settings import load_settings
from tests.waiting import wait_until


def bridge_env(tmp_path: Path, mqtt_url: str, ports: dict[str, int], **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FACTORY_")}
    return env | {
        "FACTORY_DATA_DIR": str(tmp_path / "data"),
        "FACTORY_MQTT_URL": mqtt_url,
        "FACTORY_SITE": f"b{uuid.uuid4().hex[:8]}",
        "FACTORY_MODBUS_PORT": str(ports["modbus"]),
        "FACTORY_OPCUA_PORT": str(ports["opcua"]),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def start_bridge(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "factory_pipelines.cli", "bridge"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def endpoint_policies(url: str) -> set[str]:
    async def ask() -> set[str]:
        endpoints = await Client(url).connect_and_get_server_endpoints()
        return {f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in endpoints}

    return asyncio.run(ask())


def test_factory_bridge_serves_modbus_and_opcua_and_stops_on_ctrl_c(
    tmp_path: Path, mqtt_url: str, free_port: Callable[[], int]
) -> None:
    ports = {"modbus": free_port(), "opcua": free_port()}
    env = bridge_env(tmp_path, mqtt_url, ports, FACTORY_OPCUA_USERS="operator:a-long-secret-9:operator")
    process = start_bridge(env)
    output: list[str] = []
    try:
        for line in process.stdout or []:
            output.append(line)
            if line.lstrip().startswith("OPC UA") and "opc.tcp://" in line:  # the ready lines end with it
                break
        assert any("SCADA bridge serving" in line for line in output), "".join(output)
        settings = load_settings(mqtt_url=mqtt_url)
        reading = {"kind": "robot", "temperature": 48.25, "health_score": 81}
        topic = f"factory/{env['FACTORY_SITE']}/R-7/telemetry"
        modbus = ModbusTcpClient("127.0.0.1", port=ports["modbus"], timeout=2)
        assert modbus.connect()

        def slot_in_use() -> list[int] | None:
            mqtt_publish.single(topic, json.dumps(reading), hostname=settings.mqtt_host, port=settings.mqtt_port)
            block = modbus.read_input_registers(1000, count=8, device_id=1)
            return block.registers if not block.isError() and block.registers[6] == 1 else None

        block = wait_until(slot_in_use, what="R-7 in the bridge's first Modbus slot")
        modbus.close()
        assert block[0] == 0  # quality good
        policies = endpoint_policies(f"opc.tcp://127.0.0.1:{ports['opcua']}/factory/bridge/")
        assert policies == {"Basic256Sha256/Sign", "Basic256Sha256/SignAndEncrypt"}  # secure by default
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends
        code = process.wait(timeout=30)
    assert code == 0, "".join(output) + (process.stdout.read() if process.stdout else "")
    assert (tmp_path / "data" / "scada_bridge" / "pki").is_dir()  # the server certificate, kept for next time


def test_a_secure_bridge_without_users_refuses_to_start_with_one_line(
    tmp_path: Path, mqtt_url: str, free_port: Callable[[], int]
) -> None:
    env = bridge_env(tmp_path, mqtt_url, {"modbus": free_port(), "opcua": free_port()})
    process = start_bridge(env)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "FACTORY_OPCUA_USERS" in out and "Traceback" not in out
