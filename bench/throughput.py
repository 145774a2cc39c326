"""Throughput of the assembly line: fit, batch decide and optimize, beside plain LightGBM in the same run.

On the NBOO twin: fit the Modeler (the settings of bench/policy_value.py: 3 cross-fitted folds and a refit,
two stages, the Modeler's default rounds and rate) on N logged users, plan a policy, then `Policy.decide` and the
optimizer's prediction and solve on M fresh contexts. Every step runs in a fresh process, so its peak
memory (max RSS) is its own. Baselines measured in the same run, on the same rows: one plain LightGBM
S-learner of the objective on (context, action) with as many rounds as a component's two stages (fit), and
its prediction of the M x K (context, action) rows (decide). Vowpal Wabbit (`--cb_explore_adf`, greedy: its
fit and its choice for the M contexts) is measured when its Python package is installed (`pip install .[bench]`).

Targets on an idle 2-core machine: fit on 100k logged users in 20 s or less; decide and optimize's
prediction on 100k contexts in 5 s or less (1M in 60 s or less). The machine's load is printed: on a
shared machine compare the ratios to the baseline and the CPU seconds, not the seconds.

    python bench/throughput.py                        # fit 100k; decide / optimize 100k and 1M contexts
    python bench/throughput.py --fit-sizes 100000 1000000
    python bench/throughput.py --quick                # small sizes, every step in one process, for the test suite
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vw_peer  # noqa: E402

from drivetrain.assembly import plan_policy  # noqa: E402
from drivetrain.data import training_table  # noqa: E402
from drivetrain.model import FeatureEncoder, OutcomeModel  # noqa: E402
from drivetrain.policy import Policy  # noqa: E402
from drivetrain.twin import NBOOTwin  # noqa: E402

# the twin's contexts carry a personal field (a postcode): ingesting them needs the key of its hash
os.environ.setdefault("DRIVETRAIN_PII_KEY", "bench-key-of-the-personal-data-hash-of-the-twin")

PARAMS = {"num_leaves": 15, "min_data_in_leaf": 200, "feature_fraction": 0.7, "lambda_l2": 10.0, "deterministic": True,
          "force_col_wise": True, "verbosity": -1, "seed": 0}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: False with --quick: every step runs in this process (a fresh interpreter imports LightGBM, scikit-learn and
#: SciPy again, about 5 s of CPU each, several times the quick steps themselves); peak memory is then the run's so far.
FRESH_PROCESSES = True


def _in_child(step: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``step(*args)`` in a fresh process; its result plus that process's peak memory."""
    if not FRESH_PROCESSES:
        return _measured(step, *args)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measured, (step, *args))


