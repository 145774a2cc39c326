"""The assembly line end to end, judged by the twin's ground truth."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from drivetrain.assembly import evaluate_on_logs, fit_model, fixed_action, plan_policy, realized_metrics
from drivetrain.clock import SimulatedClock
from drivetrain.data import MemoryStore, RawRows, ingest_decisions, ingest_outcomes
from drivetrain.errors import UsageError
from drivetrain.model import OutcomeModel
from drivetrain.optimize import ExactOptimizer, as_served, problem_from_spec, served_use
from drivetrain.policy import Policy
from drivetrain.twin import NBOOTwin, best_single_action


def _fitted(seed: int, n: int, folds: int = 2):  # type: ignore[no-untyped-def]
    twin = NBOOTwin(seed=seed)
    users = twin.population(n)
    decisions, outcomes = twin.log(users)
    store = MemoryStore(twin.spec)
    clock = SimulatedClock(twin.start + twin.spec.horizon + twin.spec.settle + timedelta(days=1))
    ingest_decisions(store, RawRows(decisions, (), "d"), clock=clock)
    ingest_outcomes(store, RawRows(outcomes, (), "o"), clock=clock)
    model, table, _ = fit_model(store, clock.now(), OutcomeModel(n_folds=folds, n_estimators=120, num_threads=2, seed=seed))
    return twin, users, model, table


@pytest.fixture(scope="module")
def fitted():  # type: ignore[no-untyped-def]
    return _fitted(5, 30_000)


@pytest.fixture(scope="module")
def fresh():  # type: ignore[no-untyped-def]
    twin = NBOOTwin(seed=77)
    users = twin.population(8000, offset=20_000_000)
    return users, twin.truth(users)


def test_planned_policy_beats_control_and_every_single_action(fitted, fresh) -> None:  # type: ignore[no-untyped-def]
    twin, _, model, _ = fitted
    users, truth = fresh
    plan = plan_policy(twin.spec, model, users)
    value = truth.value(plan.assignment.probabilities)
    control = truth.objective[:, twin.spec.control.index].mean()
    _, single = best_single_action(truth.objective, truth.eligible, twin.spec.control.index)
    assert value > control + 0.2 and value > single + 0.2
    # the policy's prices reproduce the optimizer's assignment unit by unit
    batch = plan.policy.decide(users)
    assert np.mean(batch.chosen == plan.assignment.action) > 0.98
    # the plan respects the budget in prediction as served (holdout and exploration included), and eligibility always
    limit = twin.spec.budgets[0][0].max_per_unit
    assert plan.served["promotion_budget"] <= limit * (1 + 1e-6)
    assert truth.eligible[np.arange(len(users)), batch.action].all()


def test_the_served_policy_keeps_the_limits_its_plan_keeps(fitted, fresh) -> None:  # type: ignore[no-untyped-def]
    """Holdout units spend nothing and explored ones spend at random: the served policy's predicted
    promotion cost over both arms and refund rate over the policy arm meet the limits where they bind,
    and the served decisions (Policy.action_distribution) spend what the plan says they will."""
    twin, _, model, _ = fitted
    users, _ = fresh
    spec = twin.spec
    exp = spec.model.experimentation
    budget, refund = 0.6, 0.0105
    plan = plan_policy(spec, model, users, budget_overrides={"promotion_budget": budget}, guardrail_overrides={"refund_rate": refund})
    assert plan.served["promotion_budget"] == pytest.approx(budget, rel=2e-3)
    assert plan.served["refund_rate"] == pytest.approx(refund, rel=2e-3)
    means = model.predict_outcomes(users)
    served = plan.policy.action_distribution(users)  # the priced decisions, holdout and exploration included
    cost = float(np.mean((means["promo_cost"] * served).sum(axis=1)))
    assert cost == pytest.approx(budget, rel=0.03)
    # planned for the plan alone, the served policy misses the budget by what exploration and the holdout change
    alone = plan_policy(spec, model, users, budget_overrides={"promotion_budget": budget}, guardrail_overrides={"refund_rate": refund},
                        as_served=False)
    assert alone.assignment.usage["promotion_budget"] == pytest.approx(budget, rel=2e-3)
    eligible = spec.eligible_actions({c: users[c].to_numpy() for c in spec.features})
    explored = float(np.mean(np.where(eligible, means["promo_cost"], 0.0).sum(axis=1) / eligible.sum(axis=1)))
    h, eps = exp.holdout_share, exp.exploration_rate
    closed_form = (1 - h) * ((1 - eps) * alone.assignment.usage["promotion_budget"] + eps * explored)  # control costs nothing
    assert alone.served["promotion_budget"] == pytest.approx(closed_form, rel=1e-9)
    assert abs(alone.served["promotion_budget"] - budget) > 0.01


def test_pessimistic_plans_stay_within_the_budget_in_truth(fresh) -> None:  # type: ignore[no-untyped-def]
    users = fresh[0].head(4000)  # half the fresh population: each plan predicts every fold model on it
    truth = NBOOTwin(seed=77).truth(users)
    budget = 0.5
    for seed in (11, 12, 13):
        twin, _, model, _ = _fitted(seed, 8_000, folds=3)
        plan = plan_policy(twin.spec, model, users, budget_overrides={"promotion_budget": budget}, pessimism=1.645)
        true = problem_from_spec(twin.spec, truth.components, users, budget_overrides={"promotion_budget": budget})
        exp = twin.spec.model.experimentation
        served = served_use(true, twin.spec, plan.assignment.probabilities, exploration_rate=exp.exploration_rate, holdout_share=exp.holdout_share)
        assert served["promotion_budget"] <= budget, seed
        # the policy scores what its plan optimized: the pessimistic values, priced (unit by unit: 1,000 units say it)
        assert plan.policy.pessimism == 1.645
        assert np.mean(plan.policy.decide(users.head(1000)).chosen == plan.assignment.action[:1000]) > 0.98, seed
    with pytest.raises(UsageError, match="`pessimism` must be >= 0"):
        plan_policy(twin.spec, model, users, pessimism=-1)


def test_off_policy_estimates_cover_the_truth_of_what_ifs(fitted) -> None:  # type: ignore[no-untyped-def]
    twin, users, model, table = fitted
    truth = twin.truth(users.set_index("unit_id").loc[table["unit_id"]].reset_index())
    scenarios = {
        "control": fixed_action(twin.spec, twin.spec.control.values),
        "discount": fixed_action(twin.spec, {"offer_type": "discount", "depth": 10, "timing": "immediate"}),
        "gold free shipping": fixed_action(twin.spec, {"offer_type": "free_ship", "depth": 0, "timing": "immediate"}, where="tier == 'gold'"),
    }
    result = evaluate_on_logs(model, table, scenarios)
    assert result.policies == tuple(scenarios) and result.constraint_estimator == "DR"
    for label, fn in scenarios.items():
        dist = fn(table)
        for metric, true in (("objective", truth.value(dist)), ("promotion_budget", truth.mean("promo_cost", dist)),
                             ("refund_rate", truth.mean("refund", dist))):
            e = result.estimate(label, metric, "DR")
            assert e.ci_low - 1e-9 <= true <= e.ci_high + 1e-9, (label, metric, e.value, true)
        assert set(result.objective[label]) >= {"DM", "IPS", "SNIPS", "DR", "SNDR"}
        assert list(result.constraints[label]) == ["promotion_budget", "refund_rate", "complaint_rate", "bundle_stock"]
        assert result.constraints[label]["bundle_stock"].estimator == "share"
    frame = result.to_frame()
    first = frame[frame["policy"] == "control"]
    assert list(frame.columns) == ["policy", "metric", "estimator", "value", "std_error", "ci_low", "ci_high", "ess_ratio", "warnings"]
    assert len(first) == len(result.objective["control"]) + 4 and (frame["policy"].iloc[: len(first)] == "control").all()
    with pytest.raises(UsageError, match="`metric` must be 'objective' or one of"):
        result.estimate("control", "promo_budget")
    gold = (table["tier"] == "gold").to_numpy()
    dist = scenarios["gold free shipping"](table)
    assert dist[gold, twin.spec.control.index].mean() < 0.5 and dist[~gold, twin.spec.control.index].min() == 1.0
    with pytest.raises(UsageError, match="scenario must name a valid action"):
        fixed_action(twin.spec, {"offer_type": "discount", "depth": 0, "timing": "immediate"})


def test_realized_metrics_match_the_formulas(fitted) -> None:  # type: ignore[no-untyped-def]
    twin, _, _, table = fitted
    metrics = realized_metrics(twin.spec, table)
    np.testing.assert_allclose(metrics["objective"], table["gross_profit"] - table["promo_cost"])
    np.testing.assert_allclose(metrics["promotion_budget"], table["promo_cost"])
    assert set(metrics) == {"objective", "promotion_budget", "refund_rate", "complaint_rate"}
    assert isinstance(table, pd.DataFrame)


def test_a_formulas_uncertainty_is_its_spread_across_the_folds() -> None:
    """Closed form: three folds whose gross profit and promotion cost move independently, each with a
    spread of 1, give `gross_profit - promo_cost` a spread of sqrt(2) (not |1 - 1| = 0), and a constant
    lever term adds nothing (`gross_profit - 0.5 * depth` keeps a spread of 1)."""
    from drivetrain.spec import compile_formula
    from drivetrain.spec import formula_spread as _formula_se

    spec = NBOOTwin().spec
    k = len(spec.action_space)
    a = np.array([1.0, -1.0, 0.0])            # zero mean, standard deviation 1 (ddof=1)
    b = np.array([1.0, 1.0, -2.0]) / np.sqrt(3)  # zero mean, standard deviation 1, orthogonal to a
    folds = [{"gross_profit": np.full((4, k), 10.0 + a[f]), "promo_cost": np.full((4, k), 2.0 + b[f])} for f in range(3)]
    names = set(spec.outcomes) | set(spec.action_space.levers)
    diff = _formula_se(spec, compile_formula("gross_profit - promo_cost", variables=names, field="f"), folds, {})
    np.testing.assert_allclose(diff, np.sqrt(2.0), rtol=1e-12)
    lever = _formula_se(spec, compile_formula("gross_profit - 0.5 * depth", variables=names, field="f"), folds, {})
    np.testing.assert_allclose(lever, 1.0, rtol=1e-12)


def test_units_tied_at_the_prices_are_split_as_the_plan_splits_them(fitted) -> None:  # type: ignore[no-untyped-def]
    """Eight contexts, 500 units each: at the budget's price a whole group is tied, and the plan sends part
    of it each way. The argmax at the multipliers sends all of it one way and misses the budget; the
    served tie split keeps the budget as the plan does, reaches the exact LP's objective (HiGHS), and logs
    the mixed propensities."""
    twin, _, model, _ = fitted
    spec = twin.spec
    base = twin.population(8, offset=40_000_000)
    users = base.loc[np.repeat(np.arange(8), 500)].reset_index(drop=True)
    users["unit_id"] = [f"tied{i}" for i in range(len(users))]
    budget = 0.5
    plan = plan_policy(spec, model, users, budget_overrides={"promotion_budget": budget})
    policy = plan.policy
    assert "promotion_budget" in plan.assignment.binding and policy.tie_split is not None
    means = model.predict_outcomes(users)

    def served_cost(p: Policy) -> float:
        return float(np.mean((means["promo_cost"] * p.action_distribution(users)).sum(axis=1)))

    assert served_cost(policy) == pytest.approx(budget, rel=1e-6)
    assert abs(served_cost(dataclasses.replace(policy, tie_split=None)) - budget) > 0.01 * budget  # the defect it fixes

    # the policy's own mix (no holdout, no exploration) against the exact optimum of the problem it solved
    exp = spec.model.experimentation
    problem = problem_from_spec(spec, means, users, budget_overrides={"promotion_budget": budget})
    solved = as_served(problem, spec, exploration_rate=exp.exploration_rate, holdout_share=exp.holdout_share)
    exact = ExactOptimizer().assign(solved)
    low, high, share = policy._choices(*policy.priced(users, means))
    mix = np.zeros(problem.values.shape)
    mix[np.arange(len(users)), low] += share
    mix[np.arange(len(users)), high] += 1 - share
    assert float(np.mean((problem.values * mix).sum(axis=1))) == pytest.approx(exact.objective, rel=1e-4)
    assert np.mean(low != high) > 0.05  # a tied group, not a handful of units

    # per request: the lower prices' choice in about low_share of the tied units' requests, the propensity the mix's
    batch = policy.decide(users, request_ids=[f"r{i}" for i in range(len(users))])
    split = low != high
    picked_low = batch.chosen[split] == low[split]
    sd = np.sqrt(share * (1 - share) / split.sum())
    assert abs(picked_low.mean() - share) < 5 * sd + 1e-9
    dist = policy.action_distribution(users)
    np.testing.assert_allclose(batch.propensity, dist[np.arange(len(users)), batch.action], rtol=1e-12)
