"""The drift baseline chosen as of T: the monitor and the report measure drift the same way, counting only
decisions received by T."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from typer.testing import CliRunner

from drivetrain.cli import app
from drivetrain.data import ParquetStore, write_baselines
from drivetrain.evaluate import baseline_version, drift_as_of
from drivetrain.report import write_report
from drivetrain.spec import Spec
from drivetrain.twin import nboo_spec
from tests.evaluate.test_drift import T0, decisions

T = T0 + timedelta(days=1, hours=1)


@pytest.fixture(scope="module")
def spec() -> Spec:
    return nboo_spec(7)


def _late_version_store(spec: Spec, path: Path) -> ParquetStore:
    """v1: 300 decisions received on time; v2: 500 decisions of the same day that arrive after T, and whose
    baselines, unlike v1's, differ from the live contexts."""
    rng = np.random.default_rng(3)
    live = rng.normal(60, 15, 800)
    store = ParquetStore(path, spec, create=True)
    write_baselines(store, {"dwell_time_s": ("feature", rng.normal(60, 15, 4000))}, version="v1", created_at=T0)
    write_baselines(store, {"dwell_time_s": ("feature", rng.normal(90, 15, 4000))}, version="v2", created_at=T0)
    table = decisions(spec, 800, dwell_time_s=live)
    late = np.arange(800) >= 300
    table = table.set_column(table.schema.get_field_index("policy_version"), "policy_version",
                             pa.array(np.where(late, "v2", "v1")))
    received = pc.if_else(pa.array(late), pa.scalar(T + timedelta(hours=2), type=table.schema.field("received_at").type),
                          table["received_at"])
    table = table.set_column(table.schema.get_field_index("received_at"), "received_at", received)
    with store.writing():
        store.append("decisions", table)
    return store


def test_monitor_and_report_compare_with_the_same_baselines_for_the_same_t(spec: Spec, tmp_path: Path) -> None:
    store = _late_version_store(spec, tmp_path / "store")
    start = T - timedelta(days=1)
    assert baseline_version(store, start=start, end=T, as_of=T) == "v1"  # v2's decisions arrive after T
    assert baseline_version(store, start=start, end=T, as_of=T + timedelta(hours=3)) == "v2"
    drift, reason = drift_as_of(store, T, days=1.0)
    assert drift is not None and reason == ""
    assert (drift.version, drift.decisions, int(drift.table["flagged"].sum())) == ("v1", 300, 0)
    # the command line's monitor and the report measure exactly that
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model.model_dump(mode="json"), sort_keys=False))
    result = CliRunner().invoke(app, ["monitor", "--spec", str(spec_file), "--store", str(tmp_path / "store"), "--as-of", T.isoformat()])
    assert "drift against v1: 0 flagged rows" in " ".join(result.output.split()), result.output
    page = write_report(store, as_of=T, out=tmp_path / "report.html").read_text()
    assert "300, against the baselines of v1" in page
    # later, with v2's decisions received, both move to v2 together
    later = T + timedelta(hours=3)
    result = CliRunner().invoke(app, ["monitor", "--spec", str(spec_file), "--store", str(tmp_path / "store"), "--as-of", later.isoformat()])
    assert "drift against v2: 1 flagged rows" in " ".join(result.output.split()), result.output
    assert "800, against the baselines of v2" in write_report(store, as_of=later, out=tmp_path / "later.html").read_text()
