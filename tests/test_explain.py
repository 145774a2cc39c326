"""Effects by cohort, one explained decision and the trade-off curve, checked against the twin's truth and
against what the plan itself does."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from drivetrain.assembly import plan_policy
from drivetrain.errors import UsageError
from drivetrain.explain import cohort_table, effects_by_cohort, explain_unit, frontier
from drivetrain.model import OutcomeModel
from drivetrain.twin import NBOOTwin


@pytest.fixture(scope="module")
def fitted() -> tuple[NBOOTwin, OutcomeModel, pd.DataFrame]:
    twin = NBOOTwin(seed=11)
    decisions = twin.expected_log(twin.population(8000))
    model = OutcomeModel(n_folds=2, n_estimators=60, min_child_samples=40, num_threads=1).fit(decisions, twin.spec)
    return twin, model, NBOOTwin(seed=12).population(4000, offset=9_000_000)


def test_effects_by_cohort_follow_the_truth_and_the_mix_is_the_plans(fitted) -> None:  # type: ignore[no-untyped-def]
    twin, model, contexts = fitted
    plan = plan_policy(twin.spec, model, contexts)
    table = effects_by_cohort(plan.policy, contexts, ["tier", "tenure_days:2"])
    assert set(table["tier"]) == {"bronze", "silver", "gold"} and table["tenure_days"].nunique() == 2
    truth = twin.truth(contexts).objective
    labels = cohort_table(twin.spec, contexts, ["tier", "tenure_days:2"])
    control = twin.spec.control.index
    errors = []
    for row in table.to_dict("records"):
        members = ((labels["tier"] == row["tier"]) & (labels["tenure_days"] == row["tenure_days"])).to_numpy()
        k = twin.spec.action_space.ids.index(row["action_id"])
        true_effect = float(np.mean(truth[members, k] - truth[members, control]))
        errors.append(abs(row["effect"] - true_effect))
    assert np.median(errors) < 0.25 * np.mean(np.abs(truth - truth[:, [control]]))  # far closer than the effects' size
    mix = table.groupby(["tier", "tenure_days"])["share"].sum()
    np.testing.assert_allclose(mix.to_numpy(), 1.0)
    chosen = np.argmax(plan.policy.scores(contexts), axis=1)
    gold = (labels["tier"] == "gold").to_numpy()
    for action_id, share in table[table["tier"] == "gold"].groupby("action_id")["share"]:
        k = twin.spec.action_space.ids.index(action_id)
        units = table[(table["tier"] == "gold") & (table["action_id"] == action_id)]["units"].to_numpy()
        assert np.isclose((share.to_numpy() * units).sum(), np.sum(chosen[gold] == k))


def test_one_unit_explained_adds_up_to_its_scores(fitted) -> None:  # type: ignore[no-untyped-def]
    twin, model, contexts = fitted
    plan = plan_policy(twin.spec, model, contexts, budget_overrides={"promotion_budget": 0.3})
    assert plan.policy.multipliers["promotion_budget"] > 0  # a binding budget, so the explanation has a price
    row = contexts.iloc[[7]]
    explained = explain_unit(plan.policy, row)
    t = explained.actions
    np.testing.assert_allclose(t["score"][t["eligible"]], (t["objective"] - t["total_price"])[t["eligible"]], rtol=1e-12)
    prices = t[[c for c in t.columns if c.startswith("price:")]].sum(axis=1)
    np.testing.assert_allclose(prices[t["eligible"]], t["total_price"][t["eligible"]], rtol=1e-12, atol=1e-12)
    assert explained.chosen == twin.spec.action_space.ids[int(np.argmax(plan.policy.scores(row)[0]))]
    assert explained.margin >= 0 and explained.runner_up != explained.chosen
    assert explained.chosen in explained.summary() and "promotion_budget" in explained.summary()


def test_the_frontier_rises_with_the_budget_and_its_price_falls(fitted) -> None:  # type: ignore[no-untyped-def]
    twin, model, contexts = fitted
    table = frontier(twin.spec, model, contexts, "promotion_budget", [0.0, 0.3, 0.6, 1.2]).table
    assert list(table["limit"]) == [0.0, 0.3, 0.6, 1.2]
    assert not table["feasible"][0] and "promotion_budget" in table["reason"][0]  # exploration alone spends more than 0
    curve = table[table["feasible"]].reset_index(drop=True)
    assert len(curve) == 3
    assert np.all(np.diff(curve["objective"]) >= -1e-9)  # more budget never plans worse
    assert np.all(np.diff(curve["price"]) <= 1e-9)  # and each unit of it buys less
    binding = curve["binding"].to_numpy()
    np.testing.assert_allclose(curve["use:promotion_budget"][binding], curve["limit"][binding], rtol=1e-6)
    assert (curve["use:promotion_budget"] <= curve["limit"] + 1e-9).all()
    assert "<html" in frontier(twin.spec, model, contexts.head(500), "promotion_budget", [0.5]).figure_html()[:200].lower()
    with pytest.raises(UsageError, match="must name a budget, guardrail or cap of the spec"):
        frontier(twin.spec, model, contexts, "nope", [1.0])


def test_a_margin_plans_each_limit_inside_itself_at_a_small_cost(fitted) -> None:  # type: ignore[no-untyped-def]
    twin, model, contexts = fitted
    tight = {"promotion_budget": 0.4}
    plain = plan_policy(twin.spec, model, contexts, budget_overrides=tight)
    kept = plan_policy(twin.spec, model, contexts, budget_overrides=tight, margin=0.1)
    assert plain.served["promotion_budget"] == pytest.approx(0.4, rel=1e-6)
    assert kept.served["promotion_budget"] == pytest.approx(0.36, rel=1e-6)  # planned at 90% of the budget
    assert kept.served["bundle_stock"] <= 0.9 * twin.spec.caps[0][0].max_share + 1e-9
    assert kept.assignment.objective <= plain.assignment.objective
    with pytest.raises(UsageError, match="`margin` must be a share of each limit in \\[0, 1\\)"):
        plan_policy(twin.spec, model, contexts, margin=1.5)


def test_the_frontier_moves_a_cap_and_a_guardrail_kept_per_cohort(fitted) -> None:  # type: ignore[no-untyped-def]
    from drivetrain.spec import with_guardrails_by

    twin, model, contexts = fitted
    table = frontier(twin.spec, model, contexts, "bundle_stock", [0.02, 0.05, 0.4]).table
    assert table["feasible"].all() and list(table["limit"]) == [0.02, 0.05, 0.4]
    assert (table["use:bundle_stock"] <= table["limit"] + 1e-9).all()  # the cap's share as served, within each limit
    assert np.all(np.diff(table["objective"]) >= -1e-9) and table["binding"][0] and table["price"][0] > 0
    by_tier = with_guardrails_by(twin.spec, {"refund_rate": "tier"})
    curve = frontier(by_tier, model, contexts, "refund_rate", [0.011, 0.03]).table
    tiers = [c for c in curve.columns if c.startswith("use:refund_rate@tier=")]
    assert len(tiers) == 3
    for row in curve[curve["feasible"]].to_dict("records"):
        assert all(row[c] <= row["limit"] + 1e-6 for c in tiers)  # every tier's refund rate, in its own units
    with pytest.raises(UsageError, match="move every value of it by its name 'refund_rate'"):
        frontier(by_tier, model, contexts, "refund_rate@tier=gold", [0.02])
