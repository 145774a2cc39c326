"""Cluster-robust intervals: several decisions for one unit are not independent."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from drivetrain.errors import UsageError
from drivetrain.simulate import (
    DoublyRobust,
    InverseProbabilityWeighting,
    SelfNormalizedIPS,
    evaluate_metrics,
    evaluate_policy,
)
from tests.simulate.test_estimators import ALL, random_log


def _repeat(log: dict[str, Any], k: int) -> dict[str, Any]:
    return {name: np.repeat(value, k, axis=0) for name, value in log.items()}


@pytest.mark.parametrize("est", ALL, ids=lambda e: e.name)
def test_one_decision_per_unit_gives_the_independent_interval(est) -> None:  # type: ignore[no-untyped-def]
    log = random_log(3, 400, 4)
    plain = est.estimate_interval(**log)
    units = est.estimate_interval(**log, cluster=[f"u{i}" for i in range(400)])
    assert units.std_error == pytest.approx(plain.std_error, rel=1e-12)
    assert (units.clusters, plain.clusters) == (400, None)


@pytest.mark.parametrize("est", ALL, ids=lambda e: e.name)
def test_a_unit_logged_three_times_counts_once(est) -> None:  # type: ignore[no-untyped-def]
    """Closed form: each decision repeated three times for its own unit holds no more information than
    the original log, so the cluster-robust standard error is the original's exactly; taken as
    independent, the copies would shrink it by sqrt(3)."""
    log = random_log(4, 300, 3)
    original = est.estimate_interval(**log)
    copies = _repeat(log, 3)
    units = np.repeat(np.arange(300), 3)
    clustered = est.estimate_interval(**copies, cluster=units)
    naive = est.estimate_interval(**copies)
    assert clustered.value == pytest.approx(original.value, rel=1e-12)
    assert clustered.std_error == pytest.approx(original.std_error, rel=1e-9)
    assert naive.std_error == pytest.approx(original.std_error / np.sqrt(3), rel=0.01)


def test_cluster_robust_intervals_cover_when_a_units_decisions_share_its_taste() -> None:
    """Monte Carlo against a known truth: 300 units with 10 decisions each, a unit effect of sd 2 on
    every reward. The cluster-robust 95% interval of IPS and DR covers the target's true value in 92% to
    98% of 400 replications; the interval that takes decisions as independent covers far less (about
    2/3 in theory: the design effect here is about 4)."""
    rng = np.random.default_rng(20261202)
    units, per_unit, k, reps = 300, 10, 2, 400
    truth = 1.0 + 0.5  # target: always action 1, whose mean reward is 1.5
    cover = {"IPS": [0, 0], "DR": [0, 0]}
    cluster = np.repeat(np.arange(units), per_unit)
    target = np.tile([0.0, 1.0], (units * per_unit, 1))
    for _ in range(reps):
        taste = np.repeat(rng.normal(0.0, 2.0, units), per_unit)
        action = rng.integers(0, k, units * per_unit)
        reward = 1.0 + 0.5 * action + taste + rng.normal(0.0, 1.0, units * per_unit)
        model = np.column_stack([np.full(reward.size, 1.0), np.full(reward.size, 1.5)])
        log = {"reward": reward, "action": action, "pscore": np.full(reward.size, 0.5), "action_dist": target}
        for name, est, extra in (("IPS", InverseProbabilityWeighting(), {}), ("DR", DoublyRobust(), {"estimated_rewards": model})):
            cover[name][0] += est.estimate_interval(**log, **extra, cluster=cluster).covers(truth)
            cover[name][1] += est.estimate_interval(**log, **extra).covers(truth)
    for name, (robust, naive) in cover.items():
        assert 0.92 <= robust / reps <= 0.98, (name, robust / reps)
        assert naive / reps < 0.80, (name, naive / reps)


def test_evaluate_policy_and_metrics_take_the_units() -> None:
    log = random_log(5, 200, 3)
    copies = _repeat(log, 2)
    units = np.repeat([f"u{i}" for i in range(200)], 2)
    by_policy = evaluate_policy(**copies, cluster=units)
    assert by_policy["SNIPS"].std_error == pytest.approx(SelfNormalizedIPS().estimate_interval(**log).std_error, rel=1e-9)
    assert {e.clusters for e in by_policy.values()} == {200}
    metrics = evaluate_metrics({"a": copies["reward"], "b": 2 * copies["reward"]}, action=copies["action"], pscore=copies["pscore"],
                               action_dist=copies["action_dist"], cluster=units)
    assert metrics["b"].std_error == pytest.approx(2 * metrics["a"].std_error, rel=1e-12)
    assert metrics["a"].std_error == pytest.approx(SelfNormalizedIPS().estimate_interval(**{**log, "estimated_rewards": None}).std_error, rel=1e-9)


def test_bad_clusters_are_named() -> None:
    log = random_log(6, 50, 2)
    est = InverseProbabilityWeighting()
    with pytest.raises(UsageError, match=r"`cluster` must have one entry per decision \(n=50 from `reward`\), got 49"):
        est.estimate_interval(**log, cluster=np.arange(49))
    with pytest.raises(UsageError, match="`cluster` must name a unit for every decision, got a missing value at row 7"):
        est.estimate_interval(**log, cluster=[None if i == 7 else f"u{i}" for i in range(50)])
    with pytest.raises(UsageError, match="`cluster` must hold at least 2 units for an interval, got 1"):
        est.estimate_interval(**log, cluster=np.zeros(50))
    with pytest.raises(UsageError, match=r"`cluster` must be 1-D"):
        est.estimate_interval(**log, cluster=np.zeros((50, 2)))
