"""Three collectors on a shared subscription; one is SIGKILLed mid-stream and its share is taken over.

What Mosquitto (2.0.11, the broker the platform runs) does with the share of a killed member of
`$share/collectors/...` whose session is persistent, measured with raw paho clients and here:

* it does NOT hand that member's messages to the other members. The QoS 1 messages in flight to
  it (sent, not yet acknowledged) stay in its session;
* it keeps choosing the offline session in its round robin: each new message has the same chance
  of going to the dead member as to a live one (with two members, 50 of 100 messages published
  after the kill went to the dead one's session, none to the survivor);
* all of it is delivered when a client with the same client id reconnects (the in-flight ones
  again, flagged DUP, then the queued ones), however long that takes within the session expiry;
* if the session ends instead (a session expiry of 0, or its expiry passing), what it held is
  discarded, not redistributed: with an expiry of 0 the member's whole share (in flight and
  queued) was lost, and with an expiry of 2 s everything routed to it during those 2 s.
  (MQTT 5 says a server SHOULD then give it to another member; Mosquitto does not, see
  eclipse-mosquitto/mosquitto#2662.) So a short session expiry would turn a crash into loss, and
  the collector keeps a long one (`mqtt.PERSISTENT_SESSION_EXPIRY_S`, 7 days).

So "the others take over its share" means, with Mosquitto: the survivors keep taking their own
shares at once, and the dead member's share is recovered by a replacement that runs with the same
collector id on the same data dir (a supervisor restarting it, a Kubernetes StatefulSet pod with
its volume, or an operator running `FACTORY_COLLECTOR_ID=X factory collect --shared` on a host
that has X's disk). Same id matters twice: it names the broker session that holds the share, and
its data dir holds the part files of the window that was open (rows already acknowledged) and the
windows from which the replacement's dedup index is rebuilt, so redeliveries are dropped.

The test plays that supervisor: three `factory collect --shared` processes (ids shared-a/b/c) on a
Mosquitto of its own, a numbered QoS 1 stream, SIGKILL of shared-b once every member has written
rows, then

1. the survivors write rows published after the kill (they keep taking new messages);
2. a replacement `factory collect --shared` with id shared-b starts on the same data dir, receives
   messages that were published while shared-b was dead (its stranded share: none of them went
   to a survivor) and then new ones (it is a full member again);
3. after a clean stop of all three, every message the broker acknowledged to the publisher is in
   exactly one sealed window, and no window key appears twice.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from factory_pipelines.broker import RunningBroker, start_local_broker
from factory_pipelines.windows import WINDOW_SCHEMA, parse_window_key, sealed_dir
from tests.factory_processes import (  # noqa: F401 - factory_processes is a fixture
    FactoryProcess,
    FactoryProcesses,
    factory_env,
    factory_processes,
)
from tests.numbered_stream import NumberedStream
from tests.waiting import wait_until

MEMBERS = ("shared-a", "shared-b", "shared-c")
KILLED = "shared-b"
SURVIVORS = tuple(member for member in MEMBERS if member != KILLED)
STREAM_ASSETS = ("press-1", "press-2", "press-3")
STREAM_RATE_PER_S = 300.0
START_TIMEOUT_S = 60.0  # three Python processes importing their stack at once on two shared cores
STEP_TIMEOUT_S = 30.0
COLUMNS = ["asset_id", "seq", "ts", "received_at"]


class RowsOnDisk:
    """Every row the collectors made durable (sealed windows and open parts), with its collector id.

    Sealed windows and part files never change once they exist, so each is read once; a part sealed
    and removed between listing and reading is skipped (its rows are in a sealed file by then).
    Polled while the collectors run, so it must stay cheap on two cores.
    """

    def __init__(self, windows_dir: Path) -> None:
        self.windows_dir = windows_dir
        self._frames: dict[Path, pl.DataFrame] = {}

    def _read(self, path: Path, key: str) -> pl.DataFrame | None:
        frame = self._frames.get(path)
        if frame is None:
            try:
                raw = pl.read_parquet(path, columns=COLUMNS) if path.suffix == ".parquet" else pl.read_ipc(path)
            except FileNotFoundError:
                return None
            frame = raw.select(COLUMNS).with_columns(pl.lit(parse_window_key(key)[1]).alias("collector"))
            self._frames[path] = frame
        return frame

    def frame(self) -> pl.DataFrame:
        # Parts first, then sealed files: a window sealed in between is counted from its sealed file only.
        parts = sorted((self.windows_dir / "open").glob("*/part-*.arrow"))
        sealed = sorted(sealed_dir(self.windows_dir).glob("*/*.parquet"))
        sealed_keys = {path.stem for path in sealed}
        frames = [self._read(path, path.stem) for path in sealed]
        frames += [self._read(path, path.parent.name) for path in parts if path.parent.name not in sealed_keys]
        present = [frame for frame in frames if frame is not None]
        if not present:
            return pl.DataFrame(schema={**{name: WINDOW_SCHEMA[name] for name in COLUMNS}, "collector": pl.String})
        return pl.concat(present)

    def of(self, collector: str, *, published_after: datetime) -> pl.DataFrame:
        frame = self.frame()
        return frame.filter(pl.col("collector") == collector, pl.col("ts") > published_after)


@pytest.fixture
def own_broker(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[RunningBroker]:
    """A Mosquitto of the test's own: the killed member's session must not meet other tests' clients."""
    if shutil.which("mosquitto") is None:
        pytest.skip("shared subscriptions with persistent sessions need Mosquitto (amqtt speaks MQTT 3.1.1 only)")
    with start_local_broker(free_port(), tmp_path / "broker", prefer="mosquitto") as broker:
        yield broker


