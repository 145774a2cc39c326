"""Evaluation of what the serving system did: the KPI hierarchy by day and cohort, drift against the
fit-time baselines, and the spec's alert rules."""

from drivetrain.evaluate._alerts import Alert, check_alerts, latency_by_minute, store_alerts
from drivetrain.evaluate._drift import DRIFT_COLUMNS, DriftReport, measure_drift
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
    "DRIFT_COLUMNS",
    "Alert",
    "BudgetUse",
    "Counts",
    "DriftReport",
    "Effect",
    "Evaluation",
    "GuardrailCheck",
    "Ratio",
    "SampleRatio",
    "ServiceLevels",
    "SliceEvaluation",
    "check_alerts",
    "evaluate",
    "latency_by_minute",
    "measure_drift",
    "store_alerts",
]
