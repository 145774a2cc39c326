"""The Decider: one request's context in, a logged decision out, in well under a millisecond.

It is the logic of the decision service (``app.py`` holds only routes). For each request it checks the
raw context against the spec's contract (:func:`drivetrain.data.check_context`, the rules ingest
applies), encodes it with the policy's :class:`~drivetrain.model.FeatureEncoder`, predicts every
action's components with the compiled model, prices and chooses with :meth:`Policy.choose` (holdout and
exploration exactly as offline), and returns the decision with its log record (a row of the decisions
table, diagnostics included).

Fail safe: a context that breaks the contract, a policy that raises, a decision slower than the spec's
latency budget, or no policy at all (degraded mode) all give the spec's fallback action with its reason.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from drivetrain.data import PersonalKey, check_context, personal_key
from drivetrain.model import CompiledModel
from drivetrain.policy import CapCounter, Policy
from drivetrain.spec import Spec, failed_propensity, in_holdout

__all__ = ["Decider", "Decision", "shadow_row"]


@dataclass(frozen=True)
class Decision:
    """One decision: what the caller gets (``response``) and the decisions-table row (``record``)."""

    response: dict[str, Any]
    record: dict[str, Any]
    timings: Mapping[str, float]


class Decider:
    """Decides for one context at a time with ``policy`` (``None``: degraded, always the fallback)."""

    def __init__(self, spec: Spec, policy: Policy | None, *, degraded_reason: str | None = None,
                 pii_key: PersonalKey | None = None) -> None:
        self.spec = spec
        self.policy = policy
        self.degraded_reason = degraded_reason if policy is None else None
        self.pii_key = personal_key(spec, pii_key)  # no key for personal fields: refused, never served in clear
        self.version = policy.version if policy is not None else "fallback"
        self.compiled = CompiledModel.of(policy.model) if policy is not None and not policy.pessimism else None
        self.caps = CapCounter(policy.spec) if policy is not None else None
        self.budget_s = spec.model.serving.latency_budget_ms / 1000.0
        self._ids = spec.action_space.ids
        self._levers = spec.action_space.lever_columns()
        self._fallback = spec.fallback.index
        self._control = spec.control.index
        # the holdout of a failed decision is the policy's own, as Policy.choose draws it
        self._salt = (policy.spec if policy is not None else spec).model.experimentation.salt
        self._holdout_share = policy.holdout_share if policy is not None else spec.model.experimentation.holdout_share
        if policy is not None:
            self._warm_up()

    def _warm_up(self) -> None:
        """Compile (or load from cache) the native code now, not on the first request."""
        if self.policy is None:
            return
        if self.compiled is not None:
            self.compiled.predict_row(np.zeros(len(self.policy.model.encoder_.names)))
        scores = np.zeros((1, len(self._ids)))
        self.policy.choose(np.array(["warm-up"], dtype=object), np.array(["warm-up"], dtype=object), scores, np.zeros_like(scores))

    @classmethod
    def load(cls, spec: Spec, directory: str | Path, *, pii_key: PersonalKey | None = None) -> Decider:
        """Load and compile the policy in ``directory``; any failure gives a degraded Decider with the reason."""
        try:
            policy = Policy.load(directory)
        except Exception as exc:  # noqa: BLE001 - the service must come up on the fallback, whatever broke
            return cls(spec, None, degraded_reason=f"policy {str(directory)!r} failed to load: {exc}", pii_key=pii_key)
        if policy.spec.action_space.ids != spec.action_space.ids:
            return cls(spec, None, degraded_reason=f"policy {str(directory)!r} has actions {list(policy.spec.action_space.ids)}, "
                                                   f"the spec {list(spec.action_space.ids)}", pii_key=pii_key)
        if policy.spec.feature_version != spec.feature_version:  # the contract the service checks is not the one the models read
            return cls(spec, None, degraded_reason=f"policy {str(directory)!r} was fitted on the context features "
                                                   f"{sorted(policy.spec.features)} (feature_version {policy.spec.feature_version!r}), "
                                                   f"the spec has {sorted(spec.features)} ({spec.feature_version!r})", pii_key=pii_key)
        salts = policy.spec.model.experimentation.salt, spec.model.experimentation.salt
        if salts[0] != salts[1]:  # another salt would move units between the holdout and the policy arm
            return cls(spec, None, degraded_reason=f"policy {str(directory)!r} has the experiment salt {salts[0]!r}, the spec "
                                                   f"{salts[1]!r}: the holdout must stay the same units across policy versions",
                       pii_key=pii_key)
        return cls(spec, policy, pii_key=pii_key)

    @property
    def ready(self) -> bool:
        return self.policy is not None

    def repriced(self, prices: Mapping[str, float]) -> Decider:
        """This Decider with the policy's constraint prices set to ``prices`` (a pacing price), or itself
        when they are already those (or it serves no policy). The model and its compiled code are shared."""
        policy = self.policy
        if policy is None or all(policy.multipliers.get(k) == v for k, v in prices.items()):
            return self
        return Decider(self.spec, replace(policy, multipliers={**policy.multipliers, **prices}), pii_key=self.pii_key)

    def decide(self, unit_id: str, context: Mapping[str, Any], *, request_id: str, now: datetime,
               started: float | None = None, arrived: float | None = None, budget_s: float | None = None) -> Decision:
        """Decide for one unit. ``arrived`` is the ``time.perf_counter()`` when the request arrived (the
        logged latency runs from it), ``started`` when its budget starts (default: the arrival),
        ``budget_s`` a budget below the spec's (a client's deadline)."""
        entered = time.perf_counter()
        t0 = arrived if started is None else started
        t0 = entered if t0 is None else t0
        origin = t0 if arrived is None else arrived
        budget = self.budget_s if budget_s is None else min(self.budget_s, budget_s)
        features, reason = check_context(self.spec, context, pii_key=self.pii_key, typed=True)
        t1 = time.perf_counter()
        predicted = None
        batch = None
        if reason is None and self.policy is None:
            reason = f"degraded: {self.degraded_reason}"
        if reason is None:
            try:
                predicted, scores, price = self._scores(features)
                units, requests = np.array([unit_id], dtype=object), np.array([request_id], dtype=object)
                if self.caps is not None and self.caps.active:  # hard caps: a counter per day, not only the prices
                    program = self.policy.spec.eligible_units({n: np.array([v]) for n, v in features.items()})  # type: ignore[union-attr]
                    batch = self.caps.choose(self.policy, units, requests, scores, price, program, now)  # type: ignore[arg-type]
                else:
                    batch = self.policy.choose(units, requests, scores, price)  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - a model error must never become a 5xx
                reason, predicted, batch = f"model error: {type(exc).__name__}: {exc}", None, None
        t2 = time.perf_counter()
        if batch is not None and t2 - t0 > budget:
            reason = f"over the latency budget: {1000 * (t2 - t0):.1f} ms > {1000 * budget:g} ms"
            batch = None
        if batch is None:  # a held-out unit keeps its arm and control whatever failed (docs/architecture.md, Randomization)
            held = bool(in_holdout(self._salt, [unit_id], self._holdout_share)[0])
            action = self._control if held else self._fallback
            assignment, margin = ("holdout" if held else "fallback"), None
            propensity = float(failed_propensity(np.array([action]), self._fallback, self._control, self._holdout_share)[0])
        else:
            action, propensity = int(batch.action[0]), float(batch.propensity[0])
            assignment = str(batch.assignment[0])
            m = float(batch.margin[0])
            margin = m if math.isfinite(m) else None
        levers = {name: _plain(col[action]) for name, col in self._levers.items()}
        record: dict[str, Any] = {
            "request_id": request_id, "unit_id": unit_id, "decided_at": now, "received_at": now,
            "policy_version": self.version, "action_id": self._ids[action], **levers, "propensity": propensity,
            "assignment": assignment, **{k: _json_value(v) for k, v in features.items()},
            "feature_version": self.spec.feature_version,
        }
        for j, action_id in enumerate(self._ids):
            value = None if predicted is None else float(predicted[j])
            record[f"pred__{action_id}"] = value if value is None or math.isfinite(value) else None
        record["margin"] = margin
        record["fallback_reason"] = reason
        t3 = time.perf_counter()
        record["latency_ms"] = 1000.0 * (t3 - origin)
        response = {
            "request_id": request_id, "unit_id": unit_id, "action_id": self._ids[action], "levers": levers,
            "propensity": propensity, "policy_version": self.version, "assignment": assignment, "fallback_reason": reason,
        }
        ignored = sorted(k for k in context if k not in self.spec.model.context.features)
        if ignored:  # only when there are any: an answer replayed from the log (which keeps the contract's keys) is the same
            response["ignored_context_keys"] = ignored
        return Decision(response, record, {"features": t1 - entered, "policy": t2 - t1, "record": t3 - t2})

    def _scores(self, features: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(predicted objective (K,), priced scores (1, K), their priced use (1, K)) for one parsed context,
        priced by :meth:`Policy.pricing` on the compiled model's components."""
        policy = self.policy
        assert policy is not None
        contexts = {name: np.array([value]) for name, value in features.items()}
        if self.compiled is not None:  # None with pessimism: its scores need every fold model's spread
            components = self.compiled.predict_row(policy.model.encoder_.transform_row(features))
        else:
            components = policy.model.predict_outcomes(contexts)
        pricing = policy.pricing(contexts, components)
        return pricing.objective[0].copy(), pricing.scores, pricing.price


def shadow_row(shadow: Mapping[Any, Any], served: Mapping[Any, Any]) -> dict[str, Any]:
    """One row of a challenger's shadow log: what it would have done (``shadow``, a decisions-table record
    never logged there) beside what the champion did (``served``, the record logged), each with the
    predicted objective of its own action (what :func:`drivetrain.adapt.shadow_check` reads)."""
    return {"request_id": served["request_id"], "unit_id": served["unit_id"], "decided_at": served["decided_at"],
            "policy_version": shadow["policy_version"], "assignment": "shadow", "action_id": shadow["action_id"],
            "predicted": shadow[f"pred__{shadow['action_id']}"], "fallback": shadow["assignment"] == "fallback",
            "champion_version": served["policy_version"], "champion_action_id": served["action_id"],
            "champion_assignment": served["assignment"], "champion_predicted": served[f"pred__{served['action_id']}"]}


def _json_value(value: Any) -> Any:
    """Missing numbers (NaN) are logged as null; JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return _plain(value)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
