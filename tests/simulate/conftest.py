"""Logged datasets from the NBOO twin with their exact truth, shared by the simulate tests.

Replication r draws fresh users (``NBOOTwin(seed=0).population(N, offset=...)``) and logs them with
``NBOOTwin(seed=r + 1)``: the twin's uniform logger with its 10% holdout. Fresh users matter: holdout
membership is a fixed hash of the unit id, so logs of one fixed population always hold out the same
units, and the logged propensity (which averages over that hash) is right only across populations.
The realized reward of a decision is its 30-day objective, gross_profit - promo_cost, from the events;
the guardrail and budget formulas of the spec give the other metrics of a what-if scenario.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest

from drivetrain.simulate import (
    DirectMethod,
    DoublyRobust,
    InverseProbabilityWeighting,
    OffPolicyEstimator,
    SelfNormalizedDR,
    SelfNormalizedIPS,
    SwitchDR,
)
from drivetrain.spec import Formula, Spec
from drivetrain.twin import NBOOTwin, Truth, oracle

N = 4_000
REPLICATIONS = 100
MODEL_BIAS, MODEL_NOISE = 0.5, 2.0

#: Estimators of the accuracy tests; DM (with the imperfect model) is the negative control.
ESTIMATORS: dict[str, OffPolicyEstimator] = {
    "IPS": InverseProbabilityWeighting(),
    "SNIPS": SelfNormalizedIPS(),
    "DR": DoublyRobust(),
    "SNDR": SelfNormalizedDR(),
    "SwitchDR(tau=100)": SwitchDR(tau=100.0),
    "DM": DirectMethod(),
}


def realized_components(decisions: pd.DataFrame, outcomes: pd.DataFrame, spec: Spec) -> dict[str, np.ndarray]:
    """Each outcome component per decision within [decided_at, decided_at + horizon), aggregated as the spec
    says (sum or max); each (n,).

    Each user has exactly one decision in a single-day log, so events join their decision on unit_id;
    ``:repeat`` events fall after the horizon.
    """
    events = outcomes[~outcomes["event_id"].str.endswith(":repeat")]
    events = events.merge(decisions[["unit_id", "decided_at"]], on="unit_id", how="inner")
    inside = (events["occurred_at"] >= events["decided_at"]) & (events["occurred_at"] < events["decided_at"] + spec.horizon)
    events = events[inside]
    out: dict[str, np.ndarray] = {}
    for name, outcome in spec.model.outcomes.items():
        values = events.loc[events["component"] == name].groupby("unit_id")["value"].agg(outcome.aggregate)
        out[name] = values.reindex(decisions["unit_id"]).fillna(0.0).to_numpy(dtype=np.float64)
    return out


def metric_formulas(spec: Spec) -> dict[str, Formula]:
    """The objective, every guardrail and every budget of the spec: the metrics of a what-if scenario."""
    return {"objective": spec.objective, **{g.name: f for g, f in spec.guardrails}, **{b.name: f for b, f in spec.budgets}}


def logging_distribution(truth: Truth, spec: Spec) -> np.ndarray:
    """The twin logger's whole distribution: 10% holdout on control, else uniform over eligible; (n, K)."""
    share = spec.model.experimentation.holdout_share
    dist = (1.0 - share) * truth.eligible / truth.eligible.sum(axis=1, keepdims=True)
    dist[:, spec.control.index] += share
    return dist


@dataclass(frozen=True)
class Logged:
    """One logged dataset with everything the estimators and the checks need; shapes (n,) and (n, K)."""

    truth: Truth
    reward: np.ndarray
    action: np.ndarray
    pscore: np.ndarray
    pscore_dist: np.ndarray
    targets: Mapping[str, np.ndarray]
    model: np.ndarray
    metrics: Mapping[str, np.ndarray]
    metric_truth: Mapping[str, np.ndarray]

    def true_value(self, target: str) -> float:
        return float(np.mean(np.sum(self.truth.objective * self.targets[target], axis=1)))

    def kwargs(self, target: str) -> dict[str, Any]:
        return {"reward": self.reward, "action": self.action, "pscore": self.pscore, "action_dist": self.targets[target]}


def make_logged(r: int, n: int = N) -> Logged:
    """Replication ``r``: fresh users, their truth, a logged dataset, two targets and an imperfect model."""
    users = NBOOTwin(seed=0).population(n, offset=(r + 1) * 10 * n)
    twin = NBOOTwin(seed=r + 1)
    spec = twin.spec
    truth = twin.truth(users)
    decisions, outcomes = twin.log(users)
    best = oracle(truth.objective, truth.eligible).probabilities
    uniform = truth.eligible / truth.eligible.sum(axis=1, keepdims=True)
    # a deliberately imperfect, fixed model: the truth biased by MODEL_BIAS plus unit-level noise
    noise = np.random.default_rng([12345, r]).normal(0.0, MODEL_NOISE, size=truth.objective.shape)
    components = realized_components(decisions, outcomes, spec)
    formulas = metric_formulas(spec)
    metrics = {name: np.asarray(f(components), dtype=np.float64) for name, f in formulas.items()}
    return Logged(
        truth=truth,
        reward=metrics["objective"],
        action=spec.action_space.indices(decisions["action_id"].to_numpy()),
        pscore=decisions["propensity"].to_numpy(dtype=np.float64),
        pscore_dist=logging_distribution(truth, spec),
        targets={"oracle-mix": 0.9 * best + 0.1 * uniform, "oracle": best},
        model=truth.objective + MODEL_BIAS + noise,
        metrics=metrics,
        metric_truth={name: np.asarray(f(truth.components), dtype=np.float64) for name, f in formulas.items()},
    )


@dataclass(frozen=True)
class Runs:
    """Per target and estimator, over replications: estimates, interval ends and the true values; (R,)."""

    value: dict[tuple[str, str], np.ndarray]
    low: dict[tuple[str, str], np.ndarray]
    high: dict[tuple[str, str], np.ndarray]
    truth: dict[str, np.ndarray]


def run_replications(replications: int, n: int) -> Runs:
    rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    truth: dict[str, list[float]] = {}
    for r in range(replications):
        logged = make_logged(r, n)
        for target in logged.targets:
            truth.setdefault(target, []).append(logged.true_value(target))
            for name, est in ESTIMATORS.items():
                pe = est.estimate_interval(**logged.kwargs(target), estimated_rewards=logged.model)
                rows.setdefault((target, name), []).append((pe.value, pe.ci_low, pe.ci_high))
    arrays = {key: np.asarray(v) for key, v in rows.items()}
    return Runs(
        value={k: a[:, 0] for k, a in arrays.items()},
        low={k: a[:, 1] for k, a in arrays.items()},
        high={k: a[:, 2] for k, a in arrays.items()},
        truth={t: np.asarray(v) for t, v in truth.items()},
    )


@pytest.fixture(scope="session")
def runs() -> Runs:
    return run_replications(REPLICATIONS, N)


@pytest.fixture(scope="session")
def logged() -> Logged:
    """One logged dataset (not one of the replications) for tests that need a single realistic log."""
    return make_logged(10_000)
