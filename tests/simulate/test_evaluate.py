"""evaluate_policy (several estimators, one policy) and evaluate_metrics (one estimator, several metrics)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from drivetrain.simulate import (
    DirectMethod,
    DoublyRobust,
    InverseProbabilityWeighting,
    SelfNormalizedIPS,
    SwitchDR,
    default_estimators,
    evaluate_metrics,
    evaluate_policy,
)
from tests.simulate.conftest import Logged

MODEL_FREE = ["IPS", "SNIPS"]
ALL = ["DM", "IPS", "SNIPS", "DR", "SNDR", "SwitchDR", "DRos"]


def test_evaluate_policy_runs_every_applicable_estimator(logged: Logged) -> None:
    kwargs = logged.kwargs("oracle-mix")
    assert list(evaluate_policy(**kwargs)) == MODEL_FREE
    out = evaluate_policy(**kwargs, estimated_rewards=logged.model, pscore_dist=logged.pscore_dist, alpha=0.1)
    assert list(out) == ALL == list(default_estimators(with_model=True))
    for name, est in default_estimators(with_model=True).items():
        alone = est.estimate_interval(**kwargs, estimated_rewards=logged.model, pscore_dist=logged.pscore_dist, alpha=0.1)
        assert out[name] == alone
        assert out[name].estimator == name and out[name].alpha == 0.1


def test_evaluate_policy_takes_a_list_or_a_mapping_of_estimators(logged: Logged) -> None:
    kwargs = {**logged.kwargs("oracle"), "estimated_rewards": logged.model}
    listed = evaluate_policy(**kwargs, estimators=[DoublyRobust(), InverseProbabilityWeighting()])
    assert list(listed) == ["DR", "IPS"]
    mapped = evaluate_policy(**kwargs, estimators={"switch at 5": SwitchDR(tau=5.0), "switch at 50": SwitchDR(tau=50.0)})
    assert mapped["switch at 5"].estimator == "switch at 5"
    assert mapped["switch at 50"].value == pytest.approx(listed["DR"].value)  # every weight here is below 50
    assert mapped["switch at 5"].value != pytest.approx(listed["DR"].value)


def test_evaluate_metrics_gives_every_metric_of_a_scenario_its_own_estimate(logged: Logged) -> None:
    target = logged.targets["oracle-mix"]
    logged_kw: dict[str, Any] = {"action": logged.action, "pscore": logged.pscore, "action_dist": target}
    names = ["objective", "refund_rate", "complaint_rate", "promotion_budget"]
    assert list(logged.metrics) == names

    # without models: SNIPS, metric by metric
    plain = evaluate_metrics(logged.metrics, **logged_kw)
    assert list(plain) == names
    for name in names:
        assert plain[name] == SelfNormalizedIPS().estimate_interval(reward=logged.metrics[name], **logged_kw)

    # with models: DR; with the true per-metric expectations as models, DM is each metric's true value
    truth = dict(logged.metric_truth)
    dr = evaluate_metrics(logged.metrics, **logged_kw, estimated_rewards=truth, pscore_dist=logged.pscore_dist)
    dm = evaluate_metrics(logged.metrics, **logged_kw, estimated_rewards=truth, estimator=DirectMethod())
    for name in names:
        true_value = float(np.mean(np.sum(truth[name] * target, axis=1)))
        assert dm[name].value == pytest.approx(true_value, rel=1e-12)
        assert dr[name].estimator == "DR"
        assert dr[name] == DoublyRobust().estimate_interval(
            reward=logged.metrics[name], **logged_kw, estimated_rewards=truth[name], pscore_dist=logged.pscore_dist
        )
    # the guardrails are rates and the budget a cost per unit: the estimates are on those scales
    assert 0 < dr["refund_rate"].value < 0.05 and 0 < dr["complaint_rate"].value < 0.05
    assert 0 < dr["promotion_budget"].value < 5


def test_evaluate_metrics_with_a_model_free_estimator_ignores_missing_models(logged: Logged) -> None:
    kw: dict[str, Any] = {"action": logged.action, "pscore": logged.pscore, "action_dist": logged.targets["oracle"]}
    out = evaluate_metrics(
        logged.metrics, **kw, estimated_rewards={"objective": logged.model}, estimator=InverseProbabilityWeighting()
    )
    assert {e.estimator for e in out.values()} == {"IPS"}
