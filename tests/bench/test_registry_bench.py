"""The registry bench's quick mode runs in the suite, so a broken benchmark fails it.

It exits non-zero when a reader that has followed the registry since the start and a fresh reader read
different aliases, stages or prices; that, and that every length is printed, is asserted here; its timings
are never checked."""

from __future__ import annotations

from tests.conftest import run_bench


def test_quick_registry_bench_reads_alike_both_ways_at_every_length() -> None:
    out = run_bench("registry.py", "--quick")
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].replace(",", "").isdigit()]
    assert [int(r[0]) for r in rows] == [0, 50], out
    assert "the follower and a fresh reader read the same aliases, stages and prices at every length" in out
