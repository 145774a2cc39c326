"""`drivetrain quarantine list|export` and `drivetrain ingest --undo`, run as a user runs them."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pandas as pd

from tests.conftest import NBOO_SPEC, invoke
from tests.data.conftest import CONTEXT, T0, decision


def _csv(path: Path, records: list[dict[str, object]]) -> Path:
    frame = pd.DataFrame.from_records(records)
    for column in ("decided_at", "received_at"):
        frame[column] = frame[column].map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    frame.to_csv(path, index=False)
    return path


def test_list_export_correct_reingest_and_undo(tmp_path: Path) -> None:
    store = tmp_path / "store"
    records = [decision(f"r{i}", f"u{i}", T0 + timedelta(hours=i)) for i in range(5)]
    records[1]["propensity"] = 1.7
    records[2]["region"] = "atlantis"
    _csv(tmp_path / "crm export.csv", records)
    # the file named as a user in its directory would (the listing's source column fits, whatever the tmp path)
    first = invoke("ingest", "crm export.csv", "--spec", NBOO_SPEC, "--store", store, "--create", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    first_id = re.search(r"ingest id (\S+) \(undo: drivetrain ingest --undo \1 ", first.stdout)
    assert first_id, first.stdout
    assert "correct them: drivetrain quarantine export" in first.stdout

    listed = invoke("quarantine", "list", "--spec", NBOO_SPEC, "--store", store, "--rows", "5")
    assert listed.returncode == 0, listed.stderr
    assert "quarantine: 2 rows, 2 open, 0 released, 0 superseded" in listed.stdout
    assert "`region` must be one of" in listed.stdout and "crm export.csv" in listed.stdout
    assert "hmac-sha256:" in listed.stdout and CONTEXT["postcode"] not in listed.stdout  # payloads as stored
    assert "no rows match" in invoke("quarantine", "list", "--spec", NBOO_SPEC, "--store", store, "--table", "outcomes").stdout

    fix = tmp_path / "fix.csv"
    exported = invoke("quarantine", "export", "--spec", NBOO_SPEC, "--store", store, "--table", "decisions", "--out", fix)
    assert exported.returncode == 0 and "wrote 2 quarantined decisions rows" in exported.stdout, exported.stderr
    frame = pd.read_csv(fix, dtype=str, keep_default_na=False)
    frame["propensity"] = "0.1"
    frame["region"] = "north"
    frame.to_csv(fix, index=False)
    again = invoke("ingest", fix, "--spec", NBOO_SPEC, "--store", store)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 rows in = 2 accepted + 0 duplicates + 0 quarantined" in again.stdout
    assert "quarantined rows released 2" in again.stdout and "not stored" not in again.stdout
    assert "quarantine: 2 rows, 0 open, 2 released" in invoke("quarantine", "list", "--spec", NBOO_SPEC, "--store", store).stdout

    undo = invoke("ingest", "--undo", first_id.group(1), "--spec", NBOO_SPEC, "--store", store)
    assert undo.returncode == 0 and "removed 3 decisions" in undo.stdout, undo.stdout + undo.stderr
    summary = invoke("summary", "--spec", NBOO_SPEC, "--store", store)
    assert "decisions 2" in summary.stdout and "quarantine 0" in summary.stdout, summary.stdout

    unknown = invoke("ingest", "--undo", "20990101T000000Z-deadbeef", "--spec", NBOO_SPEC, "--store", store)
    assert unknown.returncode == 2 and "got '20990101T000000Z-deadbeef', which no ingest of this store has" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    both = invoke("ingest", fix, "--undo", first_id.group(1), "--spec", NBOO_SPEC, "--store", store)
    assert both.returncode == 2 and "`--undo` takes no files" in both.stderr
    bad = invoke("quarantine", "export", "--spec", NBOO_SPEC, "--store", store, "--table", "decisions", "--out", tmp_path / "x.xlsx")
    assert bad.returncode == 2 and "`out` must end in one of" in bad.stderr
