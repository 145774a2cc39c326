from __future__ import annotations

import subprocess
import sys

import drivetrain


def test_every_public_name_resolves() -> None:
    for name in drivetrain.__all__:
        assert getattr(drivetrain, name) is not None, name


def test_import_is_light() -> None:
    code = "import sys, drivetrain, drivetrain.spec; print('lightgbm' in sys.modules, 'duckdb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
