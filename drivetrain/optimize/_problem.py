"""The assignment problem: per-unit values, eligibility, mean constraints and share caps (n units, K actions).

A solution is an (n, K) matrix of probabilities ``x`` (each row sums to 1, zero where not eligible) that
maximizes the mean value ``mean_i sum_k values[i, k] x[i, k]`` subject to every constraint
``mean_i sum_k coef[i, k] x[i, k] <= limit`` (or ``>=``) and every cap
``mean_i sum_{k in mask} x[i, k] <= max_share``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from drivetrain.errors import UsageError

__all__ = ["AssignmentProblem", "MeanConstraint", "ShareCap", "pessimistic"]

Sense = Literal["<=", ">="]


def _frozen(array: npt.ArrayLike, dtype: type) -> np.ndarray:
    """A read-only view (no copy when the dtype already matches), so that the caller's array stays writable."""
    view: np.ndarray = np.asarray(array, dtype=dtype).view()
    view.flags.writeable = False
    return view


def _first_bad(bad: np.ndarray) -> str:
    where = np.argwhere(bad)[0]
    return f"row {where[0]}" + (f" (action {where[1]})" if len(where) > 1 else "")


def _check_finite(array: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(np.argwhere(bad)[0])
        raise UsageError(f"{what} must be finite, got {array[first]} in {_first_bad(bad)}")


@dataclass(frozen=True, eq=False)
class MeanConstraint:
    """The mean over units of ``sum_k coef[i, k] x[i, k]`` must be ``<=`` (or ``>=``) ``limit``.

    A budget (expected promotion cost per unit at most B) or a guardrail (expected refunds per unit at
    most r, or at least a floor). ``coef`` has shape (n, K), or any shape that broadcasts to it, such as
    a (K,) row of per-action costs.

    >>> MeanConstraint("promotion_budget", np.array([0.0, 2.0]), limit=1.0).sense
    '<='
    """

    name: str
    coef: np.ndarray
    limit: float
    sense: Sense = "<="

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise UsageError(f"constraint `name` must be a non-empty string, got {self.name!r}")
        if self.sense not in ("<=", ">="):
            raise UsageError(f"`sense` of constraint {self.name!r} must be '<=' or '>=', got {self.sense!r}")
        limit = float(self.limit)
        if not np.isfinite(limit):
            raise UsageError(f"`limit` of constraint {self.name!r} must be finite, got {self.limit!r}")
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "coef", _frozen(self.coef, np.float64))


@dataclass(frozen=True, eq=False)
class ShareCap:
    """At most ``max_share`` of the units may get any action of ``mask`` (shape (K,) bool).

    >>> ShareCap("bundle_stock", np.array([False, True]), max_share=0.4).max_share
    0.4
    """

    name: str
    mask: np.ndarray
    max_share: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise UsageError(f"cap `name` must be a non-empty string, got {self.name!r}")
        share = float(self.max_share)
        if not 0.0 <= share <= 1.0:
            raise UsageError(f"`max_share` of cap {self.name!r} must be in [0, 1], got {self.max_share!r}")
        mask = np.asarray(self.mask)
        if mask.ndim != 1 or not (mask.dtype == bool or np.isin(mask, (0, 1)).all()):
            raise UsageError(
                f"`mask` of cap {self.name!r} must be a 1-D boolean array over actions, got {mask.dtype} of shape {mask.shape}"
            )
        object.__setattr__(self, "max_share", share)
        object.__setattr__(self, "mask", _frozen(mask, bool))


