"""How much of the oracle's gain the fitted policy captures, on the NBOO twin's ground truth.

For each seed: log 100k users with the uniform randomized policy, ingest them into a store, build the
training table, fit the Modeler, plan a policy (unconstrained, and under a budget of half the
unconstrained oracle's promotion cost), and judge its decisions on a fresh population of 100k users by
the twin's true expected values. Baselines measured in the same run: random, the best single action for
everyone, and a plain LightGBM S-learner on the objective itself (twice --trees rounds, as many as a
continuous component's two stages). Targets: at least 85% of the oracle's gain over control in both
settings, and above the S-learner by more than the seed spread.

    python bench/policy_value.py            # 3 seeds x 100k logged / 100k evaluated
    python bench/policy_value.py --quick    # a small run, for the test suite
    python bench/policy_value.py --jobs 3 --threads 1   # the seeds side by side, one thread each
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta

import lightgbm as lgb
import numpy as np
import pandas as pd

from drivetrain.assembly import fit_model, plan_policy
from drivetrain.clock import SimulatedClock
from drivetrain.data import MemoryStore, RawRows, ingest_decisions, ingest_outcomes
from drivetrain.model import FeatureEncoder, OutcomeModel
from drivetrain.twin import NBOOTwin, best_single_action, oracle, oracle_under_budget


def one_hot(action: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((action.size, k))
    out[np.arange(action.size), action] = 1.0
    return out


def objective_s_learner(table: pd.DataFrame, spec, contexts: pd.DataFrame, trees: int, rate: float, threads: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The plain baseline: one LightGBM regression of the realized objective on (context, action)."""
    enc = FeatureEncoder.from_spec(spec)
    space = spec.action_space
    action = space.indices(table["action_id"].to_numpy())
    comps = {c: table[c].to_numpy(dtype=np.float64) for c in spec.outcomes}
    levers = space.lever_columns(action)
    y = np.asarray(spec.objective({**comps, **levers}), dtype=np.float64)
    x = np.column_stack([enc.transform(table), space.encode(action)])
    params = {"objective": "regression", "learning_rate": rate, "num_leaves": 15, "min_data_in_leaf": 200, "feature_fraction": 0.7,
              "lambda_l2": 10.0, "num_threads": threads, "deterministic": True, "force_col_wise": True, "verbosity": -1, "seed": 0}
    booster = lgb.train(params, lgb.Dataset(x, label=y, categorical_feature=enc.categorical_indices), trees)
    k = len(space)
    xt = enc.transform(contexts)
    design = np.column_stack([np.repeat(xt, k, axis=0), np.tile(space.encode(np.arange(k)), (len(contexts), 1))])
    return booster.predict(design, num_threads=threads).reshape(len(contexts), k)


def logged_store(twin: NBOOTwin, n_log: int) -> tuple[MemoryStore, SimulatedClock]:
    """The twin's randomized log of ``n_log`` users, ingested; the clock stands after their outcomes matured."""
    spec = twin.spec
    decisions, outcomes = twin.log(twin.population(n_log))
    store = MemoryStore(spec)
    clock = SimulatedClock(twin.start + spec.horizon + spec.settle + timedelta(days=1))
    ingest_decisions(store, RawRows(decisions, (), "decisions"), clock=clock)
    ingest_outcomes(store, RawRows(outcomes, (), "outcomes"), clock=clock)
    return store, clock


