"""mypy --strict over the package (the ``[tool.mypy]`` settings of pyproject.toml), run in the suite so that
`make test` type-checks on a worker beside the other tests instead of on one core before them (about 30 s
without a cache, as on a clean clone). `make lint` runs the same check on its own.

mypy runs in a process of its own: run in the worker (``mypy.api``) it left its whole analysis on the worker's
heap, and every later garbage collection there walked it (the ingest bench's test took 12-14 s after it
instead of 2 s, the monitor bench's 10 s instead of 6.5 s)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_the_package_type_checks_strictly() -> None:
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout, done.stdout
