"""A candidate on live traffic: shadow beside the champion, then a canary share of units.

* Shadow: the candidate decides for the same contexts as the champion; its decisions are logged with
  assignment ``shadow`` and their predicted values, beside the champion's request id, and never acted on.
* Canary: units whose salted hash is below ``adaptation.canary.share`` (stable across requests, like the
  holdout, and drawn independently of it) get the candidate. Its choices are logged as their own arm
  (assignment ``canary``, the candidate's version); exploration and the holdout apply as for every unit,
  so the logged propensity stays the exact probability of the logged action for that unit.

:func:`canary_check` judges the canary on the store as of T: a sample ratio check of the arms, a
sequential test per guardrail (the guardrail alerts' one-sided always-valid normal mixture, so that looking
every day does not inflate its error), and the north star's non-inferiority once enough canary decisions
are mature. The north star's difference is regression-adjusted (:func:`adjusted_difference`, with the
champion's predictions for each context as covariates), and the canary is sized from it
(:func:`planned_decisions`): it waits until an equal candidate would be shown non-inferior with
``canary.power``, so a canary too small to decide is not mistaken for an inferior candidate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from drivetrain.adapt._gates import GateResult
from drivetrain.adapt._retrain import Change
from drivetrain.assembly import realized_metrics
from drivetrain.data import Store, training_table
from drivetrain.errors import UsageError
from drivetrain.evaluate import always_valid_p, mixture_variance
from drivetrain.policy import Policy
from drivetrain.serve import shadow_row
from drivetrain.spec import canary_units

__all__ = ["adjusted_difference", "canary_check", "canary_units", "early_non_inferiority_p", "planned_decisions", "serve",
           "shadow_check"]


def serve(champion: Policy, contexts: pd.DataFrame, *, now: datetime, challenger: Policy | None = None,
          stage: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decide for ``contexts`` (``unit_id``, ``request_id``, the context) as the serving system does with
    a candidate in ``stage`` (None, ``shadow`` or ``canary``): (the decisions acted on, the shadow log)."""
    decisions, _ = champion.decisions_table(contexts, now=now)
    empty = pd.DataFrame()
    if challenger is None or stage is None:
        return decisions, empty
    if stage == "shadow":
        shadow, _ = challenger.decisions_table(contexts, now=now)
        rows = [shadow_row(s, c) for s, c in zip(shadow.to_dict("records"), decisions.to_dict("records"), strict=True)]
        return decisions, pd.DataFrame(rows)
    if stage != "canary":
        raise ValueError(f"`stage` must be None, 'shadow' or 'canary', got {stage!r}")
    chosen = canary_units(champion.spec, decisions["unit_id"].to_numpy())
    if chosen.any():
        made, _ = challenger.decisions_table(contexts[chosen].reset_index(drop=True), now=now)
        made["assignment"] = made["assignment"].replace({"policy": "canary"})
        made = made.reindex(columns=decisions.columns)
        decisions = decisions.copy()
        decisions.loc[np.flatnonzero(chosen)] = made.to_numpy()
    return decisions, empty


