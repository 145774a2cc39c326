"""The Simulator: off-policy estimates of a target policy's value from logged decisions, with intervals
and diagnostics; one estimator over several metrics for what-if scenarios."""

from drivetrain.simulate._estimate import PolicyEstimate
from drivetrain.simulate._evaluate import default_estimators, evaluate_metrics, evaluate_policy
from drivetrain.simulate._ope import (
    DirectMethod,
    DoublyRobust,
    DoublyRobustWithShrinkage,
    InverseProbabilityWeighting,
    OffPolicyEstimator,
    SelfNormalizedDR,
    SelfNormalizedIPS,
    SwitchDR,
)

__all__ = [
    "DirectMethod",
    "DoublyRobust",
    "DoublyRobustWithShrinkage",
    "InverseProbabilityWeighting",
    "OffPolicyEstimator",
    "PolicyEstimate",
    "SelfNormalizedDR",
    "SelfNormalizedIPS",
    "SwitchDR",
    "default_estimators",
    "evaluate_metrics",
    "evaluate_policy",
]
