"""The demo's fit, timed in this checkout and in an earlier one, in the same run.

`drivetrain demo` fits the twin's policy on its randomized log of 40,000 users: 2 cross-fitting folds, 100
rounds at rate 0.1, two models side by side. This script builds that log, ingests it and times the same
fit, twice (the first fit of a process also loads the compiled kernels), each checkout in a fresh
process. The earlier checkout is any copy of the package, for instance the version the speed target was
set against:

    git worktree add /tmp/before 0a17958
    python bench/demo_fit.py --against /tmp/before
    python bench/demo_fit.py --quick --against .     # a small run, for the test suite

Target: the fit in less than a quarter of the earlier version's time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

USERS = 40_000


def child(users: int, repeats: int) -> None:
    """Time the demo's fit with whatever `drivetrain` this process imports; one JSON line on stdout."""
    os.environ.setdefault("DRIVETRAIN_PII_KEY", "bench-key-of-the-personal-data-hash-of-the-twin")
    from drivetrain.clock import SimulatedClock
    from drivetrain.data import MemoryStore, RawRows, ingest_decisions, ingest_outcomes, training_table
    from drivetrain.model import OutcomeModel
    from drivetrain.twin import NBOOTwin

    # the log as policy_value.logged_store builds it, written out: that module imports parts of the
    # package an earlier checkout may not have, and this process runs with either
    twin = NBOOTwin(seed=7)
    spec = twin.spec
    decisions, outcomes = twin.log(twin.population(users))
    store = MemoryStore(spec)
    clock = SimulatedClock(twin.start + spec.horizon + spec.settle + timedelta(days=1))
    ingest_decisions(store, RawRows(decisions, (), "decisions"), clock=clock)
    ingest_outcomes(store, RawRows(outcomes, (), "outcomes"), clock=clock)
    frame = training_table(store, clock.now())[0].to_pandas()
    runs = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        OutcomeModel(n_folds=2, n_estimators=100, learning_rate=0.1, num_threads=2, seed=twin.seed).fit(frame, spec)
        runs.append({"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu, "load": os.getloadavg()[0]})
    import drivetrain

    print(json.dumps({"package": str(Path(drivetrain.__file__).parent.parent), "rows": len(frame), "runs": runs}))


def measure(package: Path | None, users: int, repeats: int) -> dict:  # type: ignore[type-arg]
    env = dict(os.environ)
    if package is not None:
        env["PYTHONPATH"] = str(package)  # ahead of the installed package
    done = subprocess.run([sys.executable, __file__, "--child", "--users", str(users), "--repeats", str(repeats)],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the fit failed in {package or 'this checkout'}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, help="a checkout of an earlier version (the folder holding its drivetrain/)")
    parser.add_argument("--users", type=int, default=USERS, help="logged users the demo fits on")
    parser.add_argument("--repeats", type=int, default=2, help="fits per checkout, each timed")
    parser.add_argument("--quick", action="store_true", help="3,000 users, one fit per checkout (for the test suite)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.users, args.repeats = 3_000, 1
    if args.child:
        child(args.users, args.repeats)
        return
    if args.against is not None and not (args.against / "drivetrain" / "__init__.py").is_file():
        parser.error(f"--against must be a checkout holding drivetrain/__init__.py, got {args.against}")
    here = Path(__file__).resolve().parent.parent
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} (1 min); {args.users:,} logged twin users", flush=True)
    results = {}
    for label, package in (("before", args.against), ("this checkout", here)):
        if package is None:
            continue
        out = measure(package, args.users, args.repeats)
        results[label] = out
        for i, run in enumerate(out["runs"]):
            print(f"{label:14s} fit {i + 1}: {run['seconds']:6.1f}s wall, {run['cpu_seconds']:6.1f} CPU s"
                  f" ({out['rows']:,} rows; load {run['load']:.1f}; {out['package']})", flush=True)
    if "before" in results:
        best = {k: min(r["seconds"] for r in v["runs"]) for k, v in results.items()}
        print(f"fastest fit: {best['this checkout']:.1f}s against {best['before']:.1f}s = "
              f"{best['this checkout'] / best['before']:.3f} of the earlier time (target: below 0.25)")


if __name__ == "__main__":
    main()
