"""The estimate of a policy's value with its interval and the diagnostics of its importance weights."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from drivetrain.errors import UsageError
from drivetrain.simulate._checks import Logged

__all__ = ["PolicyEstimate", "WeightDiagnostics", "weight_diagnostics"]

#: Warn when the effective sample size falls below this share of n.
MIN_ESS_RATIO = 0.01
#: Warn when the mean importance weight is this many standard errors away from 1.
MEAN_WEIGHT_Z = 4.0


@dataclass(frozen=True)
class PolicyEstimate:
    """Estimated value of a target policy (mean reward per decision) with a (1 - alpha) interval.

    Diagnostics are those of the importance weights w_i = pi(a_i | x_i) / pscore_i, the same for every
    estimator on the same data: ``effective_sample_size`` is (sum w)^2 / sum w^2 (n when all weights are
    equal; a handful when a few decisions carry the estimate), ``ess_ratio`` is that over ``n``,
    ``max_weight`` the largest weight and ``mean_weight`` their mean (1 in expectation when the
    propensities are right and the target only plays actions the logging policy plays). ``warnings``
    says in words what in these numbers should make a reader doubt the estimate. ``clusters`` is the
    number of units when the interval treats each unit's decisions as dependent (cluster-robust).
    """

    estimator: str
    value: float
    std_error: float
    ci_low: float
    ci_high: float
    n: int
    effective_sample_size: float
    ess_ratio: float
    max_weight: float
    mean_weight: float
    alpha: float = 0.05
    warnings: tuple[str, ...] = ()
    #: Units the cluster-robust interval was computed over; None when decisions were taken as independent.
    clusters: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise UsageError(f"`alpha` must be in (0, 1), got {self.alpha!r}")
        if self.n < 1:
            raise UsageError(f"`n` must be >= 1, got {self.n!r}")
        if not self.std_error >= 0:
            raise UsageError(f"`std_error` must be >= 0, got {self.std_error!r}")
        if not self.ci_low <= self.value <= self.ci_high:
            raise UsageError(
                f"`value` must lie in [ci_low, ci_high], got {self.value!r} outside [{self.ci_low!r}, {self.ci_high!r}]"
            )

    def covers(self, value: float) -> bool:
        """Whether ``value`` lies in the interval [ci_low, ci_high]."""
        return self.ci_low <= value <= self.ci_high


@dataclass(frozen=True)
class WeightDiagnostics:
    effective_sample_size: float
    ess_ratio: float
    max_weight: float
    mean_weight: float
    warnings: tuple[str, ...]


def weight_diagnostics(data: Logged) -> WeightDiagnostics:
    """ESS, largest and mean weight of ``data``, and warnings about overlap between the two policies."""
    w = data.weight
    n = data.n
    total, squares = float(w.sum()), float(np.square(w).sum())
    ess = total**2 / squares if squares > 0 else 0.0
    mean = total / n
    warnings: list[str] = []
    if ess < MIN_ESS_RATIO * n:
        warnings.append(
            f"effective sample size {ess:.1f} is {100 * ess / n:.2f}% of n={n} (below {100 * MIN_ESS_RATIO:g}%): "
            "a few decisions carry the estimate"
        )
    if n > 1:
        se = float(np.std(w, ddof=1)) / math.sqrt(n)
        if abs(mean - 1.0) > max(MEAN_WEIGHT_Z * se, 1e-3):
            warnings.append(
                f"mean importance weight is {mean:.3f}, expected 1 when `pscore` is right and the target plays only "
                "actions the logging policy plays: check the propensities and the overlap"
            )
    if data.pscore_dist is not None:
        unseen = np.where(data.pscore_dist <= 0, data.action_dist, 0.0).sum(axis=1)
        rows = int(np.count_nonzero(unseen > 0))
        if rows:
            warnings.append(
                f"the target policy puts {100 * float(unseen.mean()):.2f}% of its probability mass on actions the "
                f"logging policy never plays (`pscore_dist` == 0 in {rows} of {n} rows): importance weighting "
                "cannot see that part, and model-based estimators rely on the model alone there"
            )
    return WeightDiagnostics(ess, ess / n, float(w.max()), mean, tuple(warnings))
