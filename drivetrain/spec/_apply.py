"""A spec's formulas on per-(unit, action) arrays: the one way every stage evaluates an objective,
budget or guardrail on predicted or logged outcome components."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from drivetrain.spec._formula import Formula
    from drivetrain.spec._load import Spec

__all__ = ["formula_on", "formula_spread"]


def formula_on(spec: Spec, formula: Formula, components: Mapping[str, np.ndarray], contexts: Any,
               lever_index: np.ndarray | None = None) -> np.ndarray:
    """``formula`` on outcome ``components`` of shape (n, K) (or (n, 1) for logged rows), with each lever
    broadcast per action (1, K) and each context feature per unit (n, 1); ``contexts`` maps features to
    (n,) columns (a DataFrame works, ``None`` when the formula reads none). With ``lever_index`` (n,) the
    levers are those of each unit's own action, (n, 1): the realized value of logged decisions.

    >>> from drivetrain.twin import NBOOTwin
    >>> spec = NBOOTwin(seed=1).spec
    >>> cost = np.zeros((2, len(spec.action_space)))
    >>> formula_on(spec, spec.budgets[0][1], {"promo_cost": cost}, None).shape
    (2, 11)
    """
    columns: dict[str, Any] = dict(components)
    if lever_index is None:
        columns.update({name: col[None, :] for name, col in spec.action_space.lever_columns().items()})
    else:
        columns.update({name: col[:, None] for name, col in spec.action_space.lever_columns(lever_index).items()})
    if contexts is not None:
        for name in formula.variables:
            if name in spec.features and name in contexts:
                columns[name] = np.asarray(contexts[name])[:, None]
    return np.asarray(formula(columns), dtype=np.float64)


def formula_spread(spec: Spec, formula: Formula, folds: Sequence[Mapping[str, np.ndarray]], contexts: Any) -> np.ndarray:
    """Uncertainty of a formula of the components: its spread across the cross-fitted models'
    predictions (``OutcomeModel.predict_folds``; zero with one model). The formula is evaluated on each
    fold's components, so that correlated components (a profit minus a cost) and constants (a lever's
    value) count as they should."""
    values = [np.asarray(formula_on(spec, formula, f, contexts), dtype=np.float64) for f in folds]
    return np.std(values, axis=0, ddof=1) if len(values) > 1 else np.zeros_like(values[0])
