"""The figures of an evaluation as frozen values: effects with intervals, ratios, guardrail checks, budget
use, service levels and the sample ratio, per slice (overall, day, cohort)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd

from drivetrain.errors import UsageError

__all__ = ["BudgetUse", "Counts", "Effect", "Evaluation", "GuardrailCheck", "Ratio", "SampleRatio", "ServiceLevels", "SliceEvaluation"]


@dataclass(frozen=True)
class Effect:
    """A mean per arm (policy = every unit outside the holdout) and their difference with its interval
    (``se``: the difference's standard error; ``policy_se``: the policy arm mean's). None where a figure
    is undefined (an empty arm, or one unit for a variance)."""

    policy: float | None
    holdout: float | None
    difference: float | None
    low: float | None
    high: float | None
    se: float | None
    policy_se: float | None = None


@dataclass(frozen=True)
class Ratio:
    """``estimate`` = incremental numerator / incremental denominator, with a delta-method interval."""

    estimate: float | None
    low: float | None
    high: float | None
    se: float | None


@dataclass(frozen=True)
class GuardrailCheck:
    """A spec guardrail's mean per arm against its bounds; ``breached`` judges the policy arm's mean."""

    name: str
    min: float | None
    max: float | None
    effect: Effect
    breached: bool | None


@dataclass(frozen=True)
class BudgetUse:
    """A spec budget, or a cap (``kind``): mean use per eligible unit (both arms, as served) against
    ``max_per_unit`` (a cap's use is the share of units on its actions, its limit ``max_share``), the total
    against ``limit`` (= max_per_unit x units), the increment over the holdout and what one unit of
    incremental objective cost (incremental use / incremental objective)."""

    name: str
    max_per_unit: float
    per_unit: float | None
    total: float
    limit: float
    within: bool | None
    incremental: Effect
    per_incremental_objective: Ratio
    kind: str = "budget"


@dataclass(frozen=True)
class ServiceLevels:
    """SLOs from the decision log: latency percentiles (ms, 1% resolution) and the share over
    ``serving.latency_budget_ms``, among decisions with a logged ``latency_ms``; the fallback rate
    (decisions the policy could not make: ``assignment`` = fallback, or a held-out decision with a
    ``fallback_reason``) and the error rate (a ``fallback_reason`` that mentions an error: the model
    or service failed, rather than a context the contract refused), among all decisions; and the serving
    cost per 1,000 decisions, mean latency priced at ``serving.cost_per_serving_hour`` (None without it)."""

    decisions: int
    latency_logged: int
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    over_latency_budget: float | None
    fallback_rate: float | None
    error_rate: float | None
    cost_per_1000: float | None


@dataclass(frozen=True)
class SampleRatio:
    """Units per arm against the spec's holdout share: chi-square statistic, p-value, and ``mismatch``
    when the p-value is below ``monitoring.srm_alpha``. A unit counts once, on the day of its first
    decision as of T and in its cohorts then: a day's figure is about the units first seen that day."""

    holdout_units: int
    policy_units: int
    expected_share: float
    observed_share: float | None
    chi2: float | None
    p_value: float | None
    mismatch: bool | None


@dataclass(frozen=True)
class Counts:
    """Decisions received as of T (mature + immature), eligible ones, and the outcome rows behind the
    figures: joined (mature, inside the horizon), late (joined but received after the decision was
    already mature), outside the horizon, and waiting on immature decisions."""

    decisions: int
    mature: int
    immature: int
    eligible: int
    outcomes_joined: int
    outcomes_late: int
    outcomes_out_of_window: int
    outcomes_of_immature: int


@dataclass(frozen=True)
class SliceEvaluation:
    """Every figure for one slice: overall (``day`` and ``cohort`` None), one decision day, one cohort
    value (``cohort``, ``value``), or one cohort value on one day.

    ``units`` is the number of mature decisions of eligible units per arm, the denominators of the
    per-unit means; ``outcomes`` gives each outcome component per arm (the leading indicators, such as the
    redeemed rate); ``eligibility_coverage`` is the share of decisions whose unit is eligible and
    ``treated_share`` the share of the policy arm's eligible decisions that got an action other than
    control."""

    day: date | None
    cohort: str | None
    value: str | None
    counts: Counts
    policy_units: int
    holdout_units: int
    north_star: Effect
    north_star_unadjusted: Effect
    outcomes: tuple[tuple[str, Effect], ...]
    eligibility_coverage: float | None
    treated_share: float | None
    guardrails: tuple[GuardrailCheck, ...]
    budgets: tuple[BudgetUse, ...]
    service: ServiceLevels
    sample_ratio: SampleRatio

    def outcome(self, name: str) -> Effect:
        for key, effect in self.outcomes:
            if key == name:
                return effect
        raise UsageError(f"`name` must be an outcome of {[k for k, _ in self.outcomes]}, got {name!r}")


@dataclass(frozen=True)
class Evaluation:
    """The KPI hierarchy as of ``as_of``; ``slices`` holds overall, by day, by cohort value and by both.

    ``outcomes_waiting`` counts outcomes received by T that no decision has claimed yet,
    ``outcomes_unattributed`` those quarantined because none ever did (both overall only).
    """

    as_of: datetime
    horizon: timedelta
    settle: timedelta
    confidence: float
    cohorts: tuple[str, ...]
    covariates: tuple[str, ...]
    outcomes_waiting: int
    outcomes_unattributed: int
    slices: tuple[SliceEvaluation, ...]

    @property
    def overall(self) -> SliceEvaluation:
        return self.slice()

    @property
    def days(self) -> tuple[date, ...]:
        return tuple(s.day for s in self.slices if s.day is not None and s.cohort is None)

    def slice(self, *, day: date | None = None, cohort: str | None = None, value: str | None = None) -> SliceEvaluation:
        """The slice for a day and/or a cohort value (none of them: overall)."""
        if cohort is not None and cohort not in self.cohorts:
            raise UsageError(f"`cohort` must be one of the evaluated cohorts {list(self.cohorts)}, got {cohort!r}")
        if (cohort is None) != (value is None):
            raise UsageError(f"`cohort` and `value` go together, got cohort={cohort!r}, value={value!r}")
        for s in self.slices:
            if s.day == day and s.cohort == cohort and s.value == value:
                return s
        raise UsageError(f"no decisions as of {self.as_of.isoformat()} for day={day}, cohort={cohort!r}, value={value!r}")

    def by_day(self) -> tuple[SliceEvaluation, ...]:
        return tuple(s for s in self.slices if s.day is not None and s.cohort is None)

    def by_cohort(self, cohort: str, *, daily: bool = False) -> tuple[SliceEvaluation, ...]:
        """The slices of every value of ``cohort`` (over the whole period, or per day with ``daily``)."""
        if cohort not in self.cohorts:
            raise UsageError(f"`cohort` must be one of the evaluated cohorts {list(self.cohorts)}, got {cohort!r}")
        return tuple(s for s in self.slices if s.cohort == cohort and (s.day is not None) == daily)

    def to_frame(self) -> pd.DataFrame:
        """One row per (slice, figure): ``policy``, ``holdout``, ``difference``, ``low``, ``high`` and
        ``bound`` (a guardrail's or budget's limit), for reports and alert rules."""
        rows: list[dict[str, Any]] = []
        for s in self.slices:
            key = {"day": s.day, "cohort": s.cohort, "value": s.value}

            def add(figure: str, e: Effect | None = None, bound: float | None = None, **values: Any) -> None:
                row = {**key, "figure": figure, "policy": None, "holdout": None, "difference": None, "low": None,  # noqa: B023 (called within the iteration)
                       "high": None, "bound": bound}
                if e is not None:
                    row.update(policy=e.policy, holdout=e.holdout, difference=e.difference, low=e.low, high=e.high)
                row.update(values)
                rows.append(row)

            add("north_star", s.north_star)
            add("north_star_unadjusted", s.north_star_unadjusted)
            for name, e in s.outcomes:
                add(f"outcome:{name}", e)
            for g in s.guardrails:
                add(f"guardrail:{g.name}", g.effect, g.max if g.max is not None else g.min)
            for b in s.budgets:
                add(f"budget:{b.name}", b.incremental, b.max_per_unit)
                r = b.per_incremental_objective
                add(f"cost_per_incremental_objective:{b.name}", difference=r.estimate, low=r.low, high=r.high)
            add("eligibility_coverage", difference=s.eligibility_coverage)
            add("treated_share", difference=s.treated_share)
            for name in ("latency_p50", "latency_p95", "latency_p99", "over_latency_budget", "fallback_rate",
                         "error_rate", "cost_per_1000"):
                add(f"slo:{name}", difference=getattr(s.service, name))
            add("srm_p_value", difference=s.sample_ratio.p_value, bound=None)
        return pd.DataFrame(rows)
