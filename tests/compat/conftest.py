"""One running platform for every client test in this folder (see running_platform.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.compat.running_platform import RunningPlatform, running_platform
from tests.conftest import RunningBroker, find_free_port


@pytest.fixture(scope="package")
def platform(tmp_path_factory: pytest.TempPathFactory, mqtt_broker: RunningBroker) -> Iterator[RunningPlatform]:
    with running_platform(tmp_path_factory.mktemp("compat"), mqtt_broker.url, find_free_port) as running:
        yield running
