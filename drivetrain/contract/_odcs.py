"""The data contract of a store in the Open Data Contract Standard (ODCS v3.2): the decisions, outcomes
and context tables with their owners, types, ranges, allowed values, quality rules (unique, not null,
referential) and the spec's service levels; validated with the standard's own model, and checked on a
store's tables.

Every rule the document states is one the store can be checked against (:func:`check_data_contract`):
a null, a duplicate key, a value out of range or outside its allowed values, an outcome naming a decision
that does not exist, a personal field in clear; each is counted by SQL built from the document's own
properties and must count zero.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
from pydantic import ValidationError

from drivetrain.data import ASSIGNMENTS, PersonalKey, Store, decision_schema, diagnostic_fields, pseudonymize
from drivetrain.errors import DataError
from drivetrain.spec import SOURCE_TABLES, Spec, format_duration

__all__ = ["API_VERSION", "ContractViolation", "check_data_contract", "data_contract", "validate_data_contract"]

API_VERSION = "v3.2.0"
#: Assignments of the serving loop and of the adaptation loop (shadow decisions, canary units).
_ASSIGNMENTS = tuple(dict.fromkeys([*ASSIGNMENTS, "shadow", "canary"]))


def _personal_pattern() -> str:
    """The form of a stored personal value, taken from the hashing the store applies at ingest."""
    sample = str(pseudonymize(pd.Series(["example"]), "string", PersonalKey(b"an example key, never a real one")).iloc[0])
    prefix, _, digest = sample.rpartition(":")
    return f"^{re.escape(prefix)}:[0-9a-f]{{{len(digest)}}}$"


def _logical(dtype: pa.DataType) -> str:
    if pa.types.is_timestamp(dtype):
        return "timestamp"
    if pa.types.is_integer(dtype):
        return "integer"
    if pa.types.is_floating(dtype):
        return "number"
    if pa.types.is_boolean(dtype):
        return "boolean"
    return "string"


def _prop(name: str, dtype: pa.DataType, *, required: bool = False, description: str = "", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "logicalType": _logical(dtype), "physicalType": str(dtype)}
    if description:
        out["description"] = description
    if required:
        out["required"] = True
        out["quality"] = [{"type": "library", "metric": "nullValues", "mustBe": 0, "dimension": "completeness",
                           "description": f"{name} is never null"}]
    out.update(extra)
    return out


def _key(prop: dict[str, Any]) -> dict[str, Any]:
    prop.update(primaryKey=True, primaryKeyPosition=1, unique=True)
    prop["quality"] = [*prop.get("quality", []), {"type": "library", "metric": "duplicateValues", "mustBe": 0,
                                                  "dimension": "uniqueness", "description": f"{prop['name']} is unique"}]
    return prop


def _range(lo: float | None, hi: float | None, *, above: float | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if lo is not None:
        options["minimum"] = lo
    if above is not None:
        options["exclusiveMinimum"] = above
    if hi is not None:
        options["maximum"] = hi
    return {"logicalTypeOptions": options} if options else {}


def _enum(values: Any) -> dict[str, Any]:
    return {"enum": [{"value": v} for v in values]}


def _features(spec: Spec, schema: pa.Schema) -> list[dict[str, Any]]:
    props = []
    for name, f in spec.model.context.features.items():
        extra: dict[str, Any] = {"customProperties": [{"property": "owner", "value": f.owner},
                                                      {"property": "version", "value": f.version}]}
        if f.type in ("integer", "float"):
            extra.update(_range(f.min, f.max))
        if f.values:
            extra.update(_enum(f.values))
        if f.personal:
            extra.update(classification="restricted", logicalTypeOptions={"pattern": _personal_pattern()})
        if f.definition is not None:
            extra.update(transformLogic=f.definition, transformSourceObjects=sorted(SOURCE_TABLES),
                         transformDescription="computed point in time as of the decision's decided_at")
        description = f.description + (" (personal data: stored only as a salted hash)" if f.personal else "")
        props.append(_prop(name, schema.field(name).type, required=not f.nullable, description=description.strip(), **extra))
    return props


def data_contract(spec: Spec) -> dict[str, Any]:
    """The ODCS document (a mapping ready for YAML) of the store's tables under ``spec``."""
    schema = decision_schema(spec)
    space = spec.action_space
    decisions = [
        _key(_prop("request_id", pa.string(), required=True, description="the decision's id")),
        _prop("unit_id", pa.string(), required=True, description=f"the {spec.model.unit} decided for"),
        _prop("decided_at", schema.field("decided_at").type, required=True, description="event time of the decision (UTC)"),
        _prop("received_at", schema.field("received_at").type, required=True, description="when the store received it (UTC)"),
        _prop("policy_version", pa.string(), required=True, description="the policy that decided"),
        _prop("action_id", pa.string(), required=True, description="the action taken", **_enum(space.ids)),
    ]
    for name, lever in spec.model.levers.items():
        values = [float(v) for v in lever.values] if lever.type == "numeric" else [str(v) for v in lever.values]
        decisions.append(_prop(name, schema.field(name).type, required=True, description=lever.description or f"lever {name}",
                               **_enum(values)))
    decisions += [
        _prop("propensity", pa.float64(), required=True, description="probability that the serving system takes the logged action",
              **_range(None, 1.0, above=0.0)),
        _prop("assignment", pa.string(), required=True, description="policy, explore, holdout, fallback, shadow or canary",
              **_enum(_ASSIGNMENTS)),
        *_features(spec, schema),
        _prop("feature_version", pa.string(), required=True, description="hash of the feature definitions used"),
        *(_prop(f.name, f.type, description="optional diagnostic") for f in diagnostic_fields(spec)),
    ]
    horizon = spec.horizon + spec.settle
    referential = ("SELECT COUNT(*) FROM outcomes o WHERE o.request_id IS NOT NULL"
                   " AND NOT EXISTS (SELECT 1 FROM decisions d WHERE d.request_id = o.request_id)")
    bounds = []
    for name, o in spec.model.outcomes.items():
        lo, hi = (0.0, 1.0) if o.type == "binary" else (o.min, o.max)
        tests = [t for t in (f"value < {lo!r}" if lo is not None else "", f"value > {hi!r}" if hi is not None else "") if t]
        if tests:
            bounds.append(f"(component = '{name}' AND ({' OR '.join(tests)}))")
    outcome_quality = [{"type": "sql", "name": "outcomes_name_decisions", "dimension": "consistency", "query": referential,
                        "mustBe": 0, "description": "an outcome's request_id names a stored decision"}]
    if bounds:
        outcome_quality.append({"type": "sql", "name": "outcome_values_in_range", "dimension": "conformity", "mustBe": 0,
                                "query": f"SELECT COUNT(*) FROM outcomes WHERE {' OR '.join(bounds)}",
                                "description": "each component's value lies in its range (binary: 0 or 1)"})
    outcomes = [
        _key(_prop("event_id", pa.string(), required=True, description="the outcome event's id (deduplication key)")),
        _prop("request_id", pa.string(), description="the decision the outcome belongs to",
              relationships=[{"type": "foreignKey", "to": "decisions.request_id"}]),
        _prop("unit_id", pa.string(), description=f"the {spec.model.unit}"),
        _prop("occurred_at", schema.field("decided_at").type, required=True, description="event time of the outcome (UTC)"),
        _prop("received_at", schema.field("decided_at").type, required=True, description="when the store received it (UTC)"),
        _prop("component", pa.string(), required=True, description="the outcome component", **_enum(list(spec.outcomes))),
        _prop("value", pa.float64(), required=True, description="the component's value"),
    ]
    context = [_key(_prop("request_id", pa.string(), required=True, description="the decision's id")), *_features(spec, schema)]
    owners: dict[str, list[str]] = {}
    for name, f in spec.model.context.features.items():
        owners.setdefault(f.owner, []).append(name)
    return {
        "apiVersion": API_VERSION,
        "kind": "DataContract",
        "id": f"drivetrain-{spec.name}",
        "name": spec.name,
        "version": f"{spec.hash}",
        "status": "active",
        "dataProduct": spec.name,
        "description": {"purpose": spec.model.description or f"decisions of {spec.name} and their outcomes",
                        "usage": f"training and evaluating the {spec.name} policy; objective {spec.model.objective.name}"},
        "team": {"name": f"{spec.name} feature owners",
                 "members": [{"username": owner, "role": "feature owner", "description": f"owns {', '.join(names)}"}
                             for owner, names in sorted(owners.items())]},
        "schema": [
            {"name": "decisions", "physicalName": "decisions", "physicalType": "table", "properties": decisions,
             "description": "one row per decision, with its context and propensity"},
            {"name": "outcomes", "physicalName": "outcomes", "physicalType": "table", "properties": outcomes,
             "quality": outcome_quality, "description": "outcome events attributed to decisions"},
            {"name": "context", "physicalName": "decisions", "physicalType": "view", "properties": context,
             "description": "the context contract: the features each decision was made with, as logged"},
        ],
        "slaProperties": [
            {"property": "latency", "value": spec.model.serving.latency_budget_ms, "unit": "ms", "element": "decisions.latency_ms",
             "description": "decision latency budget: over it the fallback action is served"},
            {"property": "latency", "value": horizon.total_seconds() / 86400, "unit": "d", "element": "outcomes.received_at",
             "description": f"a decision is mature (its outcomes complete) {format_duration(spec.horizon)} after it plus a"
                            f" settle of {format_duration(spec.settle)}"},
        ],
    }


