"""One step of the adaptation loop as of T, and the manual moves (promote, rollback).

A step, judged on the store and the registry as of T:

1. the watch: within ``adaptation.watch_window`` of a promotion, a guardrail alert stored since the
   promotion rolls it back to ``last-good``;
   With ``adaptation.guard_on_alert``, a cohort value the champion's own latest mature decisions harm (a
   north star below the holdout's, or a guardrail beyond its bound; Holm-adjusted over the cohort values)
   gets control alone: a new version of the champion with the guard becomes the champion (event ``guard``),
   and a retrained candidate keeps the guard unless it beats control there (:func:`carried_guards`);
2. a candidate in flight (the ``challenger``) moves on: from shadow to canary when its shadow decisions
   pass, from canary to champion when the canary is non-inferior; a failure rejects it with the reason;
3. otherwise the triggers are judged; when one fires, a candidate is fitted on the window's mature
   decisions, planned on the recent population, registered with its lineage and taken through the
   off-line gates (the first version, with no champion to compare with, is promoted after the data,
   constraints and serving gates).

Every firing, gate and move is an event of the registry's history. A step records itself last; running
it again for the same T answers from that record and changes nothing, and a step interrupted by a crash
resumes (a candidate registered for T is gated again rather than fitted twice; one with a verdict
already, rejected or promoted, keeps it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from importlib import metadata
from typing import Any

import pandas as pd
import pyarrow as pa
from scipy import special

from drivetrain.adapt._gates import (
    GateResult,
    _sign,
    constraints_gate,
    data_gate,
    off_policy_gate,
    paired_values,
    regression_gate,
    serving_gate,
)
from drivetrain.adapt._live import canary_check, shadow_check
from drivetrain.adapt._registry import Event, Lineage, Registry
from drivetrain.adapt._retrain import (
    Change,
    TriggerReport,
    Window,
    evaluation_units,
    judge_triggers,
    training_window,
)
from drivetrain.assembly import plan_policy, write_policy_baselines
from drivetrain.clock import as_utc
from drivetrain.data import Store
from drivetrain.errors import DrivetrainError, UsageError
from drivetrain.evaluate import Scope, check_alerts, evaluate
from drivetrain.model import OutcomeModel
from drivetrain.pacing import SpendPacer
from drivetrain.policy import Policy
from drivetrain.spec import Spec, parse_spec
from drivetrain.stats import holm_adjusted

__all__ = ["FOLDS", "Candidate", "StepResult", "adapt", "default_trainer", "fit_candidate", "frozen_set", "known_changes", "offline_gates", "pace",
           "prices_for", "promote", "recent_population", "rollback"]

#: Fits an outcome model on a training table: (table, spec) -> fitted model.
Trainer = Callable[[pd.DataFrame, Spec], OutcomeModel]
#: Plans a policy from a fitted model on a population: (spec, model, population, version) -> policy.
Planner = Callable[[Spec, OutcomeModel, pd.DataFrame, str], Policy]


#: The folds of the default trainer: a candidate's model is the mean of this many fold models.
FOLDS = 5


def default_trainer(table: pd.DataFrame, spec: Spec) -> OutcomeModel:
    """A candidate's model: the mean of :data:`FOLDS` fold models of 100 rounds, each fitted on the other
    folds' rows. On the loop bench this averaging raised the champion's share of the oracle's gain in
    weeks 7-8 by 0.04 and 0.03 over one model on every row (docs/decisions.md), for 2.6 to 2.9 times the
    fitting time and five times the trees to serve."""
    return OutcomeModel(n_folds=FOLDS, refit=False, n_estimators=100, num_threads=1, seed=0).fit(table, spec)


@dataclass(frozen=True)
class StepResult:
    """What one step did as of ``as_of``: its ``actions`` in words, the trigger report (None when a
    candidate was in flight), the candidate it fitted or moved, its gates, and the champion after it."""

    as_of: datetime
    actions: tuple[str, ...]
    trigger: Mapping[str, Any] | None
    candidate: str | None
    gates: tuple[GateResult, ...]
    champion: str | None
    replayed: bool = False
    #: the pacing event's details (``adaptation.pacing_period``): the budget, each live version's price for the next day, the target
    price: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"as_of": self.as_of.isoformat(), "actions": list(self.actions), "trigger": self.trigger, "candidate": self.candidate,
                "gates": [g.to_json() for g in self.gates], "champion": self.champion}


@dataclass(frozen=True)
class Candidate:
    """A fitted candidate before its gates: the policy, its model, the window's tables and its lineage."""

    policy: Policy
    lineage: Lineage
    train: pd.DataFrame
    evaluation: pd.DataFrame
    population: pd.DataFrame
    extra: Mapping[str, Any] = field(default_factory=dict)