def wait_for_every_acknowledged_message_on_disk(
    stream: NumberedStream, unacknowledged: object, disk: RowsOnDisk
) -> set[tuple[str, int]]:
    """After `stream.stop_and_settle()`: nothing refused, unacknowledged or unrouted, and all of it written."""
    assert not unacknowledged and not stream.refused, (unacknowledged, stream.refused)
    assert not stream.unrouted, f"{len(stream.unrouted)} messages found no subscriber"
    acknowledged = stream.acknowledged
    wait_until(
        lambda: set(disk.frame().select("asset_id", "seq").iter_rows()) >= acknowledged,
        STEP_TIMEOUT_S,
        "every acknowledged message on disk",
    )
    return acknowledged


def sealed_exactly_once(windows_dir: Path, acknowledged: set[tuple[str, int]]) -> pl.DataFrame:
    """With every member stopped: each acknowledged message in one sealed window, each key once, no open part;
    the sealed rows."""
    assert list((windows_dir / "open").glob("*/part-*")) == []
    keys = [path.stem for path in sealed_dir(windows_dir).glob("*/*.parquet")]
    assert len(keys) == len(set(keys)), "a window key was sealed twice"
    rows = RowsOnDisk(windows_dir).frame()
    doubled = rows.group_by("asset_id", "seq").len().filter(pl.col("len") > 1)
    assert doubled.height == 0, f"{doubled.height} messages in two windows, e.g. {doubled.head(5).rows()}"
    assert set(rows.select("asset_id", "seq").iter_rows()) == acknowledged
    assert rows.height == len(acknowledged)
    return rows


def start_member(processes: FactoryProcesses, env: dict[str, str], collector_id: str, name: str) -> FactoryProcess:
    """`factory collect --shared` as an operator or a supervisor would run it, with its own collector id."""
    return processes.start(name, ["collect", "--shared"], env | {"FACTORY_COLLECTOR_ID": collector_id})


def members_env(data_dir: Path, broker: RunningBroker) -> dict[str, str]:
    """What every member of these tests runs with: one data dir, 2 s windows, quick flushes, INFO logs."""
    return factory_env(
        FACTORY_DATA_DIR=str(data_dir),
        FACTORY_MQTT_URL=broker.url,
        FACTORY_WINDOW_SECONDS="2",
        FACTORY_COLLECTOR_FLUSH_MS="20",
        FACTORY_LOG_LEVEL="INFO",
    )


