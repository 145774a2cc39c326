"""The optimizer benchmark's quick mode runs in CI, so a broken benchmark fails the suite.

Only the exit status (its own correctness checks) and the presence of its figures are asserted; the
timings it prints are never checked.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_bench


def test_quick_benchmark_runs_and_prints_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    stdout = run_bench("optimize.py", "--quick", "--seed", "2", "--json", str(out))
    for figure in ("Lagrangian on 20,000 units:", "HiGHS (ExactOptimizer):", "gap to the exact optimum:", "checks: ok"):
        assert figure in stdout, stdout
    result = json.loads(out.read_text())
    assert result["ok"] is True
    assert (result["units"], result["exact_units"]) == (20_000, 5_000)
    assert abs(result["gap"]) < 1e-3
