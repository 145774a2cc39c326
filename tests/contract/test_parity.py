"""Online/offline parity: the served ``offers_30d`` against its definition rebuilt as of each decision."""

from __future__ import annotations

import copy
from datetime import timedelta

import pyarrow as pa
import pytest
import yaml

from drivetrain.data import MemoryStore, measure_parity, rebuild_features
from drivetrain.errors import SpecError
from drivetrain.evaluate import check_alerts
from drivetrain.spec import parse_spec
from drivetrain.twin import OFFERS_FEATURE, nboo_served_spec, nboo_served_spec_yaml
from tests.contract.conftest import Served
from tests.test_cli import run


def test_the_served_feature_equals_its_definition_without_skew(served: Served) -> None:
    report = measure_parity(served.store, start=served.start, end=served.end)
    row = report.row(OFFERS_FEATURE)
    assert report.decisions == row["compared"] > 1000
    assert row["differ"] == 0 and report.examples.empty
    rebuilt = rebuild_features(served.store, start=served.start, end=served.end).column(OFFERS_FEATURE).to_pylist()
    assert max(rebuilt) > 3  # the feature counts real offers: parity is not two columns of zeros


def test_the_seeded_skew_is_caught_with_examples(skewed: Served) -> None:
    report = measure_parity(skewed.store, start=skewed.start, end=skewed.end)
    row = report.row(OFFERS_FEATURE)
    assert row["share"] > 0.5 and row["owner"] == "offers-platform"
    assert len(report.examples) == 5
    assert all(e["served"] < e["rebuilt"] for e in report.examples.to_dict("records"))  # 7 days see fewer offers than 30
    assert "offers_30d (owner offers-platform, version 1)" in report.summary()


def _with_rule(share_above: float) -> object:
    raw = yaml.safe_load(nboo_served_spec_yaml(7))
    raw["monitoring"]["alerts"] = [{"name": "offers_parity", "kind": "parity", "feature": OFFERS_FEATURE, "share_above": share_above}]
    return parse_spec(raw)


def test_the_parity_rule_fires_on_the_skew_only(served: Served, skewed: Served) -> None:
    spec = _with_rule(0.01)
    fired = check_alerts(spec, parity=measure_parity(skewed.store, start=skewed.start, end=skewed.end))  # type: ignore[arg-type]
    assert [(a.rule, a.kind, a.subject) for a in fired] == [("offers_parity", "parity", OFFERS_FEATURE)]
    assert "owner offers-platform" in fired[0].message
    assert check_alerts(spec, parity=measure_parity(served.store, start=served.start, end=served.end)) == []  # type: ignore[arg-type]


def test_a_parity_rule_must_name_a_derived_feature() -> None:
    raw = yaml.safe_load(nboo_served_spec_yaml(7))
    raw["monitoring"]["alerts"] = [{"name": "p", "kind": "parity", "feature": "tier"}]
    with pytest.raises(SpecError, match=r"monitoring.alerts\[0\] \(p\).feature: must be '\*' or a context feature with a definition"):
        parse_spec(copy.deepcopy(raw))


def test_a_definition_never_sees_rows_received_after_the_decision() -> None:
    spec = nboo_served_spec(7)
    store = MemoryStore(spec)
    t0 = pd_ts("2026-01-10T00:00:00")
    rows = []
    for i, (decided, received, offer) in enumerate([
        (t0 - timedelta(days=2), t0 - timedelta(days=2), "discount"),         # known: counts
        (t0 - timedelta(days=1), t0 + timedelta(hours=1), "discount"),        # decided before, received after: not known then
        (t0 - timedelta(days=40), t0 - timedelta(days=40), "discount"),       # outside the 30 days
        (t0 - timedelta(hours=3), t0 - timedelta(hours=3), "none"),           # not an offer
        (t0, t0, "none"),                                                     # the decision itself
        (t0 + timedelta(days=1), t0 + timedelta(days=1), "bundle"),           # later
    ]):
        rows.append({"request_id": f"r{i}", "unit_id": "u1", "decided_at": decided, "received_at": received, "offer_type": offer})
    store.append("decisions", _decisions(spec, rows))
    table = rebuild_features(store).to_pandas().set_index("request_id")
    assert table.loc["r4", OFFERS_FEATURE] == 1
    assert table.loc["r5", OFFERS_FEATURE] == 2  # a day later: r0 and r1 (received by then)


def pd_ts(text: str) -> object:
    import pandas as pd

    return pd.Timestamp(text, tz="UTC").to_pydatetime()


def _decisions(spec: object, rows: list[dict[str, object]]) -> pa.Table:
    from drivetrain.data import decision_schema

    schema = decision_schema(spec)  # type: ignore[arg-type]
    full = [{name: row.get(name) for name in schema.names} for row in rows]
    return pa.Table.from_pylist(full, schema=schema)


def test_the_parity_command_exits_1_on_the_skew_and_stores_the_alert(skewed: Served, served: Served, tmp_path: object) -> None:
    raw = yaml.safe_load(skewed.spec_path.read_text())
    raw["monitoring"]["alerts"] = [{"name": "offers_parity", "kind": "parity", "feature": "*"}]
    spec_file = skewed.spec_path.with_name("with_rule.yaml")
    spec_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    as_of = skewed.end.isoformat()
    bad = run("contract", "parity", "--spec", str(spec_file), "--store", str(skewed.store.root), "--as-of", as_of,  # type: ignore[attr-defined]
              "--window-days", "10")
    assert bad.returncode == 1, bad.stderr
    assert "ALERT offers_parity (parity): offers_30d (owner offers-platform)" in bad.stdout
    assert skewed.store.count("alerts") == 1
    good = run("contract", "parity", "--spec", str(served.spec_path), "--store", str(served.store.root), "--as-of", as_of,  # type: ignore[attr-defined]
               "--window-days", "10")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "0 of 1500 differ" in good.stdout
