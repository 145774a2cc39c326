"""Exact properties of the estimators: known values, reductions between them, and invariances."""

from __future__ import annotations

import doctest
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import drivetrain.simulate._evaluate
import drivetrain.simulate._ope
from drivetrain.simulate import (
    DirectMethod,
    DoublyRobust,
    DoublyRobustWithShrinkage,
    InverseProbabilityWeighting,
    OffPolicyEstimator,
    PolicyEstimate,
    SelfNormalizedDR,
    SelfNormalizedIPS,
    SwitchDR,
)
from tests.simulate.conftest import Logged

ALL: list[OffPolicyEstimator] = [
    DirectMethod(),
    InverseProbabilityWeighting(),
    SelfNormalizedIPS(),
    DoublyRobust(),
    SelfNormalizedDR(),
    SwitchDR(),
    DoublyRobustWithShrinkage(),
]


def random_log(seed: int, n: int, k: int) -> dict[str, Any]:
    """Logged data from a random (stochastic) logging policy; the logging distribution is ``pscore_dist``."""
    rng = np.random.default_rng(seed)
    mu = rng.dirichlet(np.ones(k), size=n) * 0.9 + 0.1 / k
    action = (mu.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    return {
        "reward": rng.normal(3.0, 2.0, n).round(2),
        "action": action,
        "pscore": mu[np.arange(n), action],
        "action_dist": rng.dirichlet(np.full(k, 0.5), size=n),
        "estimated_rewards": rng.normal(3.0, 1.0, (n, k)),
        "pscore_dist": mu,
    }


def no_overlap(est: OffPolicyEstimator, log: dict[str, Any]) -> bool:
    """Self-normalized estimators are undefined when the target never plays a logged action."""
    weights = log["action_dist"][np.arange(log["action"].size), log["action"]]
    return isinstance(est, SelfNormalizedIPS | SelfNormalizedDR) and not weights.any()


logs = st.builds(random_log, st.integers(0, 2**32 - 1), st.integers(2, 40), st.integers(1, 5))


def test_dm_with_the_true_model_equals_the_true_value(logged: Logged) -> None:
    for target in logged.targets:
        value = DirectMethod().estimate_value(**logged.kwargs(target), estimated_rewards=logged.truth.objective)
        assert value == pytest.approx(logged.true_value(target), rel=1e-12)


def test_ips_of_the_logging_policy_itself_is_the_plain_mean_reward(logged: Logged) -> None:
    kwargs = {**logged.kwargs("oracle"), "action_dist": logged.pscore_dist}
    for est in (InverseProbabilityWeighting(), SelfNormalizedIPS()):
        result = est.estimate_interval(**kwargs)
        assert result.value == pytest.approx(float(np.mean(logged.reward)), rel=1e-12)
        assert result.std_error == pytest.approx(float(np.std(logged.reward, ddof=1) / np.sqrt(logged.reward.size)), rel=1e-9)
        assert result.effective_sample_size == pytest.approx(logged.reward.size)


@given(logs)
def test_dr_with_a_zero_model_is_ips_and_sndr_is_snips(log: dict[str, Any]) -> None:
    zero = {**log, "estimated_rewards": np.zeros_like(log["estimated_rewards"])}
    for model_based, plain in ((DoublyRobust(), InverseProbabilityWeighting()), (SelfNormalizedDR(), SelfNormalizedIPS())):
        if no_overlap(plain, log):
            continue
        a, b = model_based.estimate_interval(**zero), plain.estimate_interval(**zero)
        assert a.value == pytest.approx(b.value, abs=1e-9)
        assert a.std_error == pytest.approx(b.std_error, abs=1e-9)


@given(logs)
def test_switch_and_shrinkage_reach_dr_and_dm_at_the_ends(log: dict[str, Any]) -> None:
    dr = DoublyRobust().estimate_value(**log)
    dm = DirectMethod().estimate_value(**log)
    assert SwitchDR(tau=np.inf).estimate_value(**log) == pytest.approx(dr, abs=1e-9)
    assert DoublyRobustWithShrinkage(lambda_=np.inf).estimate_value(**log) == pytest.approx(dr, abs=1e-9)
    assert SwitchDR(tau=0.0).estimate_value(**log) == pytest.approx(dm, abs=1e-9)
    assert DoublyRobustWithShrinkage(lambda_=0.0).estimate_value(**log) == pytest.approx(dm, abs=1e-9)


def test_switch_drops_exactly_the_corrections_above_tau() -> None:
    reward, action, pscore = np.array([1.0, 2.0, 3.0]), np.array([0, 0, 0]), np.array([0.5, 0.1, 0.25])
    target, model = np.tile([1.0, 0.0], (3, 1)), np.zeros((3, 2))
    # weights 2, 10, 4: with tau=4 the second decision keeps only its (zero) model value
    value = SwitchDR(tau=4.0).estimate_value(
        reward=reward, action=action, pscore=pscore, action_dist=target, estimated_rewards=model
    )
    assert value == pytest.approx((2 * 1.0 + 0.0 + 4 * 3.0) / 3)
    shrunk = DoublyRobustWithShrinkage(lambda_=16.0).estimate_value(
        reward=reward, action=action, pscore=pscore, action_dist=target, estimated_rewards=model
    )
    assert shrunk == pytest.approx(np.mean([16 * w / (w * w + 16) * r for w, r in ((2, 1.0), (10, 2.0), (4, 3.0))]))


@given(logs, st.floats(-50, 50))
def test_shifting_rewards_and_model_shifts_the_estimate(log: dict[str, Any], c: float) -> None:
    shifted = {**log, "reward": log["reward"] + c, "estimated_rewards": log["estimated_rewards"] + c}
    for est in (SelfNormalizedIPS(), DoublyRobust(), SelfNormalizedDR(), DirectMethod(), SwitchDR(tau=3.0)):
        if no_overlap(est, log):
            continue
        a, b = est.estimate_interval(**log), est.estimate_interval(**shifted)
        assert b.value == pytest.approx(a.value + c, abs=1e-7)
        assert b.std_error == pytest.approx(a.std_error, abs=1e-7)


@given(logs, st.sampled_from([0.01, 0.05, 0.1, 0.32]))
def test_interval_is_the_normal_interval_of_the_standard_error(log: dict[str, Any], alpha: float) -> None:
    z = stats.norm.ppf(1 - alpha / 2)
    for est in ALL:
        if no_overlap(est, log):
            continue
        result = est.estimate_interval(**log, alpha=alpha)
        assert result.alpha == alpha and result.n == log["reward"].size and result.estimator == est.name
        assert result.ci_low == pytest.approx(result.value - z * result.std_error, abs=1e-9)
        assert result.ci_high == pytest.approx(result.value + z * result.std_error, abs=1e-9)
        assert result.value == est.estimate_value(**log)


def test_ips_and_dr_per_decision_terms_by_hand() -> None:
    reward, action, pscore = np.array([4.0, 0.0, 2.0, 1.0]), np.array([1, 0, 1, 2]), np.array([0.5, 0.25, 0.5, 0.2])
    target = np.array([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.4, 0.4], [0.0, 0.0, 1.0]])
    model = np.array([[1.0, 3.0, 0.0], [2.0, 2.0, 2.0], [0.0, 1.0, 5.0], [1.0, 1.0, 2.0]])
    data: dict[str, Any] = {
        "reward": reward,
        "action": action,
        "pscore": pscore,
        "action_dist": target,
        "estimated_rewards": model,
    }
    w = np.array([2.0, 2.0, 0.8, 5.0])
    ips = w * reward
    dr = np.array([3.0, 2.0, 2.4, 2.0]) + w * (reward - np.array([3.0, 2.0, 1.0, 2.0]))
    assert InverseProbabilityWeighting().estimate_value(**data) == pytest.approx(ips.mean())
    assert DoublyRobust().estimate_value(**data) == pytest.approx(dr.mean())
    result = DoublyRobust().estimate_interval(**data)
    assert result.std_error == pytest.approx(dr.std(ddof=1) / 2)
    snips = SelfNormalizedIPS().estimate_interval(**data)
    v = (w * reward).sum() / w.sum()
    assert snips.value == pytest.approx(v)
    # the delta method: the ratio linearized around the estimate
    assert snips.std_error == pytest.approx((w * (reward - v) / w.mean()).std(ddof=1) / 2)


