"""Properties on small random problems (Hypothesis, derandomized by the profile in tests/conftest.py).

Limits are drawn around the usage of a random feasible assignment, so every problem is feasible. The
exact LP is the optimum, so the Lagrangian may not beat it, nor fall short of it by more than the softmax
smoothing can cost (``temperature * mean spread of values per unit * log K``), give or take what the
constraint tolerance is worth (each multiplier times the tolerance).
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from drivetrain.errors import InfeasibleError
from drivetrain.optimize import (
    AssignmentProblem,
    ExactOptimizer,
    LagrangianOptimizer,
    MeanConstraint,
    ShareCap,
)

DEFAULT = LagrangianOptimizer()
TEMPERATURE, TOL = DEFAULT.temperature, DEFAULT.tol


@st.composite
def problems(draw: st.DrawFn) -> AssignmentProblem:
    n = draw(st.integers(1, 12))
    k = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    integer = draw(st.booleans())  # integer values make many exact ties
    values = rng.integers(-3, 4, (n, k)).astype(float) if integer else rng.normal(0.0, draw(st.sampled_from([0.01, 1.0, 100.0])), (n, k))
    eligible = rng.random((n, k)) < 0.7
    eligible[np.arange(n), rng.integers(0, k, n)] = True
    x = rng.random((n, k)) * eligible
    x /= x.sum(axis=1, keepdims=True)
    constraints = []
    for c in range(draw(st.integers(0, 3))):
        coef = rng.random((n, k)) * draw(st.sampled_from([0.01, 1.0, 50.0]))
        if draw(st.booleans()):
            coef = np.round(coef, 1)
        used = float((coef * x).sum()) / n
        slack = draw(st.sampled_from([0.0, 0.01, 0.2])) * float(np.abs(coef).mean())
        sense: Literal["<=", ">="] = draw(st.sampled_from(["<=", ">="]))
        constraints.append(MeanConstraint(f"c{c}", coef, used + slack if sense == "<=" else used - slack, sense))
    caps = []
    if k > 1 and draw(st.booleans()):
        mask = rng.random(k) < 0.5
        share = float(x[:, mask].sum()) / n
        caps.append(ShareCap("cap", mask, min(1.0, share + draw(st.sampled_from([0.0, 0.1])))))
    return AssignmentProblem(values, eligible, constraints, caps)


def _spread(problem: AssignmentProblem) -> float:
    v, e = problem.values, problem.eligible
    spread = float(np.mean(np.where(e, v, -np.inf).max(axis=1) - np.where(e, v, np.inf).min(axis=1)))
    return spread if spread > 0 else 1.0


@given(problems())
def test_the_lagrangian_is_near_the_lp_optimum_and_respects_every_constraint(problem: AssignmentProblem) -> None:
    exact = ExactOptimizer().assign(problem)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no convergence warning either
        fast = LagrangianOptimizer().assign(problem)

    scale = {c.name: max(abs(c.limit), float(np.abs(c.coef).max(axis=1).mean())) or 1.0 for c in problem.constraints}
    scale.update({cap.name: 1.0 for cap in problem.caps})
    slack_value = sum(fast.multipliers[name] * 2 * TOL * s for name, s in scale.items())
    smoothing = TEMPERATURE * _spread(problem) * np.log(problem.n_actions)
    floor = exact.objective - smoothing - slack_value - 1e-9 * (1 + abs(exact.objective))
    assert floor <= fast.objective <= exact.objective + slack_value + 1e-9 * (1 + abs(exact.objective))

    for result in (exact, fast):
        p = result.probabilities
        assert (p[~problem.eligible] == 0).all()
        assert problem.eligible[np.arange(problem.n_units), result.action].all()
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
        for c in problem.constraints:
            sign = 1.0 if c.sense == "<=" else -1.0
            assert sign * (result.usage[c.name] - c.limit) <= 2 * TOL * scale[c.name]
        for cap in problem.caps:
            assert result.usage[cap.name] <= cap.max_share + 2 * TOL


def _shifted(problem: AssignmentProblem, squeeze: float, shift: float) -> AssignmentProblem:
    """Each limit moved ``squeeze`` of the way to the most favourable mean any eligible assignment gives
    (past it when ``squeeze`` > 1), then loosened by ``shift`` times its scale (tightened when negative)."""
    constraints = []
    for c in problem.constraints:
        coef = np.broadcast_to(c.coef, problem.values.shape)
        if c.sense == "<=":
            favourable = float(np.where(problem.eligible, coef, np.inf).min(axis=1).mean())
        else:
            favourable = float(np.where(problem.eligible, coef, -np.inf).max(axis=1).mean())
        limit = favourable + (c.limit - favourable) * (1 - squeeze)
        scale = max(abs(limit), float(np.abs(coef).max(axis=1).mean())) or 1.0
        constraints.append(MeanConstraint(c.name, c.coef, limit + (shift if c.sense == "<=" else -shift) * scale, c.sense))
    return AssignmentProblem(problem.values, problem.eligible, constraints, problem.caps)


def _feasible(optimizer: ExactOptimizer | LagrangianOptimizer, problem: AssignmentProblem) -> bool:
    try:
        optimizer.assign(problem)
    except InfeasibleError:
        return False
    return True


@given(problems(), st.floats(0.0, 2.0))
def test_both_optimizers_agree_on_feasibility(problem: AssignmentProblem, squeeze: float) -> None:
    """Limits squeezed towards (or past) what each constraint alone can reach: wherever the LP's verdict
    does not change within 1e-4 of the limits' scales, the Lagrangian's is the same."""
    exact = ExactOptimizer()
    verdict = _feasible(exact, _shifted(problem, squeeze, 0.0))
    if _feasible(exact, _shifted(problem, squeeze, 1e-4)) != _feasible(exact, _shifted(problem, squeeze, -1e-4)):
        return  # on the edge of feasibility: tolerances decide
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _feasible(LagrangianOptimizer(), _shifted(problem, squeeze, 0.0)) == verdict
