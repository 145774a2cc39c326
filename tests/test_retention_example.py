"""A third product walked through from its CSV exports, command by command, in process: subscription
renewals (`examples/retention/`), with a guardrail kept per plan, a hard cap on calls and bad rows in the
exports. Each step checks what a user would look for in its output."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from drivetrain.spec import load_spec
from tests.conftest import ROOT, invoke

EXAMPLE = ROOT / "examples" / "retention"
SPEC = EXAMPLE / "drivetrain.yaml"
SERVED_AT = datetime(2026, 5, 4, 9, tzinfo=UTC)


def simulator() -> ModuleType:
    found = importlib.util.spec_from_file_location("retention_logs", EXAMPLE / "logs.py")
    assert found is not None and found.loader is not None
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    return module


class _Served:
    """The clock of a batch `decide` run on the morning of SERVED_AT (its decisions mature by June)."""

    def now(self) -> datetime:
        return SERVED_AT


@pytest.fixture(autouse=True)
def _personal_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIVETRAIN_PII_KEY", "a key for tests only")


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_retention_from_csv_exports_to_a_served_and_evaluated_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = simulator()
    spec = load_spec(SPEC)
    decisions, outcomes = sim.log(spec, 4000, seed=1)
    decisions.to_csv(tmp_path / "decisions.csv", index=False)
    outcomes.to_csv(tmp_path / "outcomes.csv", index=False)
    s = ["--spec", SPEC, "--store", tmp_path / "store"]

    assert invoke("validate", SPEC).returncode == 0
    ran = invoke("ingest", *s, "--create", "--logged", tmp_path / "decisions.csv", tmp_path / "outcomes.csv")
    assert ran.returncode == 0, ran.stderr
    out = _flat(ran.stdout)
    assert "4013 rows in = 4000 accepted + 0 duplicates + 13 quarantined" in out and "no `assignment` column" not in out
    assert "3 quarantined" in out  # the outcomes' bad rows; the outcome of no decision waits for one
    # without --logged, a file with no assignment column is said to count as the policy arm
    decisions.head(50).to_csv(tmp_path / "few.csv", index=False)
    ran = invoke("ingest", "--spec", SPEC, "--store", tmp_path / "other", "--create", tmp_path / "few.csv")
    assert ran.returncode == 0 and "no `assignment` column, so its 50 decisions count as the policy arm" in _flat(ran.stdout)

    # the quarantine: export, correct the case of a category, ingest again: released
    assert invoke("quarantine", "export", *s, "--table", "decisions", "--out", tmp_path / "fix.csv").returncode == 0
    fix = pd.read_csv(tmp_path / "fix.csv", dtype=str, keep_default_na=False)
    fix[fix["channel"] == "Web"].assign(channel="web").to_csv(tmp_path / "fixed.csv", index=False)
    ran = invoke("ingest", *s, "--logged", tmp_path / "fixed.csv")
    assert ran.returncode == 0 and "quarantined rows released 2" in _flat(ran.stdout), ran.stdout

    until = "2026-04-15T00:00:00Z"
    ran = invoke("fit", *s, "--out", tmp_path / "model", "--folds", "2", "--trees", "20", "--until", until)
    assert ran.returncode == 0, ran.stderr
    assert "trained on the " in ran.stdout and f"--until {until}" in _flat(ran.stdout)

    # what-ifs: a lever left out keeps control's value; differences are per unit of the segment, paired
    ran = invoke("simulate", *s, "--policy", tmp_path / "model", "--scenario", "call=yes", "--where", "plan == 'basic'",
                 "--since", until)
    assert ran.returncode == 0, ran.stderr
    out = _flat(ran.stdout)
    assert "difference against control" in out and "where plan == 'basic'" in out
    assert "retention@plan=basic >= 0.84" in out  # a per-plan guardrail told as the plan's retention, with its bound
    row = next(line for line in ran.stdout.splitlines() if line.startswith("│ scenario 1") and "where plan" in line)
    good = decisions[~decisions["request_id"].str.startswith("bad-")].drop_duplicates("request_id")
    later = pd.to_datetime(good["decided_at"], utc=True) >= pd.Timestamp(until)
    assert int(row.split("│")[3]) == int((later & (good["plan"] == "basic")).sum())  # the segment's decisions, not all

    ran = invoke("optimize", *s, "--model", tmp_path / "model", "--out", tmp_path / "policy")
    assert ran.returncode == 0, ran.stderr
    rows = {line.split("│")[1].strip(): line.split("│")[2:5] for line in ran.stdout.splitlines() if line.startswith("│ retention@")}
    assert set(rows) == {"retention@plan=basic", "retention@plan=premium"}
    for _planned, as_served, limit in rows.values():
        assert limit.strip() == ">= 0.84" and float(as_served) >= 0.84 - 1e-4  # per unit of the plan, as the bound speaks

    ran = invoke("explain", "--policy", tmp_path / "policy", "--store", tmp_path / "store", "--by", "plan,tickets_90d:2",
                 "--unit", "s1-0000007")
    assert ran.returncode == 0, ran.stderr
    assert "0 to " in ran.stdout and "(-0.001" not in ran.stdout  # integer bands read as integers
    assert "unit s1-0000007:" in ran.stdout and "wins over" in ran.stdout
    ran = invoke("frontier", *s, "--model", tmp_path / "model", "--constraint", "calls", "--limits", "0.04,0.16",
                 "--out", tmp_path / "calls.html")
    assert ran.returncode == 0, ran.stderr
    assert "<html" in (tmp_path / "calls.html").read_text()[:200].lower()
    ran = invoke("frontier", *s, "--model", tmp_path / "model", "--constraint", "retention", "--limits", "0.8,0.84")
    assert ran.returncode == 0 and "retention@plan=premium" in ran.stdout, ran.stderr

    # decide on the subscribers due in May, with the hard cap on calls counted as they are served
    due = sim.subscribers(2500, seed=7)
    due.to_csv(tmp_path / "due.csv", index=False)
    with monkeypatch.context() as served_clock:
        served_clock.setattr("drivetrain.cli.SystemClock", _Served)
        ran = invoke("decide", "--policy", tmp_path / "policy", "--input", tmp_path / "due.csv", "--output", tmp_path / "served.csv")
    assert ran.returncode == 0, ran.stderr
    served = pd.read_csv(tmp_path / "served.csv")
    program = (served["tenure_months"] >= 2).to_numpy()
    calls = (served["call"] == "yes").to_numpy()[program]
    assert (np.cumsum(calls) / np.arange(1, calls.size + 1)).max() <= 0.08  # never over the cap, after any decision
    sim.respond(spec, served, seed=7).to_csv(tmp_path / "served_outcomes.csv", index=False)
    ran = invoke("ingest", *s, tmp_path / "served.csv", tmp_path / "served_outcomes.csv")
    assert ran.returncode == 0 and "no `assignment` column" not in ran.stdout, ran.stdout

    as_of = "2026-06-15T00:00:00Z"
    version = str(served["policy_version"].iloc[0])
    ran = invoke("evaluate", *s, "--as-of", as_of, "--policy-version", version)
    assert ran.returncode == 0, ran.stderr
    out = _flat(ran.stdout)
    assert "holdout (0 units)" not in out and "cap calls (share <= 0.08)" in out
    assert "plan=basic" in out and "plan=premium" in out
    ran = invoke("monitor", *s, "--as-of", as_of)
    assert ran.returncode in (0, 1), ran.stderr  # 1: an alert fired, which it names
    ran = invoke("report", *s, "--as-of", as_of, "--out", tmp_path / "report.html", "--policy-version", version)
    assert ran.returncode == 0 and (tmp_path / "report.html").exists(), ran.stderr