def test_self_normalized_estimates_stay_within_the_range_of_the_rewards() -> None:
    log = random_log(7, 30, 3)
    del log["pscore_dist"]
    log["pscore"] = log["pscore"] / 10  # a wrong scale of propensities leaves SNIPS unchanged, moves IPS
    snips = SelfNormalizedIPS().estimate_value(**log)
    assert log["reward"].min() <= snips <= log["reward"].max()
    assert snips == pytest.approx(SelfNormalizedIPS().estimate_value(**{**log, "pscore": log["pscore"] * 10}))


def test_hyperparameters_are_stored_unchanged_and_shown_in_repr() -> None:
    est = SwitchDR(tau=-1)  # checked when used, not when built
    assert est.tau == -1
    assert repr(SwitchDR(tau=3.0)) == "SwitchDR(tau=3.0)"
    assert repr(DoublyRobustWithShrinkage(lambda_=np.inf)) == "DoublyRobustWithShrinkage(lambda_=inf)"
    assert repr(DirectMethod()) == "DirectMethod()"
    with pytest.raises(TypeError):
        SwitchDR(3.0)  # type: ignore[call-arg]


def test_policy_estimate_is_frozen_and_checked() -> None:
    est = InverseProbabilityWeighting().estimate_interval(**random_log(1, 10, 2))
    assert isinstance(est, PolicyEstimate) and est.covers(est.value)
    with pytest.raises(AttributeError):
        est.value = 0.0  # type: ignore[misc]


@pytest.mark.parametrize("module", [drivetrain.simulate._ope, drivetrain.simulate._evaluate])
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module, verbose=False)  # type: ignore[arg-type]
    assert result.failed == 0 and result.attempted > 0
