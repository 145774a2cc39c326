"""The compiled forest and CompiledModel against LightGBM and OutcomeModel.predict_outcomes."""

from __future__ import annotations

import dataclasses

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from drivetrain.data import check_contexts
from drivetrain.model import FeatureEncoder, OutcomeModel
from drivetrain.model._compiled import CompiledModel
from drivetrain.model._forest import BROADCAST, EVERY, ROW, ForestBuilder
from drivetrain.model._learners import Boosted, PerAction
from drivetrain.twin import NBOOTwin


def _booster(seed: int, *, categorical: bool, objective: str, missing: str = "nan") -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 4000
    x = np.column_stack([rng.normal(size=n), rng.integers(0, 5, size=n).astype(float), rng.exponential(size=n),
                         rng.integers(0, 2, size=n).astype(float), rng.choice([0.0, 5.0, 10.0], size=n)])
    x[rng.random(n) < 0.15, 0] = np.nan
    x[rng.random(n) < 0.3, 2] = 0.0
    y = x[:, 3] * (x[:, 4] / 10) + np.nan_to_num(x[:, 0]) * 0.5 + (x[:, 1] == 2) + rng.normal(size=n) * 0.1
    if objective == "cross_entropy":
        y = (y > np.median(y)).astype(float)
    params = {"objective": objective, "num_leaves": 15, "min_data_in_leaf": 20, "verbosity": -1, "seed": seed,
              "num_threads": 1, "deterministic": True, "zero_as_missing": missing == "zero", "max_cat_to_onehot": 2}
    data = lgb.Dataset(x, label=y, categorical_feature=[1] if categorical else "auto")
    return lgb.train(params, data, num_boost_round=40), x


@pytest.mark.parametrize(("categorical", "objective", "missing"), [(True, "regression", "nan"), (False, "cross_entropy", "nan"),
                                                                     (True, "regression", "zero")])
def test_forest_equals_lightgbm_raw_scores(categorical: bool, objective: str, missing: str) -> None:
    booster, x = _booster(1, categorical=categorical, objective=objective, missing=missing)
    rows = np.array([[0.0, 0.0], [1.0, 5.0], [1.0, 10.0], [0.0, 10.0]])  # the last two columns are fixed per row
    builder = ForestBuilder(3, rows)
    s = builder.slot()
    builder.add(booster.model_to_string(), s, mode=EVERY)
    forest = builder.build()
    contexts = x[:300, :3].copy()
    contexts[:20, 1] = [-1, np.nan, 7, 4.0, 2.5] * 4  # negative, missing, unseen and fractional categories
    splits = forest.threshold[(forest.decision & 1) == 0]
    used = forest.feature[(forest.decision & 1) == 0]
    for i, (f, t) in enumerate(zip(used, splits)):  # values exactly on a threshold
        if f < 3 and 20 + i < len(contexts):
            contexts[20 + i, f] = t
    got = np.stack([forest.raw(c)[:, 0] for c in contexts])
    design = np.column_stack([np.repeat(contexts, len(rows), axis=0), np.tile(rows, (len(contexts), 1))])
    expected = booster.predict(design, raw_score=True).reshape(len(contexts), len(rows))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_forest_modes_broadcast_and_row() -> None:
    booster, x = _booster(2, categorical=False, objective="regression")
    text = booster.model_to_string()
    context_only, _ = _booster(3, categorical=False, objective="regression")
    rows = np.zeros((3, 2))
    builder = ForestBuilder(5, np.zeros((3, 0)))
    s0, s1 = builder.slot(), builder.slot()
    builder.add(text, s0, mode=BROADCAST)
    builder.add(context_only.model_to_string(), s1, mode=ROW, row=2)
    forest = builder.build()
    del rows
    out = forest.raw(x[0])
    expected = booster.predict(x[:1], raw_score=True)[0]
    np.testing.assert_allclose(out[:, 0], expected, atol=1e-12)
    np.testing.assert_allclose(out[:, 1], [0.0, 0.0, context_only.predict(x[:1], raw_score=True)[0]], atol=1e-12)
    with pytest.raises(ValueError, match="`row` must be in"):
        builder.add(text, s1, mode=ROW, row=3)


