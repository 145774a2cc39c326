from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from drivetrain.errors import DataError, UsageError
from drivetrain.model import FeatureEncoder, OutcomeModel
from drivetrain.twin import NBOOTwin, oracle

N = 12_000


def _logged(seed: int, n: int, *, noise_free: bool) -> tuple[NBOOTwin, pd.DataFrame]:
    """A training table from the twin: realized outcomes, or their expectations when ``noise_free``."""
    twin = NBOOTwin(seed=seed)
    users = twin.population(n)
    decisions, outcomes = twin.log(users)
    spec = twin.spec
    action = spec.action_space.indices(decisions["action_id"].to_numpy())
    rows = np.arange(n)
    if noise_free:
        truth = twin.truth(users)
        for c in spec.outcomes:
            decisions[c] = truth.components[c][rows, action]
        return twin, decisions
    inside = outcomes[~outcomes["event_id"].str.endswith(":repeat")]
    agg = inside.pivot_table(index="unit_id", columns="component", values="value", aggfunc="sum").reindex(columns=list(spec.outcomes))
    for c in spec.outcomes:
        decisions[c] = decisions["unit_id"].map(agg[c]).fillna(0.0).to_numpy()
    return twin, decisions


@pytest.fixture(scope="module")
def noise_free() -> tuple[NBOOTwin, pd.DataFrame]:
    return _logged(1, N, noise_free=True)


@pytest.fixture(scope="module")
def noisy() -> tuple[NBOOTwin, pd.DataFrame]:
    return _logged(2, 30_000, noise_free=False)


@pytest.fixture(scope="module")
def fresh() -> tuple[pd.DataFrame, object]:
    twin = NBOOTwin(seed=50)
    users = twin.population(4000, offset=10_000_000)
    return users, twin.truth(users)


def test_recovers_the_response_surface_from_noise_free_outcomes(noise_free, fresh) -> None:  # type: ignore[no-untyped-def]
    twin, table = noise_free
    users, truth = fresh
    model = OutcomeModel(n_folds=0, n_estimators=150, learning_rate=0.1, num_leaves=15, min_child_samples=20).fit(table, twin.spec)
    pred = model.predict_outcomes(users)
    assert set(pred) == set(twin.spec.outcomes) and pred["purchase"].shape == (4000, 11)
    for c in ("purchase", "gross_profit", "promo_cost"):
        assert np.corrcoef(pred[c].ravel(), truth.components[c].ravel())[0, 1] > 0.97, c
    value = model.predict_objective(users)
    choice = np.where(truth.eligible, value, -np.inf).argmax(axis=1)
    control = truth.objective[:, twin.spec.control.index].mean()
    got = truth.objective[np.arange(len(users)), choice].mean()
    best = oracle(truth.objective, truth.eligible).value
    assert (got - control) / (best - control) > 0.8


@pytest.mark.parametrize("learner", ["s", "t"])
def test_monotone_levers_are_respected(noisy, fresh, learner: str) -> None:  # type: ignore[no-untyped-def]
    twin, table = noisy
    users, _ = fresh
    model = OutcomeModel(learner=learner, n_folds=0, n_estimators=60, num_leaves=15).fit(table, twin.spec)  # type: ignore[arg-type]
    pred = model.predict_outcomes(users)
    space = twin.spec.action_space
    for timing in ("immediate", "delayed"):
        cols = [space.index_of(f"discount-{d}-{timing}") for d in (5, 10, 15)]
        for comp in ("purchase", "refund"):
            p = pred[comp][:, cols]
            assert np.all(np.diff(p, axis=1) >= -1e-12), (learner, timing, comp)


