"""Off-policy evaluation benchmark: bias, RMSE and interval coverage of each estimator on the NBOO twin.

One population of users (``NBOOTwin(seed).population(n)``) is logged again and again by the twin's
uniform logger with its 10% holdout (replication r uses ``NBOOTwin(seed + 1 + r)``), so the logged
actions and the realized outcomes change while the true value of every target policy on that population
stays fixed and known exactly (``truth.objective``). Each replication builds the realized 30-day
objective per decision from the outcome events, then estimates two target policies:

* ``oracle-mix``: the oracle (best eligible action per user on true values) mixed with 10% uniform;
* ``oracle``: the deterministic oracle (weights up to ~12, an effective sample size near n / 10).

The model-based estimators use a per-action ridge regression on a few context features fitted once on an
independent log (other users, another seed): a fixed, honestly imperfect model. The baseline, measured
in the same run, is the naive report "mean logged reward", which ignores the target policy.

Printed per estimator: bias (mean estimate - truth) with its standard error over replications, RMSE,
coverage of the 95% interval (target 92% to 98%), mean interval width and mean effective sample size
ratio. A third table evaluates a what-if scenario (``evaluate_metrics`` with DR on the objective, every
guardrail and every budget of the spec) for ``oracle-mix``.

    python bench/ope_accuracy.py              # 200 replications of 10k decisions (a minute or two)
    python bench/ope_accuracy.py --quick      # 20 replications of 2k decisions, the CI smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from drivetrain.simulate import (
    OffPolicyEstimator,
    PolicyEstimate,
    SwitchDR,
    default_estimators,
    evaluate_metrics,
    evaluate_policy,
)
from drivetrain.spec import Spec
from drivetrain.twin import NBOOTwin, Truth, oracle

DEFAULT_REPLICATIONS, DEFAULT_N = 200, 10_000
QUICK_REPLICATIONS, QUICK_N = 20, 2_000
TRAIN_N = 20_000
COVERAGE_RANGE = (0.92, 0.98)
NAIVE = "naive (logged mean)"
SCENARIO = "what-if: DR per metric, oracle-mix"


# ---------------------------------------------------------------------------------------------- data
def realized_components(decisions: pd.DataFrame, outcomes: pd.DataFrame, spec: Spec) -> dict[str, np.ndarray]:
    """Each outcome component per decision within its horizon, aggregated as the spec says; each (n,).

    Every user has one decision in a single-day log, so events join their decision on ``unit_id``.
    """
    events = outcomes.merge(decisions[["unit_id", "decided_at"]], on="unit_id", how="inner")
    inside = (events["occurred_at"] >= events["decided_at"]) & (events["occurred_at"] < events["decided_at"] + spec.horizon)
    events = events[inside & ~events["event_id"].str.endswith(":repeat")]
    out: dict[str, np.ndarray] = {}
    for name, outcome in spec.model.outcomes.items():
        values = events.loc[events["component"] == name].groupby("unit_id")["value"].agg(outcome.aggregate)
        out[name] = values.reindex(decisions["unit_id"]).fillna(0.0).to_numpy(dtype=np.float64)
    return out


def metric_formulas(spec: Spec) -> dict[str, Callable[[Mapping[str, np.ndarray]], np.ndarray]]:
    """The objective, each guardrail and each budget of the spec, as formulas over the components."""
    formulas: dict[str, Callable[[Mapping[str, np.ndarray]], np.ndarray]] = {"objective": spec.objective}
    formulas.update({g.name: f for g, f in spec.guardrails})
    formulas.update({b.name: f for b, f in spec.budgets})
    return formulas


def features(users: pd.DataFrame) -> np.ndarray:
    """A few hand-made context features for the ridge model; (n, d) with an intercept column."""
    aov = users["avg_order_value"].to_numpy(dtype=np.float64)
    cols = [
        np.ones(len(users)),
        np.log1p(users["page_views_30d"].to_numpy(dtype=np.float64)),
        np.log1p(users["cart_adds_30d"].to_numpy(dtype=np.float64)),
        np.log1p(users["purchases_365d"].to_numpy(dtype=np.float64)),
        users["tenure_days"].to_numpy(dtype=np.float64) / 1000.0,
        np.log(np.maximum(users["dwell_time_s"].to_numpy(dtype=np.float64), 1.0)),
        np.where(np.isnan(aov), 45.0, aov) / 100.0,
        np.isnan(aov).astype(np.float64),
    ]
    for col, values in (("region", ("north", "south", "east")), ("device", ("mobile", "desktop")), ("tier", ("silver", "gold"))):
        cols += [(users[col] == v).to_numpy(dtype=np.float64) for v in values]
    return np.column_stack(cols)


def fit_ridge(x: np.ndarray, action: np.ndarray, y: np.ndarray, k: int, penalty: float = 1.0) -> np.ndarray:
    """Ridge coefficients per action, (k, d): a deliberately simple outcome model."""
    d = x.shape[1]
    coef = np.zeros((k, d))
    for j in range(k):
        rows = action == j
        xj, yj = x[rows], y[rows]
        coef[j] = np.linalg.solve(xj.T @ xj + penalty * np.eye(d), xj.T @ yj) if rows.any() else 0.0
    return coef


def logging_distribution(truth: Truth, spec: Spec) -> np.ndarray:
    """The twin logger's full distribution: holdout on control, else uniform over eligible; (n, K)."""
    share = spec.model.experimentation.holdout_share
    uniform = truth.eligible / truth.eligible.sum(axis=1, keepdims=True)
    dist = (1.0 - share) * uniform
    dist[:, spec.control.index] += share
    return dist


