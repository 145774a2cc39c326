"""Helpers of the service tests: a small fitted policy, the server runner, the log reader."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from drivetrain.model import OutcomeModel
from drivetrain.policy import Policy
from drivetrain.serve import ServiceProcess
from drivetrain.twin import NBOOTwin

if TYPE_CHECKING:
    from drivetrain.adapt import EmbeddedRegistry

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "examples" / "nboo" / "drivetrain.yaml"
TOKEN = "test-token-0123456789"


def fit_policy(directory: Path, *, version: str, seed: int = 3) -> Path:
    twin = NBOOTwin(seed=seed)
    decisions = twin.expected_log(twin.population(6000))
    model = OutcomeModel(n_folds=2, n_estimators=30, min_child_samples=50).fit(decisions, twin.spec)
    Policy.from_model(twin.spec, model, {}, version=version).save(directory)
    return directory


Server = ServiceProcess


def champion_registry(root: Path, *policy_dirs: Path) -> tuple[EmbeddedRegistry, datetime, list[Policy]]:
    """A registry at ``root`` with the policies registered an hour ago and the first one promoted to champion:
    (the registry, that time, the policies)."""
    from drivetrain.adapt import EmbeddedRegistry, Lineage, promote

    registry = EmbeddedRegistry(root, create=True)
    t0 = datetime.now(UTC) - timedelta(hours=1)
    policies = [Policy.load(d) for d in policy_dirs]
    for policy in policies:
        registry.register(policy, Lineage(spec_hash="s", model_spec_hash="m", data_start=None, data_end=None, rows=0), at=t0, who="test")
    promote(registry, policies[0].version, at=t0, who="test", why="first")
    return registry, t0, policies


def start_server(policy: Path, work: Path, *extra: str, token: str | None = TOKEN) -> ServiceProcess:
    """Run `drivetrain serve` on a free port and wait for /v1/health (with a deadline)."""
    return ServiceProcess.start(SPEC, policy, work, *extra, token=token, deadline_s=60.0)


def read_store(server: Server) -> pd.DataFrame:
    """The decisions compacted into the server's store so far."""
    decisions = server.store / "decisions"
    if decisions.exists() and any(decisions.rglob("*.parquet")):
        return pd.read_parquet(decisions)
    return pd.DataFrame({"request_id": []})


def read_log(server: Server) -> pd.DataFrame:
    """Every decision a stopped server logged: compacted into the store plus still in segments."""
    from drivetrain.serve._log import read_segments

    parts = []
    decisions = server.store / "decisions"
    if decisions.exists() and any(decisions.rglob("*.parquet")):
        parts.append(pd.read_parquet(decisions))
    segments = sorted(server.log_dir.glob("*.jsonl"))
    if segments:
        parts.append(read_segments(segments)[0])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"request_id": []})
