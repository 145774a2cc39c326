"""Digital twins with known ground truth, for the demo, the tests and the benchmarks."""

from drivetrain.twin._nboo import COMPONENTS, SPEC_PATH, NBOOTwin, Scenario, Truth, nboo_spec, nboo_spec_yaml
from drivetrain.twin._oracle import OracleSolution, best_single_action, oracle, oracle_under_budget
from drivetrain.twin._served import (
    OFFERS_FEATURE,
    log_served_days,
    nboo_served_spec,
    nboo_served_spec_yaml,
    offers_definition,
)

__all__ = [
    "COMPONENTS",
    "SPEC_PATH",
    "NBOOTwin",
    "OFFERS_FEATURE",
    "OracleSolution",
    "Scenario",
    "Truth",
    "best_single_action",
    "log_served_days",
    "nboo_spec",
    "nboo_served_spec",
    "nboo_served_spec_yaml",
    "nboo_spec_yaml",
    "offers_definition",
    "oracle",
    "oracle_under_budget",
]
