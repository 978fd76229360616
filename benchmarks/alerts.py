"""Alert latency: from an alert's cause to the Twilio request, through the real platform.

1. `POST /alert` of a CRITICAL alert -> the text request at Twilio. `factory serve` (uvicorn) runs
   against a fresh store, the notifier talks to a Twilio stand-in on loopback with the real
   `twilio` client; each POST names a new asset, so each is a new alert and one text. Baseline in
   the same run: the same client sending the same texts straight to the stand-in.
2. A prediction partition that breaks a rule -> the text, at the default 60 s window. `factory up`
   runs the whole platform with one extra rule, "any energy prediction for the probe machine is
   CRITICAL, once per window", while a probe machine publishes twice a second. Reported: from
   each probe message, and from each window's end, to the text of that window's alert.

    .venv/bin/python benchmarks/alerts.py                  # both parts (about 12 minutes)
    .venv/bin/python benchmarks/alerts.py --skip-stream --posts 200 --no-write
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the Twilio stand-in lives with the tests
from latency import _free_port, _quantile, publish_probe  # noqa: E402

from tests.twilio_standin import TwilioStandIn  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "alerts.md"
PROBE = "alert-probe"
ON_CALL = "+15551110001"
PROBE_RULES = f"""
rules:
  - name: bench_probe_window
    model: energy_iforest
    when: {{field: asset_id, equals: {PROBE}}}
    severity: CRITICAL
    type: ENERGY_OPTIMIZATION
    message: "{{window_key}}"
    dedup_key: "{{asset_id}}:{{window_key}}"
    cooldown: 0s