def start_subscribed_members(
    processes: FactoryProcesses, env: dict[str, str], members: Iterable[str]
) -> dict[str, FactoryProcess]:
    """A member per collector id (named after it), each waited for until it joined the shared subscription."""
    started = {member: start_member(processes, env, member, member) for member in members}
    for process in started.values():
        process.wait_for_log("subscribed to $share/collectors/", timeout=START_TIMEOUT_S)
    return started


def wait_for_first_shares(disk: RowsOnDisk, members: Iterable[str], since: datetime) -> None:
    """Each member has written messages published after `since`: the broker is splitting the stream."""
    for member in members:
        wait_until(
            lambda m=member: disk.of(m, published_after=since).height > 0,
            STEP_TIMEOUT_S,
            f"{member} to write its first share",
        )


@pytest.mark.timeout(180)
def test_a_killed_member_s_share_is_recovered_by_its_replacement_and_nothing_is_lost_or_doubled(
    tmp_path: Path,
    own_broker: RunningBroker,
    factory_processes: FactoryProcesses,  # noqa: F811
) -> None:
    data_dir = tmp_path / "data"
    windows_dir = data_dir / "windows"
    env = members_env(data_dir, own_broker)
    members = start_subscribed_members(factory_processes, env, MEMBERS)
    disk = RowsOnDisk(windows_dir)
    stream = NumberedStream(
        own_broker.url, site="main", assets=STREAM_ASSETS, rate_per_s=STREAM_RATE_PER_S, client_id="failover-stream"
    )
    stream.start()
    try:
        wait_for_first_shares(disk, MEMBERS, since=datetime.now(UTC))

        members[KILLED].kill()  # SIGKILL, then waits until the process is gone
        dead_at = datetime.now(UTC)
        for member in SURVIVORS:
            wait_until(
                lambda m=member: disk.of(m, published_after=dead_at).height >= 50,
                STEP_TIMEOUT_S,
                f"{member} to keep taking messages published after {KILLED} died",
            )

        # The supervisor's part: the same collector id, the same data dir, the operator's command.
        restarted_at = datetime.now(UTC)
        replacement = start_member(factory_processes, env, KILLED, f"{KILLED}-replacement")
        replacement.wait_for_log("session present: True", timeout=START_TIMEOUT_S)
        replacement.wait_for_log("subscribed to $share/collectors/", timeout=STEP_TIMEOUT_S)
        rejoined_at = datetime.now(UTC)
        wait_until(
            lambda: disk.of(KILLED, published_after=rejoined_at).height > 0,
            STEP_TIMEOUT_S,
            f"the replacement {KILLED} to take new messages too",
        )
        unacknowledged = stream.stop_and_settle()
    finally:
        if stream.is_alive():
            stream.stop_and_settle()
    acknowledged = wait_for_every_acknowledged_message_on_disk(stream, unacknowledged, disk)
    for process in (*(members[member] for member in SURVIVORS), replacement):
        assert process.stop() == 0, process.log_tail()

    # Exactly once, in sealed windows only, and each window key once.
    rows = sealed_exactly_once(windows_dir, acknowledged)
    assert set(rows["collector"]) == set(MEMBERS)

    # The killed member's share: what the broker routed to shared-b while it was dead waited in its
    # session and reached its replacement, not a survivor.
    while_dead = rows.filter(pl.col("ts") > dead_at, pl.col("ts") < restarted_at)
    stranded = while_dead.filter(pl.col("collector") == KILLED)
    print(
        f"published while {KILLED} was dead: {while_dead.height}; in its session until the replacement came: "
        f"{stranded.height}; per member: {dict(while_dead.group_by('collector').len().iter_rows())}"
    )
    assert stranded.height > 0, "the broker gave the dead member's share to the survivors (update the docs)"
    assert stranded.height >= 0.2 * while_dead.height, "the dead member should keep about a third of the stream"
    assert stranded["received_at"].min() >= restarted_at, "received before the replacement started?"
    replacement_log = replacement.log()
    assert "recovering the windows of collector shared-b" in replacement_log
