from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from drivetrain.errors import UsageError
from drivetrain.twin import NBOOTwin, Scenario, best_single_action, oracle, oracle_under_budget

N = 50_000


@pytest.fixture(scope="module")
def twin() -> NBOOTwin:
    return NBOOTwin(seed=7)


@pytest.fixture(scope="module")
def users(twin: NBOOTwin) -> pd.DataFrame:
    return twin.population(N)


@pytest.fixture(scope="module")
def truth(twin: NBOOTwin, users: pd.DataFrame):  # type: ignore[no-untyped-def]
    return twin.truth(users)


def _effect(truth, j: int, control: int, mask: np.ndarray, component: str = "purchase") -> float:  # type: ignore[no-untyped-def]
    c = truth.components[component]
    return float(np.mean(c[mask, j] - c[mask, control]))


def test_pinned_difficulty(twin: NBOOTwin, truth) -> None:  # type: ignore[no-untyped-def]
    control = twin.spec.control.index
    base = float(truth.objective[:, control].mean())
    best = oracle(truth.objective, truth.eligible)
    _, single = best_single_action(truth.objective, truth.eligible, control)
    gain = best.value - base
    assert gain > 0.5  # the oracle earns real money per user over control
    assert (single - base) <= 0.6 * gain
    assert (best.value - single) >= 0.03 * best.value
    # and no action is best for almost everyone
    shares = best.probabilities.mean(axis=0)
    assert shares.max() < 0.5 and (shares > 0.02).sum() >= 6


def test_effects_differ_across_segments(twin: NBOOTwin, users: pd.DataFrame, truth) -> None:  # type: ignore[no-untyped-def]
    space = twin.spec.action_space
    control = twin.spec.control.index
    d15 = space.index_of("discount-15-immediate")
    fs = space.index_of("free_ship-0-immediate")
    bundle = space.index_of("bundle-0-immediate")
    lpu = np.log1p(users["purchases_365d"].to_numpy())
    lca = np.log1p(users["cart_adds_30d"].to_numpy())
    sure = lpu > np.log1p(10)
    persuadable = (lca - 0.6 * lpu > 1.2) & ~sure
    lost = users["page_views_30d"].to_numpy() <= 1
    dog = ((users["tier"] == "gold") & (users["tenure_days"] > 500)).to_numpy()
    for mask in (sure, persuadable, lost, dog):
        assert mask.sum() > 200
    # persuadables respond to a deep discount far more than sure things and lost causes
    assert _effect(truth, d15, control, persuadable) > 0.15
    assert _effect(truth, d15, control, sure & ~dog) < 0.04
    assert abs(_effect(truth, d15, control, lost & ~dog)) < 0.03
    # for sure things the discount is pure cost: the objective falls
    assert _effect(truth, d15, control, sure & ~dog, "gross_profit") - _effect(truth, d15, control, sure & ~dog, "promo_cost") < -2
    # sleeping dogs buy less with any offer
    for j in (d15, fs, bundle):
        assert _effect(truth, j, control, dog) < -0.05
    # free shipping works for small mobile baskets, bundles for large ones
    aov = users["avg_order_value"].to_numpy()
    small_mobile = (aov < 35) & (users["device"] == "mobile").to_numpy() & ~dog & ~lost
    large = (aov > 110) & ~dog & ~lost
    assert _effect(truth, fs, control, small_mobile) > 2 * _effect(truth, fs, control, large & (aov < 150))
    assert _effect(truth, bundle, control, large) > 2 * _effect(truth, bundle, control, small_mobile)
    # timing: a delayed discount helps deliberate users more than impulse buyers
    d10i, d10d = space.index_of("discount-10-immediate"), space.index_of("discount-10-delayed")
    dwell = users["dwell_time_s"].to_numpy()
    deliberate, impulse = dwell > 150, dwell < 25
    p = truth.components["purchase"]
    assert np.mean(p[deliberate, d10d] - p[deliberate, d10i]) > 0.01
    assert np.mean(p[impulse, d10d] - p[impulse, d10i]) < -0.01
    # refunds rise with depth
    refund = truth.components["refund"].mean(axis=0)
    depths = [space.index_of(f"discount-{d}-immediate") for d in (5, 10, 15)]
    assert refund[depths[0]] < refund[depths[1]] < refund[depths[2]]


