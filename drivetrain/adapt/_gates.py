"""The off-line gates a candidate passes, in order, before it meets live traffic.

1. ``data``: enough mature decisions in the window, the quarantine rate within its limit, and no context
   feature that varies in the frozen evaluation set stuck at one value in the window (a broken upstream).
2. ``regression``: on the frozen evaluation set (randomized decisions of units no version trained on), the
   candidate's doubly robust value is not below the champion's by more than ``regression_tolerance``, and
   its model's root mean squared error on the realized objective of the logged actions is not above the
   champion's model's by more than that tolerance (by the paired interval's bound).
3. ``off-policy``: on the evaluation units' recent decisions (exact logged propensities), the lower bound
   of the candidate's lift over the champion is above ``min_lift``, or it is above ``-non_inferiority_margin``
   and the candidate spends less or keeps a guardrail lower.
4. ``constraints``: every budget, cap and guardrail holds on the planning population by the conservative
   side, the higher of the candidate's and the reference model's predictions of the candidate's use; in
   every cohort value where the candidate is worse than the champion by more than chance (Holm-adjusted
   over the cohort values and guardrails), each guardrail's upper bound is within its limit.
5. ``serving``: the p99 of single decisions in process is within the spec's latency budget.

Every gate returns its figures; the first failure stops the candidate with a reason a person can act on.
The paired doubly robust comparison is Dudík et al. (2011) on each row's pseudo-outcomes, both policies
on the same rows, with an interval clustered by unit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from drivetrain.assembly import realized_metrics
from drivetrain.data import Store
from drivetrain.model import OutcomeModel
from drivetrain.policy import Policy
from drivetrain.spec import Formula, Spec, formula_on, mean_constraints
from drivetrain.stats import holm_adjusted

__all__ = ["GateResult", "Paired", "constraints_gate", "data_gate", "off_policy_gate", "paired_values", "regression_gate", "serving_gate"]


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict: ``passed``, the ``reason`` (what failed and what to do, or what passed), and the
    figures it was judged on."""

    gate: str
    passed: bool
    reason: str
    figures: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"gate": self.gate, "passed": self.passed, "reason": self.reason, "figures": dict(self.figures)}


def _per_action(spec: Spec, formula: Formula, components: Mapping[str, np.ndarray], contexts: Any) -> np.ndarray:
    """:func:`~drivetrain.spec.formula_on`, broadcast to the (n, K) of the components (a formula of the
    levers alone is (1, K))."""
    n, k = next(iter(components.values())).shape
    return np.broadcast_to(formula_on(spec, formula, components, contexts), (n, k))


@dataclass(frozen=True)
class Paired:
    """Doubly robust values of two policies on the same rows and their difference (first - second) with
    its interval; per metric."""

    first: float
    second: float
    difference: float
    low: float
    high: float
    rows: int


def paired_values(model: OutcomeModel, rows: pd.DataFrame, first: Policy, second: Policy, *, alpha: float,
                  spec: Spec | None = None) -> dict[str, Paired]:
    """Paired doubly robust estimates of ``first`` and ``second`` on logged ``rows`` (with their outcomes and
    logged propensities), the reward model ``model``: the objective on every row, each budget and guardrail
    on the rows of units in the program, all as ``spec`` (the product's, by default the first policy's)
    defines them. Intervals are clustered by unit."""
    spec = spec or first.spec
    comps = model.predict_outcomes(rows)
    ctx = {n: rows[n].to_numpy() for n in spec.features if n in rows}
    predicted = {"objective": _per_action(spec, spec.objective, comps, ctx)}
    for name, formula in ((t.name, t.formula) for t in mean_constraints(spec)):
        predicted[name] = _per_action(spec, formula, comps, ctx)
    realized = realized_metrics(spec, rows)
    action = spec.action_space.indices(rows["action_id"].to_numpy())
    pscore = rows["propensity"].to_numpy(dtype=np.float64)
    n = len(rows)
    d1, d2 = first.action_distribution(rows), second.action_distribution(rows)
    program = spec.eligible_units(ctx)
    units = rows["unit_id"].to_numpy()
    z = float(stats.norm.ppf(1 - alpha / 2))
    out = {}
    for metric, q in predicted.items():
        gamma = np.array(q, dtype=np.float64)
        idx = np.arange(n)
        gamma[idx, action] += (realized[metric] - q[idx, action]) / pscore
        v1, v2 = (d1 * gamma).sum(axis=1), (d2 * gamma).sum(axis=1)
        keep = np.ones(n, dtype=bool) if metric == "objective" else program
        m = int(keep.sum())
        if m == 0:
            continue
        diff = v1[keep] - v2[keep]
        per_unit = pd.Series(diff).groupby(units[keep]).sum().to_numpy()
        centered = per_unit - diff.mean() * pd.Series(np.ones(m)).groupby(units[keep]).sum().to_numpy()
        se = float(np.sqrt(np.sum(centered**2)) / m) if m > 1 else float("inf")
        mean = float(diff.mean())
        out[metric] = Paired(float(v1[keep].mean()), float(v2[keep].mean()), mean, mean - z * se, mean + z * se, m)
    return out


