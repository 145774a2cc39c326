"""Loading a spec: YAML, schema validation, cross-references, compiled formulas, the action space."""

from __future__ import annotations

import ast
import hashlib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ValidationError

from drivetrain.errors import FormulaError, SpecError, UsageError
from drivetrain.spec._actions import Action, ActionSpace
from drivetrain.spec._formula import Formula, compile_formula
from drivetrain.spec._model import Adaptation, Budget, Cap, Guardrail, SpecModel

__all__ = ["Spec", "load_spec", "parse_spec", "read_yaml", "with_guardrails_by"]


@dataclass(frozen=True)
class Spec:
    """A validated spec with its compiled parts; the value every stage receives.

    ``hash`` identifies the whole spec, ``feature_version`` the context contract alone (it is logged with
    every decision so that offline and online features can be matched), ``model_hash`` the parts a fitted
    model depends on (:data:`MODEL_PARTS`): a model fitted under one spec plans under any spec with the same
    ``model_hash``, whatever its objective weights, constraints, guardrails, alerts or serving settings.
    """

    model: SpecModel
    action_space: ActionSpace
    objective: Formula
    budgets: tuple[tuple[Budget, Formula], ...]
    guardrails: tuple[tuple[Guardrail, Formula], ...]
    caps: tuple[tuple[Cap, np.ndarray], ...]
    unit_eligibility: Formula | None
    action_eligibility: tuple[tuple[np.ndarray, Formula], ...]
    control: Action
    fallback: Action
    hash: str
    feature_version: str
    model_hash: str
    source: str = field(default="<memory>")

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def horizon(self) -> timedelta:
        return self.model.objective.horizon

    @property
    def settle(self) -> timedelta:
        return self.model.objective.settle

    @property
    def outcomes(self) -> tuple[str, ...]:
        return tuple(self.model.outcomes)

    @property
    def levers(self) -> tuple[str, ...]:
        return self.action_space.levers

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.model.context.features)

    @property
    def personal_features(self) -> tuple[str, ...]:
        return tuple(n for n, f in self.model.context.features.items() if f.personal)

    def eligible_units(self, contexts: Mapping[str, Any]) -> np.ndarray:
        """Which units are in the program; shape (n,) bool."""
        n = _length(contexts)
        if self.unit_eligibility is None:
            return np.ones(n, dtype=bool)
        return np.broadcast_to(np.asarray(self.unit_eligibility(contexts), dtype=bool), (n,)).copy()

    def eligible_actions(self, contexts: Mapping[str, Any]) -> np.ndarray:
        """Which actions each unit may get; shape (n, K) bool. Control is always eligible, and it is the
        only eligible action of a unit outside the program."""
        n = _length(contexts)
        mask = np.ones((n, len(self.action_space)), dtype=bool)
        for actions, when in self.action_eligibility:
            ok = np.broadcast_to(np.asarray(when(contexts), dtype=bool), (n,))
            mask[:, actions] &= ok[:, None]
        mask[~self.eligible_units(contexts)] = False
        mask[:, self.control.index] = True
        return mask


def _length(contexts: Mapping[str, Any]) -> int:
    for value in contexts.values():
        return len(value)
    raise SpecError("contexts must have at least one column, got none")


#: YAML's safe loader, on libyaml's parser where PyYAML was built with it (about ten times faster to parse).
SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader) if yaml.__with_libyaml__ else yaml.SafeLoader


def read_yaml(text: str) -> Any:
    """A YAML document parsed by :data:`SAFE_LOADER` (``yaml.safe_load`` on libyaml's parser)."""
    return yaml.load(text, Loader=SAFE_LOADER)  # noqa: S506 - a safe loader