def shadow_check(log: pd.DataFrame, candidate: str) -> GateResult:
    """The candidate's shadow decisions: it answered every context the champion did (no more fallbacks
    than the champion), with finite predicted values; agreement and predicted values are its figures."""
    n = len(log)
    if n == 0:
        return GateResult("shadow", False, f"no shadow decisions of {candidate} were logged", {"decisions": 0})
    served = (log["champion_assignment"] == "policy").to_numpy()
    agreement = float((log["action_id"] == log["champion_action_id"])[served].mean()) if served.any() else float("nan")
    fallback = float(log["fallback"].mean())
    champion_fallback = float((log["champion_assignment"] == "fallback").mean())
    predicted = log["predicted"].to_numpy(dtype=np.float64)
    figures = {"decisions": n, "agreement": agreement, "fallback_share": fallback, "champion_fallback_share": champion_fallback,
               "predicted": float(np.nanmean(predicted)), "champion_predicted": float(np.nanmean(log["champion_predicted"]))}
    if fallback > champion_fallback + 0.01:
        return GateResult("shadow", False, f"the candidate fell back on {fallback:.1%} of live contexts against the champion's "
                          f"{champion_fallback:.1%}: its model fails on live traffic; read the fallback reasons", figures)
    finite = np.isfinite(predicted[~log["fallback"].to_numpy()])
    if not finite.all():
        return GateResult("shadow", False, f"{int((~finite).sum())} shadow decisions have no finite predicted value", figures)
    return GateResult("shadow", True, f"{n} shadow decisions, {agreement:.1%} agree with the champion, predicted "
                      f"{figures['predicted']:.3f} vs {figures['champion_predicted']:.3f}", figures)


