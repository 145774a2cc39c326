"""The data contract in the Open Data Contract Standard: valid for the standard's model and JSON schema,
kept by the store's own tables, and broken by rows that break the contract."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow as pa
import pytest
import yaml
from open_data_contract_standard.model import OpenDataContractStandard

from drivetrain.contract import check_data_contract, data_contract, validate_data_contract
from drivetrain.data import Store
from drivetrain.errors import DataError
from drivetrain.spec import load_spec
from drivetrain.twin import OFFERS_FEATURE
from tests.conftest import ROOT
from tests.contract.conftest import Served
from tests.test_cli import run

SCHEMA = json.loads(resources.files("open_data_contract_standard").joinpath("schema.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("example", ["nboo", "pricing"])
def test_the_document_is_valid_for_the_standard(example: str) -> None:
    document = data_contract(load_spec(ROOT / "examples" / example / "drivetrain.yaml"))
    validate_data_contract(document)
    jsonschema.validate(json.loads(json.dumps(document)), SCHEMA)
    model = OpenDataContractStandard.model_validate(document)
    assert [s.name for s in model.schema_ or []] == ["decisions", "outcomes", "context"]


def test_owners_types_ranges_rules_and_service_levels(served: Served) -> None:
    document = data_contract(served.store.spec)
    tables = {s["name"]: {p["name"]: p for p in s["properties"]} for s in document["schema"]}
    offers = tables["context"][OFFERS_FEATURE]
    assert {"property": "owner", "value": "offers-platform"} in offers["customProperties"]
    assert offers["logicalType"] == "integer" and offers["logicalTypeOptions"] == {"minimum": 0, "maximum": 10000}
    assert "point.as_of" in offers["transformLogic"]
    assert tables["decisions"]["request_id"]["unique"] and tables["decisions"]["request_id"]["required"]
    assert tables["outcomes"]["request_id"]["relationships"] == [{"type": "foreignKey", "to": "decisions.request_id"}]
    assert [e["value"] for e in tables["decisions"]["tier"]["enum"]] == ["bronze", "silver", "gold"]
    assert tables["context"]["postcode"]["classification"] == "restricted"
    sla = {(s["element"], s["unit"]): s["value"] for s in document["slaProperties"]}
    assert sla[("decisions.latency_ms", "ms")] == 50 and sla[("outcomes.received_at", "d")] == 8  # 7d horizon + 1d settle
    assert {m["username"] for m in document["team"]["members"]} == {"web-analytics", "orders", "crm", "offers-platform"}


def test_the_store_keeps_every_rule(served: Served) -> None:
    assert check_data_contract(served.store) == []


def _broken_copy(served: Served) -> Store:
    from drivetrain.data import MemoryStore

    store = MemoryStore(served.store.spec)
    decisions = served.store.arrow("SELECT * FROM decisions ORDER BY request_id LIMIT 50")
    outcomes = served.store.arrow("SELECT * FROM outcomes ORDER BY event_id LIMIT 50")
    store.append("decisions", decisions)
    bad = decisions.slice(0, 1).to_pylist()[0]
    bad.update(propensity=1.5, tier="platinum", postcode="12345", offers_30d=-1)
    store.append("decisions", pa.Table.from_pylist([bad], schema=decisions.schema))  # also a second request_id r..0
    orphan = outcomes.slice(0, 1).to_pylist()[0]
    orphan.update(event_id="orphan", request_id="no-such-decision", component="purchase", value=7.0)
    store.append("outcomes", pa.Table.from_pylist([orphan], schema=outcomes.schema))
    return store


def test_rows_that_break_the_contract_are_named(served: Served) -> None:
    broken = {(v.table, v.rule): v.rows for v in check_data_contract(_broken_copy(served))}
    assert broken[("decisions", "request_id unique")] == 1
    assert broken[("decisions", "propensity in range")] == 1
    assert broken[("decisions", "tier among its values")] == 1
    assert broken[("decisions", "offers_30d in range")] == 1
    assert any(table == "decisions" and rule.startswith("postcode matches") for table, rule in broken)  # personal data in clear
    assert broken[("outcomes", "request_id references decisions.request_id")] == 1
    assert broken[("outcomes", "outcomes_name_decisions")] == 1
    assert broken[("outcomes", "outcome_values_in_range")] == 1


def test_an_invalid_document_is_refused_naming_the_field() -> None:
    document: dict[str, Any] = data_contract(load_spec(ROOT / "examples" / "pricing" / "drivetrain.yaml"))
    document["schema"][0]["properties"][0]["unique"] = "sometimes"
    with pytest.raises(DataError, match=r"`schema.0.properties.0.unique` .*got 'sometimes'"):
        validate_data_contract(document)
    with pytest.raises(DataError, match=r"must have \['apiVersion'\]"):
        validate_data_contract({k: v for k, v in document.items() if k != "apiVersion"})


def test_the_export_command_writes_and_checks(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "contract.odcs.yaml"
    done = run("contract", "export", "--spec", str(served.spec_path), "--out", str(out), "--store", str(served.store.root))  # type: ignore[attr-defined]
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the store's tables keep every rule" in done.stdout
    OpenDataContractStandard.model_validate(yaml.safe_load(out.read_text()))
