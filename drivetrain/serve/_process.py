"""Run `drivetrain serve` as a child process on a free local port (the demo, the benchmarks and the tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from drivetrain.errors import UsageError

__all__ = ["ServiceProcess", "free_port"]

TOKEN_ENV = "DRIVETRAIN_TOKEN"


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceProcess:
    """A running service: ``url``, where it keeps its store and log, and how to stop it."""

    process: subprocess.Popen[bytes]
    url: str
    store: Path
    log_dir: Path
    stderr: Path

    @classmethod
    def start(cls, spec: Path, policy: Path | None, work: Path, *extra: str, token: str | None = None,
              deadline_s: float = 120.0, ready: bool = False) -> ServiceProcess:
        """Start the service with its store and log under ``work``; return once /v1/health answers
        (``ready``: once it reports ready). The child gets its own process group, killed as a whole. Without
        ``policy``, ``extra`` says what to serve (``--registry``)."""
        work.mkdir(parents=True, exist_ok=True)
        port = free_port()
        store, log_dir = work / "store", work / "store-log"
        env = dict(os.environ)
        env.pop(TOKEN_ENV, None)
        if token is not None:
            env[TOKEN_ENV] = token
        stderr = work / f"service-{port}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "drivetrain", "serve", "--spec", str(spec), *(["--policy", str(policy)] if policy is not None else []),
             "--store", str(store),
             "--log-dir", str(log_dir), "--port", str(port), *extra],
            stdout=subprocess.DEVNULL, stderr=stderr.open("wb"), env=env, start_new_session=True)
        service = cls(process, f"http://127.0.0.1:{port}", store, log_dir, stderr)
        end = time.monotonic() + deadline_s
        with service.client(timeout=1.0) as client:  # one client: each new one loads the CA bundle (tens of ms of CPU)
            while time.monotonic() < end:
                if process.poll() is not None:
                    raise UsageError(f"the service exited with code {process.returncode}: {stderr.read_text()[-2000:]}")
                try:
                    health = client.get("/v1/health")
                    if health.status_code == 200 and (not ready or health.json()["status"] == "ready"):
                        return service
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        service.stop(signal.SIGKILL)
        raise UsageError(f"the service must answer /v1/health within {deadline_s:g}s, got no answer: {stderr.read_text()[-2000:]}")

    def client(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
        """Send ``sig`` to the service's process group and wait for it to end."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
