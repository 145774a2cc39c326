"""Weight diagnostics: effective sample size, largest and mean weight, and the warnings they raise."""

from __future__ import annotations

import numpy as np
import pytest

from drivetrain.simulate import (
    DirectMethod,
    DoublyRobust,
    InverseProbabilityWeighting,
    SelfNormalizedIPS,
    evaluate_policy,
)
from tests.simulate.conftest import Logged


def _warning(warnings: tuple[str, ...], start: str) -> str | None:
    return next((w for w in warnings if w.startswith(start)), None)


def test_equal_weights_give_an_effective_sample_size_of_n(logged: Logged) -> None:
    est = InverseProbabilityWeighting().estimate_interval(
        **{**logged.kwargs("oracle"), "action_dist": logged.pscore_dist}, pscore_dist=logged.pscore_dist
    )
    n = logged.reward.size
    assert est.effective_sample_size == pytest.approx(n)
    assert est.ess_ratio == pytest.approx(1.0)
    assert est.max_weight == pytest.approx(1.0) and est.mean_weight == pytest.approx(1.0)
    assert est.warnings == ()


def test_deterministic_target_on_uniform_logging_keeps_about_one_decision_in_k(logged: Logged) -> None:
    est = DoublyRobust().estimate_interval(
        **logged.kwargs("oracle"), estimated_rewards=logged.model, pscore_dist=logged.pscore_dist
    )
    w = logged.targets["oracle"][np.arange(logged.reward.size), logged.action] / logged.pscore
    assert est.effective_sample_size == pytest.approx(w.sum() ** 2 / np.square(w).sum())
    assert est.max_weight == pytest.approx(w.max())
    assert 0.07 < est.ess_ratio < 0.14  # 9 to 11 eligible actions and the holdout
    assert est.warnings == ()  # the propensities are right and the oracle only plays eligible actions


def test_warning_names_the_mass_the_target_puts_where_the_logging_policy_never_plays(logged: Logged) -> None:
    # everyone gets free shipping, but the logger never offers it above an order value of 150
    free_ship = logged.truth.action_ids.index("free_ship-0-immediate")
    target = np.zeros_like(logged.pscore_dist)
    target[:, free_ship] = 1.0
    unseen = ~logged.truth.eligible[:, free_ship]
    assert 0.05 < unseen.mean() < 0.5
    est = SelfNormalizedIPS().estimate_interval(
        **{**logged.kwargs("oracle"), "action_dist": target}, pscore_dist=logged.pscore_dist
    )
    text = _warning(est.warnings, "the target policy puts")
    assert text == (
        f"the target policy puts {100 * unseen.mean():.2f}% of its probability mass on actions the logging policy never plays "
        f"(`pscore_dist` == 0 in {unseen.sum()} of {unseen.size} rows): importance weighting cannot see that part, and "
        "model-based estimators rely on the model alone there"
    )
    # without the logging distribution the estimator cannot know
    blind = SelfNormalizedIPS().estimate_interval(**{**logged.kwargs("oracle"), "action_dist": target})
    assert _warning(blind.warnings, "the target policy puts") is None


def test_partial_mass_on_an_unplayed_action_is_reported_as_a_share() -> None:
    n = 10
    logging = np.tile([0.5, 0.5, 0.0], (n, 1))
    target = np.tile([0.4, 0.3, 0.3], (n, 1))
    target[5:] = [0.5, 0.5, 0.0]
    est = InverseProbabilityWeighting().estimate_interval(
        reward=np.ones(n), action=np.arange(n) % 2, pscore=np.full(n, 0.5), action_dist=target, pscore_dist=logging
    )
    text = _warning(est.warnings, "the target policy puts")
    assert (
        text is not None
        and text.startswith("the target policy puts 15.00% of its probability mass")
        and "in 5 of 10 rows" in text
    )


def test_warning_when_a_few_decisions_carry_the_estimate() -> None:
    n = 500
    pscore = np.full(n, 0.5)
    pscore[0] = 0.001
    target = np.tile([0.0, 1.0], (n, 1))
    target[0] = [1.0, 0.0]
    action = np.ones(n, dtype=int)
    action[0] = 0
    est = InverseProbabilityWeighting().estimate_interval(reward=np.ones(n), action=action, pscore=pscore, action_dist=target)
    assert est.max_weight == pytest.approx(1000.0)
    assert est.effective_sample_size < 0.01 * n
    text = _warning(est.warnings, "effective sample size")
    assert text == (
        f"effective sample size {est.effective_sample_size:.1f} is {100 * est.ess_ratio:.2f}% of n=500 (below 1%): "
        "a few decisions carry the estimate"
    )


def test_warning_when_the_mean_weight_shows_wrong_propensities(logged: Logged) -> None:
    kwargs = logged.kwargs("oracle-mix")
    right = InverseProbabilityWeighting().estimate_interval(**kwargs)
    assert _warning(right.warnings, "mean importance weight") is None
    wrong = InverseProbabilityWeighting().estimate_interval(**{**kwargs, "pscore": kwargs["pscore"] * 0.8})
    assert wrong.mean_weight == pytest.approx(right.mean_weight / 0.8)
    assert _warning(wrong.warnings, f"mean importance weight is {wrong.mean_weight:.3f}, expected 1") is not None


def test_dm_says_its_interval_ignores_the_model_error(logged: Logged) -> None:
    out = evaluate_policy(**logged.kwargs("oracle-mix"), estimated_rewards=logged.model, pscore_dist=logged.pscore_dist)
    caveat = "the interval of DM reflects only the sampling of contexts, not the error of `estimated_rewards`"
    assert caveat in out["DM"].warnings
    assert all(caveat not in est.warnings for name, est in out.items() if name != "DM")
    assert DirectMethod().estimate_interval(**logged.kwargs("oracle"), estimated_rewards=logged.model).warnings == (caveat,)
