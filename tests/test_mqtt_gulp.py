"""GulpReadingClient: a backlog read ahead in gulps arrives whole and in order; ack_all acks exactly what it is told."""

from __future__ import annotations

import select
import time
from collections.abc import Callable

import paho.mqtt.client as paho

from factory_pipelines.mqtt import GulpReadingClient, connect, make_client

TOPIC = "gulp-test/backlog"  # outside factory/#: no other test's session queues these
DEADLINE_S = 20.0


def _payloads(count: int) -> list[bytes]:
    """Mostly small messages, with some larger than a gulp so that packets straddle gulp boundaries."""
    sizes = {17: 100_000, 61: GulpReadingClient.GULP_BYTES - 3, 62: 300_000, 140: 70_000}
    return [f"{index:05d}:".encode() + b"x" * sizes.get(index, 280) for index in range(count)]


def _publish_all(url: str, payloads: list[bytes]) -> None:
    publisher = make_client("gulp-test-publisher")
    connect(publisher, url)
    publisher.loop_start()
    try:
        infos = [publisher.publish(TOPIC, payload, qos=1) for payload in payloads]
        for info in infos:
            info.wait_for_publish(DEADLINE_S)
            assert info.is_published()
    finally:
        publisher.disconnect()
        publisher.loop_stop()


def _drive(client: GulpReadingClient, until: Callable[[], object]) -> None:
    """The collector's loop in small: wait on the socket only when nothing is read ahead."""
    deadline = time.monotonic() + DEADLINE_S
    while not until():
        assert time.monotonic() < deadline, "the client did not receive what was expected in time"
        sock = client.socket()
        assert sock is not None
        in_hand = client.buffered_bytes() > 0
        readable, _, _ = select.select([sock], [sock] if client.want_write() else [], [], 0.0 if in_hand else 0.2)
        if readable or in_hand:
            assert client.loop_read() == paho.MQTT_ERR_SUCCESS
        if client.want_write():
            assert client.loop_write() == paho.MQTT_ERR_SUCCESS
        client.loop_misc()


def _wait_for_acks_to_land(client: GulpReadingClient) -> None:
    """A QoS 1 publish answered: the broker has handled everything written before it (one ordered stream).

    Only then may the test disconnect and expect no redelivery: acknowledgements still in flight when
    the connection closes can be lost, and the broker then resends (at least once, as MQTT promises).
    """
    info = client.publish("gulp-test/barrier", b"", qos=1)
    _drive(client, info.is_published)


def _session_client(
    url: str, client_id: str, received: list[paho.MQTTMessage], *, subscribe: bool = True
) -> GulpReadingClient:
    """Connected (and subscribed) when it returns; without `subscribe`, the session's subscription is relied on."""
    client = make_client(client_id, manual_ack=True, client_class=GulpReadingClient)
    ready: list[bool] = []
    if subscribe:
        client.on_connect = lambda c, *_: c.subscribe(TOPIC, qos=1)
        client.on_subscribe = lambda *_: ready.append(True)
    else:
        client.on_connect = lambda *_: ready.append(True)
    client.on_message = lambda _c, _u, message: received.append(message)
    connect(client, url, clean_start=False, session_expiry_s=600)
    _drive(client, lambda: ready)
    return client


def _queue_backlog(url: str, client_id: str, payloads: list[bytes]) -> None:
    """A persistent session subscribed to TOPIC, its client away while `payloads` are published into it."""
    client = _session_client(url, client_id, [])
    client.disconnect()
    _drive(client, lambda: client.socket() is None)
    _publish_all(url, payloads)


def test_a_backlog_arrives_whole_in_order_and_only_what_ack_all_was_given_is_acknowledged(mqtt_url: str) -> None:
    payloads = _payloads(200)
    _queue_backlog(mqtt_url, "gulp-test-subscriber", payloads)
    received: list[paho.MQTTMessage] = []
    client = _session_client(mqtt_url, "gulp-test-subscriber", received)
    _drive(client, lambda: len(received) >= len(payloads))
    assert [message.payload for message in received] == payloads

    acknowledged = [(message.mid, message.qos) for message in received[:150]]
    for start, size in ((0, 1), (1, 2), (3, 97), (100, 50)):  # one alone, then batches joined into one send
        client.ack_all(acknowledged[start : start + size])
    _wait_for_acks_to_land(client)
    client.disconnect()
    _drive(client, lambda: client.socket() is None)

    # Back again: the broker resends the 50 never acknowledged, and then a message sent afterwards.
    again: list[paho.MQTTMessage] = []
    client = _session_client(mqtt_url, "gulp-test-subscriber", again)
    _publish_all(mqtt_url, [b"marker"])
    _drive(client, lambda: any(message.payload == b"marker" for message in again))
    assert [message.payload for message in again] == [*payloads[150:], b"marker"]
    client.ack_all([(message.mid, message.qos) for message in again])
    _wait_for_acks_to_land(client)
    client.disconnect()


def test_bytes_read_ahead_before_a_reconnect_are_dropped_with_their_connection(mqtt_url: str) -> None:
    payloads = _payloads(200)
    _queue_backlog(mqtt_url, "gulp-test-reconnect", payloads)
    received: list[paho.MQTTMessage] = []
    client = _session_client(mqtt_url, "gulp-test-reconnect", received, subscribe=False)
    _drive(client, lambda: client.buffered_bytes() > 0 or len(received) == len(payloads))  # one packet per read
    assert client.buffered_bytes() > 0 and len(received) < len(payloads), "the test needs bytes read ahead"

    received.clear()
    assert client.reconnect() == paho.MQTT_ERR_SUCCESS  # a new socket: what the old one had read ahead is void
    _publish_all(mqtt_url, [b"marker"])
    _drive(client, lambda: any(message.payload == b"marker" for message in received))
    assert [message.payload for message in received] == [*payloads, b"marker"]  # none was acknowledged
    client.ack_all([(message.mid, message.qos) for message in received])
    _wait_for_acks_to_land(client)
    client.disconnect()
