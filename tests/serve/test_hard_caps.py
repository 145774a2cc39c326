"""Hard caps as served: the capped actions' share of a day's decisions never exceeds the cap, after every
decision, even where the policy's prices would give them to more units; the service and the batch path
decide the same."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drivetrain.errors import SpecError
from drivetrain.policy import CapCounter, Policy
from drivetrain.serve import Decider
from drivetrain.spec import parse_spec
from drivetrain.twin import NBOOTwin

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
SHARE = 0.05


@pytest.fixture(scope="module")
def capped(policies: tuple[Path, Path]) -> tuple[Policy, Policy]:
    """(the policy without any price on the bundle cap, the same with the cap hard at 5%)."""
    policy = Policy.load(policies[0])
    raw = policy.spec.model.model_dump(mode="json")
    raw["serving"]["latency_budget_ms"] = 600_000.0  # decisions are compared, never timings
    free = dataclasses.replace(policy, spec=parse_spec(raw), multipliers={})
    raw["constraints"]["caps"][0].update(max_share=SHARE, hard=True)
    return free, dataclasses.replace(policy, spec=parse_spec(raw), multipliers={})


def _contexts(n: int) -> pd.DataFrame:
    return NBOOTwin(seed=21).population(n, offset=3_000_000)


def _bundle(policy: Policy, action_ids: pd.Series) -> np.ndarray:
    mask = policy.spec.caps[0][1]
    ids = np.asarray(policy.spec.action_space.ids)
    return np.isin(action_ids.to_numpy(), ids[mask])


def test_served_shares_never_exceed_a_hard_cap(capped: tuple[Policy, Policy]) -> None:
    free, hard = capped
    contexts = _contexts(3000)
    program = hard.spec.eligible_units({n: contexts[n].to_numpy() for n in hard.spec.features})
    unconstrained, _ = free.decisions_table(contexts, now=NOW)
    assert _bundle(free, unconstrained["action_id"])[program].mean() > 2 * SHARE  # the prices alone would break it
    table, _ = hard.decisions_table(contexts, now=NOW)
    capped_rows = _bundle(hard, table["action_id"])[program]
    running = np.cumsum(capped_rows) / np.arange(1, len(capped_rows) + 1)
    assert running.max() <= SHARE + 1e-12  # after every decision, not only at the end
    # and the cap is used, not just refused: a row decided with room under the cap is the free policy's decision
    before = np.concatenate([[0], np.cumsum(capped_rows)[:-1]])
    room = before + 1 <= SHARE * np.arange(1, len(capped_rows) + 1) + 1e-9
    assert room.sum() > 100
    assert (table["action_id"][program][room] == unconstrained["action_id"][program][room]).all()
    assert (table["propensity"][program][room] == unconstrained["propensity"][program][room]).all()
    assert capped_rows.mean() > 0.9 * SHARE
    # a row decided with the cap used up was drawn over the remaining actions: its propensity says so
    blocked = table[program & ~_bundle(hard, table["action_id"]) & (table["assignment"] == "explore")]
    assert len(blocked) and (blocked["propensity"] > 0).all()


def test_the_service_decides_as_the_batch_and_a_new_day_starts_a_new_count(capped: tuple[Policy, Policy]) -> None:
    _free, hard = capped
    contexts = _contexts(400)
    table, _ = hard.decisions_table(contexts, now=NOW)
    decider = Decider(hard.spec, hard)
    rows = contexts.to_dict("records")
    served = [decider.decide(str(r["unit_id"]), {k: v for k, v in r.items() if k != "unit_id"},
                             request_id=str(table["request_id"][i]), now=NOW).response for i, r in enumerate(rows)]
    assert [s["action_id"] for s in served] == table["action_id"].tolist()
    np.testing.assert_allclose([s["propensity"] for s in served], table["propensity"], rtol=1e-12)
    counter = CapCounter(hard.spec)
    program = np.ones(1, dtype=bool)
    scores = np.zeros((1, len(hard.spec.action_space)))
    scores[0, np.flatnonzero(hard.spec.caps[0][1])[0]] = 10.0  # the capped action is the best by far
    first = counter.choose(hard, np.array(["u"], dtype=object), np.array(["r1"], dtype=object), scores, None, program, NOW)
    assert not hard.spec.caps[0][1][first.action[0]]  # 1 of 1 would be 100% > 5%
    for _ in range(19):
        counter.count(hard.spec.control.index, NOW)
    second = counter.choose(hard, np.array(["u"], dtype=object), np.array(["r2"], dtype=object), scores, None, program, NOW)
    assert counter.decisions == 21 and counter.used[0] == 1 and hard.spec.caps[0][1][second.action[0]]  # 1 of 21 <= 5%
    counter.blocked(NOW + timedelta(days=1))
    assert counter.decisions == 0 and counter.used[0] == 0


def test_a_hard_cap_must_not_hold_the_control_action() -> None:
    raw = NBOOTwin(seed=1).spec.model.model_dump(mode="json")
    raw["constraints"]["caps"][0].update(actions={"offer_type": ["none", "bundle"]}, hard=True)
    with pytest.raises(SpecError, match="hard cap must not include the control"):
        parse_spec(raw)
