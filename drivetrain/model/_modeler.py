"""The Modeler: how levers move each outcome component, given the context.

For each outcome component of the spec, a model of E[component | context, action] is learned from the
joined training table; the predicted objective per (unit, action) is the spec's objective formula applied
to the predicted components (exact when the formula is linear in the components, as budgets and
guardrails are).

* S-learner (``learner="s"``): one model per component with the action's encoding as input.
* T-learner (``learner="t"``): one model per component and action, on that action's rows.

Numeric levers declared ``monotone`` in the spec are enforced on the predictions by a running max (or min)
along the lever with the other levers fixed (see docs/decisions.md for why not LightGBM's constraints).
A component with ``given`` in the spec is a two-part model: E[c] = E[given] * E[c | given].
A continuous component whose observed values are all positive (a basket given a purchase, a cost given
a redemption) is fitted with a log link (gamma deviance), so that an offer that scales it is one split on
the action rather than an interaction with every context split. The effect stage of a binary component
gets twice the boosting rounds of its context stage (see docs/decisions.md for both measurements).

With ``n_folds >= 2`` the models are cross-fitted (Chernozhukov et al. 2018): each fold's model predicts
the rows it did not see (folds are drawn per ``unit_id`` when the table has one, so a unit's other
decisions do not leak into its prediction), so the doubly robust pseudo-outcomes (Dudík et al. 2011)

    Gamma_ik = mu_k(x_i) + [a_i = k] / p_i * (y_i - mu_k(x_i))

carry no overfitting bias. With ``refit`` (the default) one more model per component is fitted on every
row and predicts new contexts; without it they get the mean of the fold models. Either way the spread of
the fold models is a per (unit, action) uncertainty that pessimistic planning uses.

>>> from drivetrain.twin import NBOOTwin  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeAlias

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats
from sklearn.base import clone

from drivetrain.errors import DataError, UsageError
from drivetrain.model._features import FeatureEncoder
from drivetrain.spec import Spec, formula_on
from drivetrain.stats import cluster_codes, standard_error
from drivetrain.stats import pseudo_outcomes as dr_pseudo_outcomes

__all__ = ["OutcomeModel"]

Table: TypeAlias = pd.DataFrame | pa.Table
#: Rows an action needs before a component never observed under it counts as structurally zero.
MIN_ROWS_FOR_ZERO = 200


class _Constant:
    """Stands in for a model when a component never varies in the rows it would learn from."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(x.shape[0], self.value)


#: LightGBM objectives whose raw score is the log of the prediction.
LOG_LINK_OBJECTIVES = frozenset({"gamma", "poisson", "tweedie"})


class _TwoStage:
    """S-learner in two stages: ``base`` learns the context alone, ``effect`` learns how the action moves
    the outcome starting from the base's raw score (LightGBM ``init_score``). Centering the outcome on
    the context first lets the trees spend their splits on the action's effect, where the decisions are
    made (in the spirit of the R-learner, Nie & Wager 2021); measured in docs/decisions.md.

    The raw scores add on the link scale: logit for a binary outcome, log when the boosters were fitted
    with a log-link objective (read from the booster, so a saved model needs no extra field), else the
    identity."""

    def __init__(self, base: lgb.Booster, effect: lgb.Booster, context_columns: int, binary: bool) -> None:
        self.base = base
        self.effect = effect
        self.context_columns = context_columns
        self.binary = binary
        self.log_link = not binary and str(effect.params.get("objective", "")) in LOG_LINK_OBJECTIVES

    def predict(self, x: np.ndarray, num_threads: int = 1) -> np.ndarray:
        raw = self.base.predict(x[:, : self.context_columns], raw_score=True, num_threads=num_threads)
        raw = np.asarray(raw, dtype=np.float64) + np.asarray(self.effect.predict(x, raw_score=True, num_threads=num_threads))
        if self.binary:
            return 1.0 / (1.0 + np.exp(-raw))
        return np.exp(raw) if self.log_link else raw


def _predict(model: Any, x: np.ndarray, num_threads: int = 1) -> np.ndarray:
    if isinstance(model, _TwoStage):
        return model.predict(x, num_threads)
    if isinstance(model, lgb.Booster):
        return np.asarray(model.predict(x, num_threads=num_threads), dtype=np.float64)
    if isinstance(model, _Constant):
        return model.predict(x)
    x = np.nan_to_num(x, nan=-1.0)  # scikit-learn estimators take no missing values; LightGBM's do
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(x)[:, 1], dtype=np.float64)
    return np.asarray(model.predict(x), dtype=np.float64)


