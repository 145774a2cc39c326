"""The demo-fit benchmark's quick mode runs in CI, so a broken benchmark fails the suite.

It compares this checkout against itself (the path an earlier checkout takes); only that it runs and prints
every figure is checked, the figures are measured by the full run and reported."""

from __future__ import annotations

from tests.conftest import ROOT, run_bench


def test_quick_benchmark_runs_and_prints_every_figure() -> None:
    stdout = run_bench("demo_fit.py", "--quick", "--against", str(ROOT))
    for label in ("before         fit 1:", "this checkout  fit 1:", "of the earlier time (target: below 0.25)"):
        assert label in stdout, label