def _measured(step: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    out = step(*args)
    out["peak_mb"] = _peak_mb()
    return out


def _design(spec: Any, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The plain baseline's rows: (context, logged action) and the realized objective."""
    enc = FeatureEncoder.from_spec(spec)
    space = spec.action_space
    action = space.indices(table["action_id"].to_numpy())
    comps = {c: table[c].to_numpy(dtype=np.float64) for c in spec.outcomes}
    y = np.asarray(spec.objective({**comps, **space.lever_columns(action)}), dtype=np.float64)
    return np.column_stack([enc.transform(table), space.encode(action)]), y


def fit_drivetrain(n_log: int, directory: str, trees: int, rate: float, threads: int) -> dict[str, Any]:
    from policy_value import logged_store

    twin = NBOOTwin(seed=0)
    store, clock = logged_store(twin, n_log)
    model = OutcomeModel(n_folds=3, n_estimators=trees, learning_rate=rate, num_threads=threads)
    table, _ = training_table(store, clock.now())
    frame = table.to_pandas()
    frame.to_parquet(Path(directory) / "train.parquet")
    started, cpu = time.perf_counter(), time.process_time()
    model.fit(frame, twin.spec)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    population = NBOOTwin(seed=1000).population(min(n_log, 20_000), offset=50_000_000)
    plan = plan_policy(twin.spec, model, population, version="bench-throughput")
    plan.policy.save(Path(directory) / "policy")
    return {"seconds": seconds, "cpu_seconds": cpu, "rows": len(frame),
            "models": sum(len(v) for v in model.models_.values()) + len(model.final_)}


def fit_plain(directory: str, trees: int, rate: float, threads: int) -> dict[str, Any]:
    spec = NBOOTwin(seed=0).spec
    frame = pd.read_parquet(Path(directory) / "train.parquet")
    x, y = _design(spec, frame)
    enc = FeatureEncoder.from_spec(spec)
    started = time.perf_counter()
    booster = lgb.train({**PARAMS, "objective": "regression", "learning_rate": rate, "num_threads": threads},
                        lgb.Dataset(x, label=y, categorical_feature=enc.categorical_indices), num_boost_round=trees)
    seconds = time.perf_counter() - started
    booster.save_model(str(Path(directory) / "plain.txt"))
    return {"seconds": seconds}


def fit_vw(directory: str) -> dict[str, Any]:
    spec = NBOOTwin(seed=0).spec
    frame = pd.read_parquet(Path(directory) / "train.parquet")
    enc = FeatureEncoder.from_spec(spec)
    x = enc.transform(frame)
    space = spec.action_space
    action = space.indices(frame["action_id"].to_numpy())
    comps = {c: frame[c].to_numpy(dtype=np.float64) for c in spec.outcomes}
    reward = np.asarray(spec.objective({**comps, **space.lever_columns(action)}), dtype=np.float64)
    started = time.perf_counter()
    features = vw_peer.VWFeatures.fit(x, enc.categorical_indices)
    vw = vw_peer.train(features.lines(x), action, reward, frame["propensity"].to_numpy(dtype=np.float64), len(space), 0,
                       model_path=Path(directory) / "vw.model")
    seconds = time.perf_counter() - started
    vw.finish()
    features.save(Path(directory) / "vw.features.json")
    return {"seconds": seconds}


def decide_vw(directory: str, contexts_path: str) -> dict[str, Any]:
    """Vowpal Wabbit's greedy choice for every context (its own loop: one example per context)."""
    import vowpalwabbit

    spec = NBOOTwin(seed=0).spec
    contexts = pd.read_parquet(contexts_path)
    enc = FeatureEncoder.from_spec(spec)
    features = vw_peer.VWFeatures.load(Path(directory) / "vw.features.json")
    vw = vowpalwabbit.Workspace(f"--quiet -i {Path(directory) / 'vw.model'}")
    started = time.perf_counter()
    x = enc.transform(contexts)
    choice = vw_peer.greedy(vw, features.lines(x), np.ones((len(x), len(spec.action_space)), dtype=bool))
    seconds = time.perf_counter() - started
    vw.finish()
    return {"seconds": seconds, "top_share": float(np.bincount(choice).max() / len(choice))}


def decide_drivetrain(directory: str, contexts_path: str, threads: int) -> dict[str, Any]:
    policy = Policy.load(Path(directory) / "policy")
    policy.model.num_threads = threads
    contexts = pd.read_parquet(contexts_path)
    policy.decide(contexts.head(1000))  # compiles the forest once, as a serving process does at start
    started, cpu = time.perf_counter(), time.process_time()
    batch = policy.decide(contexts)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    shares = np.bincount(batch.action, minlength=len(policy.spec.action_space)) / len(contexts)
    return {"seconds": seconds, "cpu_seconds": cpu, "top_share": float(shares.max())}


def optimize_drivetrain(directory: str, contexts_path: str, threads: int) -> dict[str, Any]:
    policy = Policy.load(Path(directory) / "policy")
    policy.model.num_threads = threads
    contexts = pd.read_parquet(contexts_path)
    policy.model.predict_outcomes(contexts.head(1000))
    started, cpu = time.perf_counter(), time.process_time()
    means = policy.model.predict_outcomes(contexts)
    predicted, cpu = time.perf_counter() - started, time.process_time() - cpu
    plan_policy(policy.spec, policy.model, contexts, predictions=(means, None), version="bench-throughput")
    solved = time.perf_counter() - started - predicted
    head = contexts.head(2000)
    exact = policy.model.predict_outcomes(head, engine="parts")  # each booster's own Booster.predict
    gap = max(float(np.max(np.abs(means[c][: len(head)] - exact[c]) / np.maximum(1.0, np.abs(exact[c])))) for c in exact)
    return {"seconds": predicted, "cpu_seconds": cpu, "solve_seconds": solved, "max_gap": gap}


def decide_plain(directory: str, contexts_path: str, threads: int) -> dict[str, Any]:
    spec = NBOOTwin(seed=0).spec
    booster = lgb.Booster(model_file=str(Path(directory) / "plain.txt"))
    contexts = pd.read_parquet(contexts_path)
    started = time.perf_counter()
    x = FeatureEncoder.from_spec(spec).transform(contexts)
    k = len(spec.action_space)
    design = np.column_stack([np.repeat(x, k, axis=0), np.tile(spec.action_space.encode(np.arange(k)), (len(x), 1))])
    scores = np.asarray(booster.predict(design, num_threads=threads)).reshape(len(x), k)
    np.argmax(scores, axis=1)
    return {"seconds": time.perf_counter() - started}


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and few trees, for the test suite")
    parser.add_argument("--fit-sizes", type=int, nargs="+", default=[100_000], help="logged users to fit on")
    parser.add_argument("--contexts", type=int, nargs="+", default=[100_000, 1_000_000], help="contexts to decide for")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trees", type=int, default=OutcomeModel().n_estimators, help="context rounds (the Modeler's default)")
    parser.add_argument("--learning-rate", type=float, default=OutcomeModel().learning_rate, help="the Modeler's default")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    fit_sizes, context_sizes, trees = (args.fit_sizes, args.contexts, args.trees) if not args.quick else ([3_000], [2_000], 20)
    global FRESH_PROCESSES  # noqa: PLW0603 - the one switch of the run's mode
    FRESH_PROCESSES = not args.quick
    try:
        import vowpalwabbit  # noqa: F401
        have_vw = True
    except ImportError:
        have_vw = False
    print(f"NBOO twin, {args.threads} threads; {_load()}" + ("" if FRESH_PROCESSES else "; every step in this process (--quick)"),
          flush=True)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in fit_sizes:
            directory = Path(tmp) / f"fit{n}"
            directory.mkdir()
            ours = _in_child(fit_drivetrain, n, str(directory), trees, args.learning_rate, args.threads)
            # a fixed yardstick whatever the Modeler's settings: one model of 300 rounds at rate 0.1 (the rounds of one
            # binary component's effect stage at the Modeler's defaults)
            plain = _in_child(fit_plain, str(directory), 300 if not args.quick else 2 * trees, 0.1, args.threads)
            row = {"step": "fit", "n": n, "drivetrain_s": ours["seconds"], "drivetrain_cpu_s": ours["cpu_seconds"],
                   "drivetrain_peak_mb": ours["peak_mb"],
                   "plain_lightgbm_s": plain["seconds"], "plain_peak_mb": plain["peak_mb"], "models": ours["models"]}
            if have_vw:
                row["vw_s"] = _in_child(fit_vw, str(directory))["seconds"]
            results.append(row)
            print(f"fit {n:>9,} logged: drivetrain {ours['seconds']:7.1f}s, {ours['cpu_seconds']:.1f} CPU s"
                  f" ({ours['models']} models, peak {ours['peak_mb']:.0f} MB)"
                  f" | plain LightGBM, one model {plain['seconds']:6.1f}s (peak {plain['peak_mb']:.0f} MB)"
                  + (f" | VW {row['vw_s']:.1f}s" if have_vw else " | VW not installed")
                  + f" | ratio {ours['seconds'] / plain['seconds']:.1f}x; {_load()}", flush=True)
        directory = Path(tmp) / f"fit{fit_sizes[0]}"
        for m in context_sizes:
            path = Path(tmp) / f"contexts{m}.parquet"
            NBOOTwin(seed=77).population(m, offset=80_000_000).to_parquet(path)
            decide = _in_child(decide_drivetrain, str(directory), str(path), args.threads)
            optimize = _in_child(optimize_drivetrain, str(directory), str(path), args.threads)
            plain = _in_child(decide_plain, str(directory), str(path), args.threads)
            vw_s = _in_child(decide_vw, str(directory), str(path))["seconds"] if have_vw else None
            results.append({"step": "decide", "n": m, "drivetrain_s": decide["seconds"], "drivetrain_cpu_s": decide["cpu_seconds"],
                            "drivetrain_peak_mb": decide["peak_mb"], "optimize_predict_s": optimize["seconds"],
                            "optimize_predict_cpu_s": optimize["cpu_seconds"], "optimize_solve_s": optimize["solve_seconds"],
                            "optimize_peak_mb": optimize["peak_mb"], "max_gap": optimize["max_gap"], "plain_lightgbm_s": plain["seconds"], "plain_peak_mb": plain["peak_mb"], "vw_s": vw_s})
            print(f"{m:>9,} contexts x 11 actions: decide {decide['seconds']:6.2f}s, {decide['cpu_seconds']:.1f} CPU s"
                  f" ({m / decide['seconds']:,.0f}/s, peak"
                  f" {decide['peak_mb']:.0f} MB) | optimize: predict {optimize['seconds']:6.2f}s"
                  f" ({optimize['cpu_seconds']:.1f} CPU s), solve {optimize['solve_seconds']:.2f}s"
                  f" (peak {optimize['peak_mb']:.0f} MB) | plain LightGBM predict {plain['seconds']:6.2f}s (peak {plain['peak_mb']:.0f} MB)"
                  + (f" | VW {vw_s:6.2f}s" if vw_s is not None else "")
                  + f" | ratio {decide['seconds'] / plain['seconds']:.2f}x; {_load()}", flush=True)
            print(f"compiled batch vs Booster.predict on 2,000 contexts: max |difference| / max(1, |value|) {optimize['max_gap']:.2e}")
            if not optimize["max_gap"] <= 1e-12:
                raise SystemExit(f"the compiled batch must equal Booster.predict to 1e-12, got {optimize['max_gap']:.2e}")
    print("checks: ok")
    print("targets (idle 2 cores): fit 100k <= 20 s; decide and optimize's prediction 100k <= 5 s, 1M <= 60 s")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
