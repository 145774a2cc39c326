"""How much of the oracle's gain the fitted policy captures, on the NBOO twin's ground truth: a learning
curve beside the peers, in one run.

For each logged size and seed: log users with the uniform randomized policy, ingest them into a store,
build the training table, fit each learner, and judge its decisions on a fresh population by the twin's
true expected values, as a share of the oracle's gain over control (unconstrained, and under a budget of
half the unconstrained oracle's promotion cost for the learners that predict the cost). The learners:

* ``drivetrain``: the Modeler's default (cross-fitted two-stage components), planned by the optimizer;
* ``s_learner``: one plain LightGBM regression of the realized objective on (context, action);
* ``components``: one plain LightGBM model per component on (context, action), no folds, no second
  stage, planned by the same optimizer (so it has a budgeted figure too);
* ``drpolicyforest``: EconML's ``DRPolicyForest`` on the realized objective (the ``bench`` extra);
* ``vw``: Vowpal Wabbit's ``--cb_explore_adf``, greedy at evaluation (the ``bench`` extra).

Baselines: random and the best single action. Fit and predict seconds are printed per learner, with the
machine's load. Targets: drivetrain ahead of every peer at every size by more than the seed spread.

    python bench/policy_value.py                                  # 25k, 50k, 100k logged x 3 seeds, all peers
    python bench/policy_value.py --sizes 100000 200000 400000     # the larger sizes
    python bench/policy_value.py --sizes 100000 --seeds 1 --peers drivetrain s_learner
    python bench/policy_value.py --quick                          # a small run, for the test suite
    python bench/policy_value.py --sizes 25000 50000 100000 200000 400000 --threads 1 --jobs 2   # the whole curve, two processes
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta

import lightgbm as lgb
import numpy as np
import pandas as pd
import vw_peer

from drivetrain.assembly import fit_model, plan_policy
from drivetrain.clock import SimulatedClock
from drivetrain.data import MemoryStore, RawRows, ingest_decisions, ingest_outcomes, training_table
from drivetrain.model import FeatureEncoder, OutcomeModel
from drivetrain.twin import NBOOTwin, best_single_action, oracle, oracle_under_budget

# the twin's contexts carry a personal field (a postcode): ingesting them needs the key of its hash
os.environ.setdefault("DRIVETRAIN_PII_KEY", "bench-key-of-the-personal-data-hash-of-the-twin")


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


PEERS = ("drivetrain", "s_learner", "components", "drpolicyforest", "vw")
LGB = {"num_leaves": 15, "min_child_samples": 200, "colsample_bytree": 0.7, "reg_lambda": 10.0, "verbose": -1}


def _reward(table: pd.DataFrame, spec) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """Logged action index and realized objective of each training row."""
    space = spec.action_space
    action = space.indices(table["action_id"].to_numpy())
    comps = {c: table[c].to_numpy(dtype=np.float64) for c in spec.outcomes}
    return action, np.asarray(spec.objective({**comps, **space.lever_columns(action)}), dtype=np.float64)


def _greedy(scores: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    return one_hot(np.where(eligible, scores, -np.inf).argmax(axis=1), scores.shape[1])


def peer_drpolicyforest(table: pd.DataFrame, spec, evaluation: pd.DataFrame, eligible: np.ndarray, seed: int,  # type: ignore[no-untyped-def]
                        threads: int, trees: int, rate: float) -> tuple[float, float, np.ndarray]:
    from econml.policy import DRPolicyForest
    from lightgbm import LGBMRegressor
    from sklearn.dummy import DummyClassifier

    enc = FeatureEncoder.from_spec(spec)
    action, y = _reward(table, spec)
    x = np.nan_to_num(enc.transform(table), nan=-1.0)
    t0 = time.perf_counter()
    # the log is uniformly randomized: the propensity model is the observed share of each action
    forest = DRPolicyForest(model_regression=LGBMRegressor(n_estimators=2 * trees, learning_rate=rate, n_jobs=1, random_state=seed, **LGB),
                            model_propensity=DummyClassifier(strategy="prior"), n_estimators=100, min_samples_leaf=50,
                            n_jobs=threads, random_state=seed)
    forest.fit(y, action, X=x)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    xe = np.nan_to_num(enc.transform(evaluation), nan=-1.0)
    effect = forest.predict_value(xe)  # (n, K - 1): each action's value over the first (the control)
    scores = np.column_stack([np.zeros(len(xe)), effect])
    return fit_s, time.perf_counter() - t0, _greedy(scores, eligible)


def peer_vw(table: pd.DataFrame, spec, evaluation: pd.DataFrame, eligible: np.ndarray, seed: int,  # type: ignore[no-untyped-def]
            threads: int, trees: int, rate: float) -> tuple[float, float, np.ndarray]:
    enc = FeatureEncoder.from_spec(spec)
    action, y = _reward(table, spec)
    x = enc.transform(table)
    t0 = time.perf_counter()
    features = vw_peer.VWFeatures.fit(x, enc.categorical_indices)
    vw = vw_peer.train(features.lines(x), action, y, table["propensity"].to_numpy(dtype=np.float64), len(spec.action_space), seed)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    choice = vw_peer.greedy(vw, features.lines(enc.transform(evaluation)), eligible)
    vw.finish()
    return fit_s, time.perf_counter() - t0, one_hot(choice, len(spec.action_space))


def run_point(seed: int, n_log: int, n_eval: int, trees: int, rate: float, threads: int, peers: tuple[str, ...]) -> dict[str, float]:
    """Every learner of ``peers`` on one logged sample: shares of the oracle's gain, fit and predict seconds."""
    twin = NBOOTwin(seed=seed)
    spec = twin.spec
    store, clock = logged_store(twin, n_log)
    table = training_table(store, clock.now())[0].to_pandas()
    evaluation = NBOOTwin(seed=1000 + seed).population(n_eval, offset=50_000_000)
    truth = twin.truth(evaluation)
    control = spec.control.index
    base = float(truth.objective[:, control].mean())
    free = oracle(truth.objective, truth.eligible)
    budget = 0.5 * truth.mean("promo_cost", free.probabilities)
    capped = oracle_under_budget(truth.objective, truth.eligible, [truth.components["promo_cost"]], [budget])
    relax = {b.name: 1e9 for b, _ in spec.budgets}
    loose = {g.name: 1e9 for g, _ in spec.guardrails}
    row: dict[str, float] = {"seed": seed, "n": n_log}

    def share(p: np.ndarray) -> float:
        return (truth.value(p) - base) / (free.value - base)

    def share_budget(p: np.ndarray) -> float:
        return (truth.value(p) - base) / (capped.value - base)

    for peer in peers:
        if peer in ("drivetrain", "components"):
            model = (OutcomeModel(seed=seed, num_threads=threads) if peer == "drivetrain" else
                     OutcomeModel(n_folds=0, seed=seed, num_threads=threads,
                                  regressor=lgb.LGBMRegressor(n_estimators=2 * trees, learning_rate=rate, n_jobs=1, random_state=seed, **LGB),
                                  classifier=lgb.LGBMClassifier(n_estimators=2 * trees, learning_rate=rate, n_jobs=1, random_state=seed, **LGB)))
            t0 = time.perf_counter()
            model.fit(table, spec)
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            predictions = (model.predict_outcomes(evaluation), None)
            predict_s = time.perf_counter() - t0
            p_free = plan_policy(spec, model, evaluation, budget_overrides=relax, guardrail_overrides=loose, predictions=predictions,
                                 as_served=False).assignment.probabilities
            p_budget = plan_policy(spec, model, evaluation, budget_overrides={"promotion_budget": budget}, guardrail_overrides=loose,
                                   predictions=predictions, as_served=False).assignment.probabilities
            row[f"{peer}_budget"] = share_budget(p_budget)
        elif peer == "s_learner":
            t0 = time.perf_counter()
            scores = objective_s_learner(table, spec, evaluation, 2 * trees, rate, 1)  # one OpenMP thread: see docs/decisions.md
            fit_s, predict_s, p_free = time.perf_counter() - t0, 0.0, _greedy(scores, truth.eligible)
        else:
            fit_s, predict_s, p_free = (peer_drpolicyforest if peer == "drpolicyforest" else peer_vw)(
                table, spec, evaluation, truth.eligible, seed, threads, trees, rate)
        row[peer] = share(p_free)
        row[f"{peer}_fit_s"] = fit_s
        row[f"{peer}_predict_s"] = predict_s
        print(f"  {n_log:>7,} logged, seed {seed}: {peer:15s} share {row[peer]:.3f}"
              + (f", under budget {row[peer + '_budget']:.3f}" if peer + "_budget" in row else "")
              + f"; fit {fit_s:6.1f}s, predict {predict_s:5.1f}s; load {os.getloadavg()[0]:.1f}", flush=True)
    return row


