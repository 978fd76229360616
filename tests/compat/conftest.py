"""One running platform for every client test in this folder (see running_platform.py)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.compat.running_platform import OPERATOR_KEY, RunningPlatform, running_platform
from tests.conftest import RunningBroker, find_free_port


@pytest.fixture(scope="package")
def platform(tmp_path_factory: pytest.TempPathFactory, mqtt_broker: RunningBroker) -> Iterator[RunningPlatform]:
    with running_platform(tmp_path_factory.mktemp("compat"), mqtt_broker.url, find_free_port) as running:
        yield running


@pytest.fixture(scope="module")
def viewer(platform: RunningPlatform) -> Iterator[httpx.Client]:
    """A dashboard's or script's HTTP client: the platform's address and a viewer key."""
    with platform.http() as client:
        yield client


@pytest.fixture(scope="module")
def operator(platform: RunningPlatform) -> Iterator[httpx.Client]:
    """An external agent's or operator's HTTP client: raises alerts and sends commands."""
    with platform.http(OPERATOR_KEY) as client:
        yield client
