"""The one doubly robust estimator: the Simulator's DR and the model's effects agree, and both count a
unit's decisions as one cluster."""

from __future__ import annotations

import numpy as np
import pytest

from drivetrain.model import OutcomeModel
from drivetrain.simulate import DoublyRobust
from drivetrain.stats import cluster_codes, pseudo_outcomes, standard_error
from drivetrain.twin import NBOOTwin
from tests.simulate.test_estimators import random_log


def test_the_simulators_dr_of_always_one_action_is_the_mean_of_its_pseudo_outcomes() -> None:
    log = random_log(5, 400, 3)
    units = np.repeat(np.arange(100), 4)
    gamma = pseudo_outcomes(log["reward"], log["action"], log["pscore"], log["estimated_rewards"])
    codes = cluster_codes(units, 400)
    for k in range(3):
        target = np.zeros((400, 3))
        target[:, k] = 1.0
        dr = DoublyRobust().estimate_interval(**{**log, "action_dist": target}, cluster=units)
        assert dr.value == pytest.approx(gamma[:, k].mean(), rel=1e-12)
        assert dr.std_error == pytest.approx(standard_error(gamma[:, k], float(gamma[:, k].mean()), codes), rel=1e-12)


def test_a_unit_logged_three_times_counts_once_in_the_standard_error() -> None:
    rng = np.random.default_rng(7)
    psi = rng.normal(size=200)
    copies, units = np.repeat(psi, 3), cluster_codes(np.repeat(np.arange(200), 3), 600)
    assert standard_error(copies, float(psi.mean()), units) == pytest.approx(standard_error(psi, float(psi.mean()), None), rel=1e-12)
    assert standard_error(copies, float(psi.mean()), None) == pytest.approx(standard_error(psi, float(psi.mean()), None) / np.sqrt(3), rel=0.01)


def test_the_models_effects_are_cluster_robust_by_unit() -> None:
    """Each logged decision three times for its unit (folds are drawn per unit, so the copies get the same
    pseudo-outcomes): clustered by unit the effects' standard error is that of one copy per unit; taken as
    independent rows it would shrink by about sqrt(3)."""
    twin = NBOOTwin(seed=11)
    decisions = twin.expected_log(twin.population(500))
    table = decisions.loc[decisions.index.repeat(3)].reset_index(drop=True)
    model = OutcomeModel(n_folds=2, n_estimators=15, min_child_samples=20, num_threads=1).fit(table, twin.spec)
    clustered = model.effect_interval(table, cluster=table["unit_id"])
    naive = model.effect_interval(table)
    gamma = model.pseudo_outcomes(table)
    control = twin.spec.control.index
    once = ~table["unit_id"].duplicated().to_numpy()
    for row in clustered.to_dict("records"):
        j = twin.spec.action_space.index_of(row["action_id"])
        d = gamma[once, j] - gamma[once, control]
        assert row["effect"] == pytest.approx(d.mean(), rel=1e-9, abs=1e-12)
        assert row["std_error"] == pytest.approx(d.std(ddof=1) / np.sqrt(once.sum()), rel=1e-9)
    assert (naive["std_error"] < 0.7 * clustered["std_error"]).all()
    by_tier = model.effect_interval(table, by="tier", cluster=table["unit_id"])
    assert set(by_tier["cohort"]) == {"bronze", "silver", "gold"} and (by_tier["std_error"] > 0).all()
