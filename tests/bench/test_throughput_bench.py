"""The throughput benchmark's quick mode runs in CI, so a broken benchmark fails the suite.

Its own check (the compiled batch equals each booster's ``Booster.predict`` to 1e-12) and the presence of
its figures are asserted; the timings it prints are never checked.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_bench


def test_quick_benchmark_runs_and_prints_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    stdout = run_bench("throughput.py", "--quick", "--threads", "1", "--json", str(out), fresh=True)  # its pool spawns
    for figure in ("fit     3,000 logged: drivetrain", "plain LightGBM, one model", "2,000 contexts x 11 actions: decide",
                   "compiled batch vs Booster.predict", "checks: ok"):
        assert figure in stdout, stdout
    fit, decide = json.loads(out.read_text())
    assert (fit["step"], fit["n"], fit["models"]) == ("fit", 3_000, 28)
    assert decide["step"] == "decide" and decide["max_gap"] <= 1e-12