def test_cross_fitted_pseudo_outcomes_are_unbiased_for_each_action(noisy) -> None:  # type: ignore[no-untyped-def]
    twin, table = noisy
    model = OutcomeModel(n_folds=3, n_estimators=60, num_leaves=15).fit(table, twin.spec)
    gamma = model.pseudo_outcomes(table)
    users = twin.population(len(table))
    truth = twin.truth(users)
    n = len(table)
    for j in range(len(twin.spec.action_space)):
        se = gamma[:, j].std(ddof=1) / np.sqrt(n)
        assert abs(gamma[:, j].mean() - truth.objective[:, j].mean()) < 4 * se, j
    effects = model.effect_interval(table)
    true_effect = truth.objective.mean(axis=0) - truth.objective[:, twin.spec.control.index].mean()
    lookup = dict(zip(twin.spec.action_space.ids, true_effect, strict=True))
    z = (effects["effect"] - effects["action_id"].map(lookup)) / effects["std_error"]
    assert (z.abs() < 4).all()
    assert (effects["ci_low"] < effects["effect"]).all() and len(effects) == 10
    by_tier = model.effect_interval(table, by="tier")
    assert set(by_tier["cohort"]) == {"bronze", "silver", "gold"}
    _, std = model.predict_outcomes(users.head(100), return_std=True)
    assert (std["purchase"] > 0).any()


def test_positive_components_move_by_a_factor_on_the_log_scale(noisy, fresh) -> None:  # type: ignore[no-untyped-def]
    """Gross profit given a purchase is the basket times the margin; an offer scales it (a discount's
    basket is 4% larger, a bundle's 25% larger at a lower margin) by the same factor for every user.
    The log link learns that factor (here from about 900 purchases per action, so within five points)."""
    twin, table = noisy
    users, truth = fresh
    model = OutcomeModel(n_folds=0, n_estimators=60, learning_rate=0.1).fit(table, twin.spec)
    gp, purchase = model.models_["gross_profit"][0], model.models_["purchase"][0]
    assert gp.log_link and gp.effect.params["objective"] == "gamma" and gp.effect.num_trees() == 60
    assert not purchase.log_link and purchase.effect.num_trees() == 120  # binary: twice the rounds
    assert not OutcomeModel(n_folds=0, n_estimators=20, log_link=False).fit(table.head(5000), twin.spec).models_["gross_profit"][0].log_link
    pred = model.predict_outcomes(users)
    space = twin.spec.action_space
    control = twin.spec.control.index
    conditional = pred["gross_profit"] / pred["purchase"]
    true_conditional = truth.components["gross_profit"] / truth.components["purchase"]
    for action in ("discount-10-immediate", "bundle-0-immediate", "free_ship-0-delayed"):
        j = space.index_of(action)
        got = np.median(conditional[:, j] / conditional[:, control])
        want = np.median(true_conditional[:, j] / true_conditional[:, control])
        assert abs(got - want) < 0.05, (action, got, want)
    assert np.corrcoef(conditional.ravel(), true_conditional.ravel())[0, 1] > 0.9


def test_any_scikit_learn_estimator(noisy, fresh) -> None:  # type: ignore[no-untyped-def]
    twin, table = noisy
    users, truth = fresh
    model = OutcomeModel(n_folds=0, regressor=LinearRegression(), classifier=LogisticRegression(max_iter=200)).fit(table.head(3000), twin.spec)
    pred = model.predict_outcomes(users)
    assert pred["purchase"].min() >= 0 and pred["purchase"].max() <= 1
    assert np.corrcoef(pred["purchase"].ravel(), truth.components["purchase"].ravel())[0, 1] > 0.5


def test_bad_parameters_and_tables(noise_free) -> None:  # type: ignore[no-untyped-def]
    twin, table = noise_free
    with pytest.raises(UsageError, match="`learner` must be 's' or 't', got 'x'"):
        OutcomeModel(learner="x").fit(table, twin.spec)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="`n_folds` must be 0"):
        OutcomeModel(n_folds=1).fit(table, twin.spec)
    with pytest.raises(UsageError, match="`effect_estimators` must be >= 1 or None .*, got 0"):
        OutcomeModel(effect_estimators=0).fit(table, twin.spec)
    with pytest.raises(DataError, match=r"training table must have columns \['refund'\]"):
        OutcomeModel().fit(table.drop(columns=["refund"]), twin.spec)
    broken = table.head(50).copy()
    broken.loc[broken.index[0], "action_id"] = "gift"
    with pytest.raises(DataError, match="`action_id` must be one of"):
        OutcomeModel(n_folds=0).fit(broken, twin.spec)
    with pytest.raises(UsageError, match="not fitted yet"):
        OutcomeModel().predict_outcomes(table)