def recent_population(store: Store, as_of: datetime, *, days: int = 7, size: int = 10_000) -> pd.DataFrame:
    """Contexts of the decisions received in the last ``days`` before ``as_of`` (any arm; at most ``size``,
    a fixed sample): the population a candidate is planned and judged on."""
    spec = store.spec
    t_us = int(as_of.timestamp() * 1_000_000)
    s_us = int((as_of - timedelta(days=days)).timestamp() * 1_000_000)
    cols = ", ".join(["unit_id", *spec.features])
    frame = store.query(f"SELECT {cols} FROM decisions WHERE epoch_us(received_at) > {s_us} AND epoch_us(received_at) <= {t_us} "
                        "ORDER BY request_id")
    if len(frame) > size:
        frame = frame.sample(size, random_state=0).reset_index(drop=True)
    return frame


def known_changes(registry: Registry) -> tuple[Change, ...]:
    """Every cohort value a guard found harmed, since the first decision day of the week whose decisions
    showed it (the ``guarded`` value and ``harm_since`` of each ``guard`` event): that value's earlier
    decisions answer for effects that no longer hold. Candidates neither learn from them nor are judged by
    them; every other value's decisions stay (nothing says their effects changed)."""
    found = []
    for event in registry.history():
        details = event.details
        if event.kind == "guard" and details.get("harm_since") and details.get("guarded"):
            cohort, value = details["guarded"]
            found.append(Change(str(cohort), str(value), datetime.fromisoformat(details["harm_since"])))
    return tuple(found)


def frozen_set(store: Store, registry: Registry, as_of: datetime | None = None) -> pd.DataFrame:
    """The frozen evaluation set: randomized decisions (assignment ``explore``) of the evaluation units made
    before the first version was registered, with their outcomes; the same rows for every candidate.

    After a guard (:func:`known_changes`) the harmed value's rows from before its change leave the set,
    and the evaluation units' decisions made since the first change and mature by ``as_of`` join it, of
    every arm and with their logged propensities: a set that keeps judging in the world the candidate will
    serve, the same rows for the candidate and the champion. (Those later decisions were drawn by versions
    that explore by their own scores, and a guarded value's by control alone, so that only the logged
    propensity is their probability: the uniform one of the first log's exploration would not be.)"""
    versions = registry.versions()
    if not versions:
        return pd.DataFrame()
    spec = store.spec
    first = versions[0].registered_at
    epoch = datetime(1970, 1, 1, tzinfo=first.tzinfo)
    changes = known_changes(registry)
    rows = training_window(store, first, since=epoch, changes=changes).evaluation
    rows = rows[(rows["assignment"] == "explore") & evaluation_units(spec, rows["unit_id"].to_numpy())]
    frozen = _conditional_on_exploration(spec, rows.reset_index(drop=True))
    if changes and as_of is not None:
        since = min(c.since for c in changes)
        later = training_window(store, as_of, since=since, changes=changes).evaluation
        later = later[evaluation_units(spec, later["unit_id"].to_numpy()) & ~later["request_id"].isin(frozen["request_id"])]
        frozen = pd.concat([frozen, later], ignore_index=True)
    return frozen.reset_index(drop=True)


def _conditional_on_exploration(spec: Spec, rows: pd.DataFrame) -> pd.DataFrame:
    """Explored rows with the propensity given the exploration draw: 1 / K_i, uniform over the unit's
    eligible actions (the draw is independent of the context, so these rows are a randomized experiment)."""
    if rows.empty:
        return rows
    eligible = spec.eligible_actions({n: rows[n].to_numpy() for n in spec.features if n in rows})
    return rows.assign(propensity=1.0 / eligible.sum(axis=1))


def _code_version() -> str:
    try:
        return metadata.version("drivetrain")
    except metadata.PackageNotFoundError:
        return "unknown"


def carried_guards(spec: Spec, policy: Policy, guards: Mapping[str, Sequence[str]], rows: pd.DataFrame,
                   changes: Sequence[Change]) -> tuple[dict[str, tuple[str, ...]], dict[str, float]]:
    """The champion's ``guards`` that the candidate ``policy`` keeps, and the figures of each release test.

    A guarded value stays guarded unless, on ``rows`` (the evaluation units' mature decisions, which no
    candidate learnt from, with their logged propensities) of that value decided since its change, the
    candidate without the guard beats the candidate with it: the doubly robust lift's lower bound above
    zero, at the gates' level (the guard's own harm test, the other way round). A retrained candidate thus
    does not serve a harmed segment again on its model's word alone."""
    by_value = {(c.cohort, c.value): c for c in changes}
    kept: dict[str, tuple[str, ...]] = {}
    figures: dict[str, float] = {}
    sign = _sign(spec)
    for cohort, values in guards.items():
        keep = []
        for value in values:
            change = by_value.get((cohort, value))
            if change is None or cohort not in rows:  # no change on record to test since: the guard holds
                keep.append(value)
                continue
            # the value's rows less its stale ones: those decided since the change
            sub = rows[(rows[cohort].astype(str) == value).to_numpy() & ~change.stale(rows)].reset_index(drop=True)
            low = float("-inf")
            if sub["unit_id"].nunique() >= 2:
                paired = paired_values(policy.model, sub, replace(policy, guards={}), replace(policy, guards={cohort: (value,)}),
                                       alpha=spec.model.adaptation.gates.alpha, spec=spec)["objective"]
                low = paired.low if sign > 0 else -paired.high
                figures[f"release:{cohort}={value}:lift"] = sign * paired.difference
                figures[f"release:{cohort}={value}:low"] = low
            figures[f"release:{cohort}={value}:rows"] = float(len(sub))
            if not low > 0:
                keep.append(value)
        if keep:
            kept[cohort] = tuple(keep)
    return kept, figures


