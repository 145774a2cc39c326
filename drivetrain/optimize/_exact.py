"""The exact optimizer: the assignment problem as a linear program, solved by HiGHS through SciPy.

Variables are the probabilities of the eligible (unit, action) pairs; each unit's sum to one, and each
constraint and cap is one dense row. Two reductions that cannot change the optimum come first: an
action that another eligible action of the same unit matches or beats on value and on every constraint
and cap is dropped (moving its probability there loses nothing), and a unit left with one action is
fixed. HiGHS's interior-point method with crossover then returns a vertex, where at most as many units
as there are binding constraints are split between actions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import optimize, sparse

from drivetrain.errors import UsageError
from drivetrain.optimize._assignment import (
    Assignment,
    Row,
    best_actions,
    build_assignment,
    check_each_alone,
    one_hot,
    raise_jointly_infeasible,
    standard_rows,
    value_scale,
)
from drivetrain.optimize._problem import AssignmentProblem

__all__ = ["ExactOptimizer"]

#: feasibility tolerance of the checks made before HiGHS runs, as a fraction of each row's scale
TOL = 1e-9


def undominated(problem: AssignmentProblem, rows: Sequence[Row]) -> np.ndarray:
    """(n, K) bool: the eligible actions that no other eligible action of the unit matches or beats on
    value and on every row (``<=`` orientation); of identical actions the first is kept."""
    values, eligible = problem.values, problem.eligible
    k = values.shape[1]
    keep = eligible.copy()
    for a in range(k):
        for b in range(k):
            if a == b:
                continue
            worse = eligible[:, b] & keep[:, a] & (values[:, b] >= values[:, a])
            strict = values[:, b] > values[:, a]
            for row in rows:
                ca, cb = row.sign * row.coef[:, a], row.sign * row.coef[:, b]
                worse &= cb <= ca
                strict |= cb < ca
            keep[:, a] &= ~(worse & (strict | (b < a)))
    return keep


class ExactOptimizer:
    """The assignment problem solved exactly as a linear program (HiGHS, interior point with crossover).

    The reference the Lagrangian optimizer is measured against; tens of thousands of units solve in
    seconds. ``seed`` draws ``Assignment.action`` for the few units the optimum splits.

    >>> from drivetrain.optimize import AssignmentProblem, MeanConstraint
    >>> problem = AssignmentProblem(
    ...     values=np.array([[0.0, 3.0], [0.0, 1.0]]),
    ...     eligible=np.ones((2, 2), dtype=bool),
    ...     constraints=[MeanConstraint("budget", np.array([[0.0, 2.0], [0.0, 2.0]]), limit=1.5)],
    ... )
    >>> result = ExactOptimizer().assign(problem)
    >>> result.probabilities.tolist(), result.objective, result.multipliers["budget"]
    ([[0.0, 1.0], [0.5, 0.5]], 1.75, 0.5)
    """

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed

    def assign(self, problem: AssignmentProblem) -> Assignment:
        """Solve ``problem``; raises :class:`InfeasibleError` naming the constraints that cannot hold."""
        if not isinstance(self.seed, int):
            raise UsageError(f"`seed` must be an integer, got {self.seed!r}")
        rows = standard_rows(problem)
        check_each_alone(problem, rows, TOL)
        n, k = problem.values.shape
        if not rows:
            return build_assignment(problem, rows, one_hot(best_actions(problem), k), np.zeros(0), np.zeros(0, bool), self.seed)
        vscale = value_scale(problem)
        scale = np.array([r.scale for r in rows])
        keep = undominated(problem, rows)
        single = keep.sum(axis=1) == 1
        fixed, open_ = np.flatnonzero(single), np.flatnonzero(~single)
        fixed_action = keep[fixed].argmax(axis=1)
        used = np.array([row.sign * float(np.sum(row.coef[fixed, fixed_action])) for row in rows])

        if open_.size == 0:  # one undominated action per unit: it is best on every row, and checked above
            probabilities = one_hot(keep.argmax(axis=1), k)
            return build_assignment(problem, rows, probabilities, np.zeros(len(rows)), np.zeros(len(rows), bool), self.seed)
        unit, action = np.nonzero(keep[open_])
        units = open_[unit]
        count = unit.size
        cost = -problem.values[units, action] / vscale
        a_ub = sparse.csr_array(np.vstack([row.sign * row.coef[units, action] / row.scale for row in rows]))
        b_ub = (np.array([r.bound for r in rows]) * n - used) / scale
        a_eq = sparse.csr_array((np.ones(count), (unit, np.arange(count))), shape=(open_.size, count))
        b_eq = np.ones(open_.size)

        result = _solve(cost, a_ub, b_ub, a_eq, b_eq)
        if result.status == 2:
            self._explain(problem, rows, a_ub, b_ub, a_eq, b_eq, used)
        if result.status != 0 or result.x is None:
            raise RuntimeError(f"HiGHS could not solve the assignment LP (status {result.status}: {result.message})")

        probabilities = np.zeros((n, k))
        probabilities[fixed, fixed_action] = 1.0
        x = np.clip(result.x, 0.0, 1.0)
        x[x < 1e-9] = 0.0
        probabilities[units, action] = x
        probabilities[open_] /= probabilities[open_].sum(axis=1, keepdims=True)
        dual = -np.asarray(result.ineqlin.marginals)
        multipliers = np.maximum(dual, 0.0) * vscale / scale
        return build_assignment(problem, rows, probabilities, multipliers, dual > 1e-9, self.seed)

    def _explain(
        self,
        problem: AssignmentProblem,
        rows: Sequence[Row],
        a_ub: sparse.csr_array,
        b_ub: np.ndarray,
        a_eq: sparse.csr_array,
        b_eq: np.ndarray,
        used: np.ndarray,
    ) -> None:
        """Name the constraints in conflict: minimize the total scaled violation (one slack per row); the
        rows with a positive dual there form the certificate that they cannot hold together."""
        m, count = a_ub.shape
        cost = np.concatenate([np.zeros(count), np.ones(m)])
        elastic_ub = sparse.hstack([a_ub, -sparse.eye_array(m)], format="csr")
        elastic_eq = sparse.hstack([a_eq, sparse.csr_array((a_eq.shape[0], m))], format="csr")
        result = _solve(cost, elastic_ub, b_ub, elastic_eq, b_eq)
        if result.status != 0 or result.x is None:
            raise RuntimeError(f"HiGHS could not solve the feasibility LP (status {result.status}: {result.message})")
        n = problem.n_units
        lhs = a_ub @ result.x[:count]
        usage = [row.sign * (lhs[c] * row.scale + used[c]) / n for c, row in enumerate(rows)]
        slack = result.x[count:]
        dual = -np.asarray(result.ineqlin.marginals)
        conflict = [c for c in range(m) if slack[c] > TOL * n or dual[c] > 1e-9]
        raise_jointly_infeasible(rows, conflict, usage)


def _solve(
    cost: np.ndarray, a_ub: sparse.csr_array, b_ub: np.ndarray, a_eq: sparse.csr_array, b_eq: np.ndarray
) -> optimize.OptimizeResult:
    result = optimize.linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs-ipm")
    if result.status == 4:  # numerical trouble in the interior point: the dual simplex is slower but sturdier
        result = optimize.linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs-ds")
    return result
