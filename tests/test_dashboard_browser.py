"""The dashboard at `/` in a real headless Chromium (Debian's, driven by Playwright), against the real app
under uvicorn, the session MQTT broker and a real SQLite store: the key box, a robot row appearing from
MQTT telemetry, an alert raised over REST appearing in the feed, a refused and then a granted
acknowledgement, the asset chart and the backlog's empty state; live over the WebSocket, and again with
the WebSocket blocked (REST polling alone). Plus the static routes themselves, which need no browser.

No sleeps: every wait is on a condition with a timeout (Playwright's `expect`, or `wait_until`)."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from playwright.sync_api import Page, expect, sync_playwright

from factory_pipelines.mqtt import connect_and_wait, make_client
from factory_pipelines.settings import FactorySettings, load_settings
from factory_pipelines.telemetry import telemetry_topic, utc_now
from serving import create_app
from serving.fleet import live_of
from tests.conftest import find_free_port
from tests.waiting import wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OPERATOR_KEY = "operator-key-123"
VIEWER_KEY = "viewer-key-1234"
OPERATOR_NAME = "settings key 1"  # how the API names the first key of FACTORY_API_KEYS
UI_TIMEOUT_MS = 20_000  # the page polls every 5 s when the live feed is not there; leave room for two polls
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def dashboard_settings(tmp_path: Path, mqtt_url: str) -> FactorySettings:
    settings = load_settings(
        data_dir=tmp_path / "data",
        mqtt_url=mqtt_url,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        site=f"d{uuid.uuid4().hex[:10]}",  # no other test's telemetry shows up here
        api_keys=f"{OPERATOR_KEY}:operator,{VIEWER_KEY}:viewer",
        allow_anonymous_read=False,
    )
    settings.ensure_dirs()
    return settings


@dataclass
class RunningApi:
    url: str
    app: FastAPI
    settings: FactorySettings


@pytest.fixture
def running_api(tmp_path: Path, mqtt_url: str) -> Iterator[RunningApi]:
    """The real app under uvicorn on a free loopback port, in a thread, its MQTT feed subscribed."""
    settings = dashboard_settings(tmp_path, mqtt_url)
    app = create_app(settings)
    port = find_free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="dashboard-api", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=20, what="uvicorn started")
        assert server.started, "uvicorn did not start"
        live = live_of(app)
        wait_until(lambda: live.status().subscribed, timeout=10, what="the API's MQTT feed subscribed")
        yield RunningApi(f"http://127.0.0.1:{port}", app, settings)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        app.state.serving.live.close()


@pytest.fixture
def device(mqtt_url: str) -> Iterator[mqtt.Client]:
    """A robot-side MQTT client on the session broker."""
    client = make_client(f"test-dashboard-device-{uuid.uuid4().hex[:8]}")
    connect_and_wait(client, mqtt_url)
    yield client
    client.disconnect()
    client.loop_stop()


def publish_robot(client: mqtt.Client, site: str, robot_id: str, *, health: float, seq: int) -> None:
    payload = {
        "asset_id": robot_id,
        "ts": utc_now().isoformat(),
        "seq": seq,
        "vibration": {"rms": 0.05, "kurtosis": 3.2},
        "temperature": 41.5,
        "motor_current": 4.8,
        "cycle_count": 1500 + seq,
        "health_score": health,
        "state": "running",
    }
    info = client.publish(telemetry_topic(site, robot_id), json.dumps(payload).encode(), qos=1)
    info.wait_for_publish(10)
    assert info.is_published(), "the broker did not take the robot's telemetry"


def use_key(page: Page, key: str) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Save key").click()
    expect(page.locator("#key-status")).to_have_text("Key saved in this browser.")


def raise_alert(api: RunningApi, details: str) -> str:
    raised = httpx.post(
        api.url + "/alert",
        json={
            "level": "WARNING",
            "type": "VIBRATION_HIGH",
            "source": "pm_agent",
            "details": details,
            "asset_id": "R-DASH-1",
        },
        headers={"X-API-Key": OPERATOR_KEY},
        timeout=10,
    )
    assert raised.status_code == 200, raised.text
    return str(raised.json()["alert_id"])


@dataclass
class Dashboard:
    page: Page
    errors: list[str]  # uncaught JavaScript errors on the page


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    """A fresh headless Chromium (its own profile: no key stored from earlier) at 1280x800, not navigated yet."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: `./dev test` installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 800},
        )
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield Dashboard(page, errors)
        finally:
            context.close()


