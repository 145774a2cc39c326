"""One small twin run in a Parquet store for the report's tests, and its report as of the run's end."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from drivetrain.data import Store
from drivetrain.loop import sample_run
from drivetrain.report import write_report


@dataclass(frozen=True)
class Sample:
    directory: Path
    store: Store
    as_of: datetime
    report: Path

    @property
    def page(self) -> str:
        return self.report.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    directory = tmp_path_factory.mktemp("report-sample")
    store, as_of = sample_run(directory, users=1000, days=4, seed=21)
    return Sample(directory, store, as_of, write_report(store, as_of=as_of, out=directory / "report.html"))
