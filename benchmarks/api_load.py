"""REST under load: `GET /predictions/latest` and `GET /api/robots` at a fixed request rate.

`factory serve` (one uvicorn worker) runs against a store seeded with a fleet's predictions (every
model, `--assets` assets, `--windows` windows each) and a live feed of robot telemetry on a local
broker. A separate load process sends requests open-loop at `--rate` per second (each request is
due at its slot whatever the earlier ones did, and its latency counts from that slot, so a slow
server cannot hide its queueing), over keep-alive connections, for `--seconds` (`http_load.py`). Baseline in the same
run: a bare uvicorn app answering a fixed JSON body of the same size, loaded the same way, so the
ratio says what the platform's routes cost on top of the HTTP stack on this machine.

    .venv/bin/python benchmarks/api_load.py                       # 500 req/s, 20 s per route (about 2 min)
    .venv/bin/python benchmarks/api_load.py --rate 200 --seconds 5 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from latency import _free_port, _quantile  # noqa: E402

from factory_pipelines.broker import ensure_broker  # noqa: E402
from factory_pipelines.mqtt import connect_and_wait, make_client  # noqa: E402
from factory_pipelines.settings import load_settings  # noqa: E402
from factory_pipelines.store import ServingStore  # noqa: E402
from factory_pipelines.telemetry import Prediction, RobotTelemetry, dump_payload, telemetry_topic  # noqa: E402
from factory_pipelines.windows import window_key  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "api_load.md"
MODELS = ("energy_iforest", "cyber_detector", "safety_hazard", "ppe_vision", "rul_lstm")
BASELINE_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
body = open(sys.argv[2], "rb").read()
async def fixed(request):
    return Response(body, media_type="application/json")
uvicorn.run(Starlette(routes=[Route("/fixed", fixed)]), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""
BENCH_KEY = "bench-viewer-key-0001"
TARGET_P99_MS = 25.0


def seed_store(db_url: str, assets: int, windows: int) -> int:
    store = ServingStore(db_url)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    rows = []
    for w in range(windows):
        start = now - timedelta(minutes=windows - w)
        key = window_key(start, "collector-1")
        for model in MODELS:
            for a in range(assets):
                extra = (
                    {"rul_lower": 400.0 + a, "rul_upper": 900.0 + a, "confidence": 0.9} if model == "rul_lstm" else {}
                )
                asset = f"R-{a:03d}" if model == "rul_lstm" else f"M-{a:03d}"
                rows.append(
                    Prediction(
                        model_name=model, model_version="3", asset_id=asset, window_key=key, score=0.4,
                        label="normal", produced_at=start + timedelta(seconds=70), window_start=start,
                        window_end=start + timedelta(minutes=1), **extra,
                    )
                )  # fmt: skip
    store.upsert_predictions(rows)
    store.dispose()
    return len(rows)


def publish_robots(mqtt_url: str, site: str, robots: int) -> None:
    client = make_client(f"bench-robots-{os.getpid()}")
    connect_and_wait(client, mqtt_url, timeout=10)
    for a in range(robots):
        reading = RobotTelemetry(asset_id=f"R-{a:03d}", ts=datetime.now(UTC), seq=a, temperature=40.0, health_score=90)
        client.publish(telemetry_topic(site, reading.asset_id), dump_payload(reading), qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def wait_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2, headers={"X-API-Key": BENCH_KEY}).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def load(url: str, rate: float, seconds: float, connections: int) -> dict[str, float]:
    """Run the load process against `url`; latency quantiles in milliseconds and the achieved rate."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("http_load.py")), url, str(rate), str(seconds), str(connections),
         BENCH_KEY],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout)
    latencies = sorted(result["latencies"])
    return {
        "requests": len(latencies),
        "errors": result["errors"],
        "achieved_rps": len(latencies) / result["elapsed"],
        "p50_ms": _quantile(latencies, 0.50) * 1e3,
        "p99_ms": _quantile(latencies, 0.99) * 1e3,
        "max_ms": latencies[-1] * 1e3,
    }


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def run(rate: float, seconds: float, connections: int, assets: int, windows: int) -> dict[str, object]:
    data = Path(tempfile.mkdtemp(prefix="api-load-"))
    settings = load_settings(data_dir=data)
    broker = ensure_broker(settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{_free_port()}"}))
    mqtt_url = broker.url if broker is not None else settings.mqtt_url
    seeded = seed_store(settings.resolved_db_url, assets, windows)
    port, baseline_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY_", "MLFLOW_", "DAGSTER_"))}
    env |= {
        "FACTORY_DATA_DIR": str(data),
        "FACTORY_MQTT_URL": mqtt_url,
        "FACTORY_API_PORT": str(port),
        "FACTORY_API_KEYS": f"{BENCH_KEY}:viewer",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "factory_pipelines.cli", "serve"], env=env, start_new_session=True,
        stdout=(data / "serve.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    results: dict[str, object] = {"seeded_predictions": seeded}
    try:
        api = f"http://127.0.0.1:{port}"
        wait_http(f"{api}/api/robots", server)
        publish_robots(mqtt_url, settings.site, assets)
        deadline = time.monotonic() + 30
        while len(httpx.get(f"{api}/api/robots?limit=500", headers={"X-API-Key": BENCH_KEY}).json()["items"]) < assets:
            if time.monotonic() > deadline:
                raise RuntimeError("robots did not show up at /api/robots")
            time.sleep(0.2)
        for route in ("/predictions/latest", "/api/robots"):
            body = httpx.get(f"{api}{route}", headers={"X-API-Key": BENCH_KEY}).content
            body_file = data / "baseline-body.json"
            body_file.write_bytes(body)
            baseline = subprocess.Popen(
                [sys.executable, "-c", BASELINE_APP, str(baseline_port), str(body_file)], start_new_session=True
            )
            try:
                wait_http(f"http://127.0.0.1:{baseline_port}/fixed", baseline)
                base = load(f"http://127.0.0.1:{baseline_port}/fixed", rate, seconds, connections)
            finally:
                stop(baseline)
            ours = load(f"{api}{route}", rate, seconds, connections)
            results[route] = {"body_bytes": len(body), "platform": ours, "baseline": base,
                              "p99_ratio": ours["p99_ms"] / base["p99_ms"]}  # fmt: skip
    finally:
        stop(server)
        if broker is not None:
            broker.stop()
    return results


def render(command: str, rate: float, seconds: float, results: dict[str, object]) -> str:
    lines = [
        "# REST under load",
        "",
        f"`{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores: {rate:g} requests/s "
        f"open-loop for {seconds:g} s per route from a separate process, one uvicorn worker, "
        f"{results['seeded_predictions']} predictions in the SQLite store. Target: p99 under {TARGET_P99_MS:g} ms "
        "at 500 requests/s.",
        "",
        "| route | answer bytes | achieved req/s | errors | p50 ms | p99 ms | max ms | baseline p50 / p99 ms "
        "| p99 ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for route in ("/predictions/latest", "/api/robots"):
        r = results[route]
        assert isinstance(r, dict)
        ours, base = r["platform"], r["baseline"]
        lines.append(
            f"| `GET {route}` | {r['body_bytes']} | {ours['achieved_rps']:.0f} | {ours['errors']} "
            f"| {ours['p50_ms']:.1f} "
            f"| {ours['p99_ms']:.1f} | {ours['max_ms']:.1f} | {base['p50_ms']:.1f} / {base['p99_ms']:.1f} "
            f"| {r['p99_ratio']:.1f} |"
        )
    lines += [
        "",
        "Baseline: a bare Starlette app under the same uvicorn answering the same bytes, loaded the same way in the "
        "same run; the ratio is what the route's own work (store query, access check, serialisation) adds.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--assets", type=int, default=50)
    parser.add_argument("--windows", type=int, default=30)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    results = run(args.rate, args.seconds, args.connections, args.assets, args.windows)
    print(json.dumps(results, indent=1))
    if args.json_out:
        figures = {"benchmark": "api_load", "rate": args.rate, "seconds": args.seconds, "target_p99_ms": TARGET_P99_MS}
        args.json_out.write_text(json.dumps(figures | results, indent=1))
    if not args.no_write:
        command = " ".join([".venv/bin/python", "benchmarks/api_load.py", *sys.argv[1:]])
        RESULTS.write_text(render(command, args.rate, args.seconds, results))
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
