"""Spend pacing: the budget's shadow price adjusted day by day so that spend over a period tracks the budget.

A plan prices the budget once, on the population it was planned on. When the population shifts (more
users who buy, say) the same price spends more or less than the budget. The pacer keeps the period's
ledger and sets the price before each day:

* spent so far: each day's served decisions with their predicted cost (the serving model's prediction of
  the budget formula for the logged action), and, once a day's decisions are mature, its observed cost;
  the days not yet observed count at their predicted cost times ``r``, the observed-over-predicted ratio
  of the observed days (1 before any);
* the target per unit for the next day: the budget plus what the period is behind (or less what it is
  ahead), spread over the period's remaining days (at least ``CATCH_UP_DAYS``), kept within ``CATCH_UP`` of the budget;
* the price: the smallest multiplier >= 0 at which the policy's predicted spend as served (exploration
  and holdout included) on the most recent contexts, times ``r``, is at most the target (bisection; the
  spend falls as the price rises).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from drivetrain.clock import as_utc
from drivetrain.data import Store, training_table
from drivetrain.errors import UsageError
from drivetrain.policy import Policy
from drivetrain.spec import Spec, formula_on

__all__ = ["CATCH_UP", "CATCH_UP_DAYS", "RECENT_CONTEXTS", "SpendPacer"]

#: The most recent contexts the price is set on (the last served day's, at most this many).
RECENT_CONTEXTS = 2_000

#: How far from the budget a day's target may go to catch up with the period (a share of the budget).
CATCH_UP = 0.25
#: The fewest days a shortfall or excess is spread over (a smooth price near a period's end).
CATCH_UP_DAYS = 7


@dataclass
class _Day:
    units: int
    predicted: float
    observed: float | None = None


@dataclass
class SpendPacer:
    """Paces the spec's first budget (or ``budget``, by name) over periods of ``period_days`` days, the
    first starting on day ``origin``."""

    spec: Spec
    period_days: int = 28
    budget: str | None = None
    origin: int = 0
    days: dict[int, _Day] = field(default_factory=dict)
    #: After :meth:`fill_from_store`: per day (as text) and version, the count of its decisions and their
    #: predicted cost (a sum), the ``known`` a later fill may reuse.
    predicted_by_version: dict[str, dict[str, tuple[int, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [b.name for b, _ in self.spec.budgets]
        if not names:
            raise UsageError("spend pacing needs a budget in the spec's constraints, got none")
        name = self.budget or names[0]
        if name not in names:
            raise UsageError(f"`budget` must name one of the spec's budgets {names}, got {name!r}")
        self.budget = name
        limit, formula = next((b, f) for b, f in self.spec.budgets if b.name == name)
        self.limit = float(limit.max_per_unit)
        self.formula = formula
        if self.period_days < 1:
            raise UsageError(f"`period_days` must be at least 1, got {self.period_days}")

    # ------------------------------------------------------------------ the ledger
    def cost(self, policy: Policy, contexts: pd.DataFrame, components: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """The serving model's predicted cost of every (unit, action), (n, K); without ``components`` (the
        model's predictions for ``contexts``) only the components the budget's formula reads are predicted."""
        if components is None:
            read = [c for c in self.spec.outcomes if c in self.formula.variables]
            components = policy.model.predict_outcomes(contexts, components=read)
        return np.broadcast_to(np.asarray(formula_on(self.spec, self.formula, components, contexts), dtype=np.float64),
                               (len(contexts), len(self.spec.action_space)))

    def record(self, day: int, units: int, predicted: float) -> None:
        """A served day: its number of units and the predicted cost of the actions they got (a sum)."""
        self.days[day] = _Day(int(units), float(predicted))

    def observe(self, day: int, observed: float) -> None:
        """The observed cost (a sum) of a recorded day's decisions, once they are mature."""
        if day not in self.days:
            raise UsageError(f"`day` must be a recorded day, got {day} (recorded: {sorted(self.days)[-3:]})")
        self.days[day].observed = float(observed)

    def ratio(self) -> float:
        """Observed over predicted cost on the observed days (1 before any), within [0.5, 2]."""
        seen = [d for d in self.days.values() if d.observed is not None]
        predicted = sum(d.predicted for d in seen)
        if not seen or predicted <= 0:
            return 1.0
        return float(np.clip(sum(d.observed or 0.0 for d in seen) / predicted, 0.5, 2.0))

    def target(self, day: int, units: int) -> float:
        """The spend per unit to aim at on ``day`` for ``units`` expected units."""
        start = self.period_start(day)
        past = [d for k, d in self.days.items() if start <= k < day]
        r = self.ratio()
        spent = sum(d.observed if d.observed is not None else r * d.predicted for d in past)
        behind = self.limit * sum(d.units for d in past) - spent
        remaining = max(start + self.period_days - day, min(CATCH_UP_DAYS, self.period_days))
        return float(np.clip(self.limit + behind / (max(units, 1) * remaining), (1 - CATCH_UP) * self.limit, (1 + CATCH_UP) * self.limit))

    def period_start(self, day: int) -> int:
        """The first day of the period ``day`` falls in."""
        return self.origin + (day - self.origin) // self.period_days * self.period_days

    # ------------------------------------------------------------------ the ledger from a store
    def fill_from_store(self, store: Store, as_of: datetime, *, start: datetime, policy_of: Callable[[str], Policy],
                        known: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> pd.DataFrame:
        """Record the ledger of the days before ``as_of`` as the store holds it: day ``k`` (counted from
        ``origin``) is the UTC day that begins ``k - origin`` days after ``start``. Each day from the period
        before the current one on is recorded with its decisions (those received by ``as_of``) and the
        predicted cost of their logged actions by the model of the version that decided
        (``policy_of(version)``); a day whose decisions are all mature is observed, when the budget's formula
        reads outcomes only, at the realized formula of its mature decisions. Returns the last served day's
        decisions (at most :data:`RECENT_CONTEXTS`), the contexts a price is set on.

        ``known`` is an earlier ledger (:attr:`predicted_by_version` of a pacer filled before, for versions
        whose model has not changed since): a day's decisions by a version whose count is the same there
        are the same decisions, since a store only adds decisions, so their predicted cost is taken from it
        instead of predicted again. With it a daily step predicts the new day's decisions alone rather than
        two periods of them."""
        as_of = as_utc(as_of, name="as_of")
        start = as_utc(start, name="start")
        spec = self.spec
        today = self.origin + int((as_of - start) // timedelta(days=1))
        first = max(self.origin, self.period_start(today) - self.period_days)
        t = [int((start + timedelta(days=k - self.origin)).timestamp() * 1_000_000) for k in (first, today)]
        day_of = f"{self.origin} + (epoch_us(decided_at) - {int(start.timestamp() * 1_000_000)}) // 86400000000"
        window = (f"epoch_us(decided_at) >= {t[0]} AND epoch_us(decided_at) < {t[1]} "
                  f"AND epoch_us(received_at) <= {int(as_of.timestamp() * 1_000_000)}")
        counts = store.query(f"SELECT {day_of} AS day, policy_version, COUNT(*) AS n FROM decisions WHERE {window} GROUP BY 1, 2")
        if counts.empty:
            return pd.DataFrame()
        groups = {(int(k), str(v)): int(n) for k, v, n in zip(counts["day"], counts["policy_version"], counts["n"], strict=True)}
        predicted: dict[tuple[int, str], float] = {}  # the predicted cost (a sum) of each day's decisions by each version
        for (k, version), n in groups.items():
            entry = (known or {}).get(str(k), {}).get(version)
            if entry is not None and int(entry[0]) == n:
                predicted[(k, version)] = float(entry[1])
        last = max(k for k, _ in groups)
        fetch = sorted({k for k, v in groups if (k, v) not in predicted} | {last})
        features = ", ".join(f'"{c}"' for c in spec.features)
        decided = store.query(
            f"SELECT request_id, unit_id, policy_version, action_id, {day_of} AS day, {features} FROM decisions "
            f"WHERE {window} AND {day_of} IN ({', '.join(map(str, fetch))}) ORDER BY decided_at, request_id")
        action = spec.action_space.indices(decided["action_id"].to_numpy())
        for (k, version), rows in decided.groupby(["day", "policy_version"], sort=False).indices.items():  # type: ignore[misc]
            if (int(k), str(version)) not in predicted:
                cost = self.cost(policy_of(str(version)), decided.iloc[rows].reset_index(drop=True))
                predicted[(int(k), str(version))] = float(cost[np.arange(len(rows)), action[rows]].sum())
        self.predicted_by_version = {}
        for (k, version), n in groups.items():
            self.predicted_by_version.setdefault(str(k), {})[version] = (n, predicted[(k, version)])
        outcomes = set(spec.model.outcomes)
        observed: dict[int, float] = {}  # the realized cost of each mature day, when the budget's formula reads outcomes only
        if self.formula.variables <= outcomes:
            mature = training_table(store, as_of, since=start + timedelta(days=first - self.origin))[0].to_pandas()
            mature = mature[pd.to_datetime(mature["decided_at"], utc=True) < pd.Timestamp(start + timedelta(days=today - self.origin))]
            mature = mature.reset_index(drop=True)
            realized = np.asarray(formula_on(spec, self.formula, {c: mature[c].to_numpy(dtype=np.float64)[:, None] for c in outcomes},
                                             mature, lever_index=spec.action_space.indices(mature["action_id"].to_numpy())),
                                  dtype=np.float64).reshape(-1)
            mature_day = self.origin + (pd.to_datetime(mature["decided_at"], utc=True) - pd.Timestamp(start)) // pd.Timedelta(days=1)
            by_day = pd.Series(realized).groupby(mature_day.to_numpy()).sum()
            observed = dict(zip(by_day.index.astype(int).tolist(), by_day.to_numpy(dtype=np.float64).tolist(), strict=True))
        for k in sorted({k for k, _ in groups}):
            self.record(k, sum(n for (d, _), n in groups.items() if d == k), sum(x for (d, _), x in predicted.items() if d == k))
            if self.formula.variables <= outcomes and start + timedelta(days=k - self.origin + 1) + spec.horizon + spec.settle <= as_of:
                self.observe(k, observed.get(k, 0.0))
        return decided[decided["day"] == last].head(RECENT_CONTEXTS).drop(columns=["day"]).reset_index(drop=True)

    # ------------------------------------------------------------------ the price
    def paced(self, policy: Policy, contexts: pd.DataFrame, target: float, components: Mapping[str, np.ndarray] | None = None) -> Policy:
        """``policy`` with the budget's multiplier set so that its predicted spend as served on ``contexts``,
        corrected by :meth:`ratio`, is at most ``target`` per unit; ``components`` are its model's predictions
        for them when the caller already has them."""
        assert self.budget is not None
        comps = policy.model.predict_outcomes(contexts) if components is None else components
        cost = self.cost(policy, contexts, comps)
        r = self.ratio()

        def spend(lam: float) -> float:
            trial = replace(policy, multipliers={**policy.multipliers, self.budget or "": lam})
            return r * float(np.mean(np.sum(trial.action_distribution(contexts, comps) * cost, axis=1)))

        if spend(0.0) <= target:
            return replace(policy, multipliers={**policy.multipliers, self.budget: 0.0})
        low, high = 0.0, max(float(policy.multipliers.get(self.budget, 0.0)), 0.05)
        while spend(high) > target and high < 1e4:
            low, high = high, 2.0 * high
        for _ in range(24):
            mid = 0.5 * (low + high)
            if spend(mid) > target:
                low = mid
            else:
                high = mid
        return replace(policy, multipliers={**policy.multipliers, self.budget: high})
