"""drivetrain: decision-making data products the Drivetrain way.

The curated public API. Names load on first use, so ``import drivetrain`` (and the command line) stays
fast and a user of the spec alone does not import LightGBM or DuckDB.

>>> from importlib.resources import files
>>> import drivetrain
>>> drivetrain.load_spec(files("drivetrain.twin") / "nboo.yaml").control.id
'none-0-none'
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # spec
    "Spec": "drivetrain.spec",
    "load_spec": "drivetrain.spec",
    "parse_spec": "drivetrain.spec",
    "compile_formula": "drivetrain.spec",
    # time
    "Clock": "drivetrain.clock",
    "SystemClock": "drivetrain.clock",
    "SimulatedClock": "drivetrain.clock",
    # data
    "Store": "drivetrain.data",
    "ParquetStore": "drivetrain.data",
    "MemoryStore": "drivetrain.data",
    "open_store": "drivetrain.data",
    "read_rows": "drivetrain.data",
    "ingest_decisions": "drivetrain.data",
    "ingest_outcomes": "drivetrain.data",
    "training_table": "drivetrain.data",
    # the assembly line
    "OutcomeModel": "drivetrain.model",
    "evaluate_policy": "drivetrain.simulate",
    "AssignmentProblem": "drivetrain.optimize",
    "LagrangianOptimizer": "drivetrain.optimize",
    "ExactOptimizer": "drivetrain.optimize",
    "Policy": "drivetrain.policy",
    "fit_model": "drivetrain.assembly",
    "plan_policy": "drivetrain.assembly",
    "evaluate_on_logs": "drivetrain.assembly",
    "LogEvaluation": "drivetrain.assembly",
    "fixed_action": "drivetrain.assembly",
    # the report
    "write_report": "drivetrain.report",
    # the twin
    "NBOOTwin": "drivetrain.twin",
    "Scenario": "drivetrain.twin",
    # errors
    "DrivetrainError": "drivetrain.errors",
    "SpecError": "drivetrain.errors",
    "DataError": "drivetrain.errors",
    "UsageError": "drivetrain.errors",
    "InfeasibleError": "drivetrain.errors",
    "ArtifactError": "drivetrain.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'drivetrain' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