def fit_candidate(store: Store, as_of: datetime, *, version: str, trainer: Trainer, parent: str | None, trigger: str,
                  population_size: int = 10_000, planner: Planner | None = None, changes: Sequence[Change] = (),
                  guards: Mapping[str, Sequence[str]] | None = None) -> Candidate:
    """Fit and plan a candidate on the window's mature decisions as of ``as_of``, less those ``changes``
    make stale. The candidate keeps the champion's ``guards`` that :func:`carried_guards` does not release."""
    spec = store.spec
    window = training_window(store, as_of, changes=changes)
    population = _population(store, window, as_of, population_size)
    start = time.perf_counter()
    train = window.train
    model = trainer(train, spec) if len(train) >= 20 else None
    fit_seconds = time.perf_counter() - start
    if model is None:
        raise UsageError(f"the training window as of {as_of.isoformat()} holds {len(train)} mature decisions: too few to fit")
    if planner is not None:
        policy = planner(spec, model, population, version)
    else:
        plan = plan_policy(spec, model, population, version=version)
        policy = plan.policy
        write_policy_baselines(store, plan, population, created_at=as_of)
    released: dict[str, float] = {}
    if guards:
        kept, released = carried_guards(spec, policy, guards, window.evaluation, changes)
        policy = replace(policy, guards=kept)
    decided = pd.to_datetime(train["decided_at"], utc=True)
    lineage = Lineage(spec_hash=spec.hash, model_spec_hash=spec.model_hash,
                      data_start=decided.min().isoformat() if len(train) else None,
                      data_end=decided.max().isoformat() if len(train) else None, rows=len(train),
                      rows_by_version=dict(window.rows_by_version), code_version=_code_version(),
                      figures={"fit_seconds": round(fit_seconds, 3), "evaluation_rows": float(len(window.evaluation)),
                               "stale_rows": float(window.stale),
                               "population": float(len(population)), "immature": float(window.immature), **released},
                      parent=parent, trigger=trigger)
    return Candidate(policy, lineage, train, window.evaluation, population)


def offline_gates(store: Store, candidate: Candidate, champion: Policy | None, frozen: pd.DataFrame, *, as_of: datetime,
                  since: datetime | None = None, parent_end: datetime | None = None, reference: OutcomeModel | None = None,
                  timer: Callable[[], float] = time.perf_counter) -> list[GateResult]:
    """The off-line gates in order, stopping at the first failure (without a champion, the comparisons
    are skipped). The off-policy comparison takes the evaluation units' decisions made from ``since`` on
    (the first version's registration: after the frozen set); the data gate looks for broken features in
    the decisions made after ``parent_end`` (the end of the champion's data). ``reference`` is the loop's
    own trainer's model of the candidate's window, the judge of the comparisons and the second opinion of
    the constraints (the candidate's own model when None: the loop fitted it with that trainer)."""
    spec = store.spec
    results = [data_gate(store, candidate.train, frozen if len(frozen) else candidate.evaluation,
                         start=candidate.lineage.data_start, as_of=as_of, new_since=parent_end)]
    if not results[-1].passed:
        return results
    model = candidate.policy.model
    reference = reference or model
    judges = {"candidate": model, **({"reference": reference} if reference is not model else {})}
    if champion is not None:
        results.append(regression_gate(spec, frozen, candidate.policy, champion, reference))
        if not results[-1].passed:
            return results
        recent = candidate.evaluation
        if since is not None and len(recent):
            recent = recent[pd.to_datetime(recent["decided_at"], utc=True) >= pd.Timestamp(since)].reset_index(drop=True)
        results.append(off_policy_gate(spec, recent, candidate.policy, champion, reference))
        if not results[-1].passed:
            return results
    results.append(constraints_gate(spec, candidate.population, candidate.policy, judges, champion))
    if not results[-1].passed:
        return results
    results.append(serving_gate(candidate.policy, candidate.population, timer=timer))
    return results


#: The trigger of a guarded version's lineage: a champion with cohort values guarded, not a fit.
GUARD = "guard:"
#: The one-sided level of a guard's tests (the monitoring's: the guardrail alerts' default 99% two-sided).
GUARD_ALPHA = 0.005
_COHORT_SUBJECT = re.compile(r"^(?P<name>.+) \[(?P<cohort>[^=\]]+)=(?P<value>[^\]]*)\]$")


