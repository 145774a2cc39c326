"""The OPE accuracy benchmark's quick mode runs in the suite, so a broken benchmark fails it.

Only that it runs and reports every estimator is asserted; its figures and timings are never checked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from drivetrain.simulate import default_estimators

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "ope_accuracy.py"


def test_quick_benchmark_runs_and_prints_every_estimator() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    lines = done.stdout.splitlines()
    for table in ("## oracle-mix", "## oracle ", "## what-if"):
        assert any(line.startswith(table) for line in lines), table
    rows = [*default_estimators(with_model=True), "SwitchDR(tau=10)", "naive (logged mean)"]
    for name in rows:
        assert sum(line.startswith(name + " ") for line in lines) == 2, name  # once per target policy
    for metric in ("objective", "refund_rate", "complaint_rate", "promotion_budget"):
        assert any(line.startswith(metric + " ") for line in lines), metric
