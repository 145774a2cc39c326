"""Event tables, the store, the context contract, the personal-data hash, ingest with its quarantine and
attribution, undoing an ingest, reading and exporting the quarantine, and the outcome join."""

from drivetrain.data._attribution import attribute_pending
from drivetrain.data._baselines import (
    GRID_CELLS,
    QUANTILES,
    grid_cell,
    psi_cell_bins,
    reference_statistics,
    write_baselines,
)
from drivetrain.data._context import NULL_TEXT, check_context, check_contexts
from drivetrain.data._definitions import ParityReport, derived_features, measure_parity, rebuild_features
from drivetrain.data._ingest import IngestReport, OutcomeCheck, check_outcomes, ingest_decisions, ingest_outcomes
from drivetrain.data._ingest_log import UndoReport, ingest_history, new_ingest_id, undo_ingest
from drivetrain.data._join import JoinReport, training_table
from drivetrain.data._personal import (
    PII_KEY_ENV,
    PSEUDONYM_PREFIX,
    PersonalKey,
    is_pseudonym,
    personal_key,
    pseudonymize,
)
from drivetrain.data._personal_check import PersonalRehearsal, rehearse_personal
from drivetrain.data._quarantine import RELEASE_COLUMNS
from drivetrain.data._quarantine_export import (
    EXPORT_FORMATS,
    export_frame,
    export_quarantine,
    quarantine_counts,
    quarantine_rows,
)
from drivetrain.data._read import RawRows, read_rows
from drivetrain.data._schemas import (
    ALERT_SCHEMA,
    ASSIGNMENTS,
    INGEST_ID,
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
    "EXPORT_FORMATS",
    "INGEST_ID",
    "RELEASE_COLUMNS",
    "UndoReport",
    "export_frame",
    "export_quarantine",
    "ingest_history",
    "new_ingest_id",
    "quarantine_counts",
    "quarantine_rows",
    "undo_ingest",
    "NULL_TEXT",
    "PII_KEY_ENV",
    "PSEUDONYM_PREFIX",
    "PersonalKey",
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
    "OutcomeCheck",
    "check_outcomes",
    "ParityReport",
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
    "derived_features",
    "diagnostic_fields",
    "is_pseudonym",
    "PersonalRehearsal",
    "personal_key",
    "rehearse_personal",
    "pseudonymize",
    "ingest_decisions",
    "ingest_outcomes",
    "measure_parity",
    "open_store",
    "read_rows",
    "rebuild_features",
    "summarize",
    "training_table",
]