def _sign(spec: Spec) -> float:
    return 1.0 if spec.model.objective.direction == "maximize" else -1.0


def data_gate(store: Store, train: pd.DataFrame, reference: pd.DataFrame, *, start: Any, as_of: Any, new_since: Any = None) -> GateResult:
    """Enough mature decisions, a quarantine rate within its limit, and no feature that varies in
    ``reference`` stuck at one value in the decisions made from ``new_since`` on (what this candidate
    learns that its parent did not; the whole window without a parent)."""
    spec = store.spec
    gates = spec.model.adaptation.gates
    n = len(train)
    figures: dict[str, Any] = {"mature_decisions": n, "min_decisions": gates.min_decisions}
    if n < gates.min_decisions:
        return GateResult("data", False, f"{n} mature decisions in the training window, at least {gates.min_decisions} needed: "
                          "wait for more decisions to mature, or widen `adaptation.window`", figures)
    t_us = int(pd.Timestamp(as_of).timestamp() * 1_000_000)
    s_us = int(pd.Timestamp(start).timestamp() * 1_000_000) if start is not None else 0
    counts = store.arrow(f"""
        SELECT (SELECT COUNT(*) FROM decisions WHERE epoch_us(received_at) > {s_us} AND epoch_us(received_at) <= {t_us}) AS accepted,
               (SELECT COUNT(*) FROM quarantine WHERE table_name = 'decisions'
                   AND epoch_us(quarantined_at) > {s_us} AND epoch_us(quarantined_at) <= {t_us}) AS quarantined""").to_pylist()[0]
    total = int(counts["accepted"]) + int(counts["quarantined"])
    share = int(counts["quarantined"]) / total if total else 0.0
    figures.update(quarantined=int(counts["quarantined"]), quarantine_share=share, max_quarantine_share=gates.max_quarantine_share)
    if share > gates.max_quarantine_share:
        return GateResult("data", False, f"{share:.1%} of the window's decisions were quarantined (at most {gates.max_quarantine_share:.1%}):"
                          " read the quarantine's reasons (`drivetrain summary`) and fix the producer before retraining", figures)
    fresh = train
    if new_since is not None:
        fresh = train[pd.to_datetime(train["decided_at"], utc=True) > pd.Timestamp(new_since)]
    stuck = []
    for name in spec.features:
        if name in spec.personal_features or name not in fresh or name not in reference or len(reference) < 2 or len(fresh) < 2:
            continue
        if reference[name].nunique(dropna=False) > 1 and fresh[name].nunique(dropna=False) <= 1:
            owner = spec.model.context.features[name].owner
            stuck.append(f"{name} (always {fresh[name].iloc[0]!r}; owner {owner})")
    figures.update(constant_features=stuck, new_decisions=len(fresh))
    if stuck:
        return GateResult("data", False, f"context features vary in the evaluation set but are constant in all {len(fresh)} new decisions "
                          f"of the window: {', '.join(stuck)}; the upstream feature is broken: have its owner fix it before retraining",
                          figures)
    return GateResult("data", True, f"{n} mature decisions, {share:.2%} quarantined, every feature varies", figures)


