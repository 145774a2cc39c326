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

Speed (docs/decisions.md): the component models are fitted side by side, ``num_threads`` at a time with
one LightGBM thread each (the longest first), on LightGBM Datasets binned once for every fold and stage;
the effect stage starts from the context stage's score as LightGBM kept it while boosting (no second pass
through its trees); predictions of batches go through the compiled forest (:mod:`drivetrain.model._compiled`), equal to LightGBM's own to
1e-12. Each fitted part is a :class:`~drivetrain.model._learners.ComponentLearner`.

>>> from drivetrain.twin import NBOOTwin  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa

from drivetrain.errors import ArtifactError, DataError, UsageError
from drivetrain.model._compiled import CompiledModel
from drivetrain.model._features import FeatureEncoder
from drivetrain.model._learners import (
    LOG_LINK_OBJECTIVES,
    Boosted,
    ComponentLearner,
    Constant,
    Estimator,
    PerAction,
    TwoStage,
    frozen,
    read_learner,
)
from drivetrain.spec import Spec, formula_on
from drivetrain.stats import cluster_codes, standard_error
from drivetrain.stats import pseudo_outcomes as dr_pseudo_outcomes

if TYPE_CHECKING:  # imported where a model is fitted: a model loaded to predict needs neither
    import lightgbm as lgb

__all__ = ["OutcomeModel"]

Table: TypeAlias = pd.DataFrame | pa.Table
#: Rows an action needs before a component never observed under it counts as structurally zero.
MIN_ROWS_FOR_ZERO = 200
#: Hyperparameters written with a saved model (the scikit-learn estimators are not: they cannot be saved).
SAVED_PARAMS = ("learner", "n_folds", "n_estimators", "effect_estimators", "learning_rate", "num_leaves",
                "min_child_samples", "feature_fraction", "lambda_l2", "subsample", "log_link", "refit", "seed", "num_threads")


@dataclass(frozen=True)
class _Task:
    """One component model to fit: ``component`` on ``rows`` of the training table, for ``fold`` (-1: on
    every row, the refit)."""

    component: str
    fold: int
    rows: np.ndarray
    what: str


