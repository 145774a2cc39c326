"""The Modeler: per-outcome-component models of E[outcome | context, action]."""

from typing import TYPE_CHECKING, Any

from drivetrain.model._features import FeatureEncoder
from drivetrain.model._learners import ComponentLearner
from drivetrain.model._modeler import OutcomeModel

if TYPE_CHECKING:
    from drivetrain.model._compiled import CompiledModel

__all__ = ["CompiledModel", "ComponentLearner", "FeatureEncoder", "OutcomeModel"]


def __getattr__(name: str) -> Any:
    """:class:`CompiledModel` loads on first use, so that only the decision service, which uses it, imports
    its native compiler (numba)."""
    if name == "CompiledModel":
        from drivetrain.model._compiled import CompiledModel

        return CompiledModel
    raise AttributeError(f"module 'drivetrain.model' has no attribute {name!r}")
