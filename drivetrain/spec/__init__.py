"""The spec: objective, outcomes, levers, constraints, guardrails and the context contract of a data product."""

from drivetrain.spec._actions import Action, ActionSpace
from drivetrain.spec._apply import formula_on, formula_spread
from drivetrain.spec._constraints import (
    MeanTerm,
    check_constraint_names,
    cohort_values,
    constraint_names,
    mean_constraints,
)
from drivetrain.spec._definition import SOURCE_TABLES, definition_sql, point_in_time_sql
from drivetrain.spec._formula import FUNCTIONS, Formula, compile_formula
from drivetrain.spec._load import MODEL_PARTS, Spec, load_spec, model_parts, parse_spec, read_yaml, with_guardrails_by
from drivetrain.spec._model import AlertRule, Feature, SpecModel, format_duration, parse_duration
from drivetrain.spec._randomization import canary_units, failed_propensity, holdout_draw, in_holdout, serving_propensity

__all__ = [
    "FUNCTIONS",
    "MODEL_PARTS",
    "SOURCE_TABLES",
    "Action",
    "ActionSpace",
    "AlertRule",
    "Feature",
    "Formula",
    "MeanTerm",
    "Spec",
    "SpecModel",
    "canary_units",
    "check_constraint_names",
    "cohort_values",
    "compile_formula",
    "constraint_names",
    "definition_sql",
    "failed_propensity",
    "format_duration",
    "formula_on",
    "formula_spread",
    "holdout_draw",
    "in_holdout",
    "load_spec",
    "mean_constraints",
    "model_parts",
    "parse_duration",
    "parse_spec",
    "point_in_time_sql",
    "read_yaml",
    "serving_propensity",
    "with_guardrails_by",
]
