"""What-ifs against control: the paired doubly robust difference and its interval cover the twin's true
difference, per unit of a --where segment, and are narrower than the two levels' intervals combined."""

from __future__ import annotations

import numpy as np
import pytest

from drivetrain.assembly import evaluate_on_logs, fixed_action, paired_differences
from drivetrain.errors import UsageError
from drivetrain.model import OutcomeModel
from drivetrain.twin import NBOOTwin

WHERE = "tier == 'gold'"


def test_paired_differences_cover_the_true_difference() -> None:
    twin = NBOOTwin(seed=11)
    spec = twin.spec
    model = OutcomeModel(n_folds=2, n_estimators=40, min_child_samples=40, num_threads=1).fit(
        twin.expected_log(twin.population(6000)), spec)
    policies = {"control": fixed_action(spec, spec.control.values),
                "discount": fixed_action(spec, {"offer_type": "discount", "depth": 10, "timing": "immediate"}),
                "gold bundle": fixed_action(spec, {"offer_type": "bundle", "depth": 0, "timing": "immediate"}, where=WHERE)}
    covered, total, paired_widths, level_widths, errors = 0, 0, [], [], []
    for r in range(25):
        frame = twin.population(1200, offset=1_000_000 + 10_000 * r)
        table = twin.expected_log(frame)
        gold = (table["tier"] == "gold").to_numpy()
        truth = twin.truth(frame).objective
        control = policies["control"](table)
        found = paired_differences(model, table, policies, segments={"gold bundle": gold}, fitted_on_table=False)
        levels = evaluate_on_logs(model, table, policies, fitted_on_table=False)
        for name, keep in (("discount", np.ones(len(table), dtype=bool)), ("gold bundle", gold)):
            d = found[name]
            true = float((((policies[name](table) - control) * truth).sum(axis=1))[keep].mean())
            assert d.rows == int(keep.sum())
            covered += d.ci_low <= true <= d.ci_high
            total += 1
            errors.append((d.difference - true) / d.std_error)
            if name == "discount":  # both over every unit: the two levels' intervals combined as if independent
                paired_widths.append(d.ci_high - d.ci_low)
                a, b = levels.estimate(name, estimator="DR"), levels.estimate("control", estimator="DR")
                level_widths.append(np.hypot(a.ci_high - a.ci_low, b.ci_high - b.ci_low))
        # per unit of the segment: the all-units figure times the segment's share
        everyone = paired_differences(model, table, policies, fitted_on_table=False)["gold bundle"]
        assert everyone.difference == pytest.approx(found["gold bundle"].difference * gold.mean(), rel=1e-9)
    assert covered >= 0.86 * total, (covered, total)  # nominal 95%: 47.5 of 50 expected
    assert abs(np.mean(errors)) < 0.6  # no bias beyond the noise of 50 estimates
    assert np.median(np.array(paired_widths) / np.array(level_widths)) < 0.6  # pairing narrows the interval


def test_paired_differences_name_their_mistakes() -> None:
    twin = NBOOTwin(seed=3)
    table = twin.expected_log(twin.population(300))
    model = OutcomeModel(n_folds=2, n_estimators=5, min_child_samples=20, num_threads=1).fit(table, twin.spec)
    policies = {"control": fixed_action(twin.spec, twin.spec.control.values)}
    with pytest.raises(UsageError, match="`baseline` must be one of the policies"):
        paired_differences(model, table, policies, baseline="nope")
    with pytest.raises(UsageError, match="`segments` must name policies"):
        paired_differences(model, table, policies, segments={"x": np.ones(300, dtype=bool)})


def test_a_guardrail_kept_per_cohort_is_estimated_as_the_cohorts_own_mean() -> None:
    from drivetrain.spec import with_guardrails_by

    twin = NBOOTwin(seed=5)
    spec = with_guardrails_by(twin.spec, {"refund_rate": "tier"})
    model = OutcomeModel(n_folds=2, n_estimators=30, min_child_samples=40, num_threads=1).fit(
        twin.expected_log(twin.population(4000)), spec)
    frame = twin.population(3000, offset=5_000_000)
    table = twin.expected_log(frame)
    discount = fixed_action(spec, {"offer_type": "discount", "depth": 10, "timing": "immediate"})
    both = evaluate_on_logs(model, table, {"discount": discount}, fitted_on_table=False)
    gold_only = evaluate_on_logs(model, table[table["tier"] == "gold"].reset_index(drop=True), {"discount": discount},
                               fitted_on_table=False)
    gold = both.estimate("discount", "refund_rate@tier=gold")
    # the same DR estimate as on the gold rows alone (where the term is the plain guardrail)
    alone = gold_only.estimate("discount", "refund_rate@tier=gold")
    assert gold.value == pytest.approx(alone.value, rel=1e-9)
    assert gold.std_error == pytest.approx(alone.std_error, rel=0.05)
    truth = twin.truth(frame).components["refund"]
    gold_rows = (frame["tier"] == "gold").to_numpy()
    true = float((discount(table) * truth).sum(axis=1)[gold_rows].mean())
    assert gold.ci_low <= true <= gold.ci_high and 0.0 < gold.value < 0.2  # a rate, not a share-weighted difference
