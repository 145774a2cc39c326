"""mypy --strict over the package (the ``[tool.mypy]`` settings of pyproject.toml), run in the suite so that
`make test` type-checks on a worker beside the other tests instead of on one core before them (about 30 s
without a cache, as on a clean clone). `make lint` runs the same check on its own."""

from __future__ import annotations

import contextlib

import pytest
from mypy import api

from tests.conftest import ROOT


@pytest.mark.slow
def test_the_package_type_checks_strictly() -> None:
    with contextlib.chdir(ROOT):
        out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml")])
    assert status == 0, out + err
    assert "Success: no issues found" in out, out
