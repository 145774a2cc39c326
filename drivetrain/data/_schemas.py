"""Arrow schemas of the store's tables (docs/architecture.md, Contracts; docs/data.md).

``decisions`` and ``outcomes`` depend on the spec (one column per lever and per context feature);
``outcomes_pending`` holds accepted outcomes that no decision claims yet; ``quarantine`` every rejected row.
"""

from __future__ import annotations

import pyarrow as pa

from drivetrain.spec import Spec

__all__ = [
    "ALERT_SCHEMA",
    "ASSIGNMENTS",
    "BASELINE_SCHEMA",
    "INGEST_ID",
    "INGEST_LOG_SCHEMA",
    "RELEASE_SCHEMA",
    "WITH_INGEST_ID",
    "OUTCOME_SCHEMA",
    "PENDING_SCHEMA",
    "QUARANTINE_SCHEMA",
    "TIMESTAMP",
    "decision_schema",
    "diagnostic_fields",
    "feature_type",
]

TIMESTAMP = pa.timestamp("us", tz="UTC")
ASSIGNMENTS = ("policy", "explore", "holdout", "fallback", "canary", "logged")

OUTCOME_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("request_id", pa.string()),
        ("unit_id", pa.string()),
        ("occurred_at", TIMESTAMP),
        ("received_at", TIMESTAMP),
        ("component", pa.string()),
        ("value", pa.float64()),
        ("attribution", pa.string()),
        ("ingested_at", TIMESTAMP),
    ]
)
PENDING_SCHEMA = OUTCOME_SCHEMA
QUARANTINE_SCHEMA = pa.schema(
    [
        ("quarantine_id", pa.string()),
        ("table_name", pa.string()),
        ("source", pa.string()),
        ("row_number", pa.int64()),
        ("row_key", pa.string()),
        ("reason", pa.string()),
        ("quarantined_at", TIMESTAMP),
        ("payload", pa.string()),
    ]
)

#: The id of the ingest that stored a row: the last column of ``decisions``, ``outcomes``,
#: ``outcomes_pending`` and ``quarantine``. Rows stored before ingest ids existed, or appended by code
#: other than an ingest, read it as null: no ingest can undo them.
INGEST_ID = "ingest_id"
WITH_INGEST_ID = ("decisions", "outcomes", "outcomes_pending", "quarantine")

#: One row per ingest (``action`` = ``ingest``) and per undo of one (``action`` = ``undo``).
INGEST_LOG_SCHEMA = pa.schema(
    [
        ("ingest_id", pa.string()),
        ("action", pa.string()),
        ("table_name", pa.string()),
        ("source", pa.string()),
        ("logged_at", TIMESTAMP),
        ("rows_in", pa.int64()),
        ("accepted", pa.int64()),
        ("duplicates", pa.int64()),
        ("quarantined", pa.int64()),
        ("released", pa.int64()),
        ("detail", pa.string()),
    ]
)

#: A quarantined row sent again (its ``quarantine_id`` column named it): ``released`` when it was then
#: stored (accepted, or a duplicate of a stored row), ``superseded`` when it was quarantined again (the
#: new quarantine row carries the new reason).
RELEASE_SCHEMA = pa.schema(
    [
        ("quarantine_id", pa.string()),
        ("table_name", pa.string()),
        ("status", pa.string()),
        ("ingest_id", pa.string()),
        ("released_at", TIMESTAMP),
    ]
)


BASELINE_SCHEMA = pa.schema(
    [
        ("policy_version", pa.string()),
        ("column_name", pa.string()),
        ("role", pa.string()),
        ("kind", pa.string()),
        ("n", pa.int64()),
        ("null_share", pa.float64()),
        ("bin_edges", pa.list_(pa.float64())),
        ("bin_shares", pa.list_(pa.float64())),
        ("categories", pa.list_(pa.string())),
        ("quantiles", pa.list_(pa.float64())),
        ("mean", pa.float64()),
        ("std", pa.float64()),
        ("created_at", TIMESTAMP),
        ("cohort", pa.string()),
        ("cohort_value", pa.string()),
        ("grid_lo", pa.float64()),
        ("grid_hi", pa.float64()),
        ("grid_cells", pa.int64()),
        ("grid_shares", pa.list_(pa.float64())),
    ]
)


ALERT_SCHEMA = pa.schema(
    [
        ("alert_id", pa.string()),
        ("rule", pa.string()),
        ("kind", pa.string()),
        ("subject", pa.string()),
        ("value", pa.float64()),
        ("threshold", pa.float64()),
        ("message", pa.string()),
        ("as_of", TIMESTAMP),
        ("fired_at", TIMESTAMP),
    ]
)


def feature_type(kind: str) -> pa.DataType:
    return {
        "integer": pa.int64(),
        "float": pa.float64(),
        "boolean": pa.bool_(),
        "categorical": pa.string(),
        "string": pa.string(),
    }[kind]


def diagnostic_fields(spec: Spec) -> list[pa.Field]:
    """Optional diagnostic columns of a decision: the predicted objective of every action (``pred__<action>``),
    the chosen action's ``margin`` over the runner-up, why the fallback was used, and the serving latency."""
    fields = [pa.field(f"pred__{a}", pa.float64()) for a in spec.action_space.ids]
    fields += [pa.field("margin", pa.float64()), pa.field("fallback_reason", pa.string()), pa.field("latency_ms", pa.float64())]
    return fields


def decision_schema(spec: Spec, *, diagnostics: bool = True) -> pa.Schema:
    """Columns of the decisions table for ``spec``, in the documented order, diagnostics last (nullable)."""
    fields = [
        ("request_id", pa.string()),
        ("unit_id", pa.string()),
        ("decided_at", TIMESTAMP),
        ("received_at", TIMESTAMP),
        ("policy_version", pa.string()),
        ("action_id", pa.string()),
    ]
    for name, lever in spec.model.levers.items():
        fields.append((name, pa.float64() if lever.type == "numeric" else pa.string()))
    fields += [("propensity", pa.float64()), ("assignment", pa.string())]
    for name, feat in spec.model.context.features.items():  # a personal feature is kept as its pseudonym: text
        fields.append((name, pa.string() if feat.personal else feature_type(feat.type)))
    fields.append(("feature_version", pa.string()))
    schema = pa.schema(fields)
    if diagnostics:
        for field in diagnostic_fields(spec):
            schema = schema.append(field)
    return schema
