"""The spec: objective, outcomes, levers, constraints, guardrails and the context contract of a data product."""

from drivetrain.spec._actions import Action, ActionSpace
from drivetrain.spec._formula import FUNCTIONS, Formula, compile_formula
from drivetrain.spec._load import MODEL_PARTS, Spec, load_spec, model_parts, parse_spec
from drivetrain.spec._model import SpecModel, format_duration, parse_duration
from drivetrain.spec._randomization import failed_propensity, holdout_draw, in_holdout, serving_propensity

__all__ = [
    "MODEL_PARTS",
    "FUNCTIONS",
    "Action",
    "ActionSpace",
    "Formula",
    "Spec",
    "SpecModel",
    "compile_formula",
    "format_duration",
    "failed_propensity",
    "holdout_draw",
    "in_holdout",
    "load_spec",
    "model_parts",
    "parse_duration",
    "parse_spec",
    "serving_propensity",
]
