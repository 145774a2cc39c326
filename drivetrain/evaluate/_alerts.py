"""Alert rules: the spec's ``monitoring.alerts`` judged on an evaluation, a drift report and the log.

Five kinds of rule, each a sentence a person can act on:

* ``metric_drop``: a figure of the evaluation (``north_star``, ``outcome:redeemed``, ...; its
  ``difference`` against the holdout, or the ``policy`` arm's level) has been more than ``drop_pct`` % below its median of the previous ``window_days`` days on each of the last
  ``for_days`` days, overall or (``cohort: any``) in some cohort value;
* ``latency``: the ``percentile`` of the logged decision latency was above ``above_ms`` for
  ``for_minutes`` consecutive minutes within the last ``lookback_hours``;
* ``drift``: a column's (``feature``: a name or ``*``) drift is flagged (significant after the report's
  correction) with a PSI above ``psi_above``;
* ``guardrail``: a spec guardrail's bound is crossed in the policy arm, overall or in any cohort value,
  by more than chance: the policy arm's mean is beyond the bound at the one-sided level of the check's
  confidence, Holm-adjusted over every slice and bound the rule looks at;
* ``sample_ratio``: the holdout split does not match the spec's holdout share (chi-square test; with
  ``sequential_units``, an always-valid Beta-binomial mixture test instead);
* ``parity``: a derived feature's (``feature``: a name or ``*``) served value differs from the value its
  definition rebuilds offline (beyond ``tolerance``) in more than ``share_above`` of the decisions.

Fired alerts are stored as events in the store's ``alerts`` table, one per (rule, subject, as-of day),
so that re-running a check adds nothing.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa

from drivetrain.clock import as_utc
from drivetrain.data import ALERT_SCHEMA, ParityReport, Store
from drivetrain.evaluate._drift import DriftReport
from drivetrain.evaluate._figures import Evaluation
from drivetrain.spec import AlertRule, Spec
from drivetrain.stats import holm_adjusted

__all__ = ["Alert", "check_alerts", "latency_by_minute", "store_alerts"]


@dataclass(frozen=True)
class Alert:
    """One fired rule: what crossed (``subject``: a figure, column or cohort value), by how much, and why."""

    rule: str
    kind: str
    subject: str
    value: float | None
    threshold: float | None
    message: str
    as_of: datetime

    @property
    def alert_id(self) -> str:
        key = f"{self.rule}\x1f{self.subject}\x1f{self.as_of.date().isoformat()}"
        return hashlib.sha256(key.encode()).hexdigest()[:24]


def _slices(evaluation: Evaluation, cohort: str | None) -> list[tuple[str | None, str | None]]:
    if cohort is None:
        return [(None, None)]
    names = evaluation.cohorts if cohort == "any" else (cohort,)
    keys: list[tuple[str | None, str | None]] = [(None, None)]
    for name in names:
        keys.extend((name, s.value) for s in evaluation.by_cohort(name))
    return keys


def _metric_drop(rule: AlertRule, evaluation: Evaluation, frame: pd.DataFrame) -> list[Alert]:
    out = []
    column = rule.arm
    for cohort, value in _slices(evaluation, rule.cohort):
        rows = frame[(frame["figure"] == rule.figure) & frame["day"].notna()]
        rows = rows[(rows["cohort"].isna() if cohort is None else (rows["cohort"] == cohort) & (rows["value"] == value))]
        series = rows.set_index("day")[column].astype(float).sort_index()
        if len(series) < rule.for_days + 1:
            continue
        recent = series.iloc[-rule.for_days:]
        history = series.iloc[: -rule.for_days].iloc[-rule.window_days:]
        history = history[np.isfinite(history)]
        if history.size < max(3, rule.for_days):
            continue
        median = float(history.median())
        floor = median - abs(median) * rule.drop_pct / 100.0
        if np.all(np.isfinite(recent)) and bool((recent < floor).all()):
            subject = rule.figure if cohort is None else f"{rule.figure} [{cohort}={value}]"
            out.append(Alert(rule.name, rule.kind, subject, float(recent.iloc[-1]), floor,
                             f"{subject} was below {floor:.4g} ({rule.drop_pct:g}% under its {len(history)}-day median {median:.4g})"
                             f" on each of the last {rule.for_days} days; last {recent.iloc[-1]:.4g}", evaluation.as_of))
    return out


def latency_by_minute(store: Store, as_of: datetime, lookback: timedelta, percentile: float) -> pd.DataFrame:
    """The ``percentile`` of ``latency_ms`` per minute of ``decided_at`` within ``lookback`` before ``as_of``,
    from a log-scale histogram counted in portable SQL (1% resolution)."""
    as_of = as_utc(as_of, name="as_of")
    start = as_of - lookback
    sql = f"""
        SELECT CAST(FLOOR(epoch_us(decided_at) / 60000000) AS BIGINT) AS minute,
               CAST(FLOOR(LN(GREATEST(latency_ms, 0.001)) * 100) AS BIGINT) AS bin,
               COUNT(*) AS n
        FROM decisions
        WHERE latency_ms IS NOT NULL
          AND received_at <= TIMESTAMP '{as_of.strftime('%Y-%m-%d %H:%M:%S.%f')}'
          AND decided_at >= TIMESTAMP '{start.strftime('%Y-%m-%d %H:%M:%S.%f')}'
        GROUP BY 1, 2"""
    counts = store.arrow(sql).to_pandas()
    if counts.empty:
        return pd.DataFrame({"minute": pd.Series([], dtype="int64"), "latency": pd.Series([], dtype="float64"), "n": pd.Series([], dtype="int64")})
    rows = []
    for minute, group in counts.sort_values(["minute", "bin"]).groupby("minute"):
        n = group["n"].to_numpy()
        rank = np.searchsorted(np.cumsum(n), percentile / 100.0 * n.sum())
        bin_ = group["bin"].to_numpy()[min(rank, len(n) - 1)]
        rows.append({"minute": int(minute), "latency": float(math.exp((bin_ + 1) / 100.0)), "n": int(n.sum())})
    return pd.DataFrame(rows)


def _latency(rule: AlertRule, store: Store, as_of: datetime) -> list[Alert]:
    minutes = latency_by_minute(store, as_of, timedelta(hours=rule.lookback_hours), rule.percentile)
    if minutes.empty:
        return []
    minute = minutes["minute"].to_numpy(dtype=np.int64)
    latency = minutes["latency"].to_numpy(dtype=np.float64)
    run = best = 0
    worst = 0.0
    for i in range(len(minute)):
        hit = latency[i] > rule.above_ms
        run = (run + 1 if i and minute[i] == minute[i - 1] + 1 else 1) if hit else 0
        best = max(best, run)
        if hit:
            worst = max(worst, float(latency[i]))
    if best < rule.for_minutes:
        return []
    return [Alert(rule.name, rule.kind, f"latency_p{rule.percentile:g}", worst, rule.above_ms,
                  f"p{rule.percentile:g} latency was above {rule.above_ms:g} ms for {best} consecutive minutes"
                  f" (at most {worst:.1f} ms) within the last {rule.lookback_hours:g} h", as_of)]


def _drift(rule: AlertRule, drift: DriftReport) -> list[Alert]:
    t = drift.table
    hit = t["flagged"].astype(bool) & (t["psi"].astype(float) > rule.psi_above)
    if rule.feature != "*":
        hit &= t["column_name"] == rule.feature
    if rule.cohort is None:
        hit &= t["cohort"].isna()
    out = []
    for r in t[hit].to_dict("records"):
        where = "" if r["cohort"] is None or (isinstance(r["cohort"], float) and math.isnan(r["cohort"])) else f" [{r['cohort']}={r['cohort_value']}]"
        subject = f"{r['column_name']}{where}"
        out.append(Alert(rule.name, rule.kind, subject, float(r["psi"]), rule.psi_above,
                         f"{subject} drifted from the fit-time baseline of {drift.version}: PSI {r['psi']:.3f} > {rule.psi_above:g},"
                         f" adjusted p {r['p_adjusted']:.2g}", drift.as_of))
    return out


def always_valid_p(z: np.ndarray | float, n: np.ndarray | float, rho2: float) -> np.ndarray:
    """One-sided always-valid p-value of "the mean is above the null" from the standardized mean ``z``
    of ``n`` observations: the reciprocal of the normal-mixture martingale with a half-normal mixing
    density of variance ``rho2`` on the standardized drift (Robbins 1970; Howard et al. 2021),

        M = 2 / sqrt(1 + r) * exp(r z^2 / (2 (1 + r))) * Phi(z sqrt(r / (1 + r))),   r = n rho2,

    so that under the null the chance that p ever falls below alpha, over every n checked, is at most
    alpha (Ville's inequality; asymptotically, with the standard error estimated)."""
    from scipy.special import log_ndtr  # stats.norm.logcdf's own function, without its per-call checks

    z, r = np.asarray(z, dtype=np.float64), np.asarray(n, dtype=np.float64) * rho2
    log_m = math.log(2.0) - 0.5 * np.log1p(r) + r * z**2 / (2.0 * (1.0 + r)) + log_ndtr(z * np.sqrt(r / (1.0 + r)))
    return np.exp(np.minimum(0.0, -log_m))


def mixture_variance(alpha: float, units: int) -> float:
    """The mixing variance whose boundary is tightest at ``units`` observations for level ``alpha``
    (Waudby-Smith et al. 2021, "Time-uniform central limit theory"): rho^2 = (-2 log alpha + log(1 - 2 log alpha)) / units."""
    a = -2.0 * math.log(alpha)
    return (a + math.log1p(a)) / units


def always_valid_split_p(holdout: np.ndarray | int, total: np.ndarray | int, share: float, rho2: float) -> np.ndarray:
    """Always-valid p-value of "each unit is held out with probability ``share``" from ``holdout`` of
    ``total`` units: the reciprocal of the Beta-binomial mixture likelihood ratio

        M = B(a + x, b + n - x) / B(a, b) / (share^x (1 - share)^(n - x)),   a = share / rho2, b = (1 - share) / rho2,

    which, as units arrive one by one, is a nonnegative martingale with M = 1 before the first one when
    the split is right (the mixture's Bayes factor against the null); with no unit yet, p is 1. By Ville's inequality the chance
    that p ever falls below alpha, over every count checked, is at most alpha, exactly and for any
    number of units (no normal approximation). The Beta mixing distribution is centred on ``share``
    with variance about ``rho2 * share * (1 - share)``: with :func:`mixture_variance` it is tightest
    around that many units, like the guardrails' normal mixture (Lindon and Malek 2022, "Anytime-valid
    inference for multinomial count data", give this test for sample ratio mismatches)."""
    from scipy.special import betaln

    x, n = np.asarray(holdout, dtype=np.float64), np.asarray(total, dtype=np.float64)
    if not 0.0 < share < 1.0:
        return np.ones(np.broadcast(x, n).shape)
    a, b = share / rho2, (1.0 - share) / rho2
    log_m = betaln(a + x, b + n - x) - betaln(a, b) - x * math.log(share) - (n - x) * math.log1p(-share)
    return np.exp(np.minimum(0.0, -log_m))


def _guardrail(rule: AlertRule, evaluation: Evaluation, z: float) -> list[Alert]:
    """Every (slice, guardrail, bound) of the rule is one test of "the policy arm's mean is beyond the
    bound": a one-sided p-value from the policy arm's mean and standard error, Holm-adjusted over all of
    them (Holm 1979), so that the chance of any false alarm at the bounds stays at the one-sided level of
    ``z`` however many cohort values there are. An alert names its interval and adjusted p-value.

    With ``sequential_units`` the p-values are always valid (:func:`always_valid_p`, tuned to be
    tightest at that many policy-arm units): the level then holds over every day the rule is checked on
    the growing program, not only for one check, at the price of needing more units to fire."""
    from scipy import special

    alpha = float(special.ndtr(-z))
    sequential = None if rule.sequential_units is None else mixture_variance(alpha, rule.sequential_units)
    tests = []
    for cohort, value in _slices(evaluation, "any" if rule.cohort is None or rule.cohort == "any" else rule.cohort):
        s = evaluation.slice(cohort=cohort, value=value)
        for g in s.guardrails:
            mean, se = g.effect.policy, g.effect.policy_se  # the policy arm's own variance: a guardrail is any formula's mean
            if mean is None or se is None or s.policy_units < 2:
                continue
            for bound, beyond in ((g.max, None if g.max is None else mean - g.max), (g.min, None if g.min is None else g.min - mean)):
                if bound is None or beyond is None:
                    continue
                if se <= 0:
                    p = float(beyond <= 0)
                elif sequential is not None:
                    p = float(always_valid_p(beyond / se, s.policy_units, sequential))
                else:
                    p = float(special.ndtr(-beyond / se))  # stats.norm.sf's own function, without its checks
                tests.append((cohort, value, g.name, bound, mean, se, p))
    if not tests:
        return []
    adjusted = holm_adjusted(np.array([t[-1] for t in tests]))
    out = []
    for (cohort, value, name, bound, mean, se, _p), p_adj in zip(tests, adjusted, strict=True):
        if p_adj < alpha:
            where = "overall" if cohort is None else f"{cohort}={value}"
            out.append(Alert(rule.name, rule.kind, f"{name} [{where}]", mean, bound,
                             f"guardrail {name} crossed in {where}: policy arm mean {mean:.4g} (interval {mean - z * se:.4g} to"
                             f" {mean + z * se:.4g}) against the bound {bound:g}; p = {p_adj:.2g} adjusted over"
                             f" {len(tests)} slice and bound tests" + (", always valid over repeated checks" if sequential else ""),
                             evaluation.as_of))
    return out


def _sample_ratio(rule: AlertRule, evaluation: Evaluation, alpha: float) -> list[Alert]:
    """The overall holdout split against the spec's share at ``monitoring.srm_alpha``: the evaluation's
    chi-square test, or with ``sequential_units`` the always-valid test (:func:`always_valid_split_p`),
    whose level holds over every day the cumulative counts are checked."""
    sr = evaluation.overall.sample_ratio
    total = sr.holdout_units + sr.policy_units
    if rule.sequential_units is None:
        if not sr.mismatch:
            return []
        p, how = sr.p_value, ""
    else:
        p = float(always_valid_split_p(sr.holdout_units, total, sr.expected_share, mixture_variance(alpha, rule.sequential_units)))
        if not p < alpha:
            return []
        how = ", always valid over repeated checks"
    return [Alert(rule.name, rule.kind, "holdout_split", sr.observed_share, sr.expected_share,
                  f"sample ratio mismatch: holdout share {sr.observed_share:.4f} against {sr.expected_share:g}"
                  f" ({sr.holdout_units} of {total} units), p = {p:.2g}{how}", evaluation.as_of)]


def _parity(rule: AlertRule, parity: ParityReport) -> list[Alert]:
    t = parity.table
    hit = t[(t["share"] > rule.share_above) & ((t["feature"] == rule.feature) | (rule.feature == "*"))]
    return [Alert(rule.name, rule.kind, str(r["feature"]), float(r["share"]), rule.share_above,
                  f"{r['feature']} (owner {r['owner']}) as served differs from its definition rebuilt offline in {r['differ']}"
                  f" of {r['compared']} decisions ({r['share']:.2%} > {rule.share_above:.2%})", parity.as_of)
            for r in hit.to_dict("records")]


def check_alerts(spec: Spec, *, evaluation: Evaluation | None = None, drift: DriftReport | None = None,
                 store: Store | None = None, as_of: datetime | None = None, confidence: float = 0.99,
                 parity: ParityReport | None = None) -> list[Alert]:
    """Judge every rule of ``spec.model.monitoring.alerts`` on what is given (a rule whose input is
    missing is skipped: ``latency`` needs ``store`` and ``as_of``, ``parity`` a parity report measured
    with the rule's ``tolerance``)."""
    from scipy import stats

    z = float(stats.norm.ppf(0.5 + confidence / 2))
    frame = evaluation.to_frame() if evaluation is not None else None
    fired: list[Alert] = []
    for rule in spec.model.monitoring.alerts:
        if rule.kind == "metric_drop" and evaluation is not None and frame is not None:
            fired += _metric_drop(rule, evaluation, frame)
        elif rule.kind == "latency" and store is not None and as_of is not None:
            fired += _latency(rule, store, as_of)
        elif rule.kind == "drift" and drift is not None:
            fired += _drift(rule, drift)
        elif rule.kind == "guardrail" and evaluation is not None:
            fired += _guardrail(rule, evaluation, z)
        elif rule.kind == "sample_ratio" and evaluation is not None:
            fired += _sample_ratio(rule, evaluation, spec.model.monitoring.srm_alpha)
        elif rule.kind == "parity" and parity is not None:
            fired += _parity(rule, parity)
    return fired


def store_alerts(store: Store, alerts: Sequence[Alert], *, fired_at: datetime) -> int:
    """Append the alerts not stored yet (same rule, subject and as-of day); returns how many were new."""
    if not alerts:
        return 0
    ids = [a.alert_id for a in alerts]
    listing = ", ".join(f"'{i}'" for i in ids)
    known = set(store.arrow(f"SELECT alert_id FROM alerts WHERE alert_id IN ({listing})")["alert_id"].to_pylist())
    new = [a for a in alerts if a.alert_id not in known]
    if not new:
        return 0
    table = pa.Table.from_pylist([{
        "alert_id": a.alert_id, "rule": a.rule, "kind": a.kind, "subject": a.subject, "value": a.value,
        "threshold": a.threshold, "message": a.message, "as_of": a.as_of, "fired_at": fired_at,
    } for a in new], schema=ALERT_SCHEMA)
    with store.writing():
        store.append("alerts", table)
    return len(new)
