"""What is in a store: counts, actions, propensities, outcome rates per action, quarantine."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from drivetrain.data._join import JoinReport, training_table
from drivetrain.data._store import Store

__all__ = ["StoreSummary", "summarize"]


@dataclass(frozen=True)
class StoreSummary:
    """``actions``: one row per action (decisions, propensity min/mean/max, mean of each outcome over
    mature decisions); ``quarantine``: rows per (table, reason)."""

    tables: dict[str, int]
    actions: pd.DataFrame
    quarantine: pd.DataFrame
    join: JoinReport


def summarize(store: Store, as_of: datetime) -> StoreSummary:
    spec = store.spec
    tables = {t: store.count(t) for t in ("decisions", "outcomes", "outcomes_pending", "quarantine")}
    logged = store.query(
        """
        SELECT action_id, COUNT(*) AS decisions, MIN(propensity) AS p_min, AVG(propensity) AS p_mean,
               MAX(propensity) AS p_max, SUM(CASE WHEN assignment = 'holdout' THEN 1 ELSE 0 END) AS holdout
        FROM decisions GROUP BY action_id
        """
    )
    mature, report = training_table(store, as_of)
    frame = mature.select(["action_id", *spec.outcomes]).to_pandas()
    rates = frame.groupby("action_id").agg(mature=("action_id", "size"), **{o: (o, "mean") for o in spec.outcomes})
    order = pd.DataFrame({"action_id": list(spec.action_space.ids)})
    actions = order.merge(logged, on="action_id", how="left").merge(rates.reset_index(), on="action_id", how="left")
    actions[["decisions", "holdout", "mature"]] = actions[["decisions", "holdout", "mature"]].fillna(0).astype(int)
    quarantine = store.query(
        """
        SELECT table_name, regexp_replace(reason, ', got .*$', '') AS rule, COUNT(*) AS rows
        FROM quarantine GROUP BY ALL ORDER BY rows DESC
        """
    )
    return StoreSummary(tables=tables, actions=actions, quarantine=quarantine, join=report)
