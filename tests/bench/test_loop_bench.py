"""The loop benchmark's quick mode runs in the suite, so a broken benchmark fails it; its figures are
never checked here."""

from __future__ import annotations

from tests.conftest import run_bench


def test_quick_loop_benchmark_runs_and_prints_both_arms_by_week() -> None:
    out = run_bench("loop.py", "--quick")
    for arm in ("adaptive (directed exploration)", "adaptive (uniform epsilon)", "frozen first policy"):
        assert arm in out, arm
    lines = [line.split() for line in out.splitlines()]
    weeks = [cells for cells in lines if cells and cells[0].isdigit() and len(cells) == 10]
    assert len(weeks) == 2 * 2 * 3  # three arms, two weeks, printed after the seed and for all seeds
    assert "spend / budget" in out and "the budgeted oracle's on the same users" in out
