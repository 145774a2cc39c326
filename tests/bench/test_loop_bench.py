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


def test_the_uniform_reference_prints_a_share_between_control_and_the_oracle() -> None:
    out = run_bench("loop.py", "--quick", "--trees", "40", "--uniform-reference", "8000")
    line = next(line for line in out.splitlines() if line.startswith("8,000 uniform users: mean share"))
    share = float(line.split("mean share ")[1].split()[0])
    # the twin's truth bounds it: no plan beats the oracle, and 8,000 randomized users teach more than control
    assert 0.0 < share <= 1.0, line
