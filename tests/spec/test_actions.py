from __future__ import annotations

from datetime import UTC

import numpy as np
import pytest

from drivetrain.clock import SimulatedClock, SystemClock, as_utc
from drivetrain.errors import SpecError, UsageError
from drivetrain.spec import in_holdout, load_spec, serving_propensity
from tests.conftest import NBOO_SPEC


def test_ids_indices_and_lever_columns_round_trip() -> None:
    space = load_spec(NBOO_SPEC).action_space
    idx = space.indices(["bundle-0-delayed", "nope", "none-0-none"])
    assert idx.tolist() == [8, -1, 0]
    cols = space.lever_columns(np.array([3, 9]))
    assert cols["offer_type"].tolist() == ["discount", "free_ship"]
    assert cols["depth"].tolist() == [10.0, 0.0]
    assert space.find({"offer_type": "discount", "depth": 10, "timing": "immediate"}).id == "discount-10-immediate"  # type: ignore[union-attr]
    assert space.find({"offer_type": "discount", "depth": 0, "timing": "immediate"}) is None
    with pytest.raises(SpecError, match="action id must be one of"):
        space.index_of("gift")


def test_encoding_is_one_hot_for_categories_and_values_for_numbers() -> None:
    space = load_spec(NBOO_SPEC).action_space
    names = space.encoding_names()
    enc = space.encode(np.arange(len(space)))
    assert enc.shape == (11, len(names))
    assert names[:4] == ["offer_type=none", "offer_type=discount", "offer_type=bundle", "offer_type=free_ship"]
    row = dict(zip(names, enc[space.index_of("discount-15-delayed")], strict=True))
    assert row["depth"] == 15.0 and row["offer_type=discount"] == 1.0 and row["timing=delayed"] == 1.0
    assert enc[:, :4].sum(axis=1).tolist() == [1.0] * 11
    assert len({tuple(r) for r in enc}) == 11


def test_select_matches_lever_values() -> None:
    space = load_spec(NBOO_SPEC).action_space
    assert space.select({"offer_type": ["discount"], "depth": [10, 15.0]}).sum() == 4
    assert space.select({"timing": ["delayed"]}).sum() == 5


def test_holdout_is_a_stable_hash_with_the_right_share() -> None:
    ids = [f"u{i}" for i in range(20_000)]
    a = in_holdout("salt-1", ids, 0.1)
    assert np.array_equal(a, in_holdout("salt-1", ids, 0.1))
    assert abs(a.mean() - 0.1) < 4 * np.sqrt(0.1 * 0.9 / len(ids))
    assert not np.array_equal(a, in_holdout("salt-2", ids, 0.1))
    # growing the share only adds units
    assert np.all(in_holdout("salt-1", ids, 0.2)[a])


def test_serving_propensity_follows_the_design_formula() -> None:
    eps, k, h = 0.1, 4, 0.2
    chosen = eps / k + (1 - eps)
    other = eps / k
    p = serving_propensity(np.array([chosen, other, chosen]), np.array([False, False, True]), h)
    np.testing.assert_allclose(p, [(1 - h) * chosen, (1 - h) * other, h + (1 - h) * chosen])


def test_clocks() -> None:
    from datetime import datetime, timedelta, timezone

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    clock = SimulatedClock(t0)
    assert clock.advance(timedelta(hours=2)) == t0 + timedelta(hours=2)
    with pytest.raises(UsageError, match="does not run backwards"):
        clock.advance(timedelta(seconds=-1))
    with pytest.raises(UsageError, match="must be >= the current"):
        clock.set(t0)
    with pytest.raises(UsageError, match="must be timezone-aware"):
        SimulatedClock(datetime(2026, 1, 1))
    assert SystemClock().now().tzinfo is not None
    assert as_utc(datetime(2026, 1, 1, 5, tzinfo=timezone(timedelta(hours=5)))) == t0