@pytest.fixture(scope="module", params=[True, False], ids=["refit", "fold-mean"])
def nboo_model(request: pytest.FixtureRequest) -> tuple[OutcomeModel, pd.DataFrame]:
    twin = NBOOTwin(seed=5)
    users = twin.population(5000)
    decisions, _ = twin.log(users)
    truth = twin.truth(users)
    action = twin.spec.action_space.indices(decisions["action_id"].to_numpy())
    for c in twin.spec.outcomes:
        decisions[c] = truth.components[c][np.arange(len(users)), action]
    model = OutcomeModel(n_folds=2, n_estimators=25, min_child_samples=50, refit=request.param).fit(decisions, twin.spec)
    assert bool(model.final_) is request.param
    features, _ = check_contexts(twin.spec, NBOOTwin(seed=6).population(400, offset=9_000_000))
    return model, features


def test_compiled_model_equals_predict_outcomes(nboo_model: tuple[OutcomeModel, pd.DataFrame]) -> None:
    model, features = nboo_model
    compiled = CompiledModel.of(model)
    assert compiled is not None
    expected = model.predict_outcomes(features, engine="parts")
    encoder = model.encoder_
    x = encoder.transform(features)
    for i in range(len(features)):
        row = features.iloc[i].to_dict()
        np.testing.assert_array_equal(encoder.transform_row(row), x[i])
        got = compiled.predict_row(x[i])
        for comp, value in expected.items():
            np.testing.assert_allclose(got[comp][0], value[i], rtol=0, atol=1e-10, err_msg=comp)


def test_t_learner_compiles_too(nboo_model: tuple[OutcomeModel, pd.DataFrame]) -> None:
    _, features = nboo_model
    twin = NBOOTwin(seed=5)
    users = twin.population(5000)
    decisions, _ = twin.log(users, policy=twin.uniform_policy)
    truth = twin.truth(users)
    action = twin.spec.action_space.indices(decisions["action_id"].to_numpy())
    for c in twin.spec.outcomes:
        decisions[c] = truth.components[c][np.arange(len(users)), action]
    model = OutcomeModel(learner="t", n_folds=0, n_estimators=10, min_child_samples=20).fit(decisions, twin.spec)
    compiled = CompiledModel.of(model)
    if compiled is None:  # a per-action model that is a constant cannot be compiled: the batch path serves it
        links = [{q.booster.params.get("objective") for q in p.members if isinstance(q, Boosted)}
                 for ps in model.models_.values() for p in ps if isinstance(p, PerAction)]
        assert any(not isinstance(q, Boosted) for ps in model.models_.values() for p in ps if isinstance(p, PerAction)
                   for q in p.members) or any(len(o) > 1 for o in links)
        return
    expected = model.predict_outcomes(features, engine="parts")
    x = FeatureEncoder.from_spec(twin.spec).transform(features)
    for i in range(50):
        got = compiled.predict_row(x[i])
        for comp, value in expected.items():
            np.testing.assert_allclose(got[comp][0], value[i], rtol=0, atol=1e-10, err_msg=comp)


def test_batch_predictions_equal_lightgbm(nboo_model: tuple[OutcomeModel, pd.DataFrame]) -> None:
    """The compiled batch path (chunks over two threads) against each part's own LightGBM predict, to 1e-12
    relative to the value (the raw scores add up in another order; a log link multiplies their rounding)."""
    model, features = nboo_model
    model.num_threads = 2
    try:
        means, stds = model.predict_outcomes(features, return_std=True)
        exact_means, exact_stds = model.predict_outcomes(features, return_std=True, engine="parts")
        folds, exact_folds = model.predict_folds(features), model.predict_folds(features, engine="parts")
    finally:
        model.num_threads = 1
    assert len(folds) == len(exact_folds) == 2
    for comp in model.components_:
        np.testing.assert_allclose(means[comp], exact_means[comp], rtol=1e-12, atol=1e-12, err_msg=comp)
        np.testing.assert_allclose(stds[comp], exact_stds[comp], rtol=1e-12, atol=1e-12, err_msg=comp)
        for got, expected in zip(folds, exact_folds, strict=True):
            np.testing.assert_allclose(got[comp], expected[comp], rtol=1e-12, atol=1e-12, err_msg=comp)
    assert model.compiled() is not None
    assert means["purchase"].std() > 0