def _guard(store: Store, registry: Registry, as_of: datetime, champion: str, *, who: str) -> tuple[str, str] | None:
    """(the guarded version, why) when the champion's decisions of the latest mature week (``watch_window``
    of decision days, by this version alone) show it harming a cohort value it does not guard yet; None
    otherwise. Harm is a north star below the holdout's (control does better there) or a guardrail beyond
    its bound, each family tested one-sided at the monitoring level (0.005) and Holm-adjusted over every
    cohort value; a north-star harm is guarded first, the strongest one.

    One value is guarded at a time: a segment's harm shows in every cohort value its units belong to (the
    gold tier holds mobile users too), and the guarded version's own decisions show a week later whether
    another value is still harmed. The guarded version is the champion's artifact with that value guarded
    (it gets control alone), registered with the champion as its parent, and made champion in one event,
    which gives a candidate in flight the same guard the same way (a new version, the challenger in the
    same stage; its canary goes on from where it began, without the guarded value's earlier decisions)."""
    spec = store.spec
    since = as_of - spec.horizon - spec.settle - spec.model.adaptation.watch_window
    try:
        evaluation = evaluate(store, as_of, scope=Scope(since=since, policy_versions=(champion,)), daily=False)
    except DrivetrainError:  # none of the champion's decisions in the window yet
        return None
    policy = registry.load(champion)
    new = [(c, s) for c in evaluation.cohorts if c in spec.features for s in evaluation.by_cohort(c)
           if str(s.value) not in policy.guards.get(c, ())]
    sign = _sign(spec)
    harm = [(float(special.ndtr(sign * s.north_star.difference / s.north_star.se)), c, s) for c, s in new
            if s.north_star.difference is not None and s.north_star.se]
    found: tuple[str, str, str] | None = None
    if harm:
        adjusted = holm_adjusted([h[0] for h in harm])
        p, cohort, worst = min(((float(a), c, s) for a, (_, c, s) in zip(adjusted, harm, strict=True)), key=lambda t: t[0])
        if p < GUARD_ALPHA:
            ns = worst.north_star
            found = (cohort, str(worst.value), f"north star in {cohort}={worst.value}: {ns.difference:+.4g} per unit against the "
                     f"holdout (interval {ns.low:.4g} to {ns.high:.4g}), p = {p:.2g} adjusted over {len(harm)} cohort values")
    if found is None:
        raw = spec.model.model_dump(mode="json")
        raw["monitoring"]["alerts"] = [{"name": "guard", "kind": "guardrail", "cohort": "any"}]
        broken = []
        for alert in check_alerts(parse_spec(raw, source=f"{spec.name} guardrails by cohort"), evaluation=evaluation):
            match = _COHORT_SUBJECT.match(alert.subject)
            if (match is None or match["cohort"] not in spec.features or match["value"] in policy.guards.get(match["cohort"], ())
                    or alert.value is None or alert.threshold is None):
                continue
            broken.append((abs(alert.value - alert.threshold) / max(abs(alert.threshold), 1e-12), match["cohort"], match["value"],
                           alert.message))
        if broken:
            _, cohort, value, message = max(broken)
            found = (cohort, value, message)
    if found is None:
        return None
    cohort, value, message = found
    name, guards = _register_guarded(store, registry, champion, policy, cohort, value, role="version", as_of=as_of, who=who)
    why = f"guarded {champion} as {name}: control alone for {cohort}={value}, kept by retrained candidates until one beats control there ({message})"
    # a candidate in flight gets the same guard in the same event: it goes on beside the guarded champion
    # (its canary drops the guarded value's decisions made before the guard, when the arms differed there)
    challenger = registry.alias("challenger")
    moved: dict[str, Any] = {}
    if challenger is not None and (stage := registry.status(challenger)) in ("shadow", "canary"):
        c_name, _ = _register_guarded(store, registry, challenger, registry.load(challenger), cohort, value, role="challenger",
                                      as_of=as_of, who=who)
        since_canary = _canary_since(registry, challenger)
        moved = {"aliases": {"challenger": c_name}, "statuses": {c_name: stage, challenger: "retired"},
                 "details": {"challenger": c_name, **({"canary_since": since_canary.isoformat()} if since_canary else {})}}
        why += f"; {challenger} goes on in {stage} as {c_name}, with the same guard"
    elif challenger is not None:
        moved = {"aliases": {"challenger": None}, "statuses": {}, "details": {}}
    registry.record(at=as_of, who=who, why=why, kind="guard",
                    aliases={"champion": name, "last-good": champion, **moved.get("aliases", {})},
                    statuses={name: "champion", champion: "retired", **moved.get("statuses", {})},
                    details={"version": name, "guards": guards, "guarded": [cohort, value], "harm_since": since.isoformat(),
                             **moved.get("details", {})})
    return name, why


