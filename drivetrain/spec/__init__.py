"""The spec: objective, outcomes, levers, constraints, guardrails and the context contract of a data product."""

from drivetrain.spec._actions import Action, ActionSpace
from drivetrain.spec._definition import SOURCE_TABLES, definition_sql, point_in_time_sql
from drivetrain.spec._formula import FUNCTIONS, Formula, compile_formula
from drivetrain.spec._load import Spec, load_spec, parse_spec
from drivetrain.spec._model import Feature, SpecModel, format_duration, parse_duration
from drivetrain.spec._randomization import failed_propensity, holdout_draw, in_holdout, serving_propensity

__all__ = [
    "FUNCTIONS",
    "SOURCE_TABLES",
    "Action",
    "ActionSpace",
    "Feature",
    "Formula",
    "Spec",
    "SpecModel",
    "compile_formula",
    "definition_sql",
    "format_duration",
    "failed_propensity",
    "holdout_draw",
    "in_holdout",
    "load_spec",
    "parse_duration",
    "parse_spec",
    "point_in_time_sql",
    "serving_propensity",
]
