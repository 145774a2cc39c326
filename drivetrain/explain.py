"""Answers in the form a committee asks: effects and the policy's action mix by cohort, why one unit got its
action, and the trade-off between the objective and a constraint's limit.

Everything here reads a fitted model or a policy and a population of contexts; nothing is written to the
store. Effects are the model's predictions averaged over a cohort (the spread across the cross-fitted
models is their uncertainty); the off-policy estimates with confidence intervals are the Simulator's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from drivetrain.assembly import per_program_unit, plan_policy
from drivetrain.errors import InfeasibleError, UsageError
from drivetrain.model import OutcomeModel
from drivetrain.policy import Policy
from drivetrain.spec import Spec, formula_on, mean_constraints, parse_spec

__all__ = ["Frontier", "UnitExplanation", "cohort_table", "effects_by_cohort", "explain_unit", "frontier"]


def cohort_table(spec: Spec, contexts: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """One label column per entry of ``by``: a categorical or boolean feature as it is, or ``feature:q`` for a
    numeric feature cut into ``q`` bands of equal counts (``tenure_days:4``). Shape (n, len(by))."""
    out: dict[str, Any] = {}
    for entry in by:
        name, _, bands = entry.partition(":")
        feature = spec.model.context.features.get(name)
        if feature is None:
            raise UsageError(f"`by` must name context features of the spec {sorted(spec.features)}, got {name!r}")
        if feature.personal:
            raise UsageError(f"`by` must not name personal data, got {name!r}")
        if name not in contexts:
            raise UsageError(f"`by` names {name!r}, which the contexts do not have (columns {sorted(contexts.columns)})")
        if feature.type in ("integer", "float"):
            if not bands.isdigit() or int(bands) < 2:
                raise UsageError(f"`by` must give a numeric feature as NAME:BANDS with BANDS >= 2 (e.g. {name}:4), got {entry!r}")
            values = pd.to_numeric(contexts[name])
            codes = pd.qcut(values, int(bands), labels=False, duplicates="drop")
            # each band by the smallest and largest value in it ("2 to 6"), in their order; "missing" last
            named = {c: f"{values[codes == c].min():g} to {values[codes == c].max():g}" for c in sorted(codes.dropna().unique())}
            out[name] = pd.Categorical(codes.map(named).fillna("missing"), categories=[*named.values(), "missing"], ordered=True)
        else:
            if bands:
                raise UsageError(f"`by` bands only numeric features, got {entry!r} for the {feature.type} feature {name!r}")
            out[name] = contexts[name].astype(object).where(contexts[name].notna(), "missing").astype(str).to_numpy()
    return pd.DataFrame(out, index=contexts.index)


def effects_by_cohort(policy: Policy, contexts: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Per cohort (the cross of ``by``) and action: units, the predicted effect on the objective per unit
    against control (mean over the cohort's units eligible for the action), its spread across the
    cross-fitted models (``nan`` with one model), and the share of the cohort's units the policy's plan
    gives the action (before the holdout and exploration)."""
    spec = policy.spec
    model: OutcomeModel = policy.model
    labels = cohort_table(spec, contexts, by)
    objective = formula_on(spec, spec.objective, model.predict_outcomes(contexts), contexts)
    folds = [formula_on(spec, spec.objective, f, contexts) for f in model.predict_folds(contexts)]
    control = spec.control.index
    eligible = spec.eligible_actions({n: contexts[n].to_numpy() for n in spec.features if n in contexts})
    scores = policy.scores(contexts)
    chosen = np.argmax(scores, axis=1)
    rows: list[dict[str, Any]] = []
    for key, part in labels.groupby(list(labels.columns), sort=True, dropna=False).indices.items():
        key = key if isinstance(key, tuple) else (key,)
        idx = np.asarray(part)
        for k, action in enumerate(spec.action_space.ids):
            ok = eligible[idx, k]
            effect = float(np.mean(objective[idx[ok], k] - objective[idx[ok], control])) if ok.any() else float("nan")
            spread = (float(np.std([np.mean(f[idx[ok], k] - f[idx[ok], control]) for f in folds], ddof=1))
                      if len(folds) > 1 and ok.any() else float("nan"))
            rows.append({**dict(zip(labels.columns, key, strict=True)), "units": int(idx.size), "action_id": action,
                         "eligible": int(ok.sum()), "effect": effect, "effect_spread": spread,
                         "share": float(np.mean(chosen[idx] == k))})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class UnitExplanation:
    """Why one unit got its action: per action the predicted objective, the price of each constraint and
    cap it uses (shadow price times predicted use), and the priced score the plan maximizes; the chosen
    action, the runner-up and the margin between their scores."""

    unit_id: str
    actions: pd.DataFrame
    chosen: str
    runner_up: str | None
    margin: float

    def summary(self) -> str:
        best = self.actions.set_index("action_id").loc[self.chosen]
        text = (f"unit {self.unit_id}: {self.chosen} (predicted objective {best['objective']:+.4f}, priced score"
                f" {best['score']:+.4f})")
        if self.runner_up is None:
            return text + "; no other action is eligible"
        other = self.actions.set_index("action_id").loc[self.runner_up]
        prices = [c for c in self.actions.columns if c.startswith("price:")]
        why = ", ".join(f"{c[6:]} {best[c] - other[c]:+.4f}" for c in prices if abs(best[c] - other[c]) > 0)
        return (text + f" wins over {self.runner_up} (objective {other['objective']:+.4f}, score {other['score']:+.4f}) by"
                f" {self.margin:.4f}: objective {best['objective'] - other['objective']:+.4f}"
                + (f", prices {why}" if why else ", no constraint priced"))


