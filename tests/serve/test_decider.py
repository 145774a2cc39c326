"""The Decider (one request at a time) against the batch path, and its fail-safe rules."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from drivetrain.errors import UsageError
from drivetrain.policy import Policy, TieSplit
from drivetrain.serve import Decider
from drivetrain.spec import in_holdout, parse_spec
from drivetrain.twin import NBOOTwin

NOW = datetime(2026, 5, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def policy(policies: tuple[Path, Path]) -> Policy:
    return Policy.load(policies[0])


def _patient(policy: Policy) -> Decider:
    """A Decider that no pause of a loaded machine can push over its latency budget: the tests that
    compare it with the batch path compare decisions, never timings."""
    raw = policy.spec.model.model_dump(mode="json")
    raw["serving"]["latency_budget_ms"] = 600_000.0
    return Decider(parse_spec(raw), policy)


def _rows(n: int) -> list[dict[str, Any]]:
    frame = NBOOTwin(seed=21).population(n, offset=3_000_000)
    return frame.to_dict("records")  # type: ignore[return-value]


def test_one_at_a_time_equals_the_batch_path(policy: Policy) -> None:
    rows = _rows(300)
    frame = pd.DataFrame(rows).assign(request_id=[f"q{i}" for i in range(len(rows))])
    frame.loc[5, "tier"] = "platinum"  # a contract break: both fall back
    frame.loc[9, "avg_order_value"] = np.nan  # nullable: both decide
    table, fallbacks = policy.decisions_table(frame, now=NOW)
    decider = _patient(policy)
    assert decider.compiled is not None
    preds = [f"pred__{a}" for a in policy.spec.action_space.ids]
    for i, row in enumerate(frame.to_dict("records")):
        unit, rid = row.pop("unit_id"), row.pop("request_id")
        record = decider.decide(unit, row, request_id=rid, now=NOW).record
        expected = table.iloc[i]
        assert record["action_id"] == expected["action_id"] and record["assignment"] == expected["assignment"]
        assert record["propensity"] == pytest.approx(expected["propensity"], abs=1e-12)
        got = np.array([np.nan if record[p] is None else record[p] for p in preds], dtype=float)
        np.testing.assert_allclose(got, expected[preds].to_numpy(dtype=float), atol=1e-9)
        reason = expected["fallback_reason"]
        assert record["fallback_reason"] == (reason if isinstance(reason, str) else None)
    assert fallbacks == 1


def test_one_at_a_time_equals_the_batch_path_with_a_tie_split(policy: Policy) -> None:
    """A priced policy whose two sides differ for many units (a wide band): the served choice, drawn per
    request, and its mixed propensity are the batch path's, request by request."""
    split = dataclasses.replace(policy, multipliers={"promotion_budget": 0.3}, tie_split=TieSplit(band=0.9, low_share=0.4))
    frame = pd.DataFrame(_rows(300)).assign(request_id=[f"t{i}" for i in range(300)])
    table, _ = split.decisions_table(frame, now=NOW)
    low, high, _share = split._choices(*split.priced(frame))
    assert 30 < np.sum(low != high) < 270
    decider = _patient(split)
    for i, row in enumerate(frame.to_dict("records")):
        unit, rid = row.pop("unit_id"), row.pop("request_id")
        record = decider.decide(unit, row, request_id=rid, now=NOW).record
        assert record["action_id"] == table.iloc[i]["action_id"]
        assert record["propensity"] == pytest.approx(table.iloc[i]["propensity"], abs=1e-12)
    mixed = (low != high) & (table["assignment"].to_numpy() == "policy")
    assert np.all(table["propensity"].to_numpy()[mixed] < 0.9)  # neither side's choice is certain


def test_over_the_latency_budget_falls_back(policy: Policy) -> None:
    raw = policy.spec.model.model_dump(mode="json")
    raw["serving"]["latency_budget_ms"] = 1e-6
    spec = parse_spec(raw)
    decider = Decider(spec, policy)
    row = _rows(1)[0]
    unit = row.pop("unit_id")
    out = decider.decide(unit, row, request_id="slow", now=NOW)
    assert out.response["assignment"] == "fallback" and out.response["action_id"] == spec.fallback.id
    assert out.response["propensity"] == 1.0 and out.response["fallback_reason"].startswith("over the latency budget")


def test_a_policy_that_raises_falls_back(policy: Policy, monkeypatch: pytest.MonkeyPatch) -> None:
    decider = Decider(policy.spec, policy)

    class Broken:
        def predict_row(self, x: np.ndarray) -> dict[str, np.ndarray]:
            raise FloatingPointError("boom")

    monkeypatch.setattr(decider, "compiled", Broken())
    row = _rows(1)[0]
    unit = row.pop("unit_id")
    out = decider.decide(unit, row, request_id="err", now=NOW)
    assert out.response["assignment"] == "fallback"
    assert out.response["fallback_reason"] == "model error: FloatingPointError: boom"
    assert all(out.record[f"pred__{a}"] is None for a in policy.spec.action_space.ids)