def validate_data_contract(document: Mapping[str, Any]) -> None:
    """Validate ``document`` with the standard's own model (``open-data-contract-standard``); DataError
    naming the field when it is not a valid ODCS document."""
    from open_data_contract_standard.model import OpenDataContractStandard

    missing = [k for k in ("apiVersion", "kind", "id", "version") if k not in document]
    if missing:
        raise DataError(f"an ODCS document must have {missing}, got keys {sorted(document)}")
    try:
        OpenDataContractStandard.model_validate(dict(document))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DataError(f"the ODCS document must match the standard's model: `{where}` {first['msg']},"
                        f" got {first.get('input')!r}") from None


@dataclass(frozen=True)
class ContractViolation:
    """A rule of the data contract that the store's rows break, with how many rows break it."""

    table: str
    rule: str
    rows: int

    def message(self) -> str:
        return f"{self.table}: {self.rule}: {self.rows} rows break it"


def _quote(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(float(value)) if isinstance(value, float) else repr(value)


def _rules(document: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(table, rule, SQL counting the rows that break it) of every rule in the document."""
    for obj in document["schema"]:
        table = obj["physicalName"]
        for p in obj.get("properties", []):
            col = f'"{p["name"]}"'
            for q in p.get("quality", []):
                if q.get("metric") == "nullValues":
                    yield obj["name"], f"{p['name']} not null", f"SELECT COUNT(*) FROM {table} WHERE {col} IS NULL"
                elif q.get("metric") == "duplicateValues":
                    yield obj["name"], f"{p['name']} unique", f"SELECT COUNT({col}) - COUNT(DISTINCT {col}) FROM {table}"
            options = p.get("logicalTypeOptions", {})
            tests = [f"{col} {op} {_quote(options[key])}" for key, op in
                     (("minimum", "<"), ("maximum", ">"), ("exclusiveMinimum", "<="), ("exclusiveMaximum", ">=")) if key in options]
            if tests:
                yield obj["name"], f"{p['name']} in range", f"SELECT COUNT(*) FROM {table} WHERE {' OR '.join(tests)}"
            if "pattern" in options:
                yield (obj["name"], f"{p['name']} matches {options['pattern']}",
                       f"SELECT COUNT(*) FROM {table} WHERE {col} IS NOT NULL AND NOT regexp_full_match({col}, {_quote(options['pattern'])})")
            if "enum" in p:
                listing = ", ".join(_quote(e["value"]) for e in p["enum"])
                yield obj["name"], f"{p['name']} among its values", \
                    f"SELECT COUNT(*) FROM {table} WHERE {col} IS NOT NULL AND {col} NOT IN ({listing})"
            for rel in p.get("relationships", []):
                other, key = rel["to"].split(".")
                yield (obj["name"], f"{p['name']} references {rel['to']}",
                       f"SELECT COUNT(*) FROM {table} t WHERE t.{col} IS NOT NULL AND NOT EXISTS"
                       f" (SELECT 1 FROM {other} r WHERE r.\"{key}\" = t.{col})")
        for q in obj.get("quality", []):
            if q.get("type") == "sql":
                yield obj["name"], q.get("name", "sql rule"), q["query"]


def check_data_contract(store: Store, document: Mapping[str, Any] | None = None) -> list[ContractViolation]:
    """Every rule of ``document`` (default: the one of the store's spec) that the store's rows break,
    counted in one query."""
    document = data_contract(store.spec) if document is None else document
    rules = list(_rules(document))
    if not rules:
        return []
    counts = store.arrow("SELECT " + ", ".join(f"({sql}) AS n{i}" for i, (_, _, sql) in enumerate(rules))).to_pylist()[0]
    return [ContractViolation(table, rule, int(counts[f"n{i}"] or 0)) for i, (table, rule, _) in enumerate(rules)
            if counts[f"n{i}"]]