class _UniqueKeyLoader(SAFE_LOADER):  # type: ignore[valid-type,misc]
    """YAML's safe loader, except that a key repeated in one mapping is an error: PyYAML would keep the
    last value silently, so a spec could say one thing where the reader sees another."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool):
                continue  # an unusual key: the safe loader's own checks judge it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must appear once per mapping, got {key!r} again (first at line {seen[key].start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _samples(model: SpecModel) -> dict[str, np.ndarray]:
    """Two values of every name a formula may read, of the type the data will have."""
    out: dict[str, np.ndarray] = {name: np.array([0.0, 1.0]) for name in model.outcomes}
    for name, lever in model.levers.items():
        numeric = lever.type == "numeric" and all(isinstance(v, int | float) for v in lever.values)  # else reported apart
        out[name] = np.array([float(v) for v in lever.values[:2]], dtype=np.float64) if numeric else \
            np.array([str(v) for v in lever.values[:2]], dtype=object)
    for name, feat in model.context.features.items():
        if feat.type == "categorical":
            out[name] = np.array([str(v) for v in (feat.values or ["a"])[:2]], dtype=object)
        elif feat.type == "string":
            out[name] = np.array(["a", "b"], dtype=object)
        elif feat.type == "boolean":
            out[name] = np.array([False, True])
        else:
            out[name] = np.array([0.0, 1.0])
    return out


def _type_mistake(formula: Formula, samples: Mapping[str, np.ndarray]) -> str | None:
    """Why ``formula`` cannot run on values of the spec's types (text in arithmetic, say), or None."""
    def runs(columns: Mapping[str, np.ndarray]) -> bool:
        try:
            formula(columns)
        except (TypeError, ValueError):
            return False
        return True

    if runs(samples):
        return None
    text_names = sorted(n for n in formula.variables if samples[n].dtype == object)
    culprits = [n for n in text_names if runs({**samples, n: np.array([0.0, 1.0])})]
    return (f"must use text values ({', '.join(culprits or text_names)}) only in comparisons such as == or in, got "
            f"{formula.text!r}, which computes with them")