def run_seed(seed: int, n_log: int, n_eval: int, trees: int, rate: float, folds: int, threads: int,
             subsample: float = 1.0) -> dict[str, float]:
    twin = NBOOTwin(seed=seed)
    spec = twin.spec
    store, clock = logged_store(twin, n_log)
    t0 = time.perf_counter()
    model, table, _ = fit_model(store, clock.now(), OutcomeModel(n_folds=folds, n_estimators=trees, learning_rate=rate,
                                                               num_threads=threads, seed=seed, subsample=subsample))
    fit_s = time.perf_counter() - t0

    evaluation = NBOOTwin(seed=1000 + seed).population(n_eval, offset=50_000_000)
    truth = twin.truth(evaluation)
    k = truth.objective.shape[1]
    control = spec.control.index
    base = float(truth.objective[:, control].mean())
    free = oracle(truth.objective, truth.eligible)
    cost = truth.components["promo_cost"]
    budget = 0.5 * truth.mean("promo_cost", free.probabilities)
    capped = oracle_under_budget(truth.objective, truth.eligible, [cost], [budget])
    relax = {b.name: 1e9 for b, _ in spec.budgets}
    loose = {g.name: 1e9 for g, _ in spec.guardrails}

    t0 = time.perf_counter()
    predictions = (model.predict_outcomes(evaluation), None)
    # the plans themselves against the oracle's plans: the same limits, without the holdout and exploration
    plan_free = plan_policy(spec, model, evaluation, budget_overrides=relax, guardrail_overrides=loose, predictions=predictions,
                            as_served=False)
    plan_budget = plan_policy(spec, model, evaluation, budget_overrides={"promotion_budget": budget}, guardrail_overrides=loose,
                              predictions=predictions, as_served=False)
    plan_s = time.perf_counter() - t0

    def value(probabilities: np.ndarray) -> float:
        return truth.value(probabilities)

    direct = objective_s_learner(table, spec, evaluation, 2 * trees, rate, threads)
    direct_choice = np.where(truth.eligible, direct, -np.inf).argmax(axis=1)
    j, single = best_single_action(truth.objective, truth.eligible, control)
    random = truth.eligible / truth.eligible.sum(axis=1, keepdims=True)
    p_free = plan_free.assignment.probabilities
    p_budget = plan_budget.assignment.probabilities
    return {
        "seed": seed,
        "fit_s": fit_s,
        "plan_s": plan_s,
        "control": base,
        "oracle": free.value,
        "oracle_budget": capped.value,
        "budget": budget,
        "policy": value(p_free),
        "policy_budget": value(p_budget),
        "policy_budget_true_cost": truth.mean("promo_cost", p_budget),
        "s_learner": value(one_hot(direct_choice, k)),
        "random": value(random),
        "single": single,
        "single_action": float(j),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small populations and one seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trees", type=int, default=150, help="boosting rounds of each component model's context stage (the Modeler's rule sets its effect stage)")
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--folds", type=int, default=3, help="cross-fitting folds of the Modeler (its default)")
    parser.add_argument("--subsample", type=float, default=1.0, help="share of the rows each tree of the Modeler learns from")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in this many processes at once (same figures)")
    args = parser.parse_args()
    n_log, n_eval, trees, folds, seeds = (100_000, 100_000, args.trees, args.folds, args.seeds) if not args.quick else (6_000, 3_000, 40, 2, 1)
    start = time.perf_counter()
    settings = (n_log, n_eval, trees, args.learning_rate, folds, args.threads, args.subsample)
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=min(args.jobs, seeds)) as pool:
            rows = list(pool.map(run_seed, range(seeds), *([value] * seeds for value in settings)))
    else:
        rows = [run_seed(seed, *settings) for seed in range(seeds)]
    for row in rows:
        free = (row["policy"] - row["control"]) / (row["oracle"] - row["control"])
        capped = (row["policy_budget"] - row["control"]) / (row["oracle_budget"] - row["control"])
        direct = (row["s_learner"] - row["control"]) / (row["oracle"] - row["control"])
        print(f"seed {row['seed']}: fit {row['fit_s']:.1f}s, plan {row['plan_s']:.1f}s; share of the oracle's gain: "
              f"policy {free:.3f}, under budget {capped:.3f}, S-learner on the objective {direct:.3f}", flush=True)
    frame = pd.DataFrame(rows)

    def gain(col: str, ref: str) -> pd.Series:
        return (frame[col] - frame["control"]) / (frame[ref] - frame["control"])

    table = pd.DataFrame(
        {
            "unconstrained: share of oracle gain": [gain(c, "oracle") for c in ("policy", "s_learner", "random", "single")],
            "unconstrained: % of oracle value": [100 * frame[c] / frame["oracle"] for c in ("policy", "s_learner", "random", "single")],
        },
        index=["drivetrain policy", "S-learner on the objective", "random", "best single action"],
    )
    print(f"\nNBOO twin: {n_log:,} logged users (uniform randomized), evaluated on {n_eval:,} fresh users by ground truth, seeds {list(frame['seed'])}")
    print(f"{'':32s} {'mean':>8s} {'min':>8s} {'max':>8s}   per seed")
    for label, col in table["unconstrained: share of oracle gain"].items():
        print(f"{label:32s} {col.mean():8.3f} {col.min():8.3f} {col.max():8.3f}   share of the oracle's gain over control, unconstrained")
    for label, col in table["unconstrained: % of oracle value"].items():
        print(f"{label:32s} {col.mean():7.2f}% {col.min():7.2f}% {col.max():7.2f}%   value as % of the oracle's, unconstrained")
    budget_gain = gain("policy_budget", "oracle_budget")
    print(f"{'drivetrain policy, budget':32s} {budget_gain.mean():8.3f} {budget_gain.min():8.3f} {budget_gain.max():8.3f}   share of the budgeted oracle's gain over control")
    pct = 100 * frame["policy_budget"] / frame["oracle_budget"]
    print(f"{'drivetrain policy, budget':32s} {pct.mean():7.2f}% {pct.min():7.2f}% {pct.max():7.2f}%   value as % of the budgeted oracle's")
    use = frame["policy_budget_true_cost"] / frame["budget"]
    print(f"{'true cost / budget':32s} {use.mean():8.3f} {use.min():8.3f} {use.max():8.3f}   budget = half the unconstrained oracle's cost")
    spread = table["unconstrained: share of oracle gain"].iloc[0].max() - table["unconstrained: share of oracle gain"].iloc[0].min()
    lead = (table["unconstrained: share of oracle gain"].iloc[0] - table["unconstrained: share of oracle gain"].iloc[1]).mean()
    print(f"lead over the S-learner {lead:+.3f} vs seed spread {spread:.3f}; targets: >= 0.85 of the gain in both settings")
    print(f"total {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