def test_feature_encoder_round_trips_and_handles_unknowns(noise_free) -> None:  # type: ignore[no-untyped-def]
    twin, _ = noise_free
    enc = FeatureEncoder.from_spec(twin.spec)
    assert "postcode" not in enc.names
    assert FeatureEncoder.from_json(enc.to_json()) == enc
    ctx = {n: [None] for n in enc.names}
    ctx.update(region=["atlantis"], tier=["gold"], page_views_30d=[3])
    x = enc.transform(ctx)
    row = dict(zip(enc.names, x[0], strict=True))
    assert np.isnan(row["region"]) and row["tier"] == 2.0 and row["page_views_30d"] == 3.0
    with pytest.raises(DataError, match="must have the feature columns"):
        enc.transform({"region": ["north"]})
    # categories given as Arrow text, objects or a list: each value coded as the service codes one context
    odd = ["north", None, "North", "atlantis", float("nan"), 1, "south", " west", "west"]
    n = len(odd)
    frames = [pd.DataFrame({**{c: np.arange(n, dtype=np.float64) for c in enc.names}, "region": pd.Series(odd, dtype=object),
                            "device": pd.Series(["mobile", "desktop", None, "tablet", "x", "mobile", "Desktop", "", "desktop"], dtype="str"),
                            "tier": ["gold", "silver", "bronze", None, "platinum", "gold", 2, "silver", "gold"]})]
    frames.append({c: list(frames[0][c]) for c in enc.names})
    for contexts in frames:
        rows = [{c: contexts[c][i] for c in enc.names} for i in range(n)]
        np.testing.assert_array_equal(enc.transform(contexts), np.vstack([enc.transform_row(r) for r in rows]))


def test_refit_predicts_with_the_model_on_every_row_and_keeps_the_fold_spread(noise_free, fresh) -> None:  # type: ignore[no-untyped-def]
    twin, table = noise_free
    users, _ = fresh
    params = {"n_estimators": 30, "min_child_samples": 50}
    table = table.head(6000)
    calls: dict[str, list[tuple[int, int, str]]] = {"crossed": [], "whole": [], "pooled": []}
    crossed = OutcomeModel(n_folds=3, **params).fit(table, twin.spec, progress=lambda *a: calls["crossed"].append(a))
    whole = OutcomeModel(n_folds=0, **params).fit(table, twin.spec, progress=lambda *a: calls["whole"].append(a))
    pooled = OutcomeModel(n_folds=3, refit=False, **params).fit(table, twin.spec, progress=lambda *a: calls["pooled"].append(a))
    k = len(twin.spec.outcomes)  # progress: once before each model, counting up to the total
    for name, total in (("crossed", 4 * k), ("whole", k), ("pooled", 3 * k)):
        assert [(d, t) for d, t, _ in calls[name]] == [(i, total) for i in range(total)], name
    assert calls["crossed"][:4] == [(0, 4 * k, "purchase, fold 1 of 3"), (1, 4 * k, "purchase, fold 2 of 3"),
                                    (2, 4 * k, "purchase, fold 3 of 3"), (3, 4 * k, "purchase, on every row")]
    assert set(crossed.final_) == set(twin.spec.outcomes) and not whole.final_ and not pooled.final_
    means, stds = crossed.predict_outcomes(users, return_std=True)
    _, pooled_stds = pooled.predict_outcomes(users, return_std=True)
    expected = whole.predict_outcomes(users)
    for c in twin.spec.outcomes:  # same rows, parameters and seed: the refitted model is the unfolded one
        np.testing.assert_array_equal(crossed.predict_outcomes(users)[c], expected[c], err_msg=c)
        np.testing.assert_array_equal(means[c], expected[c], err_msg=c)
        np.testing.assert_array_equal(stds[c], pooled_stds[c], err_msg=c)  # the spread is the folds'
    assert stds["purchase"].mean() > 0
    # out-of-fold predictions of the training rows do not come from the refitted model
    oof = crossed.training_predictions()["purchase"]
    assert not np.allclose(oof, whole.training_predictions()["purchase"])


