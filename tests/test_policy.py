from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drivetrain.errors import ArtifactError, UsageError
from drivetrain.model import OutcomeModel
from drivetrain.policy import Policy, TieSplit
from drivetrain.twin import NBOOTwin


@pytest.fixture(scope="module")
def fitted() -> tuple[NBOOTwin, OutcomeModel, pd.DataFrame]:
    twin = NBOOTwin(seed=3)
    decisions = twin.expected_log(twin.population(6000))
    model = OutcomeModel(n_folds=2, n_estimators=40, min_child_samples=50).fit(decisions, twin.spec)
    contexts = NBOOTwin(seed=4).population(3000, offset=5_000_000)
    return twin, model, contexts


def test_decide_applies_holdout_exploration_and_logs_true_propensities(fitted) -> None:  # type: ignore[no-untyped-def]
    twin, model, contexts = fitted
    policy = Policy.from_model(twin.spec, model, {}, exploration_rate=0.2, holdout_share=0.1)
    requests = [f"req-{i}" for i in range(len(contexts))]
    batch = policy.decide(contexts, request_ids=requests)
    control = twin.spec.control.index
    held = batch.assignment == "holdout"
    assert np.all(batch.action[held] == control)
    assert abs(held.mean() - 0.1) < 0.03
    explored = batch.assignment == "explore"
    assert abs(explored.mean() - 0.9 * 0.2) < 0.04
    assert np.all(batch.action[batch.assignment == "policy"] == batch.chosen[batch.assignment == "policy"])
    dist = policy.action_distribution(contexts)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0)
    np.testing.assert_allclose(batch.propensity, dist[np.arange(len(contexts)), batch.action])
    # the same request gets the same answer; the holdout follows the unit, not the request
    again = policy.decide(contexts, request_ids=requests)
    assert np.array_equal(again.action, batch.action)
    other = policy.decide(contexts, request_ids=[f"other-{i}" for i in range(len(contexts))])
    assert np.array_equal(other.assignment == "holdout", held)
    # ineligible actions are never chosen
    eligible = twin.spec.eligible_actions({c: contexts[c].to_numpy() for c in twin.spec.features})
    assert eligible[np.arange(len(contexts)), batch.action].all()
    assert np.all(batch.margin[batch.assignment != "holdout"] >= 0)


def test_multipliers_price_the_budget(fitted) -> None:  # type: ignore[no-untyped-def]
    twin, model, contexts = fitted
    free = Policy.from_model(twin.spec, model, {}, exploration_rate=0.0, holdout_share=0.0)
    priced = Policy.from_model(twin.spec, model, {"promotion_budget": 2.0}, exploration_rate=0.0, holdout_share=0.0)
    cost = model.predict_outcomes(contexts)["promo_cost"]
    rows = np.arange(len(contexts))
    assert cost[rows, priced.decide(contexts).action].mean() < cost[rows, free.decide(contexts).action].mean()
    with pytest.raises(UsageError, match="`multipliers` must name constraints or caps"):
        Policy.from_model(twin.spec, model, {"budget": 1.0})


def test_save_load_round_trip_and_tamper_detection(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    twin, model, contexts = fitted
    policy = Policy.from_model(twin.spec, model, {"promotion_budget": 0.5}, metadata={"metrics": {"x": 1}},
                               tie_split=TieSplit(band=1e-4, low_share=0.3))
    directory = policy.save(tmp_path / "p")
    loaded = Policy.load(directory)
    assert loaded.version == policy.version and loaded.multipliers == policy.multipliers
    assert loaded.tie_split == policy.tie_split
    np.testing.assert_allclose(loaded.scores(contexts), policy.scores(contexts))
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["spec_hash"] == twin.spec.hash and "lightgbm" in manifest["libraries"]
    assert not list(directory.rglob("*.pkl"))

    with pytest.raises(UsageError, match="must be empty or absent"):
        policy.save(directory)
    model_file = sorted((directory / "models").glob("*.txt"))[0]
    original = model_file.read_text()
    model_file.write_text(original.replace("leaf_value=", "leaf_value=1", 1))
    with pytest.raises(ArtifactError, match="was modified"):
        Policy.load(directory)
    model_file.write_text(original)
    (directory / "models" / "evil.txt").write_text("x")
    with pytest.raises(ArtifactError, match=r"extra \['models/evil.txt'\]"):
        Policy.load(directory)
    (directory / "models" / "evil.txt").unlink()
    (directory / "policy.json").unlink()
    with pytest.raises(ArtifactError, match=r"missing \['policy.json'\]"):
        Policy.load(directory)
    with pytest.raises(ArtifactError, match="must hold manifest.json"):
        Policy.load(tmp_path)


def test_a_tie_split_that_is_not_one_is_refused(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    twin, model, _ = fitted
    with pytest.raises(UsageError, match="band in \\(0, 1\\) and low_share in \\[0, 1\\], got 0.0 and 0.5"):
        TieSplit(band=0.0, low_share=0.5)
    directory = Policy.from_model(twin.spec, model, {}).save(tmp_path / "p")
    body = json.loads((directory / "policy.json").read_text())
    assert body["tie_split"] is None  # no split: the argmax
    body["tie_split"] = {"band": 2.0, "low_share": 0.5}
    (directory / "policy.json").write_text(json.dumps(body))
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["policy.json"] = hashlib.sha256((directory / "policy.json").read_bytes()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="tie_split must be null or"):
        Policy.load(directory)


def test_a_policy_refuses_multipliers_the_spec_does_not_name(fitted) -> None:  # type: ignore[no-untyped-def]
    # with a two-sided guardrail, `refund_rate` is priced as `refund_rate:max` / `refund_rate:min`: a policy
    # built (or loaded) with the one-sided name must fail, not price the guardrail at 0
    twin, model, _ = fitted
    from drivetrain.spec import parse_spec

    raw = twin.spec.model.model_dump(mode="json")
    raw["guardrails"][0]["min"] = 0.001
    spec = parse_spec(raw)
    with pytest.raises(UsageError, match=r"`multipliers` must name constraints or caps .*got \['refund_rate'\]"):
        Policy(spec, model, {"refund_rate": 3.0}, "v1", 0.0, 0.0)
    assert Policy(spec, model, {"refund_rate:max": 3.0}, "v1", 0.0, 0.0).multipliers == {"refund_rate:max": 3.0}


def test_pricing_is_the_objective_less_the_priced_use_on_the_eligible_actions(fitted) -> None:  # type: ignore[no-untyped-def]
    twin, model, contexts = fitted
    policy = Policy.from_model(twin.spec, model, {"promotion_budget": 0.7, "refund_rate": 2.0, "bundle_stock": 0.05})
    pricing = policy.pricing(contexts)
    comps = model.predict_outcomes(contexts)
    np.testing.assert_allclose(pricing.objective, model.predict_objective(contexts))
    bundle = np.asarray(twin.spec.action_space.lever_columns()["offer_type"] == "bundle")
    eligible = np.isfinite(pricing.scores)
    expected = 0.7 * comps["promo_cost"] + 2.0 * comps["refund"] + 0.05 * bundle[None, :]
    np.testing.assert_allclose(pricing.price, np.where(eligible, expected, 0.0))
    np.testing.assert_allclose(pricing.scores[eligible], (pricing.objective - pricing.price)[eligible])
    scores, price = policy.priced(contexts, comps)
    np.testing.assert_array_equal(scores, pricing.scores)
    np.testing.assert_array_equal(price, pricing.price)
