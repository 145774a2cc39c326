"""Both optimizers on the Next Best Offer twin's true values, against the twin's own exact oracle.

The twin's oracle (``drivetrain.twin.oracle_under_budget``) shares no code with ``optimize/``: it checks
the exact LP, and the exact LP checks the Lagrangian optimizer.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from drivetrain.errors import InfeasibleError
from drivetrain.optimize import (
    AssignmentProblem,
    ExactOptimizer,
    LagrangianOptimizer,
    MeanConstraint,
    pessimistic,
    problem_from_spec,
)
from drivetrain.twin import oracle_under_budget
from tests.optimize.conftest import Instance, make_instance

GAP = 1e-3  # the Lagrangian's objective within 0.1% of the exact optimum


def _problem(inst: Instance, **overrides: object) -> AssignmentProblem:
    return problem_from_spec(inst.twin.spec, inst.truth.components, inst.users, **overrides)  # type: ignore[arg-type]


def _true_usage(inst: Instance, problem: AssignmentProblem, probabilities: np.ndarray) -> dict[str, float]:
    comps = {"promotion_budget": "promo_cost", "refund_rate": "refund", "complaint_rate": "complaint"}
    usage = {name: inst.truth.mean(comp, probabilities) for name, comp in comps.items()}
    usage["bundle_stock"] = float(probabilities[:, inst.bundle].sum(axis=1).mean())
    return usage


def test_the_exact_lp_equals_the_twins_oracle() -> None:
    inst = make_instance(3, 4_000)
    problem = _problem(
        inst,
        budget_overrides={"promotion_budget": 0.5 * inst.free_cost},
        guardrail_overrides={"refund_rate": 0.0112, "complaint_rate": 0.02},
    )
    problem = replace(problem, caps=[replace(problem.caps[0], max_share=0.12)])
    result = ExactOptimizer().assign(problem)
    costs = [c.coef for c in problem.constraints] + [np.broadcast_to(inst.bundle.astype(float), problem.values.shape)]
    limits = [c.limit for c in problem.constraints] + [0.12]
    reference = oracle_under_budget(inst.truth.objective, inst.truth.eligible, costs, limits)
    assert result.objective == pytest.approx(reference.value, rel=1e-8)
    assert inst.truth.value(result.probabilities) == pytest.approx(reference.value, rel=1e-8)
    assert set(result.binding) >= {"promotion_budget", "bundle_stock"}
    for name, used in _true_usage(inst, problem, result.probabilities).items():
        assert result.usage[name] == pytest.approx(used, rel=1e-9)


SCENARIOS = {
    # the budget alone binds: half of what the unconstrained oracle spends
    "budget": ({}, 1.0, {"promotion_budget"}),
    # a refund guardrail tight enough to bind as well
    "budget and guardrail": ({"guardrail_overrides": {"refund_rate": 0.0112}}, 1.0, {"promotion_budget", "refund_rate"}),
    # the bundle stock binds, and so does the spec's own budget
    "cap": ({}, 0.1, {"promotion_budget", "bundle_stock"}),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_lagrangian_is_within_a_tenth_of_a_percent_of_the_exact_optimum(nboo: Instance, scenario: str) -> None:
    overrides, bundle_share, binding = SCENARIOS[scenario]
    budget = 0.5 * nboo.free_cost if scenario != "cap" else 1.0
    problem = _problem(nboo, budget_overrides={"promotion_budget": budget}, **overrides)
    problem = replace(problem, caps=[replace(problem.caps[0], max_share=0.4 * bundle_share)])
    exact = ExactOptimizer().assign(problem)
    fast = LagrangianOptimizer().assign(problem)
    assert set(exact.binding) == binding, exact.usage
    assert set(fast.binding) == binding, fast.usage

    assert abs(fast.objective - exact.objective) <= GAP * abs(exact.objective)
    assert fast.objective <= exact.objective + 1e-6 * abs(exact.objective)
    true = _true_usage(nboo, problem, fast.probabilities)
    for c in problem.constraints:
        assert true[c.name] <= c.limit * (1 + 1e-5)
        if c.name in binding:  # a binding budget or guardrail is used almost exactly, in expectation
            assert true[c.name] == pytest.approx(c.limit, rel=5e-3)
            assert fast.multipliers[c.name] == pytest.approx(exact.multipliers[c.name], rel=0.05)
    assert true["bundle_stock"] <= problem.caps[0].max_share + 1e-6
    # only units near a tie are randomized
    assert ((fast.probabilities > 0).sum(axis=1) > 1).mean() < 0.01


def test_a_binding_budget_is_used_within_half_a_percent(nboo: Instance) -> None:
    limit = 0.5 * nboo.free_cost
    problem = _problem(nboo, budget_overrides={"promotion_budget": limit})
    for result in (LagrangianOptimizer().assign(problem), ExactOptimizer().assign(problem)):
        assert "promotion_budget" in result.binding
        assert nboo.truth.mean("promo_cost", result.probabilities) == pytest.approx(limit, rel=5e-3)
        assert result.usage["promotion_budget"] == pytest.approx(limit, rel=5e-3)


def test_the_sampled_warm_start_with_screening_reaches_the_same_optimum(nboo: Instance) -> None:
    problem = _problem(nboo, budget_overrides={"promotion_budget": 0.5 * nboo.free_cost}, guardrail_overrides={"refund_rate": 0.0112})
    direct = LagrangianOptimizer().assign(problem)
    screened = LagrangianOptimizer(sample_size=1_000, seed=4).assign(problem)  # 20x the sample: screening path
    assert screened.objective == pytest.approx(direct.objective, rel=1e-6)
    for name in problem.names:
        assert screened.usage[name] == pytest.approx(direct.usage[name], rel=1e-4, abs=1e-6)
    assert screened.binding == direct.binding


def test_pessimistic_planning_keeps_the_true_cost_within_the_budget() -> None:
    """Costs estimated with known noise: the plain plan picks the actions whose cost was underestimated
    and overspends; planning on the upper bound keeps the true cost within the budget for every seed."""
    inst = make_instance(3, 5_000)
    cost = inst.truth.components["promo_cost"]
    limit = 0.5 * inst.free_cost
    se = 0.3 * cost + 0.05
    se[:, inst.twin.spec.control.index] = 0.0  # control costs nothing, and that is known
    plain_spend, careful_spend = [], []
    for seed in range(10):
        estimate = cost + se * np.random.default_rng(seed).standard_normal(cost.shape)
        problem = AssignmentProblem(inst.truth.objective, inst.truth.eligible, [MeanConstraint("promotion_budget", estimate, limit)])
        plain = LagrangianOptimizer().assign(problem)
        careful = LagrangianOptimizer().assign(pessimistic(problem, coef_se={"promotion_budget": se}, z=1.645))
        plain_spend.append(inst.truth.mean("promo_cost", plain.probabilities))
        careful_spend.append(inst.truth.mean("promo_cost", careful.probabilities))
    assert max(careful_spend) <= limit
    assert max(plain_spend) > limit * 1.05


def test_constraints_that_conflict_only_together_are_named_on_the_sampled_path() -> None:
    """A refund ceiling and a refund floor above it: each alone holds, together they cannot. The
    warm-start sample's multipliers run off, and their direction certifies the conflict on every unit."""
    inst = make_instance(3, 5_000)
    problem = _problem(inst, guardrail_overrides={"refund_rate": 0.012})
    floor = MeanConstraint("refund_floor", inst.truth.components["refund"], 0.013, ">=")
    problem = replace(problem, constraints=[*problem.constraints, floor])
    for optimizer in (LagrangianOptimizer(sample_size=500), LagrangianOptimizer(), ExactOptimizer()):
        with pytest.raises(InfeasibleError) as err:
            optimizer.assign(problem)
        assert err.value.constraints == ("refund_rate", "refund_floor"), type(optimizer)
        assert "`refund_floor` needs mean >= 0.013" in str(err.value)
