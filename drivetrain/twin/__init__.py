"""Digital twins with known ground truth, for the demo, the tests and the benchmarks."""

from drivetrain.twin._nboo import COMPONENTS, SPEC_PATH, NBOOTwin, Scenario, Truth, nboo_spec
from drivetrain.twin._oracle import OracleSolution, best_single_action, oracle, oracle_under_budget

__all__ = [
    "COMPONENTS",
    "SPEC_PATH",
    "NBOOTwin",
    "OracleSolution",
    "Scenario",
    "Truth",
    "best_single_action",
    "nboo_spec",
    "oracle",
    "oracle_under_budget",
]