"""


@dataclass
class Quantiles:
    samples: int
    p50: float
    p95: float
    worst: float

    @classmethod
    def of(cls, values: list[float]) -> Quantiles:
        return cls(len(values), _quantile(values, 0.5), _quantile(values, 0.95), max(values))


BENCH_KEY = "bench-operator-key-0001"  # POST /alert needs the operator role


def _env(data: Path, twilio: TwilioStandIn, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY_", "MLFLOW_", "DAGSTER_", "TWILIO_"))}
    env.update(
        FACTORY_DATA_DIR=str(data),
        TWILIO_ACCOUNT_SID=twilio.account_sid,
        TWILIO_AUTH_TOKEN=twilio.auth_token,
        TWILIO_FROM_NUMBER="+15550000000",
        TWILIO_TO_NUMBERS=ON_CALL,
        TWILIO_API_BASE_URL=twilio.base_url,
        FACTORY_SMS_RATE_LIMIT="100000",
        FACTORY_API_KEYS=f"{BENCH_KEY}:operator",
        **extra,
    )
    return env


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the platform exited; see {log}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s; see {log}")


def post_to_text(posts: int) -> tuple[Quantiles, Quantiles]:
    """(POST -> Twilio request, direct client -> Twilio request), in seconds."""
    with TwilioStandIn() as twilio:
        client = twilio.client(timeout_s=5)
        direct: list[float] = []
        for i in range(posts):
            started = datetime.now(UTC)
            client.messages.create(to=ON_CALL, from_="+15550000000", body=f"baseline {i}")
            direct.append((twilio.message_posts[-1].received_at - started).total_seconds())

        data = Path(tempfile.mkdtemp(prefix="alerts-post-"))
        port = _free_port()
        env = _env(data, twilio, FACTORY_API_PORT=str(port), FACTORY_MQTT_URL="mqtt://127.0.0.1:9")
        log = data / "serve.log"
        server = subprocess.Popen(
            [sys.executable, "-m", "factory_pipelines.cli", "serve"],
            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            api = f"http://127.0.0.1:{port}"
            _wait_for(f"{api}/health", server, log, 120)
            headers = {"X-API-Key": BENCH_KEY}
            warm_up = {"level": "INFO", "type": "WARM_UP", "source": "bench", "details": "-"}
            httpx.post(f"{api}/alert", json=warm_up, headers=headers).raise_for_status()
            via_api: list[float] = []
            with httpx.Client(base_url=api, timeout=30, headers=headers) as http:
                for i in range(posts):
                    asset = f"bench-{i}"
                    before = len(twilio.message_posts)
                    started = datetime.now(UTC)
                    body = {"level": "CRITICAL", "type": "RUL_LOW", "source": "bench", "details": "x"}
                    answer = http.post("/alert", json={**body, "asset_id": asset})
                    answer.raise_for_status()
                    [text] = twilio.message_posts[before:]
                    assert f"Asset: {asset}" in text.form["Body"]
                    via_api.append((text.received_at - started).total_seconds())
        finally:
            os.killpg(server.pid, signal.SIGINT)
            server.wait(60)
    return Quantiles.of(via_api), Quantiles.of(direct)


def window_to_text(windows: int) -> tuple[Quantiles, Quantiles, float]:
    """(probe message -> text, window end -> text) in seconds at the default window, and its length."""
    window_s = 60.0
    with TwilioStandIn() as twilio:
        data = Path(tempfile.mkdtemp(prefix="alerts-stream-"))
        rules = data / "bench_rules.yaml"
        rules.write_text(PROBE_RULES)
        ports = {name: _free_port() for name in ("mqtt", "api", "dagster", "mlflow")}
        mqtt_url = f"mqtt://127.0.0.1:{ports['mqtt']}"
        env = _env(
            data, twilio,
            FACTORY_MQTT_URL=mqtt_url, FACTORY_API_PORT=str(ports["api"]), FACTORY_DAGSTER_PORT=str(ports["dagster"]),
            FACTORY_MLFLOW_PORT=str(ports["mlflow"]), FACTORY_WINDOW_SECONDS=str(window_s),
            FACTORY_ALERT_RULES_FILE=str(rules),
        )  # fmt: skip
        log = data / "up.log"
        platform = subprocess.Popen(
            [sys.executable, "-m", "factory_pipelines.cli", "up", "--no-train-missing"],
            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        sent: list[datetime] = []
        stop = threading.Event()

        try:
            _wait_for(f"http://127.0.0.1:{ports['api']}/health", platform, log, 300)
            thread = threading.Thread(target=publish_probe, args=(mqtt_url, PROBE, sent, stop), daemon=True)
            thread.start()
            probe_started = datetime.now(UTC)
            give_up = time.monotonic() + (windows + 4) * window_s + 600
            texts: dict[str, datetime] = {}
            while len(texts) < windows + 1:
                if time.monotonic() > give_up:
                    raise RuntimeError(f"texts stopped coming; see {log}")
                if platform.poll() is not None:
                    raise RuntimeError(f"factory up exited; see {log}")
                for post in twilio.message_posts:
                    lines = post.form.get("Body", "").splitlines()
                    msg_line = next((line for line in lines if line.startswith("Msg: ")), "Msg: ?")
                    texts.setdefault(msg_line.removeprefix("Msg: ").strip(), post.received_at)
                time.sleep(0.25)
            stop.set()
            thread.join(30)
        finally:
            os.killpg(platform.pid, signal.SIGINT)
            platform.wait(120)

    from factory_pipelines.windows import window_bounds

    from_message: list[float] = []
    from_end: list[float] = []
    for key, texted in texts.items():
        start, end = window_bounds(key, window_s)
        if start < probe_started:
            continue  # partly probed
        from_end.append((texted - end).total_seconds())
        from_message += [(texted - t).total_seconds() for t in sent if start <= t < end]
    return Quantiles.of(from_message), Quantiles.of(from_end), window_s


def render(command: str, post: tuple[Quantiles, Quantiles] | None, stream: tuple | None) -> str:
    lines = [
        "# Alert latency",
        "",
        f"`{command}` on {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
    ]
    if post:
        api, direct = post
        lines += [
            "## POST /alert (CRITICAL) -> Twilio request",
            "",
            "| path | samples | p50 ms | p95 ms | max ms |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| POST /alert -> text request | {api.samples} | {api.p50 * 1e3:.1f} | {api.p95 * 1e3:.1f} | "
            f"{api.worst * 1e3:.1f} |",
            f"| baseline: twilio client -> stand-in | {direct.samples} | {direct.p50 * 1e3:.1f} | "
            f"{direct.p95 * 1e3:.1f} | {direct.worst * 1e3:.1f} |",
            "",
            f"p95 ratio to the baseline: {api.p95 / direct.p95:.1f}x; target p95 under 1 s: "
            f"{'met' if api.p95 < 1.0 else 'NOT met'}.",
            "",
        ]
    if stream:
        from_message, from_end, window_s = stream
        lines += [
            f"## Prediction partition breaking a rule -> text ({window_s:.0f} s windows)",
            "",
            "| from | samples | p50 s | p95 s | max s | p95 / window |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            f"| probe message | {from_message.samples} | {from_message.p50:.1f} | {from_message.p95:.1f} | "
            f"{from_message.worst:.1f} | {from_message.p95 / window_s:.2f} |",
            f"| window end (the platform's share) | {from_end.samples} | {from_end.p50:.1f} | {from_end.p95:.1f} | "
            f"{from_end.worst:.1f} | {from_end.p95 / window_s:.2f} |",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=100, help="CRITICAL alerts posted (part 1)")
    parser.add_argument("--windows", type=int, default=6, help="fully probed 60 s windows (part 2)")
    parser.add_argument("--skip-stream", action="store_true", help="only part 1")
    parser.add_argument("--no-write", action="store_true", help="print only; don't write results/alerts.md")
    args = parser.parse_args()
    post = post_to_text(args.posts)
    stream = None if args.skip_stream else window_to_text(args.windows)
    report = render(" ".join([".venv/bin/python", "benchmarks/alerts.py", *sys.argv[1:]]), post, stream)
    print(report)
    if not args.no_write:
        RESULTS.write_text(report + "\n")


if __name__ == "__main__":
    main()