def test_same_seed_same_world_other_seed_other_world() -> None:
    a, b, c = NBOOTwin(seed=3), NBOOTwin(seed=3), NBOOTwin(seed=4)
    pa_, pb, pc = a.population(2000), b.population(2000), c.population(2000)
    pd.testing.assert_frame_equal(pa_, pb)
    assert not pa_.equals(pc)
    da, oa = a.log(pa_)
    db, ob = b.log(pb)
    pd.testing.assert_frame_equal(da, db)
    pd.testing.assert_frame_equal(oa, ob)
    np.testing.assert_array_equal(a.truth(pa_).objective, b.truth(pb).objective)


def test_logged_propensities_are_the_true_probabilities(twin: NBOOTwin, users: pd.DataFrame, truth) -> None:  # type: ignore[no-untyped-def]
    decisions, _ = twin.log(users)
    spec = twin.spec
    h = spec.model.experimentation.holdout_share
    k = truth.eligible.sum(axis=1)
    action = spec.action_space.indices(decisions["action_id"].to_numpy())
    is_control = action == spec.control.index
    expected = h * is_control + (1 - h) / k
    np.testing.assert_allclose(decisions["propensity"].to_numpy(), expected)
    held = decisions["assignment"].to_numpy() == "holdout"
    assert np.all(action[held] == spec.control.index)
    assert abs(held.mean() - h) < 4 * np.sqrt(h * (1 - h) / len(held))
    # importance weights average to one: the propensities are the logging probabilities
    w = 1.0 / decisions["propensity"].to_numpy()
    for j in range(len(spec.action_space)):
        share = np.sum(w * (action == j)) / len(action)
        assert abs(share - truth.eligible[:, j].mean()) < 0.05


def test_realized_outcomes_match_the_expected_values(twin: NBOOTwin, users: pd.DataFrame, truth) -> None:  # type: ignore[no-untyped-def]
    decisions, outcomes = twin.log(users)
    action = twin.spec.action_space.indices(decisions["action_id"].to_numpy())
    horizon = pd.Timedelta(days=twin.horizon_days)
    merged = outcomes.merge(decisions[["unit_id", "decided_at"]], on="unit_id")
    inside = merged[(merged["occurred_at"] >= merged["decided_at"]) & (merged["occurred_at"] < merged["decided_at"] + horizon)]
    rows = np.arange(len(users))
    for component in ("purchase", "order_value", "gross_profit", "promo_cost", "redeemed", "refund", "complaint"):
        realized = inside[inside["component"] == component].groupby("unit_id")["value"].sum()
        per_unit = decisions["unit_id"].map(realized).fillna(0.0).to_numpy()
        expected = truth.components[component][rows, action]
        se = per_unit.std() / np.sqrt(len(per_unit))
        assert abs(per_unit.mean() - expected.mean()) < 4 * se + 1e-9, component
    # events after the horizon exist (repeat orders) and carry no request id
    late = merged[merged["occurred_at"] >= merged["decided_at"] + horizon]
    assert len(late) > 0 and late["event_id"].str.endswith(":repeat").all()
    assert (outcomes["received_at"] > outcomes["occurred_at"]).all()
    assert outcomes["request_id"].isna().any() and outcomes["request_id"].notna().any()