def test_no_policy_is_degraded_on_the_fallback(policy: Policy, tmp_path: Path) -> None:
    decider = Decider.load(policy.spec, tmp_path / "missing")
    assert not decider.ready and "manifest.json" in str(decider.degraded_reason)
    row = _rows(1)[0]
    unit = row.pop("unit_id")
    out = decider.decide(unit, row, request_id="d", now=NOW)
    assert out.response["assignment"] == "fallback" and out.response["fallback_reason"].startswith("degraded")
    assert out.response["policy_version"] == "fallback"


def test_a_held_out_unit_keeps_its_arm_whatever_the_policy_could_not_do(policy: Policy) -> None:
    """The holdout is exactly the units its hash picks: a held-out unit whose context breaks the contract,
    or whose decision runs over the latency budget, gets control as `holdout`, not the fallback. With a
    fallback that is not control, the propensities are h for the holdout's control and 1 - h for the fallback."""
    from drivetrain.spec import in_holdout

    raw = policy.spec.model.model_dump(mode="json")
    raw["fallback"] = {"offer_type": "free_ship", "depth": 0, "timing": "immediate"}
    spec = parse_spec(raw)
    assert spec.fallback.index != spec.control.index
    exp = spec.model.experimentation
    h = policy.holdout_share
    rows = _rows(400)
    units = [str(r["unit_id"]) for r in rows]
    held = in_holdout(exp.salt, units, h)
    assert 10 < held.sum() < 390
    broken = Decider(spec, policy)
    raw["serving"]["latency_budget_ms"] = 1e-6
    slow = Decider(parse_spec(raw), policy)
    for i, row in enumerate(rows):
        context = {k: v for k, v in row.items() if k != "unit_id"}
        for decider, ctx, cause in ((broken, {**context, "tier": "platinum"}, "tier"), (slow, context, "over the latency budget")):
            out = decider.decide(units[i], ctx, request_id=f"h{i}", now=NOW).response
            assert cause in out["fallback_reason"]
            if held[i]:
                assert (out["assignment"], out["action_id"]) == ("holdout", spec.control.id)
                assert out["propensity"] == pytest.approx(h)
            else:
                assert (out["assignment"], out["action_id"]) == ("fallback", spec.fallback.id)
                assert out["propensity"] == pytest.approx(1 - h)
    frame = pd.DataFrame(rows).assign(tier="platinum")
    table, fallbacks = Policy(spec, policy.model, policy.multipliers, policy.version, policy.exploration_rate, h).decisions_table(frame, now=NOW)
    assert fallbacks == len(rows)
    np.testing.assert_array_equal(table["assignment"].to_numpy() == "holdout", held)
    np.testing.assert_array_equal(table["action_id"].to_numpy(), np.where(held, spec.control.id, spec.fallback.id))
    np.testing.assert_allclose(table["propensity"].to_numpy(), np.where(held, h, 1 - h))


def test_a_unit_with_one_eligible_action_has_no_margin_and_its_decision_stores(policy: Policy) -> None:
    """Outside the program only control is eligible: no runner-up, so the margin is null (as the service
    logs it), never infinity, which the store refuses."""
    from drivetrain.data import MemoryStore, RawRows, ingest_decisions

    raw = policy.spec.model.model_dump(mode="json")
    raw["eligibility"]["unit"] = "tenure_days >= 365"
    spec = parse_spec(raw)
    narrowed = Policy(spec, policy.model, policy.multipliers, policy.version, policy.exploration_rate, policy.holdout_share)
    frame = pd.DataFrame(_rows(200))
    table, _ = narrowed.decisions_table(frame, now=NOW)
    outside = (frame["tenure_days"] < 365).to_numpy()
    assert 10 < outside.sum() < 190
    assert table.loc[outside, "margin"].isna().all() and np.isfinite(table.loc[~outside, "margin"]).all()
    assert (table.loc[outside, "action_id"] == spec.control.id).all()
    report = ingest_decisions(MemoryStore(spec), RawRows(table, (), "decide"))
    assert report.accepted == 200 and report.quarantined == 0


def test_a_policy_fitted_on_another_context_contract_is_degraded(policies: tuple[Path, Path]) -> None:
    """A spec that gained a context feature would check contexts the models cannot read: the service
    comes up degraded on the fallback and says why, as it does for another action set."""
    spec = Policy.load(policies[0]).spec
    raw = spec.model.model_dump(mode="json")
    raw["context"]["features"]["discount_history"] = {"type": "integer", "owner": "crm", "min": 0}
    decider = Decider.load(parse_spec(raw), policies[0])
    assert not decider.ready
    assert "was fitted on the context features" in str(decider.degraded_reason) and "discount_history" in str(decider.degraded_reason)
    assert Decider.load(spec, policies[0]).ready


