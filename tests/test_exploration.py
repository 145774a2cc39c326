"""Directed exploration: every logged propensity is the true probability of the logged action."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from drivetrain.errors import UsageError
from drivetrain.exploration import DIRECTED_SCALE, exploration_distribution, pick
from drivetrain.model import OutcomeModel
from drivetrain.policy import Policy
from drivetrain.spec import Spec, parse_spec
from drivetrain.twin import NBOOTwin


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def directed_spec(spec: Spec, floor: float = 0.25) -> Spec:
    raw = spec.model.model_dump(mode="json")
    raw["experimentation"].update({"exploration": "directed", "exploration_floor": floor})
    return parse_spec(raw, source="directed exploration test")


@pytest.fixture(scope="module")
def fitted() -> tuple[NBOOTwin, OutcomeModel, pd.DataFrame]:
    twin = NBOOTwin(seed=5)
    decisions = twin.expected_log(twin.population(3000))
    model = OutcomeModel(n_folds=0, n_estimators=20, min_child_samples=50, num_threads=1).fit(decisions, twin.spec)
    return twin, model, NBOOTwin(seed=6).population(400, offset=7_000_000)


def test_the_directed_distribution_is_its_closed_form_on_a_tiny_case() -> None:
    scores = np.array([[1.0, 0.0, -np.inf, -1.0], [2.0, 2.0, 2.0, -np.inf]])
    q = exploration_distribution(scores, rule="directed", floor=0.25)
    # row 0: eligible scores 1, 0, -1: mean 0, standard deviation sqrt(2/3)
    sigma = DIRECTED_SCALE * math.sqrt(2.0 / 3.0)
    w = [_phi(0.0), _phi(-1.0 / sigma), _phi(-2.0 / sigma)]
    expected = [0.25 / 3 + 0.75 * x / sum(w) for x in w]
    np.testing.assert_allclose(q[0], [expected[0], expected[1], 0.0, expected[2]], rtol=1e-12, atol=1e-15)
    # row 1: three tied actions, nothing to direct by: uniform on the eligible ones
    np.testing.assert_allclose(q[1], [1 / 3, 1 / 3, 1 / 3, 0.0], rtol=1e-12)
    assert q[0, 0] > q[0, 1] > q[0, 3] >= 0.25 / 3  # closer to the best: explored more; never below the floor
    # uniform is 1 / K_i on the eligible actions, whatever the scores
    np.testing.assert_allclose(exploration_distribution(scores), [[1 / 3, 1 / 3, 0, 1 / 3], [1 / 3, 1 / 3, 1 / 3, 0]])
    with pytest.raises(UsageError, match="exploration"):
        exploration_distribution(scores, rule="greedy")


def test_pick_inverts_the_cumulative_distribution() -> None:
    q = np.array([[0.5, 0.0, 0.25, 0.25]] * 6)
    draws = np.array([0.0, 0.4999, 0.5, 0.7499, 0.75, 0.99999999])
    assert pick(q, draws).tolist() == [0, 0, 2, 2, 3, 3]
    assert pick(np.array([[0.3, 0.3, 0.0]]), np.array([0.9999]))[0] == 1  # above the rounded total: last positive action


def test_a_policy_with_directed_exploration_logs_its_closed_form_propensity(fitted) -> None:  # type: ignore[no-untyped-def]
    twin, model, contexts = fitted
    policy = Policy.from_model(directed_spec(twin.spec), model, {}, exploration_rate=0.2, holdout_share=0.0)
    batch = policy.decide(contexts, request_ids=[f"r{i}" for i in range(len(contexts))])
    scores = batch.scores
    finite = np.isfinite(scores)
    best = np.argmax(scores, axis=1)
    for i in range(20):  # by hand, row by row: 0.2 q_ia + 0.8 [a = best]
        s = scores[i][finite[i]]
        sigma = DIRECTED_SCALE * float(np.std(s))
        w = np.array([_phi((v - s.max()) / sigma) for v in s])
        q = np.zeros(scores.shape[1])
        q[finite[i]] = 0.25 / finite[i].sum() + 0.75 * w / w.sum()
        expected = 0.2 * q[batch.action[i]] + 0.8 * (batch.action[i] == best[i])
        assert batch.propensity[i] == pytest.approx(expected, rel=1e-9)
    dist = policy.action_distribution(contexts)
    np.testing.assert_allclose(batch.propensity, dist[np.arange(len(contexts)), batch.action], rtol=1e-12)


def test_logged_propensities_are_the_frequencies_of_the_hash_draws(fitted) -> None:  # type: ignore[no-untyped-def]
    twin, model, contexts = fitted
    policy = Policy.from_model(directed_spec(twin.spec), model, {}, exploration_rate=0.3, holdout_share=0.1)
    rows = contexts.iloc[:4]
    dist = policy.action_distribution(rows)
    assert (np.ptp(dist, axis=0) > 0.01).any()  # the rows explore differently (the test is not of one distribution)
    n = 60_000
    for i in range(len(rows)):
        many = rows.iloc[np.repeat(i, n)].reset_index(drop=True).assign(unit_id=[f"u{i}-{j}" for j in range(n)])  # row i, n times
        batch = policy.decide(many, request_ids=[f"q{i}-{j}" for j in range(n)])
        # every logged propensity is the row's probability of the logged action
        np.testing.assert_allclose(batch.propensity, dist[i, batch.action], rtol=1e-12)
        freq = np.bincount(batch.action, minlength=dist.shape[1]) / n
        sd = np.sqrt(dist[i] * (1 - dist[i]) / n)
        assert np.all(np.abs(freq - dist[i]) <= 4.5 * sd + 1e-12), (i, freq, dist[i])
        assert np.all(freq[dist[i] == 0] == 0)


def test_directed_exploration_spends_nearer_the_best_than_uniform(fitted) -> None:  # type: ignore[no-untyped-def]
    twin, model, contexts = fitted
    truth = twin.truth(contexts)
    uniform = Policy.from_model(twin.spec, model, {}, exploration_rate=0.2, holdout_share=0.0)
    directed = Policy.from_model(directed_spec(twin.spec), model, {}, exploration_rate=0.2, holdout_share=0.0)
    values = [truth.value(p.action_distribution(contexts)) for p in (uniform, directed)]
    assert values[1] > values[0]  # the same exploration traffic costs less true value
    dist = directed.action_distribution(contexts)
    eligible = twin.spec.eligible_actions({c: contexts[c].to_numpy() for c in twin.spec.features})
    assert np.all(dist[eligible] >= 0.2 * 0.25 / eligible.sum(axis=1).max() - 1e-15)  # every eligible action stays possible
    # a spec that does not name the new fields keeps its hash
    assert parse_spec(twin.spec.model.model_dump(mode="json"), source="again").hash == twin.spec.hash
    assert directed_spec(twin.spec).hash != twin.spec.hash