def _judged_lift(spec: Spec, rows: pd.DataFrame, candidate: Policy, champion: Policy, judges: Mapping[str, OutcomeModel]) -> dict[str, float]:
    """The candidate's predicted lift over the champion on ``rows``' contexts under each judge model (the
    direct method: no outcome noise, each judge's own bias)."""
    d1, d2 = candidate.action_distribution(rows), champion.action_distribution(rows)
    out = {}
    for name, model in judges.items():
        q = model.objective_of(model.predict_outcomes(rows), rows)
        out[name] = _sign(spec) * float(((d1 - d2) * q).sum(axis=1).mean())
    return out


def _squared_errors(spec: Spec, rows: pd.DataFrame, model: OutcomeModel) -> np.ndarray:
    """Per row, the squared error of ``model``'s predicted objective of the logged action against the
    realized objective; shape (n,)."""
    realized = realized_metrics(spec, rows)["objective"]
    action = spec.action_space.indices(rows["action_id"].to_numpy())
    predicted = model.objective_of(model.predict_outcomes(rows), rows)[np.arange(len(rows)), action]
    return np.asarray((predicted - realized) ** 2, dtype=np.float64)


def regression_gate(spec: Spec, frozen: pd.DataFrame, candidate: Policy, champion: Policy, reference: OutcomeModel) -> GateResult:
    """On the frozen evaluation set, the candidate is not worse than the champion beyond the tolerance: by
    the ``reference`` model's judgement (the loop's own trainer on the candidate's window: a candidate
    whose own pipeline went wrong cannot vouch for itself, and the champion's model, fitted on less, would
    favour the champion), not significantly by the doubly robust estimate (its upper bound), and its
    model predicts the realized objective of the logged actions no worse than the champion's: the lower
    bound of the paired difference of their squared errors (clustered by unit) may not put the
    candidate's root mean squared error above the champion's by more than the tolerance.

    The last test is the one with power on a frozen set of a few thousand rows: the doubly robust
    difference of two policies weighs each row where they disagree by the inverse propensity (the
    number of eligible actions), so its interval is several units of the objective wide there, while the
    prediction error uses every row. A model fitted on a broken join (shuffled outcomes) explains none
    of the frozen set's variance, and vouches for itself when it is its own reference."""
    gates = spec.model.adaptation.gates
    tol = gates.regression_tolerance
    if len(frozen) < 2:
        return GateResult("regression", False, "the frozen evaluation set is empty: log randomized decisions of the evaluation units "
                          "(`adaptation.evaluation_share`) before the first version", {"rows": len(frozen)})
    judged = _judged_lift(spec, frozen, candidate, champion, {"reference": reference})["reference"]
    p = paired_values(reference, frozen, candidate, champion, alpha=gates.alpha, spec=spec)["objective"]
    sign = _sign(spec)
    low, high = (p.low, p.high) if sign > 0 else (-p.high, -p.low)
    err_c, err_b = _squared_errors(spec, frozen, candidate.model), _squared_errors(spec, frozen, champion.model)
    diff = err_c - err_b
    units = frozen["unit_id"].to_numpy()
    per_unit = pd.Series(diff - diff.mean()).groupby(units).sum().to_numpy()
    se = float(np.sqrt(np.sum(per_unit**2)) / len(diff))
    z = float(stats.norm.ppf(1 - gates.alpha / 2))
    rmse_c, rmse_b = float(np.sqrt(err_c.mean())), float(np.sqrt(err_b.mean()))
    worse_by = float(np.sqrt(max(err_b.mean() + diff.mean() - z * se, 0.0))) - rmse_b  # the least RMSE increase the rows allow
    figures = {"rows": p.rows, "judged_lift": judged, "dr_lift": sign * p.difference, "dr_low": low, "dr_high": high, "tolerance": tol,
               "rmse": rmse_c, "champion_rmse": rmse_b, "rmse_increase_low": worse_by,
               "realized_sd": float(np.std(realized_metrics(spec, frozen)["objective"]))}
    if judged < -tol or high < -tol or worse_by > tol:
        by = (f"by the reference model's judgement {judged:+.4f} per unit" if judged < -tol
              else f"by the doubly robust estimate, at most {high:+.4f} per unit" if high < -tol
              else f"in predicting the realized {spec.model.objective.name} of the logged actions: root mean squared error "
                   f"{rmse_c:.3f} against the champion's {rmse_b:.3f} (at least {worse_by:+.3f} by the paired interval; the "
                   f"realized values' standard deviation {figures['realized_sd']:.3f})")
        return GateResult("regression", False, f"on the frozen evaluation set ({p.rows} randomized decisions) the candidate is worse than "
                          f"the champion {by} (tolerance {tol}): its training data, model or objective is wrong; compare its "
                          "lineage and training figures with the champion's", figures)
    return GateResult("regression", True, f"lift {judged:+.4f} per unit by the reference model, {sign * p.difference:+.4f} "
                      f"[{low:+.4f}, {high:+.4f}] doubly robust, root mean squared error {rmse_c:.3f} against the champion's "
                      f"{rmse_b:.3f}, on {p.rows} frozen randomized decisions", figures)