def test_budget_oracle_equals_brute_force_on_a_tiny_population() -> None:
    twin = NBOOTwin(seed=11)
    users = twin.population(5)
    truth = twin.truth(users)
    cost = truth.components["promo_cost"]
    free = oracle(truth.objective, truth.eligible)
    budget = 0.5 * float(np.mean(np.sum(cost * free.probabilities, axis=1)))
    exact = oracle_under_budget(truth.objective, truth.eligible, [cost], [budget], integral=True)
    n, k = truth.objective.shape
    best = -np.inf
    for combo in itertools.product(range(k), repeat=n):
        cols = np.array(combo)
        rows = np.arange(n)
        if not truth.eligible[rows, cols].all():
            continue
        if cost[rows, cols].mean() <= budget + 1e-12:
            best = max(best, float(truth.objective[rows, cols].mean()))
    assert exact.value == pytest.approx(best, abs=1e-9)
    assert exact.usage[0] <= budget + 1e-9
    relaxed = oracle_under_budget(truth.objective, truth.eligible, [cost], [budget])
    assert best - 1e-9 <= relaxed.value <= free.value + 1e-9
    with pytest.raises(UsageError, match="cannot all hold"):
        oracle_under_budget(truth.objective, truth.eligible, [cost + 1.0], [0.5])


def test_budget_oracle_binds_and_beats_greedy_scaling(twin: NBOOTwin, users: pd.DataFrame, truth) -> None:  # type: ignore[no-untyped-def]
    sub = slice(0, 3000)
    obj, elig, cost = truth.objective[sub], truth.eligible[sub], truth.components["promo_cost"][sub]
    free = oracle(obj, elig)
    spent = float(np.mean(np.sum(cost * free.probabilities, axis=1)))
    capped = oracle_under_budget(obj, elig, [cost], [spent / 2])
    assert capped.usage[0] == pytest.approx(spent / 2, rel=1e-6)
    control = twin.spec.control.index
    assert obj[:, control].mean() < capped.value < free.value
    assert np.allclose(capped.probabilities.sum(axis=1), 1.0)
    assert np.all(capped.probabilities[~elig] == 0)


def test_scenarios_change_the_world_from_their_day() -> None:
    base = NBOOTwin(seed=5)
    users = base.population(4000)
    shifted = NBOOTwin(seed=5, scenario=Scenario(shift_feature="page_views_30d", shift_segment=("device", "mobile"), shift_factor=2.0, shift_day=3))
    before, after = shifted.population(4000, day=2), shifted.population(4000, day=3)
    pd.testing.assert_frame_equal(before, users)
    mobile = (after["device"] == "mobile").to_numpy()
    assert np.allclose(after.loc[mobile, "page_views_30d"], 2 * users.loc[mobile, "page_views_30d"], atol=0.5)
    assert np.array_equal(after.loc[~mobile, "page_views_30d"], users.loc[~mobile, "page_views_30d"])

    redefined = NBOOTwin(seed=5, scenario=Scenario(redefine_feature="dwell_time_s", redefine_scale=1000.0, redefine_day=1))
    d0, _ = redefined.log(users, day=0)
    d1, _ = redefined.log(users, day=1)
    assert np.allclose(d1["dwell_time_s"], 1000 * d0["dwell_time_s"])
    np.testing.assert_array_equal(redefined.truth(users, day=1).objective, base.truth(users).objective)

    hurt = NBOOTwin(seed=5, scenario=Scenario(effect_segment=("region", "south"), effect_delta=-1.0, effect_refund=0.05, effect_day=10))
    south = (users["region"] == "south").to_numpy()
    t9, t10 = hurt.truth(users, day=9), hurt.truth(users, day=10)
    j = hurt.spec.action_space.index_of("discount-10-immediate")
    assert np.array_equal(t9.objective, base.truth(users).objective)
    assert np.all(t10.components["purchase"][south, j] < t9.components["purchase"][south, j])
    assert np.array_equal(t10.components["purchase"][~south, j], t9.components["purchase"][~south, j])
    def refund_rate(t):  # type: ignore[no-untyped-def]
        return t.components["refund"][south, j] / t.components["purchase"][south, j]

    assert np.all(refund_rate(t10) > refund_rate(t9) + 0.049)
    c = hurt.spec.control.index  # the change is in the offers' effects: control's outcomes stay as they were
    np.testing.assert_array_equal(t10.components["refund"][:, c], t9.components["refund"][:, c])

    seasonal = NBOOTwin(seed=5, scenario=Scenario(seasonality=0.5))
    p = [seasonal.truth(users, day=d).components["purchase"][:, 0].mean() for d in range(7)]
    assert max(p) - min(p) > 0.05


