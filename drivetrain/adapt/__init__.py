"""Wiring the stages together: fit, plan, evaluate (and, later, retrain, gate, promote, roll back)."""

from drivetrain.adapt._assembly import (
    ActionDistribution,
    Plan,
    evaluate_on_logs,
    fit_model,
    fixed_action,
    plan_policy,
    realized_metrics,
    write_policy_baselines,
)

__all__ = [
    "ActionDistribution",
    "Plan",
    "evaluate_on_logs",
    "fit_model",
    "fixed_action",
    "plan_policy",
    "realized_metrics",
    "write_policy_baselines",
]