def canary_check(store: Store, as_of: datetime, *, candidate: str | Sequence[str], champion: str | Sequence[str], since: datetime,
                 baseline: Policy | None = None, excluded: Sequence[Change] = ()) -> GateResult | None:
    """Judge the canary on the mature decisions made since ``since``: a failure (sample ratio, a guardrail
    the canary breaks, a north star worse than the margin), a pass (non-inferior with the planned
    decisions), or None (wait). ``champion`` is the version, or every version, that served as champion
    since ``since`` (a guard replaces the champion mid-canary), and ``candidate`` likewise (a guard gives
    the candidate in canary the same guard under a new name); the rows each of ``excluded`` makes stale
    leave both arms (a value guarded mid-canary, before its guard). ``baseline`` is the champion's policy:
    its predictions for each context adjust the north star's difference (None: the plain difference of means).

    The north star waits for ``canary.min_units`` mature canary units, then for the decisions that
    :func:`planned_decisions` asks of the observed variances (at most ``canary.max_units`` units), and is
    judged once there: that verdict is one look at level ``gates.alpha``. Earlier looks stop a candidate
    that is already worse than the margin, and pass one that a one-sided always-valid test (level
    ``canary.early_alpha``, valid however often it looks) already shows non-inferior; so a candidate at the
    margin passes with probability at most ``gates.alpha / 2 + canary.early_alpha``."""
    spec = store.spec
    settings = spec.model.adaptation
    canary = settings.canary
    table = training_table(store, as_of, since=since)[0].to_pandas()
    table = table[table["assignment"] != "holdout"]
    for change in excluded:
        table = table[~change.stale(table)]
    arm_c = table["policy_version"].isin([candidate] if isinstance(candidate, str) else list(candidate))
    arm_b = table["policy_version"].isin([champion] if isinstance(champion, str) else list(champion))
    c, b = table[arm_c], table[arm_b]
    units_c, units_b = c["unit_id"].nunique(), b["unit_id"].nunique()
    figures: dict[str, Any] = {"canary_units": units_c, "champion_units": units_b}
    total = units_c + units_b
    if total:
        expected = np.array([canary.share, 1 - canary.share]) * total
        chi2 = float(((np.array([units_c, units_b]) - expected) ** 2 / expected).sum())
        p_srm = float(stats.chi2.sf(chi2, 1))
        figures.update(srm_p=p_srm, canary_share=units_c / total)
        if total >= 100 and p_srm < canary.srm_alpha:
            return GateResult("canary", False, f"sample ratio mismatch: {units_c / total:.2%} of units in the canary against "
                              f"{canary.share:.0%} (p = {p_srm:.2g}): decisions of one arm are lost or misrouted; fix the logging", figures)
    if len(c) < 2 or len(b) < 2:
        return None
    rc, rb = realized_metrics(spec, c), realized_metrics(spec, b)
    for g, _f in spec.guardrails:
        name = next(k for k in rc if k == g.name or k.startswith(f"{g.name}:"))
        mc, mb = float(rc[name].mean()), float(rb[name].mean())
        se = math.sqrt(float(rc[name].var(ddof=1) / len(c) + rb[name].var(ddof=1) / len(b)))
        harm = mc - mb if g.max is not None else mb - mc  # the canary's difference in the direction its bound forbids
        # one-sided and always valid (the guardrail alerts' test), tightest at the canary's min_units decisions
        p = float(always_valid_p(harm / se, len(c), mixture_variance(canary.guardrail_alpha, canary.min_units))) \
            if se > 0 and math.isfinite(se) else 1.0
        figures[f"guardrail:{name}"] = {"canary": mc, "champion": mb, "p": p}
        over = (g.max is not None and mc > g.max) or (g.min is not None and mc < g.min)
        if over and p < canary.guardrail_alpha:
            return GateResult("canary", False, f"guardrail {g.name} in the canary: {mc:.4f} against the champion's {mb:.4f} "
                              f"(always-valid p = {p:.3g}), beyond its bound: the candidate is rolled back", figures)
    if units_c < canary.min_units:
        figures["min_units"] = canary.min_units
        return None
    sign = 1.0 if spec.model.objective.direction == "maximize" else -1.0
    xc, xb = (_covariates(baseline, c), _covariates(baseline, b)) if baseline is not None else (None, None)
    diff, se, reduction, (var_c, var_b) = adjusted_difference(sign * rc["objective"], sign * rb["objective"], xc, xb)
    margin, alpha = settings.gates.non_inferiority_margin, settings.gates.alpha
    z = float(stats.norm.ppf(1 - alpha / 2))
    low, high = diff - z * se, diff + z * se
    planned = planned_decisions(var_c, var_b, len(b) / len(c), margin=margin, alpha=alpha, power=canary.power)
    figures.update(lift=diff, low=low, high=high, margin=margin, variance_reduction=reduction, canary_decisions=len(c),
                   planned_decisions=planned, max_units=canary.max_units)
    if high < -margin:  # inferior beyond the margin already: stopping early for harm cannot pass a bad candidate
        return GateResult("canary", False, f"north star in the canary {diff:+.4f} per decision against the champion [{low:+.4f}, "
                          f"{high:+.4f}], worse than the margin -{margin}: keep the champion", figures)
    capped = canary.max_units is not None and units_c >= canary.max_units
    if len(c) < planned and not capped:
        # an early pass: "worse than the margin" rejected by a one-sided always-valid test, valid at every look
        # (its mixture tightest at the planned decisions), so a clearly better candidate need not wait for them
        if canary.early_alpha > 0 and se > 0:
            p_early = float(early_non_inferiority_p(diff, se, len(c), planned, margin=margin, level=canary.early_alpha))
            figures["early_p"] = p_early
            if p_early < canary.early_alpha:
                return GateResult("canary", True, f"north star {diff:+.4f} [{low:+.4f}, {high:+.4f}] on {units_c} canary units "
                                  f"(variance {reduction:.0%} lower by the champion's predictions): non-inferior already at "
                                  f"{len(c)} of the {planned} planned decisions (always-valid p = {p_early:.2g} < {canary.early_alpha})",
                                  figures)
        return None
    if low < -margin:
        short = f" ({len(c)} canary decisions of the {planned} planned: max_units reached)" if len(c) < planned else ""
        return GateResult("canary", False, f"north star in the canary {diff:+.4f} per decision against the champion [{low:+.4f}, "
                          f"{high:+.4f}], not shown within the margin -{margin}{short}: keep the champion", figures)
    return GateResult("canary", True, f"north star {diff:+.4f} [{low:+.4f}, {high:+.4f}] on {units_c} canary units "
                      f"(variance {reduction:.0%} lower by the champion's predictions): non-inferior", figures)


