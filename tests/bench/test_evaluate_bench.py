"""The evaluation benchmark's quick mode runs in CI, so a broken benchmark fails the suite.

Only correctness is asserted (exit status, agreement of every slice's figures with the pandas baseline);
the timings it prints are never checked.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_bench


def test_quick_evaluation_benchmark_agrees_with_the_pandas_baseline(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    stdout = run_bench("evaluate_bench.py", "--quick", "--seed", "3", "--json", str(out))
    assert "drivetrain evaluate (DuckDB)" in stdout and "pandas/NumPy/SciPy baseline" in stdout
    result = json.loads(out.read_text())
    assert result["decisions"] == 200_000
    assert 2.7 * result["decisions"] <= result["outcomes"] <= 3.3 * result["decisions"]
    assert result["ok"] is True and result["failures"] == []
    # overall, 28 days, 10 cohort values, 28 x 10 day-cohort values; about 19 figures each
    assert result["slices"] == 1 + 28 + 10 + 280
    assert result["checked"] >= 15 * result["slices"]
    low, estimate, high = result["north_star"][1], result["north_star"][0], result["north_star"][2]
    assert low < estimate < high