def _table_digest(action: np.ndarray, propensity: np.ndarray) -> str:
    """Identifies a training table by its logged actions and propensities (what the doubly robust
    pieces read), so a model knows whether out-of-fold predictions of it exist."""
    h = hashlib.sha256(np.ascontiguousarray(action, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(propensity, dtype=np.float64).tobytes())
    return h.hexdigest()


class OutcomeModel:
    """Per-component outcome models over (context, action); see the module docstring.

    Parameters are stored unchanged; ``fit`` validates them. ``regressor``/``classifier`` replace the
    default LightGBM models with any scikit-learn estimator (cloned per model); only LightGBM models can be
    saved into a policy artifact. ``num_threads`` is how many models are fitted side by side (one
    LightGBM thread each) and how many threads a batch prediction uses (docs/decisions.md: why not
    LightGBM's own threads).

    The fitted model keeps its models and the out-of-fold predictions of its training rows, never the
    rows themselves: the doubly robust pieces take the table (:meth:`pseudo_outcomes`,
    :meth:`effect_interval`).
    """

    def __init__(
        self,
        *,
        learner: Literal["s", "t"] = "s",
        n_folds: int = 3,
        n_estimators: int = 150,
        effect_estimators: int | None = None,
        learning_rate: float = 0.1,
        num_leaves: int = 15,
        min_child_samples: int = 200,
        feature_fraction: float = 0.7,
        lambda_l2: float = 10.0,
        subsample: float = 1.0,
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
        self.subsample = subsample
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
        if not 0 < self.subsample <= 1:
            raise UsageError(f"`subsample` must be in (0, 1], got {self.subsample!r}")

    def _lgbm_params(self, objective: str) -> dict[str, Any]:
        bagging = {"bagging_fraction": self.subsample, "bagging_freq": 1, "bagging_seed": self.seed} if self.subsample < 1 else {}
        return {
            **bagging,
            "objective": objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "feature_fraction_seed": self.seed,
            "lambda_l2": self.lambda_l2,
            "num_threads": 1,
            "deterministic": True,
            "force_col_wise": True,
            "seed": self.seed,
            "verbosity": -1,
        }

    def _effect_rounds(self, binary: bool) -> int:
        """Boosting rounds of the effect stage: ``effect_estimators``, else twice ``n_estimators`` for a
        binary outcome (an offer moves purchase by a few points: its trees need more rounds than the
        context's) and ``n_estimators`` for a continuous one (measured in docs/decisions.md)."""
        if self.effect_estimators is not None:
            return int(self.effect_estimators)
        return 2 * int(self.n_estimators) if binary else int(self.n_estimators)

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

    def _check_table(self, frame: pd.DataFrame, spec: Spec) -> np.ndarray:
        """The logged action index of each row of a table with the spec's outcomes and propensities."""
        missing = [c for c in ("action_id", "propensity", *spec.outcomes) if c not in frame.columns]
        if missing:
            raise DataError(f"training table must have columns {missing}, got {list(frame.columns)}")
        action = spec.action_space.indices(frame["action_id"].to_numpy())
        if np.any(action < 0):
            bad = frame["action_id"].to_numpy()[action < 0][0]
            raise DataError(f"`action_id` must be one of {list(spec.action_space.ids)}, got {bad!r}")
        return action

    def fit(self, table: Table, spec: Spec, *, progress: Callable[[int, int, str], None] | None = None) -> OutcomeModel:
        """Learn every outcome component from ``table`` (the training table of ``drivetrain join``).

        ``progress(done, total, what)`` is called as each of the ``total`` component models starts (per
        component: one per fold, and the refit on every row); in order when ``num_threads`` is 1.
        """
        self._validate()
        frame = table.to_pandas() if isinstance(table, pa.Table) else table
        action = self._check_table(frame, spec)
        if len(frame) < 2 * max(2, self.n_folds):
            raise DataError(f"training table must have at least {2 * max(2, self.n_folds)} rows, got {len(frame)}")
        self.spec_ = spec
        self.encoder_ = FeatureEncoder.from_spec(spec)
        self.n_actions_ = len(spec.action_space)
        self.components_ = tuple(spec.outcomes)
        self.binary_ = {c: spec.model.outcomes[c].type == "binary" for c in self.components_}
        self._compiled: dict[str, CompiledModel | None] = {}
        x = self.encoder_.transform(frame)
        outcomes = {c: frame[c].to_numpy(dtype=np.float64) for c in self.components_}
        propensity = frame["propensity"].to_numpy(dtype=np.float64)
        n = len(frame)
        rng = np.random.default_rng(self.seed)
        folds = max(1, self.n_folds)
        self.fold_ = self._folds(frame, folds, rng)
        counts = np.bincount(action, minlength=self.n_actions_)
        # structural zeros: a component never seen non-zero under an action with enough rows (no promotion
        # cost without an offer) is predicted as exactly zero for it, rather than a model's small residue
        self.zero_actions_ = {
            c: [k for k in range(self.n_actions_) if counts[k] >= MIN_ROWS_FOR_ZERO and not np.any(outcomes[c][action == k])]
            for c in self.components_
        }
        targets: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        tasks: list[_Task] = []
        refits = self.refit and folds > 1
        for comp in self.components_:
            y, weight = outcomes[comp], None
            gate = spec.model.outcomes[comp].given
            if gate is not None:  # two-part model: E[c | gate] from the rows where the gate happened
                weight = outcomes[gate]
                y = np.divide(y, weight, out=np.zeros_like(y), where=weight > 0)
            targets[comp] = (y, weight)
            rows = np.ones(n, dtype=bool) if weight is None else weight > 0
            for f in range(folds):
                train = rows & (self.fold_ != f) if folds > 1 else rows
                tasks.append(_Task(comp, f, np.flatnonzero(train), f"{comp}, fold {f + 1} of {folds}" if folds > 1 else comp))
            if refits:  # one model on every row predicts and serves (docs/decisions.md: the trade)
                tasks.append(_Task(comp, -1, np.flatnonzero(rows), f"{comp}, on every row"))
        fitter = _Fitter(self, x, action, targets)
        lock, started = threading.Lock(), [0]

        def run(task: _Task) -> ComponentLearner:
            if progress is not None:
                with lock:
                    progress(started[0], len(tasks), task.what)
                    started[0] += 1
            return fitter.fit(task)

        workers = min(int(self.num_threads), len(tasks))
        if workers > 1:
            # the longest models first (rows times rounds), so that no core waits alone for a long one at the end
            def cost(i: int) -> int:
                binary = self.binary_[tasks[i].component]
                return tasks[i].rows.size * (int(self.n_estimators) + self._effect_rounds(binary))

            order = sorted(range(len(tasks)), key=cost, reverse=True)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                done = dict(zip(order, pool.map(run, [tasks[i] for i in order]), strict=True))
            fitted = [done[i] for i in range(len(tasks))]
        else:
            fitted = [run(t) for t in tasks]
        self.models_: dict[str, list[ComponentLearner]] = {c: [] for c in self.components_}
        self.final_: dict[str, ComponentLearner] = {}
        for task, model in zip(tasks, fitted, strict=True):
            if task.fold < 0:
                self.final_[task.component] = model
            else:
                self.models_[task.component].append(model)
        self.oof_: dict[str, np.ndarray] = {}
        if folds > 1:
            oof = {c: np.zeros((n, self.n_actions_)) for c in self.components_}
            for f in range(folds):
                held = self.fold_ == f
                for c, value in self._predict_with({c: self.models_[c][f] for c in self.components_}, x[held]).items():
                    oof[c][held] = value
            self.oof_ = oof
        else:  # in-sample, hence optimistic: what a model without folds has
            self.oof_ = self._predict_with({c: self.models_[c][0] for c in self.components_}, x)
        self.training_digest_ = _table_digest(action, propensity)
        return self

    def training_predictions(self) -> dict[str, np.ndarray]:
        """Predicted components of the training rows for every action, (n, K) each: out-of-fold when
        cross-fitted (what off-policy evaluation of the training rows needs), in-sample otherwise."""
        self._check_fitted()
        if not getattr(self, "oof_", None):
            raise UsageError("this model holds no predictions of its training rows (it was loaded from files): "
                             "predict the table with `predict_outcomes`")
        return self.oof_

    # ------------------------------------------------------------------ predictions
    def _check_fitted(self) -> None:
        if not hasattr(self, "models_"):
            raise UsageError("this OutcomeModel is not fitted yet: call `fit(table, spec)` first")

    def _actions(self) -> np.ndarray:
        """The encoded actions a part predicts under: (K, a) for the S-learner, (K, 0) for the T-learner."""
        k = self.n_actions_
        return self.spec_.action_space.encode(np.arange(k)) if self.learner == "s" else np.zeros((k, 0))

    def _compile(self, kind: Literal["final", "folds"], needed: tuple[str, ...]) -> CompiledModel | None:
        """The compiled models refitted on every row (``final``) or of the folds, of the ``needed``
        components alone, compiled once per model and subset."""
        cache: dict[str, CompiledModel | None] = self.__dict__.setdefault("_compiled", {})
        key = kind if needed == self.components_ else f"{kind}:{','.join(needed)}"
        if key not in cache:
            parts = {c: [self.final_[c]] for c in needed} if kind == "final" else {c: self.models_[c] for c in needed}
            cache[key] = CompiledModel.compile(self.spec_, parts, n_context=len(self.encoder_.names),
                                               with_actions=self.learner == "s", zero_actions=self.zero_actions_)
        return cache[key]

    def compiled(self) -> CompiledModel | None:
        """The compiled form of what :meth:`predict_outcomes` predicts with (the models refitted on every
        row when there are any, else the fold models); ``None`` when a part cannot be compiled."""
        self._check_fitted()
        return self._compile("final" if self.final_ else "folds", self.components_)

    def predict_outcomes(self, contexts: pd.DataFrame | Mapping[str, Any], *, return_std: bool = False,
                         engine: Literal["compiled", "parts"] = "compiled", components: Sequence[str] | None = None) -> Any:
        """Expected value of each component for every (unit, action): dict of (n, K) arrays.

        The expectation comes from the models refitted on every row when there are any (``final_``),
        else from the mean of the fold models. With ``return_std``, also the spread of the cross-fitted
        models per (unit, action) (zeros without cross-fitting), as a second dict. ``engine`` "compiled"
        evaluates the trees in compiled parallel code when every part is LightGBM or a constant (the
        same figures to 1e-12), "parts" with each part's own ``predict``. ``components`` predicts those
        alone (default: all), with the same figures: only their models and those of the components they
        are ``given`` are evaluated (a budget's cost needs a third of the trees of the NBOO spec).
        """
        self._check_fitted()
        if engine not in ("compiled", "parts"):
            raise UsageError(f"`engine` must be 'compiled' or 'parts', got {engine!r}")
        needed = self._needed(components)
        wanted = frozenset(needed if components is None else components)
        asked = tuple(c for c in needed if c in wanted)
        if not needed:
            return ({}, {}) if return_std else {}
        x = self.encoder_.transform(contexts)
        refitted = None
        if self.final_:
            compiled = self._compile("final", needed) if engine == "compiled" else None
            refitted = (compiled.predict(x, num_threads=self.num_threads) if compiled is not None
                        else self._predict_with({c: self.final_[c] for c in needed}, x, engine=engine))
        if refitted is not None and not return_std:
            return {c: refitted[c] for c in asked}
        per_fold = self._per_fold(x, engine, needed)
        means = refitted if refitted is not None else _mean(per_fold)
        if not return_std:
            return {c: means[c] for c in asked}
        stds = {c: np.std([p[c] for p in per_fold], axis=0, ddof=1) if len(per_fold) > 1 else np.zeros_like(means[c])
                for c in asked}
        return {c: means[c] for c in asked}, stds

    def _needed(self, components: Sequence[str] | None) -> tuple[str, ...]:
        """``components`` and the components they are given by, in the model's order (all by default)."""
        if components is None:
            return self.components_
        if isinstance(components, str):
            raise UsageError(f"`components` must be a sequence of component names, got the string {components!r}")
        unknown = sorted(set(components) - set(self.components_))
        if unknown:
            raise UsageError(f"`components` must be among the model's {list(self.components_)}, got {unknown}")
        needed: set[str] = set()
        for comp in components:
            current: str | None = comp
            while current is not None and current not in needed:
                needed.add(current)
                current = self.spec_.model.outcomes[current].given
        return tuple(c for c in self.components_ if c in needed)

    def predict_folds(self, contexts: pd.DataFrame | Mapping[str, Any], *,
                      engine: Literal["compiled", "parts"] = "compiled") -> list[dict[str, np.ndarray]]:
        """Each cross-fitted model's components for every (unit, action): one dict of (n, K) arrays per
        fold. The spread of any formula of the components across them is that formula's uncertainty."""
        self._check_fitted()
        return self._per_fold(self.encoder_.transform(contexts), engine, self.components_)

    def _per_fold(self, x: np.ndarray, engine: str, needed: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
        compiled = self._compile("folds", needed) if engine == "compiled" else None
        if compiled is not None:
            return compiled.predict_folds(x, num_threads=self.num_threads)
        folds = len(next(iter(self.models_.values())))
        return [self._predict_with({c: self.models_[c][f] for c in needed}, x, engine="parts") for f in range(folds)]

    def _predict_with(self, models: Mapping[str, ComponentLearner], x: np.ndarray, *, engine: str = "compiled") -> dict[str, np.ndarray]:
        """The composed components of encoded contexts ``x`` predicted by one model per component (each
        component's gate among them)."""
        if engine == "compiled":
            compiled = CompiledModel.compile(self.spec_, {c: [models[c]] for c in models}, n_context=x.shape[1],
                                             with_actions=self.learner == "s", zero_actions=self.zero_actions_)
            if compiled is not None:
                return compiled.predict(x, num_threads=self.num_threads)
        actions = self._actions()
        raw = {c: models[c].predict_actions(x, actions, self.num_threads) for c in models}
        return self._compose({c: self._finish(v, c) for c, v in raw.items()})

    def _finish(self, out: np.ndarray, comp: str) -> np.ndarray:
        out = self._enforce_monotone(out, comp)
        return np.clip(out, 0.0, 1.0) if self.binary_[comp] else out

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

        for comp in raw:
            full(comp)
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
    def pseudo_outcomes(self, table: pd.DataFrame, component: str | None = None) -> np.ndarray:
        """Doubly robust pseudo-outcomes of the rows of ``table`` (logged actions, propensities, outcomes
        and contexts) for ``component`` (default: the objective); shape (n, K). Unbiased for each action's
        mean when the logged propensities are right. On the model's own training table the reward model
        is its out-of-fold predictions; on any other table, its predictions of that table."""
        self._check_fitted()
        action = self._check_table(table, self.spec_)
        propensity = table["propensity"].to_numpy(dtype=np.float64)
        n = action.size
        own = bool(getattr(self, "oof_", None)) and _table_digest(action, propensity) == getattr(self, "training_digest_", None)
        predictions = self.oof_ if own else self.predict_outcomes(table)
        contexts = {c: table[c].to_numpy() for c in self.spec_.features if c in table}
        if component is None:
            mu = self.objective_of(predictions, contexts)
            observed = {c: table[c].to_numpy(dtype=np.float64)[:, None] for c in self.components_}
            y = np.asarray(formula_on(self.spec_, self.spec_.objective, observed, contexts, lever_index=action),
                           dtype=np.float64).reshape(n)
        else:
            if component not in predictions:
                raise UsageError(f"`component` must be one of {list(self.components_)}, got {component!r}")
            mu, y = predictions[component], table[component].to_numpy(dtype=np.float64)
        return dr_pseudo_outcomes(y, action, propensity, mu)

    def effect_interval(self, table: pd.DataFrame, *, by: str | None = None, alpha: float = 0.05,
                        cluster: Any = None) -> pd.DataFrame:
        """Average effect of each action versus control on the objective over the rows of ``table``, from
        the doubly robust pseudo-outcomes, with a normal (1 - alpha) interval; per cohort ``by`` when given.
        ``cluster`` (n,), the unit of each row (its ``unit_id``), makes the interval cluster-robust: one
        unit's decisions are not independent (:mod:`drivetrain.stats`)."""
        if not 0 < alpha < 1:
            raise UsageError(f"`alpha` must be in (0, 1), got {alpha!r}")
        if by is not None and (by not in self.spec_.features or by not in table):
            raise UsageError(f"`by` must be a context feature of the training table, got {by!r}")
        gamma = self.pseudo_outcomes(table)
        codes = None if cluster is None else cluster_codes(cluster, gamma.shape[0], "the training table")
        control = self.spec_.control.index
        diff = gamma - gamma[:, [control]]
        from scipy import stats

        z = float(stats.norm.ppf(1 - alpha / 2))
        groups = {"all": np.ones(diff.shape[0], dtype=bool)} if by is None else {
            str(v): np.asarray(table[by].to_numpy() == v) for v in pd.unique(table[by])}
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

    # ------------------------------------------------------------------ files
    def to_files(self, directory: str | Path) -> dict[str, Any]:
        """Write the fitted models under ``directory/models`` as LightGBM text and JSON (never pickle) and
        return the JSON entry :meth:`from_files` rebuilds the model from. Out-of-fold predictions of the
        training rows are not written: a loaded model predicts tables."""
        self._check_fitted()
        directory = Path(directory)
        (directory / "models").mkdir(parents=True, exist_ok=True)
        return {
            "learner": self.learner,
            "params": {name: getattr(self, name) for name in SAVED_PARAMS},
            "encoder": self.encoder_.to_json(),
            "components": list(self.components_),
            "models": {c: [m.to_files(directory, f"models/{c}-f{f}") for f, m in enumerate(folds)] for c, folds in self.models_.items()},
            "final": {c: m.to_files(directory, f"models/{c}-all") for c, m in self.final_.items()},
            "zero_actions": {c: list(v) for c, v in self.zero_actions_.items()},
        }

    @classmethod
    def from_files(cls, directory: str | Path, entry: Mapping[str, Any], spec: Spec) -> OutcomeModel:
        """The model :meth:`to_files` wrote to ``directory`` with ``entry``, for ``spec`` (whose hash the
        caller has checked)."""
        directory = Path(directory)
        try:
            params = {k: v for k, v in dict(entry.get("params", {})).items() if k in SAVED_PARAMS}
            model = cls(**{**params, "learner": entry["learner"]})
            model.spec_ = spec
            model.encoder_ = FeatureEncoder.from_json(entry["encoder"])
            model.n_actions_ = len(spec.action_space)
            model.components_ = tuple(entry["components"])
            unknown = [c for c in model.components_ if c not in spec.model.outcomes]
            if unknown:
                raise ArtifactError(f"the saved model's components must be outcomes of the spec {list(spec.outcomes)}, got {unknown}")
            model.binary_ = {c: spec.model.outcomes[c].type == "binary" for c in model.components_}
            model.zero_actions_ = {c: [int(k) for k in v] for c, v in entry.get("zero_actions", {}).items()}
            model.models_ = {c: [read_learner(directory, e) for e in folds] for c, folds in entry["models"].items()}
            model.final_ = {c: read_learner(directory, e) for c, e in entry.get("final", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"policy.json must describe the model as a policy writes it, got unreadable content ({exc!r})") from None
        model.oof_ = {}
        model._compiled = {}
        return model


def _mean(per_fold: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {c: np.mean([p[c] for p in per_fold], axis=0) for c in per_fold[0]}


class _Fitter:
    """Fits the component models of one training table. The LightGBM Datasets of the context and of the
    (context, action) design are binned once, on every row; each model trains on a subset of their rows
    with its own labels, weights and initial scores (docs/decisions.md: where the fit's time went)."""

    def __init__(self, owner: OutcomeModel, x: np.ndarray, action: np.ndarray,
                 targets: Mapping[str, tuple[np.ndarray, np.ndarray | None]]) -> None:
        self.owner = owner
        self.x = x
        self.action = action
        self.targets = targets
        self.d = x.shape[1]
        self.design = np.column_stack([x, owner.spec_.action_space.encode(action)]) if owner.learner == "s" else x
        self._datasets: dict[str, lgb.Dataset] = {}
        self._lock = threading.Lock()

    def _reference(self, which: str) -> lgb.Dataset:
        import lightgbm as lgb

        with self._lock:
            if which not in self._datasets:
                data = self.x if which == "context" else self.design
                categorical: list[int] | Literal["auto"] = self.owner.encoder_.categorical_indices or "auto"
                self._datasets[which] = lgb.Dataset(data, label=np.zeros(len(data)), categorical_feature=categorical,
                                                    params=self.owner._lgbm_params("regression"), free_raw_data=False).construct()
            return self._datasets[which]

    def _data(self, which: str, rows: np.ndarray, y: np.ndarray, weight: np.ndarray | None,
              init: np.ndarray | None = None) -> lgb.Dataset:
        data = self._reference(which).subset(rows.tolist()).construct()
        data.set_label(y)
        if weight is not None:
            data.set_weight(weight)
        if init is not None:
            data.set_init_score(init)
        return data

    def fit(self, task: _Task) -> ComponentLearner:
        owner = self.owner
        y, weight = self.targets[task.component]
        binary = owner.binary_[task.component]
        rows = task.rows
        if owner.learner == "s":
            return self._fit_one(rows, y[rows], binary, None if weight is None else weight[rows], two_stage=True)
        return PerAction([
            self._fit_one(rows[self.action[rows] == k], y[rows][self.action[rows] == k], binary,
                          None if weight is None else weight[rows][self.action[rows] == k], two_stage=False)
            for k in range(owner.n_actions_)
        ])

    def _fit_one(self, rows: np.ndarray, y: np.ndarray, binary: bool, weight: np.ndarray | None, *, two_stage: bool) -> ComponentLearner:
        owner = self.owner
        if y.size == 0:
            return Constant(0.0)
        if np.all(y == y[0]):
            return Constant(float(y[0]))
        custom = owner.classifier if binary else owner.regressor
        if custom is not None:
            from sklearn.base import clone

            model = clone(custom)
            design = np.nan_to_num(self.design[rows] if two_stage else self.x[rows], nan=-1.0)
            proba = binary and hasattr(model, "predict_proba")
            model.fit(design, (y > 0.5).astype(int) if proba else y, sample_weight=weight)
            return Estimator(model, binary=binary, with_actions=two_stage)
        # a positive continuous outcome (a basket, a cost) moves by a factor under an offer: one split on
        # the action on the log scale, an interaction with every context split on the identity scale
        log = not binary and owner.log_link and bool(np.all(y > 0))
        params = owner._lgbm_params("cross_entropy" if binary else "gamma" if log else "regression")
        import lightgbm as lgb

        if not two_stage:
            return Boosted(frozen(lgb.train(params, self._data("context", rows, y, weight), num_boost_round=owner.n_estimators,
                                            keep_training_booster=True)))
        base = lgb.train(params, self._data("context", rows, y, weight), num_boost_round=owner.n_estimators,
                         keep_training_booster=True)
        init = _training_raw_score(base, str(params["objective"]))
        if init is None:  # a score at the link's edge: predict the rows again
            init = np.asarray(base.predict(self.x[rows], raw_score=True, num_threads=1), dtype=np.float64)
        base_trees = frozen(base)
        effect = lgb.train(params, self._data("design", rows, y, weight, init), num_boost_round=owner._effect_rounds(binary),
                           keep_training_booster=True)
        return TwoStage(base_trees, frozen(effect), self.d, binary)


def _training_raw_score(booster: lgb.Booster, objective: str) -> np.ndarray | None:
    """The raw score of a booster still holding its training rows, as LightGBM kept it while boosting
    (``eval_train`` hands it through the objective's link, undone here): no second pass through the trees.
    ``None`` when a value sits where the link cannot be undone (a probability of exactly 0 or 1)."""
    captured: list[np.ndarray] = []

    def keep(preds: np.ndarray, data: lgb.Dataset) -> tuple[str, float, bool]:
        captured.append(np.array(preds, dtype=np.float64))
        return "kept", 0.0, False

    booster.eval_train(keep)
    value = captured[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        if objective in ("cross_entropy", "binary"):
            raw = np.log(value) - np.log1p(-value)
        elif objective in LOG_LINK_OBJECTIVES:
            raw = np.log(value)
        else:
            raw = value
    return raw if bool(np.all(np.isfinite(raw))) else None
