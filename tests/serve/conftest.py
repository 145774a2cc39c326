"""Session fixtures of the service tests: contexts and the shared server (the two small fitted policies are
in tests/conftest.py: the soak benchmark's test serves one too)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivetrain.twin import NBOOTwin
from tests.serve.service_helpers import Server, start_server


@pytest.fixture(scope="session")
def contexts() -> list[dict[str, Any]]:
    frame = NBOOTwin(seed=9).population(500, offset=7_000_000)
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict("records")]


@pytest.fixture(scope="session")
def server(policies: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shared server: policy a, short segments, compaction every second."""
    running = start_server(policies[0], tmp_path_factory.mktemp("served"), "--segment-age", "1", "--compact-every", "1")
    yield running
    running.stop(signal.SIGTERM)


