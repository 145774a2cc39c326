"""The adaptation loop: retrain on data conditions, gate a candidate, promote or roll back.

* :mod:`registry <drivetrain.adapt._registry>`: versions with lineage, aliases, an append-only history;
* :func:`judge_triggers` and :func:`training_window`: when to retrain and on what;
* the off-line gates (data, regression, off-policy, constraints, serving), then shadow and canary;
* :func:`adapt`: one step of the loop as of T; :func:`promote` and :func:`rollback`: the manual moves;

The wiring of fit, plan and off-line evaluation that the loop uses lives in :mod:`drivetrain.assembly`; the
loop run day by day on a twin, next to its truth, in :mod:`drivetrain.twin_loop` (adaptation must not
know the twin it is judged by).
"""

from drivetrain.adapt._gates import (
    GateResult,
    Paired,
    constraints_gate,
    data_gate,
    off_policy_gate,
    paired_values,
    regression_gate,
    serving_gate,
)
from drivetrain.adapt._live import (
    adjusted_difference,
    canary_check,
    canary_units,
    early_non_inferiority_p,
    planned_decisions,
    serve,
    shadow_check,
)
from drivetrain.adapt._registry import (
    ALIASES,
    STATUSES,
    EmbeddedRegistry,
    Event,
    Lineage,
    MemoryRegistry,
    Registry,
    VersionRecord,
)
from drivetrain.adapt._retrain import (
    Change,
    TriggerReport,
    Window,
    evaluation_units,
    judge_triggers,
    training_window,
)
from drivetrain.adapt._step import (
    FOLDS,
    Candidate,
    StepResult,
    Trainer,
    adapt,
    carried_guards,
    default_trainer,
    fit_candidate,
    frozen_set,
    known_changes,
    offline_gates,
    pace,
    prices_for,
    promote,
    recent_population,
    rollback,
)

__all__ = [
    "ALIASES",
    "FOLDS",
    "STATUSES",
    "Candidate",
    "Change",
    "EmbeddedRegistry",
    "Event",
    "GateResult",
    "Lineage",
    "MemoryRegistry",
    "Paired",
    "Registry",
    "StepResult",
    "Trainer",
    "TriggerReport",
    "VersionRecord",
    "Window",
    "adapt",
    "adjusted_difference",
    "canary_check",
    "canary_units",
    "carried_guards",
    "constraints_gate",
    "data_gate",
    "default_trainer",
    "early_non_inferiority_p",
    "evaluation_units",
    "fit_candidate",
    "frozen_set",
    "judge_triggers",
    "known_changes",
    "off_policy_gate",
    "offline_gates",
    "pace",
    "paired_values",
    "planned_decisions",
    "prices_for",
    "promote",
    "recent_population",
    "regression_gate",
    "rollback",
    "serve",
    "serving_gate",
    "shadow_check",
    "training_window",
]
