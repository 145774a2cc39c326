"""The soak's quick mode: a loaded service, compactions in a loop, kill -9s; nothing acknowledged is lost
or changed, nothing stored was left unanswered, no server error."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_bench


def test_soak_quick_mode_loses_nothing_under_kills_and_compactions(policies: tuple[Path, Path]) -> None:
    out = run_bench("soak.py", "--quick", "--policy", str(policies[0]))  # the service tests' policy, fitted once a run
    result = json.loads(out.strip().splitlines()[-1])
    assert result["acknowledged"] > 100 and result["stored"] >= result["acknowledged"], out
    for column in ("missing", "stored with another value", "stored but unanswered", "stored twice", "5xx", "segments left"):
        assert result[column] == 0, (column, out)
    assert "kill -9: " in out and ("kill -9: 0 of the service's process group, 0 of its compactor" not in out), out
