"""Frictions a new user met on the command line, each pinned by the check that would have caught it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drivetrain.data import ParquetStore
from drivetrain.model import OutcomeModel
from drivetrain.policy import Policy
from drivetrain.twin import NBOOTwin, nboo_spec_yaml
from tests.conftest import invoke


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spec, a store and a small fitted model of the twin, in one directory."""
    root = tmp_path_factory.mktemp("product")
    twin = NBOOTwin(seed=8)
    (root / "spec.yaml").write_text(nboo_spec_yaml(), encoding="utf-8")
    decisions = twin.expected_log(twin.population(3000))
    model = OutcomeModel(n_folds=0, n_estimators=10, min_child_samples=50, num_threads=1).fit(decisions, twin.spec)
    Policy.from_model(twin.spec, model, {}).save(root / "model")
    ParquetStore(root / "store", twin.spec, create=True)
    NBOOTwin(seed=9).population(1500, offset=3_000_000).to_csv(root / "contexts.csv", index=False)
    return root


@pytest.fixture(autouse=True)
def _personal_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIVETRAIN_PII_KEY", "a key for tests only")
    monkeypatch.setenv("DRIVETRAIN_PII_SALT", "a key for tests only")


def test_optimize_on_a_csv_population_writes_numeric_baselines_for_numeric_features(product: Path, tmp_path: Path) -> None:
    ran = invoke("optimize", "--spec", product / "spec.yaml", "--store", product / "store", "--model", product / "model",
                 "--out", tmp_path / "policy", "--contexts", product / "contexts.csv")
    assert ran.returncode == 0, ran.stderr
    baselines = pd.read_parquet(product / "store" / "baselines")
    kinds = baselines[baselines["cohort"].isna()].set_index("column_name")["kind"]
    numeric = ["page_views_30d", "cart_adds_30d", "dwell_time_s", "purchases_365d", "tenure_days", "avg_order_value"]
    assert (kinds[numeric] == "numeric").all(), kinds.to_dict()
    assert (kinds[["region", "device", "tier"]] == "categorical").all(), kinds.to_dict()


def test_tables_are_not_cut_when_output_is_not_a_terminal(product: Path, tmp_path: Path) -> None:
    ran = invoke("optimize", "--spec", product / "spec.yaml", "--store", product / "store", "--model", product / "model",
                 "--out", tmp_path / "policy", "--contexts", product / "contexts.csv")
    assert ran.returncode == 0, ran.stderr
    assert "…" not in ran.stdout and "promotion_budget" in ran.stdout


def test_unquoted_yes_no_lever_values_are_refused_at_validation(tmp_path: Path) -> None:
    text = nboo_spec_yaml().replace("levers:\n", "levers:\n  call: {type: categorical, values: [yes, no]}\n", 1)
    text = text.replace("control: {offer_type: none, depth: 0, timing: none}", "control: {offer_type: none, depth: 0, timing: none, call: 'no'}")
    (tmp_path / "spec.yaml").write_text(text, encoding="utf-8")
    ran = invoke("validate", tmp_path / "spec.yaml")
    assert ran.returncode == 2
    assert "levers.call.values: must be text or numbers, got the booleans [True, False]" in ran.stderr
    assert "quote them ('yes', 'no')" in ran.stderr
    (tmp_path / "spec.yaml").write_text(text.replace("values: [yes, no]", "values: ['yes', 'no']"), encoding="utf-8")
    assert invoke("validate", tmp_path / "spec.yaml").returncode == 0


def test_init_names_the_product_after_its_folder_and_walks_through_every_step(tmp_path: Path) -> None:
    ran = invoke("init", tmp_path / "car-renewals")
    assert ran.returncode == 0, ran.stderr
    readme = (tmp_path / "car-renewals" / "README.md").read_text()
    spec = (tmp_path / "car-renewals" / "drivetrain.yaml").read_text()
    assert readme.startswith("# car_renewals\n") and "name: car_renewals " in spec
    for step in ("validate", "ingest", "summary", "fit", "simulate", "optimize", "decide", "serve", "evaluate", "monitor", "report"):
        assert f"drivetrain {step}" in readme, step
    assert "docs/" not in readme and "docs/" not in spec  # nothing the folder does not hold
    assert "personal: true" in spec and "nullable: true" in spec
    assert invoke("validate", tmp_path / "car-renewals" / "drivetrain.yaml").returncode == 0
    assert invoke("init", tmp_path / "2024 pilot").returncode == 0
    assert "name: product_2024_pilot " in (tmp_path / "2024 pilot" / "drivetrain.yaml").read_text()