def off_policy_gate(spec: Spec, recent: pd.DataFrame, candidate: Policy, champion: Policy, reference: OutcomeModel) -> GateResult:
    """On recent decisions no candidate trained on (exact logged propensities): superior when the doubly
    robust lift's lower bound is above ``min_lift``; else non-inferior when the reference model's judged
    lift is above ``-non_inferiority_margin`` and the doubly robust interval does not put it significantly
    below that margin. The changes of every budget and guardrail are recorded (their wins name the
    reason); the constraints gate judges their limits."""
    settings = spec.model.adaptation
    gates = settings.gates
    margin = gates.non_inferiority_margin
    if len(recent) < 2:
        return GateResult("off-policy", False, "no recent decisions of the evaluation units are mature: wait for them", {"rows": len(recent)})
    paired = paired_values(reference, recent, candidate, champion, alpha=gates.alpha, spec=spec)
    judged = _judged_lift(spec, recent, candidate, champion, {"reference": reference})["reference"]
    p = paired["objective"]
    sign = _sign(spec)
    low, high = (p.low, p.high) if sign > 0 else (-p.high, -p.low)
    figures: dict[str, Any] = {"rows": p.rows, "judged_lift": judged, "dr_lift": sign * p.difference, "dr_low": low, "dr_high": high,
                               "min_lift": settings.min_lift, "margin": margin}
    wins = []
    for name, sense in ((t.name, t.sense) for t in mean_constraints(spec)):
        if name in paired:
            change = paired[name].difference
            figures[f"change:{name}"] = change
            if (change < 0) if sense == "<=" else (change > 0):
                wins.append(f"{name} {change:+.4f}")
    figures["wins"] = wins
    if low > settings.min_lift:
        return GateResult("off-policy", True, f"superior: lift {sign * p.difference:+.4f} per unit, lower bound {low:+.4f} > "
                          f"{settings.min_lift}", figures)
    if judged > -margin and high > -margin:
        return GateResult("off-policy", True, f"non-inferior: judged lift {judged:+.4f} > -{margin}, doubly robust "
                          f"{sign * p.difference:+.4f} [{low:+.4f}, {high:+.4f}]" + (f"; wins: {', '.join(wins)}" if wins else ""), figures)
    return GateResult("off-policy", False, f"on {p.rows} recent decisions the candidate's lift over the champion is {judged:+.4f} by the "
                      f"reference model, {sign * p.difference:+.4f} [{low:+.4f}, {high:+.4f}] doubly robust, below the margin -{margin}: "
                      "keep the champion; retrain when more decisions have matured", figures)


