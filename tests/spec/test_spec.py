from __future__ import annotations

from typing import Any

import pytest

from drivetrain.errors import SpecError
from drivetrain.spec import load_spec, parse_spec
from tests.conftest import NBOO_SPEC


def test_nboo_spec_loads_with_its_action_space() -> None:
    spec = load_spec(NBOO_SPEC)
    assert spec.action_space.ids == (
        "none-0-none",
        "discount-5-immediate",
        "discount-5-delayed",
        "discount-10-immediate",
        "discount-10-delayed",
        "discount-15-immediate",
        "discount-15-delayed",
        "bundle-0-immediate",
        "bundle-0-delayed",
        "free_ship-0-immediate",
        "free_ship-0-delayed",
    )
    assert spec.control.id == "none-0-none"
    assert spec.fallback == spec.control
    assert spec.horizon.days == 30
    assert spec.personal_features == ("postcode",)
    assert len(spec.hash) == 16 and len(spec.feature_version) == 16


def test_hashes_are_stable_and_feature_version_tracks_only_the_context(raw_spec: dict[str, Any]) -> None:
    a = parse_spec(raw_spec)
    raw_spec["constraints"]["budgets"][0]["max_per_unit"] = 2.0
    b = parse_spec(raw_spec)
    assert a.hash != b.hash and a.feature_version == b.feature_version
    raw_spec["context"]["features"]["tier"]["values"].append("platinum")
    c = parse_spec(raw_spec)
    assert c.feature_version != b.feature_version
    assert parse_spec(raw_spec).hash == c.hash


#: Spec.hash of the example specs as computed before the adaptation section grew beyond ``min_new_decisions``
#: and ``min_lift`` (commit 8bb6dbe): the hash policies saved then record in their manifest.
HASHES_BEFORE_ADAPTATION = {"nboo": "5b08a5d431273453", "pricing": "d86752a69ca89201"}


@pytest.mark.parametrize("example", sorted(HASHES_BEFORE_ADAPTATION))
def test_a_spec_without_the_new_adaptation_settings_keeps_the_hash_it_had(example: str) -> None:
    """The NBOO example states the first format's ``adaptation.min_new_decisions``, the pricing one no
    adaptation section at all."""
    assert load_spec(NBOO_SPEC.parents[1] / example / "drivetrain.yaml").hash == HASHES_BEFORE_ADAPTATION[example]


def test_only_adaptation_settings_away_from_their_defaults_change_the_hash(raw_spec: dict[str, Any]) -> None:
    before = parse_spec(raw_spec).hash
    spelled = parse_spec(raw_spec).model.model_dump(mode="json")  # every default written out
    assert spelled["adaptation"]["gates"] and parse_spec(spelled).hash == before
    raw_spec["adaptation"] = {"gates": {"alpha": 0.05}}
    gated = parse_spec(raw_spec).hash
    raw_spec["adaptation"] = {"watch_window": "3d"}
    watched = parse_spec(raw_spec).hash
    raw_spec["adaptation"] = {"min_lift": 0.01}  # a setting of the first format
    lifted = parse_spec(raw_spec).hash
    assert len({before, gated, watched, lifted}) == 4


