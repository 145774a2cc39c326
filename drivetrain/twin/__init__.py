"""Digital twins with known ground truth, for the demo, the tests and the benchmarks."""

from drivetrain.twin._nboo import COMPONENTS, NBOOTwin, Scenario, Truth, nboo_spec, nboo_spec_yaml
from drivetrain.twin._oracle import OracleSolution, best_single_action, oracle, oracle_under_budget

__all__ = [
    "COMPONENTS",
    "NBOOTwin",
    "OracleSolution",
    "Scenario",
    "Truth",
    "best_single_action",
    "nboo_spec",
    "nboo_spec_yaml",
    "oracle",
    "oracle_under_budget",
]
