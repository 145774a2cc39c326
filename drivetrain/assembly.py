"""The model assembly line wired end to end: store -> Modeler -> Optimizer -> Policy -> Simulator.

This is the one place that imports every stage (docs/architecture.md, the dependency rule). Each function takes real
objects (a store, a spec, a model) and returns values; the command line and the demo only call these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from drivetrain.data import JoinReport, Store, training_table, write_baselines
from drivetrain.errors import DataError, UsageError
from drivetrain.model import OutcomeModel
from drivetrain.optimize import (
    Assignment,
    AssignmentProblem,
    LagrangianOptimizer,
    Optimizer,
    pessimistic,
    problem_from_spec,
    served_use,
    split_ties,
    with_margin,
)
from drivetrain.optimize import as_served as served_limits
from drivetrain.policy import Policy, TieSplit
from drivetrain.simulate import DirectMethod, PolicyEstimate, default_estimators, evaluate_metrics, evaluate_policy
from drivetrain.spec import Spec, compile_formula, formula_on, formula_spread, mean_constraints
from drivetrain.stats import cluster_codes, pseudo_outcomes, standard_error

__all__ = [
    "ActionDistribution",
    "LogEvaluation",
    "PairedDifference",
    "Plan",
    "evaluate_on_logs",
    "fit_model",
    "fixed_action",
    "paired_differences",
    "per_program_unit",
    "plan_policy",
    "realized_metrics",
    "write_policy_baselines",
]

#: A policy as a function from contexts to action probabilities (n, K).
ActionDistribution = Callable[[pd.DataFrame], np.ndarray]


def fit_model(store: Store, as_of: datetime, model: OutcomeModel, *,
              progress: Callable[[int, int, str], None] | None = None, since: datetime | None = None,
              until: datetime | None = None) -> tuple[OutcomeModel, pd.DataFrame, JoinReport]:
    """Build the training table as of ``as_of`` and fit ``model`` on it (``progress`` as in
    :meth:`~drivetrain.model.OutcomeModel.fit`); ``since`` / ``until`` keep the decisions made in
    ``[since, until)`` only (a window of the log, say the weeks before a change of the product)."""
    if since is not None and until is not None and until <= since:
        raise UsageError(f"`until` must be after `since`, got since {since.isoformat()} and until {until.isoformat()}")
    table, report = training_table(store, as_of)
    frame = table.to_pandas()
    if since is not None or until is not None:
        decided = pd.to_datetime(frame["decided_at"], utc=True)
        keep = np.ones(len(frame), dtype=bool)
        if since is not None:
            keep &= (decided >= pd.Timestamp(since)).to_numpy()
        if until is not None:
            keep &= (decided < pd.Timestamp(until)).to_numpy()
        frame = frame[keep].reset_index(drop=True)
    if frame.empty:
        window = "" if since is None and until is None else (
            f" decided in [{since.isoformat() if since else '-inf'}, {until.isoformat() if until else 'inf'})")
        raise DataError(f"no mature decisions{window} as of {as_of.isoformat()}: {report.summary()}")
    return model.fit(frame, store.spec, progress=progress), frame, report


@dataclass(frozen=True)
class Plan:
    """The optimizer's answer on a population: the policy, its assignment (the plan; its ``usage`` is the
    plan's own), the spec's problem it answers, and the predicted mean use of each constraint and cap as
    served (holdout and exploration included, see :func:`~drivetrain.optimize.served_use`)."""

    policy: Policy
    assignment: Assignment
    problem: AssignmentProblem
    served: Mapping[str, float]


def plan_policy(
    spec: Spec,
    model: OutcomeModel,
    contexts: pd.DataFrame,
    *,
    optimizer: Optimizer | None = None,
    budget_overrides: Mapping[str, float] | None = None,
    guardrail_overrides: Mapping[str, float] | None = None,
    pessimism: float | None = None,
    margin: float = 0.0,
    version: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    predictions: tuple[Mapping[str, np.ndarray], Sequence[Mapping[str, np.ndarray]] | None] | None = None,
    as_served: bool = True,
) -> Plan:
    """Optimize lever settings on ``contexts`` under the spec's constraints and return the policy whose
    prices reproduce that assignment unit by unit. ``pessimism`` = z plans on the objective's lower and
    the costs' upper bounds, z standard deviations away: the spread of each formula (objective, budget,
    guardrail) across the cross-fitted models' predictions. ``predictions`` (means, per-fold components)
    from ``model.predict_outcomes(contexts)`` and ``model.predict_folds(contexts)`` saves predicting again
    when planning several times on one population. With ``as_served`` (the default) the limits hold for
    the policy as served, with the spec's holdout and exploration (budgets and caps over both arms, a
    guardrail over the policy arm, as the evaluation counts them); ``False`` holds them for the plan alone.
    ``margin`` plans every limit that share of itself to its safe side (:func:`~drivetrain.optimize.with_margin`)."""
    if pessimism is not None and pessimism < 0:
        raise UsageError(f"`pessimism` must be >= 0 (a z value such as 1.645), got {pessimism}")
    fold_models = len(next(iter(getattr(model, "models_", {}).values()), ()))
    if pessimism and fold_models < 2:
        raise UsageError(f"`pessimism` needs a model cross-fitted on 2 or more folds (their spread is the uncertainty it "
                         f"plans on), got {pessimism} with a model of {fold_models} (`drivetrain fit --folds`)")
    columns = {n: contexts[n].to_numpy() for n in spec.features if n in contexts}
    if predictions is not None:
        means, folds = predictions
    else:
        means, folds = model.predict_outcomes(contexts), (model.predict_folds(contexts) if pessimism else None)
    problem = problem_from_spec(spec, means, columns, budget_overrides=budget_overrides, guardrail_overrides=guardrail_overrides)
    if pessimism and folds is not None:
        value_se = formula_spread(spec, spec.objective, folds, columns)
        program = spec.eligible_units(columns)[:, None]  # units outside the program count zero (problem_from_spec)
        coef_se = {t.name: np.where(program, formula_spread(spec, t.formula, folds, columns), 0.0) for t in mean_constraints(spec)}
        problem = pessimistic(problem, value_se=value_se, coef_se=coef_se, z=pessimism)
    if margin:
        problem = with_margin(problem, margin)
    experimentation = spec.model.experimentation
    serving = {"exploration_rate": experimentation.exploration_rate, "holdout_share": experimentation.holdout_share}
    solved = served_limits(problem, spec, **serving) if as_served else problem
    assignment = (optimizer or LagrangianOptimizer()).assign(solved)
    # units tied at the multipliers are split as the plan splits them (per request), not all sent one way
    split = split_ties(problem, spec, assignment.multipliers, **(serving if as_served else {"exploration_rate": 0.0, "holdout_share": 0.0}))
    policy = Policy.from_model(spec, model, dict(assignment.multipliers), version=version, metadata=metadata,
                               pessimism=float(pessimism or 0.0), tie_split=None if split is None else TieSplit(*split))
    return Plan(policy, assignment, problem, served_use(problem, spec, assignment.probabilities, **serving))


def per_program_unit(spec: Spec, contexts: pd.DataFrame, usage: Mapping[str, float]) -> dict[str, float]:
    """A plan's use of its constraints and caps (``Plan.served``, ``Assignment.usage``: means over every
    unit, units outside the program counting zero) per program unit, as the spec's limits speak: a
    guardrail kept per cohort value per program unit of that value, as the mean of its formula there."""
    columns = {n: contexts[n].to_numpy() for n in spec.features if n in contexts}
    program = spec.eligible_units(columns)
    out = {name: value / (float(np.mean(program)) or 1.0) for name, value in usage.items()}
    for term in mean_constraints(spec):
        if term.cohort is not None and term.name in usage:
            out[term.name] = usage[term.name] / (float(np.mean(program & (columns[term.cohort[0]] == term.cohort[1]))) or 1.0)
    return out


def fixed_action(spec: Spec, selector: Mapping[str, Any], *, where: str | None = None) -> ActionDistribution:
    """What-if policy: the action matching ``selector`` (lever -> value; a lever it leaves out keeps the
    control's value) for units where ``where`` holds (a formula over the context) and may get it; control
    for everyone else."""
    space = spec.action_space
    if unknown := sorted(set(selector) - set(spec.levers)):
        raise UsageError(f"scenario must name levers of the spec {list(spec.levers)}, got {unknown}")
    selector = {**spec.control.values, **selector}
    found = space.find(selector)
    if found is None:
        raise UsageError(f"scenario must name a valid action (lever values of one of {list(space.ids)}), got {dict(selector)}")
    condition = compile_formula(where, variables=set(spec.features), field="where") if where else None

    def distribution(contexts: pd.DataFrame) -> np.ndarray:
        cols = {n: contexts[n].to_numpy() for n in spec.features if n in contexts}
        n = len(contexts)
        target = spec.eligible_actions(cols)[:, found.index]
        if condition is not None:
            target &= np.broadcast_to(np.asarray(condition(cols), dtype=bool), (n,))
        dist = np.zeros((n, len(space)))
        dist[np.arange(n), np.where(target, found.index, spec.control.index)] = 1.0
        return dist

    return distribution


def realized_metrics(spec: Spec, table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-decision realized objective and every constraint formula of logged rows; each (n,)."""
    action = spec.action_space.indices(table["action_id"].to_numpy())
    comps = {c: table[c].to_numpy(dtype=np.float64)[:, None] for c in spec.outcomes}
    ctx = {n: table[n].to_numpy() for n in spec.features if n in table}
    out = {"objective": formula_on(spec, spec.objective, comps, ctx, lever_index=action).reshape(-1)}
    for term in mean_constraints(spec):
        out[term.name] = np.broadcast_to(formula_on(spec, term.formula, comps, ctx, lever_index=action), (len(table), 1)).reshape(-1)
    return out


@dataclass(frozen=True)
class LogEvaluation:
    """Off-policy estimates of several policies from one log, as :func:`evaluate_on_logs` returns them.

    ``objective[policy][estimator]``: the objective by every estimator; ``constraints[policy][name]``: each
    budget and guardrail side by ``constraint_estimator``, and each cap's share (estimator ``share``).
    Policies keep the order they were given in.
    """

    objective: Mapping[str, Mapping[str, PolicyEstimate]]
    constraints: Mapping[str, Mapping[str, PolicyEstimate]]
    constraint_estimator: str

    @property
    def policies(self) -> tuple[str, ...]:
        return tuple(self.objective)

    def estimate(self, policy: str, metric: str = "objective", estimator: str | None = None) -> PolicyEstimate:
        """One estimate: of the objective by ``estimator`` (default: ``constraint_estimator``), or of a
        constraint or cap ``metric``; a name this evaluation does not have is an error that lists them."""
        if policy not in self.objective:
            raise UsageError(f"`policy` must be one of the evaluated policies {list(self.objective)}, got {policy!r}")
        if metric == "objective":
            by = self.objective[policy]
            name = self.constraint_estimator if estimator is None else estimator
            if name not in by:
                raise UsageError(f"`estimator` must be one of {list(by)}, got {name!r}")
            return by[name]
        found = self.constraints[policy].get(metric)
        if found is None or (estimator is not None and found.estimator != estimator):
            raise UsageError(f"`metric` must be 'objective' or one of {list(self.constraints[policy])}"
                             f"{'' if estimator is None else f' (by {estimator})'}, got {metric!r}")
        return found

    def to_frame(self) -> pd.DataFrame:
        """One row per (policy, metric, estimator): policy, metric, estimator, value, std_error, ci_low,
        ci_high, ess_ratio, warnings (joined by '; '), for a file or a notebook."""
        rows = [_row(p, "objective", e) for p, by in self.objective.items() for e in by.values()]
        rows += [_row(p, metric, e) for p, by in self.constraints.items() for metric, e in by.items()]
        order = {p: i for i, p in enumerate(self.objective)}
        return pd.DataFrame(rows).sort_values("policy", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)


def evaluate_on_logs(
    model: OutcomeModel, table: pd.DataFrame, policies: Mapping[str, ActionDistribution], *, alpha: float = 0.05,
    fitted_on_table: bool = True, constraint_estimator: str = "DR",
) -> LogEvaluation:
    """Off-policy estimates of each policy from logged rows: every estimator on the objective, the
    ``constraint_estimator``'s (doubly robust by default) of every budget and guardrail formula, and each
    cap's share (estimator ``share``: the policy's probability of the cap's actions, exact on the logged
    contexts). Budgets, guardrails and caps count the rows of units in the program, as the spec defines
    them (a guardrail kept per cohort value: the mean of its formula over that value's program rows); the
    objective counts every row.

    With ``fitted_on_table`` the model's out-of-fold predictions of its own training rows serve as the
    reward model (cross-fitting keeps DR unbiased); otherwise the model predicts ``table``. A policy chosen
    on the same rows it is evaluated on is judged optimistically: evaluate on a later window. With a
    ``unit_id`` column the intervals are cluster-robust by unit (a unit's decisions are not independent).
    """
    known = default_estimators(with_model=True)
    if constraint_estimator not in known:
        raise UsageError(f"`constraint_estimator` must be one of {sorted(known)}, got {constraint_estimator!r}")
    spec = model.spec_
    action = spec.action_space.indices(table["action_id"].to_numpy())
    pscore = table["propensity"].to_numpy(dtype=np.float64)
    cluster = table["unit_id"].to_numpy() if "unit_id" in table else None
    rewards = realized_metrics(spec, table)
    predictions = model.training_predictions() if fitted_on_table else model.predict_outcomes(table)
    ctx = {n: table[n].to_numpy() for n in spec.features if n in table}
    estimated = {"objective": model.objective_of(predictions, ctx)}
    for term in mean_constraints(spec):
        estimated[term.name] = np.broadcast_to(formula_on(spec, term.formula, predictions, ctx), estimated["objective"].shape)
    # budgets, guardrails and caps are means per unit in the program (the spec's definition): only its rows count
    program = spec.eligible_units(ctx)
    caps = {cap.name: np.tile(mask.astype(np.float64), (int(program.sum()), 1)) for cap, mask in spec.caps}
    in_program = {"action": action[program], "pscore": pscore[program], "cluster": None if cluster is None else cluster[program]}
    # a guardrail term of one cohort value is where(f == v, g - bound, 0): on the program rows of that value it
    # is g - bound, so it is estimated there and told as the value's own mean of g, the figure its bound speaks of
    cohort_terms = {}
    for term in mean_constraints(spec):
        if term.cohort is not None and term.bound is not None:
            cohort_terms[term.name] = (term.bound, program & (np.asarray(ctx[term.cohort[0]]) == term.cohort[1]))
    objective: dict[str, dict[str, PolicyEstimate]] = {}
    constraints: dict[str, dict[str, PolicyEstimate]] = {}
    for label, policy in policies.items():
        dist = policy(table)
        estimates: dict[str, PolicyEstimate] = evaluate_policy(
            reward=rewards["objective"], action=action, pscore=pscore, action_dist=dist,
            estimated_rewards=estimated["objective"], cluster=cluster, alpha=alpha)
        objective[label] = {e.estimator: e for e in estimates.values()}
        constraints[label] = {}
        others = {k: v[program] for k, v in rewards.items() if k != "objective"}
        if others and program.any():
            constraints[label].update(evaluate_metrics(
                others, action_dist=dist[program], estimated_rewards={k: estimated[k][program] for k in others},
                estimator=known[constraint_estimator], alpha=alpha, **in_program))
            for name, (bound, rows) in cohort_terms.items():  # a guardrail per cohort value, on that value's rows
                if not rows.any():  # no logged unit of that value: no estimate, rather than a figure of none
                    constraints[label].pop(name, None)
                    continue
                e = evaluate_metrics({name: rewards[name][rows]}, action=action[rows], pscore=pscore[rows],
                                     cluster=None if cluster is None else cluster[rows], action_dist=dist[rows],
                                     estimated_rewards={name: estimated[name][rows]}, estimator=known[constraint_estimator],
                                     alpha=alpha)[name]
                constraints[label][name] = replace(e, value=bound + e.value, ci_low=bound + e.ci_low, ci_high=bound + e.ci_high)
        if caps:
            # a cap's share is the policy's own probability of its actions: exact on these contexts, no outcome needed
            # (the direct method with the indicator as its "model"; its interval is the sampling of contexts)
            share = evaluate_metrics({name: np.zeros(len(m)) for name, m in caps.items()}, action_dist=dist[program],
                                     estimated_rewards=caps, estimator=DirectMethod(), alpha=alpha, **in_program)
            constraints[label].update({name: replace(e, estimator="share", warnings=()) for name, e in share.items()})
    return LogEvaluation(objective, constraints, constraint_estimator)


@dataclass(frozen=True)
class PairedDifference:
    """A policy's doubly robust value of the objective minus a baseline's, on the same logged rows: the
    mean of one pseudo-outcome difference per row (paired, so the noise both share cancels), with its
    interval clustered by unit; per row of the ``rows`` it is taken over (a what-if's segment, or all)."""

    policy: str
    baseline: str
    rows: int
    value: float
    baseline_value: float
    difference: float
    std_error: float
    ci_low: float
    ci_high: float


def paired_differences(
    model: OutcomeModel, table: pd.DataFrame, policies: Mapping[str, ActionDistribution], *, baseline: str = "control",
    segments: Mapping[str, np.ndarray] | None = None, alpha: float = 0.05, fitted_on_table: bool = True,
) -> dict[str, PairedDifference]:
    """Each policy of ``policies`` but ``baseline`` against ``baseline`` on the logged rows of ``table``:
    with gamma the doubly robust pseudo-outcomes of the objective (:func:`drivetrain.stats.pseudo_outcomes`),
    the difference per row is ``sum_k (pi(k|x) - pi_0(k|x)) gamma_k`` and its mean the DR difference, in the
    objective's own units; the standard error is cluster-robust by ``unit_id`` as
    :func:`drivetrain.stats.standard_error` computes it. ``segments[name]`` (n,) bool restricts a policy's
    difference to those rows (a what-if ``--where``: per unit of the segment, not per every unit).
    ``fitted_on_table`` as in :func:`evaluate_on_logs`."""
    if baseline not in policies:
        raise UsageError(f"`baseline` must be one of the policies {list(policies)}, got {baseline!r}")
    segments = dict(segments or {})
    if unknown := sorted(set(segments) - set(policies)):
        raise UsageError(f"`segments` must name policies of {list(policies)}, got {unknown}")
    spec = model.spec_
    n = len(table)
    action = spec.action_space.indices(table["action_id"].to_numpy())
    pscore = table["propensity"].to_numpy(dtype=np.float64)
    predictions = model.training_predictions() if fitted_on_table else model.predict_outcomes(table)
    ctx = {name: table[name].to_numpy() for name in spec.features if name in table}
    gamma = pseudo_outcomes(realized_metrics(spec, table)["objective"], action, pscore, model.objective_of(predictions, ctx))
    base = (policies[baseline](table) * gamma).sum(axis=1)
    units = table["unit_id"].to_numpy() if "unit_id" in table else None
    z = float(NormalDist().inv_cdf(1.0 - alpha / 2.0))
    out: dict[str, PairedDifference] = {}
    for name, policy in policies.items():
        if name == baseline:
            continue
        keep = np.ones(n, dtype=bool) if name not in segments else np.asarray(segments[name], dtype=bool)
        if keep.shape != (n,):
            raise UsageError(f"`segments[{name!r}]` must be a boolean mask over the {n} rows, got shape {keep.shape}")
        m = int(keep.sum())
        if m == 0:
            continue
        value = (policy(table) * gamma).sum(axis=1)[keep]
        diff = value - base[keep]
        mean = float(diff.mean())
        codes = None if units is None else cluster_codes(units[keep], m)
        clusters = m if codes is None else int(codes.max()) + 1
        se = standard_error(diff, mean, codes) if clusters > 1 else float("nan")  # one unit: no interval
        out[name] = PairedDifference(name, baseline, m, float(value.mean()), float(base[keep].mean()), mean, se,
                                     mean - z * se, mean + z * se)
    return out


def _row(policy: str, metric: str, e: PolicyEstimate) -> dict[str, Any]:
    return {"policy": policy, "metric": metric, "estimator": e.estimator, "value": e.value, "std_error": e.std_error,
            "ci_low": e.ci_low, "ci_high": e.ci_high, "ess_ratio": e.ess_ratio, "warnings": "; ".join(e.warnings)}


def write_policy_baselines(store: Store, plan: Plan, table: pd.DataFrame, *, created_at: datetime) -> int:
    """Reference statistics of the population a plan was made on (features, the predicted objective of
    the planned actions, outcomes where the table has them), overall and per cohort of the spec, keyed by
    the policy's version."""
    policy = plan.policy
    spec = policy.spec
    predicted = plan.problem.values[np.arange(len(table)), plan.assignment.action]
    columns: dict[str, tuple[str, np.ndarray]] = {n: ("feature", table[n].to_numpy()) for n in spec.features if n in table and n not in spec.personal_features}
    columns["predicted_objective"] = ("prediction", predicted)
    columns.update({c: ("outcome", table[c].to_numpy()) for c in spec.outcomes if c in table})
    cohorts = {c: table[c].to_numpy() for c in spec.model.cohorts if c in table}
    return write_baselines(store, columns, version=policy.version, created_at=created_at, cohorts=cohorts)

