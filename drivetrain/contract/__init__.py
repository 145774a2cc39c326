"""Contracts that hold: versioned feature definitions checked across revisions, online/offline parity,
deterministic backfills, the data contract in the Open Data Contract Standard, and the one-page ML system
contract with its model card and datasheet."""

from drivetrain.contract._backfill import Backfill, backfill, baseline_version
from drivetrain.contract._check import FeatureChange, FeatureCheck, check_features, policies_in_store
from drivetrain.contract._odcs import (
    API_VERSION,
    ContractViolation,
    check_data_contract,
    data_contract,
    validate_data_contract,
)
from drivetrain.contract._reference import reference_store
from drivetrain.contract._revision import load_revision
from drivetrain.contract._system import PolicyFacts, SystemDocuments, policy_facts, system_documents

__all__ = [
    "API_VERSION",
    "ContractViolation",
    "PolicyFacts",
    "SystemDocuments",
    "check_data_contract",
    "policy_facts",
    "system_documents",
    "data_contract",
    "validate_data_contract",
    "Backfill",
    "FeatureChange",
    "FeatureCheck",
    "backfill",
    "baseline_version",
    "check_features",
    "load_revision",
    "policies_in_store",
    "reference_store",
]