@dataclass(frozen=True, eq=False)
class AssignmentProblem:
    """Choose one eligible action per unit to maximize the mean of ``values`` under constraints and caps.

    ``values`` (n, K) is the expected objective of each (unit, action), larger is better; ``eligible``
    (n, K) bool marks the actions a unit may get, at least one per unit. Every array must be finite, also
    where an action is not eligible (those entries are ignored).

    >>> problem = AssignmentProblem(
    ...     values=np.array([[0.0, 3.0], [0.0, 1.0]]),
    ...     eligible=np.ones((2, 2), dtype=bool),
    ...     constraints=[MeanConstraint("budget", np.array([[0.0, 2.0], [0.0, 2.0]]), limit=1.0)],
    ... )
    >>> problem.n_units, problem.n_actions, problem.names
    (2, 2, ('budget',))
    """

    values: np.ndarray
    eligible: np.ndarray
    constraints: Sequence[MeanConstraint] = ()
    caps: Sequence[ShareCap] = ()

    def __post_init__(self) -> None:
        values = np.asarray(self.values)
        if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
            raise UsageError(f"`values` must be a 2-D array (n_units, n_actions) with at least one of each, got shape {values.shape}")
        if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
            raise UsageError(f"`values` must be real numbers, got dtype {values.dtype}")
        values = _frozen(values, np.float64)
        _check_finite(values, "`values`")
        shape = values.shape
        raw = np.asarray(self.eligible)
        if raw.shape != shape:
            raise UsageError(f"`eligible` must have the shape of `values` {shape}, got {raw.shape}")
        if raw.dtype != bool:
            raise UsageError(f"`eligible` must be a boolean array, got dtype {raw.dtype}")
        eligible = _frozen(raw, bool)
        none = ~eligible.any(axis=1)
        if none.any():
            raise UsageError(f"`eligible` must allow at least one action per unit, got none in row {int(np.argmax(none))}")

        constraints = tuple(self.constraints)
        for i, c in enumerate(constraints):
            if not isinstance(c, MeanConstraint):
                raise UsageError(f"`constraints[{i}]` must be a MeanConstraint, got {type(c).__name__}")
            what = f"`constraints[{i}].coef` ({c.name})"
            try:
                np.broadcast_shapes(c.coef.shape, shape)
                ok = np.broadcast_shapes(c.coef.shape, shape) == shape
            except ValueError:
                ok = False
            if not ok:
                raise UsageError(f"{what} must broadcast to the shape of `values` {shape}, got {c.coef.shape}")
            _check_finite(np.broadcast_to(c.coef, shape), what)
        caps = tuple(self.caps)
        for i, cap in enumerate(caps):
            if not isinstance(cap, ShareCap):
                raise UsageError(f"`caps[{i}]` must be a ShareCap, got {type(cap).__name__}")
            if cap.mask.shape != (shape[1],):
                raise UsageError(f"`caps[{i}].mask` ({cap.name}) must have one entry per action ({shape[1]},), got {cap.mask.shape}")
        names = [c.name for c in constraints] + [c.name for c in caps]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UsageError(f"constraint and cap names must be distinct, got {dup} more than once")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "eligible", eligible)
        object.__setattr__(self, "constraints", constraints)
        object.__setattr__(self, "caps", caps)

    @property
    def n_units(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.values.shape[1])

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the constraints, then of the caps."""
        return tuple(c.name for c in self.constraints) + tuple(c.name for c in self.caps)


def pessimistic(
    problem: AssignmentProblem,
    *,
    value_se: npt.ArrayLike | None = None,
    coef_se: Mapping[str, npt.ArrayLike] | None = None,
    z: float = 1.645,
) -> AssignmentProblem:
    """The same problem planned on the unfavourable end of each estimate's interval.

    Values become ``values - z * value_se``; the coefficients of a ``<=`` constraint become
    ``coef + z * se`` and those of a ``>=`` constraint ``coef - z * se``, so that effects that are
    uncertain do not overspend a budget or break a guardrail. Standard errors have shape (n, K) (or
    broadcast to it), are finite and >= 0; constraints left out of ``coef_se`` are taken as known.

    >>> budget = MeanConstraint("b", np.array([[0.0, 2.0]]), 1.0)
    >>> p = AssignmentProblem(np.array([[0.0, 3.0]]), np.ones((1, 2), bool), constraints=[budget])
    >>> pessimistic(p, coef_se={"b": np.array([[0.0, 0.5]])}, z=2.0).constraints[0].coef
    array([[0., 3.]])
    """
    zf = float(z)
    if not np.isfinite(zf) or zf < 0:
        raise UsageError(f"`z` must be a finite number >= 0, got {z!r}")
    shape = problem.values.shape

    def se_array(raw: npt.ArrayLike, what: str) -> np.ndarray:
        se = np.asarray(raw, dtype=np.float64)
        try:
            ok = np.broadcast_shapes(se.shape, shape) == shape
        except ValueError:
            ok = False
        if not ok:
            raise UsageError(f"{what} must broadcast to the shape of `values` {shape}, got {se.shape}")
        se = np.broadcast_to(se, shape)
        _check_finite(se, what)
        if (se < 0).any():
            raise UsageError(f"{what} must be >= 0, got {se[np.unravel_index(np.argmax(se < 0), se.shape)]} in {_first_bad(se < 0)}")
        return se

    values = problem.values
    if value_se is not None:
        values = values - zf * se_array(value_se, "`value_se`")
    coef_se = dict(coef_se or {})
    known = {c.name for c in problem.constraints}
    unknown = sorted(set(coef_se) - known)
    if unknown:
        raise UsageError(f"`coef_se` must name constraints of the problem {sorted(known)}, got {unknown}")
    constraints = []
    for c in problem.constraints:
        if c.name not in coef_se:
            constraints.append(c)
            continue
        se = se_array(coef_se[c.name], f"`coef_se[{c.name!r}]`")
        constraints.append(replace(c, coef=c.coef + zf * se if c.sense == "<=" else c.coef - zf * se))
    return AssignmentProblem(values=values, eligible=problem.eligible, constraints=constraints, caps=problem.caps)


def with_margin(problem: AssignmentProblem, margin: float) -> AssignmentProblem:
    """``problem`` with every limit moved ``margin`` (a share of the limit) to its safe side: a ``<=`` limit
    and a cap's share shrink by ``margin`` of their size, a ``>=`` limit grows by it. A plan sits on its
    binding limits, so predicted use lands there and half of the units' realizations over it; a margin
    keeps room for that noise and for the model's error at the price of the objective the limits buy
    (:func:`pessimistic` plans on per-unit bounds instead, which costs far more of the objective).

    >>> budget = MeanConstraint("b", np.array([[0.0, 2.0]]), 1.0)
    >>> with_margin(AssignmentProblem(np.array([[0.0, 3.0]]), np.ones((1, 2), bool), constraints=[budget]), 0.1).constraints[0].limit
    0.9
    """
    m = float(margin)
    if not np.isfinite(m) or not 0 <= m < 1:
        raise UsageError(f"`margin` must be a share of each limit in [0, 1), such as 0.05, got {margin!r}")
    constraints = [replace(c, limit=c.limit - m * abs(c.limit) if c.sense == "<=" else c.limit + m * abs(c.limit))
                   for c in problem.constraints]
    caps = [replace(c, max_share=c.max_share * (1 - m)) for c in problem.caps]
    return replace(problem, constraints=constraints, caps=caps)