def explain_unit(policy: Policy, context: pd.DataFrame | Mapping[str, Any]) -> UnitExplanation:
    """The explanation of the plan's choice for one context (a mapping, or a one-row frame), with
    ``unit_id`` among its fields."""
    frame = pd.DataFrame([dict(context)]) if isinstance(context, Mapping) else context.reset_index(drop=True)
    if len(frame) != 1:
        raise UsageError(f"`context` must be one unit's context, got {len(frame)} rows")
    spec = policy.spec
    components = policy.model.predict_outcomes(frame)
    objective = formula_on(spec, spec.objective, components, frame)[0]
    scores, price = policy.priced(frame, components)
    table = pd.DataFrame({"action_id": list(spec.action_space.ids), "eligible": np.isfinite(scores[0]), "objective": objective})
    for term in mean_constraints(spec):
        lam = policy.multipliers.get(term.name, 0.0)
        use = np.broadcast_to(formula_on(spec, term.formula, components, frame), scores.shape)[0]
        table[f"use:{term.name}"] = use
        table[f"price:{term.name}"] = np.where(table["eligible"], lam * term.sign * use, 0.0)
    for cap, mask in spec.caps:
        table[f"price:{cap.name}"] = np.where(table["eligible"], policy.multipliers.get(cap.name, 0.0) * mask, 0.0)
    table["score"] = scores[0]
    table["total_price"] = price[0]
    order = np.argsort(-scores[0], kind="stable")
    chosen = int(order[0])
    runner = int(order[1]) if len(order) > 1 and np.isfinite(scores[0, order[1]]) else None
    margin = float(scores[0, chosen] - scores[0, runner]) if runner is not None else float("inf")
    unit = str(frame["unit_id"].iloc[0]) if "unit_id" in frame else "-"
    return UnitExplanation(unit, table, spec.action_space.ids[chosen], None if runner is None else spec.action_space.ids[runner], margin)


@dataclass(frozen=True)
class Frontier:
    """The objective against one constraint's limit: one row per limit with the predicted objective per
    unit as served, the predicted use of every constraint and cap as served (per program unit, as the spec's
    limits speak), and the constraint's shadow
    price (the objective per unit one more unit of the limit would buy); a limit no served policy can meet
    is a row with ``feasible`` False and the optimizer's reason."""

    constraint: str
    table: pd.DataFrame

    def figure_html(self) -> str:
        """A self-contained HTML page with the curve (Plotly, embedded: it opens offline)."""
        import plotly.graph_objects as go

        t = self.table
        fig = go.Figure(go.Scatter(x=t["limit"], y=t["objective"], mode="lines+markers", name="objective",
                                   customdata=np.stack([t["price"], t["binding"]], axis=1),
                                   hovertemplate="limit %{x}<br>objective %{y:.4f}<br>shadow price %{customdata[0]:.4f}"
                                                 "<br>binding %{customdata[1]}<extra></extra>"))
        fig.update_layout(template="plotly_white", title=f"Objective per unit against the limit of {self.constraint}",
                          xaxis_title=f"limit of {self.constraint}", yaxis_title="predicted objective per unit, as served")
        return str(fig.to_html(include_plotlyjs=True, full_html=True))


