"""The pacing step of `drivetrain adapt`, day after day: the ledger reused from the last step's price event
against the ledger rebuilt from the store, measured in the same run on the same store.

A store holds a 20,000-user randomized log, the first champion fitted on it (the adaptation's default
trainer: the mean of 5 fold models) and DAYS days of USERS users served by that champion. Then each of the
last days is priced twice, as a daily `drivetrain adapt` would price it:

* reused: `drivetrain.adapt.pace`, each step recording its ledger in the registry's price event, so the next
  step predicts only the decisions served since (the first step has no ledger to reuse and predicts them all);
* rebuilt: `drivetrain.adapt.prices_for` on a registry without price events: every decision of the current
  and the previous period predicted again (the baseline, what every step did before).

It prints the seconds of each step, both ways, and checks that both give the same price every day.

    python bench/pacing.py            # 10,000 users a day, 28 days, the last 7 priced (about 4 minutes)
    python bench/pacing.py --quick    # a small run, what the test suite runs
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivetrain.adapt import MemoryRegistry, adapt, default_trainer, pace, prices_for
from drivetrain.clock import SimulatedClock
from drivetrain.data import MemoryStore, RawRows, ingest_decisions, ingest_outcomes
from drivetrain.loop import loop_spec
from drivetrain.model import OutcomeModel
from drivetrain.spec import Spec, parse_spec
from drivetrain.twin import NBOOTwin

# the twin's contexts hold a personal field: the bench hashes it with its own key unless one is set
os.environ.setdefault("DRIVETRAIN_PII_KEY", "bench-pacing-key-of-the-personal-data-hash")

START_DAY = 9  # the first log's decisions are all mature by then (7-day horizon, 1 day to settle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (what the test suite runs)")
    parser.add_argument("--users", type=int, default=None, help="users served a day (default 10,000; 500 with --quick)")
    parser.add_argument("--days", type=int, default=None, help="days served (default 28; 6 with --quick)")
    parser.add_argument("--priced", type=int, default=None, help="the last days priced both ways (default 7; 3 with --quick)")
    args = parser.parse_args()
    users = args.users or (500 if args.quick else 10_000)
    days = args.days or (6 if args.quick else 28)
    priced = min(args.priced or (3 if args.quick else 7), days - 1)
    if users < 1 or days < 2 or priced < 1:
        parser.error(f"--users must be at least 1, --days at least 2 and --priced at least 1, got {users}, {days} and {priced}")

    raw = loop_spec().model.model_dump(mode="json")
    raw["adaptation"]["pacing_period"] = "28d"
    raw["constraints"]["budgets"][0]["max_per_unit"] = 0.5  # a budget that binds: the price is not 0 either way
    spec: Spec = parse_spec(raw, source="pacing bench")
    twin = NBOOTwin(horizon_days=7, seed=0)
    store = MemoryStore(spec)
    decisions, outcomes = twin.log(twin.population(3_000 if args.quick else 20_000))
    clock = SimulatedClock(twin.start + timedelta(days=START_DAY))
    ingest_decisions(store, RawRows(decisions, (), "first randomized log"), clock=clock)
    ingest_outcomes(store, RawRows(outcomes, (), "first randomized log"), clock=clock)
    registry = MemoryRegistry()
    trainer = (lambda table, product: OutcomeModel(n_folds=0, n_estimators=10, num_threads=1, seed=0).fit(table, product)) \
        if args.quick else default_trainer
    t0 = time.perf_counter()
    first = adapt(store, registry, clock.now(), trainer=trainer, who="bench", population_size=min(10_000, users), pacing=False)
    champion = first.champion
    assert champion is not None, first.actions
    policy = registry.load(champion)
    print(f"pacing bench: {users} users a day for {days} days served by {champion} (fitted in {time.perf_counter() - t0:.1f} s), "
          f"the last {priced} days priced both ways", flush=True)

    waiting = outcomes.iloc[:0]
    for day in range(START_DAY, START_DAY + days):
        start = twin.start + timedelta(days=day)
        frame = twin.population(users, day=day, offset=40_000_000 + day * users)
        contexts = twin.observe(frame, day=day).assign(request_id=[f"d{day:03d}-{i:07d}" for i in range(users)])
        served, _ = policy.decisions_table(contexts, now=start + timedelta(hours=12))
        waiting = pd.concat([waiting, twin.respond(frame, served, day=day)], ignore_index=True)
        clock.set(start + timedelta(days=1))
        ingest_decisions(store, RawRows(served, (), f"day {day}"), clock=clock)
        arrived = waiting["received_at"] < clock.now()
        ingest_outcomes(store, RawRows(waiting[arrived].reset_index(drop=True), (), f"day {day} outcomes"), clock=clock)
        waiting = waiting[~arrived]
    print(f"served {days} days in {time.perf_counter() - t0:.0f} s", flush=True)

    plain = copy.deepcopy(registry)  # the baseline's registry never holds a price event
    print(f"\n{'day':>4} {'decisions in the ledger':>23} {'reused (s)':>10} {'rebuilt (s)':>11} {'price, reused':>13} {'price, rebuilt':>14}")
    reused, rebuilt = [], []
    for day in range(START_DAY + days - priced, START_DAY + days):
        as_of = twin.start + timedelta(days=day + 1)
        t = time.perf_counter()
        event = pace(store, registry, as_of, who="bench")
        reused.append(time.perf_counter() - t)
        t = time.perf_counter()
        details = prices_for(store, plain, as_of)
        rebuilt.append(time.perf_counter() - t)
        assert event is not None and details is not None
        a, b = event.details["prices"][champion], details["prices"][champion]
        ledger = sum(n for by_version in details["ledger"].values() for n, _ in by_version.values())
        print(f"{day:>4} {ledger:>23} {reused[-1]:>10.2f} {rebuilt[-1]:>11.2f} {a:>13.6f} {b:>14.6f}", flush=True)
        if not np.isclose(a, b, rtol=1e-9, atol=1e-12):
            raise SystemExit(f"day {day}: the reused ledger prices {a!r}, the rebuilt one {b!r}: they must agree")
    later = reused[1:]
    print(f"\nthe same price every day, both ways ({priced} days)")
    print(f"first step (nothing to reuse yet): {reused[0]:.2f} s reused, {rebuilt[0]:.2f} s rebuilt")
    if later:
        print(f"each later daily step: {np.mean(later):.2f} s reused against {np.mean(rebuilt[1:]):.2f} s rebuilt "
              f"({np.mean(rebuilt[1:]) / np.mean(later):.1f} times faster)")


if __name__ == "__main__":
    main()
