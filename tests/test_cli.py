"""The command line as a user runs it: a real process, its exit code and its output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from drivetrain.report import figure_data
from tests.conftest import NBOO_SPEC, Ran, invoke


def run(*args: str, cwd: Path | None = None) -> Ran:
    """The command in process (an interpreter start per command cost about a second each); the process
    itself, its exit code and its stderr, is checked once below and by the wheel test."""
    return invoke(*args, cwd=cwd)


def test_the_installed_entry_point_exits_2_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("version: 1\nname: x\n")
    done = subprocess.run([sys.executable, "-m", "drivetrain", "validate", str(tmp_path / "bad.yaml")], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "objective: required" in " ".join(done.stderr.split()), done.stderr


def test_validate_ok_and_broken(tmp_path: Path) -> None:
    ok = run("validate", str(NBOO_SPEC))
    assert ok.returncode == 0, ok.stderr
    assert "11 actions" in ok.stdout
    raw = yaml.safe_load(NBOO_SPEC.read_text())
    raw["objective"]["formula"] = "__import__('os').system('touch pwned')"
    raw["cohorts"] = ["country"]
    raw["extra"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    res = run("validate", str(bad), cwd=tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "extra: unknown key" in res.stderr
    del raw["extra"]  # once the schema holds, the cross-references are checked, all problems at once
    bad.write_text(yaml.safe_dump(raw))
    res = run("validate", str(bad), cwd=tmp_path)
    assert res.returncode == 2
    assert "objective.formula" in res.stderr and "only the named functions may be called" in res.stderr
    assert "cohorts[0]: must name a context feature" in res.stderr
    assert not (tmp_path / "pwned").exists()
    missing = run("validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "must exist" in missing.stderr


def test_init_scaffolds_a_valid_product(tmp_path: Path) -> None:
    res = run("init", str(tmp_path / "product"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "product" / "store" / "drivetrain-store.json").exists()
    assert "drivetrain validate" in (tmp_path / "product" / "README.md").read_text()
    assert run("validate", str(tmp_path / "product" / "drivetrain.yaml")).returncode == 0
    again = run("init", str(tmp_path / "product"))
    assert again.returncode == 2 and "--force" in again.stderr


def test_twin_ingest_join_summary_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "twin"
    res = run("twin", "nboo", "--out", str(out), "--users", "3000", "--seed", "4", "--format", "csv")
    assert res.returncode == 0, res.stderr
    spec = str(out / "spec.yaml")
    store = str(tmp_path / "store")
    # a file that cannot be read, after a good one: nothing is stored
    res = run("ingest", "--spec", spec, "--store", store, "--create", str(out / "decisions.csv"), str(tmp_path / "nope.csv"))
    assert res.returncode == 2 and "must exist" in res.stderr and "rows in" not in res.stdout
    assert not list((tmp_path / "store").rglob("*.parquet"))
    res = run("ingest", "--spec", spec, "--store", store, "--create", str(out / "outcomes.csv"), str(out / "decisions.csv"))
    assert res.returncode == 0, res.stderr
    assert "3000 rows in = 3000 accepted + 0 duplicates + 0 quarantined" in res.stdout
    res = run("ingest", "--spec", spec, "--store", store, str(out / "decisions.csv"))
    assert "3000 rows in = 0 accepted + 3000 duplicates + 0 quarantined" in res.stdout
    res = run("join", "--spec", spec, "--store", store, "--as-of", "2026-02-10T00:00:00Z", "--out", str(tmp_path / "train.parquet"))
    assert res.returncode == 0, res.stderr
    table = pq.read_table(tmp_path / "train.parquet").to_pandas()
    assert len(table) == 3000 and {"purchase", "promo_cost", "depth", "postcode"} <= set(table.columns)
    assert table["postcode"].str.startswith("hmac-sha256:").all()
    truth = pd.read_parquet(out / "truth.parquet")
    assert len(truth) == 3000
    res = run("summary", "--spec", spec, "--store", store, "--as-of", "2026-02-10T00:00:00Z")
    assert res.returncode == 0, res.stderr
    assert "discount-15-immediate" in res.stdout and "quarantine" in res.stdout


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["ingest", "--spec", "SPEC", "--store", "STORE", "missing.csv"], "must exist"),
        (["ingest", "--spec", "SPEC", "--store", "STORE", "odd.txt"], "must end in one of"),
        (["ingest", "--spec", "SPEC", "--store", "nostore", "d.csv"], "must hold drivetrain-store.json"),
        (["ingest", "--spec", "SPEC", "--store", "STORE", "unknown.csv"], "could not tell what"),
        (["join", "--spec", "SPEC", "--store", "STORE", "--as-of", "tomorrow", "--out", "x.parquet"], "`as_of` must be an ISO 8601 time"),
        (["join", "--spec", "SPEC", "--store", "STORE", "--as-of", "01/02/2026", "--out", "x.parquet"], "`as_of` must be an ISO 8601 time"),
        (["ingest", "--spec", "SPEC", "--store", "STORE", "dates.csv"], "every row of ['dates.csv'] was quarantined"),
        (["twin", "nboo", "--users", "0"], "Invalid value for '--users'"),
        (["join", "--spec", "SPEC", "--store", "STORE", "--as-of", "2999-01-01T00:00:00Z", "--out", "x.parquet"],
         "`as_of` must not be later than now"),
    ],
)
def test_input_mistakes_exit_2_without_traceback(tmp_path: Path, args: list[str], fragment: str) -> None:
    (tmp_path / "odd.txt").write_text("x")
    (tmp_path / "unknown.csv").write_text("a,b\n1,2\n")
    (tmp_path / "d.csv").write_text("request_id\n")
    (tmp_path / "dates.csv").write_text("request_id,propensity,unit_id,decided_at,offer,amount\nr1,0.5,u1,01/02/2026,none,0\n")
    assert run("init", str(tmp_path / "p")).returncode == 0
    spec = str(tmp_path / "p" / "drivetrain.yaml")
    store = str(tmp_path / "p" / "store")
    res = run(*[spec if a == "SPEC" else store if a == "STORE" else a for a in args], cwd=tmp_path)
    assert res.returncode == 2
    assert fragment in res.stderr
    assert "Traceback" not in res.stderr


def test_demo_runs_small(tmp_path: Path) -> None:
    res = run("demo", "--out", str(tmp_path / "demo"), "--users", "3000", "--loop-days", "3", "--loop-users", "300")
    assert res.returncode == 0, res.stderr
    assert "DOES NOT RECONCILE" not in res.stdout
    assert res.stdout.count("[reconciles]") == 4
    assert "per-user oracle" in res.stdout
    # the adaptation loop's wiring: one line a day, each next to the twin's truth (its story: tests/test_demo.py)
    assert "as the first champion on the 20000-user randomized log" in res.stdout
    assert all(f"day {d:>2}: " in res.stdout for d in range(3)) and res.stdout.count("serves (true share ") == 3
    report = tmp_path / "demo" / "report.html"
    assert f"report: {report}" in " ".join(res.stdout.split())  # rich may wrap the long path
    figures = figure_data(report.read_text())
    assert {"north-star", "drift"} <= set(figures)  # the loop's store has mature decisions and baselines
    # an alert timeline exactly when the loop stored alerts (three small days of a concept drift may raise none)
    assert ("alerts" in figures) == any((tmp_path / "demo" / "loop" / "store" / "alerts").rglob("*.parquet"))
    assert all(trace.get("x") or trace.get("y") for f in figures.values() for trace in f["data"])


def test_fit_optimize_simulate_decide(tmp_path: Path) -> None:
    out = tmp_path / "twin"
    assert run("twin", "nboo", "--out", str(out), "--users", "4000", "--seed", "6").returncode == 0
    spec, store = str(out / "spec.yaml"), str(tmp_path / "store")
    assert run("ingest", "--spec", spec, "--store", store, "--create", str(out / "decisions.parquet"), str(out / "outcomes.parquet")).returncode == 0
    as_of = ["--as-of", "2026-02-10T00:00:00Z"]
    res = run("fit", "--spec", spec, "--store", store, "--out", str(tmp_path / "model"), "--folds", "2", "--trees", "30", *as_of)
    assert res.returncode == 0, res.stderr
    assert "effect on net_gross_profit" in res.stdout and (tmp_path / "model" / "manifest.json").exists()
    # the model refitted on every row is saved next to the folds; --no-refit saves the folds alone
    assert set(json.loads((tmp_path / "model" / "policy.json").read_text())["final"]) == set(yaml.safe_load(Path(spec).read_text())["outcomes"])
    res = run("fit", "--spec", spec, "--store", store, "--out", str(tmp_path / "folds"), "--folds", "2", "--trees", "5", "--no-refit", *as_of)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "folds" / "policy.json").read_text())["final"] == {}
    res = run("optimize", "--spec", spec, "--store", store, "--model", str(tmp_path / "model"), "--out", str(tmp_path / "policy"),
              "--budget", "promotion_budget=0.8", *as_of)
    assert res.returncode == 0, res.stderr
    assert "promotion_budget" in res.stdout and "baseline columns" in res.stdout
    res = run("simulate", "--spec", spec, "--store", store, "--policy", str(tmp_path / "policy"),
              "--scenario", "offer_type=discount,depth=10,timing=immediate", "--where", "tier == 'gold'",
              "--since", "2026-01-05T12:00:00Z", *as_of)
    assert res.returncode == 0, res.stderr
    assert "scenario 1: offer_type=discount,depth=10,timing=immediate where tier == 'gold'" in res.stdout
    assert "--where \"tier == 'gold'\" holds for " in res.stdout
    bad = run("simulate", "--spec", spec, "--store", store, "--policy", str(tmp_path / "policy"), "--where", "tier == 'gold'", *as_of)
    assert bad.returncode == 2 and "`--where` restricts the scenarios, so it needs at least one `--scenario`" in bad.stderr
    assert "constraints and guardrails, mean per program unit (DR; caps:" in res.stdout
    assert "optimistic" in res.stdout  # the decisions since noon of day 1 are still the training window's
    res = run("simulate", "--spec", spec, "--store", store, "--policy", str(tmp_path / "policy"), "--estimator", "SNIPS", *as_of)
    assert res.returncode == 0 and "constraints and guardrails, mean per program unit (SNIPS; caps:" in res.stdout
    window = json.loads((tmp_path / "policy" / "manifest.json").read_text())["metadata"]["trained_window"]
    seen = " ".join(res.stdout.split())
    assert f"from the window the policy's models were fitted on ({window['first_decided_at']} to {window['last_decided_at']})" in seen
    res = run("simulate", "--spec", spec, "--store", store, "--policy", str(tmp_path / "policy"), "--estimator", "XYZ", *as_of)
    assert res.returncode == 2 and "`estimator` must be one of" in res.stderr and "'XYZ'" in res.stderr
    contexts = pd.read_parquet(out / "decisions.parquet").head(50).drop(columns=["action_id", "propensity"])
    contexts.loc[0, "region"] = "atlantis"
    contexts.to_csv(tmp_path / "contexts.csv", index=False)
    res = run("decide", "--policy", str(tmp_path / "policy"), "--input", str(tmp_path / "contexts.csv"), "--output", str(tmp_path / "d.parquet"))
    assert res.returncode == 0, res.stderr
    decided = pd.read_parquet(tmp_path / "d.parquet")
    assert len(decided) == 50 and decided.loc[0, "assignment"] == "fallback"
    assert decided["request_id"].equals(contexts["request_id"])
    assert (decided["propensity"] > 0).all() and (decided["propensity"] <= 1).all()
    assert "1 rows: `region` must be one of" in " ".join(res.stdout.split())  # the reasons, grouped
    # the decisions file goes back into a store as it is
    res = run("ingest", "--spec", spec, "--store", str(tmp_path / "again"), "--create", str(tmp_path / "d.parquet"))
    assert res.returncode == 0 and "50 rows in = 50 accepted" in res.stdout, res.stdout + res.stderr
    contexts.assign(request_id="same").to_csv(tmp_path / "same.csv", index=False)
    bad = run("decide", "--policy", str(tmp_path / "policy"), "--input", str(tmp_path / "same.csv"), "--output", str(tmp_path / "s.parquet"))
    assert bad.returncode == 2 and "`request_id` must be unique per row" in bad.stderr
    contexts.drop(columns=["request_id"]).assign(unit_id="u-twice").to_csv(tmp_path / "twice.csv", index=False)
    res = run("decide", "--policy", str(tmp_path / "policy"), "--input", str(tmp_path / "twice.csv"), "--output", str(tmp_path / "t.parquet"))
    assert res.returncode == 0 and pd.read_parquet(tmp_path / "t.parquet")["request_id"].is_unique
    broken = contexts.copy()
    broken["tenure_days"] = broken["tenure_days"].astype(object)
    broken.loc[3, "tenure_days"] = "ten"
    broken.to_csv(tmp_path / "broken.csv", index=False)
    bad = run("optimize", "--spec", spec, "--store", store, "--model", str(tmp_path / "model"), "--out", str(tmp_path / "p3"),
              "--contexts", str(tmp_path / "broken.csv"))
    assert bad.returncode == 2 and "2 of 50 do not, e.g. row 1: `region`" in bad.stderr and "Traceback" not in bad.stderr
    # mistakes: a policy built with another spec, a contexts file without a feature column, pessimism without folds
    changed = yaml.safe_load(Path(spec).read_text())
    changed["objective"]["formula"] = "gross_profit"
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    bad = run("simulate", "--spec", str(tmp_path / "changed.yaml"), "--store", store, "--policy", str(tmp_path / "policy"), *as_of)
    assert bad.returncode == 2 and "`--policy` must be built with this spec" in bad.stderr and "Traceback" not in bad.stderr
    contexts.drop(columns=["tier"]).to_csv(tmp_path / "no_tier.csv", index=False)
    bad = run("decide", "--policy", str(tmp_path / "policy"), "--input", str(tmp_path / "no_tier.csv"), "--output", str(tmp_path / "n.parquet"))
    assert bad.returncode == 2 and "missing ['tier']" in bad.stderr and not (tmp_path / "n.parquet").exists()
    assert run("fit", "--spec", spec, "--store", store, "--out", str(tmp_path / "single"), "--folds", "0", "--trees", "5", *as_of).returncode == 0
    bad = run("optimize", "--spec", spec, "--store", store, "--model", str(tmp_path / "single"), "--out", str(tmp_path / "p4"),
              "--pessimism", "1.645", *as_of)
    assert bad.returncode == 2 and "`pessimism` needs a model cross-fitted on 2 or more folds" in bad.stderr
    # mistakes: a malformed override, a tampered artifact
    bad = run("optimize", "--spec", spec, "--store", store, "--model", str(tmp_path / "model"), "--out", str(tmp_path / "p2"),
              "--budget", "promotion_budget:0.5", *as_of)
    assert bad.returncode == 2 and "`--budget` must look like NAME=NUMBER" in bad.stderr
    bad = run("optimize", "--spec", spec, "--store", store, "--model", str(tmp_path / "model"), "--out", str(tmp_path / "p2"),
              "--budget", "promo_budget=0.5", *as_of)
    assert bad.returncode == 2 and "`--budget` must name one of the spec's budgets ['promotion_budget'], got 'promo_budget'" in bad.stderr
    bad = run("optimize", "--spec", spec, "--store", store, "--model", str(tmp_path / "no_model"), "--out", str(tmp_path / "p2"), *as_of)
    assert bad.returncode == 2 and "`--model` must be a directory written by `drivetrain fit`" in bad.stderr and "does not exist" in bad.stderr
    (tmp_path / "policy" / "policy.json").write_text("{}")
    bad = run("decide", "--policy", str(tmp_path / "policy"), "--input", str(tmp_path / "contexts.csv"), "--output", str(tmp_path / "x.parquet"))
    assert bad.returncode == 2 and "was modified" in bad.stderr and "Traceback" not in bad.stderr