def test_a_subset_of_components_is_predicted_figure_for_figure(noise_free, fresh) -> None:  # type: ignore[no-untyped-def]
    """``components`` evaluates the asked components' models and those of their gates alone (promo_cost is
    given redeemed, given purchase): the same figures, bit for bit, as predicting every component."""
    twin, table = noise_free
    users = fresh[0].head(500)
    params = {"n_estimators": 10, "min_child_samples": 50}
    table = table.head(3000)
    models = {"refitted": OutcomeModel(n_folds=2, **params).fit(table, twin.spec),
              "folds": OutcomeModel(n_folds=2, refit=False, **params).fit(table, twin.spec)}
    for name, model in models.items():
        for engine in ("compiled", "parts"):
            means, stds = model.predict_outcomes(users, return_std=True, engine=engine)
            for asked in (["promo_cost"], ["complaint", "order_value"], list(twin.spec.outcomes)):
                where = f"{name}, {engine}, {asked}"
                alone = model.predict_outcomes(users, engine=engine, components=asked)
                assert list(alone) == [c for c in twin.spec.outcomes if c in asked], where
                some_means, some_stds = model.predict_outcomes(users, return_std=True, engine=engine, components=asked)
                assert list(some_stds) == list(alone), where
                for c in asked:
                    np.testing.assert_array_equal(alone[c], means[c], err_msg=where)
                    np.testing.assert_array_equal(some_means[c], means[c], err_msg=where)
                    np.testing.assert_array_equal(some_stds[c], stds[c], err_msg=where)
    model = models["refitted"]
    assert set(model._compiled) >= {"final", "final:purchase,promo_cost,redeemed"}  # the cost's forest: its own three parts
    assert model._compiled["final:purchase,promo_cost,redeemed"].components == ("purchase", "promo_cost", "redeemed")
    assert model.predict_outcomes(users, components=[]) == {}
    with pytest.raises(UsageError, match=r"`components` must be among the model's \[.*\], got \['promo'\]"):
        model.predict_outcomes(users, components=["promo"])
    with pytest.raises(UsageError, match="`components` must be a sequence of component names, got the string 'promo_cost'"):
        model.predict_outcomes(users, components="promo_cost")


def _trees(model: OutcomeModel, *, folds: bool = True) -> list:  # type: ignore[type-arg]
    """Every LightGBM model of ``model`` (:class:`Trees`): of the folds (unless ``folds`` is False) and refitted."""
    from drivetrain.model._learners import Boosted, PerAction, TwoStage

    out = []
    for part in [p for parts in model.models_.values() for p in parts if folds] + list(model.final_.values()):
        for member in part.members if isinstance(part, PerAction) else [part]:
            out += [member.base_trees, member.effect_trees] if isinstance(member, TwoStage) else \
                [member.trees] if isinstance(member, Boosted) else []
    return out


def test_each_fitted_booster_keeps_the_text_it_was_read_from(noise_free) -> None:  # type: ignore[no-untyped-def]
    """A fitted booster's text is kept from the fit (compiling and saving read it): the booster is the one
    that text reads into, and it holds no training rows, as after a plain ``lgb.train``."""
    import lightgbm as lgb

    twin, table = noise_free
    fitted = []
    for learner in ("s", "t"):
        fitted += _trees(OutcomeModel(n_folds=2, n_estimators=5, learner=learner).fit(table.head(2000), twin.spec))
    assert len(fitted) > 20
    for trees in fitted:
        assert lgb.Booster(model_str=trees.text).model_to_string() == trees.booster.model_to_string()
        assert not hasattr(trees.booster, "train_set")  # freed, as lgb.train leaves it


