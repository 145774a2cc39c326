"""Evaluation of what the serving system did: the KPI hierarchy by day and cohort."""

from drivetrain.evaluate._kpi import (
    BudgetUse,
    Counts,
    Effect,
    Evaluation,
    GuardrailCheck,
    Ratio,
    SampleRatio,
    ServiceLevels,
    SliceEvaluation,
    evaluate,
)

__all__ = [
    "BudgetUse",
    "Counts",
    "Effect",
    "Evaluation",
    "GuardrailCheck",
    "Ratio",
    "SampleRatio",
    "ServiceLevels",
    "SliceEvaluation",
    "evaluate",
]
