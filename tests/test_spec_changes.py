"""A fitted model depends only on what it models: the rest of the spec may change between fit and plan.

The objective's weights, the constraints, the guardrails, the alerts and the serving settings are planning
choices; the unit, the outcomes, the levers and action rules, the control, the context contract and the
horizon are what a model learned. Changing the first kind plans with the same model; the second kind asks
for a refit, on the command line and in the Python API alike.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from drivetrain import cli
from drivetrain.assembly import plan_policy
from drivetrain.errors import UsageError
from drivetrain.model import OutcomeModel
from drivetrain.policy import Policy
from drivetrain.spec import Spec, parse_spec
from drivetrain.twin import NBOOTwin


@pytest.fixture(scope="module")
def fitted() -> tuple[NBOOTwin, OutcomeModel, pd.DataFrame]:
    twin = NBOOTwin(seed=5)
    decisions = twin.expected_log(twin.population(3000))
    model = OutcomeModel(n_folds=0, n_estimators=10, min_child_samples=50, num_threads=1).fit(decisions, twin.spec)
    return twin, model, NBOOTwin(seed=6).population(2000, offset=7_000_000)


def _changed(spec: Spec, edit: Any) -> Spec:
    raw = copy.deepcopy(spec.model.model_dump(mode="json"))
    edit(raw)
    return parse_spec(raw)


def _planning_edits() -> list[Any]:
    def budget(raw: dict[str, Any]) -> None:
        raw["constraints"]["budgets"][0]["max_per_unit"] = 0.4

    def cap_for_budget(raw: dict[str, Any]) -> None:  # the walk-through's swap: the cap out, a second budget in
        raw["constraints"]["caps"] = []
        raw["constraints"]["budgets"].append({"name": "refund_budget", "formula": "refund", "max_per_unit": 0.2})

    def alert(raw: dict[str, Any]) -> None:
        raw["monitoring"]["alerts"] = [{"name": "drift", "kind": "drift", "feature": "*", "psi_above": 0.2}]

    def serving(raw: dict[str, Any]) -> None:
        raw["experimentation"]["exploration_rate"] = 0.1

    def objective(raw: dict[str, Any]) -> None:  # promotion cost weighs twice
        raw["objective"]["formula"] = raw["objective"]["formula"].replace("promo_cost", "2 * promo_cost")

    return [budget, cap_for_budget, alert, serving, objective]


@pytest.mark.parametrize("edit", _planning_edits(), ids=lambda f: f.__name__)
def test_a_planning_change_plans_with_the_fitted_model(fitted: Any, edit: Any) -> None:
    twin, model, contexts = fitted
    changed = _changed(twin.spec, edit)
    assert changed.hash != twin.spec.hash and changed.model_hash == twin.spec.model_hash
    plan = plan_policy(changed, model, contexts)
    assert plan.policy.spec.hash == changed.hash  # the policy records the spec it was planned with
    # and scores by it: without prices, a unit's score of an action is the planning spec's objective
    unpriced = Policy.from_model(changed, model, {})
    means = model.predict_outcomes(contexts)
    columns = {**means, **{n: c[None, :] for n, c in changed.action_space.lever_columns().items()},
               **{n: contexts[n].to_numpy()[:, None] for n in changed.features if n in contexts}}
    expected = np.where(np.isfinite(unpriced.scores(contexts)), changed.objective(columns), -np.inf)
    np.testing.assert_allclose(unpriced.scores(contexts), expected, rtol=1e-12)


def _modelling_edits() -> list[Any]:
    def horizon(raw: dict[str, Any]) -> None:
        raw["objective"]["horizon"] = "14d"

    def lever(raw: dict[str, Any]) -> None:
        raw["levers"]["depth"]["values"] = [0, 5, 10]  # the 15% discounts are gone

    def feature(raw: dict[str, Any]) -> None:
        raw["context"]["features"].pop(next(iter(raw["context"]["features"])))

    return [horizon, lever, feature]


@pytest.mark.parametrize("edit", _modelling_edits(), ids=lambda f: f.__name__)
def test_a_modelling_change_asks_for_a_refit(fitted: Any, edit: Any, tmp_path: Path) -> None:
    twin, model, _ = fitted
    try:
        changed = _changed(twin.spec, edit)
    except Exception as exc:  # an edit the spec itself refuses is not what this test is about
        pytest.fail(f"the edit must give a valid spec: {exc}")
    assert changed.model_hash != twin.spec.model_hash
    with pytest.raises(UsageError, match="refit under this spec"):
        Policy.from_model(changed, model, {})
    Policy.from_model(twin.spec, model, {}).save(tmp_path / "model")
    with pytest.raises(UsageError, match=r"`--model` must be fitted under a spec that agrees with this one on unit, outcomes"):
        cli._policy_for(changed, tmp_path / "model", "model")
    assert cli._policy_for(_changed(twin.spec, _planning_edits()[0]), tmp_path / "model", "model").spec.hash == twin.spec.hash
