"""Run `drivetrain serve` as a child process on a free local port, and drive it with closed-loop clients
(the demo, the benchmarks, the drills and the tests)."""

from __future__ import annotations

import functools
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from drivetrain.errors import UsageError

__all__ = ["DecisionLoad", "ServiceProcess", "free_port", "http_client"]

TOKEN_ENV = "DRIVETRAIN_TOKEN"


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@functools.cache
def _tls() -> ssl.SSLContext:
    return httpx.create_ssl_context()


def http_client(base_url: str = "", *, timeout: float = 10.0) -> httpx.Client:
    """An httpx client built on the process's one TLS context (httpx's default: its CA bundle, verified):
    httpx builds and fills a context for every client otherwise, 27 ms of CPU each, even for a client that
    speaks plain HTTP to a local service. Contexts are safe to share between threads."""
    return httpx.Client(base_url=base_url, timeout=timeout, verify=_tls())


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
        with service.client(timeout=1.0) as client:
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
        """A client of the service (:func:`http_client`)."""
        return http_client(self.url, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
        """Send ``sig`` to the service's process group and wait for it to end."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)


class DecisionLoad:
    """``threads`` closed-loop clients posting ``/v1/decide`` for ``contexts`` (each a context with its
    ``unit_id``) until stopped, each request with an id of its own. Every answer is kept in ``answers`` as
    (monotonic time received, HTTP status or 0 for a transport error, what answered): the policy version,
    ``fallback: <reason>`` for a fallback, the error's text for a transport error. Use it as a context manager
    or with ``start`` and ``stop``."""

    def __init__(self, url: str, contexts: Sequence[Mapping[str, Any]], threads: int = 3) -> None:
        if not contexts:
            raise UsageError("`contexts` must hold at least one context, got none")
        self.url, self.contexts = url, list(contexts)
        self.answers: list[tuple[float, int, str]] = []
        self._run_id = uuid.uuid4().hex[:12]  # ids unique across loads on one service: a repeated id is a retry
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, worker: int) -> None:
        with http_client(self.url, timeout=30.0) as client:
            i = 0
            while not self._stop.is_set():
                ctx = dict(self.contexts[(worker * 7919 + i) % len(self.contexts)])
                body = {"unit_id": ctx.pop("unit_id"), "context": ctx, "request_id": f"load-{self._run_id}-{worker}-{i}"}
                try:
                    r = client.post("/v1/decide", json=body)
                    got = r.json() if r.status_code == 200 else {}
                    what = str(got.get("policy_version")) if got.get("fallback_reason") is None else f"fallback: {got['fallback_reason']}"
                    answer = (time.monotonic(), r.status_code, what)
                except httpx.HTTPError as exc:
                    answer = (time.monotonic(), 0, repr(exc))
                with self._lock:
                    self.answers.append(answer)
                i += 1

    def start(self) -> DecisionLoad:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def __enter__(self) -> DecisionLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def counts(self) -> Counter[tuple[int, str]]:
        """How many answers of each (status, what) so far."""
        with self._lock:
            return Counter((s, w) for _, s, w in self.answers)

    def served(self, version: str) -> int:
        """How many decisions ``version`` answered so far."""
        return self.counts()[(200, version)]

    def switch(self, moved: float, version: str, old: str, deadline_s: float = 30.0) -> tuple[float, float]:
        """(seconds from ``moved`` (monotonic) to the first answer by ``version``, to ``old``'s last answer)."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            with self._lock:
                first = next((t for t, s, v in self.answers if t >= moved and s == 200 and v == version), None)
            if first is not None:
                time.sleep(0.3)  # answers in flight at the move arrive
                with self._lock:
                    last_old = max((t for t, s, v in self.answers if t >= moved and v == old), default=moved)
                return first - moved, last_old - moved
            time.sleep(0.005)
        raise TimeoutError(f"no answer by {version} within {deadline_s:g} s of the move")
