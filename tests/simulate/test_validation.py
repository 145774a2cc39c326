"""Invalid inputs and the messages they get: the parameter, the expectation and what arrived."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import pytest

from drivetrain.errors import UsageError
from drivetrain.simulate import (
    DirectMethod,
    DoublyRobust,
    DoublyRobustWithShrinkage,
    InverseProbabilityWeighting,
    PolicyEstimate,
    SelfNormalizedDR,
    SelfNormalizedIPS,
    SwitchDR,
    evaluate_metrics,
    evaluate_policy,
)


def raises(message: str) -> AbstractContextManager[Any]:
    """Expect a UsageError whose whole message is ``message``."""
    return pytest.raises(UsageError, match=f"^{re.escape(message)}$")


def valid() -> dict[str, Any]:
    """Five decisions over three actions, logged uniformly."""
    return {
        "reward": np.array([1.0, 0.0, 2.5, 1.0, 0.0]),
        "action": np.array([0, 1, 2, 1, 0]),
        "pscore": np.full(5, 1 / 3),
        "action_dist": np.tile([0.2, 0.5, 0.3], (5, 1)),
        "estimated_rewards": np.ones((5, 3)),
        "pscore_dist": np.full((5, 3), 1 / 3),
    }


def put(name: str, row: int | tuple[int, int], value: float) -> Callable[[dict[str, Any]], None]:
    def edit(kwargs: dict[str, Any]) -> None:
        arr = np.array(kwargs[name], dtype=np.float64)
        arr[row] = value
        kwargs[name] = arr

    return edit


def replace(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(kwargs: dict[str, Any]) -> None:
        kwargs[name] = value

    return edit


CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("pscore above 1", put("pscore", 1, 1.7), "`pscore` must be in (0, 1], got 1.7 at row 1"),
    ("pscore zero", put("pscore", 3, 0.0), "`pscore` must be in (0, 1], got 0 at row 3"),
    (
        "pscore negative in many rows",
        replace("pscore", np.full(5, -0.5)),
        "`pscore` must be in (0, 1], got -0.5 at row 0 (and 4 more rows)",
    ),
    (
        "pscore too short",
        replace("pscore", np.full(4, 0.5)),
        "`pscore` must have one entry per decision (n=5 from `reward`), got 4",
    ),
    ("pscore NaN", put("pscore", 2, np.nan), "`pscore` must be finite, got nan at row 2"),
    ("reward NaN", put("reward", 2, np.nan), "`reward` must be finite, got nan at row 2"),
    ("reward infinite", put("reward", 4, -np.inf), "`reward` must be finite, got -inf at row 4"),
    ("reward 2-D", replace("reward", np.ones((5, 1))), "`reward` must be 1-D with shape (n,), got shape (5, 1)"),
    ("reward text", replace("reward", np.array(["a", "b", "c", "d", "e"])), "`reward` must be a numeric array, got dtype <U1"),
    ("reward empty", replace("reward", np.array([])), "`reward` must hold at least one decision, got 0"),
    ("action too large", put("action", 0, 3), "`action` must be in [0, 3) (K=3 from `action_dist`), got 3 at row 0"),
    ("action negative", put("action", 4, -1), "`action` must be in [0, 3) (K=3 from `action_dist`), got -1 at row 4"),
    ("action fractional", put("action", 1, 1.5), "`action` must hold integer action indices, got 1.5 at row 1"),
    (
        "action too long",
        replace("action", np.zeros(6, dtype=int)),
        "`action` must have one entry per decision (n=5 from `reward`), got 6",
    ),
    ("action_dist rows", put("action_dist", (4, 0), 0.1), "rows of `action_dist` must sum to 1, got 0.9 at row 4"),
    ("action_dist negative", put("action_dist", (0, 1), -0.1), "`action_dist` must be in [0, 1], got -0.1 at row 0, action 1"),
    (
        "action_dist rows missing",
        replace("action_dist", np.full((4, 3), 1 / 3)),
        "`action_dist` must have shape (n, K) = (5, K), got (4, 3)",
    ),
    ("action_dist 1-D", replace("action_dist", np.full(5, 1.0)), "`action_dist` must have shape (n, K) = (5, K), got (5,)"),
    ("action_dist NaN", put("action_dist", (2, 2), np.nan), "`action_dist` must be finite, got nan at row 2, action 2"),
    (
        "model columns",
        replace("estimated_rewards", np.ones((5, 2))),
        "`estimated_rewards` must have shape (n, K) = (5, 3), got (5, 2)",
    ),
    (
        "model infinite",
        put("estimated_rewards", (1, 0), np.inf),
        "`estimated_rewards` must be finite, got inf at row 1, action 0",
    ),
    ("pscore_dist rows", put("pscore_dist", (3, 2), 0.5), "rows of `pscore_dist` must sum to 1, got 1.16667 at row 3"),
    (
        "pscore_dist disagrees with pscore",
        replace("pscore_dist", np.tile([0.5, 0.25, 0.25], (5, 1))),
        "`pscore_dist` must give the logged action its `pscore`, got 0.5 for `pscore` 0.333333 at row 0 (and 4 more rows)",
    ),
]


@pytest.mark.parametrize(("edit", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("estimator", [DoublyRobust(), SelfNormalizedIPS()], ids=["DR", "SNIPS"])
def test_invalid_logged_data_is_named_in_the_message(
    estimator: DoublyRobust | SelfNormalizedIPS, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    kwargs = valid()
    edit(kwargs)
    for call in (estimator.estimate_value, estimator.estimate_interval, lambda **kw: evaluate_policy(**kw)):
        with raises(message):
            call(**kwargs)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda kw: DoublyRobust().estimate_value(**{**kw, "estimated_rewards": None}),
         "`estimated_rewards` is required by DR (an (n, K) array of model predictions), got None"),
        (lambda kw: DirectMethod().estimate_interval(**{**kw, "estimated_rewards": None}),
         "`estimated_rewards` is required by DM (an (n, K) array of model predictions), got None"),
        (lambda kw: DoublyRobust().estimate_interval(**kw, alpha=0.0), "`alpha` must be in (0, 1), got 0.0"),
        (lambda kw: DoublyRobust().estimate_interval(**kw, alpha=1.5), "`alpha` must be in (0, 1), got 1.5"),
        (lambda kw: DoublyRobust().estimate_interval(**kw, alpha=True), "`alpha` must be in (0, 1), got True"),
        (lambda kw: SwitchDR(tau=-1.0).estimate_value(**kw),
         "`tau` must be a number >= 0 (the largest importance weight kept; inf gives DR), got -1.0"),
        (lambda kw: SwitchDR(tau=np.nan).estimate_value(**kw),
         "`tau` must be a number >= 0 (the largest importance weight kept; inf gives DR), got nan"),
        (lambda kw: SwitchDR(tau="big").estimate_interval(**kw),  # type: ignore[arg-type]
         "`tau` must be a number >= 0 (the largest importance weight kept; inf gives DR), got 'big'"),
        (lambda kw: DoublyRobustWithShrinkage(lambda_=-2).estimate_value(**kw),
         "`lambda_` must be a number >= 0 (the shrinkage scale; inf gives DR, 0 gives DM), got -2"),
        (lambda kw: InverseProbabilityWeighting().estimate_interval(**{k: v[:1] for k, v in kw.items()}),
         "`reward` must hold at least 2 decisions for an interval, got 1"),
        (lambda kw: SelfNormalizedIPS().estimate_value(**{**kw, "action_dist": np.tile([0.0, 0.0, 1.0], (5, 1)), "action": np.zeros(5, int)}),
         ("`action_dist` must give positive probability to some logged action for SNIPS, got 0 for all 5 decisions "
          "(no overlap between the target and the logging policy)")),
        (lambda kw: SelfNormalizedDR().estimate_value(**{**kw, "action_dist": np.tile([0.0, 0.0, 1.0], (5, 1)), "action": np.zeros(5, int)}),
         ("`action_dist` must give positive probability to some logged action for SNDR, got 0 for all 5 decisions "
          "(no overlap between the target and the logging policy)")),
    ],
    ids=["DR without model", "DM without model", "alpha 0", "alpha 1.5", "alpha bool", "tau negative", "tau nan", "tau text",
         "lambda negative", "one decision", "no overlap SNIPS", "no overlap SNDR"],
)  # fmt: skip
def test_invalid_arguments(call: Callable[[dict[str, Any]], Any], message: str) -> None:
    with raises(message):
        call(valid())


def test_evaluate_policy_rejects_bad_estimator_collections() -> None:
    kw = valid()
    with raises("`estimators` must have distinct names, got ['SwitchDR'] more than once: pass a mapping name -> estimator"):
        evaluate_policy(**kw, estimators=[SwitchDR(tau=1.0), SwitchDR(tau=2.0)])
    with raises("`estimators['x']` must be an OffPolicyEstimator, got str"):
        evaluate_policy(**kw, estimators={"x": "DR"})  # type: ignore[dict-item]
    with raises("`estimators` must hold at least one estimator, got none"):
        evaluate_policy(**kw, estimators=[])
    with raises("`estimators` must be a sequence or a mapping of estimators, got str"):
        evaluate_policy(**kw, estimators="DR")  # type: ignore[arg-type]


def test_evaluate_metrics_names_the_metric_in_its_messages() -> None:
    kw = valid()
    logged = {k: kw[k] for k in ("action", "pscore", "action_dist")}
    rewards = {"profit": kw["reward"], "refund": np.array([0.0, 1.0, np.nan, 0.0, 0.0])}
    with raises("`rewards['refund']` must be finite, got nan at row 2"):
        evaluate_metrics(rewards, **logged)
    models = {"profit": kw["estimated_rewards"], "refund": np.ones((5, 2))}
    with raises("`estimated_rewards['refund']` must have shape (n, K) = (5, 3), got (5, 2)"):
        evaluate_metrics({**rewards, "refund": np.zeros(5)}, **logged, estimated_rewards=models)
    with raises("`estimated_rewards` must have an entry for every metric (DR needs a model), missing ['refund']"):
        evaluate_metrics({**rewards, "refund": np.zeros(5)}, **logged, estimated_rewards={"profit": kw["estimated_rewards"]})
    with raises("`estimated_rewards` must only name metrics of `rewards` ['profit'], got ['proft']"):
        evaluate_metrics({"profit": kw["reward"]}, **logged, estimated_rewards={"proft": kw["estimated_rewards"]})
    with raises("`rewards` must map at least one metric name to its per-decision values, got {}"):
        evaluate_metrics({}, **logged)
    with raises("`estimator` must be an OffPolicyEstimator, got the class DoublyRobust (create one: DoublyRobust())"):
        evaluate_metrics({"profit": kw["reward"]}, **logged, estimator=DoublyRobust)  # type: ignore[arg-type]


def test_policy_estimate_checks_its_fields() -> None:
    fields: dict[str, Any] = {
        "estimator": "IPS", "value": 1.0, "std_error": 0.1, "ci_low": 0.8, "ci_high": 1.2, "n": 10,
        "effective_sample_size": 10.0, "ess_ratio": 1.0, "max_weight": 1.0, "mean_weight": 1.0,
    }  # fmt: skip
    assert PolicyEstimate(**fields).alpha == 0.05
    with raises("`value` must lie in [ci_low, ci_high], got 1.0 outside [1.1, 1.2]"):
        PolicyEstimate(**{**fields, "ci_low": 1.1})
    with raises("`alpha` must be in (0, 1), got 2"):
        PolicyEstimate(**fields, alpha=2)
    with raises("`std_error` must be >= 0, got -0.1"):
        PolicyEstimate(**{**fields, "std_error": -0.1})
