"""The policy-value benchmark's quick mode runs in CI, so a broken benchmark fails the suite.

It asserts only that the script runs and prints every figure; the figures themselves are measured by
the full run and reported, never checked here.
"""

from __future__ import annotations

from tests.conftest import run_bench


def test_quick_benchmark_runs_and_prints_every_figure() -> None:
    stdout = run_bench("policy_value.py", "--quick")
    for label in ("drivetrain policy", "S-learner on the objective", "random", "best single action",
                  "share of the budgeted oracle's gain", "true cost / budget", "lead over the S-learner"):
        assert label in stdout, label
