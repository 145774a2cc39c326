"""Event tables, the store, contract checks at ingest, and the outcome join."""

from drivetrain.data._baselines import GRID_CELLS, QUANTILES, grid_cell, psi_cell_bins, reference_statistics, write_baselines
from drivetrain.data._ingest import (
    NULL_TEXT,
    IngestReport,
    attribute_pending,
    check_context,
    check_contexts,
    hash_personal,
    ingest_decisions,
    ingest_outcomes,
)
from drivetrain.data._join import JoinReport, training_table
from drivetrain.data._read import RawRows, read_rows
from drivetrain.data._schemas import (
    ALERT_SCHEMA,
    ASSIGNMENTS,
    OUTCOME_SCHEMA,
    QUARANTINE_SCHEMA,
    decision_schema,
    diagnostic_fields,
)
from drivetrain.data._store import TABLES, MemoryStore, ParquetStore, Store, open_store
from drivetrain.data._summary import StoreSummary, summarize

__all__ = [
    "ALERT_SCHEMA",
    "ASSIGNMENTS",
    "NULL_TEXT",
    "GRID_CELLS",
    "QUANTILES",
    "grid_cell",
    "psi_cell_bins",
    "reference_statistics",
    "write_baselines",
    "OUTCOME_SCHEMA",
    "QUARANTINE_SCHEMA",
    "TABLES",
    "IngestReport",
    "JoinReport",
    "MemoryStore",
    "ParquetStore",
    "RawRows",
    "Store",
    "StoreSummary",
    "attribute_pending",
    "check_context",
    "check_contexts",
    "decision_schema",
    "diagnostic_fields",
    "hash_personal",
    "ingest_decisions",
    "ingest_outcomes",
    "open_store",
    "read_rows",
    "summarize",
    "training_table",
]
