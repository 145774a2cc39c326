"""The service that follows the registry's champion also serves its challenger, as `drivetrain adapt` moves it:
in shadow the challenger decides beside the champion for every request without being acted on, and its
decisions reach the registry's shadow log; in canary it decides for the canary's units (the salted hash of
`canary_units`, stable across requests), logged as the `canary` arm with the propensity of its own policy;
when it leaves live traffic, the champion decides for everyone again."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import yaml

from drivetrain.adapt import Lineage, shadow_check
from drivetrain.policy import Policy
from drivetrain.serve import ServiceProcess
from drivetrain.spec import canary_units, load_spec
from tests.serve.service_helpers import SPEC, TOKEN, champion_registry, read_store

LINEAGE = Lineage(spec_hash="s", model_spec_hash="m", data_start=None, data_end=None, rows=0)


def _until(check: Callable[[], bool], what: str, deadline_s: float = 60.0) -> None:
    """Wait for ``check`` (a deadline against a hang, nothing timed)."""
    end = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def _server(tmp_path: Path, registry: Path, *extra: str) -> ServiceProcess:
    """`drivetrain serve --registry` on the example spec with a latency budget no machine misses: these tests
    compare every answer with the policy's decision, and a decision over the budget falls back by design."""
    raw = yaml.safe_load(SPEC.read_text())
    raw["serving"]["latency_budget_ms"] = 60_000
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    return ServiceProcess.start(spec, None, tmp_path / "served", "--registry", str(registry), *extra, token=TOKEN, deadline_s=60.0)


def _decide(client: httpx.Client, contexts: list[dict[str, Any]], prefix: str) -> pd.DataFrame:
    answers = []
    for i, row in enumerate(contexts):
        context = {k: v for k, v in row.items() if k != "unit_id"}
        r = client.post("/v1/decide", json={"unit_id": row["unit_id"], "context": context, "request_id": f"{prefix}-{i}"})
        assert r.status_code == 200, r.text
        answers.append(r.json())
    return pd.DataFrame(answers)


def _offline(policy: Policy, contexts: list[dict[str, Any]], prefix: str) -> pd.DataFrame:
    """What ``policy`` decides for the same requests off-line (the same hash draws on the same request ids)."""
    frame = pd.DataFrame(contexts).assign(request_id=[f"{prefix}-{i}" for i in range(len(contexts))])
    table, fallbacks = policy.decisions_table(frame, now=datetime.now(UTC))
    assert fallbacks == 0
    return table