def _register_guarded(store: Store, registry: Registry, version: str, policy: Policy, cohort: str, value: str, *, role: str,
                      as_of: datetime, who: str) -> tuple[str, dict[str, tuple[str, ...]]]:
    """(name, guards) of ``version`` (whose artifact is ``policy``) with ``cohort=value`` guarded too: its
    artifact with the guards, registered with ``version`` as parent and its fit-time baselines. Numbered by
    the guard events that name its line under ``role`` (``version`` for a champion, ``challenger`` for a
    candidate in flight), not by the versions: a rerun after a crash between the registration and the
    event finds the same name registered and records the event."""
    guards = {c: tuple(sorted({*policy.guards.get(c, ()), *([value] if c == cohort else [])})) for c in sorted({*policy.guards, cohort})}
    base = version.split(".guard")[0]
    done = sum(e.kind == "guard" and str(e.details.get(role, "")).startswith(f"{base}.guard") for e in registry.history())
    name = f"{base}.guard{done + 1}"
    _copy_baselines(store, version, name, at=as_of)
    if not any(r.version == name for r in registry.versions()):  # a crash after the registration: the version stands
        registry.register(replace(policy, guards=guards, version=name),
                          replace(registry.version(version).lineage, parent=version, trigger=f"{GUARD} {cohort}={value}"), at=as_of, who=who)
    return name, guards


def _canary_since(registry: Registry, version: str) -> datetime | None:
    """When ``version``'s canary began: the gate event that put it there, or the guard event that gave it
    a guard and carried its parent's start over."""
    for event in reversed(registry.history()):
        named = (event.kind == "gate" and event.details.get("version") == version) or \
                (event.kind == "guard" and event.details.get("challenger") == version)
        if named and "canary_since" in event.details:
            return datetime.fromisoformat(event.details["canary_since"])
    return None


def _guarded_chain(registry: Registry, version: str) -> list[str]:
    """``version`` and the versions it guards, by lineage (a guarded version's parent, while the trigger
    is a guard): the one candidate under its successive names."""
    chain = [version]
    while (record := registry.version(chain[-1])).lineage.trigger.startswith(GUARD) and record.lineage.parent:
        chain.append(record.lineage.parent)
    return chain


def _guards_since(registry: Registry, since: datetime) -> list[Change]:
    """The cohort values guarded after ``since``, each from the moment of its guard: before it, a canary's
    arms may have served them differently; after it, both give them control."""
    return [Change(str(e.details["guarded"][0]), str(e.details["guarded"][1]), e.at) for e in registry.history()
            if e.kind == "guard" and e.at > since and e.details.get("guarded")]


def _copy_baselines(store: Store, parent: str, version: str, *, at: datetime) -> None:
    """The parent's fit-time baselines, keyed by ``version`` as of ``at`` (a guarded version has the same
    model and population; monitoring compares each version with its own), unless ``version`` has some."""
    def rows_of(name: str) -> pa.Table:
        return store.lookup("baselines", "policy_version", pa.table({"policy_version": [name]}))

    rows = rows_of(parent)
    if rows.num_rows == 0 or rows_of(version).num_rows:
        return
    for column, values in (("policy_version", pa.array([version] * rows.num_rows, pa.string())),
                           ("created_at", pa.array([at] * rows.num_rows, rows.schema.field("created_at").type))):
        rows = rows.set_column(rows.schema.get_field_index(column), column, values)
    with store.writing():
        store.append("baselines", rows)


def _version_name(spec: Spec, as_of: datetime) -> str:
    return f"{spec.name}-{as_of.strftime('%Y%m%dT%H%M%SZ')}"


def promote(registry: Registry, version: str, *, at: datetime, who: str, why: str, details: Mapping[str, Any] | None = None) -> None:
    """Make ``version`` the champion; the champion it replaces becomes ``last-good``. One atomic event."""
    current = registry.alias("champion")
    if current == version:
        raise UsageError(f"`version` {version!r} is the champion already")
    registry.version(version)
    aliases: dict[str, str | None] = {"champion": version, "last-good": current or version}
    if registry.alias("challenger") == version:
        aliases["challenger"] = None
    statuses = {version: "champion", **({current: "retired"} if current else {})}
    registry.record(at=at, who=who, why=why, kind="promote", aliases=aliases, statuses=statuses, details=details)


def rollback(registry: Registry, *, at: datetime, who: str, why: str) -> str:
    """Point ``champion`` back at ``last-good`` (a pointer move: the version is loaded already); returns it."""
    current, good = registry.alias("champion"), registry.alias("last-good")
    if good is None or good == current:
        raise UsageError(f"`last-good` must name a version other than the champion to roll back to, got {good!r} "
                         f"(champion {current!r})")
    statuses = {good: "champion", **({current: "rolled back"} if current else {})}
    registry.record(at=at, who=who, why=why, kind="rollback", aliases={"champion": good, "challenger": None}, statuses=statuses)
    return good