def test_a_loaded_model_reads_its_trees_into_lightgbm_only_to_predict_with_it(noise_free, fresh, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A model read from its files keeps each LightGBM model as text: the compiled forest predicts from the
    text, and a Booster is read only when LightGBM itself predicts (``engine="parts"``), then with the same
    figures as the fitted model's. A text LightGBM cannot read names its file."""
    from drivetrain.errors import ArtifactError
    from drivetrain.model._learners import Trees

    twin, table = noise_free
    users, _ = fresh
    model = OutcomeModel(n_folds=2, n_estimators=10, seed=1).fit(table.head(3000), twin.spec)
    loaded = OutcomeModel.from_files(tmp_path, model.to_files(tmp_path), twin.spec)
    assert len(_trees(loaded)) > 10 and all(t._booster is None for t in _trees(loaded))
    compiled = loaded.predict_outcomes(users)
    assert all(t._booster is None for t in _trees(loaded))  # the compiled forest read the texts alone
    parts = loaded.predict_outcomes(users, engine="parts")  # the models refitted on every row predict
    assert all(t._booster is not None for t in _trees(loaded, folds=False))
    for c in twin.spec.outcomes:
        np.testing.assert_array_equal(parts[c], model.predict_outcomes(users, engine="parts")[c], err_msg=c)
        np.testing.assert_array_equal(compiled[c], model.predict_outcomes(users)[c], err_msg=c)
    assert [t.objective for t in _trees(loaded)] == [t.booster.params["objective"] for t in _trees(model)]
    with pytest.raises(ArtifactError, match="purchase-f0.txt must be a LightGBM text model"):
        _ = Trees("tree\nversion=v4\nnot a model\n", name="purchase-f0.txt").booster


def test_cross_fitting_folds_are_drawn_per_unit(noisy) -> None:  # type: ignore[no-untyped-def]
    """A unit decided three times keeps all three rows in one fold, so its out-of-fold predictions
    never come from a model that learned its own outcomes; without `unit_id` folds are drawn per row."""
    twin, table = noisy
    once = table.iloc[:1500]
    thrice = pd.concat([once.assign(request_id=once["request_id"] + f":{k}") for k in range(3)], ignore_index=True)
    model = OutcomeModel(n_folds=3, n_estimators=20, num_leaves=7, refit=False).fit(thrice, twin.spec)
    folds_per_unit = pd.Series(model.fold_).groupby(thrice["unit_id"].to_numpy()).nunique()
    assert (folds_per_unit == 1).all()
    units_per_fold = np.bincount(pd.Series(model.fold_).groupby(thrice["unit_id"].to_numpy()).first(), minlength=3)
    assert units_per_fold.tolist() == [500, 500, 500]
    by_row = OutcomeModel(n_folds=3, n_estimators=20, num_leaves=7, refit=False).fit(thrice.drop(columns="unit_id"), twin.spec)
    assert (pd.Series(by_row.fold_).groupby(thrice["unit_id"].to_numpy()).nunique() > 1).mean() > 0.5
    two_units = thrice[thrice["unit_id"].isin(thrice["unit_id"].iloc[:2])]
    with pytest.raises(DataError, match="at least 3 distinct `unit_id` values for 3 folds, got 2"):
        OutcomeModel(n_folds=3, n_estimators=5).fit(two_units, twin.spec)


def test_the_model_writes_and_reads_itself_whole(noise_free, fresh, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A model read back from its files predicts as the fitted one, keeps its hyperparameters, and its
    doubly robust effects work on any table (they once raised AttributeError after loading)."""
    twin, table = noise_free
    users, _ = fresh
    table = table.head(4000)
    model = OutcomeModel(n_folds=2, n_estimators=20, learning_rate=0.2, min_child_samples=50, seed=3).fit(table, twin.spec)
    entry = model.to_files(tmp_path)
    loaded = OutcomeModel.from_files(tmp_path, entry, twin.spec)
    assert (loaded.n_estimators, loaded.learning_rate, loaded.min_child_samples, loaded.seed, loaded.n_folds) == (20, 0.2, 50, 3, 2)
    for means in ((model.predict_outcomes(users), loaded.predict_outcomes(users)),
                  (model.predict_outcomes(users, engine="parts"), loaded.predict_outcomes(users, engine="parts"))):
        for c in twin.spec.outcomes:
            np.testing.assert_array_equal(means[0][c], means[1][c], err_msg=c)
    later = _logged(9, 3000, noise_free=True)[1]  # a table neither model was fitted on: both predict it
    pd.testing.assert_frame_equal(model.effect_interval(later), loaded.effect_interval(later))
    # on its own training table the fitted model uses its out-of-fold predictions, the loaded one has none
    own, reread = model.effect_interval(table), loaded.effect_interval(table)
    assert len(own) == len(reread) == 10 and not np.allclose(own["effect"], reread["effect"])
    np.testing.assert_array_equal(model.pseudo_outcomes(table, "purchase")[:, 0] != 0, True)
    with pytest.raises(UsageError, match="holds no predictions of its training rows"):
        loaded.training_predictions()


def test_a_fitted_model_keeps_no_training_rows(noise_free) -> None:  # type: ignore[no-untyped-def]
    twin, table = noise_free
    table = table.head(3000)
    model = OutcomeModel(n_folds=2, n_estimators=10).fit(table, twin.spec)
    kept = {name for name, value in vars(model).items()
            if isinstance(value, pd.DataFrame | np.ndarray) and len(value) == len(table)}
    kept |= {name for name, value in vars(model).items() if isinstance(value, dict)
             and any(isinstance(v, np.ndarray) and v.shape[:1] == (len(table),) for v in value.values())}
    assert kept == {"fold_", "oof_"}  # the fold of each row and its out-of-fold predictions, no outcome or context


@pytest.mark.parametrize("objective", ["cross_entropy", "gamma", "regression"])
def test_the_training_score_kept_by_lightgbm_is_the_raw_prediction(objective: str) -> None:
    """The effect stage starts from the context stage's score of its training rows, read from what
    LightGBM kept while boosting (a row subset of a binned Dataset, with weights): equal to predicting
    those rows again with ``raw_score=True``."""
    import lightgbm as lgb

    from drivetrain.model._modeler import _training_raw_score

    rng = np.random.default_rng(3)
    x = rng.normal(size=(6000, 4))
    x[rng.random(6000) < 0.1, 2] = np.nan
    y = {"cross_entropy": (rng.random(6000) < 1 / (1 + np.exp(-2 * x[:, 0]))).astype(float),
         "gamma": np.exp(x[:, 1]) + 0.1, "regression": x[:, 1] + rng.normal(size=6000)}[objective]
    reference = lgb.Dataset(x, label=np.zeros(6000), params={"verbosity": -1}, free_raw_data=False).construct()
    rows = np.flatnonzero(rng.random(6000) < 0.6)
    data = reference.subset(rows.tolist()).construct()
    data.set_label(y[rows])
    data.set_weight(rng.uniform(0.5, 2.0, rows.size))
    booster = lgb.train({"objective": objective, "verbosity": -1, "num_threads": 1, "num_leaves": 15}, data, 60,
                        keep_training_booster=True)
    kept = _training_raw_score(booster, objective)
    assert kept is not None
    np.testing.assert_allclose(kept, booster.predict(x[rows], raw_score=True), rtol=0, atol=1e-12)
