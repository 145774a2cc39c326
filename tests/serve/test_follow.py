"""A service that follows the registry's champion alias: a promotion and a rollback switch the served policy
under a concurrent load, without a restart and without a failed request; after the rollback it serves the
previous artifact, checksum for checksum."""

from __future__ import annotations

import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from drivetrain.adapt import EmbeddedRegistry, promote, rollback
from drivetrain.serve import DecisionLoad
from tests.serve.service_helpers import champion_registry, start_server


def _wait_for(load: DecisionLoad, version: str, client: httpx.Client, deadline_s: float = 60.0) -> None:
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
    registry, t0, (a, b) = champion_registry(tmp_path / "registry", *policies)
    server = start_server(None, tmp_path / "served", "--registry", str(registry.root), "--segment-age", "1", "--compact-every", "1")
    pid = server.process.pid
    try:
        with server.client() as client, DecisionLoad(server.url, contexts) as load:
            _wait_for(load, a.version, client)
            promote(registry, b.version, at=t0 + timedelta(minutes=1), who="test", why="promotion under load")
            _wait_for(load, b.version, client)
            assert rollback(registry, at=t0 + timedelta(minutes=2), who="test", why="drill under load") == a.version
            _wait_for(load, a.version, client)
            info = client.get("/v1/policy").json()
        assert server.process.poll() is None and server.process.pid == pid  # the same process throughout: no restart
        answers = load.counts()
        # an answer is the policy's decision, or the fallback the service gives by design when a decision took
        # longer than the spec's latency budget (a loaded machine); anything else failed
        failed = {k: n for k, n in answers.items()
                  if k[0] != 200 or not (k[1] in (a.version, b.version) or str(k[1]).startswith("fallback: over the latency budget"))}
        assert failed == {}, failed
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