def _last(registry: Registry, kind: str, version: str | None = None) -> Any:
    for event in reversed(registry.history()):
        if event.kind == kind and (version is None or event.details.get("version") == version or version in event.statuses):
            return event
    return None


def adapt(store: Store, registry: Registry, as_of: datetime, *, trainer: Trainer = default_trainer, who: str = "drivetrain adapt",
          population_size: int = 10_000, planner: Planner | None = None,
          timer: Callable[[], float] = time.perf_counter, pacing: bool = True) -> StepResult:
    """Run one step of the loop as of ``as_of`` (see the module docstring); safe to run again. With the
    spec's ``adaptation.pacing_period`` (and ``pacing``), the step ends by pricing the budget for the next
    day (:func:`pace`); a caller that paces in memory (the twin's loop) passes ``pacing=False``."""
    step = _step(store, registry, as_of, trainer=trainer, who=who, population_size=population_size, planner=planner, timer=timer)
    if pacing and store.spec.model.adaptation.pacing_period is not None:
        event = pace(store, registry, step.as_of, who=who)
        if event is not None:
            step = replace(step, price=dict(event.details))
    return step


def pace(store: Store, registry: Registry, as_of: datetime, *, who: str = "drivetrain adapt") -> Event | None:
    """Price the spec's first budget for the day that starts at ``as_of`` (:func:`prices_for`) and record
    the prices in the registry, an event of kind ``price`` that a service following the registry applies.
    Safe to run again: the event of the same ``as_of`` is answered. None when nothing is paced."""
    as_of = as_utc(as_of, name="as_of")
    done = next((e for e in reversed(registry.history()) if e.kind == "price" and e.details.get("as_of") == as_of.isoformat()), None)
    if done is not None:
        return done
    details = prices_for(store, registry, as_of)
    if details is None:
        return None
    why = (f"pacing {details['budget']}: target {details['target']:.4g} per unit for the day (budget {details['limit']:g}); "
           + ", ".join(f"{v} at price {p:.4g}" for v, p in details["prices"].items()))
    return registry.record(at=as_of, who=who, why=why, kind="price", details=details)