def test_batch_crosses_chunk_boundaries(nboo_model: tuple[OutcomeModel, pd.DataFrame], monkeypatch: pytest.MonkeyPatch) -> None:
    import drivetrain.model._compiled as compiled_module

    model, features = nboo_model
    whole = model.predict_outcomes(features)
    monkeypatch.setattr(compiled_module, "CHUNK", 7)
    for comp, value in model.predict_outcomes(features).items():
        np.testing.assert_array_equal(value, whole[comp], err_msg=comp)


def test_batch_equals_lightgbm_in_every_mode_with_shared_and_split_trees() -> None:
    """A forest mixing trees every row goes through alike (a context model in BROADCAST, a one-leaf tree, an
    EVERY model that reads no lever column) with trees split by the lever columns (EVERY) and one row's trees
    (ROW): the batch walk (blocks of contexts, block edges crossed, one and two threads) and the one-context
    walk both equal LightGBM's raw scores."""
    with_levers, x = _booster(4, categorical=True, objective="regression")
    rng = np.random.default_rng(4)
    params = {"verbosity": -1, "num_threads": 1, "num_leaves": 15, "min_data_in_leaf": 20}
    context_only = lgb.train({**params, "objective": "cross_entropy"},
                             lgb.Dataset(x[:, :3], label=(np.nan_to_num(x[:, 0]) + x[:, 2] > 1).astype(float)), num_boost_round=30)
    stump = lgb.train({**params, "objective": "regression", "min_data_in_leaf": 5000},
                      lgb.Dataset(x, label=rng.normal(size=len(x))), num_boost_round=2)  # one leaf per tree
    rows = np.array([[0.0, 0.0], [1.0, 5.0], [1.0, 10.0], [0.0, 10.0]])
    builder = ForestBuilder(3, rows)
    s0, s1, s2, s3 = (builder.slot() for _ in range(4))
    builder.add(context_only.model_to_string(), s0, mode=BROADCAST)
    builder.add(with_levers.model_to_string(), s0, mode=EVERY)
    builder.add(stump.model_to_string(), s1, mode=EVERY)
    builder.add(context_only.model_to_string(), s2, mode=EVERY)
    builder.add(context_only.model_to_string(), s3, mode=ROW, row=1)
    forest = builder.build()
    contexts = x[:203, :3]  # three blocks and a part
    design = np.column_stack([np.repeat(contexts, len(rows), axis=0), np.tile(rows, (len(contexts), 1))])

    def raw(booster: lgb.Booster, data: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(data, raw_score=True))

    k = len(rows)
    base = np.repeat(raw(context_only, contexts)[:, None], k, axis=1)
    expected = np.stack([
        base + raw(with_levers, design).reshape(-1, k),
        raw(stump, design).reshape(-1, k),
        base,
        np.where(np.arange(k) == 1, base, 0.0),
    ], axis=2)
    for threads in (1, 2):
        np.testing.assert_allclose(forest.raw_batch(contexts, num_threads=threads), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.stack([forest.raw(c) for c in contexts]), expected, rtol=0, atol=1e-12)
    assert forest.leaf_masks is not None  # the leaf-mask scorer ran above; the tree walk gives the same sums
    walked = dataclasses.replace(forest, leaf_masks=None)
    np.testing.assert_allclose(walked.raw_batch(contexts, num_threads=2), expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.stack([forest.raw(c) for c in contexts]), forest.raw_batch(contexts, num_threads=2))


def test_trees_of_more_than_64_leaves_are_walked() -> None:
    """A tree's leaves must fit one 64-bit word for the leaf masks; a forest with a larger tree is walked
    node by node instead, with the same result as LightGBM."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(6000, 3))
    x[rng.random(6000) < 0.1, 1] = np.nan
    y = np.sin(3 * np.nan_to_num(x[:, 0])) + x[:, 2] ** 2 + rng.normal(size=6000) * 0.1
    big = lgb.train({"objective": "regression", "num_leaves": 100, "min_data_in_leaf": 5, "verbosity": -1, "num_threads": 1},
                    lgb.Dataset(x, label=y), num_boost_round=5)
    builder = ForestBuilder(3, np.zeros((2, 0)))
    builder.add(big.model_to_string(), builder.slot(), mode=EVERY)
    forest = builder.build()
    assert forest.leaf_masks is None
    expected = np.repeat(np.asarray(big.predict(x[:500], raw_score=True))[:, None, None], 2, axis=1)
    np.testing.assert_allclose(forest.raw_batch(x[:500], num_threads=2), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(forest.raw(x[0]), expected[0], rtol=0, atol=1e-12)