def learning_curve(rows: list[dict[str, float]], peers: tuple[str, ...]) -> None:
    """One line per (size, learner): mean, min and max share over the seeds, and the mean seconds."""
    frame = pd.DataFrame(rows)
    print("\nlearning curve: share of the oracle's gain over control (mean [min, max] over seeds); seconds are means")
    for n, part in frame.groupby("n"):
        best_peer = max((p for p in peers if p != "drivetrain"), key=lambda p: part[p].mean(), default=None)
        for peer in peers:
            col = part[peer]
            line = f"{int(n):>8,} {peer:15s} {col.mean():.3f} [{col.min():.3f}, {col.max():.3f}]"
            if f"{peer}_budget" in part:
                b = part[f"{peer}_budget"]
                line += f"  budget {b.mean():.3f} [{b.min():.3f}, {b.max():.3f}]"
            else:
                line += " " * 31
            print(line + f"  fit {part[f'{peer}_fit_s'].mean():6.1f}s  predict {part[f'{peer}_predict_s'].mean():5.1f}s")
        if "drivetrain" in peers and best_peer is not None:
            lead = part["drivetrain"] - part[best_peer]
            spread = part["drivetrain"].max() - part["drivetrain"].min()
            print(f"{int(n):>8,} drivetrain - best peer ({best_peer}): {lead.mean():+.3f} [{lead.min():+.3f}, {lead.max():+.3f}]"
                  f" vs drivetrain's seed spread {spread:.3f}")


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


