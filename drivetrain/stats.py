"""Doubly robust estimation with a cluster-robust standard error, shared by the Modeler's effects and the
Simulator's estimators.

It sits below both (it imports neither), because the layers run ``model <- simulate``: the model's
effects cannot import the Simulator, and the one estimator must serve both.

Doubly robust pseudo-outcomes (Robins, Rotnitzky & Zhao 1994; Dudík, Langford & Li 2011) of n logged
decisions over K actions are, for each action k,

    gamma_ik = q(x_i, k) + [a_i = k] (r_i - q(x_i, a_i)) / pscore_i,

unbiased for action k's mean reward when the logged propensities are right, whatever the model q. Their
mean over decisions is the DR value of always playing k; a difference of two columns is the DR effect of
one action against another. Several decisions of one unit are not independent, so the standard error of
a mean of per-decision terms psi_i is cluster-robust by unit (Liang & Zeger 1986; Cameron & Miller 2015):
sqrt(G / (G - 1) * sum_g (sum_{i in g} (psi_i - V))^2) / n over the G units, which equals
sd(psi) / sqrt(n) when every unit has one decision.

>>> reward, action, pscore = np.array([1.0, 0.0, 1.0, 0.0]), np.array([0, 1, 1, 0]), np.full(4, 0.5)
>>> gamma = pseudo_outcomes(reward, action, pscore, np.full((4, 2), 0.5))
>>> gamma.mean(axis=0)
array([0.5, 0.5])
>>> effect = gamma[:, 1] - gamma[:, 0]  # the DR effect of action 1 against action 0: its mean, 0.0
>>> round(standard_error(effect, 0.0, None), 4), standard_error(effect, 0.0, cluster_codes(["u1", "u1", "u2", "u2"], 4))
(0.5774, 1.0)
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pandas as pd

from drivetrain.errors import UsageError

__all__ = ["cluster_codes", "holm_adjusted", "pseudo_outcomes", "standard_error"]


def pseudo_outcomes(reward: npt.ArrayLike, action: npt.ArrayLike, pscore: npt.ArrayLike, estimated_rewards: npt.ArrayLike) -> np.ndarray:
    """The doubly robust pseudo-outcomes gamma (n, K) of ``reward`` (n,) under the logged ``action`` (n,)
    with propensity ``pscore`` (n,), from the model's ``estimated_rewards`` (n, K); see the module
    docstring."""
    gamma = np.array(estimated_rewards, dtype=np.float64)
    a = np.asarray(action, dtype=np.int64)
    rows = np.arange(a.size)
    gamma[rows, a] += (np.asarray(reward, dtype=np.float64) - gamma[rows, a]) / np.asarray(pscore, dtype=np.float64)
    return gamma


def standard_error(psi: npt.NDArray[np.float64], value: float, cluster: npt.NDArray[np.int64] | None) -> float:
    """Standard error of ``value`` = mean(psi) (n,): sd(psi) / sqrt(n), or cluster-robust over the codes
    ``cluster`` (n,) of :func:`cluster_codes` (see the module docstring)."""
    n = psi.size
    if cluster is None:
        return float(np.std(psi, ddof=1)) / math.sqrt(n)
    sums = np.bincount(cluster, weights=psi - value)
    g = sums.size
    if g < 2:
        raise UsageError(f"`cluster` must hold at least 2 units for an interval, got {g}")
    return math.sqrt(g / (g - 1) * float(np.sum(np.square(sums)))) / n


def cluster_codes(cluster: npt.ArrayLike, n: int, source: str = "reward") -> npt.NDArray[np.int64]:
    """The cluster ids (n,) of n decisions (any hashable ids, no missing values) as codes in [0, G), in
    order of first appearance."""
    ids = np.asarray(cluster, dtype=object) if not isinstance(cluster, np.ndarray) else cluster
    if ids.ndim != 1:
        raise UsageError(f"`cluster` must be 1-D with shape (n,), got shape {ids.shape}")
    if ids.shape[0] != n:
        raise UsageError(f"`cluster` must have one entry per decision (n={n} from `{source}`), got {ids.shape[0]}")
    codes, _ = pd.factorize(ids, use_na_sentinel=True)
    bad = np.flatnonzero(codes < 0)
    if bad.size:
        more = f" (and {bad.size - 1} more rows)" if bad.size > 1 else ""
        raise UsageError(f"`cluster` must name a unit for every decision, got a missing value at row {int(bad[0])}{more}")
    return codes.astype(np.int64)


def holm_adjusted(p: npt.ArrayLike) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values of a family of tests: rejecting those below alpha keeps the
    chance of any false rejection at most alpha; NaN stays NaN (not a test).

    >>> holm_adjusted([0.01, 0.03, 0.02, np.nan])
    array([0.03, 0.04, 0.04,  nan])
    """
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out
