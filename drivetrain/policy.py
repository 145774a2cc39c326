"""The Policy artifact: ``decide(contexts)`` returns actions and propensities.

A policy is the Modeler's component models plus the Optimizer's shadow prices. For each unit it scores
every eligible action with the predicted objective minus the priced use of each constraint,

    score_ik = objective_ik - sum_c lambda_c * s_c * usage_c,ik - sum_cap mu_cap * [k in cap],

(s_c = +1 for a ``<=`` limit, -1 for ``>=``), so that a unit's decision does not depend on the rest of the
batch; then applies exploration and the holdout exactly as docs/architecture.md defines them:

* holdout: ``hash(salt, unit_id) < holdout_share`` gets the control action;
* exploration: with probability ``eps``, drawn per request from a hash of the request id, a uniformly
  random eligible action (or, with ``experimentation.exploration: directed``, an action drawn from
  :func:`drivetrain.exploration.exploration_distribution`; ``1 / K_i`` below is then ``q_ia``);
* propensity: ``h * [a = control] + (1 - h) * (eps / K_i + (1 - eps) * [a = chosen])``;
* tie split (a plan's policy whose constraints bind): a request decides at prices slightly below the
  multipliers with probability ``low_share``, slightly above otherwise (drawn from its request id), so that
  units tied at the optimum are split as the plan splits them; ``[a = chosen]`` in the propensity is then
  that mix, ``low_share [a = chosen_low] + (1 - low_share) [a = chosen_high]``;
* a context that breaks the contract gets the fallback action, except in the holdout, which keeps control
  (so the holdout stays exactly the units its hash picks): propensity ``h [a = control] + (1 - h) [a = fallback]``.

Saved as plain files: ``manifest.json`` (spec hash, data window, library versions, metrics, sha256 of
every file), ``policy.json``, ``spec.yaml`` and LightGBM text models. Loading verifies every checksum and
parses only JSON, YAML (safe loader) and LightGBM's text format: it cannot run code.
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from drivetrain.data import PersonalKey, check_contexts
from drivetrain.errors import ArtifactError, UsageError
from drivetrain.exploration import exploration_distribution
from drivetrain.exploration import pick as pick_explored
from drivetrain.model import OutcomeModel
from drivetrain.spec import (
    MODEL_PARTS,
    Spec,
    check_constraint_names,
    failed_propensity,
    formula_on,
    formula_spread,
    holdout_draw,
    in_holdout,
    mean_constraints,
    parse_spec,
    read_yaml,
)

__all__ = ["CapCounter", "DecisionBatch", "Policy", "Pricing", "TieSplit"]

FORMAT = 1
_SCALE = float(2**64)


def _uniform(salt: str, tag: str, keys: Sequence[object] | np.ndarray) -> np.ndarray:
    return holdout_draw(f"{salt}\x1f{tag}", keys)


@dataclass(frozen=True)
class DecisionBatch:
    """Decisions for n contexts: ``action`` (n,) index, ``action_id``, ``propensity``, ``assignment``
    (policy / explore / holdout), the policy's ``scores`` (n, K) and the chosen action's ``margin`` over the
    runner-up (n,)."""

    action: np.ndarray
    action_id: np.ndarray
    propensity: np.ndarray
    assignment: np.ndarray
    chosen: np.ndarray
    scores: np.ndarray
    margin: np.ndarray


@dataclass(frozen=True)
class Pricing:
    """How a policy prices each (unit, action), all (n, K): the model's predicted ``objective`` (in the
    spec's units, whatever its direction), the ``scores`` a decision maximizes (the objective, negated for
    ``minimize``, less the price; ``-inf`` where an action is not eligible) and the ``price``, the priced
    use of the constraints and caps (0 where not eligible)."""

    objective: np.ndarray
    scores: np.ndarray
    price: np.ndarray


@dataclass(frozen=True)
class TieSplit:
    """How the plan's split of tied units is served: a request decides at prices ``1 - band`` times the
    multipliers with probability ``low_share`` (drawn from its request id), at ``1 + band`` times otherwise
    (see :func:`drivetrain.optimize.split_ties`). Units away from a tie decide the same either way."""

    band: float
    low_share: float

    def __post_init__(self) -> None:
        if not (0.0 < self.band < 1.0 and 0.0 <= self.low_share <= 1.0):
            raise UsageError(f"`tie_split` must have band in (0, 1) and low_share in [0, 1], got {self.band} and {self.low_share}")


class CapCounter:
    """Hard caps as served: the spec's caps with ``hard: true`` never exceed their share of a period's
    decisions, whatever the model's prices would give.

    The period is the UTC day of the decision time; the denominator every decision of a program unit in that
    period that went through the counter (both arms, exploration included: as the evaluation counts caps;
    units outside the program get control and count nowhere). Before each decision, the actions of a cap
    whose count plus one would exceed ``max_share`` times the decisions plus one are taken out of the
    unit's eligible actions for that decision (its best other action, exploration over the rest, the
    propensity of that narrower draw), so the capped share stays within the cap after every decision, not
    only at the end of the day. Counters of separate processes (or of one process before and after a
    restart or a reload) each keep the share, so their sum keeps it too; nothing needs sharing.
    """

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self._caps = [(cap.max_share, mask) for cap, mask in spec.caps if cap.hard]
        self.day: str | None = None
        self.decisions = 0
        self.used = np.zeros(len(self._caps), dtype=np.int64)

    @property
    def active(self) -> bool:
        return bool(self._caps)

    def _roll(self, now: datetime) -> None:
        day = now.astimezone(UTC).date().isoformat()
        if day != self.day:
            self.day, self.decisions = day, 0
            self.used[:] = 0

    def blocked(self, now: datetime) -> np.ndarray:
        """(K,) bool: the actions one more decision at ``now`` may not get."""
        self._roll(now)
        return self._blocked()

    def count(self, action: int, now: datetime) -> None:
        """Count one decision of a program unit at ``now`` that got ``action``."""
        self._roll(now)
        self._count(action)

    def _blocked(self) -> np.ndarray:
        out = np.zeros(len(self.spec.action_space), dtype=bool)
        for j, (share, mask) in enumerate(self._caps):
            if self.used[j] + 1 > share * (self.decisions + 1) + 1e-9:
                out |= mask
        return out

    def _count(self, action: int) -> None:
        self.decisions += 1
        for j, (_share, mask) in enumerate(self._caps):
            self.used[j] += int(mask[action])

    def choose(self, policy: Policy, units: np.ndarray, requests: np.ndarray, scores: np.ndarray, price: np.ndarray | None,
               program: np.ndarray, now: datetime) -> DecisionBatch:
        """:meth:`Policy.choose` for the rows in order, each with the actions its hard caps have used up taken
        out first and counted after (``program`` (n,) marks the rows of program units, the ones counted)."""
        batch = policy.choose(units, requests, scores, price)
        if not self.active:
            return batch
        # the loop is in plain Python numbers (a row costs about a microsecond): which caps are used up,
        # the action the row gets, counted; the narrower choices are made for every row at once, once per set
        self._roll(now)
        shares = [share for share, _mask in self._caps]
        masks = [mask.tolist() for _share, mask in self._caps]
        used, decisions = [int(u) for u in self.used], self.decisions
        free: list[int] = batch.action.tolist()
        narrower: dict[tuple[int, ...], tuple[DecisionBatch, list[int]]] = {}
        rows_of: dict[tuple[int, ...], list[int]] = {}
        for i in np.flatnonzero(program).tolist():
            full = tuple(j for j in range(len(shares)) if used[j] + 1 > shares[j] * (decisions + 1) + 1e-9)
            action = free[i]
            if full:
                if full not in narrower:
                    blocked = np.logical_or.reduce([self._caps[j][1] for j in full])
                    chosen = policy.choose(units, requests, np.where(blocked[None, :], -np.inf, scores), price)
                    narrower[full], rows_of[full] = (chosen, chosen.action.tolist()), []
                rows_of[full].append(i)
                action = narrower[full][1][i]
            decisions += 1
            for j, mask in enumerate(masks):
                used[j] += mask[action]
        self.decisions = decisions
        self.used[:] = used
        if not rows_of:
            return batch
        fields = {name: np.array(getattr(batch, name), copy=True) for name in ("action", "action_id", "propensity", "assignment",
                                                                             "chosen", "scores", "margin")}
        for key, rows in rows_of.items():
            for name, column in fields.items():
                column[rows] = getattr(narrower[key][0], name)[rows]
        return DecisionBatch(**fields)


@dataclass
class Policy:
    """A decision policy; build it with :meth:`from_model`, persist it with :meth:`save` / :meth:`load`."""

    spec: Spec
    model: OutcomeModel
    multipliers: Mapping[str, float]
    version: str
    exploration_rate: float
    holdout_share: float
    metadata: Mapping[str, Any] = field(default_factory=dict)
    pessimism: float = 0.0
    tie_split: TieSplit | None = None
    #: Cohort values that get control alone (feature -> values): where this policy's model did harm (a north
    #: star below control's, or a guardrail broken), kept by retrained candidates until one beats control there (``adaptation.guard_on_alert``).
    guards: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_constraint_names(self.spec, self.multipliers, "multipliers")
        unknown = sorted(set(self.guards) - set(self.spec.features))
        if unknown:
            raise UsageError(f"`guards` must name context features of the spec {sorted(self.spec.features)}, got {unknown}")

    @classmethod
    def from_model(cls, spec: Spec, model: OutcomeModel, multipliers: Mapping[str, float], *, version: str | None = None,
                   exploration_rate: float | None = None, holdout_share: float | None = None,
                   metadata: Mapping[str, Any] | None = None, pessimism: float = 0.0,
                   tie_split: TieSplit | None = None) -> Policy:
        fitted = getattr(model, "spec_", None)
        if fitted is not None and fitted.model_hash != spec.model_hash:
            raise UsageError(f"`spec` must agree with the model's spec on what it models ({', '.join(MODEL_PARTS)}), got "
                             f"model hash {spec.model_hash} against the model's {fitted.model_hash}: refit under this spec")
        if fitted is not None and fitted.hash != spec.hash:  # the same fitted models, read under the planning spec
            model = copy.copy(model)
            model.spec_ = spec
        formulas = [spec.objective, *(f for _, f in spec.budgets), *(f for _, f in spec.guardrails)]
        needed = set().union(*(f.variables for f in formulas)) & set(spec.model.outcomes)
        unmodelled = sorted(needed - set(getattr(model, "components_", needed)))
        if unmodelled:
            raise UsageError(f"the spec's objective, budgets and guardrails must read only outcomes the model predicts "
                             f"{sorted(getattr(model, 'components_', ()))}, got {unmodelled}: refit under this spec")
        exp = spec.model.experimentation
        eps = exp.exploration_rate if exploration_rate is None else exploration_rate
        h = exp.holdout_share if holdout_share is None else holdout_share
        if not 0 <= eps < 1 or not 0 <= h < 1:
            raise UsageError(f"`exploration_rate` and `holdout_share` must be in [0, 1), got {eps} and {h}")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        digest = hashlib.sha256(json.dumps({k: float(v) for k, v in sorted(multipliers.items())}).encode() + spec.hash.encode()).hexdigest()[:8]
        if not (np.isfinite(pessimism) and pessimism >= 0):
            raise UsageError(f"`pessimism` must be a finite number >= 0 (a z value such as 1.645), got {pessimism}")
        return cls(spec, model, {k: float(v) for k, v in multipliers.items()}, version or f"{spec.name}-{stamp}-{digest}",
                   float(eps), float(h), dict(metadata or {}), float(pessimism), tie_split)

    # ------------------------------------------------------------------ scoring and deciding
    def scores(self, contexts: pd.DataFrame | Mapping[str, Any], components: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Priced objective per (unit, action); ineligible actions are ``-inf``. Shape (n, K).

        A policy planned with ``pessimism`` z scores what its plan optimized: the objective z spreads of the
        fold models lower, each constraint's use z spreads worse (higher for a ``<=`` limit)."""
        return self.priced(contexts, components)[0]

    def priced(self, contexts: pd.DataFrame | Mapping[str, Any],
               components: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, price), both (n, K): the scores of :meth:`scores` and the priced use of the constraints
        and caps they subtract (0 where an action is not eligible)."""
        pricing = self.pricing(contexts, components)
        return pricing.scores, pricing.price

    def pricing(self, contexts: pd.DataFrame | Mapping[str, Any], components: Mapping[str, np.ndarray] | None = None) -> Pricing:
        """The predicted objective, the priced scores and the priced use of every action of ``contexts``
        (see :class:`Pricing`); ``components`` are the model's predictions for them when the caller
        already has them (the service's compiled model)."""
        comps = self.model.predict_outcomes(contexts) if components is None else components
        z = self.pessimism
        folds = self.model.predict_folds(contexts) if z else []
        objective = self.model.objective_of(comps, contexts)
        value = -objective if self.spec.model.objective.direction == "minimize" else objective
        if z:
            value = value - z * formula_spread(self.spec, self.spec.objective, folds, contexts)
        price = np.zeros(value.shape)
        for term in mean_constraints(self.spec):
            lam = self.multipliers.get(term.name, 0.0)
            if lam:
                usage = np.broadcast_to(formula_on(self.spec, term.formula, comps, contexts), value.shape)
                if z:
                    usage = usage + term.sign * z * formula_spread(self.spec, term.formula, folds, contexts)
                price = price + lam * term.sign * usage
        for cap, mask in self.spec.caps:
            mu = self.multipliers.get(cap.name, 0.0)
            if mu:
                price = price + mu * mask[None, :]
        eligible = self.spec.eligible_actions({n: np.asarray(contexts[n]) for n in self.spec.features if n in contexts})
        if self.guards:
            guarded = self.guarded(contexts)
            eligible[guarded] = False
            eligible[guarded, self.spec.control.index] = True
        return Pricing(objective, np.where(eligible, value - price, -np.inf), np.where(eligible, price, 0.0))

    def guarded(self, contexts: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """Whether each context is in a guarded cohort value (it gets control alone); shape (n,) bool."""
        columns = [np.asarray(contexts[f]).astype(str) for f in self.guards]
        hit = np.zeros(len(columns[0]) if columns else 0, dtype=bool)
        for column, values in zip(columns, self.guards.values(), strict=True):
            hit |= np.isin(column, list(values))
        return hit

    def _choices(self, scores: np.ndarray, price: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, float]:
        """(choice at the lower prices, choice at the higher, the lower's share): the argmax twice, share 1,
        without a tie split."""
        chosen = np.argmax(scores, axis=1)
        split = self.tie_split
        if split is None or price is None:
            return chosen, chosen, 1.0
        return np.argmax(scores + split.band * price, axis=1), np.argmax(scores - split.band * price, axis=1), split.low_share

    def _distribution(self, scores: np.ndarray, price: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(action probabilities (n, K) of the whole serving system, the choices at the lower and at the
        higher prices (n,)): docs/architecture.md's ``h [a = control] + (1 - h) (eps / K_i + (1 - eps) pi(a))``, with
        ``pi`` the choice, or the tie split's mix of the two choices."""
        low, high, share = self._choices(scores, price)
        eps, h = self.exploration_rate, self.holdout_share
        if self.spec.model.experimentation.exploration == "uniform":
            finite = np.isfinite(scores)
            dist = finite * (eps / finite.sum(axis=1, keepdims=True))
        else:
            dist = eps * self._exploring(scores)
        rows = np.arange(len(low))
        dist[rows, low] += (1 - eps) * share
        dist[rows, high] += (1 - eps) * (1 - share)
        dist *= 1 - h
        dist[:, self.spec.control.index] += h
        return dist, low, high

    def _exploring(self, scores: np.ndarray) -> np.ndarray:
        """What an exploring request gets, (n, K) (:func:`drivetrain.exploration.exploration_distribution`)."""
        exp = self.spec.model.experimentation
        return exploration_distribution(scores, rule=exp.exploration, floor=exp.exploration_floor)

    def decide(self, contexts: pd.DataFrame, *, request_ids: Sequence[str] | None = None,
               unit_column: str = "unit_id", components: Mapping[str, np.ndarray] | None = None) -> DecisionBatch:
        """Decide for every row of ``contexts`` (which must hold ``unit_id`` and the context features);
        ``components`` are the model's predictions for them when the caller already has them."""
        if unit_column not in contexts:
            raise UsageError(f"contexts must have a `{unit_column}` column, got {list(contexts.columns)}")
        n = len(contexts)
        units = contexts[unit_column].astype(str).to_numpy()
        requests = np.asarray(request_ids if request_ids is not None else units, dtype=object).astype(str)
        if requests.shape != (n,):
            raise UsageError(f"`request_ids` must have one id per context ({n}), got {requests.shape[0]}")
        return self.choose(units, requests, *self.priced(contexts, components))

    def choose(self, units: np.ndarray, requests: np.ndarray, scores: np.ndarray, price: np.ndarray | None = None) -> DecisionBatch:
        """Decisions from the priced scores (n, K) of ``units`` (n,) for ``requests`` (n,): the policy's
        choice (with a tie split, at the lower or the higher prices as the request id draws; ``price`` is
        then the priced use :meth:`priced` gives), exploration drawn from the request id, the holdout from
        the unit id (docs/architecture.md)."""
        n = scores.shape[0]
        finite = np.isfinite(scores)
        dist, low, high = self._distribution(scores, price)
        salt = self.spec.model.experimentation.salt
        split, chosen = self.tie_split, low
        if split is not None and price is not None and (differ := low != high).any():  # only tied units draw a side
            chosen = low.copy()
            chosen[differ] = np.where(_uniform(salt, "tie", requests[differ]) < split.low_share, low[differ], high[differ])
        ordered = np.sort(scores, axis=1)
        runner_up = ordered[:, -2] if scores.shape[1] > 1 else ordered[:, -1]
        margin = np.where(np.isfinite(runner_up), ordered[:, -1] - runner_up, np.inf)
        k_eligible = finite.sum(axis=1)
        explore = _uniform(salt, "explore", requests) < self.exploration_rate
        action = chosen.copy()
        if explore.any():  # the pick is drawn only for exploring requests (a draw is a pure function of the id)
            draw = _uniform(salt, "pick", requests[explore])
            if self.spec.model.experimentation.exploration == "uniform":
                k = k_eligible[explore]
                pick = np.minimum((draw * k).astype(np.int64), k - 1)
                action[explore] = np.argmax(np.cumsum(finite[explore], axis=1) > pick[:, None], axis=1)
            else:  # the inverse of the directed distribution at the same draw
                action[explore] = pick_explored(self._exploring(scores[explore]), draw)
        held = holdout_draw(salt, units) < self.holdout_share
        action = np.where(held, self.spec.control.index, action)
        propensity = dist[np.arange(n), action]
        assignment = np.where(held, "holdout", np.where(explore, "explore", "policy")).astype(object)
        return DecisionBatch(action, self.spec.action_space.id_array[action], propensity, assignment, chosen, scores, margin)

    def action_distribution(self, contexts: pd.DataFrame, components: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Probability of each action per context under the whole serving system (holdout and
        exploration included, averaged over the hash draws); shape (n, K). What OPE evaluates.
        ``components`` are the model's predictions for them when the caller already has them."""
        return self._distribution(*self.priced(contexts, components))[0]

    def decisions_table(self, contexts: pd.DataFrame, *, now: datetime, pii_key: PersonalKey | None = None,
                        caps: CapCounter | None = None) -> tuple[pd.DataFrame, int]:
        """Decide for a batch of raw contexts and return the rows of the decisions table (docs/data.md)
        plus diagnostics (``pred__<action>``: the predicted objective of each action; ``margin``), and the
        number of rows that broke the context contract and got the fallback action. Hard caps hold over
        the rows in their order (:class:`CapCounter`; pass ``caps`` to carry a counter across batches)."""
        if "unit_id" not in contexts:
            raise UsageError(f"contexts must have a `unit_id` column, got {list(contexts.columns)}")
        frame = contexts.reset_index(drop=True)
        features, reasons = check_contexts(self.spec, frame, pii_key=pii_key)
        ok = reasons == None  # noqa: E711
        n = len(frame)
        units = frame["unit_id"].astype(str).to_numpy()
        if "request_id" in frame:
            requests = frame["request_id"].astype(str).to_numpy()
            ids = pd.Series(requests)
            repeated = ids[ids.duplicated()].unique()
            if len(repeated):
                raise UsageError(f"`request_id` must be unique per row (it keys the decision and its outcomes), got "
                                 f"{len(repeated)} repeated, e.g. {[str(r) for r in repeated[:3]]}")
        else:  # one id per row, also for a unit that appears twice
            requests = np.array([f"{self.version}:{u}:{now.isoformat()}:{i}" for i, u in enumerate(units)], dtype=object)
        held = in_holdout(self.spec.model.experimentation.salt, units, self.holdout_share)
        action = np.where(held, self.spec.control.index, self.spec.fallback.index)  # a held-out unit keeps its arm
        propensity = failed_propensity(action, self.spec.fallback.index, self.spec.control.index, self.holdout_share)
        assignment = np.where(held, "holdout", "fallback").astype(object)
        predicted = np.full((n, len(self.spec.action_space)), np.nan)
        margin = np.full(n, np.nan)
        if ok.any():
            good = features[ok].assign(unit_id=units[ok])
            components = self.model.predict_outcomes(good)
            scores, price = self.priced(good, components)
            program = self.spec.eligible_units({n: good[n].to_numpy() for n in self.spec.features if n in good})
            batch = (caps or CapCounter(self.spec)).choose(self, units[ok], requests[ok], scores, price, program, now)
            action[ok], propensity[ok], assignment[ok] = batch.action, batch.propensity, batch.assignment
            predicted[ok] = self.model.objective_of(components, good)
            margin[ok] = np.where(np.isfinite(batch.margin), batch.margin, np.nan)  # no runner-up: null, as the service logs it
        stamp = pd.Series(pd.Timestamp(now), index=range(n))
        columns: dict[str, Any] = {
            "request_id": requests, "unit_id": units, "decided_at": stamp, "received_at": stamp,
            "policy_version": np.full(n, self.version, dtype=object),
            "action_id": np.array(self.spec.action_space.ids, dtype=object)[action],
            **self.spec.action_space.lever_columns(action), "propensity": propensity, "assignment": assignment,
        }
        for name, feature in self.spec.model.context.features.items():
            column = features[name]
            if feature.type == "integer" and not feature.personal and column.dtype.kind == "f":
                column = column.astype("Int64")  # whole numbers stay integers in every output format; nulls stay null
            columns[name] = column.reset_index(drop=True)
        columns["feature_version"] = np.full(n, self.spec.feature_version, dtype=object)
        columns.update({f"pred__{action_id}": predicted[:, j] for j, action_id in enumerate(self.spec.action_space.ids)})
        columns["margin"] = margin
        columns["fallback_reason"] = reasons
        out = pd.DataFrame(columns)  # one frame built at once: a column set at a time costs a copy each
        return out, int((~ok).sum())

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write the artifact to ``directory`` (created; must be empty or absent)."""
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()):
            raise UsageError(f"policy directory must be empty or absent, got {str(directory)!r} with files")
        body = {
            "format": FORMAT,
            "version": self.version,
            **self.model.to_files(directory),
            "multipliers": dict(self.multipliers),
            "exploration_rate": self.exploration_rate,
            "holdout_share": self.holdout_share,
            "pessimism": self.pessimism,
            "tie_split": None if self.tie_split is None else {"band": self.tie_split.band, "low_share": self.tie_split.low_share},
            **({"guards": {k: list(v) for k, v in sorted(self.guards.items())}} if self.guards else {}),
        }
        (directory / "policy.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        (directory / "spec.yaml").write_text(yaml.safe_dump(self.spec.model.model_dump(mode="json"), sort_keys=False))
        listing = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT,
            "policy_version": self.version,
            "created_at": datetime.now(UTC).isoformat(),
            "spec_name": self.spec.name,
            "spec_hash": self.spec.hash,
            "feature_version": self.spec.feature_version,
            "libraries": _library_versions(),
            "metadata": dict(self.metadata),
            "files": {name: _sha256(directory / name) for name in listing},
        }
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Policy:
        """Read an artifact, verifying every file's sha256; raises :class:`ArtifactError` on any mismatch."""
        directory = Path(directory)
        manifest_path = directory / "manifest.json"
        if not manifest_path.is_file():
            raise ArtifactError(f"policy directory must hold manifest.json, got {str(directory)!r} without it")
        try:
            manifest = json.loads(manifest_path.read_text())
            listed: dict[str, str] = dict(manifest["files"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"manifest.json must be the JSON a policy writes, got unreadable content ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise ArtifactError(f"policy format must be {FORMAT}, got {manifest.get('format')!r}")
        present = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() and p.name != "manifest.json")
        extra = sorted(set(present) - set(listed))
        missing = sorted(set(listed) - set(present))
        if extra or missing:
            raise ArtifactError(f"policy files must be exactly those in the manifest, got extra {extra}, missing {missing}")
        for name, digest in listed.items():
            actual = _sha256(directory / name)
            if actual != digest:
                raise ArtifactError(f"checksum of {name} must be {digest[:12]}... as in the manifest, got {actual[:12]}...: the artifact was modified")
        try:
            body = json.loads((directory / "policy.json").read_text())
            spec = parse_spec(read_yaml((directory / "spec.yaml").read_text()), source=str(directory / "spec.yaml"))
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ArtifactError(f"policy.json and spec.yaml must parse, got {exc}") from None
        if spec.hash != manifest.get("spec_hash"):
            raise ArtifactError(f"spec hash must be {manifest.get('spec_hash')!r} as in the manifest, got {spec.hash!r}")
        model = OutcomeModel.from_files(directory, body, spec)
        return cls(spec, model, {k: float(v) for k, v in body["multipliers"].items()}, str(manifest["policy_version"]),
                   float(body["exploration_rate"]), float(body["holdout_share"]), dict(manifest.get("metadata", {})),
                   float(body.get("pessimism", 0.0)), _tie_split(body.get("tie_split")),
                   {str(k): tuple(str(v) for v in values) for k, values in dict(body.get("guards") or {}).items()})


def _tie_split(entry: Any) -> TieSplit | None:
    if entry is None:
        return None
    try:
        return TieSplit(float(entry["band"]), float(entry["low_share"]))
    except (KeyError, TypeError, ValueError, UsageError) as exc:
        raise ArtifactError(f"policy.json's tie_split must be null or {{'band': b, 'low_share': s}}, got {entry!r} ({exc})") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("drivetrain", "numpy", "pandas", "lightgbm", "scipy", "duckdb", "pyarrow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