def test_fit_trains_on_the_window_it_is_given(tmp_path: Path) -> None:
    assert invoke("twin", "nboo", "--out", tmp_path / "logs", "--users", "1500", "--days", "3", "--horizon-days", "7").returncode == 0
    spec, store = tmp_path / "logs" / "spec.yaml", tmp_path / "store"
    ran = invoke("ingest", "--spec", spec, "--store", store, "--create", tmp_path / "logs" / "decisions.parquet",
                 tmp_path / "logs" / "outcomes.parquet")
    assert ran.returncode == 0, ran.stderr
    decided = pd.to_datetime(pd.read_parquet(tmp_path / "logs" / "decisions.parquet")["decided_at"], utc=True)
    until = decided.min().normalize() + pd.Timedelta(days=2)
    common = ["--spec", spec, "--store", store, "--folds", "0", "--trees", "5", "--threads", "1"]
    ran = invoke("fit", *common, "--out", tmp_path / "window", "--until", until.isoformat())
    assert ran.returncode == 0, ran.stderr
    manifest = json.loads((tmp_path / "window" / "manifest.json").read_text())
    rows = manifest["metadata"]["rows"]
    assert rows == int((decided < until).sum())  # every mature decision before --until, and none after
    assert pd.Timestamp(manifest["metadata"]["trained_window"]["last_decided_at"]) < until
    empty = invoke("fit", *common, "--out", tmp_path / "none", "--since", until.isoformat(), "--until",
                   (until - pd.Timedelta(days=1)).isoformat())
    assert empty.returncode == 2 and "`until` must be after `since`" in empty.stderr


def test_decide_writes_integer_features_as_integers(product: Path, tmp_path: Path) -> None:
    contexts = pd.read_csv(product / "contexts.csv").head(50)
    contexts.loc[3, "page_views_30d"] = None  # broken: an integer feature is not nullable, so this row falls back
    contexts.to_csv(tmp_path / "contexts.csv", index=False)
    ran = invoke("decide", "--policy", product / "model", "--input", tmp_path / "contexts.csv", "--output", tmp_path / "out.csv")
    assert ran.returncode == 0, ran.stderr
    text = (tmp_path / "out.csv").read_text().splitlines()
    header = text[0].split(",")
    views = [row.split(",")[header.index("page_views_30d")] for row in text[1:]]
    assert views[3] == "" and all(v.isdigit() for i, v in enumerate(views) if i != 3), views[:6]
    parquet = invoke("decide", "--policy", product / "model", "--input", tmp_path / "contexts.csv", "--output", tmp_path / "out.parquet")
    assert parquet.returncode == 0, parquet.stderr
    assert str(pd.read_parquet(tmp_path / "out.parquet")["tenure_days"].dtype) == "Int64"


def test_explain_and_frontier_answer_on_the_command_line(product: Path, tmp_path: Path) -> None:
    planned = invoke("optimize", "--spec", product / "spec.yaml", "--store", product / "store", "--model", product / "model",
                     "--out", tmp_path / "policy", "--contexts", product / "contexts.csv", "--budget", "promotion_budget=0.3")
    assert planned.returncode == 0, planned.stderr
    unit = pd.read_csv(product / "contexts.csv")["unit_id"].astype(str).iloc[5]
    ran = invoke("explain", "--policy", tmp_path / "policy", "--contexts", product / "contexts.csv", "--by", "tier,tenure_days:3",
                 "--unit", unit, "--out", tmp_path / "cohorts.csv")
    assert ran.returncode == 0, ran.stderr
    assert "by tier x tenure_days" in ran.stdout and f"unit {unit}: " in ran.stdout and "price:promotion_budget" in ran.stdout
    cohorts = pd.read_csv(tmp_path / "cohorts.csv")
    assert len(cohorts) == 3 * 3 * 11 and np.allclose(cohorts.groupby(["tier", "tenure_days"])["share"].sum(), 1.0)
    bad = invoke("explain", "--policy", tmp_path / "policy", "--contexts", product / "contexts.csv", "--by", "tenure_days")
    assert bad.returncode == 2 and "NAME:BANDS" in bad.stderr
    curve = invoke("frontier", "--spec", product / "spec.yaml", "--model", product / "model", "--contexts", product / "contexts.csv",
                   "--constraint", "promotion_budget", "--limits", "0.2,0.5,1", "--out", tmp_path / "frontier.html")
    assert curve.returncode == 0, curve.stderr
    assert "shadow price" in curve.stdout and (tmp_path / "frontier.html").stat().st_size > 100_000  # plotly embedded
    wrong = invoke("frontier", "--spec", product / "spec.yaml", "--model", product / "model", "--contexts", product / "contexts.csv",
                   "--constraint", "promotion_budget", "--limits", "a lot")
    assert wrong.returncode == 2 and "`limits` must be numbers" in wrong.stderr