class OutcomeModel:
    """Per-component outcome models over (context, action); see the module docstring.

    Parameters are stored unchanged; ``fit`` validates them. ``regressor``/``classifier`` replace the
    default LightGBM models with any scikit-learn estimator (cloned per model); only LightGBM models can be
    saved into a policy artifact.
    """

    def __init__(
        self,
        *,
        learner: Literal["s", "t"] = "s",
        n_folds: int = 3,
        n_estimators: int = 300,
        effect_estimators: int | None = None,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 200,
        feature_fraction: float = 0.7,
        lambda_l2: float = 10.0,
        log_link: bool = True,
        refit: bool = True,
        seed: int = 0,
        num_threads: int = 1,
        regressor: Any = None,
        classifier: Any = None,
    ) -> None:
        self.learner = learner
        self.n_folds = n_folds
        self.n_estimators = n_estimators
        self.effect_estimators = effect_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.lambda_l2 = lambda_l2
        self.log_link = log_link
        self.refit = refit
        self.seed = seed
        self.num_threads = num_threads
        self.regressor = regressor
        self.classifier = classifier

    # ------------------------------------------------------------------ fitting
    def _validate(self) -> None:
        if self.learner not in ("s", "t"):
            raise UsageError(f"`learner` must be 's' or 't', got {self.learner!r}")
        if not isinstance(self.n_folds, int) or self.n_folds < 0 or self.n_folds == 1:
            raise UsageError(f"`n_folds` must be 0 (no cross-fitting) or an integer >= 2, got {self.n_folds!r}")
        for name in ("n_estimators", "num_leaves", "min_child_samples", "num_threads"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"`{name}` must be >= 1, got {getattr(self, name)!r}")
        if self.effect_estimators is not None and int(self.effect_estimators) < 1:
            raise UsageError(f"`effect_estimators` must be >= 1 or None (the default rule), got {self.effect_estimators!r}")
        if not 0 < self.learning_rate <= 1:
            raise UsageError(f"`learning_rate` must be in (0, 1], got {self.learning_rate!r}")

    def _lgbm_params(self, objective: str) -> dict[str, Any]:
        params: dict[str, Any] = {
            "objective": objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "feature_fraction_seed": self.seed,
            "lambda_l2": self.lambda_l2,
            "num_threads": self.num_threads,
            "deterministic": True,
            "force_col_wise": True,
            "seed": self.seed,
            "verbosity": -1,
        }
        return params

    def _effect_rounds(self, binary: bool) -> int:
        """Boosting rounds of the effect stage: ``effect_estimators``, else twice ``n_estimators`` for a
        binary outcome (an offer moves purchase by a few points: its trees need more rounds than the
        context's) and ``n_estimators`` for a continuous one (measured in docs/decisions.md)."""
        if self.effect_estimators is not None:
            return int(self.effect_estimators)
        return 2 * int(self.n_estimators) if binary else int(self.n_estimators)

    def _fit_one(self, x: np.ndarray, y: np.ndarray, binary: bool, weight: np.ndarray | None = None, two_stage: bool = False) -> Any:
        if y.size == 0:
            return _Constant(0.0)
        if np.all(y == y[0]):
            return _Constant(float(y[0]))
        custom = self.classifier if binary else self.regressor
        if custom is not None:
            model = clone(custom)
            if binary and hasattr(model, "predict_proba"):
                return model.fit(np.nan_to_num(x, nan=-1.0), (y > 0.5).astype(int), sample_weight=weight)
            return model.fit(np.nan_to_num(x, nan=-1.0), y, sample_weight=weight)
        categorical: list[int] | Literal["auto"] = self.encoder_.categorical_indices or "auto"
        # a positive continuous outcome (a basket, a cost) moves by a factor under an offer: one split on
        # the action on the log scale, an interaction with every context split on the identity scale
        log = not binary and self.log_link and bool(np.all(y > 0))
        params = self._lgbm_params("cross_entropy" if binary else "gamma" if log else "regression")
        if not two_stage:
            return lgb.train(params, lgb.Dataset(x, label=y, weight=weight, categorical_feature=categorical), num_boost_round=self.n_estimators)
        d = len(self.encoder_.names)
        base = lgb.train(params, lgb.Dataset(x[:, :d], label=y, weight=weight, categorical_feature=categorical), num_boost_round=self.n_estimators)
        init = base.predict(x[:, :d], raw_score=True, num_threads=self.num_threads)
        data = lgb.Dataset(x, label=y, weight=weight, init_score=init, categorical_feature=categorical)
        rounds = self._effect_rounds(binary)
        return _TwoStage(base, lgb.train(params, data, num_boost_round=rounds), d, binary)

    @staticmethod
    def _folds(frame: pd.DataFrame, folds: int, rng: np.random.Generator) -> np.ndarray:
        """Each row's cross-fitting fold: drawn per unit when the table has ``unit_id`` (a unit's rows
        share a fold, so no model predicts a unit it learned from), per row otherwise."""
        n = len(frame)
        if folds == 1:
            return np.zeros(n, dtype=np.int64)
        if "unit_id" not in frame.columns:
            return rng.permutation(np.arange(n) % folds)
        codes, units = pd.factorize(frame["unit_id"], use_na_sentinel=False)
        if len(units) < folds:
            raise DataError(f"training table must have at least {folds} distinct `unit_id` values for {folds} folds, got {len(units)}")
        return rng.permutation(np.arange(len(units)) % folds)[codes]

    def fit(self, table: Table, spec: Spec, *, progress: Callable[[int, int, str], None] | None = None) -> OutcomeModel:
        """Learn every outcome component from ``table`` (the training table of ``drivetrain join``).

        ``progress(done, total, what)`` is called before each of the ``total`` component models is fitted
        (per component: one per fold, and the refit on every row).
        """
        self._validate()
        frame = table.to_pandas() if isinstance(table, pa.Table) else table
        missing = [c for c in ("action_id", "propensity", *spec.outcomes) if c not in frame.columns]
        if missing:
            raise DataError(f"training table must have columns {missing}, got {list(frame.columns)}")
        if len(frame) < 2 * max(2, self.n_folds):
            raise DataError(f"training table must have at least {2 * max(2, self.n_folds)} rows, got {len(frame)}")
        space = spec.action_space
        action = space.indices(frame["action_id"].to_numpy())
        if np.any(action < 0):
            bad = frame["action_id"].to_numpy()[action < 0][0]
            raise DataError(f"`action_id` must be one of {list(space.ids)}, got {bad!r}")
        self.spec_ = spec
        self.encoder_ = FeatureEncoder.from_spec(spec)
        self.n_actions_ = len(space)
        x = self.encoder_.transform(frame)
        self.components_ = tuple(spec.outcomes)
        self.binary_ = {c: spec.model.outcomes[c].type == "binary" for c in self.components_}
        self.action_ = action
        self.propensity_ = frame["propensity"].to_numpy(dtype=np.float64)
        self.outcomes_ = {c: frame[c].to_numpy(dtype=np.float64) for c in self.components_}
        self.contexts_ = {n: frame[n].to_numpy() for n in spec.features if n in frame.columns}
        self._x = x
        n = len(frame)
        rng = np.random.default_rng(self.seed)
        folds = max(1, self.n_folds)
        self.fold_ = self._folds(frame, folds, rng)
        self.models_: dict[str, list[Any]] = {}
        self.final_: dict[str, Any] = {}
        self.oof_: dict[str, np.ndarray] = {}
        counts = np.bincount(action, minlength=self.n_actions_)
        # structural zeros: a component never seen non-zero under an action with enough rows (no promotion
        # cost without an offer) is predicted as exactly zero for it, rather than a model's small residue
        self.zero_actions_ = {
            c: [k for k in range(self.n_actions_) if counts[k] >= MIN_ROWS_FOR_ZERO and not np.any(self.outcomes_[c][action == k])]
            for c in self.components_
        }
        refits = self.refit and folds > 1
        total, done = len(self.components_) * (folds + refits), 0

        def step(what: str) -> None:
            nonlocal done
            if progress is not None:
                progress(done, total, what)
            done += 1

        for comp in self.components_:
            y, weight = self.outcomes_[comp], None
            gate = spec.model.outcomes[comp].given
            if gate is not None:  # two-part model: E[c | gate] from the rows where the gate happened
                weight = self.outcomes_[gate]
                y = np.divide(y, weight, out=np.zeros_like(y), where=weight > 0)
            fold_models, oof = [], np.zeros((n, self.n_actions_))
            for f in range(folds):
                train = self.fold_ != f if folds > 1 else np.ones(n, dtype=bool)
                if weight is not None:
                    train = train & (weight > 0)
                step(f"{comp}, fold {f + 1} of {folds}" if folds > 1 else comp)
                model = self._fit_component(x[train], action[train], y[train], comp, None if weight is None else weight[train])
                fold_models.append(model)
                if folds > 1:
                    held = ~train
                    oof[held] = self._predict_component(model, x[held], comp)
            self.models_[comp] = fold_models
            if folds > 1:
                self.oof_[comp] = oof
                if refits:  # one model on every row predicts and serves (docs/decisions.md: the trade)
                    rows = np.ones(n, dtype=bool) if weight is None else weight > 0
                    step(f"{comp}, on every row")
                    self.final_[comp] = self._fit_component(x[rows], action[rows], y[rows], comp,
                                                            None if weight is None else weight[rows])
        if self.oof_:
            self.oof_ = self._compose(self.oof_)
        return self

    def _compose(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Unconditional expectations from the two-part models: E[c] = E[gate] * E[c | gate]."""
        out: dict[str, np.ndarray] = {}

        def full(comp: str) -> np.ndarray:
            if comp not in out:
                gate = self.spec_.model.outcomes[comp].given
                value = raw[comp] if gate is None else raw[comp] * full(gate)
                zeros = self.zero_actions_.get(comp, [])
                if zeros:
                    value = value.copy()
                    value[:, zeros] = 0.0
                out[comp] = value
            return out[comp]

        for comp in self.components_:
            full(comp)
        return out

    def training_predictions(self) -> dict[str, np.ndarray]:
        """Predicted components of the training rows for every action, (n, K) each: out-of-fold when
        cross-fitted (what off-policy evaluation of the training rows needs), in-sample otherwise."""
        self._check_fitted()
        return self._training_predictions()

    def _training_predictions(self) -> dict[str, np.ndarray]:
        """Out-of-fold predictions of the training rows (in-sample, hence optimistic, without folds)."""
        if not self.oof_:
            self.oof_ = self._compose({c: self._predict_component(self.models_[c][0], self._x, c) for c in self.components_})
        return self.oof_

    def _fit_component(self, x: np.ndarray, action: np.ndarray, y: np.ndarray, comp: str, weight: np.ndarray | None) -> Any:
        binary = self.binary_[comp]
        if self.learner == "s":
            design = np.column_stack([x, self.spec_.action_space.encode(action)])
            return self._fit_one(design, y, binary, weight, two_stage=True)
        return [
            self._fit_one(x[action == k], y[action == k], binary, None if weight is None else weight[action == k])
            for k in range(self.n_actions_)
        ]

    def _predict_component(self, model: Any, x: np.ndarray, comp: str) -> np.ndarray:
        n, k = x.shape[0], self.n_actions_
        if self.learner == "s":
            enc = self.spec_.action_space.encode(np.arange(k))
            design = np.column_stack([np.repeat(x, k, axis=0), np.tile(enc, (n, 1))])
            out = _predict(model, design, self.num_threads).reshape(n, k)
        else:
            out = np.column_stack([_predict(model[j], x, self.num_threads) for j in range(k)])
        out = self._enforce_monotone(out, comp)
        if self.binary_[comp]:
            out = np.clip(out, 0.0, 1.0)
        return out

    def _enforce_monotone(self, pred: np.ndarray, comp: str) -> np.ndarray:
        space = self.spec_.action_space
        cols = space.lever_columns()
        for lever in space.levers:
            direction = self.spec_.model.levers[lever].monotone.get(comp)
            if direction is None:
                continue
            others = [lv for lv in space.levers if lv != lever]
            groups: dict[tuple[Any, ...], list[int]] = {}
            for j in range(len(space)):
                groups.setdefault(tuple(str(cols[o][j]) for o in others), []).append(j)
            for members in groups.values():
                order = sorted(members, key=lambda j: float(cols[lever][j]))
                block = pred[:, order]
                block = np.maximum.accumulate(block, axis=1) if direction == "increasing" else np.minimum.accumulate(block, axis=1)
                pred[:, order] = block
        return pred

    # ------------------------------------------------------------------ predictions
    def _check_fitted(self) -> None:
        if not hasattr(self, "models_"):
            raise UsageError("this OutcomeModel is not fitted yet: call `fit(table, spec)` first")

    def predict_outcomes(self, contexts: pd.DataFrame | Mapping[str, Any], *, return_std: bool = False) -> Any:
        """Expected value of each component for every (unit, action): dict of (n, K) arrays.

        The expectation comes from the models refitted on every row when there are any (``final_``),
        else from the mean of the fold models. With ``return_std``, also the spread of the cross-fitted
        models per (unit, action) (zeros without cross-fitting), as a second dict.
        """
        self._check_fitted()
        x = self.encoder_.transform(contexts)
        refitted = self._predict_with(self.final_, x) if self.final_ else None
        if refitted is not None and not return_std:
            return refitted
        per_fold = self._per_fold(x)
        means = refitted if refitted is not None else {c: np.mean([p[c] for p in per_fold], axis=0) for c in self.components_}
        if not return_std:
            return means
        stds = {c: np.std([p[c] for p in per_fold], axis=0, ddof=1) if len(per_fold) > 1 else np.zeros_like(means[c])
                for c in self.components_}
        return means, stds

    def predict_folds(self, contexts: pd.DataFrame | Mapping[str, Any]) -> list[dict[str, np.ndarray]]:
        """Each cross-fitted model's components for every (unit, action): one dict of (n, K) arrays per
        fold. The spread of any formula of the components across them is that formula's uncertainty."""
        self._check_fitted()
        return self._per_fold(self.encoder_.transform(contexts))

    def _per_fold(self, x: np.ndarray) -> list[dict[str, np.ndarray]]:
        folds = len(next(iter(self.models_.values())))
        return [self._predict_with({c: self.models_[c][f] for c in self.components_}, x) for f in range(folds)]

    def _predict_with(self, models: Mapping[str, Any], x: np.ndarray) -> dict[str, np.ndarray]:
        """The composed components of encoded contexts ``x`` predicted by one model per component."""
        return self._compose({c: self._predict_component(models[c], x, c) for c in self.components_})

    def objective_of(self, components: Mapping[str, np.ndarray], contexts: pd.DataFrame | Mapping[str, Any] | None = None) -> np.ndarray:
        """The spec's objective formula on (n, K) component arrays (levers broadcast per action)."""
        self._check_fitted()
        return formula_on(self.spec_, self.spec_.objective, components, contexts)

    def predict_objective(self, contexts: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """Predicted objective per (unit, action); shape (n, K)."""
        return self.objective_of(self.predict_outcomes(contexts), contexts)

    def effect(self, contexts: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """Predicted objective of each action minus the control action's; shape (n, K)."""
        value = self.predict_objective(contexts)
        return value - value[:, [self.spec_.control.index]]

    # ------------------------------------------------------------------ doubly robust pieces
    def pseudo_outcomes(self, component: str | None = None) -> np.ndarray:
        """Doubly robust pseudo-outcomes of the training rows for ``component`` (default: the objective);
        shape (n, K). Unbiased for each action's mean when the logged propensities are right."""
        self._check_fitted()
        n = self.action_.size
        predictions = self._training_predictions()
        if component is None:
            mu = self.objective_of(predictions, self.contexts_)
            y = np.asarray(formula_on(self.spec_, self.spec_.objective, {c: v[:, None] for c, v in self.outcomes_.items()},
                                       self.contexts_, lever_index=self.action_), dtype=np.float64).reshape(n)
        else:
            if component not in predictions:
                raise UsageError(f"`component` must be one of {list(self.components_)}, got {component!r}")
            mu, y = predictions[component], self.outcomes_[component]
        return dr_pseudo_outcomes(y, self.action_, self.propensity_, mu)

    def effect_interval(self, *, by: str | None = None, alpha: float = 0.05, cluster: Any = None) -> pd.DataFrame:
        """Average effect of each action versus control on the objective, from the doubly robust
        pseudo-outcomes, with a normal (1 - alpha) interval; per cohort ``by`` when given. ``cluster``
        (n,), the unit of each training row (its ``unit_id``), makes the interval cluster-robust: one
        unit's decisions are not independent (:mod:`drivetrain.stats`)."""
        if not 0 < alpha < 1:
            raise UsageError(f"`alpha` must be in (0, 1), got {alpha!r}")
        gamma = self.pseudo_outcomes()
        codes = None if cluster is None else cluster_codes(cluster, gamma.shape[0], "the training table")
        control = self.spec_.control.index
        diff = gamma - gamma[:, [control]]
        z = float(stats.norm.ppf(1 - alpha / 2))
        if by is not None and by not in self.contexts_:
            raise UsageError(f"`by` must be a context feature of the training table, got {by!r}")
        groups = {"all": np.ones(diff.shape[0], dtype=bool)} if by is None else {
            str(v): np.asarray(self.contexts_[by] == v) for v in pd.unique(self.contexts_[by])}
        rows = []
        for label, mask in groups.items():
            d = diff[mask]
            units = None if codes is None else np.unique(codes[mask], return_inverse=True)[1]
            for j, action_id in enumerate(self.spec_.action_space.ids):
                if j == control:
                    continue
                mean = float(d[:, j].mean())
                se = standard_error(d[:, j], mean, units)
                rows.append({"cohort": label, "action_id": action_id, "n": int(mask.sum()), "effect": mean,
                             "std_error": se, "ci_low": mean - z * se, "ci_high": mean + z * se})
        return pd.DataFrame(rows)