def test_a_pessimistic_policy_decides_one_at_a_time_as_in_batch_and_round_trips(policy: Policy, tmp_path: Path) -> None:
    """With pessimism the scores need every fold's spread: the service takes the batch path for them, so
    both give the same decisions, and the artifact keeps the z it was planned with."""
    pessimistic = Policy.from_model(policy.spec, policy.model, policy.multipliers, version="pess", pessimism=1.0)
    pessimistic.save(tmp_path / "p")
    loaded = Policy.load(tmp_path / "p")
    assert loaded.pessimism == 1.0
    frame = pd.DataFrame(_rows(40)).assign(request_id=[f"z{i}" for i in range(40)])
    table, _ = loaded.decisions_table(frame, now=NOW)
    plain, _ = policy.decisions_table(frame, now=NOW)
    assert (table["action_id"] != plain["action_id"]).any()  # the spread moves some decisions
    decider = _patient(loaded)
    assert decider.compiled is None
    for i, row in enumerate(frame.to_dict("records")):
        unit, rid = row.pop("unit_id"), row.pop("request_id")
        record = decider.decide(unit, row, request_id=rid, now=NOW).record
        assert record["action_id"] == table.iloc[i]["action_id"]
        assert record["propensity"] == pytest.approx(table.iloc[i]["propensity"], abs=1e-12)
    with pytest.raises(UsageError, match="`pessimism` must be a finite number >= 0"):
        Policy.from_model(policy.spec, policy.model, policy.multipliers, pessimism=-1.0)


def test_a_policy_with_another_experiment_salt_is_refused(policy: Policy, tmp_path: Path) -> None:
    """Another salt would move units between the holdout and the policy arm: the service refuses such a
    policy (degraded at start, a 409 on reload) rather than serve arms the evaluation cannot compare."""
    raw = policy.spec.model.model_dump(mode="json")
    raw["experimentation"]["salt"] = "another-salt-2027"
    dataclasses.replace(policy, spec=parse_spec(raw)).save(tmp_path / "salted")
    decider = Decider.load(policy.spec, tmp_path / "salted")
    assert not decider.ready
    assert "experiment salt 'another-salt-2027'" in str(decider.degraded_reason)
    # a held-out unit whose decision fails stays in the arm of the salt that served it
    units = [f"h{i}" for i in range(400)]
    spec = policy.spec
    held = in_holdout(spec.model.experimentation.salt, units, policy.holdout_share)
    assert 0 < held[:60].sum() < 60
    patient = _patient(policy)
    for unit, h in zip(units[:60], held[:60], strict=True):
        record = patient.decide(unit, {"region": "mars"}, request_id=f"r-{unit}", now=NOW).record
        assert record["assignment"] == ("holdout" if h else "fallback")


def test_context_keys_the_contract_does_not_name_are_said_in_the_answer(policy: Policy) -> None:
    row = _rows(1)[0]
    unit = row.pop("unit_id")
    answer = _patient(policy).decide(unit, {**row, "tenure_dayz": 400, "campaign": "x"}, request_id="r-extra", now=NOW).response
    assert answer["ignored_context_keys"] == ["campaign", "tenure_dayz"]
    assert answer["assignment"] != "fallback"  # the contract's own keys are all there: the decision stands
    assert "ignored_context_keys" not in _patient(policy).decide(unit, row, request_id="r-plain", now=NOW).response


def test_a_guarded_cohort_value_gets_control_alone_from_the_service_as_from_the_batch_path(policy: Policy) -> None:
    guarded = dataclasses.replace(policy, guards={"device": ("mobile",)})
    decider = _patient(guarded)
    rows = _rows(300)
    frame = pd.DataFrame(rows)
    batch = guarded.decide(frame, request_ids=[f"g{i}" for i in range(len(rows))])
    mobile = 0
    for i, row in enumerate(rows):
        unit = row.pop("unit_id")
        out = decider.decide(unit, row, request_id=f"g{i}", now=NOW)
        assert out.response["action_id"] == policy.spec.action_space.ids[batch.action[i]], i
        assert out.response["propensity"] == pytest.approx(batch.propensity[i], rel=1e-12), i
        if row["device"] == "mobile":
            mobile += 1
            assert out.response["action_id"] == policy.spec.control.id and out.response["propensity"] == 1.0, (i, out.response)
    assert mobile > 50
    # without the guard some mobile units get an offer: the guard is what gave them control
    free = policy.decide(frame, request_ids=[f"g{i}" for i in range(len(rows))])
    assert (free.action[(frame["device"] == "mobile").to_numpy()] != policy.spec.control.index).any()
