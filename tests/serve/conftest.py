"""One small fitted policy per session, and a helper that runs the real service in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from drivetrain.model import OutcomeModel
from drivetrain.policy import Policy
from drivetrain.twin import NBOOTwin

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "examples" / "nboo" / "drivetrain.yaml"
TOKEN = "test-token-0123456789"


def fit_policy(directory: Path, *, version: str, seed: int = 3) -> Path:
    twin = NBOOTwin(seed=seed)
    users = twin.population(6000)
    decisions, _ = twin.log(users)
    truth = twin.truth(users)
    action = twin.spec.action_space.indices(decisions["action_id"].to_numpy())
    for c in twin.spec.outcomes:
        decisions[c] = truth.components[c][np.arange(len(users)), action]
    model = OutcomeModel(n_folds=2, n_estimators=30, min_child_samples=50).fit(decisions, twin.spec)
    Policy.from_model(twin.spec, model, {}, version=version).save(directory)
    return directory


@pytest.fixture(scope="session")
def policies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("policies")
    return fit_policy(root / "a", version="policy-a", seed=3), fit_policy(root / "b", version="policy-b", seed=4)


@pytest.fixture(scope="session")
def contexts() -> list[dict[str, Any]]:
    frame = NBOOTwin(seed=9).population(500, offset=7_000_000)
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict("records")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    store: Path
    log_dir: Path
    stderr: Path

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0, **kw)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)


def start_server(policy: Path, work: Path, *extra: str, token: str | None = TOKEN, deadline_s: float = 60.0) -> Server:
    """Run `drivetrain serve` on a free port and wait for /v1/health (with a deadline)."""
    port = free_port()
    store, log_dir = work / "store", work / "store-log"
    env = dict(os.environ)
    env.pop("DRIVETRAIN_TOKEN", None)
    if token is not None:
        env["DRIVETRAIN_TOKEN"] = token
    stderr = work / f"server-{port}.err"
    process = subprocess.Popen(
        [sys.executable, "-m", "drivetrain", "serve", "--spec", str(SPEC), "--policy", str(policy), "--store", str(store),
         "--log-dir", str(log_dir), "--port", str(port), *extra],
        stdout=subprocess.DEVNULL, stderr=stderr.open("wb"), env=env, start_new_session=True)
    server = Server(process, f"http://127.0.0.1:{port}", store, log_dir, stderr)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {stderr.read_text()}")
        try:
            if httpx.get(f"{server.url}/v1/health", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.kill()
    raise AssertionError(f"server did not answer /v1/health within {deadline_s}s: {stderr.read_text()}")


@pytest.fixture(scope="session")
def server(policies: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shared server: policy a, short segments, compaction every second."""
    running = start_server(policies[0], tmp_path_factory.mktemp("served"), "--segment-age", "1", "--compact-every", "1")
    yield running
    running.kill(signal.SIGTERM)


def read_log(server: Server) -> pd.DataFrame:
    """Every decision the server logged: compacted into the store plus still in segments."""
    from drivetrain.serve._log import read_segments

    parts = []
    decisions = server.store / "decisions"
    if decisions.exists() and any(decisions.rglob("*.parquet")):
        parts.append(pd.read_parquet(decisions))
    segments = sorted(server.log_dir.glob("*.jsonl"))
    if segments:
        parts.append(read_segments(segments)[0])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"request_id": []})
