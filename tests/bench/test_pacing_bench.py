"""The pacing bench's quick mode runs in the suite, so a broken benchmark fails it.

It exits non-zero when the reused and the rebuilt ledgers price a day differently; that, and that every
figure is printed, is asserted here; its timings are never checked."""

from __future__ import annotations

import re

from tests.conftest import run_bench


def test_quick_pacing_bench_prices_each_day_alike_both_ways_and_prints_its_figures() -> None:
    out = run_bench("pacing.py", "--quick")
    rows = [line.split() for line in out.splitlines() if re.match(r"^\s*\d+\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+$", line)]
    assert [int(r[0]) for r in rows] == [12, 13, 14], out
    assert all(r[4] == r[5] and float(r[4]) > 0 for r in rows), out  # a binding budget: the same price, not 0
    assert "the same price every day, both ways (3 days)" in out
    assert "each later daily step:" in out and "rebuilt" in out