def _installed(peer: str) -> bool:
    import importlib.util

    return importlib.util.find_spec("econml" if peer == "drpolicyforest" else "vowpalwabbit") is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small populations and one seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trees", type=int, default=OutcomeModel().n_estimators,
                        help="boosting rounds of each component model's context stage (the Modeler's rule sets its effect stage; peers get twice)")
    parser.add_argument("--learning-rate", type=float, default=OutcomeModel().learning_rate)
    parser.add_argument("--folds", type=int, default=3, help="cross-fitting folds of the Modeler (its default)")
    parser.add_argument("--subsample", type=float, default=1.0, help="share of the rows each tree of the Modeler learns from")
    parser.add_argument("--jobs", type=int, default=1,
                        help="points of the curve (and seeds of the summary) run in this many processes at once (same figures)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 50_000, 100_000], help="logged users of the learning curve")
    parser.add_argument("--eval", type=int, default=100_000, help="fresh users the decisions are judged on")
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS, help="learners of the learning curve")
    parser.add_argument("--no-curve", action="store_true", help="only the summary at 100k logged users")
    parser.add_argument("--summary", action="store_true", help="after the curve, also the summary at 100k logged users")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} (1 min)", flush=True)
    if not args.no_curve:
        sizes, n_eval, curve_seeds = (args.sizes, args.eval, args.seeds) if not args.quick else ([3_000, 6_000], 3_000, 1)
        peers = tuple(p for p in args.peers if p not in ("drpolicyforest", "vw") or _installed(p))
        missing = sorted(set(args.peers) - set(peers))
        if missing:
            print(f"not installed (pip install .[bench]): {missing}")
        points = [(seed, n) for n in sizes for seed in range(curve_seeds)]
        settings = (n_eval, args.trees if not args.quick else 40, args.learning_rate, args.threads, peers)
        if args.jobs > 1:  # the largest points first, so that the processes finish together; same figures
            points.sort(key=lambda p: -p[1])
            with ProcessPoolExecutor(max_workers=args.jobs) as pool:
                curve = list(pool.map(run_point, *zip(*points), *([value] * len(points) for value in settings)))
        else:
            curve = [run_point(seed, n, *settings) for seed, n in points]
        learning_curve(curve, peers)
        if not args.quick and not args.summary:
            return
    # the summary at 100k logged users, with the Modeler's settings of the command line
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