def _unknown_categories(text: str, choices: Mapping[str, Sequence[str]]) -> list[str]:
    """Comparisons of a categorical name with a text that is not one of its values: never true (or always)."""
    found = []
    for node in ast.walk(ast.parse(text.strip(), mode="eval")):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        for a, b in zip(sides, sides[1:], strict=False):
            for name, other in ((a, b), (b, a)):
                if isinstance(name, ast.Name) and name.id in choices:
                    literals = other.elts if isinstance(other, ast.List | ast.Tuple | ast.Set) else [other]
                    for lit in literals:
                        if isinstance(lit, ast.Constant) and isinstance(lit.value, str) and lit.value not in choices[name.id]:
                            found.append(f"`{name.id}` takes the values {list(choices[name.id])}, got a comparison with {lit.value!r}")
    return found


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file; raises :class:`SpecError` listing every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec file must exist, got missing path {str(path)!r}") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise SpecError(f"spec file must be a UTF-8 YAML file, got {str(path)!r} ({exc})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader that also refuses repeated keys
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SpecError(f"spec {str(path)!r} must be valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_spec(raw, source=str(path))


def parse_spec(raw: Any, *, source: str = "<memory>") -> Spec:
    """Validate an already-parsed YAML document (a mapping) into a :class:`Spec`."""
    if not isinstance(raw, dict):
        raise SpecError(f"spec {source!r} must be a YAML mapping at the top level, got {type(raw).__name__}")
    try:
        model = SpecModel.model_validate(raw)
    except ValidationError as exc:
        problems: dict[str, str] = {}
        for err in exc.errors():
            problems.setdefault(_path(tuple(err["loc"])), _describe(err))
        raise SpecError(f"spec {source!r} is not valid", list(problems.values())) from None
    return _build(model, source)


def with_guardrails_by(spec: Spec, by: Mapping[str, str]) -> Spec:
    """``spec`` with each guardrail named in ``by`` kept in every value of the cohort feature it maps to
    (the guardrail's ``by`` field); ``"*"`` stands for every guardrail.

    >>> from drivetrain.twin import NBOOTwin
    >>> [g.by for g, _ in with_guardrails_by(NBOOTwin(seed=1).spec, {"refund_rate": "tier"}).guardrails]
    ['tier', None]
    """
    names = [g.name for g, _ in spec.guardrails]
    if unknown := sorted(set(by) - {*names, "*"}):
        raise UsageError(f"a guardrail kept per cohort must be one of the spec's guardrails {names} (or '*' for all), got {unknown}")
    raw = spec.model.model_dump(mode="json")
    for g in raw["guardrails"]:
        feature = by.get(g["name"], by.get("*"))
        if feature is not None:
            g["by"] = feature
    return parse_spec(raw, source=spec.source)


def _build(model: SpecModel, source: str) -> Spec:
    problems: list[str] = []
    outcomes, levers, features = set(model.outcomes), set(model.levers), set(model.context.features)

    def formula(text: str, where: str, names: set[str]) -> Formula | None:
        try:
            return compile_formula(text, variables=names, field=where)
        except FormulaError as exc:
            problems.append(str(exc))
            return None

    value_names = outcomes | levers | features
    clash = sorted((outcomes & levers) | (outcomes & features) | (levers & features))
    if clash:
        problems.append(f"outcomes, levers and context features must have distinct names, got {clash} in more than one")

    for name, out in model.outcomes.items():
        if out.given is not None:
            gate = model.outcomes.get(out.given)
            if gate is None or gate.type != "binary" or out.given == name:
                problems.append(f"outcomes.{name}.given: must name another binary outcome, got {out.given!r}")
            else:
                seen: set[str] = {name}
                step: str | None = out.given
                while step is not None and step in model.outcomes and step not in seen:
                    seen.add(step)
                    step = model.outcomes[step].given
                if step in seen:
                    problems.append(f"outcomes.{name}.given: must not form a cycle, got one through {step!r}")
        if out.min is not None and out.max is not None and out.min > out.max:
            problems.append(f"outcomes.{name}: `min` must be <= `max`, got {out.min} > {out.max}")
    for name, lever in model.levers.items():
        if lever.type == "numeric" and not all(isinstance(v, int | float) and not isinstance(v, bool) for v in lever.values):
            problems.append(f"levers.{name}.values: a numeric lever needs numbers, got {lever.values}")
        for outcome_name in lever.monotone:
            if lever.type != "numeric":
                problems.append(f"levers.{name}.monotone: only numeric levers can be monotone, got a {lever.type} lever")
            elif outcome_name not in model.outcomes:
                problems.append(f"levers.{name}.monotone: keys must be outcomes of {sorted(model.outcomes)}, got {outcome_name!r}")
        if len({str(v) for v in lever.values}) != len(lever.values):
            problems.append(f"levers.{name}.values: values must be distinct, got {lever.values}")
    for name, feat in model.context.features.items():
        if feat.type == "categorical" and not feat.values:
            problems.append(f"context.features.{name}.values: a categorical feature needs its list of values, got none")
        if feat.type != "categorical" and feat.values is not None:
            problems.append(f"context.features.{name}.values: only categorical features take values, got type {feat.type}")
        if feat.min is not None and feat.max is not None and feat.min > feat.max:
            problems.append(f"context.features.{name}: `min` must be <= `max`, got {feat.min} > {feat.max}")
        if feat.definition is not None and feat.personal:
            problems.append(f"context.features.{name}.definition: a personal feature is stored only as a hash and cannot be"
                            " rebuilt from a definition; got a definition on a personal feature")

    objective = formula(model.objective.formula, "objective.formula", value_names)
    if objective is not None and not objective.variables & outcomes:
        problems.append(f"objective.formula: must use at least one outcome of {sorted(outcomes)}, got {model.objective.formula!r}")
    rules = [formula(r, f"action_rules[{i}]", levers) for i, r in enumerate(model.action_rules)]
    budgets = [(b, formula(b.formula, f"constraints.budgets[{i}].formula", value_names)) for i, b in enumerate(model.constraints.budgets)]
    guardrails = [(g, formula(g.formula, f"guardrails[{i}].formula", value_names)) for i, g in enumerate(model.guardrails)]
    for i, g in enumerate(model.guardrails):
        if g.max is None and g.min is None:
            problems.append(f"guardrails[{i}] ({g.name}): needs a `max` or a `min` bound, got neither")
        by = None if g.by is None else model.context.features.get(g.by)
        if g.by is not None and (by is None or by.type not in ("categorical", "boolean") or by.personal):
            problems.append(f"guardrails[{i}].by ({g.name}): must name a categorical or boolean context feature that is not "
                            f"personal data, of {sorted(n for n, f in model.context.features.items() if f.type in ('categorical', 'boolean') and not f.personal)}, got {g.by!r}")
    unit_elig = formula(model.eligibility.unit, "eligibility.unit", features) if model.eligibility.unit else None
    action_elig_f = [formula(r.when, f"eligibility.actions[{i}].when", features) for i, r in enumerate(model.eligibility.actions)]

    samples = _samples(model)
    compiled = [("objective.formula", objective), *((f"action_rules[{i}]", r) for i, r in enumerate(rules)),
                *((f"constraints.budgets[{i}].formula", f) for i, (_, f) in enumerate(budgets)),
                *((f"guardrails[{i}].formula", f) for i, (_, f) in enumerate(guardrails)), ("eligibility.unit", unit_elig),
                *((f"eligibility.actions[{i}].when", f) for i, f in enumerate(action_elig_f))]
    choices = {**{n: [str(v) for v in f.values or ()] for n, f in model.context.features.items() if f.type == "categorical"},
               **{n: [str(v) for v in lever.values] for n, lever in model.levers.items() if lever.type == "categorical"}}
    for where, compiled_formula in compiled:
        if compiled_formula is not None:
            mistake = _type_mistake(compiled_formula, samples)
            if mistake is not None:
                problems.append(f"{where}: {mistake}")
            problems.extend(f"{where}: {m}" for m in _unknown_categories(compiled_formula.text, choices))

    for i, c in enumerate(model.cohorts):
        cohort = model.context.features.get(c)
        if cohort is None:
            problems.append(f"cohorts[{i}]: must name a context feature of {sorted(features)}, got {c!r}")
        elif cohort.type not in ("categorical", "boolean"):
            problems.append(f"cohorts[{i}]: must be a categorical or boolean feature, got {c!r} of type {cohort.type}")
        elif cohort.personal:
            problems.append(f"cohorts[{i}]: must not be personal data, got {c!r}")

    figures = {"north_star", "north_star_unadjusted", "eligibility_coverage", "treated_share", "srm_p_value",
               *(f"outcome:{o}" for o in model.outcomes), *(f"guardrail:{g.name}" for g in model.guardrails),
               *(f"budget:{b.name}" for b in model.constraints.budgets),
               *(f"slo:{n}" for n in ("latency_p50", "latency_p95", "latency_p99", "over_latency_budget", "fallback_rate",
                                      "error_rate", "cost_per_1000"))}
    alert_names = [a.name for a in model.monitoring.alerts]
    if len(set(alert_names)) != len(alert_names):
        problems.append(f"monitoring.alerts: names must be distinct, got {sorted({n for n in alert_names if alert_names.count(n) > 1})} more than once")
    for i, a in enumerate(model.monitoring.alerts):
        where = f"monitoring.alerts[{i}] ({a.name})"
        if a.kind == "metric_drop" and a.figure not in figures:
            problems.append(f"{where}.figure: must be one of {sorted(figures)}, got {a.figure!r}")
        if a.cohort is not None and a.cohort != "any" and a.cohort not in model.cohorts:
            problems.append(f"{where}.cohort: must be 'any' or one of the cohorts {model.cohorts}, got {a.cohort!r}")
        derived = {n for n, f in model.context.features.items() if f.definition is not None}
        if a.kind == "parity" and a.feature != "*" and a.feature not in derived:
            problems.append(f"{where}.feature: must be '*' or a context feature with a definition {sorted(derived)}, got {a.feature!r}")
        if a.kind == "drift" and a.feature != "*" and a.feature not in features and a.feature not in outcomes and not a.feature.startswith("pred"):
            problems.append(f"{where}.feature: must be '*', a context feature or an outcome of the spec, got {a.feature!r}")

    names = [*(b.name for b in model.constraints.budgets), *(c.name for c in model.constraints.caps), *(g.name for g in model.guardrails)]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"constraints and guardrails must have distinct names, got {dup} more than once")

    def check_selector(sel: Mapping[str, Sequence[Any]], where: str) -> None:
        for lever, vals in sel.items():
            if lever not in model.levers:
                problems.append(f"{where}: must name levers of {sorted(levers)}, got {lever!r}")
                continue
            known = [str(v) for v in model.levers[lever].values]
            for v in vals:
                if str(v) not in known and not any(_num_eq(v, k) for k in model.levers[lever].values):
                    problems.append(f"{where}.{lever}: values must be among {model.levers[lever].values}, got {v!r}")

    for i, r in enumerate(model.eligibility.actions):
        check_selector(r.actions, f"eligibility.actions[{i}].actions")
    for i, cap in enumerate(model.constraints.caps):
        check_selector(cap.actions, f"constraints.caps[{i}].actions")
    if problems:
        raise SpecError(f"spec {source!r} is not valid", problems)

    try:
        space = ActionSpace.build(
            {n: lv.values for n, lv in model.levers.items()},
            {n: lv.type for n, lv in model.levers.items()},
            [r for r in rules if r is not None],
        )
    except SpecError as exc:
        raise SpecError(f"spec {source!r} is not valid", [str(exc)]) from None

    def action(values: Mapping[str, Any] | None, where: str) -> Action | None:
        if values is None:
            return None
        unknown = sorted(set(values) - levers)
        missing = sorted(levers - set(values))
        if unknown or missing:
            problems.append(f"{where}: must give a value for each lever {list(model.levers)}, got unknown {unknown}, missing {missing}")
            return None
        found = space.find(values)
        if found is None:
            problems.append(f"{where}: must be a valid action (one of {list(space.ids)}), got {dict(values)}")
        return found

    control = action(model.control, "control")
    fallback = action(model.fallback, "fallback") if model.fallback is not None else control
    caps = []
    for i, cap in enumerate(model.constraints.caps):
        mask = space.select(cap.actions)
        if not mask.any():
            problems.append(f"constraints.caps[{i}].actions: must match at least one action, got none for {cap.actions}")
        kept = [a for a in (control, fallback) if a is not None and mask[a.index]]
        if cap.hard and kept:
            problems.append(f"constraints.caps[{i}].actions: a hard cap must not include the control or the fallback action "
                            f"(the holdout and a broken context get them whatever the cap's counter says), got {kept[0].id!r}")
        caps.append((cap, mask))
    action_elig = []
    for i, (r, f) in enumerate(zip(model.eligibility.actions, action_elig_f, strict=True)):
        mask = space.select(r.actions)
        if control is not None and mask[control.index]:
            problems.append(f"eligibility.actions[{i}].actions: must not restrict the control action {control.id!r}, got {r.actions}")
        assert f is not None
        action_elig.append((mask, f))
    adaptation, experimentation = model.adaptation, model.experimentation
    if adaptation.canary.share + experimentation.holdout_share >= 1:
        problems.append(f"adaptation.canary.share: with the holdout's {experimentation.holdout_share} must leave units for the champion, "
                        f"got {adaptation.canary.share}")
    if problems or control is None or fallback is None or objective is None:
        raise SpecError(f"spec {source!r} is not valid", problems)

    dumped = model.model_dump(mode="json")
    return Spec(
        model=model,
        action_space=space,
        objective=objective,
        budgets=tuple((b, f) for b, f in budgets if f is not None),
        guardrails=tuple((g, f) for g, f in guardrails if f is not None),
        caps=tuple(caps),
        unit_eligibility=unit_elig,
        action_eligibility=tuple(action_elig),
        control=control,
        fallback=fallback,
        hash=_digest(hashed_parts(dumped)),
        feature_version=_digest(dumped["context"]),
        model_hash=_digest(model_parts(dumped)),
        source=source,
    )