def test_discount_memory_makes_users_wait_for_discounts() -> None:
    twin = NBOOTwin(seed=9, scenario=Scenario(discount_memory=0.6))
    users = twin.population(3000)
    before = twin.truth(users).components["purchase"][:, 0]
    always_discount = np.zeros((len(users), len(twin.spec.action_space)))
    always_discount[:, twin.spec.action_space.index_of("discount-10-immediate")] = 1.0
    twin.log(users, day=0, policy=lambda ctx, elig: always_discount, holdout=False)
    twin.log(users, day=1, policy=lambda ctx, elig: always_discount, holdout=False)
    after = twin.truth(users, day=2).components["purchase"][:, 0]
    assert np.all(after < before)


def test_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="`horizon_days` must be >= 1, got 0"):
        NBOOTwin(horizon_days=0)
    with pytest.raises(UsageError, match="`n` must be >= 1"):
        NBOOTwin().population(0)
    twin = NBOOTwin()
    users = twin.population(10)
    with pytest.raises(UsageError, match="logging policy must return probabilities"):
        twin.log(users, policy=lambda ctx, elig: np.ones((10, 3)))


def test_seven_day_configuration() -> None:
    twin = NBOOTwin(seed=1, horizon_days=7)
    assert twin.spec.horizon == pd.Timedelta(days=7)
    decisions, outcomes = twin.log(twin.population(2000))
    merged = outcomes.merge(decisions[["unit_id", "decided_at"]], on="unit_id")
    inside = merged[~merged["event_id"].str.endswith(":repeat")]
    assert (inside["occurred_at"] < inside["decided_at"] + pd.Timedelta(days=7)).all()


def test_a_million_users_generate() -> None:
    users = NBOOTwin(seed=0).population(1_000_000)
    assert len(users) == 1_000_000 and users["unit_id"].is_unique


@pytest.mark.parametrize("share", [2.0, 0.9, 0.5, 0.1, 0.01])
def test_the_one_budget_oracle_meets_highs_on_the_twin_and_with_ties(share: float) -> None:
    """The one-budget LP by its multiplier against HiGHS (given the same LP with a second, slack row, which
    takes the solver's path): the same optimum to 1e-12 per unit, within the limit, one eligible action's
    worth of probability per unit. On the twin's values, and on small integers where many units tie (so
    several units are mixed at the multiplier)."""
    twin = NBOOTwin(seed=5)
    truth = twin.truth(twin.population(3000))
    rng = np.random.default_rng(7)
    tied_obj, tied_cost = rng.integers(0, 4, (3000, 6)).astype(float), rng.integers(0, 3, (3000, 6)).astype(float)
    tied_elig = rng.random((3000, 6)) < 0.8
    tied_elig[:, 0], tied_cost[:, 0] = True, 0.0  # a free control for every unit
    for objective, eligible, cost in ((truth.objective, truth.eligible, truth.components["promo_cost"]), (tied_obj, tied_elig, tied_cost)):
        free = oracle(objective, eligible)
        limit = share * float(np.mean(np.sum(cost * free.probabilities, axis=1)))
        fast = oracle_under_budget(objective, eligible, [cost], [limit])
        highs = oracle_under_budget(objective, eligible, [cost, np.zeros_like(cost)], [limit, 1.0])
        assert fast.value == pytest.approx(highs.value, abs=1e-12 * max(1.0, abs(highs.value)) + 1e-12)
        assert fast.usage[0] <= limit + 1e-9 and (share >= 1 or fast.usage[0] == pytest.approx(limit, rel=1e-9))
        assert np.allclose(fast.probabilities.sum(axis=1), 1.0) and not fast.probabilities[~eligible].any()
        assert float(np.mean(np.sum(objective * fast.probabilities, axis=1))) == pytest.approx(fast.value, rel=1e-12)