def prices_for(store: Store, registry: Registry, as_of: datetime) -> dict[str, Any] | None:
    """The pacing of the day that starts at ``as_of``: the pacer's ledger rebuilt from the store
    (:meth:`SpendPacer.fill_from_store`; periods of ``adaptation.pacing_period`` days from the UTC day of
    the registry's first promotion), the target per unit for the day, and the price at which the champion,
    and a challenger in shadow or canary, each meet it on the last served day's contexts. None when
    nothing is paced (no pacing period or budget, no champion yet, no decision since the first promotion).
    The details carry the ledger's predicted cost per day and version (``ledger``): the next step reuses it
    for every day and registered version whose count of decisions is unchanged, so that a daily step
    predicts the day served since rather than two periods of decisions."""
    spec = store.spec
    period = spec.model.adaptation.pacing_period
    as_of = as_utc(as_of, name="as_of")
    first = next((e for e in registry.history() if e.kind == "promote"), None)
    champion = registry.alias("champion")
    if period is None or not spec.budgets or first is None or champion is None:
        return None
    start = first.at.replace(hour=0, minute=0, second=0, microsecond=0)
    pacer = SpendPacer(spec, period_days=max(1, round(period / timedelta(days=1))))
    loaded: dict[str, Policy] = {}
    registered = {r.version for r in registry.versions()}

    def policy_of(version: str) -> Policy:  # a decision of a version the registry does not hold: the champion's model
        if version not in loaded:
            loaded[version] = registry.load(version if version in registered else champion)
        return loaded[version]

    # the last recorded ledger: its per-day predicted costs of registered versions (immutable models) are reused
    earlier = next((e.details.get("ledger") for e in reversed(registry.history()) if e.kind == "price" and e.details.get("ledger")), None)
    known = {day: {v: entry for v, entry in by_version.items() if v in registered} for day, by_version in (earlier or {}).items()}
    recent = pacer.fill_from_store(store, as_of, start=start, policy_of=policy_of, known=known)
    if recent.empty:
        return None
    today = int((as_of - start) // timedelta(days=1))
    last = pacer.days[max(pacer.days)]
    target = pacer.target(today, last.units)
    challenger = registry.alias("challenger")
    live = [champion, *([challenger] if challenger is not None and registry.status(challenger) in ("shadow", "canary") else [])]
    budget = pacer.budget or ""
    prices = {v: float(pacer.paced(policy_of(v), recent, target).multipliers[budget]) for v in live}
    period_start = pacer.period_start(today)
    return {"as_of": as_of.isoformat(), "budget": budget, "prices": prices, "target": target, "limit": pacer.limit,
            "ratio": pacer.ratio(), "day": today, "period_start": (start + timedelta(days=period_start)).isoformat(),
            "units_so_far": sum(d.units for k, d in pacer.days.items() if k >= period_start),
            "observed_days": sum(1 for d in pacer.days.values() if d.observed is not None),
            "ledger": {day: {v: list(entry) for v, entry in by_version.items()} for day, by_version in pacer.predicted_by_version.items()}}


def _step(store: Store, registry: Registry, as_of: datetime, *, trainer: Trainer, who: str, population_size: int,
          planner: Planner | None, timer: Callable[[], float]) -> StepResult:
    as_of = as_utc(as_of, name="as_of")
    spec = store.spec
    settings = spec.model.adaptation
    for event in reversed(registry.history()):
        if event.kind == "step" and event.details.get("as_of") == as_of.isoformat():
            d = event.details
            return StepResult(as_of, tuple(d["actions"]), d.get("trigger"), d.get("candidate"),
                              tuple(GateResult(g["gate"], g["passed"], g["reason"], g["figures"]) for g in d.get("gates", [])),
                              d.get("champion"), replayed=True)
    actions: list[str] = []
    gates: list[GateResult] = []
    trigger: dict[str, Any] | None = None
    candidate_name: str | None = None
    champion = registry.alias("champion")

    # 1. the watch window after a promotion
    promoted = _last(registry, "promote")
    watching = (champion is not None and promoted is not None and registry.alias("last-good") not in (None, champion)
                and promoted.aliases.get("champion") == champion and as_of - promoted.at <= settings.watch_window)
    if watching:
        t0, t1 = int(promoted.at.timestamp() * 1e6), int(as_of.timestamp() * 1e6)
        fired = store.query(f"SELECT rule, subject, message FROM alerts WHERE kind = 'guardrail' AND epoch_us(fired_at) > {t0} "
                            f"AND epoch_us(fired_at) <= {t1} ORDER BY fired_at, rule, subject")
        if len(fired):
            why = f"guardrail alert within the watch window of {champion}'s promotion: {fired['rule'].iloc[0]}: {fired['subject'].iloc[0]}"
            back = rollback(registry, at=as_of, who=who, why=why)
            actions.append(f"rolled back {champion} to {back}: {why}")
            champion = back

    # 1b. a cohort value the champion harms: control alone there
    if settings.guard_on_alert and champion is not None and not actions:
        guarded = _guard(store, registry, as_of, champion, who=who)
        if guarded is not None:
            champion, why = guarded
            actions.append(why)

    # 2. a candidate in flight
    challenger = registry.alias("challenger")
    if challenger is not None and not actions:
        candidate_name = challenger
        stage = registry.status(challenger)
        if stage == "shadow":
            log = registry.shadow(challenger)
            if len(log) >= settings.canary.shadow_decisions:
                result = shadow_check(log, challenger)
                gates.append(result)
                if result.passed:
                    registry.record(at=as_of, who=who, why=result.reason, kind="gate", statuses={challenger: "canary"},
                                    details={"version": challenger, **result.to_json(), "canary_since": as_of.isoformat()})
                    actions.append(f"{challenger} passed shadow; canary on {settings.canary.share:.0%} of units")
                else:
                    registry.record(at=as_of, who=who, why=result.reason, kind="gate", statuses={challenger: "rejected"},
                                    aliases={"challenger": None}, details={"version": challenger, **result.to_json()})
                    actions.append(f"{challenger} rejected by the shadow gate: {result.reason}")
            else:
                actions.append(f"{challenger} in shadow: {len(log)} of {settings.canary.shadow_decisions} shadow decisions")
        elif stage == "canary":
            since = _canary_since(registry, challenger) or as_of
            if champion is None:
                raise UsageError("a canary needs a champion to compare with; promote one first")
            served = {registry.live_at(since), *(e.aliases["champion"] for e in registry.history() if e.at > since and e.aliases.get("champion"))}
            verdict: GateResult | None = canary_check(store, as_of, candidate=_guarded_chain(registry, challenger),
                                                      champion=sorted(v for v in served if v), since=since,
                                                      baseline=registry.load(champion), excluded=_guards_since(registry, since))
            if verdict is None:
                actions.append(f"{challenger} in canary since {since.isoformat()}: waiting for mature canary units and its planned decisions")
            else:
                gates.append(verdict)
                if verdict.passed:
                    promote(registry, challenger, at=as_of, who=who, why=verdict.reason, details={"version": challenger, **verdict.to_json()})
                    actions.append(f"promoted {challenger}: {verdict.reason}")
                    champion = challenger
                else:
                    registry.record(at=as_of, who=who, why=verdict.reason, kind="rollback" if "guardrail" in verdict.reason else "gate",
                                    statuses={challenger: "rejected"}, aliases={"challenger": None},
                                    details={"version": challenger, **verdict.to_json()})
                    actions.append(f"{challenger} stopped in canary: {verdict.reason}")
        else:
            registry.record(at=as_of, who=who, why=f"challenger in status {stage}", kind="gate", aliases={"challenger": None})
            actions.append(f"cleared challenger {challenger} (status {stage})")

    # 3. triggers, retrain, off-line gates
    elif not actions:
        versions = registry.versions()
        last_fit = max((r.registered_at for r in versions if not r.lineage.trigger.startswith(GUARD)), default=None)
        name = _version_name(spec, as_of)
        resumed = any(r.version == name for r in versions)
        if resumed and (decided := registry.status(name)) != "registered":
            # a crash after the candidate's verdict (a failed gate, the promotion) and before the step's record:
            # the verdict stands; gating it again, now beside itself as the champion, would contradict it
            actions.append(f"{name}: already {decided} by the interrupted run of this step")
            step = StepResult(as_of, tuple(actions), None, name, (), champion)
            registry.record(at=as_of, who=who, why="; ".join(actions), kind="step", details=step.to_json())
            return step
        report = judge_triggers(store, as_of, None if resumed else last_fit)
        if resumed:
            report = TriggerReport(as_of, last_fit, ("resuming the candidate registered for this as-of",), {})
        trigger = {"reasons": list(report.reasons), "figures": dict(report.figures),
                   "last_fit": None if report.last_fit is None else report.last_fit.isoformat()}
        if report.fired:
            if not resumed:
                registry.record(at=as_of, who=who, why="; ".join(report.reasons), kind="trigger", details=trigger)
            candidate_name = name
            try:
                candidate = _candidate(store, registry, as_of, name, resumed, trainer=trainer, parent=champion,
                                       trigger="; ".join(report.reasons), population_size=population_size, planner=planner)
            except DrivetrainError as exc:  # no plan (say, infeasible constraints): no version, the reason recorded
                failed = GateResult("plan", False, f"the candidate could not be fitted or planned: {exc}", {})
                registry.record(at=as_of, who=who, why=failed.reason, kind="gate", details={"version": name, **failed.to_json()})
                actions.append(f"{name} not planned: {exc}")
                step = StepResult(as_of, tuple(actions), trigger, name, (failed,), champion)
                registry.record(at=as_of, who=who, why="; ".join(actions), kind="step", details=step.to_json())
                return step
            champ_policy = registry.load(champion) if champion is not None else None
            frozen = frozen_set(store, registry, as_of)
            first = registry.versions()[0].registered_at
            parent_end = registry.version(champion).lineage.data_end if champion is not None else None
            gates = offline_gates(store, candidate, champ_policy, frozen, as_of=as_of, since=first,
                                  parent_end=None if parent_end is None else datetime.fromisoformat(parent_end), timer=timer)
            for g in gates:
                registry.record(at=as_of, who=who, why=g.reason, kind="gate", details={"version": name, **g.to_json()},
                                statuses={name: "rejected"} if not g.passed else None)
            if not gates[-1].passed:
                actions.append(f"{name} rejected by the {gates[-1].gate} gate: {gates[-1].reason}")
            elif champion is None:
                promote(registry, name, at=as_of, who=who, why="the first version: no champion to compare with, off-line gates passed",
                        details={"version": name})
                actions.append(f"promoted {name} as the first champion")
                champion = name
            else:
                registry.record(at=as_of, who=who, why="off-line gates passed: shadow beside the champion", kind="gate",
                                aliases={"challenger": name}, statuses={name: "shadow"}, details={"version": name})
                actions.append(f"{name} passed the off-line gates; in shadow beside {champion}")
        else:
            actions.append("no trigger fired")
    step = StepResult(as_of, tuple(actions), trigger, candidate_name, tuple(gates), champion)
    registry.record(at=as_of, who=who, why="; ".join(actions) or "nothing to do", kind="step", details=step.to_json())
    return step


def _candidate(store: Store, registry: Registry, as_of: datetime, name: str, resumed: bool, *, trainer: Trainer, parent: str | None,
               trigger: str, population_size: int, planner: Planner | None) -> Candidate:
    changes = known_changes(registry)
    if not resumed:
        guards = registry.load(parent).guards if parent is not None else None
        candidate = fit_candidate(store, as_of, version=name, trainer=trainer, parent=parent, trigger=trigger,
                                  population_size=population_size, planner=planner, changes=changes, guards=guards)
        registry.register(candidate.policy, candidate.lineage, at=as_of, who="drivetrain adapt")
        return candidate
    record = registry.version(name)
    window = training_window(store, as_of, changes=changes)
    return Candidate(registry.load(name), record.lineage, window.train, window.evaluation,
                     _population(store, window, as_of, population_size))


def _population(store: Store, window: Window, as_of: datetime, size: int) -> pd.DataFrame:
    """The recent population, or the window's training contexts when no decision arrived recently."""
    population = recent_population(store, as_of, size=size)
    if population.empty:
        population = window.train[["unit_id", *store.spec.features]].head(size)
    return population

