"""Request bodies are refused past their route's limit before the app reads them (serving/body_limit.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from factory_pipelines.settings import load_settings
from serving import create_app, ml
from serving.body_limit import DEFAULT_MAX_BODY_BYTES
from serving.problems import CONTENT_TOO_LARGE

VIEWER = {"X-API-Key": "viewer-key-for-limits"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    settings = load_settings(
        data_dir=tmp_path / "data",
        mqtt_url="mqtt://127.0.0.1:9",
        api_keys=f"{VIEWER['X-API-Key']}:viewer",
        allow_anonymous_read=False,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A body sent without Content-Length (chunked), as a streaming client would."""
    while total > 0:
        yield b"\0" * min(size, total)
        total -= size


def assert_too_large(response: object, limit: int) -> None:
    assert response.status_code == 413, response.text  # type: ignore[attr-defined]
    problem = response.json()  # type: ignore[attr-defined]
    assert response.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    assert problem["type"] == CONTENT_TOO_LARGE and f"at most {limit} bytes" in problem["detail"]


def test_a_declared_length_over_the_upload_limit_is_refused_before_the_body_is_read(api: TestClient) -> None:
    headers = {**VIEWER, "Content-Type": "multipart/form-data; boundary=x"}
    declared = {**headers, "Content-Length": str(ml.MAX_UPLOAD_BODY_BYTES + 1)}
    # only a few bytes follow: the answer comes from the declared length alone, before any parsing
    answer = api.post("/api/ppe/check", content=b"--x\r\n", headers=declared)
    assert_too_large(answer, ml.MAX_UPLOAD_BODY_BYTES)
    assert f"{ml.MAX_UPLOAD_BODY_BYTES + 1} bytes declared" in answer.json()["detail"]


def test_a_chunked_body_is_cut_off_at_the_limit(api: TestClient) -> None:
    headers = {**VIEWER, "Content-Type": "multipart/form-data; boundary=x"}
    answer = api.post("/api/ppe/check", content=chunks(ml.MAX_UPLOAD_BODY_BYTES + 1), headers=headers)
    assert_too_large(answer, ml.MAX_UPLOAD_BODY_BYTES)


def test_other_routes_have_the_default_limit_and_small_bodies_pass(api: TestClient) -> None:
    big = api.post(
        "/api/ml/batch_predict",
        content=chunks(DEFAULT_MAX_BODY_BYTES + 1),
        headers={**VIEWER, "Content-Type": "application/json"},
    )
    assert_too_large(big, DEFAULT_MAX_BODY_BYTES)
    # under the limit the route's own checks answer: here, the body is no JSON
    small = api.post("/api/ml/batch_predict", content=b"[", headers={**VIEWER, "Content-Type": "application/json"})
    assert small.status_code == 422
    # and an image a bit over 5 MB still gets the route's own 413 (its multipart framing fits the allowance)
    image = api.post(
        "/api/ppe/check",
        headers=VIEWER,
        files={"file": ("f.jpg", b"\xff\xd8\xff" + bytes(ml.MAX_IMAGE_BYTES), "image/jpeg")},
    )
    assert image.status_code == 413 and "5 MB" in image.json()["detail"]
