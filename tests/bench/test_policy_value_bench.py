"""The policy-value benchmark's quick mode runs in CI, so a broken benchmark fails the suite.

It asserts only that the script runs and prints every figure; the figures themselves are measured by
the full run and reported, never checked here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_runs_and_prints_every_figure() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "policy_value.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    for label in ("drivetrain policy", "S-learner on the objective", "random", "best single action",
                  "share of the budgeted oracle's gain", "true cost / budget", "lead over the S-learner"):
        assert label in done.stdout, label
