"""The feature check: each kind of change of meaning fails without a new version, passes with one, and
names the feature, its owner and the policies that use it."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivetrain.contract import FeatureCheck, check_features, load_revision, policies_in_store, reference_store
from drivetrain.data import MemoryStore, Store
from drivetrain.errors import SpecError, UsageError
from drivetrain.spec import Spec, parse_spec
from drivetrain.twin import OFFERS_FEATURE, nboo_served_spec_yaml, offers_definition
from tests.conftest import NBOO_SPEC, ROOT
from tests.contract.conftest import Served
from tests.test_cli import run


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return dict(yaml.safe_load(nboo_served_spec_yaml(7)))


@pytest.fixture(scope="module")
def before(raw: dict[str, Any]) -> Spec:
    return parse_spec(copy.deepcopy(raw), source="before")


@pytest.fixture(scope="module")
def reference(before: Spec) -> Store:
    return reference_store(before)


def _after(raw: dict[str, Any], feature: str, **changes: Any) -> Spec:
    changed = copy.deepcopy(raw)
    changed["context"]["features"][feature].update(changes)
    return parse_spec(changed, source="after")


def _check(raw: dict[str, Any], before: Spec, reference: Store, feature: str, **changes: Any) -> FeatureCheck:
    return check_features(_after(raw, feature, **changes), before, reference=reference, policies=lambda f: ("nboo-v3", "nboo-v4"))


CASES = [
    ("type", "tenure_days", {"type": "float"}),
    ("range", "dwell_time_s", {"max": 3600}),
    ("values", "tier", {"values": ["bronze", "silver", "gold", "platinum"]}),
    ("nullability", "tenure_days", {"nullable": True}),
    ("personal", "postcode", {"personal": False}),
    ("definition", OFFERS_FEATURE, {"definition": offers_definition(30) + " AND d.propensity > 0"}),
    ("reference values", OFFERS_FEATURE, {"definition": offers_definition(7)}),
    ("definition", "page_views_30d", {"definition": "SELECT count(*) FROM decisions d WHERE d.unit_id = point.unit_id"}),
]


@pytest.mark.parametrize(("kind", "feature", "changes"), CASES, ids=[f"{k}-{f}" for k, f, _ in CASES])
def test_a_change_of_meaning_without_a_new_version_fails(raw: dict[str, Any], before: Spec, reference: Store, kind: str,
                                                          feature: str, changes: dict[str, Any]) -> None:
    result = _check(raw, before, reference, feature, **changes)
    assert not result.ok
    [failure] = result.failures
    assert failure.feature == feature and kind in failure.kinds
    owner = before.model.context.features[feature].owner
    assert f"FAIL {feature} (owner {owner}, version 1 in both)" in result.summary()
    assert "Policies that use it: nboo-v3, nboo-v4" in result.summary()


@pytest.mark.parametrize(("kind", "feature", "changes"), CASES, ids=[f"{k}-{f}" for k, f, _ in CASES])
def test_the_same_change_with_a_new_version_passes_and_lists_the_retrain(raw: dict[str, Any], before: Spec, reference: Store,
                                                                         kind: str, feature: str, changes: dict[str, Any]) -> None:
    result = _check(raw, before, reference, feature, version="2", **changes)
    assert result.ok and result.retrain == ("nboo-v3", "nboo-v4")
    assert "version 1 -> 2" in result.summary() and "passed; retrain: nboo-v3, nboo-v4" in result.summary()


def test_the_values_on_the_reference_dataset_tell_a_real_change_from_a_rewrite(raw: dict[str, Any], before: Spec,
                                                                              reference: Store) -> None:
    window = _check(raw, before, reference, OFFERS_FEATURE, definition=offers_definition(7)).failures[0]
    assert window.kinds == ("definition", "reference values")
    assert "values on the reference dataset differ at" in window.message()
    # a filter every reference decision passes: the text changed, the values did not (still a change, bump it)
    filtered = _check(raw, before, reference, OFFERS_FEATURE, definition=offers_definition(30) + " AND d.propensity > 0").failures[0]
    assert filtered.kinds == ("definition",)


def test_formatting_and_comments_are_not_a_change(raw: dict[str, Any], before: Spec, reference: Store) -> None:
    text = offers_definition(30).replace("SELECT count(*)", "select COUNT(*) -- offers\n").replace(" AND ", "\n  and ")
    result = _check(raw, before, reference, OFFERS_FEATURE, definition=text, description="reworded", owner="offers-team")
    assert result.ok and result.changes == () and "no feature changed" in result.summary()


def test_added_and_removed_features_are_listed(raw: dict[str, Any], before: Spec) -> None:
    changed = copy.deepcopy(raw)
    changed["context"]["features"]["visits_7d"] = {"type": "integer", "owner": "web-analytics"}
    del changed["context"]["features"]["device"]
    changed["cohorts"] = ["region", "tier"]
    result = check_features(parse_spec(changed), before)
    assert result.ok and result.added == ("visits_7d",) and result.removed == ("device",)


def test_the_policies_come_from_the_store(served: Served) -> None:
    users = policies_in_store(served.store)
    assert users(OFFERS_FEATURE) == ("uniform-logger",)
    assert users("postcode") == ()  # a personal field is never a model input
    assert policies_in_store(MemoryStore(served.store.spec))(OFFERS_FEATURE) == ()


INVALID = [
    ("DELETE FROM decisions", "must be one SQL SELECT returning one value, got a DELETE statement"),
    ("SELECT 1; SELECT 2", "must be one SQL SELECT, got 2 statements"),
    ("SELECT count(*), max(x) FROM decisions", "must select exactly one value, got 2 columns"),
    ("SELECT count(*) FROM read_csv('/etc/passwd')", "must read only the store's source tables ['decisions', 'outcomes']"),
    ("SELECT count(*) FROM quarantine", "must read only the store's source tables"),
    ("SELECT point.received_at FROM decisions", "may read only ['point.unit_id', 'point.as_of'] of the decision"),
    ("SELECT count(*) FROM decisions AS point", "must not use the alias `point`"),
    ("SELECT count(* FROM decisions", "must be one SQL SELECT, got text that does not parse"),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_a_bad_definition_is_named_with_its_field(raw: dict[str, Any], text: str, message: str) -> None:
    changed = copy.deepcopy(raw)
    changed["context"]["features"][OFFERS_FEATURE]["definition"] = text
    with pytest.raises(SpecError) as caught:
        parse_spec(changed)
    assert f"context.features.{OFFERS_FEATURE}.definition: {message}" in str(caught.value)


def test_a_personal_feature_cannot_have_a_definition(raw: dict[str, Any]) -> None:
    changed = copy.deepcopy(raw)
    changed["context"]["features"]["postcode"]["definition"] = "SELECT max(d.postcode) FROM decisions d"
    with pytest.raises(SpecError, match=r"context.features.postcode.definition: a personal feature is stored only as a hash"):
        parse_spec(changed)


def test_specs_without_the_new_fields_keep_their_hashes(nboo_raw: dict[str, Any]) -> None:
    """The fields added for contracts are left out of the dump at their defaults, so a stored policy's spec
    hash still matches the spec it was built with."""
    raw = copy.deepcopy(nboo_raw)
    raw["monitoring"]["alerts"] = [{"name": "drop", "kind": "metric_drop"}]
    dumped = parse_spec(raw).model.model_dump(mode="json")
    assert "definition" not in dumped["context"]["features"]["tier"]
    assert "tolerance" not in dumped["monitoring"]["alerts"][0] and "share_above" not in dumped["monitoring"]["alerts"][0]
    raw["monitoring"]["alerts"][0]["tolerance"] = 0.5
    assert parse_spec(raw).model.model_dump(mode="json")["monitoring"]["alerts"][0]["tolerance"] == 0.5


def test_a_revision_from_git_follows_the_symbolic_link() -> None:
    at_head = load_revision("HEAD:examples/nboo/drivetrain.yaml", repository=ROOT)
    assert at_head.source == "HEAD:examples/nboo/drivetrain.yaml" and at_head.name == "nboo"
    with pytest.raises(UsageError, match="must name a file of revision 'HEAD', got 'nope.yaml'"):
        load_revision("HEAD:nope.yaml", repository=ROOT)
    with pytest.raises(UsageError, match="must be a spec file or REV:path"):
        load_revision("not-a-file", repository=ROOT)


def test_ci_checks_the_flagship_spec_against_head() -> None:
    """The project's own CI runs the check it asks of its users: the NBOO spec against itself at HEAD."""
    assert shutil.which("git") is not None
    done = run("contract", "check", "--spec", str(NBOO_SPEC), "--against", "HEAD:examples/nboo/drivetrain.yaml", cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no feature changed" in done.stdout and done.stdout.rstrip().endswith("passed")


def test_the_command_fails_naming_feature_owner_and_policies(tmp_path: Path, served: Served) -> None:
    changed = yaml.safe_load(served.spec_path.read_text())
    changed["context"]["features"][OFFERS_FEATURE]["definition"] = offers_definition(7)
    spec = tmp_path / "drivetrain.yaml"
    spec.write_text(yaml.safe_dump(changed, sort_keys=False), encoding="utf-8")
    done = run("contract", "check", "--spec", str(spec), "--against", str(served.spec_path), "--store", str(served.store.root))  # type: ignore[attr-defined]
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"FAIL {OFFERS_FEATURE} (owner offers-platform, version 1 in both)" in done.stdout
    assert "Policies that use it: uniform-logger" in done.stdout
    changed["context"]["features"][OFFERS_FEATURE]["version"] = "2"
    spec.write_text(yaml.safe_dump(changed, sort_keys=False), encoding="utf-8")
    bumped = run("contract", "check", "--spec", str(spec), "--against", str(served.spec_path), "--store", str(served.store.root))  # type: ignore[attr-defined]
    assert bumped.returncode == 0 and "passed; retrain: uniform-logger" in bumped.stdout
    missing = run("contract", "check", "--spec", str(spec), "--against", "HEAD:no/such.yaml", cwd=ROOT)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert subprocess.run(["git", "--version"], capture_output=True, check=False).returncode == 0


def test_a_definition_reading_a_column_its_table_lacks_is_named(raw: dict[str, Any], before: Spec, reference: Store) -> None:
    result = _check(raw, before, reference, OFFERS_FEATURE,
                    definition="SELECT count(*) FROM decisions d WHERE d.unit_id = point.unit_id AND d.no_such > 0")
    assert f"context.features.{OFFERS_FEATURE}.definition: must read columns of `decisions` (request_id," in result.summary()
    assert "got d.no_such" in result.summary()
