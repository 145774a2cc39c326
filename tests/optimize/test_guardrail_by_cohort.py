"""Guardrails kept in every value of a cohort feature: the problem is the exact per-cohort linear program,
and the planned policy keeps the guardrail in each cohort on the twin's truth where the overall-only plan
breaks it in one."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

from drivetrain.assembly import plan_policy
from drivetrain.errors import SpecError, UsageError
from drivetrain.model import OutcomeModel
from drivetrain.optimize import LagrangianOptimizer, problem_from_spec
from drivetrain.spec import mean_constraints, parse_spec, with_guardrails_by
from drivetrain.twin import NBOOTwin

TIERS = ("bronze", "silver", "gold")


def _highs_by_cohort(values: np.ndarray, eligible: np.ndarray, refund: np.ndarray, tier: np.ndarray, bound: float) -> float:
    """The per-cohort program written out on its own: max mean value s.t. mean refund <= bound in each tier."""
    n, k = values.shape
    c = -np.where(eligible, values, 0.0).ravel() / n
    a_eq = np.kron(np.eye(n), np.ones(k))
    rows = [np.where(tier[:, None] == t, refund, 0.0).ravel() / np.sum(tier == t) for t in TIERS]
    bounds = [(0.0, 1.0 if e else 0.0) for e in eligible.ravel()]
    solved = linprog(c, A_ub=np.array(rows), b_ub=np.full(len(TIERS), bound), A_eq=a_eq, b_eq=np.ones(n), bounds=bounds, method="highs")
    assert solved.status == 0
    return float(-solved.fun)


def test_terms_per_cohort_value_are_named_and_read_the_bound() -> None:
    spec = with_guardrails_by(NBOOTwin(seed=1).spec, {"refund_rate": "tier"})
    terms = [t for t in mean_constraints(spec) if t.source == "refund_rate"]
    assert [(t.name, t.sense, t.limit, t.cohort, t.bound) for t in terms] == [
        (f"refund_rate@tier={v}", "<=", 0.0, ("tier", v), 0.03) for v in TIERS]
    used = terms[2].formula({"refund": np.array([0.05, 0.05]), "tier": np.array(["gold", "silver"])})
    np.testing.assert_allclose(used, [0.02, 0.0])
    assert NBOOTwin(seed=1).spec.hash != spec.hash and NBOOTwin(seed=1).spec.model_hash == spec.model_hash  # no refit


def test_a_guardrail_by_must_name_a_categorical_feature_that_is_not_personal() -> None:
    raw = NBOOTwin(seed=1).spec.model.model_dump(mode="json")
    for by in ("tenure_days", "postcode", "nope"):
        raw["guardrails"][0]["by"] = by
        with pytest.raises(SpecError, match=r"guardrails\[0\]\.by"):
            parse_spec(raw)
    with pytest.raises(UsageError, match="one of the spec's guardrails"):
        with_guardrails_by(NBOOTwin(seed=1).spec, {"refunds": "tier"})


@pytest.mark.parametrize("bound", [0.011, 0.0115])
def test_the_lagrangian_solves_the_exact_per_cohort_program(bound: float) -> None:
    twin = NBOOTwin(seed=11)
    users = twin.population(400)
    truth = twin.truth(users)
    raw = twin.spec.model.model_dump(mode="json")
    raw["constraints"] = {"budgets": [], "caps": []}
    raw["guardrails"] = [{"name": "refund_rate", "formula": "refund", "max": bound, "by": "tier"}]
    spec = parse_spec(raw)
    program = spec.eligible_units({"tenure_days": users["tenure_days"].to_numpy()})
    assert program.all()  # so that the program's mean is the mean over every unit
    problem = problem_from_spec(spec, truth.components, users)
    solved = LagrangianOptimizer().assign(problem)
    exact = _highs_by_cohort(problem.values, problem.eligible, truth.components["refund"], users["tier"].to_numpy(), bound)
    assert solved.objective == pytest.approx(exact, rel=2e-4)
    refund = (truth.components["refund"] * solved.probabilities).sum(axis=1)
    for t in TIERS:
        assert refund[users["tier"].to_numpy() == t].mean() <= bound * (1 + 1e-6)
    assert any(name.startswith("refund_rate@tier=") for name in solved.binding)


def test_the_served_policy_keeps_the_guardrail_in_every_cohort_on_the_truth() -> None:
    twin = NBOOTwin(seed=11)
    model = OutcomeModel(n_folds=2, n_estimators=60, min_child_samples=40, num_threads=1).fit(
        twin.expected_log(twin.population(8000)), twin.spec)
    contexts = NBOOTwin(seed=12).population(6000, offset=9_000_000)
    truth = twin.truth(contexts).components["refund"]
    tier = contexts["tier"].to_numpy()
    h = twin.spec.model.experimentation.holdout_share
    bound = 0.0112

    def policy_arm_refund_by_tier(by: str | None) -> dict[str, float]:
        spec = twin.spec if by is None else with_guardrails_by(twin.spec, {"refund_rate": by})
        plan = plan_policy(spec, model, contexts, guardrail_overrides={"refund_rate": bound}, margin=0.03)
        dist = plan.policy.action_distribution(contexts)
        dist[:, spec.control.index] -= h  # the guardrail counts the policy arm: plan and exploration
        refund = (truth * dist).sum(axis=1) / (1 - h)
        return {"all": float(refund.mean()), **{t: float(refund[tier == t].mean()) for t in TIERS}}

    overall = policy_arm_refund_by_tier(None)
    assert overall["all"] <= bound and max(overall[t] for t in TIERS) > bound  # kept overall, broken in a tier
    by_tier = policy_arm_refund_by_tier("tier")
    assert all(by_tier[t] <= bound for t in TIERS), by_tier