#: The parts of a spec that a fitted model depends on: what is modelled (unit, outcomes), on what (the
#: context contract), for which actions (levers, action rules, control) and over which window (horizon and
#: settle, which decide the training rows and their outcomes).
MODEL_PARTS = ("unit", "outcomes", "levers", "action_rules", "control", "context", "objective.horizon", "objective.settle")


def model_parts(dumped: dict[str, Any]) -> dict[str, Any]:
    """The values of :data:`MODEL_PARTS` in a spec dumped as JSON (missing parts are None)."""
    out: dict[str, Any] = {}
    for part in MODEL_PARTS:
        value: Any = dumped
        for key in part.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        out[part] = value
    return out


#: Settings added to a section of the spec after policies were saved under it (the first format's adaptation
#: section held ``min_new_decisions`` and ``min_lift`` alone): a spec hashes only those of them that differ
#: from their defaults, so that a spec which leaves them out (or spells out the defaults) keeps the hash it
#: had and the policies saved under it still load.
_ADDED_SETTINGS = {"adaptation": {k: v for k, v in Adaptation().model_dump(mode="json").items() if k not in ("min_new_decisions", "min_lift")}}
_MISSING = object()


def _not_default(value: Any, default: Any) -> Any:
    """The parts of ``value`` (a JSON dump) that differ from ``default``, recursively in mappings; None when
    nothing differs."""
    if isinstance(value, dict) and isinstance(default, dict):
        out = {k: v for k, v in ((k, _not_default(v, default.get(k, _MISSING))) for k, v in value.items()) if v is not None}
        return out or None
    return None if value == default else value


