"""Exact oracles on the twin's true values, solved with HiGHS through SciPy (one budget: by its multiplier,
the same optimum, checked against HiGHS in the tests).

These are the yardsticks every learned policy is judged by, so they share no code with ``optimize/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, sparse

from drivetrain.errors import UsageError

__all__ = ["OracleSolution", "best_single_action", "oracle", "oracle_under_budget"]


@dataclass(frozen=True)
class OracleSolution:
    """An assignment as (n, K) probabilities, its mean value per unit, and each constraint's mean usage."""

    probabilities: np.ndarray
    value: float
    usage: tuple[float, ...]


def oracle(objective: np.ndarray, eligible: np.ndarray) -> OracleSolution:
    """Best eligible action per unit on true values: the unconstrained oracle."""
    masked = np.where(eligible, objective, -np.inf)
    best = masked.argmax(axis=1)
    probs = np.zeros_like(objective)
    probs[np.arange(len(best)), best] = 1.0
    return OracleSolution(probs, float(np.mean(objective[np.arange(len(best)), best])), ())


def best_single_action(objective: np.ndarray, eligible: np.ndarray, control: int) -> tuple[int, float]:
    """The one action that is best when given to every unit (control where it is not eligible)."""
    n = objective.shape[0]
    values = [
        float(np.mean(np.where(eligible[:, j], objective[:, j], objective[:, control]))) for j in range(objective.shape[1])
    ]
    j = int(np.argmax(values))
    del n
    return j, values[j]


def oracle_under_budget(
    objective: np.ndarray,
    eligible: np.ndarray,
    costs: Sequence[np.ndarray],
    limits: Sequence[float],
    *,
    integral: bool = False,
) -> OracleSolution:
    """Maximize mean objective s.t. mean cost_c <= limit_c for each c; each unit gets one eligible action.

    Solved as an LP (``integral=False``, at most as many fractional units as constraints) or exactly as a
    MILP. Raises :class:`UsageError` when no assignment satisfies the limits. The LP with one budget is
    solved by its one multiplier (:func:`_one_budget`, the same optimum as HiGHS in a fraction of the time:
    the loop's truth solves it every day); any other case by HiGHS.
    """
    n, k = objective.shape
    if len(costs) != len(limits):
        raise UsageError(f"`limits` must have one entry per cost, got {len(limits)} for {len(costs)}")
    if len(costs) == 1 and not integral:
        return _one_budget(np.asarray(objective, dtype=np.float64), np.asarray(eligible, dtype=bool),
                           np.broadcast_to(np.asarray(costs[0], dtype=np.float64), (n, k)), float(limits[0]))
    rows, cols = np.nonzero(eligible)
    var = rows.size
    c = -objective[rows, cols] / n
    a_eq = sparse.csr_matrix((np.ones(var), (rows, np.arange(var))), shape=(n, var))
    a_ub = np.vstack([cost[rows, cols] / n for cost in costs]) if costs else None
    result = optimize.milp(
        c,
        constraints=[optimize.LinearConstraint(a_eq, 1.0, 1.0)]
        + ([optimize.LinearConstraint(a_ub, -np.inf, np.asarray(limits, dtype=np.float64))] if a_ub is not None else []),
        integrality=np.ones(var) if integral else np.zeros(var),
        bounds=optimize.Bounds(0.0, 1.0),
        options={"presolve": True},
    )
    if result.status != 0 or result.x is None:
        raise UsageError(f"budget oracle: the limits {list(limits)} cannot all hold ({result.message})")
    probs = np.zeros((n, k))
    probs[rows, cols] = np.clip(result.x, 0.0, 1.0)
    usage = tuple(float(np.mean(np.sum(cost * probs, axis=1))) for cost in costs)
    return OracleSolution(probs, float(np.mean(np.sum(objective * probs, axis=1))), usage)


def _one_budget(objective: np.ndarray, eligible: np.ndarray, cost: np.ndarray, limit: float) -> OracleSolution:
    """The LP with one budget, exactly, by Lagrangian duality: with a price lam >= 0 on the cost, each unit
    takes the eligible action of most ``objective - lam * cost``, and the mean cost S(lam) of those picks
    falls as lam rises. The dual g(lam) = mean_i max_j (objective - lam cost) + lam limit is convex and
    piecewise linear, and over a product of simplices with one coupling row its minimum is the LP's
    optimum (no duality gap). Either S(0) <= limit (the budget does not bind: the unconstrained picks), or
    lam* is where S crosses the limit, found by bisection to machine precision; the picks just below and
    just above lam* both maximize the Lagrangian there, and the units where they differ (one, unless values
    tie) are mixed in the one proportion that spends exactly the limit. That mixture is feasible and meets
    g(lam*) (complementary slackness), so it is optimal. Infeasible when even the cheapest eligible action
    of every unit spends more than the limit."""
    n, k = objective.shape
    rows = np.arange(n)
    value = np.where(eligible, objective, -np.inf)
    spent = np.where(eligible, cost, 0.0)
    # lexicographic picks (cheapest, then best): the least spend any assignment reaches
    cheapest = np.where(eligible, cost, np.inf).min(axis=1)
    floor = float(cheapest.mean())
    tol = 1e-9 * max(1.0, abs(limit))
    if not np.isfinite(floor) or floor > limit + tol:
        raise UsageError(f"budget oracle: the limits {[limit]} cannot all hold (the cheapest eligible actions spend {floor:.6g})")

    def picks(lam: float) -> np.ndarray:
        return np.argmax(value - lam * spent, axis=1)

    def spend(choice: np.ndarray) -> float:
        return float(cost[rows, choice].mean())

    low_pick = picks(0.0)
    if spend(low_pick) <= limit + tol:
        return _solution(objective, cost, [(low_pick, 1.0)])
    low, high = 0.0, 1.0
    while spend(picks(high)) > limit and high < 1e15:
        low, high = high, 2.0 * high
    if spend(picks(high)) > limit:  # only the lexicographic cheapest picks reach the limit
        best = np.argmax(np.where(eligible & (cost == cheapest[:, None]), value, -np.inf), axis=1)
        return _solution(objective, cost, [(best, 1.0)])
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        if spend(picks(mid)) > limit:
            low = mid
        else:
            high = mid
    over, under = picks(low), picks(high)  # spend(over) > limit >= spend(under)
    s_over, s_under = spend(over), spend(under)
    theta = (limit - s_under) / (s_over - s_under)  # the share of the over-spending picks that meets the limit
    return _solution(objective, cost, [(over, theta), (under, 1.0 - theta)])


def _solution(objective: np.ndarray, cost: np.ndarray, mix: list[tuple[np.ndarray, float]]) -> OracleSolution:
    n = objective.shape[0]
    probs = np.zeros_like(objective)
    for choice, weight in mix:
        probs[np.arange(n), choice] += weight
    return OracleSolution(probs, float(np.mean(np.sum(objective * probs, axis=1))), (float(np.mean(np.sum(cost * probs, axis=1))),))
