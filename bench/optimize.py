"""Optimizer benchmark: the Lagrangian optimizer on a million units, checked against HiGHS in the same run.

Instances are the Next Best Offer twin's true values (objective, promotion cost and refunds for each of
the 11 actions of every unit, and eligibility), built with ``problem_from_spec`` and kept to one budget
and one guardrail, both binding: the promotion budget at half of what the unconstrained oracle spends,
and the refund guardrail at 0.8 of the oracle's refund rate. The figures:

* the time of ``LagrangianOptimizer().assign`` on 1M units (target: under 5 s on 2 cores);
* its gap to the exact optimum of ``ExactOptimizer`` (HiGHS) on the first 50k of those units (target:
  under 0.1%), with HiGHS's own time.

Correctness sets the exit status (the gap under 0.1%, every constraint held within its tolerance on both
instances, the binding budget used within 0.5%); the timings are printed, never asserted.

    python bench/optimize.py            # 1M units, 50k for the exact comparison
    python bench/optimize.py --quick    # 20k and 5k units: the CI smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from drivetrain.optimize import (
    Assignment,
    AssignmentProblem,
    ExactOptimizer,
    LagrangianOptimizer,
    problem_from_spec,
)
from drivetrain.twin import NBOOTwin, oracle

UNITS, EXACT_UNITS = 1_000_000, 50_000
QUICK_UNITS, QUICK_EXACT_UNITS = 20_000, 5_000
GAP_TARGET = 1e-3
SECONDS_TARGET = 5.0
KEPT = ("promotion_budget", "refund_rate")


def build(seed: int, n: int) -> tuple[AssignmentProblem, dict[str, float]]:
    """The twin's instance with the budget and the refund guardrail; and how it was made (seconds, limits)."""
    twin = NBOOTwin(seed=seed)
    t0 = time.perf_counter()
    users = twin.population(n)
    t1 = time.perf_counter()
    truth = twin.truth(users)
    t2 = time.perf_counter()
    free = oracle(truth.objective, truth.eligible)
    free_cost, free_refund = truth.mean("promo_cost", free.probabilities), truth.mean("refund", free.probabilities)
    problem = problem_from_spec(
        twin.spec, truth.components, users,
        budget_overrides={"promotion_budget": 0.5 * free_cost}, guardrail_overrides={"refund_rate": 0.8 * free_refund},
    )
    problem = replace(problem, constraints=[c for c in problem.constraints if c.name in KEPT], caps=())
    return problem, {"population_s": t1 - t0, "truth_s": t2 - t1, "free_cost": free_cost, "free_refund": free_refund}


def head(problem: AssignmentProblem, n: int) -> AssignmentProblem:
    """The first ``n`` units of ``problem``."""
    return AssignmentProblem(
        problem.values[:n], problem.eligible[:n],
        [replace(c, coef=np.broadcast_to(c.coef, problem.values.shape)[:n]) for c in problem.constraints], problem.caps,
    )


def timed(optimizer: LagrangianOptimizer | ExactOptimizer, problem: AssignmentProblem) -> tuple[Assignment, float]:
    start = time.perf_counter()
    result = optimizer.assign(problem)
    return result, time.perf_counter() - start


def holds(problem: AssignmentProblem, result: Assignment, tol: float = 1e-5) -> bool:
    """Every constraint holds within ``tol`` of its limit (relative), and a binding budget is used within 0.5%."""
    ok = True
    for c in problem.constraints:
        used = result.usage[c.name]
        ok &= used <= c.limit * (1 + tol) if c.sense == "<=" else used >= c.limit * (1 - tol)
        if c.name == "promotion_budget" and c.name in result.binding:
            ok &= abs(used - c.limit) <= 5e-3 * c.limit
    return bool(ok)


def describe(problem: AssignmentProblem, result: Assignment) -> str:
    parts = []
    for c in problem.constraints:
        state = "binding" if c.name in result.binding else "slack"
        parts.append(f"{c.name} {result.usage[c.name]:.6g} {c.sense} {c.limit:.6g} ({state}, price {result.multipliers[c.name]:.4g})")
    randomized = int(((result.probabilities > 0).sum(axis=1) > 1).sum())
    return "; ".join(parts) + f"; randomized units {randomized:,} ({randomized / problem.n_units:.3%})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_UNITS:,} and {QUICK_EXACT_UNITS:,} units (the CI smoke run)")
    parser.add_argument("--units", type=int, default=None, help=f"units for the Lagrangian timing (default {UNITS:,})")
    parser.add_argument("--exact-units", type=int, default=None, help=f"units for the exact comparison (default {EXACT_UNITS:,})")
    parser.add_argument("--seed", type=int, default=0, help="twin seed")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    n = args.units or (QUICK_UNITS if args.quick else UNITS)
    m = min(n, args.exact_units or (QUICK_EXACT_UNITS if args.quick else EXACT_UNITS))

    problem, made = build(args.seed, n)
    print(f"NBOO twin, seed {args.seed}: {n:,} units x {problem.n_actions} actions "
          f"(population {made['population_s']:.1f} s, truth {made['truth_s']:.1f} s)")
    budget, refund = problem.constraints
    print(f"constraints: promotion_budget <= {budget.limit:.6g} (half the unconstrained oracle's {made['free_cost']:.6g}), "
          f"refund_rate <= {refund.limit:.6g} (0.8 x its {made['free_refund']:.6g})")

    big, big_s = timed(LagrangianOptimizer(), problem)
    print(f"\nLagrangian on {n:,} units: {big_s:.2f} s (target < {SECONDS_TARGET:g} s)")
    print(f"  objective {big.objective:.6f} per unit; {describe(problem, big)}")

    small = head(problem, m)
    exact, exact_s = timed(ExactOptimizer(), small)
    fast, fast_s = timed(LagrangianOptimizer(), small)
    gap = (exact.objective - fast.objective) / abs(exact.objective)
    print(f"\nexact check on the first {m:,} units:")
    print(f"  HiGHS (ExactOptimizer): {exact_s:.2f} s, objective {exact.objective:.8f}; {describe(small, exact)}")
    print(f"  Lagrangian:             {fast_s:.2f} s, objective {fast.objective:.8f}; {describe(small, fast)}")
    print(f"  gap to the exact optimum: {gap:.2e} relative, i.e. {gap:.6%} (target < {GAP_TARGET:.1%})")

    checks = {
        "gap_under_target": abs(gap) < GAP_TARGET,
        "constraints_hold_big": holds(problem, big),
        "constraints_hold_small": holds(small, fast) and holds(small, exact),
    }
    ok = all(checks.values())
    print(f"\nchecks: {'ok' if ok else 'FAILED'} " + ", ".join(f"{k}={v}" for k, v in checks.items()))
    if args.json is not None:
        figures: dict[str, Any] = {
            "units": n, "exact_units": m, "seed": args.seed, "lagrangian_s": big_s, "lagrangian_objective": big.objective,
            "lagrangian_usage": dict(big.usage), "exact_s": exact_s, "exact_objective": exact.objective,
            "lagrangian_small_s": fast_s, "lagrangian_small_objective": fast.objective, "gap": gap, "checks": checks, "ok": ok,
        }
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