def _served_objective(plan: Any, spec: Spec) -> float:
    """The plan's mean objective per unit as served: control for the holdout, the plan mixed with uniform
    exploration over the eligible actions for everyone else (the mix :func:`~drivetrain.optimize.served_use`
    applies to the constraints)."""
    problem = plan.problem
    exp = spec.model.experimentation
    eps, h = exp.exploration_rate, exp.holdout_share
    uniform = problem.eligible / problem.eligible.sum(axis=1, keepdims=True)
    both = (1.0 - h) * ((1.0 - eps) * plan.assignment.probabilities + eps * uniform)
    both[:, spec.control.index] += h
    values = np.where(problem.eligible, problem.values, 0.0)
    return float(np.mean((both * values).sum(axis=1)))


def frontier(spec: Spec, model: OutcomeModel, contexts: pd.DataFrame, constraint: str, limits: Sequence[float]) -> Frontier:
    """Plan once per limit of ``constraint`` (a budget, a one-sided guardrail, a guardrail kept per cohort
    value by its name (each value's bound moves together), or a cap's share, by name) on ``contexts``,
    predicting once, and tabulate the trade-off. A guardrail kept per cohort value reports the sum of its
    values' prices, binding when any of them binds."""
    terms = {t.name: t for t in mean_constraints(spec)}
    per_cohort = {t.source: [u.name for u in terms.values() if u.source == t.source] for t in terms.values() if t.cohort is not None}
    caps = [cap.name for cap, _ in spec.caps]
    term = terms.get(constraint)
    names = [constraint] if term is not None or constraint in caps else per_cohort.get(constraint, [])
    if not names:
        raise UsageError(f"`constraint` must name a budget, guardrail or cap of the spec {sorted([*terms, *per_cohort, *caps])}, got {constraint!r}")
    if term is not None and term.kind == "guardrail" and (term.name != term.source or term.cohort is not None):
        raise UsageError(f"`constraint` must be a one-sided guardrail to move its limit, got {constraint!r}"
                         + (f" (move every value of it by its name {term.source!r})" if term.cohort is not None else ""))
    if not limits:
        raise UsageError("`limits` must hold at least one value")
    predictions = (model.predict_outcomes(contexts), None)
    rows: list[dict[str, Any]] = []
    for limit in sorted(float(v) for v in limits):
        planned = spec
        budgets = guardrails = None
        if constraint in caps:
            if not 0 <= limit <= 1:
                raise UsageError(f"`limits` of the cap {constraint!r} must be shares in [0, 1], got {limit}")
            raw = spec.model.model_dump(mode="json")
            for cap in raw["constraints"]["caps"]:
                if cap["name"] == constraint:
                    cap["max_share"] = limit
            planned = parse_spec(raw, source=spec.source)
        elif term is not None and term.kind == "budget":
            budgets = {constraint: limit}
        else:
            guardrails = {constraint if term is None else term.source: limit}
        try:
            plan = plan_policy(planned, model, contexts, predictions=predictions, budget_overrides=budgets, guardrail_overrides=guardrails)
        except (InfeasibleError, UsageError) as exc:  # a limit the served policy cannot meet (exploration alone may spend more)
            rows.append({"limit": limit, "feasible": False, "objective": float("nan"), "plan_objective": float("nan"),
                         "price": float("nan"), "binding": False, "reason": str(exc).splitlines()[0]})
            continue
        a = plan.assignment
        served = {f"use:{k}": float(v) for k, v in per_program_unit(spec, contexts, plan.served).items()}
        rows.append({"limit": limit, "feasible": True, "objective": _served_objective(plan, spec), "plan_objective": float(a.objective),
                     **served, "price": float(sum(a.multipliers.get(n, 0.0) for n in names)),
                     "binding": any(n in a.binding for n in names), "reason": ""})
    return Frontier(constraint, pd.DataFrame(rows))
