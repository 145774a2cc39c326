"""Off-policy estimators: the value of a target policy from logged bandit data.

Logged data are n decisions over K actions: ``reward`` (n,), the logged ``action`` (n,) as an index in
[0, K), its logged propensity ``pscore`` (n,) in (0, 1], the target policy's probabilities
``action_dist`` (n, K) (rows sum to 1), and, for the model-based estimators, ``estimated_rewards``
(n, K), a model's E[reward | context, action]. ``pscore_dist`` (n, K), the whole logging distribution,
is optional and only feeds the overlap diagnostics. The value of a policy is its mean reward per
decision on the logged contexts.

Every estimator writes its estimate as the mean of per-decision terms psi_i. The interval is the normal
approximation V +- z_{1 - alpha/2} * sd(psi) / sqrt(n). For the self-normalized estimators (ratios of two
means) psi_i is the linearization of the ratio (the delta method), so sd(psi) / sqrt(n) is its
asymptotic standard error. Several decisions for one unit are not independent (the same customer buys
or not under each of them): given ``cluster``, the unit of each decision, the standard error is the
cluster-robust one, sqrt(G / (G - 1) * sum_g (sum_{i in g} (psi_i - V))^2) / n over the G units (Liang &
Zeger 1986; Cameron & Miller 2015), which equals the one above when every unit has one decision. The standard error treats the contexts as a sample, so for a fixed population
it is slightly conservative; it treats ``estimated_rewards`` as fixed, so it does not include the model's
own error (fit the model on other data, or cross-fit it, for DR's interval to hold).

>>> import numpy as np
>>> reward, action, pscore = np.array([1.0, 0.0, 1.0, 1.0]), np.array([0, 1, 1, 0]), np.full(4, 0.5)
>>> always_first = np.tile([1.0, 0.0], (4, 1))
>>> InverseProbabilityWeighting().estimate_value(reward=reward, action=action, pscore=pscore, action_dist=always_first)
1.0
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import numpy.typing as npt
from scipy import stats

from drivetrain.errors import UsageError
from drivetrain.simulate._checks import Array, Logged, check_alpha, check_logged, check_nonnegative
from drivetrain.simulate._estimate import PolicyEstimate, weight_diagnostics
from drivetrain.stats import standard_error

__all__ = [
    "DirectMethod",
    "DoublyRobust",
    "DoublyRobustWithShrinkage",
    "InverseProbabilityWeighting",
    "OffPolicyEstimator",
    "SelfNormalizedDR",
    "SelfNormalizedIPS",
    "SwitchDR",
]

DM_CAVEAT = "the interval of DM reflects only the sampling of contexts, not the error of `estimated_rewards`"


class OffPolicyEstimator(ABC):
    """Base of the off-policy estimators: the verbs ``estimate_value`` and ``estimate_interval``.

    A subclass sets ``name``, says whether it ``requires_model`` (``estimated_rewards``), and computes the
    per-decision terms psi_i (n,) whose mean is the estimate (see the module docstring).
    """

    name: ClassVar[str]
    requires_model: ClassVar[bool] = False

    def estimate_value(
        self,
        *,
        reward: npt.ArrayLike,
        action: npt.ArrayLike,
        pscore: npt.ArrayLike,
        action_dist: npt.ArrayLike,
        estimated_rewards: npt.ArrayLike | None = None,
        pscore_dist: npt.ArrayLike | None = None,
    ) -> float:
        """Estimated mean reward per decision of the target policy ``action_dist``."""
        data = check_logged(
            reward=reward, action=action, pscore=pscore, action_dist=action_dist,
            estimated_rewards=estimated_rewards, pscore_dist=pscore_dist,
        )  # fmt: skip
        return self._value(data)[0]

    def estimate_interval(
        self,
        *,
        reward: npt.ArrayLike,
        action: npt.ArrayLike,
        pscore: npt.ArrayLike,
        action_dist: npt.ArrayLike,
        estimated_rewards: npt.ArrayLike | None = None,
        pscore_dist: npt.ArrayLike | None = None,
        cluster: npt.ArrayLike | None = None,
        alpha: float = 0.05,
    ) -> PolicyEstimate:
        """The estimate with its (1 - ``alpha``) normal interval and the weight diagnostics; with
        ``cluster`` (the unit of each decision) the interval is cluster-robust."""
        alpha = check_alpha(alpha)
        data = check_logged(
            reward=reward, action=action, pscore=pscore, action_dist=action_dist,
            estimated_rewards=estimated_rewards, pscore_dist=pscore_dist, cluster=cluster,
        )  # fmt: skip
        return self._interval_of(data, alpha=alpha, name=self.name)

    # ------------------------------------------------------------------ shared machinery
    def _interval_of(self, data: Logged, *, alpha: float, name: str) -> PolicyEstimate:
        """``estimate_interval`` on already checked data, reported under ``name``."""
        if data.n < 2:
            raise UsageError(f"`reward` must hold at least 2 decisions for an interval, got {data.n}")
        value, psi = self._value(data)
        se = standard_error(psi, value, data.cluster)
        half = float(stats.norm.ppf(1.0 - alpha / 2.0)) * se
        diag = weight_diagnostics(data)
        return PolicyEstimate(
            estimator=name,
            value=value,
            std_error=se,
            ci_low=value - half,
            ci_high=value + half,
            n=data.n,
            effective_sample_size=diag.effective_sample_size,
            ess_ratio=diag.ess_ratio,
            max_weight=diag.max_weight,
            mean_weight=diag.mean_weight,
            alpha=alpha,
            warnings=diag.warnings + self._caveats(),
            clusters=None if data.cluster is None else int(data.cluster.max()) + 1,
        )

    def _value(self, data: Logged) -> tuple[float, Array]:
        self._check_params()
        if self.requires_model and data.estimated_rewards is None:
            raise UsageError(f"`estimated_rewards` is required by {self.name} (an (n, K) array of model predictions), got None")
        psi = self._terms(data)
        return float(np.mean(psi)), psi

    def _check_params(self) -> None:
        """Validate the hyperparameters (stored unchanged by ``__init__``); none by default."""
        return

    def _caveats(self) -> tuple[str, ...]:
        return ()

    @abstractmethod
    def _terms(self, data: Logged) -> Array:
        """Per-decision terms psi_i (n,): their mean is the estimate, their spread its standard error."""

    def __repr__(self) -> str:
        params = inspect.signature(type(self).__init__).parameters
        shown = ", ".join(f"{p}={getattr(self, p)!r}" for p in params if p != "self")
        return f"{type(self).__name__}({shown})"


class DirectMethod(OffPolicyEstimator):
    """Direct method (DM): the model's value of the target, mean_i sum_a pi(a | x_i) q(x_i, a).

    Low variance, but biased by exactly the model's error on the actions the target plays, and its
    interval cannot show that bias (it reflects only context sampling; a warning says so). Beygelzimer &
    Langford (2009); see Dudík et al. (2011) for its comparison with IPS and DR.
    """

    name = "DM"
    requires_model = True

    def __init__(self) -> None:
        pass

    def _terms(self, data: Logged) -> Array:
        return data.q_target

    def _caveats(self) -> tuple[str, ...]:
        return (DM_CAVEAT,)


class InverseProbabilityWeighting(OffPolicyEstimator):
    """Inverse propensity scoring (IPS): mean_i w_i r_i with w_i = pi(a_i | x_i) / pscore_i.

    Unbiased whenever the logged propensities are right and the logging policy plays every action the
    target plays; its variance grows with the weights. Horvitz & Thompson (1952); for bandits, Precup et
    al. (2000) and Dudík et al. (2011).
    """

    name = "IPS"

    def __init__(self) -> None:
        pass

    def _terms(self, data: Logged) -> Array:
        return data.weight * data.reward


class SelfNormalizedIPS(OffPolicyEstimator):
    """Self-normalized IPS (SNIPS): sum_i w_i r_i / sum_i w_i.

    Dividing by the realized sum of weights instead of n trades a small bias (O(1/n)) for much less
    variance and keeps the estimate within the range of the rewards; it is consistent. Swaminathan &
    Joachims (2015), "The self-normalized estimator for counterfactual learning". The interval linearizes
    the ratio: psi_i = V + w_i (r_i - V) / mean(w).
    """

    name = "SNIPS"

    def __init__(self) -> None:
        pass

    def _terms(self, data: Logged) -> Array:
        w = data.weight
        mean_w = _mean_weight(w, self.name)
        value = float(np.sum(w * data.reward) / np.sum(w))
        return value + w * (data.reward - value) / mean_w


class DoublyRobust(OffPolicyEstimator):
    """Doubly robust (DR): mean_i [ q_pi(x_i) + w_i (r_i - q(x_i, a_i)) ], q_pi(x) = sum_a pi(a | x) q(x, a).

    The model's value corrected by importance-weighted residuals: unbiased when the propensities are
    right, whatever the (fixed) model; its variance is small when the model is good. Dudík, Langford & Li
    (2011), "Doubly robust policy evaluation and learning".
    """

    name = "DR"
    requires_model = True

    def __init__(self) -> None:
        pass

    def _shrink(self, w: Array) -> Array:
        """The weight that multiplies the residual; plain DR keeps w."""
        return w

    def _terms(self, data: Logged) -> Array:
        return data.q_target + self._shrink(data.weight) * (data.reward - data.q_logged)


class SelfNormalizedDR(OffPolicyEstimator):
    """Self-normalized DR (SNDR): mean_i q_pi(x_i) + sum_i w_i (r_i - q(x_i, a_i)) / sum_i w_i.

    DR whose correction term is self-normalized as in SNIPS (Swaminathan & Joachims 2015), on DR of
    Dudík et al. (2011): consistent, and steadier than DR when weights are large. With c the normalized
    correction, the delta method gives psi_i = q_pi(x_i) + c + w_i (r_i - q(x_i, a_i) - c) / mean(w).
    """

    name = "SNDR"
    requires_model = True

    def __init__(self) -> None:
        pass

    def _terms(self, data: Logged) -> Array:
        w = data.weight
        mean_w = _mean_weight(w, self.name)
        residual = data.reward - data.q_logged
        c = float(np.sum(w * residual) / np.sum(w))
        return data.q_target + c + w * (residual - c) / mean_w


class SwitchDR(DoublyRobust):
    """Switch-DR: DR where the weight is at most ``tau``, the model alone where it is larger.

    mean_i [ q_pi(x_i) + w_i [w_i <= tau] (r_i - q(x_i, a_i)) ]. Dropping the correction of rare, heavily
    weighted decisions caps the variance at the price of the model's bias on them; ``tau=inf`` is DR and
    ``tau=0`` is DM. Wang, Agarwal & Dudík (2017), "Optimal and adaptive off-policy evaluation in
    contextual bandits".

    ``tau``: the largest importance weight whose decision keeps its correction term (>= 0). The default,
    20, drops only decisions where the target is over 20 times likelier than the logging policy to play
    the logged action; tune it to the weights at hand (``PolicyEstimate.max_weight``).
    """

    name = "SwitchDR"

    def __init__(self, *, tau: float = 20.0) -> None:
        self.tau = tau

    def _check_params(self) -> None:
        check_nonnegative(self.tau, "tau", "the largest importance weight kept; inf gives DR")

    def _shrink(self, w: Array) -> Array:
        return np.where(w <= self.tau, w, 0.0)


class DoublyRobustWithShrinkage(DoublyRobust):
    """DR with optimistic shrinkage (DRos): DR with each weight shrunk to lambda w / (w^2 + lambda).

    Shrinkage towards zero bounds the correction's variance; the shrunk weight is at most
    sqrt(lambda) / 2 and halves a weight of sqrt(lambda). ``lambda_=inf`` is DR, ``lambda_=0`` is DM.
    Su, Dimakopoulou, Krishnamurthy & Dudík (2020), "Doubly robust off-policy evaluation with shrinkage".

    ``lambda_``: the shrinkage scale (>= 0), in squared weight units. The default, 400, halves a weight
    of 20 and shrinks a weight of 10 by a fifth.
    """

    name = "DRos"

    def __init__(self, *, lambda_: float = 400.0) -> None:
        self.lambda_ = lambda_

    def _check_params(self) -> None:
        check_nonnegative(self.lambda_, "lambda_", "the shrinkage scale; inf gives DR, 0 gives DM")

    def _shrink(self, w: Array) -> Array:
        lam = float(self.lambda_)
        if math.isinf(lam):
            return w
        if lam == 0.0:
            return np.zeros_like(w)
        return lam * w / (np.square(w) + lam)


def _mean_weight(w: Array, name: str) -> float:
    mean_w = float(np.mean(w))
    if mean_w <= 0:
        raise UsageError(
            f"`action_dist` must give positive probability to some logged action for {name}, got 0 for all "
            f"{w.size} decisions (no overlap between the target and the logging policy)"
        )
    return mean_w
