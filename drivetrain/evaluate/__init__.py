"""Evaluation of what the serving system did: the KPI hierarchy by day and cohort, drift against the
fit-time baselines, and the spec's alert rules; their SQL in Spark's dialect."""

from drivetrain.evaluate._alerts import (
    Alert,
    always_valid_p,
    check_alerts,
    latency_by_minute,
    mixture_variance,
    store_alerts,
)
from drivetrain.evaluate._drift import (
    DRIFT_COLUMNS,
    DriftReport,
    baseline_version,
    drift_as_of,
    drift_queries,
    measure_drift,
)
from drivetrain.evaluate._figures import (
    BudgetUse,
    Counts,
    Effect,
    Evaluation,
    GuardrailCheck,
    Ratio,
    SampleRatio,
    ServiceLevels,
    SliceEvaluation,
)
from drivetrain.evaluate._kpi import evaluate, evaluation_from_results
from drivetrain.evaluate._kpi_sql import Scope, evaluation_queries
from drivetrain.evaluate._spark import to_spark_sql
from drivetrain.evaluate._sql import timestamp_sql

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
    "Scope",
    "ServiceLevels",
    "SliceEvaluation",
    "always_valid_p",
    "baseline_version",
    "check_alerts",
    "drift_as_of",
    "drift_queries",
    "evaluate",
    "evaluation_from_results",
    "evaluation_queries",
    "latency_by_minute",
    "measure_drift",
    "mixture_variance",
    "store_alerts",
    "timestamp_sql",
    "to_spark_sql",
]
