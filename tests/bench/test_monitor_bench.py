"""The monitoring benchmark's quick mode runs in the suite, so a broken benchmark fails it.

Only correctness is asserted: the exit status, agreement of drift with the pandas/SciPy baseline (the
shifted columns flagged) and of every evaluation slice's figures with the pandas baseline; the timings it
prints are never checked.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_bench


def test_quick_benchmark_runs_both_halves_and_agrees_with_the_plain_baselines(tmp_path: Path) -> None:
    out = tmp_path / "monitor.json"
    stdout = run_bench("monitor.py", "--quick", "--seed", "2", "--json", str(out))
    assert "## drift" in stdout and "plain pandas/SciPy baseline" in stdout
    assert "## evaluation" in stdout and "drivetrain evaluate, best" in stdout and "pandas/NumPy/SciPy baseline" in stdout
    result = json.loads(out.read_text())
    drift = result["drift"]
    assert drift["rows"] == 20_000 and drift["features"] == 25
    assert drift["checks"] == {name: True for name in drift["checks"]}, drift["checks"]
    assert drift["checks"].keys() >= {"psi_match", "ks_inside_bounds", "ks_close", "same_flags", "shifted_flagged"}
    assert drift["psi_max_diff"] <= 1e-9 and drift["ks_max_gap"] <= 2e-3

    evaluation = result["evaluate"]
    assert evaluation["decisions"] == 50_000
    assert 2.7 * evaluation["decisions"] <= evaluation["outcomes"] <= 3.3 * evaluation["decisions"]
    assert evaluation["checks"] == {"figures_agree": True, "repeats_identical": True}
    assert evaluation["failures"] == []
    # overall, 28 days, 10 cohort values, 28 x 10 day-cohort values; about 19 figures each
    assert evaluation["slices"] == 1 + 28 + 10 + 280
    assert evaluation["checked"] >= 15 * evaluation["slices"]
    estimate, low, high = evaluation["north_star"]
    assert low < estimate < high
    assert len(evaluation["drivetrain_runs"]) == 1
    assert result["ok"] is True


def test_one_half_runs_alone(tmp_path: Path) -> None:
    out = tmp_path / "drift.json"
    stdout = run_bench("monitor.py", "--quick", "--only", "drift", "--json", str(out))
    result = json.loads(out.read_text())
    assert "## drift" in stdout and "## evaluation" not in stdout
    assert "drift" in result and "evaluate" not in result and result["ok"] is True
