"""Retraining on the product's own logs, and when to do it.

The candidate learns from every mature decision in its window, whichever version logged it and in
whichever arm (policy, exploration, holdout, fallback, canary), each with its logged propensity: the
training table is the store's outcome join as of T, so a decision appears once whatever version made it,
and an immature one not at all until it matures. Units of the evaluation slice (a salted hash of the
unit id, ``adaptation.evaluation_share``) never train: their randomized decisions are the frozen
evaluation set, and their recent decisions the off-policy comparison's, on which no candidate was fitted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from drivetrain.clock import as_utc
from drivetrain.data import Store, training_table
from drivetrain.spec import Spec, holdout_draw

__all__ = ["Change", "TriggerReport", "Window", "evaluation_units", "judge_triggers", "training_window"]

#: The parts of the spec a fitted model and its plan depend on (monitoring, serving, adaptation do not).
def evaluation_units(spec: Spec, unit_ids: Any) -> np.ndarray:
    """Whether each unit is in the evaluation slice (never trained on); shape (n,) bool."""
    share = spec.model.adaptation.evaluation_share
    if share <= 0:
        return np.zeros(len(unit_ids), dtype=bool)
    return holdout_draw(f"{spec.model.experimentation.salt}\x1fevaluation", unit_ids) < share


@dataclass(frozen=True)
class Change:
    """A cohort value whose effects changed: its decisions made before ``since`` answer for effects that no
    longer hold, so no candidate learns from them and no gate judges by them (a guard's finding)."""

    cohort: str
    value: str
    since: datetime

    def stale(self, frame: pd.DataFrame) -> np.ndarray:
        """Which rows of ``frame`` (with ``decided_at`` and the cohort's column) are stale; shape (n,) bool."""
        if self.cohort not in frame.columns or frame.empty:
            return np.zeros(len(frame), dtype=bool)
        decided = pd.to_datetime(frame["decided_at"], utc=True)
        return ((frame[self.cohort].astype(str) == self.value) & (decided < pd.Timestamp(self.since))).to_numpy()


@dataclass(frozen=True)
class Window:
    """The mature decisions of a window as of ``as_of``: ``train`` (every arm and version, evaluation
    units out) and ``evaluation`` (the evaluation units' decisions), with their counts."""

    as_of: datetime
    start: datetime | None
    train: pd.DataFrame
    evaluation: pd.DataFrame
    immature: int
    rows_by_version: Mapping[str, int] = field(default_factory=dict)
    stale: int = 0


def training_window(store: Store, as_of: datetime, *, since: datetime | None = None, changes: Sequence[Change] = ()) -> Window:
    """The outcome join as of ``as_of`` restricted to decisions made at or after ``since`` (the spec's
    ``adaptation.window`` before ``as_of`` when None), less the rows each of ``changes`` makes stale (their
    count is ``stale``), split into training and evaluation units."""
    spec = store.spec
    as_of = as_utc(as_of, name="as_of")
    span = spec.model.adaptation.window
    start = since if since is not None else (as_of - span if span is not None else None)
    table, report = training_table(store, as_of, since=start)
    frame = table.to_pandas()
    stale = np.zeros(len(frame), dtype=bool)
    for change in changes:
        stale |= change.stale(frame)
    frame = frame[~stale].reset_index(drop=True)
    held = evaluation_units(spec, frame["unit_id"].to_numpy()) if len(frame) else np.zeros(0, dtype=bool)
    train = frame[~held].reset_index(drop=True)
    counts = train["policy_version"].value_counts().sort_index() if len(train) else pd.Series(dtype=np.int64)
    return Window(as_of, start, train, frame[held].reset_index(drop=True), report.immature,
                  {str(k): int(v) for k, v in counts.items()}, int(stale.sum()))


@dataclass(frozen=True)
class TriggerReport:
    """Whether to retrain as of ``as_of``, and every reason that fired (empty when none did), with the
    figures each was judged on."""

    as_of: datetime
    last_fit: datetime | None
    reasons: tuple[str, ...]
    figures: Mapping[str, float]

    @property
    def fired(self) -> bool:
        return bool(self.reasons)


def judge_triggers(store: Store, as_of: datetime, last_fit: datetime | None) -> TriggerReport:
    """Judge the spec's retraining triggers on the store as of ``as_of`` (rows received by then): newly
    matured decisions since ``last_fit``, drift alerts and north-star or guardrail alerts fired since
    then, and the staleness of the last fit. Never a bare schedule: staleness is a backstop."""
    spec = store.spec
    settings = spec.model.adaptation
    as_of = as_utc(as_of, name="as_of")
    if last_fit is None:
        return TriggerReport(as_of, None, ("no version fitted yet",), {})
    wait_us = int((spec.horizon + spec.settle).total_seconds() * 1_000_000)
    t_us, f_us = int(as_of.timestamp() * 1_000_000), int(last_fit.timestamp() * 1_000_000)
    # mature by T and not part of the last fit's table (not mature by then, or not received by then)
    matured = store.arrow(f"""
        SELECT COUNT(*) AS n FROM decisions
        WHERE epoch_us(received_at) <= {t_us} AND epoch_us(decided_at) + {wait_us} <= {t_us}
          AND (epoch_us(decided_at) + {wait_us} > {f_us} OR epoch_us(received_at) > {f_us})""").column("n")[0].as_py()
    alerts = store.query(f"""
        SELECT kind, rule, subject FROM alerts
        WHERE epoch_us(fired_at) > {f_us} AND epoch_us(fired_at) <= {t_us} ORDER BY fired_at, rule, subject""")
    stale = (as_of - last_fit).total_seconds() / 86400
    reasons = []
    if settings.min_new_decisions and matured >= settings.min_new_decisions:
        reasons.append(f"{matured} decisions matured since the last fit (at least {settings.min_new_decisions})")
    drift = alerts[alerts["kind"] == "drift"]
    if settings.retrain_on_drift and len(drift):
        reasons.append(f"{len(drift)} drift alerts since the last fit ({', '.join(sorted(set(drift['subject'].astype(str))))[:200]})")
    watched = alerts[alerts["kind"].isin(["guardrail", "metric_drop"])]
    if settings.retrain_on_alert and len(watched):
        reasons.append(f"{len(watched)} north-star or guardrail alerts since the last fit "
                       f"({', '.join(sorted(set(watched['rule'] + ': ' + watched['subject'].astype(str))))[:200]})")
    if settings.max_staleness is not None and as_of - last_fit >= settings.max_staleness:
        reasons.append(f"the last fit is {stale:.1f} days old (at most {settings.max_staleness.total_seconds() / 86400:g})")
    figures = {"matured_since_fit": float(matured), "drift_alerts": float(len(drift)), "alerts": float(len(watched)),
               "days_since_fit": stale}
    return TriggerReport(as_of, last_fit, tuple(reasons), figures)
