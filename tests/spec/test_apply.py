"""A spec's formulas on per-(unit, action) arrays: levers per action, context per unit, realized per row."""

from __future__ import annotations

import numpy as np

from drivetrain.spec import formula_on, formula_spread, parse_spec
from drivetrain.twin import NBOOTwin


def _spec():  # type: ignore[no-untyped-def]
    raw = NBOOTwin(seed=1).spec.model.model_dump(mode="json")
    raw["constraints"]["budgets"][0]["formula"] = "promo_cost + 0.01 * depth * (tenure_days > 100)"
    return parse_spec(raw)


def test_levers_broadcast_per_action_and_context_per_unit() -> None:
    spec = _spec()
    k = len(spec.action_space)
    cost = np.arange(2 * k, dtype=np.float64).reshape(2, k)
    tenure = np.array([50, 500])
    depth = np.asarray(spec.action_space.lever_columns()["depth"], dtype=np.float64)
    got = formula_on(spec, spec.budgets[0][1], {"promo_cost": cost}, {"tenure_days": tenure})
    np.testing.assert_allclose(got, cost + 0.01 * depth[None, :] * np.array([[0.0], [1.0]]))


def test_with_lever_index_each_row_reads_its_own_actions_levers() -> None:
    spec = _spec()
    action = np.array([spec.control.index, spec.action_space.index_of("discount-15-delayed")])
    got = formula_on(spec, spec.budgets[0][1], {"promo_cost": np.array([[0.0], [2.0]])}, {"tenure_days": np.array([500, 500])},
                     lever_index=action)
    np.testing.assert_allclose(got, [[0.0], [2.0 + 0.15]])


def test_the_spread_is_the_folds_standard_deviation_of_the_formula() -> None:
    spec = _spec()
    k = len(spec.action_space)
    folds = [{"promo_cost": np.full((1, k), v)} for v in (1.0, 2.0, 4.0)]
    contexts = {"tenure_days": np.array([0])}
    np.testing.assert_allclose(formula_spread(spec, spec.budgets[0][1], folds, contexts), np.full((1, k), np.std([1.0, 2.0, 4.0], ddof=1)))
    np.testing.assert_array_equal(formula_spread(spec, spec.budgets[0][1], folds[:1], contexts), np.zeros((1, k)))
