"""The monitoring benchmark's quick mode runs in the suite, so a broken benchmark fails it.

Only correctness is asserted (exit status, agreement with the pandas/SciPy baseline, the shifted columns
flagged); the timings it prints are never checked.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_bench


def test_quick_benchmark_runs_and_agrees_with_the_plain_baseline(tmp_path: Path) -> None:
    out = tmp_path / "monitor.json"
    stdout = run_bench("monitor.py", "--quick", "--seed", "2", "--json", str(out))
    assert "## drift" in stdout and "plain pandas/SciPy baseline" in stdout
    result = json.loads(out.read_text())
    drift = result["drift"]
    assert drift["rows"] == 20_000 and drift["features"] == 25
    assert drift["checks"] == {name: True for name in drift["checks"]}, drift["checks"]
    assert drift["checks"].keys() >= {"psi_match", "ks_inside_bounds", "ks_close", "same_flags", "shifted_flagged"}
    assert drift["psi_max_diff"] <= 1e-9 and drift["ks_max_gap"] <= 2e-3
    assert result["ok"] is True
