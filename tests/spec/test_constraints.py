"""The spec's constraint list: one derivation that the optimizer, the policy and the evaluation share."""

from __future__ import annotations

import numpy as np
import pytest

from drivetrain.errors import UsageError
from drivetrain.optimize import AssignmentProblem, MeanConstraint, problem_from_spec, served_use
from drivetrain.spec import Spec, check_constraint_names, constraint_names, mean_constraints, parse_spec
from drivetrain.twin import NBOOTwin


@pytest.fixture(scope="module")
def two_sided() -> Spec:
    raw = NBOOTwin(seed=1).spec.model.model_dump(mode="json")
    raw["guardrails"][0]["min"] = 0.001
    return parse_spec(raw)


def test_a_two_sided_guardrail_gives_a_max_and_a_min_term(two_sided: Spec) -> None:
    terms = mean_constraints(two_sided)
    assert [(t.name, t.kind, t.source, t.sense, t.limit, t.sign) for t in terms] == [
        ("promotion_budget", "budget", "promotion_budget", "<=", 1.0, 1.0),
        ("refund_rate:max", "guardrail", "refund_rate", "<=", 0.03, 1.0),
        ("refund_rate:min", "guardrail", "refund_rate", ">=", 0.001, -1.0),
        ("complaint_rate", "guardrail", "complaint_rate", "<=", 0.02, 1.0),
    ]
    assert terms[1].formula.text == "refund"
    assert constraint_names(two_sided) == (*(t.name for t in terms), "bundle_stock")


def test_the_optimizers_problem_carries_exactly_the_specs_names(two_sided: Spec) -> None:
    twin = NBOOTwin(seed=1)
    users = twin.population(200)
    problem = problem_from_spec(two_sided, twin.truth(users).components, users)
    assert problem.names == constraint_names(two_sided)
    assert [(c.name, c.sense, c.limit) for c in problem.constraints] == [(t.name, t.sense, t.limit) for t in mean_constraints(two_sided)]


def test_a_name_the_spec_does_not_have_is_an_error(two_sided: Spec) -> None:
    check_constraint_names(two_sided, ["refund_rate:max", "bundle_stock"], "multipliers")
    # the one-sided name of a guardrail that is two-sided would price nothing if it were accepted
    with pytest.raises(UsageError, match=r"`multipliers` must name constraints or caps of the spec .*got \['refund_rate'\]"):
        check_constraint_names(two_sided, ["refund_rate"], "multipliers")


def test_served_use_refuses_a_row_the_spec_does_not_name(two_sided: Spec) -> None:
    # a row of another name cannot be told a budget (both arms) from a guardrail (policy arm)
    k = len(two_sided.action_space)
    problem = AssignmentProblem(np.zeros((3, k)), np.ones((3, k), bool), constraints=[MeanConstraint("promo", np.ones(k), 1.0)])
    with pytest.raises(UsageError, match=r"`problem` must name constraints or caps of the spec .*got \['promo'\]"):
        served_use(problem, two_sided, np.full((3, k), 1.0 / k), exploration_rate=0.1, holdout_share=0.1)
