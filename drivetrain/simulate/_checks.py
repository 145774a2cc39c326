"""Validation of logged bandit data: arrays in, a checked :class:`Logged` bundle out.

Every message names the parameter, the expectation and the first offending value with its row, e.g.
"`pscore` must be in (0, 1], got 1.7 at row 1042".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from drivetrain.errors import UsageError
from drivetrain.stats import cluster_codes as check_cluster

__all__ = ["Logged", "check_alpha", "check_cluster", "check_logged", "check_nonnegative"]

Array = npt.NDArray[np.float64]

#: Rows of a probability matrix may miss 1 by this much (rounding in stored logs).
ROW_SUM_ATOL = 1e-6
#: ``pscore_dist[i, action[i]]`` and ``pscore[i]`` may differ by this much (relative, absolute).
PSCORE_RTOL, PSCORE_ATOL = 1e-3, 1e-6


@dataclass(frozen=True)
class Logged:
    """Checked logged data: n decisions over K actions. Shapes: (n,) vectors, (n, K) matrices."""

    reward: Array
    action: npt.NDArray[np.int64]
    pscore: Array
    action_dist: Array
    estimated_rewards: Array | None = None
    pscore_dist: Array | None = None
    #: Cluster of each decision as a code in [0, G) (the unit it was made for), or None: independent decisions.
    cluster: npt.NDArray[np.int64] | None = None

    @property
    def n(self) -> int:
        return int(self.reward.shape[0])

    @cached_property
    def weight(self) -> Array:
        """Importance weight of each logged action, pi(a_i | x_i) / pscore_i; shape (n,)."""
        return self.action_dist[np.arange(self.n), self.action] / self.pscore

    @cached_property
    def q_target(self) -> Array:
        """Model value of the target policy per decision, sum_a pi(a | x_i) q(x_i, a); shape (n,)."""
        return np.sum(self.action_dist * self.model, axis=1)

    @cached_property
    def q_logged(self) -> Array:
        """Model prediction for the logged action, q(x_i, a_i); shape (n,)."""
        return self.model[np.arange(self.n), self.action]

    @property
    def model(self) -> Array:
        """``estimated_rewards``, required by model-based estimators; shape (n, K)."""
        if self.estimated_rewards is None:
            raise UsageError("`estimated_rewards` is required by model-based estimators (DM, DR, ...), got None")
        return self.estimated_rewards


def _fmt(x: object) -> str:
    if isinstance(x, float | np.floating):
        return f"{float(x):.6g}"
    return repr(x.item()) if isinstance(x, np.generic) else repr(x)


def _where(bad: np.ndarray) -> str:
    """' at row i' (and ', action j' for matrices) for the first True of ``bad``, plus how many more."""
    idx = np.argwhere(bad)
    first = idx[0]
    text = f" at row {int(first[0])}" + (f", action {int(first[1])}" if bad.ndim == 2 else "")
    more = int(np.unique(idx[:, 0]).size) - 1
    return text + (f" (and {more} more rows)" if more else "")


def _first(values: np.ndarray, bad: np.ndarray) -> str:
    return _fmt(values[tuple(np.argwhere(bad)[0])]) + _where(bad)


def _numeric(value: npt.ArrayLike, name: str) -> Array:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise UsageError(f"`{name}` must be a numeric array, got dtype {np.asarray(value).dtype}") from None
    return arr


def _vector(value: npt.ArrayLike, name: str, n: int | None, source: str = "reward") -> Array:
    arr = _numeric(value, name)
    if arr.ndim != 1:
        raise UsageError(f"`{name}` must be 1-D with shape (n,), got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise UsageError(f"`{name}` must have one entry per decision (n={n} from `{source}`), got {arr.shape[0]}")
    _finite(arr, name)
    return arr


def _matrix(value: npt.ArrayLike, name: str, n: int, k: int | None) -> Array:
    arr = _numeric(value, name)
    if arr.ndim != 2 or arr.shape[0] != n or (k is not None and arr.shape[1] != k):
        want = f"({n}, {k})" if k is not None else f"({n}, K)"
        raise UsageError(f"`{name}` must have shape (n, K) = {want}, got {arr.shape}")
    _finite(arr, name)
    return arr


def _finite(arr: Array, name: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        raise UsageError(f"`{name}` must be finite, got {_first(arr, bad)}")


def _probabilities(arr: Array, name: str) -> None:
    bad = (arr < 0) | (arr > 1)
    if bad.any():
        raise UsageError(f"`{name}` must be in [0, 1], got {_first(arr, bad)}")
    sums = arr.sum(axis=1)
    bad = np.abs(sums - 1.0) > ROW_SUM_ATOL
    if bad.any():
        raise UsageError(f"rows of `{name}` must sum to 1, got {_first(sums, bad)}")


def check_logged(
    *,
    reward: npt.ArrayLike,
    action: npt.ArrayLike,
    pscore: npt.ArrayLike,
    action_dist: npt.ArrayLike,
    estimated_rewards: npt.ArrayLike | None = None,
    pscore_dist: npt.ArrayLike | None = None,
    cluster: npt.ArrayLike | None = None,
    reward_name: str = "reward",
    model_name: str = "estimated_rewards",
) -> Logged:
    """Check shapes, ranges and finiteness of logged data; raise :class:`UsageError` at the first problem.

    ``cluster`` (n,) names the unit of each decision (any hashable ids, no missing values); decisions of
    one unit are then treated as dependent by the intervals. ``reward_name`` and ``model_name`` are how
    messages name the reward and model arrays.
    """
    r = _vector(reward, reward_name, None)
    n = r.shape[0]
    if n == 0:
        raise UsageError(f"`{reward_name}` must hold at least one decision, got 0")
    dist = _matrix(action_dist, "action_dist", n, None)
    k = dist.shape[1]
    if k == 0:
        raise UsageError(f"`action_dist` must have at least one action column, got shape {dist.shape}")
    _probabilities(dist, "action_dist")

    a = _vector(action, "action", n, reward_name)
    bad = a != np.round(a)
    if bad.any():
        raise UsageError(f"`action` must hold integer action indices, got {_first(a, bad)}")
    bad = (a < 0) | (a >= k)
    if bad.any():
        raise UsageError(f"`action` must be in [0, {k}) (K={k} from `action_dist`), got {_first(a.astype(np.int64), bad)}")

    p = _vector(pscore, "pscore", n, reward_name)
    bad = (p <= 0) | (p > 1)
    if bad.any():
        raise UsageError(f"`pscore` must be in (0, 1], got {_first(p, bad)}")

    q = None if estimated_rewards is None else _matrix(estimated_rewards, model_name, n, k)
    mu = None
    if pscore_dist is not None:
        mu = _matrix(pscore_dist, "pscore_dist", n, k)
        _probabilities(mu, "pscore_dist")
        logged = mu[np.arange(n), a.astype(np.int64)]
        bad = ~np.isclose(logged, p, rtol=PSCORE_RTOL, atol=PSCORE_ATOL)
        if bad.any():
            i = int(np.argmax(bad))
            raise UsageError(
                f"`pscore_dist` must give the logged action its `pscore`, got {_fmt(logged[i])} "
                f"for `pscore` {_fmt(p[i])}{_where(bad)}"
            )
    return Logged(r, a.astype(np.int64), p, dist, q, mu, None if cluster is None else check_cluster(cluster, n, reward_name))


def check_alpha(alpha: float) -> float:
    """``alpha`` of a (1 - alpha) interval must be in (0, 1)."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.floating) or not 0 < alpha < 1:
        raise UsageError(f"`alpha` must be in (0, 1), got {alpha!r}")
    return float(alpha)


def check_nonnegative(value: object, name: str, meaning: str) -> float:
    """A hyperparameter that must be a number >= 0 (``inf`` allowed)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) or not value >= 0:
        raise UsageError(f"`{name}` must be a number >= 0 ({meaning}), got {value!r}")
    return float(value)
