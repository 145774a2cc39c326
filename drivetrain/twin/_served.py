"""A derived feature served online, for the contract checks: ``offers_30d``, the offers a user got in the
30 days before a decision, defined in SQL over the decisions table and computed online by the twin's
serving side from the decisions it made.

``online_window_days`` other than 30 seeds a training/serving skew: the serving side counts over another
window than the definition says, which is what an online feature pipeline that drifted from its offline
definition looks like. The twin knows the truth: with the right window the served values equal the
definition's exactly.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import yaml

from drivetrain.errors import UsageError
from drivetrain.spec import Spec, parse_spec, read_yaml
from drivetrain.twin._nboo import NBOOTwin, nboo_spec_yaml

__all__ = ["OFFERS_FEATURE", "log_served_days", "nboo_served_spec", "nboo_served_spec_yaml", "offers_definition"]

OFFERS_FEATURE = "offers_30d"


def offers_definition(window_days: int = 30) -> str:
    """The definition of ``offers_30d``, counting over ``window_days`` days."""
    return ("SELECT count(*) FROM decisions AS d WHERE d.unit_id = point.unit_id AND d.offer_type <> 'none'"
            f" AND d.decided_at >= point.as_of - INTERVAL {int(window_days)} DAY")


def nboo_served_spec_yaml(horizon_days: int = 30) -> str:
    """The NBOO spec with the derived feature ``offers_30d`` (owner ``offers-platform``) in its context."""
    raw = read_yaml(nboo_spec_yaml(horizon_days))
    raw["context"]["features"][OFFERS_FEATURE] = {
        "type": "integer", "min": 0, "max": 10000, "owner": "offers-platform", "version": "1",
        "description": "offers (any action but none) the user got in the 30 days before the decision",
        "definition": offers_definition(30),
    }
    return str(yaml.safe_dump(raw, sort_keys=False))


def nboo_served_spec(horizon_days: int = 30) -> Spec:
    return parse_spec(read_yaml(nboo_served_spec_yaml(horizon_days)), source=f"nboo with {OFFERS_FEATURE}")


def _served_offers(decisions: pd.DataFrame, history: pd.DataFrame, window: timedelta) -> np.ndarray:
    """Per decision, the earlier offers to its unit decided within ``window`` before it and received by then."""
    offers = history.loc[history["offer_type"] != "none", ["unit_id", "decided_at", "received_at"]]
    points = pd.DataFrame({"row": np.arange(len(decisions)), "unit_id": decisions["unit_id"].to_numpy(),
                           "t": decisions["decided_at"].to_numpy()})
    pairs = points.merge(offers, on="unit_id", how="inner")
    known = (pairs["decided_at"] < pairs["t"]) & (pairs["received_at"] <= pairs["t"]) & (pairs["decided_at"] >= pairs["t"] - window)
    counts = pairs.loc[known, "row"].value_counts()
    out = np.zeros(len(decisions), dtype=np.int64)
    out[counts.index.to_numpy(dtype=np.int64)] = counts.to_numpy(dtype=np.int64)
    return out


def log_served_days(twin: NBOOTwin, users: int, days: int, *, online_window_days: int = 30,
                    first_day: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same ``users`` decided on each of ``days`` days from ``first_day``, with ``offers_30d`` as the
    serving side computes it (over ``online_window_days``); returns (decisions, outcomes) for the spec of
    :func:`nboo_served_spec` with the twin's horizon."""
    if days < 1 or online_window_days < 1:
        raise UsageError(f"`days` and `online_window_days` must be >= 1, got {days} and {online_window_days}")
    spec = nboo_served_spec(twin.horizon_days)
    frame = twin.population(users)
    window = timedelta(days=online_window_days)
    decided: list[pd.DataFrame] = []
    outcomes: list[pd.DataFrame] = []
    for day in range(first_day, first_day + days):
        d, o = twin.log(frame, day=day)
        for column in ("decided_at", "received_at"):
            d[column] = pd.to_datetime(d[column], utc=True).dt.floor("us")
        history = pd.concat(decided, ignore_index=True) if decided else d.iloc[:0]
        d[OFFERS_FEATURE] = _served_offers(d, history, window)
        d["feature_version"] = spec.feature_version
        decided.append(d)
        outcomes.append(o)
    return pd.concat(decided, ignore_index=True), pd.concat(outcomes, ignore_index=True)