def test_the_champions_service_serves_the_challenger_in_shadow_then_in_canary(
        policies: tuple[Path, Path], contexts: list[dict[str, Any]], tmp_path: Path) -> None:
    spec = load_spec(SPEC)
    registry, t0, (a, b) = champion_registry(tmp_path / "registry", *policies)
    registry.record(at=t0, who="test", why="off-line gates passed", kind="gate", aliases={"challenger": b.version},
                    statuses={b.version: "shadow"})
    server = _server(tmp_path, registry.root, "--segment-age", "1", "--compact-every", "1")
    try:
        with server.client() as client:
            def challenger() -> Any:
                return client.get("/v1/health").json()["challenger"]

            # shadow: every answer is the champion's; the challenger's decision of each request reaches the registry
            _until(lambda: challenger() == {"policy_version": b.version, "stage": "shadow", "multipliers": dict(b.multipliers)},
                   "the challenger in shadow")
            shadowed = contexts[:120]
            served = _decide(client, shadowed, "shadow")
            assert set(served["policy_version"]) == {a.version} and "canary" not in set(served["assignment"])
            _until(lambda: len(registry.shadow(b.version)) >= len(shadowed), "the shadow decisions in the registry")
            log = registry.shadow(b.version).set_index("request_id").loc[[f"shadow-{i}" for i in range(len(shadowed))]]
            assert len(registry.shadow(b.version)) == len(shadowed)  # one shadow row per decision, none twice
            offline_b, offline_a = _offline(b, shadowed, "shadow"), _offline(a, shadowed, "shadow")
            assert (log["action_id"].to_numpy() == offline_b["action_id"].to_numpy()).all()
            assert (log["champion_action_id"].to_numpy() == served["action_id"].to_numpy()).all()
            assert (served["action_id"].to_numpy() == offline_a["action_id"].to_numpy()).all()
            chosen = [f"pred__{x}" for x in offline_b["action_id"]]
            predicted = offline_b[chosen].to_numpy()[np.arange(len(shadowed)), np.arange(len(shadowed))]
            assert np.allclose(log["predicted"].to_numpy(dtype=float), predicted, rtol=1e-9)
            gate = shadow_check(registry.shadow(b.version), b.version)
            assert gate.passed and gate.figures["decisions"] == len(shadowed), gate

            # canary: the canary's units get the challenger, logged as the canary arm, with its own propensities
            registry.record(at=t0 + timedelta(minutes=1), who="test", why="shadow passed", kind="gate", statuses={b.version: "canary"})
            _until(lambda: (challenger() or {}).get("stage") == "canary", "the challenger in canary")
            canaried = contexts[120:]
            answers = _decide(client, canaried, "canary")
            again = _decide(client, canaried[:60], "canary-again")  # the same units again: the same arm
            units = np.array([row["unit_id"] for row in canaried], dtype=object)
            inside = canary_units(spec, units)
            assert 0 < inside.sum() < len(units)
            assert (answers["policy_version"].to_numpy() == np.where(inside, b.version, a.version)).all()
            assert (again["policy_version"].to_numpy() == answers["policy_version"].to_numpy()[:60]).all()
            offline_b, offline_a = _offline(b, canaried, "canary"), _offline(a, canaried, "canary")
            expected = offline_b["assignment"].where(~pd.Series(inside) | (offline_b["assignment"] != "policy"), "canary")
            assert (answers["assignment"].to_numpy() == np.where(inside, expected, offline_a["assignment"])).all()
            for column in ("action_id", "propensity"):
                want = np.where(inside, offline_b[column].to_numpy(), offline_a[column].to_numpy())
                assert (answers[column].to_numpy() == want).all(), column
            assert len(registry.shadow(b.version)) == len(shadowed)  # a canary logs no shadow decisions

            # off live traffic: the champion decides for everyone
            registry.record(at=t0 + timedelta(minutes=2), who="test", why="canary stopped", kind="gate",
                            aliases={"challenger": None}, statuses={b.version: "rejected"})
            _until(lambda: challenger() is None, "the challenger off live traffic")
            after = _decide(client, canaried, "after")
            assert set(after["policy_version"]) == {a.version}

            # the canary arm is in the store with its version, as the canary's verdict reads it
            ids = {f"canary-{i}" for i in np.flatnonzero(inside)}
            _until(lambda: ids <= set(read_store(server)["request_id"]), "the canary decisions in the store")
            stored = read_store(server).set_index("request_id").loc[sorted(ids)]
            assert set(stored["policy_version"]) == {b.version}
            assert (stored["assignment"] == answers.set_index("request_id").loc[sorted(ids), "assignment"]).all()
            assert "canary" in set(stored["assignment"])
    finally:
        server.stop(signal.SIGTERM)
    assert "Traceback" not in server.stderr.read_text()


