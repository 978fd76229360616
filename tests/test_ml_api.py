"""On-demand inference over REST with real champions: tiny rul_lstm and ppe_vision models trained here,
registered in a real MLflow store under tmp_path with the `champion` alias, served by the real app
(TestClient), with robot history from typed-row files and the session MQTT broker's live feed.

Covers: the RUL interval at two confidences, an unknown robot answered from its features alone,
history from typed rows plus the live reading, batches, model_info, a promotion picked up after the
champion TTL (injected clock, no sleeps), a version that fails to load, PPE checks of synthetic
frames and of bad uploads (415, 413, 422), no champion (503 naming the model), and keys (401).
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import polars as pl
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from PIL import Image

from factory_pipelines import ppe_images as pi
from factory_pipelines import rul_model as rm
from factory_pipelines.model_catalog import CATALOG
from factory_pipelines.model_registry import ensure_experiment, set_alias
from factory_pipelines.mqtt import connect_and_wait, make_client
from factory_pipelines.settings import load_settings
from factory_pipelines.telemetry import PayloadKind, RobotTelemetry, VibrationFeatures, telemetry_topic, utc_now
from factory_pipelines.window_rows import ROBOT_ROWS_SCHEMA
from factory_pipelines.windows import window_key
from serving import create_app, ml
from serving.fleet import health_of, live_of, maintenance_priority
from serving.model_cache import MODEL_UNAVAILABLE, model_cache_of
from tests.tiny_champions import CYCLES_PER_STEP, LOGGED_RMSE, TINY_RUL, Champions, register, train_tiny_champions
from tests.waiting import wait_until

OPERATOR = {"X-API-Key": "operator-key-123"}
VIEWER = {"X-API-Key": "viewer-key-1234"}
PROBLEM_JSON = "application/problem+json"


@pytest.fixture(scope="module")
def champions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Champions]:
    yield train_tiny_champions(tmp_path_factory.mktemp("ml-registry"))
    mlflow.set_tracking_uri(None)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ml_app(tmp_path: Path, mqtt_url: str, tracking_uri: str, **options: Any) -> FastAPI:
    settings = load_settings(
        data_dir=tmp_path / "data",
        mqtt_url=mqtt_url,
        mlflow_tracking_uri=tracking_uri,
        site=f"t{uuid.uuid4().hex[:10]}",
        api_keys="operator-key-123:operator,viewer-key-1234:viewer",
        allow_anonymous_read=False,
    )
    settings.ensure_dirs()
    return create_app(settings, registry_answer_within_s=30.0, **options)  # a bound on the wait, not a sleep


@pytest.fixture
def api(tmp_path: Path, mqtt_url: str, champions: Champions) -> Iterator[TestClient]:
    with TestClient(ml_app(tmp_path, mqtt_url, champions.tracking_uri)) as client:
        yield client


def predict(api: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/api/ml/predict", json=body, headers=VIEWER)
    assert response.status_code == 200, response.text
    return response.json()


def width(answer: dict[str, Any]) -> float:
    interval = answer["confidence_interval"]
    return interval["upper"] - interval["lower"]


def robot_rows(robot_id: str, readings: list[dict[str, Any]]) -> pl.DataFrame:
    """Readings as rul_model.predict_robot_rul takes them (ROBOT_ROW_SCHEMA)."""
    return pl.DataFrame(
        [{**dict.fromkeys(rm.ROBOT_ROW_SCHEMA), **r, "asset_id": robot_id} for r in readings],
        schema=rm.ROBOT_ROW_SCHEMA,
    )


# ---- robots ----


def test_unknown_robot_is_answered_from_its_features_with_a_narrower_interval_at_lower_confidence(
    api: TestClient, champions: Champions
) -> None:
    features = [0.35, 3.4, 52.0, 4.1, 18250.0]
    at_90 = predict(api, {"robot_id": "robot-77", "features": features, "confidence_level": 0.9})
    at_50 = predict(api, {"robot_id": "robot-77", "features": features, "confidence_level": 0.5})
    default = predict(api, {"robot_id": "robot-77", "features": features})

    for answer in (at_90, at_50, default):
        interval = answer["confidence_interval"]
        assert interval["lower"] <= answer["rul_cycles"] <= interval["upper"]
        assert answer["history_steps"] == 1 and answer["history_sources"] == ["request"]
        assert answer["history_since"] is None
    assert at_50["rul_cycles"] == pytest.approx(at_90["rul_cycles"])
    assert width(at_50) < width(at_90) < width(default)
    assert default["confidence_interval"]["confidence_level"] == 0.95
    # The 5 floats mean vibration RMS, kurtosis, temperature, motor current, cycle count.
    used = at_90["features_used"]
    assert [used[name] for name in ml.FEATURE_ORDER] == [0.35, 3.4, 52.0, 4.1, 18250]
    # The same reading through the champion directly (float32 rounding aside).
    reading = {"cycle_count": 18250, "vibration_rms": 0.35, "vibration_kurtosis": 3.4, "temperature": 52.0}
    local = rm.predict_robot_rul(
        champions.rul, robot_rows("robot-77", [{**reading, "motor_current": 4.1, "ts": utc_now()}]), 0.9
    ).row(0, named=True)
    assert at_90["rul_cycles"] == pytest.approx(local["rul"], rel=1e-4)
    assert at_90["confidence_interval"]["upper"] == pytest.approx(local["upper"], rel=1e-4)
    # Health and priority are fleet's, from the reading (no device score: derived).
    telemetry = RobotTelemetry(
        asset_id="robot-77", ts=utc_now(), vibration=VibrationFeatures(rms=0.35, kurtosis=3.4), temperature=52.0
    )
    health, source = health_of(telemetry)
    assert (at_90["health_score"], at_90["health_source"]) == (health, source) and source == "derived"
    assert at_90["maintenance_priority"] == maintenance_priority(at_90["confidence_interval"]["lower"], health)[0]
    assert at_90["model"]["name"] == "rul_lstm" and at_90["model"]["version"] == "1"
    assert at_90["model"]["alias"] == "champion" and at_90["model"]["mlflow_run_id"]
    assert at_90["model_window"] == TINY_RUL.window and at_90["cycles_per_step"] == CYCLES_PER_STEP


def test_history_comes_from_typed_rows_and_the_live_feed_before_the_given_reading(
    api: TestClient, champions: Champions, mqtt_url: str
) -> None:
    settings = api.app.state.serving.settings
    start = utc_now().replace(microsecond=0) - timedelta(minutes=10)
    simulated = rm.robot_run_to_failure_rows(1, seed=9, cycles_per_step=CYCLES_PER_STEP).head(4)
    history = [
        {**row, "cycle_count": 1000 + CYCLES_PER_STEP * i, "ts": start + timedelta(seconds=80 * i)}
        for i, row in enumerate(simulated.drop("asset_id", "true_rul_cycles").iter_rows(named=True))
    ]
    # Two windows of typed rows, each with another robot's reading too (not ours: left out).
    for part, readings in enumerate((history[:2], history[2:])):
        key = window_key(start + timedelta(minutes=part), "collector-1")
        rows = [{**r, "asset_id": "robot-01", "seq": i} for i, r in enumerate(readings)]
        rows.append({**readings[0], "asset_id": "robot-99", "seq": 0, "temperature": 99.0})
        frame = pl.DataFrame([{**dict.fromkeys(ROBOT_ROWS_SCHEMA), **r, "window_key": key} for r in rows])
        path = settings.typed_rows_dir / "robots" / f"{key}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.cast(ROBOT_ROWS_SCHEMA).select(list(ROBOT_ROWS_SCHEMA)).write_parquet(path)
    # The live feed's latest reading, one step on (published as a robot would).
    live = live_of(api.app)
    assert live.wait_ready(10), "live feed not subscribed"
    device = make_client(f"test-robot-{uuid.uuid4().hex[:8]}")
    connect_and_wait(device, mqtt_url)
    live_payload = {"temperature": 53.0, "motor_current": 4.2, "cycle_count": 1160, "vibration": {"rms": 0.4}}
    try:
        device.publish(telemetry_topic(settings.site, "robot-01"), json.dumps(live_payload), qos=1).wait_for_publish(10)
    finally:
        device.disconnect()
        device.loop_stop()
    latest = wait_until(lambda: live.reading(PayloadKind.ROBOT, "robot-01"), what="live reading arrived")

    given = {"temperature": 54.0, "motor_current": 4.3, "cycle_count": 1200, "health_score": 80.0}
    body = {"robot_id": "robot-01", "reading": {**given, "vibration": {"rms": 0.45, "kurtosis": 3.3, "bpfo": 1e-4}}}
    answer = predict(api, {**body, "confidence_level": 0.9})

    assert answer["history_sources"] == ["typed_rows", "live", "request"]
    assert answer["history_steps"] == 6  # 4 stored steps, the live one, the given one
    assert answer["history_since"] == history[0]["ts"].isoformat()
    assert (answer["health_score"], answer["health_source"]) == (80.0, "device")
    assert answer["features_used"]["vibration_bpfo"] == 1e-4 and answer["features_used"]["vibration_rms"] == 0.45
    assert not answer["warnings"]
    live_row = {
        "ts": latest.model.ts,
        **{k: v for k, v in live_payload.items() if k != "vibration"},
        "vibration_rms": 0.4,
    }
    given_row = {"ts": utc_now(), **given, "vibration_rms": 0.45, "vibration_kurtosis": 3.3, "vibration_bpfo": 1e-4}
    local = rm.predict_robot_rul(champions.rul, robot_rows("robot-01", [*history, live_row, given_row]), 0.9)
    assert local["steps"][0] == 6
    assert answer["rul_cycles"] == pytest.approx(local["rul"][0], rel=1e-4)
    alone = predict(api, {**body, "use_history": False})
    assert alone["history_steps"] == 1 and alone["history_sources"] == ["request"]
    # A reading from before the history keeps only what precedes it.
    earlier = predict(api, {"robot_id": "robot-01", "reading": {**given, "cycle_count": 1050}})
    assert earlier["history_steps"] == 2 and earlier["history_sources"] == ["typed_rows", "request"]


def test_batch_answers_each_request_in_order_from_one_model_load(api: TestClient) -> None:
    items = [
        {"robot_id": "robot-a", "features": [0.2, 3.1, 45.0, 3.9, 500], "confidence_level": 0.9},
        {"robot_id": "robot-b", "features": [0.9, 8.0, 75.0, 6.0, 900], "confidence_level": 0.5},
        {"robot_id": "robot-a", "reading": {"temperature": 60.0, "cycle_count": 700}},
    ]
    response = api.post("/api/ml/batch_predict", json=items, headers=VIEWER)
    assert response.status_code == 200, response.text
    answers = response.json()
    wrapped = api.post("/api/ml/batch_predict", json={"requests": items}, headers=VIEWER).json()
    singles = [predict(api, item) for item in items]

    assert [a["robot_id"] for a in answers] == ["robot-a", "robot-b", "robot-a"]
    assert [a["confidence_interval"]["confidence_level"] for a in answers] == [0.9, 0.5, 0.95]
    for answer, again, single in zip(answers, wrapped, singles, strict=True):
        assert answer["rul_cycles"] == pytest.approx(single["rul_cycles"], rel=1e-4)
        assert answer["rul_cycles"] == pytest.approx(again["rul_cycles"], rel=1e-4)
        assert answer["confidence_interval"]["lower"] == pytest.approx(single["confidence_interval"]["lower"], rel=1e-4)
        assert answer["model"]["version"] == "1"
    assert answers[0]["rul_cycles"] != pytest.approx(answers[1]["rul_cycles"])
    assert model_cache_of(api.app).loads == 1  # every answer above from the one loaded version

    too_many = api.post("/api/ml/batch_predict", json=[items[0]] * (ml.MAX_BATCH + 1), headers=VIEWER)
    empty = api.post("/api/ml/batch_predict", json=[], headers=VIEWER)
    bad_item = api.post("/api/ml/batch_predict", json=[items[0], {"robot_id": "x", "features": [1.0]}], headers=VIEWER)
    for refused in (too_many, empty, bad_item):
        assert refused.status_code == 422 and refused.headers["content-type"] == PROBLEM_JSON
    assert any(error["loc"][:3] == ["body", "list", 1] for error in bad_item.json()["errors"]), bad_item.json()


def test_requests_are_validated(api: TestClient) -> None:
    cases = {
        "four features": {"robot_id": "r", "features": [1.0, 2.0, 3.0, 4.0]},
        "both forms": {"robot_id": "r", "features": [1.0] * 5, "reading": {"temperature": 50.0}},
        "neither form": {"robot_id": "r"},
        "confidence 1": {"robot_id": "r", "features": [1.0] * 5, "confidence_level": 1.0},
        "negative cycles": {"robot_id": "r", "features": [0.3, 3.0, 50.0, 4.0, -5.0]},
        "cycles past 64 bits": {"robot_id": "r", "reading": {"cycle_count": 2**63}},  # was a 500 (fuzzing)
        "cycles past 64 bits, as a feature": {"robot_id": "r", "features": [0.3, 3.0, 50.0, 4.0, 1e300]},
        "vibration not an object": {"robot_id": "r", "reading": {"vibration": 0.4}},
        "robot id with a slash": {"robot_id": "a/b", "features": [1.0] * 5},
    }
    for case, body in cases.items():
        response = api.post("/api/ml/predict", json=body, headers=VIEWER)
        assert response.status_code == 422, case
        assert response.headers["content-type"] == PROBLEM_JSON, case
    negative = api.post("/api/ml/predict", json=cases["negative cycles"], headers=VIEWER).json()
    assert "cycle_count" in negative["detail"]
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/api/ml/predict", "/api/ml/batch_predict", "/api/ml/model_info", "/api/ppe/check"} <= paths.keys()


def test_model_info_describes_every_family_and_says_which_have_no_champion(
    api: TestClient, champions: Champions
) -> None:
    before = api.get("/api/ml/model_info", headers=VIEWER)
    assert before.status_code == 200, before.text
    models = {m["name"]: m for m in before.json()["models"]}
    client = MlflowClient(tracking_uri=champions.tracking_uri, registry_uri=champions.tracking_uri)

    assert list(models) == list(CATALOG) and before.json()["registry_reachable"] is True
    for name in ("rul_lstm", "ppe_vision"):
        info, version = models[name], client.get_model_version_by_alias(name, "champion")
        assert info["status"] == "champion" and info["registered_name"] == name and info["alias"] == "champion"
        assert info["version"] == "1" and info["mlflow_run_id"] == version.run_id
        assert info["metrics"]["rmse"] == LOGGED_RMSE and info["trained_at"] and info["inference"] is True
        assert info["loaded_version"] is None  # nothing asked for it yet
    for name in ("energy_iforest", "safety_hazard", "cyber_detector"):
        info = models[name]
        assert info["status"] == "no_champion" and info["version"] is None and info["metrics"] == {}
        assert "champion alias" in info["detail"] and info["inference"] is False

    predict(api, {"robot_id": "robot-1", "features": [0.3, 3.0, 50.0, 4.0, 100]})
    after = {m["name"]: m for m in api.get("/api/ml/model_info", headers=VIEWER).json()["models"]}
    assert after["rul_lstm"]["loaded_version"] == "1" and after["ppe_vision"]["loaded_version"] is None


def test_a_promotion_reaches_the_api_after_the_ttl_and_a_broken_champion_is_a_503(
    tmp_path: Path, mqtt_url: str, champions: Champions
) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'promotions.db'}"
    register(
        tracking_uri,
        tmp_path / "artifacts",
        "rul_lstm",
        lambda: rm.log_model(champions.rul, registered_name="rul_lstm"),
    )
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    first = client.get_model_version("rul_lstm", "1")
    clock = FakeClock()
    body = {"robot_id": "robot-1", "features": [0.3, 3.0, 50.0, 4.0, 100]}
    with TestClient(ml_app(tmp_path, mqtt_url, tracking_uri, champion_ttl_s=60.0, clock=clock)) as api:
        assert predict(api, body)["model"]["version"] == "1"
        # Version 2 (the same weights) takes the alias: the cached answer stands until the TTL is over.
        second = client.create_model_version("rul_lstm", first.source, run_id=first.run_id)
        set_alias(tracking_uri, "rul_lstm", second.version, decided_by="test", reason="promotion")
        assert predict(api, body)["model"]["version"] == "1"
        clock.now += 61
        promoted = predict(api, body)
        assert promoted["model"]["version"] == "2"
        assert model_cache_of(api.app).loads == 2

        # Version 3 has no artifacts: once promoted and re-resolved, the answer is a 503 naming the model.
        broken = client.create_model_version("rul_lstm", (tmp_path / "no-such-model").as_uri(), run_id=first.run_id)
        set_alias(tracking_uri, "rul_lstm", broken.version, decided_by="test", reason="broken promotion")
        clock.now += 61
        response = api.post("/api/ml/predict", json=body, headers=VIEWER)
        assert response.status_code == 503 and response.headers["content-type"] == PROBLEM_JSON
        problem = response.json()
        assert problem["type"] == MODEL_UNAVAILABLE and problem["model_name"] == "rul_lstm"
        assert "rul_lstm" in problem["detail"] and "could not be loaded" in problem["detail"]
        assert response.headers["retry-after"]
        info = {m["name"]: m for m in api.get("/api/ml/model_info", headers=VIEWER).json()["models"]}["rul_lstm"]
        assert info["version"] == "3" and info["loaded_version"] == "2" and "could not be loaded" in info["detail"]
        assert (
            api.post("/api/ml/predict", json=body, headers=VIEWER).status_code == 503
        )  # not retried until re-resolved
        assert model_cache_of(api.app).loads == 2


def test_no_champion_is_a_503_naming_the_model(tmp_path: Path, mqtt_url: str) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'empty.db'}"
    ensure_experiment(tracking_uri, "nothing-registered", tmp_path / "artifacts")  # a registry, but no models
    frame = pi.synthetic_camera_frame(seed=1)
    with TestClient(ml_app(tmp_path, mqtt_url, tracking_uri)) as api:
        rul = api.post("/api/ml/predict", json={"robot_id": "r", "features": [0.3, 3.0, 50.0, 4.0, 1]}, headers=VIEWER)
        batch = api.post("/api/ml/batch_predict", json=[{"robot_id": "r", "features": [1.0] * 5}], headers=VIEWER)
        ppe = api.post("/api/ppe/check", files={"file": ("f.jpg", frame.jpeg, "image/jpeg")}, headers=VIEWER)
        info = api.get("/api/ml/model_info", headers=VIEWER).json()

    for response, name in ((rul, "rul_lstm"), (batch, "rul_lstm"), (ppe, "ppe_vision")):
        assert response.status_code == 503 and response.headers["content-type"] == PROBLEM_JSON
        problem = response.json()
        assert problem["model_name"] == name and f"models:/{name}@champion does not exist" in problem["detail"]
    assert {m["status"] for m in info["models"]} == {"no_champion"}


# ---- PPE ----


def upload(api: TestClient, content: bytes, content_type: str, name: str = "frame.jpg", **headers: str) -> Any:
    return api.post("/api/ppe/check", files={"file": (name, content, content_type)}, headers={**VIEWER, **headers})


def test_ppe_check_gives_person_regions_and_the_frame_verdict(api: TestClient, champions: Champions) -> None:
    frame = pi.synthetic_camera_frame(seed=5)
    response = upload(api, frame.jpeg, "image/jpeg")
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = champions.ppe.predict_frames([frame.jpeg])[0]

    assert answer["violation_probability"] == pytest.approx(expected.violation_probability, abs=1e-5)
    assert answer["violation"] == (answer["violation_probability"] >= answer["threshold"])
    assert answer["threshold"] == pytest.approx(expected.threshold)
    assert (answer["no_hardhat"], answer["no_vest"]) == (expected.no_hardhat, expected.no_vest)
    assert len(answer["regions"]) == len(expected.regions) >= 1
    for region, truth in zip(answer["regions"], expected.regions, strict=True):
        box, px = region["box"], region["box_px"]
        assert (box["x_min"], box["y_min"], box["x_max"], box["y_max"]) == pytest.approx(truth.box)
        assert 0 <= px["x_min"] < px["x_max"] <= frame.width and 0 <= px["y_min"] < px["y_max"] <= frame.height
        assert (region["hardhat"], region["vest"]) == (truth.hardhat, truth.vest)
        assert region["no_vest_probability"] == pytest.approx(truth.no_vest_probability, abs=1e-5)
    assert answer["image"] == {"format": "JPEG", "width": 128, "height": 128, "bytes": len(frame.jpeg)}
    assert answer["model"]["name"] == "ppe_vision" and answer["model"]["version"] == "1"

    png = io.BytesIO()
    Image.open(io.BytesIO(frame.jpeg)).save(png, format="PNG")
    as_png = upload(api, png.getvalue(), "image/png", "frame.png")
    untyped = upload(api, frame.jpeg, "application/octet-stream", "frame")  # typed by its first bytes
    assert as_png.status_code == 200 and as_png.json()["image"]["format"] == "PNG"
    assert untyped.status_code == 200 and untyped.json()["violation_probability"] == answer["violation_probability"]


def test_ppe_check_refuses_other_types_large_files_and_undecodable_images(api: TestClient) -> None:
    jpeg = pi.synthetic_camera_frame(seed=2).jpeg
    gif = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(gif, format="GIF")
    refused = {
        "gif": (upload(api, gif.getvalue(), "image/gif", "f.gif"), 415),
        "text": (upload(api, b"hello", "text/plain", "f.txt"), 415),
        "untyped garbage": (upload(api, b"not an image at all", "application/octet-stream"), 415),
        "too large": (upload(api, b"\xff\xd8\xff" + bytes(ml.MAX_IMAGE_BYTES), "image/jpeg"), 413),
        "not a jpeg": (upload(api, b"\xff\xd8\xff this is no jpeg", "image/jpeg"), 422),
        "truncated": (upload(api, jpeg[: len(jpeg) // 3], "image/jpeg"), 422),
        "gif sent as png": (upload(api, gif.getvalue(), "image/png", "f.png"), 422),
    }
    for case, (response, status) in refused.items():
        assert response.status_code == status, (case, response.text)
        assert response.headers["content-type"] == PROBLEM_JSON, case
    assert "JPEG or PNG" in refused["gif"][0].json()["detail"]
    assert refused["not a jpeg"][0].json()["type"] == ml.UNDECODABLE_IMAGE
    no_file = api.post("/api/ppe/check", headers=VIEWER)
    assert no_file.status_code == 422


def test_routes_need_a_key_when_anonymous_reads_are_off(api: TestClient) -> None:
    body = {"robot_id": "robot-1", "features": [0.3, 3.0, 50.0, 4.0, 100]}
    anonymous = [
        api.post("/api/ml/predict", json=body),
        api.post("/api/ml/batch_predict", json=[body]),
        api.get("/api/ml/model_info"),
        api.post("/api/ppe/check", files={"file": ("f.jpg", b"x", "image/jpeg")}),
    ]
    for response in anonymous:
        assert response.status_code == 401 and response.headers["content-type"] == PROBLEM_JSON
    assert api.get("/api/ml/model_info", headers={"X-API-Key": "wrong-key-000"}).status_code == 401
    assert api.get("/api/ml/model_info", headers={"Authorization": "Bearer viewer-key-1234"}).status_code == 200
    assert api.get("/api/ml/model_info", headers=OPERATOR).status_code == 200
