"""The ingest benchmark's quick mode runs in CI, so a broken benchmark fails the suite.

Only correctness is asserted (exit status, reconciliation, agreement with the pandas baseline); the
timings it prints are never checked.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_bench


def test_quick_benchmark_runs_and_agrees_with_the_pandas_baseline(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    stdout = run_bench("ingest.py", "--quick", "--seed", "3", "--json", str(out))
    for stage in ("ingest decisions", "ingest outcomes", "training table", "total"):
        assert stage in stdout
    result = json.loads(out.read_text())

    assert result["decisions"] == 20_000
    # ~3 outcome rows per decision after splitting order lines
    assert 2.7 * result["decisions"] <= result["outcomes"] <= 3.3 * result["decisions"]
    assert sum(result["outcomes_by_component"].values()) == result["outcomes"]
    assert result["outcomes"] > result["twin_outcomes"]

    checks = result["checks"]
    assert checks == {name: True for name in checks}, checks
    assert checks.keys() >= {
        "decisions_reconcile", "outcomes_reconcile", "nothing_quarantined", "attributed_match", "joined_match",
        "mature_match", "same_decisions", "sums_match", "rows_match",
    }
    assert result["ok"] is True
    for name, sums in result["component_sums"].items():
        scale = max(abs(sums["drivetrain"]), abs(sums["baseline"]))
        assert abs(sums["drivetrain"] - sums["baseline"]) <= 1e-6 * scale, name
    # the sum components really carry money: an all-zero join would agree trivially
    assert result["component_sums"]["order_value"]["baseline"] > 0
    assert result["component_sums"]["purchase"]["baseline"] > 0
    assert result["max_row_abs_diff"] <= 1e-6