def test_a_challenger_that_would_move_units_between_arms_is_refused_and_the_champion_serves_on(
        policies: tuple[Path, Path], contexts: list[dict[str, Any]], tmp_path: Path) -> None:
    registry, t0, (a,) = champion_registry(tmp_path / "registry", policies[0])
    other = replace(Policy.load(policies[1]), exploration_rate=a.exploration_rate + 0.05)
    registry.register(other, LINEAGE, at=t0, who="test")
    registry.record(at=t0, who="test", why="test", kind="gate", aliases={"challenger": other.version}, statuses={other.version: "canary"})
    server = _server(tmp_path, registry.root)
    try:
        with server.client() as client:
            _until(lambda: "refused the challenger" in (client.get("/v1/health").json()["challenger_error"] or ""), "the refusal")
            health = client.get("/v1/health").json()
            assert health["challenger"] is None and "exploration rate" in health["challenger_error"]
            answers = _decide(client, contexts[:80], "refused")
            assert set(answers["policy_version"]) == {a.version}
        # said once on stderr, not on every tick of the alias
        assert server.stderr.read_text().count("refused the challenger") == 1
    finally:
        server.stop(signal.SIGTERM)
    assert "Traceback" not in server.stderr.read_text()


def test_the_service_serves_each_version_at_the_price_the_registrys_pacing_set(
        policies: tuple[Path, Path], contexts: list[dict[str, Any]], tmp_path: Path) -> None:
    """`drivetrain adapt` records each live version's budget price for the day (an event of kind `price`);
    the service following the registry serves the champion, and the challenger in canary, at those prices
    from the next tick on, without a reload of the artifact: the decisions are the policy's at that price."""
    spec = load_spec(SPEC)
    budget = spec.budgets[0][0].name
    registry, t0, (a, b) = champion_registry(tmp_path / "registry", *policies)
    server = _server(tmp_path, registry.root)
    try:
        with server.client() as client:
            plan = dict(a.multipliers)
            assert client.get("/v1/policy").json()["multipliers"] == plan  # no pacing yet: the plan's prices
            before = _decide(client, contexts[:150], "plan")
            price = plan.get(budget, 0.0) + 2.0  # dear enough to change what some units get
            registry.record(at=t0, who="test", why="pacing", kind="price",
                            details={"as_of": t0.isoformat(), "budget": budget, "prices": {a.version: price}})
            _until(lambda: client.get("/v1/policy").json()["multipliers"].get(budget) == price, "the champion at the paced price")
            paced = _decide(client, contexts[:150], "paced")
            priced = replace(a, multipliers={**a.multipliers, budget: price})
            assert (paced["action_id"].to_numpy() == _offline(priced, contexts[:150], "paced")["action_id"].to_numpy()).all()
            assert (before["action_id"].to_numpy() == _offline(a, contexts[:150], "plan")["action_id"].to_numpy()).all()
            offers = {name: int((frame["action_id"] != spec.control.id).sum()) for name, frame in (("plan", before), ("paced", paced))}
            assert offers["paced"] < offers["plan"], offers  # the dearer budget buys fewer offers
            assert client.get("/v1/policy").json()["policy_version"] == a.version  # the same version, repriced

            # a challenger in canary gets its own price from the next pacing event
            registry.record(at=t0 + timedelta(minutes=1), who="test", why="to canary", kind="gate", aliases={"challenger": b.version},
                            statuses={b.version: "canary"})
            registry.record(at=t0 + timedelta(minutes=2), who="test", why="pacing", kind="price",
                            details={"as_of": (t0 + timedelta(minutes=2)).isoformat(), "budget": budget,
                                     "prices": {a.version: price, b.version: price + 1.0}})
            _until(lambda: ((client.get("/v1/health").json()["challenger"] or {}).get("multipliers") or {}).get(budget) == price + 1.0,
                   "the challenger at its paced price")
            answers = _decide(client, contexts[150:], "canary-paced")
            inside = canary_units(spec, np.array([row["unit_id"] for row in contexts[150:]], dtype=object))
            want = np.where(inside, _offline(replace(b, multipliers={**b.multipliers, budget: price + 1.0}), contexts[150:], "canary-paced")["action_id"],
                            _offline(priced, contexts[150:], "canary-paced")["action_id"])
            assert inside.any() and (answers["action_id"].to_numpy() == want).all()
    finally:
        server.stop(signal.SIGTERM)
    assert "Traceback" not in server.stderr.read_text()
