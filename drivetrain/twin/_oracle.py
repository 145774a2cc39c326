"""Exact oracles on the twin's true values, solved with HiGHS through SciPy.

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
    MILP. Raises :class:`UsageError` when no assignment satisfies the limits.
    """
    n, k = objective.shape
    if len(costs) != len(limits):
        raise UsageError(f"`limits` must have one entry per cost, got {len(limits)} for {len(costs)}")
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
