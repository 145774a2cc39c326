"""The Assignment value, and what both optimizers share: the standard form, the checks of each constraint
alone, the infeasibility message, and turning probabilities into an Assignment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from drivetrain.errors import InfeasibleError, UsageError
from drivetrain.optimize._problem import AssignmentProblem

__all__ = ["Assignment", "Optimizer"]

#: rows used to measure the scale of values and coefficients on large problems (deterministic stride)
SCALE_ROWS = 50_000
#: rows processed at a time by the passes over every unit
CHUNK = 16_384


@dataclass(frozen=True, eq=False)
class Assignment:
    """A solved assignment.

    ``probabilities`` (n, K): the chance each unit gets each action (rows sum to 1, zero where not
    eligible); all but a few units near a tie get one action with certainty. ``action`` (n,): one action
    per unit drawn from those probabilities with the optimizer's seed. ``objective``: the mean of
    ``problem.values`` under the probabilities. ``usage``: per constraint its mean under the
    probabilities, per cap the share of units on its actions. ``multipliers``: per constraint or cap, the
    objective per unit of limit that it costs (>= 0; 0 when it does not bind). ``binding``: the names
    with a positive multiplier, in problem order.
    """

    probabilities: np.ndarray
    action: np.ndarray
    objective: float
    usage: Mapping[str, float]
    multipliers: Mapping[str, float]
    binding: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.probabilities.ndim != 2:
            raise UsageError(f"`probabilities` must be a 2-D array (n_units, n_actions), got shape {self.probabilities.shape}")
        n = self.probabilities.shape[0]
        if self.action.shape != (n,):
            raise UsageError(f"`action` must have shape ({n},) like the rows of `probabilities`, got {self.action.shape}")
        if set(self.usage) != set(self.multipliers):
            raise UsageError(
                f"`usage` and `multipliers` must name the same constraints, got {sorted(self.usage)} and {sorted(self.multipliers)}"
            )


@runtime_checkable
class Optimizer(Protocol):
    """Anything that solves an :class:`AssignmentProblem`."""

    def assign(self, problem: AssignmentProblem) -> Assignment: ...


@dataclass(frozen=True, eq=False)
class Row:
    """One constraint or cap in the orientation ``mean(sign * coef . x) <= sign * limit``.

    ``coef`` is (n, K), often a broadcast view (a cap's is its mask on every row); ``scale`` > 0 is the
    larger of ``|limit|`` and the mean largest ``|coef|`` per unit, the unit in which tolerances count.
    """

    name: str
    coef: np.ndarray
    limit: float
    sign: float
    kind: Literal["constraint", "cap"]
    scale: float

    @property
    def bound(self) -> float:
        """``sign * limit``: the right-hand side in the ``<=`` orientation."""
        return self.sign * self.limit

    def describe(self, usage: float) -> str:
        if self.kind == "cap":
            return f"`{self.name}` allows a share <= {self.limit:.6g} of units on its actions, the closest assignment found gives {usage:.6g}"
        op = "<=" if self.sign > 0 else ">="
        return f"`{self.name}` needs mean {op} {self.limit:.6g}, the closest assignment found gives {usage:.6g}"


def standard_rows(problem: AssignmentProblem) -> list[Row]:
    """The problem's constraints then caps, in the ``<=`` orientation with their scales."""
    stride = max(1, problem.n_units // SCALE_ROWS)
    rows: list[Row] = []
    for c in problem.constraints:
        coef = np.broadcast_to(c.coef, problem.values.shape)
        typical = float(np.mean(np.max(np.abs(coef[::stride]), axis=1)))
        scale = max(abs(c.limit), typical) or 1.0
        rows.append(Row(c.name, coef, c.limit, 1.0 if c.sense == "<=" else -1.0, "constraint", scale))
    for cap in problem.caps:
        rows.append(Row(cap.name, np.broadcast_to(cap.mask.astype(np.float64), problem.values.shape), cap.max_share, 1.0, "cap", 1.0))
    return rows


def value_scale(problem: AssignmentProblem) -> float:
    """Mean spread of the eligible values per unit (on a deterministic stride of rows); 1 when all are flat."""
    stride = max(1, problem.n_units // SCALE_ROWS)
    v, e = problem.values[::stride], problem.eligible[::stride]
    spread = np.where(e, v, -np.inf).max(axis=1) - np.where(e, v, np.inf).min(axis=1)
    scale = float(np.mean(spread))
    return scale if scale > 0 else 1.0


def check_each_alone(problem: AssignmentProblem, rows: Sequence[Row], tol: float) -> None:
    """Raise :class:`InfeasibleError` when some constraint cannot hold even with every other one dropped.

    Each unit's most favourable eligible action gives the best mean a constraint can reach on its own.
    """
    n = problem.n_units
    problems: list[str] = []
    names: list[str] = []
    for row in rows:
        total = 0.0
        for start in range(0, n, CHUNK):  # in chunks that stay in cache
            part = slice(start, start + CHUNK)
            coef = np.where(problem.eligible[part], row.sign * row.coef[part], np.inf)
            total += float(coef.min(axis=1).sum())
        reach = row.sign * total / n
        if row.sign * reach <= row.bound + tol * row.scale:
            continue
        names.append(row.name)
        if row.kind == "cap":
            problems.append(
                f"`{row.name}` allows a share <= {row.limit:.6g} of units on its actions, "
                f"but {reach:.6g} of units have no other eligible action"
            )
        elif row.sign > 0:
            problems.append(f"`{row.name}` needs mean <= {row.limit:.6g}, the lowest any eligible assignment gives is {reach:.6g}")
        else:
            problems.append(f"`{row.name}` needs mean >= {row.limit:.6g}, the highest any eligible assignment gives is {reach:.6g}")
    if names:
        raise InfeasibleError(f"constraints cannot all hold: {', '.join(f'`{n}`' for n in names)}", constraints=names, problems=problems)


def raise_jointly_infeasible(rows: Sequence[Row], conflict: Sequence[int], usage: Sequence[float]) -> None:
    """Raise :class:`InfeasibleError` for constraints that hold one by one but not together."""
    names = [rows[i].name for i in conflict]
    raise InfeasibleError(
        f"constraints cannot all hold together: {', '.join(f'`{n}`' for n in names)}",
        constraints=names,
        problems=[rows[i].describe(usage[i]) for i in conflict],
    )


def usage_of(probabilities: np.ndarray, rows: Sequence[Row]) -> np.ndarray:
    """Mean of each row's coefficient under the probabilities, in the row's own orientation; shape (m,)."""
    n = probabilities.shape[0]
    out = np.empty(len(rows))
    for j, row in enumerate(rows):
        out[j] = float(np.einsum("ij,ij->", probabilities, row.coef)) / n
    return out


def sample_actions(probabilities: np.ndarray, seed: int) -> np.ndarray:
    """One action per unit: the certain one where there is one, else a draw (seeded) from the row."""
    action = probabilities.argmax(axis=1)
    mixed = np.flatnonzero(probabilities[np.arange(len(action)), action] < 1.0)
    if mixed.size:
        rng = np.random.default_rng(seed)
        cum = np.cumsum(probabilities[mixed], axis=1)
        draw = rng.random(mixed.size) * cum[:, -1]
        pick = (cum <= draw[:, None]).sum(axis=1)
        last = probabilities.shape[1] - 1 - np.argmax(probabilities[mixed][:, ::-1] > 0, axis=1)
        action[mixed] = np.minimum(pick, last)
    return action.astype(np.int64)


def one_hot(choice: np.ndarray, k: int) -> np.ndarray:
    probabilities = np.zeros((choice.size, k))
    probabilities[np.arange(choice.size), choice] = 1.0
    return probabilities


def build_assignment(
    problem: AssignmentProblem,
    rows: Sequence[Row],
    probabilities: np.ndarray,
    multipliers: np.ndarray,
    binding: np.ndarray,
    seed: int,
) -> Assignment:
    """Assemble the Assignment: objective and usage measured on the probabilities themselves."""
    n = problem.n_units
    usage = usage_of(probabilities, rows)
    objective = float(np.einsum("ij,ij->", probabilities, problem.values)) / n
    action = sample_actions(probabilities, seed)
    probabilities.flags.writeable = False
    action.flags.writeable = False
    return Assignment(
        probabilities=probabilities,
        action=action,
        objective=objective,
        usage={row.name: float(u) for row, u in zip(rows, usage, strict=True)},
        multipliers={row.name: float(m) for row, m in zip(rows, multipliers, strict=True)},
        binding=tuple(row.name for row, b in zip(rows, binding, strict=True) if b),
    )


def best_actions(problem: AssignmentProblem) -> np.ndarray:
    """Each unit's best eligible action (the first on ties); shape (n,)."""
    values = problem.values if problem.eligible.all() else np.where(problem.eligible, problem.values, -np.inf)
    return np.asarray(values.argmax(axis=1))
