"""Every optimizer passes these checks (docs/architecture.md, habit 8): the same problems, the same expectations.

The problems are small enough to solve by hand; each expectation below is the unique optimum.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from drivetrain.errors import InfeasibleError, UsageError
from drivetrain.optimize import (
    Assignment,
    AssignmentProblem,
    ExactOptimizer,
    LagrangianOptimizer,
    MeanConstraint,
    Optimizer,
    ShareCap,
)

OPTIMIZERS = {"lagrangian": LagrangianOptimizer, "exact": ExactOptimizer}


@pytest.fixture(params=sorted(OPTIMIZERS))
def optimizer(request: pytest.FixtureRequest) -> Optimizer:
    return OPTIMIZERS[request.param]()


def _check(result: Assignment, problem: AssignmentProblem) -> None:
    """What holds for every assignment: rows sum to one, nothing ineligible, actions drawn from the rows."""
    p = result.probabilities
    assert p.shape == problem.values.shape
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    assert (p >= 0).all()
    assert (p[~problem.eligible] == 0).all()
    assert (p[np.arange(problem.n_units), result.action] > 0).all()
    assert set(result.usage) == set(result.multipliers) == set(problem.names)
    assert all(m >= 0 for m in result.multipliers.values())


def test_is_an_optimizer(optimizer: Optimizer) -> None:
    assert isinstance(optimizer, Optimizer)


def test_without_constraints_each_unit_gets_its_best_eligible_action(optimizer: Optimizer) -> None:
    values = np.array([[5.0, 1.0, 2.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5]])
    eligible = np.array([[False, True, True], [True, True, True], [True, False, True]])
    problem = AssignmentProblem(values, eligible)
    result = optimizer.assign(problem)
    _check(result, problem)
    assert result.action.tolist() == [2, 1, 0]
    assert result.objective == pytest.approx(2.0)
    assert result.binding == ()


def test_a_binding_budget_is_spent_exactly_by_splitting_the_marginal_unit(optimizer: Optimizer) -> None:
    # unit 0 earns 3 for a cost of 2, unit 1 earns 1 for 2: the budget of 1.5 per unit buys all of unit 0
    # and half of unit 1, and one more unit of budget buys 1/2 of value (the multiplier)
    cost = np.array([[0.0, 2.0], [0.0, 2.0]])
    problem = AssignmentProblem(np.array([[0.0, 3.0], [0.0, 1.0]]), np.ones((2, 2), bool), [MeanConstraint("budget", cost, 1.5)])
    result = optimizer.assign(problem)
    _check(result, problem)
    np.testing.assert_allclose(result.probabilities, [[0.0, 1.0], [0.5, 0.5]], atol=1e-5)
    assert result.objective == pytest.approx(1.75, abs=1e-5)
    assert result.usage["budget"] == pytest.approx(1.5, abs=1e-5)
    assert result.multipliers["budget"] == pytest.approx(0.5, rel=1e-4)
    assert result.binding == ("budget",)
    assert result.action[0] == 1


def test_a_floor_is_met_at_the_least_loss(optimizer: Optimizer) -> None:
    reach = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 4.0]])
    values = np.array([[1.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    problem = AssignmentProblem(values, np.ones((3, 2), bool), [MeanConstraint("reach", reach, 2.0 / 3.0, ">=")])
    result = optimizer.assign(problem)
    _check(result, problem)
    # unit 2 reaches 4 for a loss of 3 (0.75 per unit of reach), units 0 and 1 reach 1 for a loss of 1:
    # half of unit 2 meets the floor of 2/3 per unit
    np.testing.assert_allclose(result.probabilities[:, 1], [0.0, 0.0, 0.5], atol=1e-5)
    assert result.objective == pytest.approx(3.5 / 3, abs=1e-5)
    assert result.usage["reach"] == pytest.approx(2.0 / 3.0, abs=1e-5)
    assert result.multipliers["reach"] == pytest.approx(0.75, rel=1e-4)
    assert result.binding == ("reach",)


def test_a_cap_limits_the_share_on_its_actions(optimizer: Optimizer) -> None:
    values = np.array([[0.0, 2.0, 1.0], [0.0, 4.0, 1.0], [0.0, 3.0, 2.5], [0.0, 2.0, 1.9]])
    cap = ShareCap("stock", np.array([False, True, False]), 0.5)
    problem = AssignmentProblem(values, np.ones((4, 3), bool), caps=[cap])
    result = optimizer.assign(problem)
    _check(result, problem)
    # the two largest gains of action 1 over action 2 (3.0 and 1.0) get it; any price between the last gain
    # in (1.0) and the first left out (0.5) supports that split
    assert result.action.tolist() == [1, 1, 2, 2]
    assert result.objective == pytest.approx((2 + 4 + 2.5 + 1.9) / 4, abs=1e-5)
    assert result.usage["stock"] == pytest.approx(0.5, abs=1e-5)
    assert 0.5 - 1e-4 <= result.multipliers["stock"] <= 1.0 + 1e-4
    assert result.binding == ("stock",)


def test_a_slack_constraint_costs_nothing(optimizer: Optimizer) -> None:
    cost = np.array([[0.0, 2.0], [0.0, 2.0]])
    problem = AssignmentProblem(np.array([[0.0, 3.0], [0.0, 1.0]]), np.ones((2, 2), bool), [MeanConstraint("budget", cost, 10.0)])
    result = optimizer.assign(problem)
    _check(result, problem)
    assert result.action.tolist() == [1, 1]
    assert result.multipliers == {"budget": 0.0}
    assert result.binding == ()
    assert result.usage["budget"] == pytest.approx(2.0, abs=1e-5)


def test_ineligible_actions_are_never_chosen_whatever_they_are_worth(optimizer: Optimizer) -> None:
    values = np.array([[100.0, 0.0, 1.0], [0.0, 100.0, 1.0]])
    eligible = np.array([[False, True, True], [True, False, True]])
    cost = np.array([[-50.0, 0.0, 1.0], [0.0, -50.0, 1.0]])  # the actions that pay (negative cost) are not eligible
    problem = AssignmentProblem(values, eligible, [MeanConstraint("budget", cost, 0.5)])
    result = optimizer.assign(problem)
    _check(result, problem)
    assert result.usage["budget"] <= 0.5 + 1e-6
    assert result.objective == pytest.approx(0.5, abs=1e-5)


def test_the_same_seed_draws_the_same_actions(optimizer: Optimizer) -> None:
    cost = np.tile([0.0, 2.0], (40, 1))
    problem = AssignmentProblem(np.tile([0.0, 1.0], (40, 1)), np.ones((40, 2), bool), [MeanConstraint("budget", cost, 1.0)])
    first, second = optimizer.assign(problem), optimizer.assign(problem)
    np.testing.assert_array_equal(first.action, second.action)
    np.testing.assert_array_equal(first.probabilities, second.probabilities)
    assert first.usage["budget"] == pytest.approx(1.0, abs=1e-5)


V = np.array([[0.0, 1.0, 2.0], [0.0, 3.0, 1.0]])
C = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
ALL = np.ones((2, 3), bool)
ONLY_MASKED = np.array([[True, True, True], [False, True, False]])
STOCK = ShareCap("stock", np.array([False, True, False]), 0.0)

INFEASIBLE = [
    (
        "budget below the cheapest",
        AssignmentProblem(V, ALL, [MeanConstraint("budget", C + 1.0, 0.5)]),
        ("budget",),
        "`budget` needs mean <= 0.5, the lowest any eligible assignment gives is 1",
    ),
    (
        "floor above the highest",
        AssignmentProblem(V, ALL, [MeanConstraint("budget", C, 5.0), MeanConstraint("reach", 0.05 * C, 0.3, ">=")]),
        ("reach",),
        "`reach` needs mean >= 0.3, the highest any eligible assignment gives is 0.1",
    ),
    (
        "cap that leaves a unit nothing",
        AssignmentProblem(V, ONLY_MASKED, caps=[STOCK]),
        ("stock",),
        "`stock` allows a share <= 0 of units on its actions, but 0.5 of units have no other eligible action",
    ),
    (
        "budget and floor together",
        AssignmentProblem(V, ALL, [MeanConstraint("budget", C, 0.5), MeanConstraint("other", C, 5.0), MeanConstraint("reach", C, 1.5, ">=")]),
        ("budget", "reach"),
        "constraints cannot all hold together: `budget`, `reach`",
    ),
]


@pytest.mark.parametrize(("case", "problem", "names", "message"), INFEASIBLE, ids=[c[0] for c in INFEASIBLE])
def test_infeasible_constraints_are_named(
    optimizer: Optimizer, case: str, problem: AssignmentProblem, names: tuple[str, ...], message: str
) -> None:
    with pytest.raises(InfeasibleError) as err:
        optimizer.assign(problem)
    assert err.value.constraints == names
    assert message in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: LagrangianOptimizer(tol=0.0), "`tol` must be a number in (0, 1), got 0.0"),
        (lambda: LagrangianOptimizer(max_iter=0), "`max_iter` must be an integer >= 1, got 0"),
        (lambda: LagrangianOptimizer(temperature=2.0), "`temperature` must be a number in (0, 1], got 2.0"),
        (lambda: LagrangianOptimizer(sample_size=10), "`sample_size` must be an integer >= 100, got 10"),
        (lambda: LagrangianOptimizer(seed=1.5), "`seed` must be an integer, got 1.5"),  # type: ignore[arg-type]
        (lambda: ExactOptimizer(seed="x"), "`seed` must be an integer, got 'x'"),  # type: ignore[arg-type]
    ],
)
def test_bad_hyperparameters_are_named_when_assigning(build: Callable[[], Optimizer], message: str) -> None:
    optimizer = build()  # stored unchanged: validation happens in assign
    with pytest.raises(UsageError) as err:
        optimizer.assign(AssignmentProblem(V, ALL))
    assert message in str(err.value)
