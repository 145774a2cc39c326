"""The serving benchmark's quick mode runs in CI, so a broken benchmark fails the suite; its timings are
printed, never asserted."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import run_bench


def test_serve_bench_quick_mode_runs_and_reports_every_figure(policies: tuple[Path, Path]) -> None:
    out = run_bench("serve.py", "--quick", "--policy", str(policies[0]))  # the service tests' policy, fitted once a run
    rows = re.findall(r"^\s*(durable \(rotate\)|off)\s+(\d+)\s+(\d+)\s+\d+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%", out, re.M)
    assert len(rows) == 4, out  # two rates, logging on and off
    assert all(float(r[3]) <= float(r[4]) <= float(r[5]) for r in rows), out
    assert "Decider (compiled trees)" in out and "baseline: Policy.decisions_table" in out
    logged = int(re.search(r"decisions logged with logging on: (\d+)", out).group(1))  # type: ignore[union-attr]
    assert logged >= 2 * 100
