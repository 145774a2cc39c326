"""The outcome join: each mature decision with the aggregate of each outcome component in its horizon.

As of time T, only rows received at or before T exist. A decision is mature when
``decided_at + horizon + settle <= T`` (``settle`` is the spec's allowance for outcomes that arrive after
they occur; 0 gives docs/architecture.md's rule). Immature decisions are counted, never given zero outcomes.
An outcome counts for its decision when ``decided_at <= occurred_at < decided_at + horizon``; outcomes
outside that window are counted as out-of-window. Replaying with the same T and store gives the same table.

The SQL is a portable subset (joins, CASE, SUM/MAX/COUNT): it runs on DuckDB here and transpiles to Spark.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from drivetrain.clock import as_utc
from drivetrain.data._schemas import decision_schema
from drivetrain.data._store import Store

__all__ = ["JoinReport", "training_table"]


@dataclass(frozen=True)
class JoinReport:
    """Counts behind a training table as of ``as_of``."""

    as_of: datetime
    decisions: int
    mature: int
    immature: int
    outcomes_joined: int
    outcomes_out_of_window: int
    outcomes_of_immature: int
    outcomes_waiting: int
    received_later: int = 0  # decisions the store received after ``as_of``: not in any figure as of then

    def summary(self) -> str:
        later = (f"; {self.received_later} more decisions were received after then (`received_at`, the ingest time when a file"
                 " has none), a later as-of sees them") if self.received_later else ""
        return (
            f"as of {self.as_of.isoformat()}: {self.decisions} decisions = {self.mature} mature + {self.immature} immature;"
            f" outcomes joined {self.outcomes_joined}, outside the horizon {self.outcomes_out_of_window},"
            f" of immature decisions {self.outcomes_of_immature}, waiting for a decision {self.outcomes_waiting}{later}"
        )


_AGG = {"sum": "SUM({v})", "max": "MAX({v})", "count": "COUNT({v})", "last": "MAX_BY({v}, o.occurred_at)"}


def training_table(store: Store, as_of: datetime, *, since: datetime | None = None) -> tuple[pa.Table, JoinReport]:
    """Mature decisions as of ``as_of`` with one column per outcome component (0 when none occurred);
    with ``since``, only the decisions made at or after it (the report's counts of decisions and of their
    outcomes then refer to those alone)."""
    spec = store.spec
    as_of = as_utc(as_of, name="as_of")
    window = f" AND epoch_us(decided_at) >= {int(as_utc(since, name='since').timestamp() * 1_000_000)}" if since is not None else ""
    horizon_us = int(spec.horizon.total_seconds() * 1_000_000)
    wait_us = int((spec.horizon + spec.settle).total_seconds() * 1_000_000)
    t_us = int(as_of.timestamp() * 1_000_000)
    aggs = ",\n               ".join(
        _AGG[o.aggregate].format(v=f"CASE WHEN o.component = '{name}' THEN o.value END") + f" AS {name}"
        for name, o in spec.model.outcomes.items()
    )
    coalesced = ", ".join(f"COALESCE(a.{name}, 0) AS {name}" for name in spec.outcomes)
    columns = ", ".join(f"d.{c}" for c in decision_schema(spec, diagnostics=False).names)
    base = f"""
        WITH d AS (
            SELECT *, epoch_us(decided_at) AS t0,
                   CASE WHEN epoch_us(decided_at) + {wait_us} <= {t_us} THEN 1 ELSE 0 END AS mature
            FROM decisions WHERE epoch_us(received_at) <= {t_us}{window}
        ),
        o AS (
            SELECT o.*, d.t0, d.mature,
                   CASE WHEN epoch_us(o.occurred_at) >= d.t0 AND epoch_us(o.occurred_at) < d.t0 + {horizon_us}
                        THEN 1 ELSE 0 END AS in_window
            FROM outcomes o JOIN d ON o.request_id = d.request_id
            WHERE epoch_us(o.received_at) <= {t_us}
        )"""
    table = store.arrow(
        f"""{base},
        a AS (
            SELECT o.request_id,
               {aggs}
            FROM o WHERE o.mature = 1 AND o.in_window = 1
            GROUP BY o.request_id
        )
        SELECT {columns}, {coalesced}
        FROM d LEFT JOIN a ON a.request_id = d.request_id
        WHERE d.mature = 1
        ORDER BY d.decided_at, d.request_id
        """
    )
    counts = store.arrow(
        f"""{base}
        SELECT
            (SELECT COUNT(*) FROM d) AS decisions,
            (SELECT COUNT(*) FROM d WHERE mature = 1) AS mature,
            (SELECT COUNT(*) FROM o WHERE mature = 1 AND in_window = 1) AS joined,
            (SELECT COUNT(*) FROM o WHERE mature = 1 AND in_window = 0) AS out_of_window,
            (SELECT COUNT(*) FROM o WHERE mature = 0) AS of_immature,
            (SELECT COUNT(*) FROM outcomes_pending WHERE epoch_us(received_at) <= {t_us}) AS waiting,
            (SELECT COUNT(*) FROM decisions WHERE epoch_us(received_at) > {t_us}{window}) AS later
        """
    ).to_pylist()[0]
    report = JoinReport(
        as_of=as_of,
        decisions=int(counts["decisions"]),
        mature=int(counts["mature"]),
        immature=int(counts["decisions"]) - int(counts["mature"]),
        outcomes_joined=int(counts["joined"]),
        outcomes_out_of_window=int(counts["out_of_window"]),
        outcomes_of_immature=int(counts["of_immature"]),
        outcomes_waiting=int(counts["waiting"]),
        received_later=int(counts["later"]),
    )
    return table, report