# ---------------------------------------------------------------------------------------------- run
@dataclass
class Tally:
    """Estimates and interval hits of one estimator across replications."""

    values: list[float] = field(default_factory=list)
    truths: list[float] = field(default_factory=list)
    covered: list[bool] = field(default_factory=list)
    widths: list[float] = field(default_factory=list)
    ess: list[float] = field(default_factory=list)

    def add(self, est: PolicyEstimate, truth: float) -> None:
        self.values.append(est.value)
        self.truths.append(truth)
        self.covered.append(est.covers(truth))
        self.widths.append(est.ci_high - est.ci_low)
        self.ess.append(est.ess_ratio)

    def row(self, name: str) -> dict[str, object]:
        error = np.asarray(self.values) - np.asarray(self.truths)
        cover = float(np.mean(self.covered))
        ok = COVERAGE_RANGE[0] <= cover <= COVERAGE_RANGE[1]
        return {
            "estimator": name,
            "bias": float(error.mean()),
            "bias_se": float(error.std(ddof=1) / np.sqrt(error.size)),
            "rmse": float(np.sqrt(np.mean(error**2))),
            "coverage": cover,
            "ci_width": float(np.mean(self.widths)),
            "ess_ratio": float(np.mean(self.ess)),
            "note": "" if ok else ("over" if cover > COVERAGE_RANGE[1] else "SHORT"),
        }


def naive_estimate(reward: np.ndarray) -> PolicyEstimate:
    """The baseline: the plain mean of the logged rewards, as if the target were the logging policy."""
    n = reward.size
    se = float(reward.std(ddof=1) / np.sqrt(n))
    mean = float(reward.mean())
    return PolicyEstimate(NAIVE, mean, se, mean - 1.96 * se, mean + 1.96 * se, n, float(n), 1.0, 1.0, 1.0)