def test_the_dashboard_shows_live_robots_and_alerts_and_acknowledges_one(
    dashboard: Dashboard, running_api: RunningApi, device: mqtt.Client, tmp_path: Path
) -> None:
    page, site, operator = dashboard.page, running_api.settings.site, {"X-API-Key": OPERATOR_KEY}
    page.goto(running_api.url + "/")
    expect(page).to_have_title("Factory dashboard")

    # Anonymous reads are off: the page says it needs a key, then works once given one, live over the WebSocket.
    expect(page.locator("#notice")).to_contain_text("needs an API key", timeout=UI_TIMEOUT_MS)
    use_key(page, OPERATOR_KEY)
    expect(page.locator("#notice")).to_be_hidden(timeout=UI_TIMEOUT_MS)
    expect(page.locator("#connection")).to_have_class(re.compile(r"\blive\b"), timeout=UI_TIMEOUT_MS)
    expect(page.locator("#backlog-empty")).to_have_text("No backlog yet for this shift.", timeout=UI_TIMEOUT_MS)
    expect(page.locator("#backlog-detail")).to_contain_text("factory backlog --shift-start")

    # A robot publishes; its row appears with its health, and its chart can be opened.
    publish_robot(device, site, "R-DASH-1", health=82.5, seq=1)
    row = page.locator('#fleet-body tr[data-robot-id="R-DASH-1"]')
    expect(row).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(row).to_contain_text("82.5")
    expect(row).to_contain_text("running")
    page.get_by_role("button", name="Show the chart of R-DASH-1").click()
    expect(page.locator("#chart-title")).to_have_text("Asset R-DASH-1")
    chart = page.locator("#telemetry-chart")
    expect(chart).to_have_attribute("aria-label", re.compile(r"^health_score of R-DASH-1: 1 reading, latest 82\.5 "))

    # A second reading updates the row and adds a point to the chart.
    publish_robot(device, site, "R-DASH-1", health=64.0, seq=2)
    expect(row).to_contain_text("64", timeout=UI_TIMEOUT_MS)
    expect(chart).to_have_attribute("aria-label", re.compile(r"^health_score of R-DASH-1: 2 readings, latest 64 "))

    # An alert raised over REST shows up in the feed.
    alert_id = raise_alert(running_api, "R-DASH-1 vibration rising")
    item = page.locator(f'#alert-list li[data-alert-id="{alert_id}"]')
    expect(item).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(item).to_contain_text("R-DASH-1 vibration rising")
    ack = item.get_by_role("button", name="Acknowledge alert VIBRATION_HIGH on R-DASH-1")

    # A viewer may not acknowledge: the problem's detail is shown and nothing changes.
    use_key(page, VIEWER_KEY)
    ack.click()
    expect(item.locator(".alert-error")).to_contain_text("this call needs operator", timeout=UI_TIMEOUT_MS)
    refused = httpx.get(f"{running_api.url}/alerts/{alert_id}", headers=operator, timeout=10).json()["alert"]
    assert refused["acknowledged_at"] is None and refused["state"] == "ACTIVE_UNACK"

    # The operator acknowledges it; the page says so and the API records it.
    use_key(page, OPERATOR_KEY)
    expect(item.locator(".alert-error")).to_be_hidden()
    ack.click()
    expect(item).to_contain_text(f"Acknowledged by {OPERATOR_NAME}", timeout=UI_TIMEOUT_MS)
    expect(ack).to_be_hidden()
    expect(row).to_contain_text("64")  # switching keys twice did not lose what the live feed showed

    detail = httpx.get(f"{running_api.url}/alerts/{alert_id}", headers=operator, timeout=10).json()["alert"]
    assert detail["state"] == "ACTIVE_ACK" and detail["acknowledged_by"] == OPERATOR_NAME
    acked = httpx.get(f"{running_api.url}/alerts", params={"state": "ACTIVE_ACK"}, headers=operator, timeout=10)
    assert alert_id in [a["alert_id"] for a in acked.json()["items"]]

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(PNG_MAGIC) and shot.stat().st_size > 10_000
    assert dashboard.errors == [], f"JavaScript errors on the page: {dashboard.errors}"


def test_without_the_websocket_the_dashboard_keeps_up_by_polling(
    dashboard: Dashboard, running_api: RunningApi, device: mqtt.Client
) -> None:
    page = dashboard.page
    # The browser's WebSocket never reaches the server (as behind a proxy that drops upgrades).
    page.route_web_socket(re.compile(r"/ws"), lambda ws: ws.close(code=1011, reason="no WebSockets here"))
    page.goto(running_api.url + "/")
    use_key(page, OPERATOR_KEY)
    expect(page.locator("#connection")).to_have_class(re.compile(r"\bpolling\b"), timeout=UI_TIMEOUT_MS)

    # Both arrive with the next poll.
    publish_robot(device, running_api.settings.site, "R-DASH-1", health=71.0, seq=1)
    alert_id = raise_alert(running_api, "seen by polling")
    expect(page.locator('#fleet-body tr[data-robot-id="R-DASH-1"]')).to_contain_text("71", timeout=UI_TIMEOUT_MS)
    expect(page.locator(f'#alert-list li[data-alert-id="{alert_id}"]')).to_contain_text(
        "seen by polling", timeout=UI_TIMEOUT_MS
    )
    expect(page.locator("#connection")).to_have_class(re.compile(r"\bpolling\b"))
    assert dashboard.errors == [], f"JavaScript errors on the page: {dashboard.errors}"


# ---- the static routes (no browser needed) ----


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    settings = dashboard_settings(tmp_path, "mqtt://127.0.0.1:9")  # no broker needed to serve files
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_page_and_its_files_are_served_without_a_key_with_media_types_and_caching(api: TestClient) -> None:
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js" defer></script>' in page.text
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-cache" and page.headers["etag"]

    for name, media_type in [("app.js", "text/javascript"), ("style.css", "text/css"), ("index.html", "text/html")]:
        answer = api.get(f"/static/{name}")
        assert answer.status_code == 200, name
        assert answer.headers["content-type"].startswith(media_type)
        assert answer.headers["x-content-type-options"] == "nosniff"
        again = api.get(f"/static/{name}", headers={"If-None-Match": answer.headers["etag"]})
        assert again.status_code == 304 and again.content == b""

    # the data behind the page still needs a key (anonymous reads are off in these settings)
    assert api.get("/api/robots").status_code == 401


@pytest.mark.parametrize("name", ["nope.js", "__init__.py", "dashboard.py", "..%2Fdashboard.py", "%2E%2E"])
def test_only_the_dashboard_files_are_served(api: TestClient, name: str) -> None:
    answer = api.get(f"/static/{name}")
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("application/problem+json")
