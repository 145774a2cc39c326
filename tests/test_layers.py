"""The import rules of docs/architecture.md hold over the package, and the checker catches a breach."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_imports", ROOT / "scripts" / "check_imports.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_imports"] = module
    spec.loader.exec_module(module)
    return module


def test_the_package_keeps_its_import_rules() -> None:
    assert _checker().breaches() == []


def test_the_checker_finds_a_private_import_and_an_upward_import(tmp_path: Path) -> None:
    package = tmp_path / "drivetrain"
    (package / "model").mkdir(parents=True)
    (package / "spec").mkdir()
    (package / "model" / "_inner.py").write_text("X = 1\n")
    (package / "policy.py").write_text("from drivetrain.model._inner import X\n")
    (package / "spec" / "__init__.py").write_text("def f():\n    from drivetrain.serve import app\n")
    found = _checker().breaches(package)
    assert found == [
        "drivetrain/policy.py:1: imports drivetrain.model._inner, a private name of drivetrain.model: export it from"
        " drivetrain.model instead",
        "drivetrain/spec/__init__.py:2: drivetrain.spec imports drivetrain.serve, against the layers (it may import"
        " no other part)",
    ]


def test_ruff_finds_nothing_in_the_code_the_project_ships() -> None:
    """ruff (the ``[tool.ruff]`` settings of pyproject.toml: errors, import order, upgrades, line length), run in
    the suite so that `make test` lints on a worker beside the other tests; `make lint` runs it on its own."""
    ran = subprocess.run([sys.executable, "-m", "ruff", "check", "drivetrain", "tests", "bench", "scripts", "examples"],
                         cwd=ROOT, capture_output=True, text=True, check=False)
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_the_flagship_spec_keeps_the_contract_of_the_committed_one() -> None:
    """The feature check a product runs in its CI: the working tree's flagship spec against HEAD's."""
    from tests.conftest import invoke

    spec = "examples/nboo/drivetrain.yaml"
    ran = invoke("contract", "check", "--spec", spec, "--against", f"HEAD:{spec}", cwd=ROOT)
    assert ran.returncode == 0, ran.stdout + ran.stderr
