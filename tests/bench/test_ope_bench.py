"""The OPE accuracy benchmark's quick mode runs in the suite, so a broken benchmark fails it.

Only that it runs and reports every estimator is asserted; its figures and timings are never checked.
"""

from __future__ import annotations

from drivetrain.simulate import default_estimators
from tests.conftest import run_bench


def test_quick_benchmark_runs_and_prints_every_estimator() -> None:
    lines = run_bench("ope_accuracy.py", "--quick").splitlines()
    for table in ("## oracle-mix", "## oracle ", "## what-if"):
        assert any(line.startswith(table) for line in lines), table
    rows = [*default_estimators(with_model=True), "SwitchDR(tau=10)", "naive (logged mean)"]
    for name in rows:
        assert sum(line.startswith(name + " ") for line in lines) == 2, name  # once per target policy
    for metric in ("objective", "refund_rate", "complaint_rate", "promotion_budget"):
        assert any(line.startswith(metric + " ") for line in lines), metric
