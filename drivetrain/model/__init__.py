"""The Modeler: per-outcome-component models of E[outcome | context, action]."""

from drivetrain.model._compiled import CompiledModel
from drivetrain.model._features import FeatureEncoder
from drivetrain.model._learners import ComponentLearner
from drivetrain.model._modeler import OutcomeModel

__all__ = ["CompiledModel", "ComponentLearner", "FeatureEncoder", "OutcomeModel"]
