"""A service that follows the registry's champion alias: a promotion and a rollback switch the served policy
under a concurrent load, without a restart and without a failed request; after the rollback it serves the
previous artifact, checksum for checksum."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from drivetrain.adapt import EmbeddedRegistry, Lineage, promote, rollback
from drivetrain.policy import Policy
from tests.serve.service_helpers import start_server

LINEAGE = Lineage(spec_hash="s", model_spec_hash="m", data_start=None, data_end=None, rows=0)


class Load:
    """``threads`` clients deciding in a loop until stopped; every answer's status and policy version counted."""

    def __init__(self, url: str, contexts: list[dict[str, Any]], threads: int = 3) -> None:
        self.url, self.contexts = url, contexts
        self.answers: Counter[tuple[int, str | None]] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, worker: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as client:
            i = 0
            while not self._stop.is_set():
                ctx = dict(self.contexts[(worker * 7919 + i) % len(self.contexts)])
                unit = ctx.pop("unit_id")
                try:
                    r = client.post("/v1/decide", json={"unit_id": unit, "context": ctx, "request_id": f"load-{worker}-{i}"})
                    body = r.json() if r.status_code == 200 else {}
                    key = (r.status_code, body.get("policy_version") if body.get("fallback_reason") is None else f"fallback: {body['fallback_reason']}")
                except httpx.HTTPError as exc:
                    key = (0, None)
                    with self._lock:
                        self.errors.append(repr(exc))
                with self._lock:
                    self.answers[key] += 1
                i += 1

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def served(self, version: str) -> int:
        with self._lock:
            return self.answers[(200, version)]


def _wait_for(load: Load, version: str, client: httpx.Client, deadline_s: float = 60.0) -> None:
    """Until /v1/policy names ``version`` and some decisions were made with it since (no timing asserted)."""
    end = time.monotonic() + deadline_s
    while client.get("/v1/policy").json()["policy_version"] != version:
        assert time.monotonic() < end, f"the service did not switch to {version}"
        time.sleep(0.02)
    seen = load.served(version)
    while load.served(version) < seen + 20:
        assert time.monotonic() < end, f"no decisions served by {version}"
        time.sleep(0.02)


def test_promote_then_rollback_under_load_switches_without_restart_or_failed_request(
        policies: tuple[Path, Path], contexts: list[dict[str, Any]], tmp_path: Path) -> None:
    registry = EmbeddedRegistry(tmp_path / "registry", create=True)
    t0 = datetime.now(UTC) - timedelta(hours=1)
    a, b = Policy.load(policies[0]), Policy.load(policies[1])
    for policy in (a, b):
        registry.register(policy, LINEAGE, at=t0, who="test")
    promote(registry, a.version, at=t0, who="test", why="first")
    server = start_server(None, tmp_path / "served", "--registry", str(registry.root), "--segment-age", "1", "--compact-every", "1")
    pid = server.process.pid
    try:
        with server.client() as client, Load(server.url, contexts) as load:
            _wait_for(load, a.version, client)
            promote(registry, b.version, at=t0 + timedelta(minutes=1), who="test", why="promotion under load")
            _wait_for(load, b.version, client)
            assert rollback(registry, at=t0 + timedelta(minutes=2), who="test", why="drill under load") == a.version
            _wait_for(load, a.version, client)
            info = client.get("/v1/policy").json()
        assert server.process.poll() is None and server.process.pid == pid  # the same process throughout: no restart
        answers = dict(load.answers)
        # an answer is the policy's decision, or the fallback the service gives by design when a decision took
        # longer than the spec's latency budget (a loaded machine); anything else failed
        failed = {k: n for k, n in answers.items()
                  if k[0] != 200 or not (k[1] in (a.version, b.version) or str(k[1]).startswith("fallback: over the latency budget"))}
        assert failed == {} and load.errors == [], (failed, load.errors[:3])
        assert answers[(200, a.version)] > 40 and answers[(200, b.version)] > 20
        assert info["policy_version"] == a.version and info["manifest_sha256"] == registry.version(a.version).checksum
        assert Path(info["policy_dir"]) == registry.artifact(a.version).resolve()
        assert info["manifest_sha256"] != registry.version(b.version).checksum
    finally:
        server.stop(signal.SIGTERM)
    assert "Traceback" not in server.stderr.read_text()


def test_serve_takes_one_of_policy_and_registry(tmp_path: Path) -> None:
    from tests.conftest import invoke
    from tests.serve.service_helpers import SPEC

    empty = EmbeddedRegistry(tmp_path / "registry", create=True)
    both = invoke("serve", "--spec", str(SPEC), "--store", str(tmp_path / "s"), "--policy", str(tmp_path), "--registry", str(empty.root))
    assert both.returncode == 2 and "give one of `--policy`" in both.stderr and "got both" in both.stderr
    unset = invoke("serve", "--spec", str(SPEC), "--store", str(tmp_path / "s"), "--registry", str(empty.root))
    assert unset.returncode == 2 and "must name a version to serve" in unset.stderr