def _uses(spec: Spec, dist: np.ndarray, comps: Mapping[str, np.ndarray], ctx: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per unit expected use of every constraint term under ``dist`` (n, K); (n,) each."""
    return {t.name: (dist * _per_action(spec, t.formula, comps, ctx)).sum(axis=1) for t in mean_constraints(spec)}


def constraints_gate(spec: Spec, population: pd.DataFrame, candidate: Policy, judges: Mapping[str, OutcomeModel],
                     champion: Policy | None) -> GateResult:
    """Budgets and caps over the served policy, guardrails over its policy arm (overall and in every cohort
    value with enough units), each by the conservative side of the ``judges``' predictions, with the
    limits of ``spec`` (the product's)."""
    gates = spec.model.adaptation.gates
    tol = gates.constraint_tolerance
    ctx = {n: population[n].to_numpy() for n in spec.features if n in population}
    program = spec.eligible_units(ctx)
    if not program.any():
        return GateResult("constraints", False, "no unit of the planning population is in the program", {})
    h = candidate.holdout_share
    served = candidate.action_distribution(population)
    arm = served.copy()
    arm[:, spec.control.index] -= h
    arm = np.clip(arm / (1 - h), 0.0, 1.0)
    champ_arm = None
    if champion is not None:
        champ_arm = champion.action_distribution(population)
        champ_arm[:, spec.control.index] -= champion.holdout_share
        champ_arm = np.clip(champ_arm / (1 - champion.holdout_share), 0.0, 1.0)
    preds = {name: model.predict_outcomes(population) for name, model in judges.items()}
    figures: dict[str, Any] = {}
    failures = []
    terms = {t.name: (t.sense, t.limit) for t in mean_constraints(spec)}
    budgets = {b.name for b, _ in spec.budgets}
    per_judge = {j: (_uses(spec, served, c, ctx), _uses(spec, arm, c, ctx),
                     None if champ_arm is None else _uses(spec, champ_arm, c, ctx)) for j, c in preds.items()}
    for name, (sense, limit) in terms.items():
        use = [float((per_judge[j][0] if name in budgets else per_judge[j][1])[name][program].mean()) for j in per_judge]
        worst = max(use) if sense == "<=" else min(use)
        figures[name] = {"conservative": worst, "limit": limit, "by_model": dict(zip(per_judge, use, strict=True))}
        if (worst > limit * (1 + tol)) if sense == "<=" else (worst < limit * (1 - tol)):
            kind = "budget" if name in budgets else "guardrail"
            failures.append(f"{kind} {name}: {worst:.4f} per unit by the conservative side {'>' if sense == '<=' else '<'} {limit} "
                            f"(tolerance {tol:.0%})")
    for cap, mask in spec.caps:
        share = float(served[program][:, mask].sum(axis=1).mean())
        figures[cap.name] = {"share": share, "limit": cap.max_share}
        if share > cap.max_share * (1 + tol):
            failures.append(f"cap {cap.name}: {share:.3f} of units > {cap.max_share}")
    failures += _cohort_guardrails(spec, population, program, per_judge, terms, figures)
    if failures:
        return GateResult("constraints", False, "not feasible by the conservative side: " + "; ".join(failures)
                          + ": plan again with a tighter limit or pessimism, or keep the champion", figures)
    return GateResult("constraints", True, "every budget, cap and guardrail holds by the conservative side", figures)


def _cohort_guardrails(spec: Spec, population: pd.DataFrame, program: np.ndarray,
                       per_judge: Mapping[str, tuple[Any, Mapping[str, np.ndarray], Mapping[str, np.ndarray] | None]],
                       terms: Mapping[str, tuple[str, float]], figures: dict[str, Any]) -> list[str]:
    """Every guardrail in every value of every spec cohort with at least ``min_cohort_units`` units of the
    program, by the conservative judge there (the model predicting the worst use of the candidate's policy
    arm). A slice stops the candidate when both hold:

    * the candidate is worse there than the champion by more than chance: the paired difference of their
      predicted uses over the slice's units, one-sided p-value Holm-adjusted over every slice (as the
      guardrail alerts are), below the side ``gates.alpha / 2`` of the gates' intervals; a good candidate
      no worse than the champion anywhere is so stopped by chance in some slice at most that often;
    * feasibility is not shown by the conservative side: the upper bound of the slice's mean (the same
      side, standard error over its units) is beyond the limit with its tolerance. A candidate that
      breaks a guardrail in a slice where it is worse passes only when that bound is wrongly within, at
      most that often too, however many slices there are.

    With no champion (the first version) a slice stops the candidate when its mean is beyond the limit by
    more than chance (the same Holm-adjusted level): a first version has nothing to be worse than, and
    its small cohorts are not asked to prove feasibility. Every slice's figures are recorded; returns the
    failures."""
    gates = spec.model.adaptation.gates
    tol, side = gates.constraint_tolerance, gates.alpha / 2
    z = float(stats.norm.isf(side))
    tests: list[dict[str, Any]] = []
    for cohort in (c for c in spec.model.cohorts if c in population):
        values = population[cohort].astype(str).to_numpy()
        for value in np.unique(values):
            rows = program & (values == value)
            units = int(rows.sum())
            if units < max(2, gates.min_cohort_units):
                continue
            root = np.sqrt(units)
            for g, _f in spec.guardrails:
                name = next(n for n in terms if n == g.name or n.startswith(f"{g.name}:"))
                sense, limit = terms[name]
                sign = 1.0 if sense == "<=" else -1.0  # sign * use: higher is worse
                use = {j: arms[1][name][rows] for j, arms in per_judge.items()}
                judge = max(use, key=lambda j: sign * float(use[j].mean()))
                mine = use[judge]
                mean, se = float(mine.mean()), float(mine.std(ddof=1) / root)
                bound = mean + sign * z * se
                beyond = sign * (bound - limit * (1 + sign * tol)) > 0
                champ = per_judge[judge][2]
                over = sign * (mean - limit * (1 + sign * tol))  # without a champion: beyond the limit by more than chance
                t: dict[str, Any] = {"name": name, "cohort": cohort, "value": value, "units": units, "judge": judge, "conservative": mean,
                                     "se": se, "bound": bound, "limit": limit, "beyond": beyond, "champion": None,
                                     "p": float(stats.norm.sf(over / se)) if se > 0 else float(over <= 0)}
                if champ is not None:
                    diff = sign * (mine - champ[name][rows])
                    d_mean, d_se = float(diff.mean()), float(diff.std(ddof=1) / root)
                    t.update(champion=float(champ[name][rows].mean()),
                             p=float(stats.norm.sf(d_mean / d_se)) if d_se > 0 else float(d_mean <= 0))
                tests.append(t)
    adjusted = holm_adjusted(np.array([t["p"] for t in tests]))
    failures = []
    for t, p_adj in zip(tests, adjusted, strict=True):
        keys = ("conservative", "se", "bound", "judge", "limit", "champion", "units")
        figures[f"{t['name']}[{t['cohort']}={t['value']}]"] = {k: t[k] for k in keys} | {
            ("p_worse_adjusted" if t["champion"] is not None else "p_beyond_adjusted"): float(p_adj)}
        if p_adj < side and (t["beyond"] or t["champion"] is None):
            than = (f"; beyond it by more than chance (p = {p_adj:.2g} adjusted over {len(tests)} slices)" if t["champion"] is None else
                    f"; worse than the champion's {t['champion']:.4f} (p = {p_adj:.2g} adjusted over {len(tests)} slices)")
            failures.append(f"guardrail {t['name']} in {t['cohort']} = {t['value']}: {t['conservative']:.4f} per unit, up to {t['bound']:.4f} "
                            f"by the conservative side ({t['units']} units), beyond {t['limit']}{than}")
    return failures


def serving_gate(policy: Policy, contexts: pd.DataFrame, *, timer: Callable[[], float] = time.perf_counter) -> GateResult:
    """Time ``adaptation.gates.latency_samples`` single decisions of the service's
    :class:`~drivetrain.serve.Decider` in process (after its warm-up); p99 within the latency budget.
    Each context is decided three times and its fastest time counts: what the policy costs, not the
    pauses another process on the machine causes."""
    from drivetrain.serve import Decider

    spec = policy.spec
    budget = spec.model.serving.latency_budget_ms
    samples = min(spec.model.adaptation.gates.latency_samples, len(contexts))
    if samples == 0:
        return GateResult("serving", False, "no contexts to time decisions on", {})
    decider = Decider(spec, policy)
    rows = contexts.iloc[:samples].to_dict("records")
    now = pd.Timestamp("2026-01-01", tz="UTC").to_pydatetime()
    times = np.empty(samples)
    for i, row in enumerate(rows):
        unit = str(row.pop("unit_id"))
        context = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items() if k in spec.features}
        best = float("inf")
        for repeat in range(3):
            start = timer()
            decider.decide(unit, context, request_id=f"latency-{i}-{repeat}", now=now)
            best = min(best, timer() - start)
        times[i] = best * 1000.0
    p50, p99 = float(np.percentile(times, 50)), float(np.percentile(times, 99))
    figures = {"decisions": samples, "p50_ms": p50, "p99_ms": p99, "budget_ms": budget}
    if p99 > budget:
        return GateResult("serving", False, f"p99 of a decision in process is {p99:.1f} ms, over the latency budget of {budget:g} ms "
                          "(`serving.latency_budget_ms`): use fewer or shallower trees, or no pessimism", figures)
    return GateResult("serving", True, f"p99 {p99:.2f} ms within {budget:g} ms", figures)
