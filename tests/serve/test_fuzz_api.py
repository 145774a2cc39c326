"""schemathesis against the served document (a short run of `make schemathesis`): with and without the
token, no server error, no undocumented status, no schema violation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_schemathesis_finds_no_server_error_and_no_undocumented_status() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz_api.py"), "--examples", "10"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert "0 server errors, 0 undocumented statuses, 0 schema violations, with and without the token" in done.stdout
    assert done.stdout.count("--- schemathesis with") == 2 and done.stdout.count("Test cases:") == 2, done.stdout[-3000:]
