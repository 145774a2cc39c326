"""The optimizer benchmark's quick mode runs in CI, so a broken benchmark fails the suite.

Only the exit status (its own correctness checks) and the presence of its figures are asserted; the
timings it prints are never checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "optimize.py"


def test_quick_benchmark_runs_and_prints_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--seed", "2", "--json", str(out)],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    for figure in ("Lagrangian on 20,000 units:", "HiGHS (ExactOptimizer):", "gap to the exact optimum:", "checks: ok"):
        assert figure in done.stdout, done.stdout
    result = json.loads(out.read_text())
    assert result["ok"] is True
    assert (result["units"], result["exact_units"]) == (20_000, 5_000)
    assert abs(result["gap"]) < 1e-3