def run(replications: int, n: int, seed: int) -> tuple[dict[str, list[dict[str, object]]], dict[str, float], float]:
    started = time.perf_counter()
    twin = NBOOTwin(seed=seed)
    spec = twin.spec
    k = len(spec.action_space)
    formulas = metric_formulas(spec)

    # the model: ridge per action on a few features, fitted once on an independent log of other users
    train_users = twin.population(TRAIN_N)
    decisions, outcomes = NBOOTwin(seed=seed + 100_000).log(train_users)
    train_action = spec.action_space.indices(decisions["action_id"].to_numpy())
    train_comps = realized_components(decisions, outcomes, spec)
    x_train = features(train_users)
    coefs = {m: fit_ridge(x_train, train_action, np.asarray(f(train_comps), dtype=np.float64), k) for m, f in formulas.items()}

    estimators: dict[str, OffPolicyEstimator] = default_estimators(with_model=True)
    estimators["SwitchDR(tau=10)"] = SwitchDR(tau=10.0)  # drops the correction where 11 actions are eligible
    target_names = ("oracle-mix", "oracle")
    tallies = {t: {name: Tally() for name in [NAIVE, *estimators]} for t in target_names}
    metric_tallies = {metric: Tally() for metric in formulas}
    truths: dict[str, list[float]] = {}
    for r in range(replications):
        # fresh users each time: the holdout is a fixed hash of the unit id, so only across populations
        # is the logged propensity of the holdout the probability it claims to be
        users = twin.population(n, offset=TRAIN_N + r * n)
        truth = twin.truth(users)
        best = oracle(truth.objective, truth.eligible).probabilities
        uniform = truth.eligible / truth.eligible.sum(axis=1, keepdims=True)
        targets = {"oracle-mix": 0.9 * best + 0.1 * uniform, "oracle": best}
        x_eval = features(users)
        models = {m: x_eval @ coef.T for m, coef in coefs.items()}
        pscore_dist = logging_distribution(truth, spec)

        decisions, outcomes = NBOOTwin(seed=seed + 1 + r).log(users)
        action = spec.action_space.indices(decisions["action_id"].to_numpy())
        pscore = decisions["propensity"].to_numpy(dtype=np.float64)
        comps = realized_components(decisions, outcomes, spec)
        rewards = {metric: np.asarray(f(comps), dtype=np.float64) for metric, f in formulas.items()}
        for t, dist in targets.items():
            true_value = truth.value(dist)
            truths.setdefault(t, []).append(true_value)
            tallies[t][NAIVE].add(naive_estimate(rewards["objective"]), true_value)
            results = evaluate_policy(
                reward=rewards["objective"], action=action, pscore=pscore, action_dist=dist,
                estimated_rewards=models["objective"], pscore_dist=pscore_dist, estimators=estimators,
            )  # fmt: skip
            for name, est in results.items():
                tallies[t][name].add(est, true_value)
        scenario = evaluate_metrics(
            rewards, action=action, pscore=pscore, action_dist=targets["oracle-mix"], estimated_rewards=models
        )
        for metric, est in scenario.items():
            true_metric = float(np.mean(np.sum(np.asarray(formulas[metric](truth.components)) * targets["oracle-mix"], axis=1)))
            truths.setdefault(f"metric {metric}", []).append(true_metric)
            metric_tallies[metric].add(est, true_metric)

    tables = {t: [tally.row(name) for name, tally in by_name.items()] for t, by_name in tallies.items()}
    tables[SCENARIO] = [tally.row(m) for m, tally in metric_tallies.items()]
    return tables, {name: float(np.mean(v)) for name, v in truths.items()}, time.perf_counter() - started


def print_table(title: str, truth: float | None, rows: list[dict[str, object]]) -> None:
    head = f"{'estimator':<22}{'bias':>9}{'(se)':>8}{'rmse':>9}{'coverage':>10}{'ci width':>10}{'ess/n':>8}  note"
    print(f"\n## {title}" + (f"  (mean true value {truth:.4f})" if truth is not None else ""))
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['estimator']!s:<22}{r['bias']:>9.4f}{r['bias_se']:>8.4f}{r['rmse']:>9.4f}"
            f"{100 * float(r['coverage']):>9.1f}%{r['ci_width']:>10.4f}{r['ess_ratio']:>8.3f}  {r['note']}"  # type: ignore[arg-type]
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REPLICATIONS} replications of {QUICK_N:,} decisions")
    parser.add_argument("--replications", type=int, default=None, help=f"default {DEFAULT_REPLICATIONS}")
    parser.add_argument("--n", type=int, default=None, help=f"decisions per replication (default {DEFAULT_N:,})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    reps = args.replications or (QUICK_REPLICATIONS if args.quick else DEFAULT_REPLICATIONS)
    n = args.n or (QUICK_N if args.quick else DEFAULT_N)
    if reps < 2 or n < 2:
        parser.error(f"--replications and --n must be >= 2, got {reps} and {n}")

    tables, truths, seconds = run(reps, n, args.seed)
    print(f"OPE accuracy on the NBOO twin: {reps} replications x {n:,} logged decisions, seed {args.seed}")
    print(f"coverage of the 95% interval should lie in {100 * COVERAGE_RANGE[0]:.0f}% to {100 * COVERAGE_RANGE[1]:.0f}%")
    for title, rows in tables.items():
        print_table(title, truths.get(title), rows)
        if title == SCENARIO:
            print("true values: " + ", ".join(f"{k[7:]} {v:.4f}" for k, v in truths.items() if k.startswith("metric ")))
    print(f"\n{seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