def _set(raw: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    node: Any = raw
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


_DELETE = object()

# (path to change, new value, fragments the message must contain)
BROKEN = [
    ("objective.horizon", "30 days", ["objective.horizon", "expected a duration such as '30d'", "got '30 days'"]),
    ("objective.horizon", "0d", ["objective.horizon", "expected a duration longer than zero", "got '0d'"]),
    ("objective.direction", "maximise", ["objective.direction", "'maximize' or 'minimize'", "'maximise'"]),
    ("objective.formula", "gross_profit - promo_costs", ["objective.formula", "unknown name 'promo_costs'"]),
    ("objective.formula", "gross_profit - promo_cost * (tier == 'gold') - region",
     ["objective.formula", "must use text values (region) only in comparisons", "got \"gross_profit - promo_cost * (tier == 'gold') - region\""]),
    ("guardrails.0.formula", "refund + offer_type", ["guardrails[0].formula", "must use text values (offer_type) only in comparisons"]),
    ("eligibility.unit", "tier == 'Gold' or tenure_days > 30",
     ["eligibility.unit", "`tier` takes the values ['bronze', 'silver', 'gold'], got a comparison with 'Gold'"]),
    ("action_rules.0", "(offer_type in ['discount', 'coupon']) == (depth > 0)",
     ["action_rules[0]", "`offer_type` takes the values ['none', 'discount', 'bundle', 'free_ship'], got a comparison with 'coupon'"]),
    ("objective.formula", "__import__('os').system('true')", ["objective.formula", "only the named functions may be called"]),
    ("objective.formula", "__import__('os')", ["objective.formula", "function '__import__' is not allowed"]),
    ("objective.formula", "gross_profit.real", ["objective.formula", "Attribute is not allowed"]),
    ("objective.formula", "page_views_30d * 2", ["objective.formula", "must use at least one outcome"]),
    ("objective.formula", "gross_profit -", ["objective.formula", "must be a valid expression"]),
    ("objective.colour", "blue", ["objective.colour", "unknown key", "expected one of ['name', 'formula'"]),
    ("objective.horizon", _DELETE, ["objective.horizon", "required field is missing"]),
    ("outcomes.purchase.type", "boolean", ["outcomes.purchase.type", "'binary', 'count' or 'continuous'", "'boolean'"]),
    ("outcomes.order_value.min", 5.0, []),
    ("outcomes.order_value.given", "revenue", ["outcomes.order_value.given", "must name another binary outcome", "'revenue'"]),
    ("outcomes.order_value.given", "gross_profit", ["outcomes.order_value.given", "must name another binary outcome"]),
    ("outcomes.purchase.given", "refund", ["must not form a cycle"]),  # valid: only checks that a lower bound alone is fine
    ("levers.depth.values", [0, "five"], ["levers.depth.values", "numeric lever needs numbers"]),
    ("levers.timing.values", [], ["levers.timing.values", "at least 1 item"]),
    ("levers.depth.monotone", {"purchases": "increasing"}, ["levers.depth.monotone", "keys must be outcomes", "'purchases'"]),
    ("levers.depth.monotone", {"purchase": "up"}, ["levers.depth.monotone.purchase", "'increasing' or 'decreasing'", "'up'"]),
    ("levers.timing.monotone", {"purchase": "increasing"}, ["levers.timing.monotone", "only numeric levers"]),
    ("action_rules.0", "(offer_type == 'discount') and depth < 0", ["must leave at least one valid action"]),
    ("action_rules.1", "offer_type.upper() == 'NONE'", ["action_rules[1]", "no attributes or methods"]),
    ("control", {"offer_type": "none", "depth": 5, "timing": "none"}, ["control", "must be a valid action", "'depth': 5"]),
    ("control", {"offer_type": "none"}, ["control", "missing ['depth', 'timing']"]),
    ("fallback", {"offer_type": "gift", "depth": 0, "timing": "none"}, ["fallback", "must be a valid action"]),
    ("eligibility.actions.0.when", "avg_order_value < threshold", ["eligibility.actions[0].when", "unknown name 'threshold'"]),
    ("eligibility.actions.0.actions", {"offer_type": ["freeship"]}, ["eligibility.actions[0].actions.offer_type", "must be among", "'freeship'"]),
    ("eligibility.actions.0.actions", {"offer_type": ["none"]}, ["must not restrict the control action"]),
    ("constraints.budgets.0.max_per_unit", -1, ["constraints.budgets[0].max_per_unit", "greater than or equal to 0", "-1"]),
    ("constraints.budgets.0.formula", "promo_cost + open('x')", ["constraints.budgets[0].formula", "function 'open' is not allowed"]),
    ("constraints.caps.0.max_share", 1.5, ["constraints.caps[0].max_share", "less than or equal to 1", "1.5"]),
    ("guardrails.0.max", _DELETE, ["guardrails[0] (refund_rate)", "needs a `max` or a `min` bound"]),
    ("guardrails.1.name", "refund_rate", ["distinct names", "refund_rate"]),
    ("context.features.tier.type", "text", ["context.features.tier.type", "'integer', 'float', 'categorical', 'boolean' or 'string'", "'text'"]),
    ("context.features.region.values", None, ["context.features.region.values", "categorical feature needs its list of values"]),
    ("context.features.tenure_days.owner", _DELETE, ["context.features.tenure_days.owner", "required field is missing"]),
    ("context.features.page_views_30d.min", 10, ["context.features.page_views_30d", "`min` must be <= `max`"]) ,
    ("cohorts", ["region", "country"], ["cohorts[1]", "must name a context feature", "'country'"]),
    ("cohorts", ["tenure_days"], ["cohorts[0]", "categorical or boolean", "integer"]),
    ("cohorts", ["postcode"], ["cohorts[0]", "must be a categorical or boolean feature"]),
    ("experimentation.holdout_share", 1.2, ["experimentation.holdout_share", "less than 1", "1.2"]),
    ("experimentation.exploration_rate", "five percent", ["experimentation.exploration_rate", "valid number", "'five percent'"]),
    ("experimentation.salt", "ab", ["experimentation.salt", "at least 4 characters"]),
    ("serving.latency_budget_ms", 0, ["serving.latency_budget_ms", "greater than 0"]),
    ("monitoring.alarm", True, ["monitoring.alarm", "unknown key", "'psi_threshold'"]),
    ("serving.cost_per_serving_hour", -0.5, ["serving.cost_per_serving_hour", "greater than or equal to 0", "-0.5"]),
    ("serving.cost_per_serving_hour", "cheap", ["serving.cost_per_serving_hour", "valid number", "'cheap'"]),
    ("monitoring.covariates", "purchases_365d", ["monitoring.covariates", "valid list", "'purchases_365d'"]),
    ("monitoring.covariates", ["purchases 365d"], ["monitoring.covariates[0]", "pattern", "'purchases 365d'"]),
    ("monitoring.covariates", ["tenure_days", "tenure_days"], ["monitoring.covariates", "must be distinct", "'tenure_days'"]),
    ("monitoring.srm_alpha", 0, ["monitoring.srm_alpha", "greater than 0"]),
    ("monitoring.srm_alpha", 1, ["monitoring.srm_alpha", "less than 1"]),
    ("version", 2, ["version", "expected 1", "got 2"]),
    ("name", "my product", ["name", "pattern", "'my product'"]),
    ("budget", 100, ["budget", "unknown key", "'constraints'"]),
]


@pytest.mark.parametrize("path,value,fragments", BROKEN, ids=[(f"{p} deleted" if v is _DELETE else f"{p}={v!r}")[:60] for p, v, _ in BROKEN])
def test_broken_specs_name_the_field_the_expectation_and_what_arrived(
    raw_spec: dict[str, Any], path: str, value: Any, fragments: list[str]
) -> None:
    if path == "context.features.page_views_30d.min":
        raw_spec["context"]["features"]["page_views_30d"]["max"] = 5
    _set(raw_spec, path, value)
    if not fragments:
        parse_spec(raw_spec)
        return
    with pytest.raises(SpecError) as info:
        parse_spec(raw_spec)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_every_problem_is_reported_at_once(raw_spec: dict[str, Any]) -> None:
    raw_spec["objective"]["formula"] = "nope"
    raw_spec["cohorts"] = ["country"]
    with pytest.raises(SpecError) as info:
        parse_spec(raw_spec)
    assert len(info.value.problems) == 2


def test_yaml_errors_and_missing_files_are_spec_errors(tmp_path: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: [unclosed\n")
    with pytest.raises(SpecError, match="must be valid YAML at line"):
        load_spec(bad)
    with pytest.raises(SpecError, match="must exist"):
        load_spec(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must be a YAML mapping at the top level, got list"):
        load_spec(listing)


def test_a_key_repeated_in_a_mapping_is_an_error(tmp_path: Any) -> None:
    """PyYAML keeps the last of two equal keys: the spec would say what its reader did not see."""
    text = NBOO_SPEC.read_text().replace("  horizon: 30d\n", "  horizon: 7d\n  horizon: 30d\n", 1)
    assert text.count("horizon: 7d") == 1
    twice = tmp_path / "twice.yaml"
    twice.write_text(text)
    line = text.splitlines().index("  horizon: 7d") + 1
    with pytest.raises(SpecError, match=f"a key must appear once per mapping, got 'horizon' again \\(first at line {line}\\)"):
        load_spec(twice)


def test_yaml_cannot_construct_python_objects(tmp_path: Any) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(SpecError, match="must be valid YAML"):
        load_spec(evil)
    assert not (tmp_path / "pwned").exists()


def test_eligibility_masks(raw_spec: dict[str, Any]) -> None:
    import numpy as np

    raw_spec["eligibility"]["unit"] = "tenure_days >= 7"
    spec = parse_spec(raw_spec)
    ctx = {"tenure_days": np.array([1, 30, 30]), "avg_order_value": np.array([20.0, 200.0, np.nan])}
    mask = spec.eligible_actions(ctx)
    free_ship = spec.action_space.select({"offer_type": ["free_ship"]})
    assert mask[0].tolist() == [j == spec.control.index for j in range(len(spec.action_space))]
    assert mask[1, free_ship].sum() == 0 and mask[1, ~free_ship].all()
    assert mask[2, free_ship].sum() == 0  # unknown basket size: the restricted offer is not given
    assert spec.eligible_units(ctx).tolist() == [False, True, True]


def test_serving_cost_and_monitoring_covariates_are_optional_with_defaults(raw_spec: dict[str, Any]) -> None:
    spec = parse_spec(raw_spec)
    assert spec.model.serving.cost_per_serving_hour is None
    assert spec.model.monitoring.covariates == [] and spec.model.monitoring.srm_alpha == 0.001
    raw_spec["serving"]["cost_per_serving_hour"] = 0.9
    raw_spec["monitoring"]["covariates"] = ["purchases_365d", "tenure_days"]
    spec = parse_spec(raw_spec)
    assert spec.model.serving.cost_per_serving_hour == 0.9
    assert spec.model.monitoring.covariates == ["purchases_365d", "tenure_days"]
