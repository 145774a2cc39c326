"""The ingest benchmark's quick mode runs in CI, so a broken benchmark fails the suite.

Only correctness is asserted (exit status, reconciliation, agreement with the pandas baseline); the
timings it prints are never checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "ingest.py"


def test_quick_benchmark_runs_and_agrees_with_the_pandas_baseline(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--seed", "3", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    for stage in ("ingest decisions", "ingest outcomes", "training table", "total"):
        assert stage in done.stdout
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
