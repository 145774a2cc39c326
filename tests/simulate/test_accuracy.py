"""Bias and interval coverage against the twin's exact truth over replicated logs (see conftest.py).

IPS and DR (with a fixed, deliberately wrong model) are unbiased; SNIPS and SNDR are consistent with an
O(1/n) bias far below what 100 replications can see; Switch-DR with tau above every weight is DR. DM with
the same wrong model is the negative control: the bias check must catch it, or the check has no power.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.simulate.conftest import MODEL_BIAS, REPLICATIONS, Runs

UNBIASED = ["IPS", "SNIPS", "DR", "SNDR", "SwitchDR(tau=100)"]
TARGETS = ["oracle-mix", "oracle"]


def _errors(runs: Runs, target: str, name: str) -> np.ndarray:
    return runs.value[(target, name)] - runs.truth[target]


def _bias_z(runs: Runs, target: str, name: str) -> float:
    e = _errors(runs, target, name)
    return float(e.mean() / (e.std(ddof=1) / np.sqrt(e.size)))


def _coverage(runs: Runs, target: str, name: str) -> float:
    t = runs.truth[target]
    return float(np.mean((runs.low[(target, name)] <= t) & (t <= runs.high[(target, name)])))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", UNBIASED)
def test_mean_estimate_is_within_three_standard_errors_of_the_truth(runs: Runs, target: str, name: str) -> None:
    assert abs(_bias_z(runs, target, name)) <= 3.0, _errors(runs, target, name).mean()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", UNBIASED)
def test_95_percent_interval_covers_the_truth_88_to_99_percent_of_the_time(runs: Runs, target: str, name: str) -> None:
    assert 0.88 <= _coverage(runs, target, name) <= 0.99


@pytest.mark.parametrize("target", TARGETS)
def test_dm_with_a_biased_model_fails_the_same_bias_check(runs: Runs, target: str) -> None:
    # the model is the truth + 0.5 + noise, so DM is off by about 0.5 and the check must see it
    e = _errors(runs, target, "DM")
    assert abs(e.mean() - MODEL_BIAS) < 0.1
    assert abs(_bias_z(runs, target, "DM")) > 10
    assert _coverage(runs, target, "DM") < 0.2


def test_dr_corrects_the_model_and_is_more_precise_than_ips(runs: Runs) -> None:
    for target in TARGETS:
        rmse = {name: float(np.sqrt(np.mean(_errors(runs, target, name) ** 2))) for name in ("IPS", "DR", "DM")}
        assert rmse["DR"] < rmse["IPS"], rmse
        width = {name: float(np.mean(runs.high[(target, name)] - runs.low[(target, name)])) for name in ("IPS", "DR")}
        assert width["DR"] < width["IPS"], width
    assert len(runs.truth["oracle"]) == REPLICATIONS
