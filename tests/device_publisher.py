"""A plain MQTT client for tests, publishing as a device or the platform's publishers do (QoS 1, confirmed)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from factory_pipelines.mqtt import connect_and_wait, make_client


class Publisher:
    def __init__(self, url: str) -> None:
        self.client = make_client(f"test-pub-{uuid.uuid4().hex[:8]}")
        connect_and_wait(self.client, url)

    def publish(self, topic: str, payload: bytes | dict[str, Any]) -> None:
        body = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        info = self.client.publish(topic, body, qos=1)
        info.wait_for_publish(5)
        assert info.is_published(), f"broker did not take {topic}"

    async def publish_async(self, topic: str, payload: bytes | dict[str, Any]) -> None:
        """The same from a test's event loop, which keeps serving (e.g. an OPC UA server) while it waits."""
        await asyncio.to_thread(self.publish, topic, payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
