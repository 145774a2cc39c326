"""The problem value: validation with named errors, pessimistic planning, and building it from a spec."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from drivetrain.errors import UsageError
from drivetrain.optimize import (
    AssignmentProblem,
    MeanConstraint,
    ShareCap,
    pessimistic,
    problem_from_spec,
)
from drivetrain.twin import NBOOTwin, nboo_spec

V = np.array([[0.0, 1.0, 2.0], [0.0, 3.0, 1.0]])
E = np.ones((2, 3), dtype=bool)
C = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])


def _with_nan() -> np.ndarray:
    v = V.copy()
    v[1, 2] = np.nan
    return v


def _no_action() -> np.ndarray:
    e = E.copy()
    e[1] = False
    return e


BAD_PROBLEMS: list[tuple[str, Callable[[], Any], str]] = [
    ("values 1-D", lambda: AssignmentProblem(np.zeros(3), E), "`values` must be a 2-D array (n_units, n_actions)"),
    ("values empty", lambda: AssignmentProblem(np.zeros((0, 3)), np.zeros((0, 3), bool)), "got shape (0, 3)"),
    ("values text", lambda: AssignmentProblem(np.array([["a"]]), np.ones((1, 1), bool)), "`values` must be real numbers"),
    ("values NaN", lambda: AssignmentProblem(_with_nan(), E), "`values` must be finite, got nan in row 1 (action 2)"),
    ("eligible shape", lambda: AssignmentProblem(V, np.ones((2, 2), bool)), "`eligible` must have the shape of `values` (2, 3), got (2, 2)"),
    ("eligible dtype", lambda: AssignmentProblem(V, np.ones((2, 3))), "`eligible` must be a boolean array, got dtype float64"),
    ("unit without action", lambda: AssignmentProblem(V, _no_action()), "at least one action per unit, got none in row 1"),
    (
        "coef shape",
        lambda: AssignmentProblem(V, E, [MeanConstraint("budget", np.zeros((3, 3)), 1.0)]),
        "`constraints[0].coef` (budget) must broadcast to the shape of `values` (2, 3), got (3, 3)",
    ),
    (
        "coef inf",
        lambda: AssignmentProblem(V, E, [MeanConstraint("budget", np.array([0.0, np.inf, 1.0]), 1.0)]),
        "`constraints[0].coef` (budget) must be finite, got inf in row 0 (action 1)",
    ),
    ("limit NaN", lambda: MeanConstraint("budget", C, float("nan")), "`limit` of constraint 'budget' must be finite, got nan"),
    (
        "sense",
        lambda: MeanConstraint("budget", C, 1.0, "<"),  # type: ignore[arg-type]
        "`sense` of constraint 'budget' must be '<=' or '>=', got '<'",
    ),
    ("name", lambda: MeanConstraint("", C, 1.0), "constraint `name` must be a non-empty string, got ''"),
    ("share", lambda: ShareCap("stock", np.array([False, True, False]), 1.5), "`max_share` of cap 'stock' must be in [0, 1], got 1.5"),
    ("mask 2-D", lambda: ShareCap("stock", np.ones((2, 3), bool), 0.5), "`mask` of cap 'stock' must be a 1-D boolean array"),
    (
        "mask length",
        lambda: AssignmentProblem(V, E, caps=[ShareCap("stock", np.array([True, False]), 0.5)]),
        "`caps[0].mask` (stock) must have one entry per action (3,), got (2,)",
    ),
    (
        "duplicate names",
        lambda: AssignmentProblem(V, E, [MeanConstraint("x", C, 1.0)], [ShareCap("x", np.array([True, False, False]), 0.5)]),
        "constraint and cap names must be distinct, got ['x'] more than once",
    ),
    (
        "not a constraint",
        lambda: AssignmentProblem(V, E, [("budget", C, 1.0)]),  # type: ignore[list-item]
        "`constraints[0]` must be a MeanConstraint, got tuple",
    ),
]


@pytest.mark.parametrize(("case", "build", "message"), BAD_PROBLEMS, ids=[c[0] for c in BAD_PROBLEMS])
def test_bad_problems_are_named(case: str, build: Callable[[], Any], message: str) -> None:
    with pytest.raises(UsageError) as err:
        build()
    assert message in str(err.value), str(err.value)


def test_the_problem_is_a_frozen_value_that_leaves_the_callers_arrays_writable() -> None:
    values = V.copy()
    problem = AssignmentProblem(values, E, [MeanConstraint("budget", np.array([0.0, 1.0, 2.0]), 1.0)])
    values[0, 0] = 5.0  # still the caller's array
    assert not problem.values.flags.writeable
    assert problem.constraints[0].coef.shape == (3,)  # a per-action row broadcasts over units
    assert (problem.n_units, problem.n_actions, problem.names) == (2, 3, ("budget",))
    with pytest.raises(AttributeError):
        problem.values = V  # type: ignore[misc]


def test_pessimistic_moves_each_estimate_to_its_unfavourable_side() -> None:
    problem = AssignmentProblem(
        V, E, [MeanConstraint("cost", C, 1.0, "<="), MeanConstraint("reach", C, 0.5, ">="), MeanConstraint("known", C, 2.0)]
    )
    se = np.full((2, 3), 0.1)
    out = pessimistic(problem, value_se=2 * se, coef_se={"cost": se, "reach": se}, z=2.0)
    np.testing.assert_allclose(out.values, V - 0.4)
    np.testing.assert_allclose(out.constraints[0].coef, C + 0.2)
    np.testing.assert_allclose(out.constraints[1].coef, C - 0.2)
    np.testing.assert_allclose(out.constraints[2].coef, C)
    assert [c.limit for c in out.constraints] == [1.0, 0.5, 2.0]
    np.testing.assert_allclose(pessimistic(problem).values, V)  # nothing uncertain: the same problem


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"z": -1.0}, "`z` must be a finite number >= 0, got -1.0"),
        ({"value_se": -np.ones((2, 3))}, "`value_se` must be >= 0, got -1.0 in row 0 (action 0)"),
        ({"value_se": np.ones((3, 3))}, "`value_se` must broadcast to the shape of `values` (2, 3), got (3, 3)"),
        ({"coef_se": {"nope": np.ones((2, 3))}}, "`coef_se` must name constraints of the problem ['cost'], got ['nope']"),
        ({"coef_se": {"cost": np.full((2, 3), np.nan)}}, "`coef_se['cost']` must be finite, got nan in row 0 (action 0)"),
    ],
)
def test_pessimistic_names_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    problem = AssignmentProblem(V, E, [MeanConstraint("cost", C, 1.0)])
    with pytest.raises(UsageError) as err:
        pessimistic(problem, **kwargs)
    assert message in str(err.value)


# ---------------------------------------------------------------------------------------------- from a spec
@pytest.fixture(scope="module")
def small() -> tuple[NBOOTwin, Any, Any]:
    twin = NBOOTwin(seed=5)
    users = twin.population(500)
    return twin, users, twin.truth(users)


def test_problem_from_spec_evaluates_the_specs_formulas_on_the_components(small: tuple[NBOOTwin, Any, Any]) -> None:
    twin, users, truth = small
    problem = problem_from_spec(twin.spec, truth.components, users)
    np.testing.assert_allclose(problem.values, truth.objective)
    np.testing.assert_array_equal(problem.eligible, truth.eligible)
    assert problem.names == ("promotion_budget", "refund_rate", "complaint_rate", "bundle_stock")
    budget, refund, complaint = problem.constraints
    assert (budget.sense, budget.limit, refund.limit, complaint.limit) == ("<=", 1.0, 0.03, 0.02)
    np.testing.assert_allclose(budget.coef, truth.components["promo_cost"])
    np.testing.assert_allclose(refund.coef, truth.components["refund"])
    bundle = np.asarray(twin.spec.action_space.lever_columns()["offer_type"] == "bundle")
    assert problem.caps[0].max_share == 0.4
    np.testing.assert_array_equal(problem.caps[0].mask, bundle)


def test_problem_from_spec_applies_overrides_direction_and_two_sided_guardrails(small: tuple[NBOOTwin, Any, Any]) -> None:
    twin, users, truth = small
    raw = twin.spec.model.model_dump(mode="json")
    raw["objective"]["direction"] = "minimize"
    raw["guardrails"][0]["min"] = 0.001
    from drivetrain.spec import parse_spec

    spec = parse_spec(raw)
    problem = problem_from_spec(
        spec, truth.components, users, budget_overrides={"promotion_budget": 0.5},
        guardrail_overrides={"refund_rate": (None, 0.02), "complaint_rate": 0.01},
    )
    np.testing.assert_allclose(problem.values, -truth.objective)
    assert [(c.name, c.sense, c.limit) for c in problem.constraints] == [
        ("promotion_budget", "<=", 0.5),
        ("refund_rate:max", "<=", 0.02),
        ("refund_rate:min", ">=", 0.001),
        ("complaint_rate", "<=", 0.01),
    ]


def test_budgets_and_caps_count_per_unit_in_the_program(small: tuple[NBOOTwin, Any, Any]) -> None:
    twin, users, truth = small
    raw = twin.spec.model.model_dump(mode="json")
    raw["eligibility"]["unit"] = "tenure_days >= 200"
    from drivetrain.spec import parse_spec

    spec = parse_spec(raw)
    share = float(np.mean(users["tenure_days"] >= 200))
    problem = problem_from_spec(spec, truth.components, users)
    assert problem.constraints[0].limit == pytest.approx(1.0 * share)
    assert problem.caps[0].max_share == pytest.approx(0.4 * share)
    assert problem.constraints[1].limit == pytest.approx(0.03 * share)  # a guardrail too: a mean over the program
    outside = ~(users["tenure_days"] >= 200).to_numpy()
    assert problem.eligible[outside].sum(axis=1).tolist() == [1] * int(outside.sum())
    assert all((np.broadcast_to(c.coef, problem.values.shape)[outside] == 0).all() for c in problem.constraints)


def _drop_refund(c: dict[str, Any], x: dict[str, Any]) -> tuple[Any, ...]:
    return {k: v for k, v in c.items() if k != "refund"}, x, {}


def _narrow_refund(c: dict[str, Any], x: dict[str, Any]) -> tuple[Any, ...]:
    return {**c, "refund": c["refund"][:, :3]}, x, {}


def _region_only(c: dict[str, Any], x: dict[str, Any]) -> tuple[Any, ...]:
    return c, {"region": x["region"]}, {}


def _overrides(**kwargs: Any) -> Callable[[dict[str, Any], dict[str, Any]], tuple[Any, ...]]:
    return lambda c, x: (c, x, kwargs)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_drop_refund, "`components` must include the outcomes the spec's formulas read, missing ['refund']"),
        (_narrow_refund, "`components['refund']` must have shape (n_units, n_actions) = (500, 11), got (500, 3)"),
        (_region_only, "`contexts` must have the context columns the spec's formulas read, missing ['avg_order_value', 'tenure_days']"),
        (_overrides(budget_overrides={"cash": 1.0}), "`budget_overrides` must name budgets of the spec ['promotion_budget'], got ['cash']"),
        (
            _overrides(budget_overrides={"promotion_budget": -1.0}),
            "`budget_overrides['promotion_budget']` must be a finite number >= 0, got -1.0",
        ),
        (
            _overrides(guardrail_overrides={"refunds": 0.1}),
            "`guardrail_overrides` must name guardrails of the spec ['complaint_rate', 'refund_rate'], got ['refunds']",
        ),
        (
            _overrides(guardrail_overrides={"refund_rate": (0.0, 0.1)}),
            "`guardrail_overrides['refund_rate']` must be a number for a one-sided guardrail, got (0.0, 0.1)",
        ),
    ],
)
def test_problem_from_spec_names_bad_inputs(
    small: tuple[NBOOTwin, Any, Any], change: Callable[..., tuple[Any, ...]], message: str
) -> None:
    twin, users, truth = small
    contexts = {name: users[name].to_numpy() for name in twin.spec.features}
    components, contexts, kwargs = change(dict(truth.components), contexts)
    with pytest.raises(UsageError) as err:
        problem_from_spec(nboo_spec(), components, contexts, **kwargs)
    assert message in str(err.value), str(err.value)


def test_guardrails_count_over_the_program_as_the_evaluation_does() -> None:
    """With a unit eligibility rule a guardrail is a mean over the program's units (what the evaluation
    and the guardrail alert measure), not over every planned unit: the units outside the program, held on
    control, neither use nor free up any of it."""
    import yaml

    from drivetrain.optimize import ExactOptimizer
    from drivetrain.spec import parse_spec
    from drivetrain.twin._nboo import SPEC_PATH

    raw = yaml.safe_load(SPEC_PATH.read_text())
    raw["eligibility"]["unit"] = "tenure_days >= 365"
    spec = parse_spec(raw)
    twin = NBOOTwin(seed=5)
    users = twin.population(3000)
    truth = twin.truth(users)
    columns = {f: users[f].to_numpy() for f in spec.features}
    program = spec.eligible_units(columns)
    assert 0.2 < program.mean() < 0.8
    limit = 0.0105
    problem = problem_from_spec(spec, truth.components, columns, budget_overrides={"promotion_budget": 5.0},
                                guardrail_overrides={"refund_rate": limit})
    a = ExactOptimizer().assign(problem)
    assert "refund_rate" in a.binding
    refund = (a.probabilities * truth.components["refund"]).sum(axis=1)
    assert refund[program].mean() == pytest.approx(limit, rel=1e-6)
    assert (a.action[~program] == spec.control.index).all()


def test_as_served_moves_the_limits_by_what_exploration_and_the_holdout_use(small: tuple[NBOOTwin, Any, Any]) -> None:
    """Served use is linear in the plan; any plan that meets the moved limits meets the spec's as served,
    and a cap that exploration alone breaks is named."""
    from drivetrain.optimize import ExactOptimizer, as_served, served_use

    twin, users, truth = small
    spec = twin.spec
    problem = problem_from_spec(spec, truth.components, users, budget_overrides={"promotion_budget": 0.5})
    moved = as_served(problem, spec, exploration_rate=0.2, holdout_share=0.25)
    a = ExactOptimizer().assign(moved)
    use = served_use(problem, spec, a.probabilities, exploration_rate=0.2, holdout_share=0.25)
    for c in problem.constraints:
        assert use[c.name] <= c.limit * (1 + 1e-7) if c.sense == "<=" else use[c.name] >= c.limit * (1 - 1e-7)
    assert use["promotion_budget"] == pytest.approx(0.5, rel=1e-6)  # it binds
    for cap in problem.caps:
        assert use[cap.name] <= cap.max_share * (1 + 1e-7)
    with pytest.raises(UsageError, match="cap 'bundle_stock' cannot hold as served"):
        tight = problem_from_spec(spec, truth.components, users)
        as_served(AssignmentProblem(tight.values, tight.eligible, tight.constraints, [ShareCap("bundle_stock", tight.caps[0].mask, 0.01)]),
                  spec, exploration_rate=0.5, holdout_share=0.1)
    with pytest.raises(UsageError, match="`exploration_rate` and `holdout_share` must be in"):
        as_served(problem, spec, exploration_rate=1.0, holdout_share=0.0)
