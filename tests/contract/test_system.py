"""The one-page ML system contract, the model card and the datasheet, for the NBOO twin and the pricing
example, from the command line and in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drivetrain.contract import PolicyFacts, policy_facts, system_documents
from drivetrain.errors import ArtifactError
from drivetrain.evaluate import evaluate
from drivetrain.report import write_report
from drivetrain.twin import OFFERS_FEATURE
from tests.conftest import ROOT
from tests.contract.conftest import Served
from tests.test_cli import run

SECTIONS = ["## Purpose and metric", "## Features and owners", "## Label: definition and source", "## Retrain policy",
            "## Service levels", "## What triggers a rollback", "## Monitoring"]


def test_the_nboo_twin_contract_from_spec_policy_and_evaluation(served: Served) -> None:
    evaluation = evaluate(served.store, served.end)
    facts = PolicyFacts("nboo-v7", "2026-01-20T00:00:00+00:00", served.store.spec.hash, served.store.spec.feature_version,
                        {"trained_window": "2026-01-05 to 2026-01-19"}, {"lightgbm": "4.6.0"})
    docs = system_documents(served.store.spec, policy=facts, evaluation=evaluation, store=served.store)
    page = docs.contract
    assert all(s in page for s in SECTIONS)
    assert f"| `{OFFERS_FEATURE}` | integer in [0, 10000] | offers-platform | 1 | derived: `SELECT COUNT(*)" in page
    assert "| `postcode` | string | crm | 1 | personal: salted hash, never a model input |" in page
    assert "| `order_value` | continuous >= 0 | sum | purchase | order value before discount |" in page
    assert "Objective `net_gross_profit`: maximize `gross_profit - promo_cost` per decision over 7d (settle 1d)" in page
    assert "Decision latency budget 50 ms" in page and "policy nboo-v7" in page
    ns = evaluation.overall.north_star
    assert f"North star (incremental objective per unit against the holdout): {ns.difference:.4g}" in page
    assert "No rollback trigger is stated" in page  # the twin's spec states no alert rule: said, not invented
    card = docs.model_card
    assert "Version `nboo-v7`" in card and "trained_window: 2026-01-05 to 2026-01-19" in card
    assert "| region | north star | low | high | units |" in card
    sheet = docs.datasheet
    assert f"decisions {served.store.count('decisions')}" in sheet and "offers-platform" in sheet


def test_the_pricing_example_without_store_or_policy_says_what_is_not_stated(tmp_path: Path) -> None:
    done = run("contract", "system", "--spec", str(ROOT / "examples" / "pricing" / "drivetrain.yaml"), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "system_contract.md").read_text()
    assert page.startswith("# ML system contract: plan_pricing")
    assert all(s in page for s in SECTIONS)
    assert "| `visits_30d` | integer >= 0 | growth | 1 | as sent by the caller |" in page
    assert "Guardrail `conversion`: mean of `purchase` >= 0.2" in page
    assert "No evaluation was given: the figures below are not stated." in page
    assert "No policy was given" in (tmp_path / "model_card.md").read_text()
    assert "No store was given: row counts are not stated." in (tmp_path / "datasheet.md").read_text()


def test_rules_in_the_spec_become_rollback_triggers_and_monitoring() -> None:
    import yaml

    from drivetrain.spec import parse_spec

    raw = yaml.safe_load((ROOT / "examples" / "pricing" / "drivetrain.yaml").read_text())
    raw["monitoring"] = {"alerts": [{"name": "conv", "kind": "guardrail"}, {"name": "psi", "kind": "drift", "feature": "segment"}]}
    page = system_documents(parse_spec(raw)).contract
    assert "- A fired `conv` alert (guardrail)" in page and "`psi` (drift)" not in page.split("## Monitoring")[0]
    assert "- `psi` (drift): drift of `segment` flagged with PSI above 0.2" in page


def test_the_policy_manifest_is_read_and_a_bad_one_named(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"policy_version": "v1", "spec_hash": "abc", "created_at": "t",
                                                        "metadata": {"rows": 10}}))
    assert policy_facts(tmp_path) == PolicyFacts("v1", "t", "abc", "", {"rows": 10}, {})
    with pytest.raises(ArtifactError, match="must be a policy directory holding manifest.json"):
        policy_facts(tmp_path / "nowhere")
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ArtifactError, match="must be the manifest a policy writes"):
        policy_facts(tmp_path)


def test_the_report_carries_the_contract(served: Served, tmp_path: Path) -> None:
    page = write_report(served.store, as_of=served.end, out=tmp_path / "report.html").read_text()
    assert '<section id="system-contract"><h2>ML system contract</h2>' in page
    assert "# ML system contract: nboo" in page and "offers-platform" in page