def early_non_inferiority_p(diff: Any, se: Any, decisions: Any, planned: int, *, margin: float, level: float) -> Any:
    """One-sided always-valid p-value of "the candidate is worse than the margin" from the north star's
    difference ``diff`` (standard error ``se``) on ``decisions`` canary decisions: the normal mixture of
    :func:`drivetrain.evaluate.always_valid_p` on the standardized distance to ``-margin``, its mixing
    variance tightest at the ``planned`` decisions for ``level``. Below ``level`` at any look, however
    many, with probability at most ``level`` when the candidate is worse by the margin (asymptotically)."""
    z = (np.asarray(diff, dtype=np.float64) + margin) / np.asarray(se, dtype=np.float64)
    return always_valid_p(z, decisions, mixture_variance(level, planned))


def _covariates(policy: Policy, table: pd.DataFrame) -> np.ndarray:
    """The champion's predicted objective of each decision's context under control and under its best
    action: functions of the context alone, the same whichever arm decided; shape (n, 2)."""
    predicted = policy.model.objective_of(policy.model.predict_outcomes(table), table)
    return np.column_stack([predicted[:, policy.spec.control.index], predicted.max(axis=1)])


def adjusted_difference(y_c: np.ndarray, y_b: np.ndarray, x_c: np.ndarray | None = None, x_b: np.ndarray | None = None
                        ) -> tuple[float, float, float, tuple[float, float]]:
    """The difference of means of ``y_c`` and ``y_b``, regression-adjusted by the covariates ``x`` (n, k)
    of each row when given: each arm's outcome is regressed on the covariates centred at their pooled mean,
    and the difference of the two intercepts is the estimate (Lin 2013: with randomized arms it is
    consistent, and asymptotically never less precise than the plain difference, whatever the covariates).

    Returns (difference, standard error, share of the plain difference's variance removed, (residual
    variance of each arm)); with too few rows to fit the covariates it falls back to the plain difference."""
    y_c, y_b = np.asarray(y_c, dtype=np.float64), np.asarray(y_b, dtype=np.float64)
    var_c, var_b = float(y_c.var(ddof=1)), float(y_b.var(ddof=1))
    plain = math.sqrt(var_c / len(y_c) + var_b / len(y_b))
    if x_c is None or x_b is None:
        return float(y_c.mean() - y_b.mean()), plain, 0.0, (var_c, var_b)
    x_c, x_b = np.asarray(x_c, dtype=np.float64), np.asarray(x_b, dtype=np.float64)
    k = x_c.shape[1]
    if min(len(y_c), len(y_b)) <= 2 * (k + 1) or not (np.isfinite(x_c).all() and np.isfinite(x_b).all()):
        return float(y_c.mean() - y_b.mean()), plain, 0.0, (var_c, var_b)
    centre = np.concatenate([x_c, x_b]).mean(axis=0)
    fits = []
    for y, x in ((y_c, x_c), (y_b, x_b)):
        design = np.column_stack([np.ones(len(y)), x - centre])
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        residual = y - design @ coef
        fits.append((float(coef[0]), float(residual @ residual) / (len(y) - k - 1)))
    (a_c, r_c), (a_b, r_b) = fits
    se = math.sqrt(r_c / len(y_c) + r_b / len(y_b))
    return a_c - a_b, se, (1 - se**2 / plain**2) if plain > 0 else 0.0, (r_c, r_b)


def planned_decisions(var_c: float, var_b: float, ratio: float, *, margin: float, alpha: float, power: float) -> int:
    """Canary decisions at which a candidate equal to the champion is shown non-inferior at ``margin`` with
    probability ``power`` (two-sided level ``alpha`` interval, as the verdict uses): per-decision variances
    ``var_c`` and ``var_b`` of the arms, ``ratio`` champion decisions per canary decision."""
    if margin <= 0:
        raise UsageError(f"a canary sized by its margin needs `adaptation.gates.non_inferiority_margin` > 0, got {margin}")
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    return int(math.ceil((var_c + var_b / max(ratio, 1e-12)) * z**2 / margin**2))
