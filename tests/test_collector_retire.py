"""Retiring a member of the shared subscription for good: `factory collect --shared --retire`.

Mosquitto never hands a stopped member's share to the others (tests/test_collector_shared_failover.py):
its persistent session keeps its in-flight messages and goes on collecting a share of every new
one. A retiring run with the member's id and data dir drains that session and then ends it; what
Mosquitto 2.0.11 does with an unsubscribed session and a DISCONNECT with Session Expiry Interval 0
(measured with raw paho clients) is in the docstring of sensors/collector.py.

The test: two `factory collect --shared` members (shared-a, shared-b) on a Mosquitto of its own, a
numbered QoS 1 stream that never stops until the end, then

1. shared-b is SIGKILLed mid-stream, and the stream goes on (part of it is routed to b's session);
2. `factory collect --shared --retire` runs as shared-b on b's data dir while the stream goes on,
   and exits 0 by itself, having written what b's session held (b's in-flight messages and its
   queued share) into b's windows;
3. b's session is gone (a client with its id finds no session), and everything published from
   then on reaches shared-a only;
4. after a clean stop of shared-a, every message the broker acknowledged to the publisher is in
   exactly one sealed window, no window key appears twice, and no open part is left.

A second test runs the collector in-process: a member stopped cleanly, a --retire run stopped
before it is done (not retired, the session kept but out of the group), a second run that
finishes, and a third that finds no session left and ends at once.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from factory_pipelines import mqtt
from factory_pipelines.broker import RunningBroker
from factory_pipelines.cli import app
from factory_pipelines.settings import FactorySettings, load_settings
from sensors import collector as collector_module
from sensors.collector import Collector, CollectorStats
from tests.factory_processes import (  # noqa: F401 - factory_processes is a fixture
    FactoryProcesses,
    factory_processes,
)
from tests.numbered_stream import NO_MATCHING_SUBSCRIBERS, NumberedStream, durable_keys
from tests.test_collector_shared_failover import (  # noqa: F401 - own_broker is a fixture
    RowsOnDisk,
    members_env,
    own_broker,
    sealed_exactly_once,
    start_subscribed_members,
    wait_for_every_acknowledged_message_on_disk,
    wait_for_first_shares,
)
from tests.waiting import wait_until

KEPT = "shared-a"
RETIRED = "shared-b"
STREAM_ASSETS = ("press-1", "press-2", "press-3")
STREAM_RATE_PER_S = 300.0
START_TIMEOUT_S = 60.0  # Python processes importing their stack at once on two shared cores
STEP_TIMEOUT_S = 30.0


def broker_has_session(url: str, client_id: str) -> bool:
    """Connect with `client_id` and clean start off, and report whether the broker still had its session.

    This client asks for no session expiry, so the session it may have created ends with it.
    """
    present: list[bool] = []
    answered = threading.Event()

    def on_connect(_c: Any, _u: Any, flags: Any, _reason: Any, _props: Any) -> None:
        present.append(bool(flags.session_present))
        answered.set()

    client = mqtt.make_client(client_id)
    client.on_connect = on_connect
    mqtt.connect_and_wait(client, url, clean_start=False)
    try:
        assert answered.wait(10), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return present[0]


def publish_numbered(url: str, asset: str, seqs: range) -> list[int]:
    """Publish QoS 1 telemetry numbered `seqs`; the PUBACK reason code of each, once all are acknowledged."""
    codes: dict[int, int] = {}
    done = threading.Condition()

    def on_publish(_c: Any, _u: Any, mid: int, reason: Any, _props: Any) -> None:
        with done:
            codes[mid] = int(reason.value)
            done.notify_all()

    client = mqtt.make_client(f"retire-publisher-{seqs.start}")
    client.on_publish = on_publish
    mqtt.connect_and_wait(client, url)
    try:
        mids = [
            client.publish(
                f"factory/main/{asset}/telemetry",
                f'{{"asset_id": "{asset}", "seq": {seq}, "ts": "{datetime.now(UTC).isoformat()}"}}',
                qos=1,
            ).mid
            for seq in seqs
        ]
        with done:
            assert done.wait_for(lambda: all(mid in codes for mid in mids), timeout=STEP_TIMEOUT_S), "no PUBACKs"
    finally:
        client.disconnect()
        client.loop_stop()
    return [codes[mid] for mid in mids]


class CollectorThread:
    """`Collector.run` on a thread, as `factory collect` runs it; `stop()` sets its stop event and joins it."""

    def __init__(self, settings: FactorySettings, **options: Any) -> None:
        self.collector = Collector(settings, shared=True, **options)
        self.stop_event = threading.Event()
        self.outcome: list[CollectorStats | BaseException] = []
        self.thread = threading.Thread(target=self._run, name=f"collector-{settings.collector_id}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.outcome.append(self.collector.run(self.stop_event))
        except BaseException as exc:  # surfaced by result()
            self.outcome.append(exc)

    def result(self, timeout: float = STEP_TIMEOUT_S) -> CollectorStats:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the collector did not end in time"
        outcome = self.outcome[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def stop(self) -> CollectorStats:
        self.stop_event.set()
        return self.result()


def test_retire_without_shared_is_a_clear_error() -> None:
    result = CliRunner().invoke(app, ["collect", "--retire"])
    assert result.exit_code == 2
    assert "--retire needs --shared" in result.output


@pytest.mark.timeout(120)
def test_a_retired_member_s_session_is_drained_then_ended_and_nothing_is_lost_or_doubled(
    tmp_path: Path,
    own_broker: RunningBroker,  # noqa: F811
    factory_processes: FactoryProcesses,  # noqa: F811
) -> None:
    data_dir = tmp_path / "data"
    windows_dir = data_dir / "windows"
    env = members_env(data_dir, own_broker)
    kept, doomed = start_subscribed_members(factory_processes, env, (KEPT, RETIRED)).values()
    disk = RowsOnDisk(windows_dir)
    stream = NumberedStream(
        own_broker.url, site="main", assets=STREAM_ASSETS, rate_per_s=STREAM_RATE_PER_S, client_id="retire-stream"
    )
    stream.start()
    try:
        wait_for_first_shares(disk, (KEPT, RETIRED), since=datetime.now(UTC))

        doomed.kill()  # SIGKILL mid-stream: in-flight messages and an open window stay behind
        dead_at = datetime.now(UTC)
        wait_until(
            lambda: disk.of(KEPT, published_after=dead_at).height >= 150,
            STEP_TIMEOUT_S,
            f"{KEPT} to take messages published after {RETIRED} died (as many go to {RETIRED}'s session)",
        )

        retiring_at = datetime.now(UTC)
        retiring = factory_processes.start(
            f"{RETIRED}-retire", ["collect", "--shared", "--retire"], env | {"FACTORY_COLLECTOR_ID": RETIRED}
        )
        wait_until(lambda: not retiring.alive(), START_TIMEOUT_S, f"the --retire run of {RETIRED} to end by itself")
        assert retiring.process.returncode == 0, retiring.log_tail()
        assert not broker_has_session(own_broker.url, f"factory-{RETIRED}"), f"{RETIRED}'s session is still there"
        retired_at = datetime.now(UTC)

        wait_until(
            lambda: disk.of(KEPT, published_after=retired_at).height >= 150,
            STEP_TIMEOUT_S,
            f"{KEPT} to take messages published after {RETIRED} was retired",
        )
        unacknowledged = stream.stop_and_settle()
    finally:
        if stream.is_alive():
            stream.stop_and_settle()
    acknowledged = wait_for_every_acknowledged_message_on_disk(stream, unacknowledged, disk)
    assert kept.stop() == 0, kept.log_tail()

    # Exactly once, in sealed windows only, and each window key once.
    rows = sealed_exactly_once(windows_dir, acknowledged)

    # What b's session held (published while b was dead) was drained by the retiring run into b's windows.
    while_dead = rows.filter(pl.col("ts") > dead_at, pl.col("ts") < retiring_at)
    drained = while_dead.filter(pl.col("collector") == RETIRED)
    after = rows.filter(pl.col("ts") > retired_at)
    retire_log = retiring.log()
    print(
        f"published while {RETIRED} was dead: {while_dead.height}, of them drained by --retire: {drained.height}; "
        f"published after it was retired: {after.height}, per member: {dict(after.group_by('collector').len().rows())}"
    )
    assert drained.height >= 0.3 * while_dead.height, "the dead member's session should hold about half the stream"
    assert drained["received_at"].min() >= retiring_at, "received before the --retire run started?"
    assert "recovering the windows of collector shared-b" in retire_log
    assert "session present: True" in retire_log
    assert "marker received: everything the session held has come in" in retire_log
    assert f"retired collector {RETIRED}: drained" in retire_log
    # Once retired, b's session is gone and the whole stream reaches a.
    assert after.height >= 150
    assert set(after["collector"]) == {KEPT}


@pytest.mark.timeout(60)
def test_a_retire_run_stopped_early_keeps_the_session_and_a_later_run_finishes(
    tmp_path: Path,
    own_broker: RunningBroker,  # noqa: F811
) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data", mqtt_url=own_broker.url, window_seconds=2, collector_id="retire-me"
    )
    member = CollectorThread(settings)
    wait_until(lambda: member.collector.subscribed.is_set(), STEP_TIMEOUT_S, "the member to subscribe")
    assert not member.stop().retired  # a clean stop: the session stays, in the group
    # The only member is offline: the group routes everything to its session, which queues it.
    assert set(publish_numbered(own_broker.url, "press-1", range(0, 50))) == {0}

    # Stopped before the session counts as drained (a long quiet period keeps it from ending first).
    interrupted = CollectorThread(settings, retire=True, retire_quiet_s=60.0)
    retirement = interrupted.collector._retirement
    assert retirement is not None
    wait_until(lambda: retirement.marker_seen, STEP_TIMEOUT_S, "the first --retire run to see its marker")
    stats = interrupted.stop()
    assert stats.session_present is True and not stats.retired
    # Out of the group already: nothing new is routed to the session, and with no other member, to nobody.
    assert set(publish_numbered(own_broker.url, "press-1", range(50, 60))) == {NO_MATCHING_SUBSCRIBERS}

    finishing = CollectorThread(settings, retire=True)
    stats = finishing.result()
    assert stats.session_present is True and stats.retired, stats
    again = CollectorThread(settings, retire=True)
    stats = again.result()
    assert stats.session_present is False and stats.retired and stats.received == 0, stats

    assert durable_keys(settings.windows_dir) == {("press-1", seq) for seq in range(0, 50)}
    assert list((settings.windows_dir / "open").glob("*/part-*")) == []


@pytest.mark.timeout(60)
def test_without_its_marker_a_retire_run_ends_after_a_longer_quiet_period(
    tmp_path: Path,
    own_broker: RunningBroker,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A marker that never comes back (here Mosquitto drops clients' publishes to $SYS; in a plant, an ACL)."""
    monkeypatch.setattr(collector_module, "RETIRE_MARKER_TOPIC", "$SYS/retire/{collector_id}")
    monkeypatch.setattr(collector_module, "_RETIRE_QUIET_WITHOUT_MARKER_S", 1.5)
    settings = load_settings(
        data_dir=tmp_path / "data", mqtt_url=own_broker.url, window_seconds=2, collector_id="retire-me"
    )
    member = CollectorThread(settings)
    wait_until(lambda: member.collector.subscribed.is_set(), STEP_TIMEOUT_S, "the member to subscribe")
    member.stop()
    assert set(publish_numbered(own_broker.url, "press-1", range(0, 50))) == {0}

    retiring = CollectorThread(settings, retire=True, retire_quiet_s=0.2)
    stats = retiring.result()
    assert stats.retired and stats.received == 50, stats
    retirement = retiring.collector._retirement
    assert retirement is not None and retirement.marker is not None and not retirement.marker_seen
    assert durable_keys(settings.windows_dir) == {("press-1", seq) for seq in range(0, 50)}
