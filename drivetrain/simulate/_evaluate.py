"""Run several estimators on one policy, or one estimator on several metrics of one policy.

A what-if scenario is a target policy evaluated on logged data for the objective and for every guardrail
and budget formula: each of these is a per-decision reward, so each gets its own estimate and interval
from the same logged actions and propensities (:func:`evaluate_metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy.typing as npt

from drivetrain.errors import UsageError
from drivetrain.simulate._checks import check_alpha, check_cluster, check_logged
from drivetrain.simulate._estimate import PolicyEstimate
from drivetrain.simulate._ope import (
    DirectMethod,
    DoublyRobust,
    DoublyRobustWithShrinkage,
    InverseProbabilityWeighting,
    OffPolicyEstimator,
    SelfNormalizedDR,
    SelfNormalizedIPS,
    SwitchDR,
)

__all__ = ["default_estimators", "evaluate_metrics", "evaluate_policy"]

Estimators = Mapping[str, OffPolicyEstimator] | Sequence[OffPolicyEstimator]


def default_estimators(*, with_model: bool) -> dict[str, OffPolicyEstimator]:
    """Every estimator with default hyperparameters, by name; the model-based ones only ``with_model``."""
    chosen: list[OffPolicyEstimator] = [InverseProbabilityWeighting(), SelfNormalizedIPS()]
    if with_model:
        chosen = [DirectMethod(), *chosen, DoublyRobust(), SelfNormalizedDR(), SwitchDR(), DoublyRobustWithShrinkage()]
    return {e.name: e for e in chosen}


def _describe(obj: object) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__name__} (create one: {obj.__name__}())"
    return type(obj).__name__


def _named(estimators: Estimators) -> dict[str, OffPolicyEstimator]:
    if isinstance(estimators, Mapping):
        pairs = list(estimators.items())
    elif isinstance(estimators, Sequence) and not isinstance(estimators, str):
        pairs = [(getattr(e, "name", repr(e)), e) for e in estimators]
        names = [name for name, _ in pairs]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise UsageError(
                f"`estimators` must have distinct names, got {twice} more than once: pass a mapping name -> estimator"
            )
    else:
        raise UsageError(f"`estimators` must be a sequence or a mapping of estimators, got {type(estimators).__name__}")
    if not pairs:
        raise UsageError("`estimators` must hold at least one estimator, got none")
    for name, est in pairs:
        if not isinstance(est, OffPolicyEstimator):
            raise UsageError(f"`estimators[{name!r}]` must be an OffPolicyEstimator, got {_describe(est)}")
    return dict(pairs)


def evaluate_policy(
    *,
    reward: npt.ArrayLike,
    action: npt.ArrayLike,
    pscore: npt.ArrayLike,
    action_dist: npt.ArrayLike,
    estimated_rewards: npt.ArrayLike | None = None,
    pscore_dist: npt.ArrayLike | None = None,
    cluster: npt.ArrayLike | None = None,
    estimators: Estimators | None = None,
    alpha: float = 0.05,
) -> dict[str, PolicyEstimate]:
    """The value of the target ``action_dist`` by several estimators, each with its interval.

    ``estimators`` defaults to every applicable one (:func:`default_estimators`): IPS and SNIPS always, DM,
    DR, SNDR, SwitchDR and DRos when ``estimated_rewards`` (n, K) is given. A sequence is keyed by each
    estimator's ``name``; a mapping by its keys. Shapes as in :class:`OffPolicyEstimator`. ``cluster``
    (n,), the unit of each decision, makes the intervals cluster-robust.

    >>> import numpy as np
    >>> out = evaluate_policy(reward=np.array([1.0, 0.0, 1.0]), action=np.array([0, 1, 0]), pscore=np.full(3, 0.5),
    ...                       action_dist=np.full((3, 2), 0.5))
    >>> sorted(out), round(out["IPS"].value, 4)
    (['IPS', 'SNIPS'], 0.6667)
    """
    alpha = check_alpha(alpha)
    data = check_logged(
        reward=reward, action=action, pscore=pscore, action_dist=action_dist,
        estimated_rewards=estimated_rewards, pscore_dist=pscore_dist, cluster=cluster,
    )  # fmt: skip
    chosen = default_estimators(with_model=estimated_rewards is not None) if estimators is None else _named(estimators)
    return {name: est._interval_of(data, alpha=alpha, name=name) for name, est in chosen.items()}


def evaluate_metrics(
    rewards: Mapping[str, npt.ArrayLike],
    *,
    action: npt.ArrayLike,
    pscore: npt.ArrayLike,
    action_dist: npt.ArrayLike,
    estimated_rewards: Mapping[str, npt.ArrayLike] | None = None,
    pscore_dist: npt.ArrayLike | None = None,
    cluster: npt.ArrayLike | None = None,
    estimator: OffPolicyEstimator | None = None,
    alpha: float = 0.05,
) -> dict[str, PolicyEstimate]:
    """One estimate with interval per metric of the target ``action_dist``, by one estimator.

    ``rewards`` maps each metric (the objective, each guardrail formula, each budget formula) to its
    per-decision values (n,); ``estimated_rewards`` maps the same names to model predictions (n, K).
    ``estimator`` defaults to DR when the models are given and to SNIPS otherwise; ``cluster`` as in
    :func:`evaluate_policy`.

    >>> import numpy as np
    >>> logged = dict(action=np.array([0, 1, 0, 1]), pscore=np.full(4, 0.5), action_dist=np.tile([1.0, 0.0], (4, 1)))
    >>> out = evaluate_metrics({"profit": np.array([3.0, 1.0, 5.0, 1.0]), "refund": np.array([0.0, 1.0, 1.0, 0.0])}, **logged)
    >>> {name: est.value for name, est in out.items()}
    {'profit': 4.0, 'refund': 0.5}
    """
    alpha = check_alpha(alpha)
    if not isinstance(rewards, Mapping) or not rewards:
        raise UsageError(f"`rewards` must map at least one metric name to its per-decision values, got {rewards!r:.80}")
    if estimated_rewards is not None:
        if not isinstance(estimated_rewards, Mapping):
            raise UsageError(
                f"`estimated_rewards` must map metric names to (n, K) predictions, got {type(estimated_rewards).__name__}"
            )
        extra = sorted(set(estimated_rewards) - set(rewards))
        if extra:
            raise UsageError(f"`estimated_rewards` must only name metrics of `rewards` {sorted(rewards)}, got {extra}")
    if estimator is None:
        estimator = DoublyRobust() if estimated_rewards is not None else SelfNormalizedIPS()
    elif not isinstance(estimator, OffPolicyEstimator):
        raise UsageError(f"`estimator` must be an OffPolicyEstimator, got {_describe(estimator)}")
    if estimator.requires_model:
        missing = sorted(set(rewards) - set(estimated_rewards or {}))
        if missing:
            raise UsageError(
                f"`estimated_rewards` must have an entry for every metric ({estimator.name} needs a model), missing {missing}"
            )
    out: dict[str, PolicyEstimate] = {}
    codes = None
    for metric, values in rewards.items():
        data = check_logged(
            reward=values,
            action=action,
            pscore=pscore,
            action_dist=action_dist,
            estimated_rewards=None if estimated_rewards is None else estimated_rewards.get(metric),
            pscore_dist=pscore_dist,
            reward_name=f"rewards[{metric!r}]",
            model_name=f"estimated_rewards[{metric!r}]",
        )
        if cluster is not None:  # coded once: the decisions are the same for every metric
            codes = check_cluster(cluster, data.n, f"rewards[{metric!r}]") if codes is None else codes
            data = replace(data, cluster=codes)
        out[metric] = estimator._interval_of(data, alpha=alpha, name=estimator.name)
    return out
