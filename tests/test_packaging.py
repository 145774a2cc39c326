"""The built wheel is the product a user installs: it must carry every file it reads and run on its own.

The wheel is built from this checkout without network access (no build isolation), installed into a fresh
virtual environment that borrows only the already installed dependencies, and run from a directory outside
the checkout, so that nothing can be found by accident in the source tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from drivetrain import __version__
from drivetrain.twin import nboo_spec

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert done.returncode == 0, f"{args} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)], cwd=ROOT)
    (built,) = out.glob("drivetrain-*.whl")
    return built


def test_the_wheel_carries_the_data_files_the_package_reads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("drivetrain/twin/nboo.yaml", "drivetrain/spec/templates/spec.yaml", "drivetrain/py.typed"):
        assert needed in names, f"{needed} is missing from {wheel.name}"
    assert wheel.name.startswith(f"drivetrain-{__version__}-")


def test_the_installed_wheel_runs_the_twin_and_validates_its_spec(wheel: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path, env=env)
    # the dependencies come from the running environment's site-packages, appended after the wheel's own
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).stdout.strip())
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    where = _run([str(python), "-c", "import drivetrain; print(drivetrain.__file__)"], cwd=tmp_path, env=env).stdout.strip()
    assert Path(where).is_relative_to(venv), f"drivetrain was imported from {where}, not from the installed wheel"
    command = str(venv / "bin" / "drivetrain")
    assert _run([command, "--version"], cwd=tmp_path, env=env).stdout.strip() == f"drivetrain {__version__}"
    _run([command, "twin", "nboo", "--out", "logs", "--users", "300", "--horizon-days", "7"], cwd=tmp_path, env=env)
    checked = _run([command, "validate", "logs/spec.yaml"], cwd=tmp_path, env=env)
    text = " ".join(checked.stdout.split())
    assert text.startswith("ok logs/spec.yaml: 11 actions"), text
    assert f"spec hash {nboo_spec(7).hash}" in text, text  # the installed twin writes the spec this checkout has
