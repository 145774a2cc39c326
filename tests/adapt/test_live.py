"""Shadow and canary on live traffic: exact propensities per arm, the canary's checks, the automatic
rollback within the watch window, and a rollback that serves the previous artifact."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drivetrain.adapt import (
    EmbeddedRegistry,
    Lineage,
    MemoryRegistry,
    adapt,
    always_valid_p,
    canary_check,
    canary_units,
    promote,
    serve,
)
from drivetrain.clock import SimulatedClock
from drivetrain.data import MemoryStore, RawRows, ingest_decisions, ingest_outcomes
from drivetrain.evaluate import Alert, store_alerts
from drivetrain.policy import Policy
from drivetrain.twin import NBOOTwin
from tests.adapt.harness import gate_spec, named

LINEAGE = Lineage(spec_hash="s", model_spec_hash="m", data_start=None, data_end=None, rows=0)


def test_canary_units_get_the_candidate_with_exact_propensities_and_shadow_is_never_acted_on(tiny_policy: Policy) -> None:
    twin = NBOOTwin(horizon_days=7, seed=11)
    contexts = twin.population(3000).assign(request_id=[f"r{i}" for i in range(3000)])
    champion = named(tiny_policy, "champ")
    challenger = replace(named(tiny_policy, "cand"), exploration_rate=0.3, multipliers={k: 2 * v for k, v in tiny_policy.multipliers.items()})
    now = twin.start + timedelta(days=1)
    decided, log = serve(champion, contexts, now=now, challenger=challenger, stage="canary")
    assert log.empty
    chosen = canary_units(tiny_policy.spec, contexts["unit_id"])
    assert 0.05 < chosen.mean() < 0.2  # the spec's canary share is 0.1
    assert (decided["policy_version"] == np.where(chosen, "cand", "champ")).all()
    assert set(decided.loc[chosen, "assignment"]) <= {"canary", "explore", "holdout"} and "canary" in set(decided["assignment"])
    assert "canary" not in set(decided.loc[~chosen, "assignment"])
    action = tiny_policy.spec.action_space.indices(decided["action_id"].to_numpy())
    for policy, rows in ((challenger, chosen), (champion, ~chosen)):
        dist = policy.action_distribution(contexts[rows].reset_index(drop=True))
        np.testing.assert_allclose(decided.loc[rows, "propensity"].to_numpy(dtype=float), dist[np.arange(rows.sum()), action[rows]])
    acted, shadow = serve(champion, contexts, now=now, challenger=challenger, stage="shadow")
    assert (acted["policy_version"] == "champ").all() and len(shadow) == len(contexts)
    assert (shadow["assignment"] == "shadow").all() and (shadow["request_id"] == acted["request_id"]).all()
    assert np.isfinite(shadow["predicted"]).all()


def test_the_always_valid_p_value_shrinks_with_the_evidence() -> None:
    assert always_valid_p(0.0, 1e-4, 1e-4) == 1.0
    ps = [always_valid_p(0.01, v, 1e-4) for v in (1e-4, 1e-5, 1e-6)]
    assert ps[0] > ps[1] > ps[2] and ps[2] < 1e-3


def _canary_store(complaints_in_canary: float, canary_share: float) -> tuple[MemoryStore, object]:
    spec = gate_spec()
    store = MemoryStore(spec)
    twin = NBOOTwin(horizon_days=7, seed=12)
    frame = twin.population(6000)
    chosen = canary_units(spec, frame["unit_id"])
    if canary_share < 0.1:  # lose canary decisions: the arms no longer match the share
        chosen &= np.arange(len(frame)) % 3 == 0
        frame = frame[chosen | ~canary_units(spec, frame["unit_id"])]
        chosen = canary_units(spec, frame["unit_id"])
    d1, o1 = twin.log(frame[chosen], policy_version="cand")
    d2, o2 = twin.log(frame[~chosen], policy_version="champ")
    d2["request_id"] = "b" + d2["request_id"]  # two logs of one day number their requests alike
    o2["request_id"] = np.where(o2["request_id"].isna(), None, "b" + o2["request_id"].astype(str))
    o2["event_id"] = "b" + o2["event_id"]
    extra = d1.sample(frac=complaints_in_canary, random_state=0) if complaints_in_canary else d1.iloc[:0]
    o3 = pd.DataFrame({"event_id": extra["request_id"] + ":extra-complaint", "request_id": extra["request_id"], "unit_id": extra["unit_id"],
                       "occurred_at": extra["decided_at"] + pd.Timedelta(hours=1), "received_at": extra["decided_at"] + pd.Timedelta(hours=2),
                       "component": "complaint", "value": 1.0})
    clock = SimulatedClock(twin.start + timedelta(days=9))
    ingest_decisions(store, RawRows(pd.concat([d1, d2], ignore_index=True), (), "arms"), clock=clock)
    ingest_outcomes(store, RawRows(pd.concat([o1, o2, o3], ignore_index=True), (), "arms"), clock=clock)
    return store, clock.now()


def test_the_canary_is_stopped_by_a_guardrail_it_breaks_and_by_a_sample_ratio_mismatch() -> None:
    store, t = _canary_store(0.3, 0.1)
    since = t - timedelta(days=30)
    broken = canary_check(store, t, candidate="cand", champion="champ", since=since)
    assert broken is not None and not broken.passed and "guardrail complaint_rate in the canary" in broken.reason
    store, t = _canary_store(0.0, 0.1)
    fine = canary_check(store, t, candidate="cand", champion="champ", since=since)
    assert fine is None or fine.passed or "north star" in fine.reason  # the same world in both arms: no guardrail fires
    store, t = _canary_store(0.0, 0.03)
    lost = canary_check(store, t, candidate="cand", champion="champ", since=since)
    assert lost is not None and not lost.passed and "sample ratio mismatch" in lost.reason


def test_a_guardrail_alert_within_the_watch_window_rolls_the_promotion_back(tiny_policy: Policy) -> None:
    store = MemoryStore(gate_spec())
    registry = MemoryRegistry()
    t0 = NBOOTwin().start + timedelta(days=20)
    for v in ("v1", "v2"):
        registry.register(named(tiny_policy, v), LINEAGE, at=t0, who="t")
    promote(registry, "v1", at=t0, who="t", why="first")
    promote(registry, "v2", at=t0 + timedelta(days=1), who="t", why="canary passed")
    quiet = adapt(store, registry, t0 + timedelta(days=2))
    assert registry.alias("champion") == "v2" and not any(a.startswith("rolled back") for a in quiet.actions)
    alert = Alert("guardrails", "guardrail", "complaint_rate", 0.03, 0.02, "complaint_rate over its bound", t0 + timedelta(days=3))
    store_alerts(store, [alert], fired_at=t0 + timedelta(days=3))
    step = adapt(store, registry, t0 + timedelta(days=3))
    assert step.actions[0].startswith("rolled back v2 to v1") and "complaint_rate" in step.actions[0]
    assert registry.alias("champion") == "v1" and registry.status("v2") == "rolled back"
    assert registry.live_at(t0 + timedelta(days=2)) == "v2" and registry.live_at(t0 + timedelta(days=3)) == "v1"
    # after the watch window (7 days) an alert is the monitor's business, not a reason to undo the promotion
    promote(registry, "v2", at=t0 + timedelta(days=4), who="t", why="again")
    late = t0 + timedelta(days=4) + gate_spec().model.adaptation.watch_window + timedelta(hours=1)
    store_alerts(store, [Alert("guardrails", "guardrail", "refund_rate", 0.04, 0.03, "refund_rate over its bound", late)], fired_at=late)
    step = adapt(store, registry, late)
    assert registry.alias("champion") == "v2" and not any(a.startswith("rolled back") for a in step.actions), step.actions


def test_a_rollback_serves_the_previous_artifact_with_its_checksum(tmp_path: Path, tiny_policy: Policy) -> None:
    from drivetrain.adapt import rollback

    registry = EmbeddedRegistry(tmp_path / "r", create=True)
    t0 = NBOOTwin().start
    for v in ("v1", "v2"):
        registry.register(named(tiny_policy, v), LINEAGE, at=t0, who="t")
    promote(registry, "v1", at=t0, who="t", why="first")
    promote(registry, "v2", at=t0 + timedelta(hours=1), who="t", why="second")
    before = registry.version("v1").checksum
    assert rollback(registry, at=t0 + timedelta(hours=2), who="t", why="drill") == "v1"
    champion = registry.alias("champion")
    assert champion == "v1" and registry.load(champion).version == "v1"
    import hashlib

    assert hashlib.sha256((registry.artifact("v1") / "manifest.json").read_bytes()).hexdigest() == before
    with pytest.raises(Exception, match="last-good"):
        rollback(registry, at=t0 + timedelta(hours=3), who="t", why="again")