def hashed_parts(dumped: dict[str, Any]) -> dict[str, Any]:
    """What ``Spec.hash`` digests of a spec dumped as JSON: everything, except that a setting of
    :data:`_ADDED_SETTINGS` counts by its non-default parts alone (and not at all when it has none)."""
    out = dict(dumped)
    for section, added in _ADDED_SETTINGS.items():
        values = out.get(section)
        if not isinstance(values, dict):
            continue
        kept = {k: v for k, v in values.items() if k not in added}
        for name, default in added.items():
            changed = _not_default(values.get(name, default), default)
            if changed is not None:
                kept[name] = changed
        out[section] = kept
    return out


def _num_eq(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _describe(error: Any) -> str:
    loc = tuple(error["loc"])
    path = _path(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = f"; expected one of {allowed}" if allowed else ""
        return f"{path}: unknown key{hint}"
    if kind == "missing":
        return f"{path}: required field is missing"
    msg = str(error["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        return f"{path}: {msg}"
    msg = msg.replace("Input should be", "expected").replace("String should", "expected a string to")
    got = error.get("input")
    return f"{path}: {msg}, got {got!r}"


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "int", "float", "bool", "timedelta", "function-before[parse_duration(), timedelta]"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "<top>"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model found by walking ``loc`` down from SpecModel; [] where unknown."""
    tp: Any = SpecModel
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fld = tp.model_fields.get(str(part))
            if fld is None:
                return []
            tp = fld.annotation
        elif typing.get_origin(tp) in (dict, list):
            tp = typing.get_args(tp)[-1]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp
