"""The adaptation loop on the NBOO twin (7-day horizon), week by week, next to the twin's truth.

Each seed starts from a uniformly randomized log; the first step of the loop fits the first champion on
it. Then every simulated day brings new users, served in process by whatever the registry's champion is
(a challenger in shadow or on its canary units), outcomes arrive late, the alert rules run, and one step of
`drivetrain adapt` runs at the day's end. From the drift week on, every offer works worse for mobile users
(a concept drift: which offers work changes for a segment, not only a feature's distribution).

Three arms are measured in the same run on the same users: the adaptive loop with directed exploration
(drivetrain.exploration), the adaptive loop with uniform epsilon exploration (both at the spec's rate) and
the frozen first policy (the same first champion, never retrained). Every arm serves with spend pacing
(adaptation.pacing_period 28 days) unless --no-pacing; the adaptive arms give control alone to a cohort value their
champion harms (adaptation.guard_on_alert) unless --no-guard. Per week:
the champion's true share of the budgeted oracle's gain over control (greedy, on the week's users), the
retrains, promotions and rollbacks (a canary stopped by a guardrail counts as one), the true value per
user that exploration cost, and the true spend per user against the budget, beside the spend of the budgeted
oracle on the same users (the budget is a ceiling: where fewer offers pay, the oracle spends less). Every day
the loop acts on is printed with what it did and, while a challenger is in shadow or canary, the challenger's
and the champion's true shares that day: the truth each verdict can be read against.

    python bench/loop.py            # 10,000 users a day, 8 weeks, 20,000 first users, 3 seeds (long)
    python bench/loop.py --quick    # a small run, what the test suite runs
    python bench/loop.py --seeds 1 --window-days 14 --arms "frozen first policy"   # any part of the full run
    python bench/loop.py --uniform-reference 190000 400000   # the reference: a uniform log of the drifted world

The reference (``--uniform-reference N ...``, instead of the arms): for each seed and size, the loop's trainer
fitted on a uniformly randomized log of N users of the world after the drift, its greedy plan judged on 50,000
fresh users of that world by the twin's truth (the budget binds neither plan there): what week 8's champion could
reach had every one of its rows been randomized.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivetrain.adapt import FOLDS, MemoryRegistry, adapt
from drivetrain.assembly import plan_policy
from drivetrain.clock import SimulatedClock
from drivetrain.data import MemoryStore, RawRows, ingest_decisions, ingest_outcomes, training_table
from drivetrain.demo import loop_spec
from drivetrain.model import OutcomeModel
from drivetrain.spec import Spec, parse_spec
from drivetrain.twin import NBOOTwin, Scenario, oracle
from drivetrain.twin_loop import LoopDay, run_twin_loop

# the twin's contexts hold a personal field: the bench hashes it with its own key unless one is set
os.environ.setdefault("DRIVETRAIN_PII_KEY", "bench-loop-key-of-the-personal-data-hash")

START_DAY = 9  # the first log's decisions are all mature by then (7-day horizon, 1 day to settle)


def bench_spec(daily: int, trees: int, *, window_days: int | None, exploration: str, pacing: bool, canary_share: float = 0.1,
               guard: bool = True, exploration_rate: float | None = None) -> Spec:
    raw = loop_spec().model.model_dump(mode="json")
    raw["experimentation"]["exploration"] = exploration
    if exploration_rate is not None:
        raw["experimentation"]["exploration_rate"] = exploration_rate
    raw["adaptation"].update({"min_new_decisions": 5 * daily, "max_staleness": "14d", "window": f"{window_days}d" if window_days else None, "evaluation_share": 0.1,
                              "pacing_period": "28d" if pacing else None, "guard_on_alert": guard})
    raw["adaptation"]["gates"].update({"min_decisions": min(5000, 2 * daily), "regression_tolerance": 0.3,
                                       "non_inferiority_margin": 0.5, "latency_samples": 50})
    raw["adaptation"]["canary"].update({"shadow_decisions": daily // 2, "share": canary_share, "min_units": max(300, daily // 5)})
    return parse_spec(raw, source=f"bench loop ({daily} users a day, {trees} trees, {exploration} exploration)")


def drifted_twin(seed: int, drift_day: int) -> NBOOTwin:
    """The twin of the bench: from ``drift_day`` on, every offer works worse for mobile users."""
    scenario = Scenario(effect_segment=("device", "mobile"), effect_delta=-1.5, effect_refund=0.02, effect_day=drift_day)
    return NBOOTwin(horizon_days=7, seed=seed, scenario=scenario)


def trainer_of(trees: int, folds: int) -> Callable[[pd.DataFrame, Spec], OutcomeModel]:
    """The candidates' trainer: the mean of ``folds`` fold models (one model on every row at 0), one thread."""
    def trainer(table: pd.DataFrame, product: Spec) -> OutcomeModel:
        return OutcomeModel(n_folds=folds, refit=False, n_estimators=trees, num_threads=1, seed=0).fit(table, product)
    return trainer


def logged_store(twin: NBOOTwin, spec: Spec, users: int, *, day: int, at_day: int, why: str) -> tuple[MemoryStore, SimulatedClock]:
    """A store of ``spec`` holding the twin's uniformly randomized log of ``users`` users of ``day``, decisions and
    outcomes ingested on ``at_day``; and the clock standing then."""
    decisions, outcomes = twin.log(twin.population(users, day=day), day=day)
    store = MemoryStore(spec)
    clock = SimulatedClock(twin.start + timedelta(days=at_day))
    ingest_decisions(store, RawRows(decisions, (), why), clock=clock)
    ingest_outcomes(store, RawRows(outcomes, (), why), clock=clock)
    return store, clock


def uniform_reference(seed: int, users: int, *, drift_day: int, trees: int, folds: int, evaluated: int = 50_000) -> float:
    """The share of the oracle's gain over control that the trainer reaches from a uniformly randomized log of
    ``users`` users of the world after the drift, greedy and unconstrained, on ``evaluated`` fresh users."""
    twin = drifted_twin(seed, drift_day)
    day = drift_day + 1
    store, clock = logged_store(twin, twin.spec, users, day=day, at_day=day + START_DAY, why="uniform log after the drift")
    table = training_table(store, clock.now())[0].to_pandas()
    model = trainer_of(trees, folds)(table, twin.spec)
    fresh = twin.population(evaluated, day=day + 1, offset=50_000_000)
    truth = twin.truth(fresh, day=day + 1)
    spec = twin.spec
    base = float(truth.objective[:, spec.control.index].mean())
    best = oracle(truth.objective, truth.eligible)
    plan = plan_policy(spec, model, fresh, budget_overrides={b.name: 1e9 for b, _ in spec.budgets},
                       guardrail_overrides={g.name: 1e9 for g, _ in spec.guardrails}, as_served=False)
    return (truth.value(plan.assignment.probabilities) - base) / (best.value - base)


def run_arm(seed: int, spec: Spec, *, first_users: int, daily: int, days: int, drift_day: int, adaptive: bool, trees: int,
            truth_sample: int, folds: int = 0) -> list[LoopDay]:
    twin = drifted_twin(seed, drift_day)
    store, clock = logged_store(twin, spec, first_users, day=0, at_day=START_DAY, why="first randomized log")
    registry = MemoryRegistry()
    trainer = trainer_of(trees, folds)
    adapt(store, registry, clock.now(), trainer=trainer, who="bench", population_size=min(10_000, daily))
    # the frozen arm acts on no alert: it is not monitored
    t0 = time.perf_counter()

    def progress(d: LoopDay) -> None:
        if (d.day - START_DAY + 1) % 7 == 0:
            print(f"    week {(d.day - START_DAY + 1) // 7} done at {time.perf_counter() - t0:.0f} s (true share {d.share if d.share is not None else float('nan'):.3f})", flush=True)

    return run_twin_loop(twin, store, registry, days=range(START_DAY, START_DAY + days), users=daily, adapt_steps=adaptive,
                         monitor=adaptive, trainer=trainer, truth_sample=truth_sample, population_size=min(10_000, daily),
                         on_day=progress)


def weekly(days: list[LoopDay]) -> pd.DataFrame:
    frame = pd.DataFrame([{"week": (d.day - START_DAY) // 7 + 1, "share": d.share, "exploration_cost": d.exploration_cost,
                           "spend": d.spend, "oracle_spend": d.oracle_spend, "budget": d.budget, "price": np.nan if d.price is None else d.price, "retrains": int(d.retrained), "promotions": int(d.promoted),
                           "rollbacks": int(d.rolled_back),
                           "promoted_loss": (d.replaced_share - d.share) if d.replaced_share is not None and d.share is not None
                           else np.nan} for d in days])
    return frame.groupby("week").agg(share=("share", "mean"), retrains=("retrains", "sum"), promotions=("promotions", "sum"),
                                     rollbacks=("rollbacks", "sum"), exploration_cost=("exploration_cost", "mean"),
                                     spend=("spend", "mean"), oracle_spend=("oracle_spend", "mean"), budget=("budget", "mean"), price=("price", "mean"),
                                     promoted_loss=("promoted_loss", "max"))


ARMS = {"adaptive (directed exploration)": (True, "directed"), "adaptive (uniform epsilon)": (True, "uniform"),
        "frozen first policy": (False, "uniform")}


def print_arm(label: str, parts: list[pd.DataFrame], weeks: int, drift_week: int) -> None:
    frame = pd.concat(parts)
    mean = frame.groupby(level=0).mean(numeric_only=True)
    spread = frame.groupby(level=0)["share"].agg(lambda s: s.max() - s.min())
    print(f"\n{label} (mean of {len(parts)} seeds)")
    print(f"{'week':>4} {'share of oracle gain':>21} {'seed spread':>11} {'retrains':>8} {'promotions':>10} {'rollbacks':>9} "
          f"{'exploration cost':>16} {'spend / budget':>14} {'oracle spend':>12} {'budget price':>12}")
    for week, row in mean.iterrows():
        print(f"{week:>4} {row['share']:>21.3f} {spread[week]:>11.3f} {row['retrains']:>8.1f} {row['promotions']:>10.1f} "
              f"{row['rollbacks']:>9.1f} {row['exploration_cost']:>16.4f} {row['spend'] / row['budget']:>14.3f} "
              f"{row['oracle_spend'] / row['budget']:>12.3f} {row['price']:>12.3f}")
    for start in range(1, weeks + 1, 4):
        block = mean.loc[start:start + 3]
        print(f"weeks {start}-{min(start + 3, weeks)}: spend / budget {block['spend'].mean() / block['budget'].mean():.3f} "
              f"(the budgeted oracle's on the same users: {block['oracle_spend'].mean() / block['budget'].mean():.3f})")
    losses = frame["promoted_loss"].dropna()
    tolerance = float(spread.max()) if len(parts) > 1 else float("nan")
    print(f"promotions judged by the twin: {len(losses)}; the worst new champion against the one it replaced (same users): "
          f"{-losses.max() if len(losses) else float('nan'):+.3f} share; largest seed spread {tolerance:.3f}")
    last = mean["share"].iloc[-1]
    after = mean.loc[drift_week:drift_week + 2, "share"] if drift_week <= weeks else pd.Series(dtype=float)
    print(f"targets: share by the last week {last:.3f} (>= 0.85); within 2 weeks of the drift {after.max() if len(after) else float('nan'):.3f} "
          f"(>= 0.80)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (what the test suite runs)")
    parser.add_argument("--seeds", type=int, default=None, help="how many seeds (3 in the full run)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (a run of seeds 1 and 2: --first-seed 1 --seeds 2)")
    parser.add_argument("--users", "--users-per-day", dest="users", type=int, default=None, help="new users a day")
    parser.add_argument("--weeks", type=int, default=None)
    parser.add_argument("--first-users", type=int, default=None, help="users of the first randomized log")
    parser.add_argument("--drift-week", type=int, default=None, help="the week (from 1) the concept drift starts")
    parser.add_argument("--trees", type=int, default=None, help="boosting rounds per model of each candidate")
    parser.add_argument("--folds", type=int, default=None,
                        help="each candidate's model is the mean of this many fold models (0: one model on every row; "
                             "default: the adaptation's default trainer's 5, 0 with --quick)")
    parser.add_argument("--window-days", type=int, default=None,
                        help="the training window (adaptation.window) in days (default: every mature decision, the product's default)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"which arms, comma-separated, of {list(ARMS)}")
    parser.add_argument("--no-pacing", action="store_true", help="serve every arm at its plan's price (no spend pacing)")
    parser.add_argument("--no-guard", action="store_true", help="adaptation.guard_on_alert off: no harmed cohort value is guarded")
    parser.add_argument("--canary-share", type=float, default=0.1, help="adaptation.canary.share: the units a candidate serves in its canary")
    parser.add_argument("--exploration-rate", type=float, default=None,
                        help="experimentation.exploration_rate of every arm (default: the spec's, 0.05)")
    parser.add_argument("--uniform-reference", type=int, nargs="+", default=None, metavar="USERS",
                        help="instead of the arms: the trainer on a uniform log of this many users of the drifted world, per seed")
    args = parser.parse_args()
    # the product's default window: every mature decision (a guard's change drops what a drift made stale)
    quick = {"seeds": 1, "users": 400, "weeks": 2, "first_users": 2000, "drift_week": 2, "trees": 10, "window_days": None, "folds": 0}
    full = {"seeds": 3, "users": 10_000, "weeks": 8, "first_users": 20_000, "drift_week": 5, "trees": 100, "window_days": None,
            "folds": FOLDS}
    cfg = {k: (getattr(args, k) if getattr(args, k) is not None else (quick if args.quick else full)[k]) for k in full}
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms must name arms of {list(ARMS)}, got {unknown}")
    days = 7 * cfg["weeks"]
    drift_day = START_DAY + 7 * (cfg["drift_week"] - 1)
    mean_of = f" (mean of {cfg['folds']} fold models)" if cfg["folds"] > 1 else ""
    if args.uniform_reference:
        evaluated = 2_000 if args.quick else 50_000
        print(f"the reference: {cfg['trees']} trees per model{mean_of or ' (one model)'}; uniform logs of the world after "
              f"the drift; shares of the oracle's gain over control on {evaluated:,} fresh users", flush=True)
        for users in args.uniform_reference:
            shares = []
            for seed in range(args.first_seed, args.first_seed + cfg["seeds"]):
                t0 = time.perf_counter()
                shares.append(uniform_reference(seed, users, drift_day=drift_day, trees=cfg["trees"], folds=cfg["folds"],
                                                evaluated=evaluated))
                print(f"  {users:,} uniform users, seed {seed}: share {shares[-1]:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
            print(f"{users:,} uniform users: mean share {np.mean(shares):.3f} over {len(shares)} seeds (spread {max(shares) - min(shares):.3f})")
        return
    print(f"loop bench: {cfg['seeds']} seeds, {cfg['users']} users a day for {cfg['weeks']} weeks from a {cfg['first_users']}-user "
          f"randomized log; every offer works worse for mobile users from week {cfg['drift_week']}; {cfg['trees']} trees per model{mean_of}; "
          f"training window {str(cfg['window_days']) + ' days' if cfg['window_days'] else 'every mature decision'}; spend pacing {'off' if args.no_pacing else 'on (28-day periods)'}; canary on "
          f"{args.canary_share:.0%} of units; cohort guards {'off' if args.no_guard else 'on'}; exploration rate "
          f"{args.exploration_rate if args.exploration_rate is not None else 'as the spec'}", flush=True)
    tables: dict[str, list[pd.DataFrame]] = {label: [] for label in arms}
    for seed in range(args.first_seed, args.first_seed + cfg["seeds"]):
        for label in arms:
            adaptive, exploration = ARMS[label]
            spec = bench_spec(cfg["users"], cfg["trees"], window_days=cfg["window_days"], exploration=exploration, pacing=not args.no_pacing,
                              canary_share=args.canary_share, guard=not args.no_guard, exploration_rate=args.exploration_rate)
            t0 = time.perf_counter()
            result = run_arm(seed, spec, first_users=cfg["first_users"], daily=cfg["users"], days=days, drift_day=drift_day,
                             adaptive=adaptive, trees=cfg["trees"], truth_sample=min(2000, cfg["users"]), folds=cfg["folds"])
            tables[label].append(weekly(result).assign(seed=seed))
            print(f"seed {seed}, {label}: {days} days in {time.perf_counter() - t0:.0f} s", flush=True)
            for d in result:  # what the loop did, day by day (quiet days left out)
                done = [a for a in (d.step.actions if d.step else ()) if a != "no trigger fired" and "waiting for" not in a]
                if done:
                    truth = "" if d.challenger_share is None or d.share is None else \
                        f" [truth that day: challenger {d.challenger_share:.3f}, champion {d.share:.3f} share]"
                    print(f"  day {d.day - START_DAY + 1}: " + "; ".join(a[:220] for a in done) + truth, flush=True)
            print_arm(f"{label}, seeds so far", tables[label], cfg["weeks"], cfg["drift_week"])
    print("\n=== all seeds ===")
    for label, parts in tables.items():
        print_arm(label, parts, cfg["weeks"], cfg["drift_week"])
    print("\ntargets (full run): adaptive share >= 0.85 by week 8; >= 0.80 within 2 weeks of the drift; spend within 3% of the "
          "budget over each 4 weeks; no promoted version worse in truth than the one it replaced by more than the seed spread")
    if not any(np.isfinite(pd.concat(parts)["share"]).any() for parts in tables.values()):
        raise SystemExit("no week had a share of the oracle's gain")


if __name__ == "__main__":
    main()
