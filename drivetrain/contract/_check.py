"""The feature check: a change of a feature's meaning without a new version fails.

Two revisions of a spec are compared feature by feature. A change of meaning is a change of ``type``,
range (``min``, ``max``), ``values``, ``nullable``, ``personal``, ``definition`` (its canonical SQL), or of the
values the definition gives on a fixed reference dataset. With the feature's ``version`` unchanged it is
a failure naming the feature, its owner and the policies that use it; with a new version it passes and
those policies need a retrain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from drivetrain.data import Store, rebuild_features
from drivetrain.errors import DataError
from drivetrain.spec import Feature, Spec, definition_sql

__all__ = ["FeatureChange", "FeatureCheck", "check_features", "policies_in_store"]


def policies_in_store(store: Store) -> Callable[[str], tuple[str, ...]]:
    """Which policies use a feature, as far as the store knows: every policy version that decided with
    this context contract (the decisions table) or was fitted on it (the baselines table). The policy
    registry replaces this function when it holds the versions with their features."""
    versions = store.query(
        "SELECT DISTINCT policy_version FROM decisions UNION SELECT DISTINCT policy_version FROM baselines ORDER BY 1")
    known = tuple(str(v) for v in versions["policy_version"].dropna())
    personal = set(store.spec.personal_features)
    return lambda feature: () if feature in personal else known


@dataclass(frozen=True)
class FeatureChange:
    """How one feature differs between the revisions: ``kinds`` of change of meaning, each with its detail."""

    feature: str
    owner: str
    before: str
    after: str
    kinds: tuple[str, ...]
    details: tuple[str, ...]
    policies: tuple[str, ...]

    @property
    def bumped(self) -> bool:
        return self.before != self.after

    @property
    def fails(self) -> bool:
        return bool(self.kinds) and not self.bumped

    def message(self) -> str:
        users = ", ".join(self.policies) if self.policies else "none known"
        what = "; ".join(self.details) or "no change of meaning"
        if self.fails:
            return (f"FAIL {self.feature} (owner {self.owner}, version {self.before} in both): {what}. A change of meaning needs a new"
                    f" version (context.features.{self.feature}.version). Policies that use it: {users}")
        return f"ok   {self.feature} (owner {self.owner}): version {self.before} -> {self.after}: {what}. Retrain: {users}"


@dataclass(frozen=True)
class FeatureCheck:
    """The result: every changed feature, the features added and removed, and the reference dataset's size."""

    current: str
    against: str
    changes: tuple[FeatureChange, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    reference_points: int

    @property
    def failures(self) -> tuple[FeatureChange, ...]:
        return tuple(c for c in self.changes if c.fails)

    @property
    def retrain(self) -> tuple[str, ...]:
        return tuple(sorted({p for c in self.changes if c.bumped for p in c.policies}))

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        lines = [f"features of {self.current} against {self.against}:"]
        lines += [c.message() for c in self.changes]
        if self.added:
            lines.append(f"added: {', '.join(self.added)}")
        if self.removed:
            lines.append(f"removed: {', '.join(self.removed)} (the policies that use them need a retrain)")
        if not self.changes and not self.added and not self.removed:
            lines.append("no feature changed")
        verdict = (f"{len(self.failures)} feature(s) changed meaning without a new version" if self.failures
                   else "passed" + (f"; retrain: {', '.join(self.retrain)}" if self.retrain else ""))
        lines.append(verdict)
        return "\n".join(lines)


def _canonical(text: str | None) -> str | None:
    return None if text is None else definition_sql(text)


def _fields(before: Feature, after: Feature) -> list[tuple[str, str]]:
    found = []
    if before.type != after.type:
        found.append(("type", f"type {before.type} -> {after.type}"))
    if (before.min, before.max) != (after.min, after.max):
        found.append(("range", f"range [{before.min}, {before.max}] -> [{after.min}, {after.max}]"))
    if set(before.values or ()) != set(after.values or ()):
        found.append(("values", f"values {before.values} -> {after.values}"))
    if before.nullable != after.nullable:
        found.append(("nullability", f"nullable {before.nullable} -> {after.nullable}"))
    if before.personal != after.personal:
        found.append(("personal", f"personal {before.personal} -> {after.personal}"))
    if _canonical(before.definition) != _canonical(after.definition):
        if before.definition is None or after.definition is None:
            found.append(("definition", "definition " + ("added" if before.definition is None else "removed")))
        else:
            found.append(("definition", f"definition {_canonical(before.definition)!r} -> {_canonical(after.definition)!r}"))
    return found


def _values(reference: Store, name: str, before: str, after: str) -> str | None:
    """How the two definitions' values differ on the reference dataset, or None when they agree."""
    try:
        rebuilt = rebuild_features(reference, {name: before}).to_pandas()
        old, reference_ids = rebuilt[name], rebuilt["request_id"]
    except DataError as exc:
        return f"the previous definition fails on the reference dataset ({exc})"
    try:
        new = rebuild_features(reference, {name: after}).to_pandas()[name]
    except DataError as exc:
        return f"the definition fails on the reference dataset ({exc})"
    same = (old.isna() & new.isna()) | (old.astype(str) == new.astype(str))
    if pd.api.types.is_numeric_dtype(old) and pd.api.types.is_numeric_dtype(new):
        a, b = old.to_numpy(dtype=np.float64), new.to_numpy(dtype=np.float64)
        same = same | pd.Series(np.isclose(a, b, rtol=1e-12, atol=0.0), index=old.index)
    differ = np.flatnonzero(~same.to_numpy())
    if differ.size == 0:
        return None
    i = int(differ[0])
    return (f"values on the reference dataset differ at {differ.size} of {len(old)} decisions"
            f" (e.g. {_plain(old.iloc[i])!r} -> {_plain(new.iloc[i])!r} for {reference_ids.iloc[i]})")


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


def check_features(current: Spec, previous: Spec, *, reference: Store | None = None,
                   policies: Callable[[str], Sequence[str]] | None = None) -> FeatureCheck:
    """Compare the context contract of ``current`` with that of ``previous``.

    ``reference``: the store the definitions run on (default none: definitions compare by their canonical
    SQL only); ``policies``: which policies use a feature (:func:`policies_in_store`, or the registry)."""
    now, then = current.model.context.features, previous.model.context.features
    changes = []
    points = reference.count("decisions") if reference is not None else 0
    for name in sorted(set(now) & set(then)):
        before, after = then[name], now[name]
        found = _fields(before, after)
        if reference is not None and before.definition is not None and after.definition is not None:
            differs = _values(reference, name, before.definition, after.definition)
            if differs is not None:
                found.append(("reference values", differs))
        if found or before.version != after.version:
            users = tuple(policies(name)) if policies is not None else ()
            changes.append(FeatureChange(name, after.owner, before.version, after.version, tuple(k for k, _ in found),
                                         tuple(d for _, d in found), users))
    return FeatureCheck(current.source, previous.source, tuple(changes), tuple(sorted(set(now) - set(then))),
                        tuple(sorted(set(then) - set(now))), points)
