"""One context's predicted components in microseconds: the serving form of an :class:`OutcomeModel`.

``OutcomeModel.predict_outcomes`` is built for batches (pandas in, LightGBM per fold and component).
For one context at a time, :class:`CompiledModel` evaluates every tree of every fold and component in a
single call of a compiled :class:`~drivetrain.model._forest.Forest`, then applies the same steps in
NumPy: the link, the monotone running max, the clip, the two-part composition, structural zeros and the
mean over folds. A model refitted on every row is compiled alone, as ``predict_outcomes`` uses it alone.
``tests/model/test_forest.py`` checks it equals ``predict_outcomes``.

Models it cannot compile (scikit-learn estimators) make :meth:`CompiledModel.of` return ``None``; the
caller then uses the batch path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numba
import numpy as np

from drivetrain.model._forest import BROADCAST, EVERY, ROW, Forest, ForestBuilder
from drivetrain.model._modeler import OutcomeModel, _Constant, _TwoStage

__all__ = ["CompiledModel"]

#: Link of a plain booster's objective: 0 identity, 1 logistic, 2 exp (log-link objectives).
_LINKS = {"regression": 0, "cross_entropy": 1, "binary": 1, "gamma": 2, "poisson": 2, "tweedie": 2}


@dataclass(frozen=True)
class CompiledModel:
    """Predicts the components of one encoded context for every action: ``predict_row(x) -> {comp: (1, K)}``."""

    components: tuple[str, ...]
    n_folds: int
    forest: Forest
    link: np.ndarray          # (C*F,) int: a slot's raw score goes through 0 identity, 1 logistic, 2 exp
    constant: np.ndarray      # (C*F,) float: value added to a slot (constant models)
    binary: np.ndarray        # (C,) bool: clip to [0, 1]
    mono_component: np.ndarray   # (M,) component of each monotone chain
    mono_order: np.ndarray       # (M, L) actions of the chain, in lever order (padded)
    mono_length: np.ndarray      # (M,) length of each chain
    mono_increasing: np.ndarray  # (M,) bool
    gate_pairs: np.ndarray       # (G, 2): (component, its gate), gates first
    zeros: np.ndarray            # (K, C) bool: structural zeros

    @classmethod
    def of(cls, model: OutcomeModel) -> CompiledModel | None:
        """Compile a fitted model; ``None`` when one of its parts is not a LightGBM model or constant."""
        spec = model.spec_
        space = spec.action_space
        k = len(space)
        comps = tuple(model.components_)
        # the models refitted on every row are what predict_outcomes uses, when there are any
        models = {c: [model.final_[c]] for c in comps} if model.final_ else model.models_
        folds = len(models[comps[0]])
        actions = space.encode(np.arange(k)) if model.learner == "s" else np.zeros((k, 0))
        builder = ForestBuilder(len(model.encoder_.names), actions)
        link = np.zeros(len(comps) * folds, dtype=np.int64)
        constant = np.zeros(len(comps) * folds)
        for c, comp in enumerate(comps):
            for f, part in enumerate(models[comp]):
                s = builder.slot()
                assert s == c * folds + f
                pieces = part if isinstance(part, list) else [part]
                if model.learner == "s" and isinstance(part, list):
                    return None
                for j, piece in enumerate(pieces):
                    mode, row = (ROW, j) if isinstance(part, list) else (EVERY, -1)
                    if isinstance(piece, _TwoStage):
                        if mode == ROW:
                            return None
                        builder.add(piece.base.model_to_string(), s, mode=BROADCAST)
                        builder.add(piece.effect.model_to_string(), s, mode=EVERY)
                        link[s] = 1 if piece.binary else 2 if getattr(piece, "log_link", False) else 0
                    elif isinstance(piece, lgb.Booster):
                        objective = str(piece.params.get("objective", "")) or _objective(piece)
                        if objective not in _LINKS:
                            return None
                        builder.add(piece.model_to_string(), s, mode=mode, row=row)
                        link[s] = _LINKS[objective]
                    elif isinstance(piece, _Constant):
                        if mode == ROW:
                            return None
                        constant[s] += piece.value
                    else:
                        return None
        if any(isinstance(p, list) and any(not isinstance(q, lgb.Booster) for q in p) for ps in models.values() for p in ps):
            return None
        monotone = []
        cols = space.lever_columns()
        for c, comp in enumerate(comps):
            for lever in space.levers:
                direction = spec.model.levers[lever].monotone.get(comp)
                if direction is None:
                    continue
                others = [lv for lv in space.levers if lv != lever]
                groups: dict[tuple[str, ...], list[int]] = {}
                for j in range(k):
                    groups.setdefault(tuple(str(cols[o][j]) for o in others), []).append(j)
                for members in groups.values():
                    if len(members) > 1:
                        monotone.append((c, sorted(members, key=lambda j: float(cols[lever][j])), direction == "increasing"))
        gates: list[tuple[int, int]] = []
        done: set[str] = set()

        def visit(comp: str) -> None:
            if comp in done:
                return
            gate = spec.model.outcomes[comp].given
            if gate is not None:
                visit(gate)
                gates.append((comps.index(comp), comps.index(gate)))
            done.add(comp)

        for comp in comps:
            visit(comp)
        zeros = np.zeros((k, len(comps)), dtype=bool)
        for c, comp in enumerate(comps):
            zeros[model.zero_actions_.get(comp, []), c] = True
        width = max((len(o) for _, o, _ in monotone), default=1)
        order = np.zeros((len(monotone), width), dtype=np.int64)
        for m, (_, o, _) in enumerate(monotone):
            order[m, : len(o)] = o
        return cls(comps, folds, builder.build(), link, constant, np.array([model.binary_[c] for c in comps]),
                   np.array([c for c, _, _ in monotone], dtype=np.int64), order,
                   np.array([len(o) for _, o, _ in monotone], dtype=np.int64),
                   np.array([inc for _, _, inc in monotone], dtype=np.bool_),
                   np.array(gates, dtype=np.int64).reshape(-1, 2), zeros)

    def predict_row(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Expected value of each component for every action, for one encoded context ``x`` (d,)."""
        raw = self.forest.raw(x)
        mean = np.empty((raw.shape[0], len(self.components)))
        _finish(raw, self.constant, self.link, self.binary, self.n_folds, self.mono_component, self.mono_order,
                self.mono_length, self.mono_increasing, self.gate_pairs, self.zeros, mean)
        return {comp: mean[None, :, c] for c, comp in enumerate(self.components)}


@numba.njit(cache=True, nogil=True)
def _finish(raw: np.ndarray, constant: np.ndarray, link: np.ndarray, binary: np.ndarray, folds: int,
            mono_component: np.ndarray, mono_order: np.ndarray, mono_length: np.ndarray, mono_increasing: np.ndarray,
            gates: np.ndarray, zeros: np.ndarray, mean: np.ndarray) -> None:
    """The link, the monotone running max, the clip, structural zeros, the two-part products and the
    mean over folds (what ``OutcomeModel.predict_outcomes`` does in NumPy), on raw (K, C*F) scores."""
    k, n_comp = mean.shape
    value = np.empty((k, n_comp, folds))
    for r in range(k):
        for c in range(n_comp):
            for f in range(folds):
                s = c * folds + f
                v = raw[r, s] + constant[s]
                value[r, c, f] = 1.0 / (1.0 + np.exp(-v)) if link[s] == 1 else np.exp(v) if link[s] == 2 else v
    for m in range(mono_component.shape[0]):
        c = mono_component[m]
        for f in range(folds):
            best = value[mono_order[m, 0], c, f]
            for i in range(1, mono_length[m]):
                j = mono_order[m, i]
                if mono_increasing[m]:
                    best = max(best, value[j, c, f])
                else:
                    best = min(best, value[j, c, f])
                value[j, c, f] = best
    for r in range(k):
        for c in range(n_comp):
            for f in range(folds):
                if binary[c]:
                    value[r, c, f] = min(max(value[r, c, f], 0.0), 1.0)
                if zeros[r, c]:
                    value[r, c, f] = 0.0
    for g in range(gates.shape[0]):
        c, gate = gates[g, 0], gates[g, 1]
        for r in range(k):
            for f in range(folds):
                value[r, c, f] = 0.0 if zeros[r, c] else value[r, c, f] * value[r, gate, f]
    for r in range(k):
        for c in range(n_comp):
            total = 0.0
            for f in range(folds):
                total += value[r, c, f]
            mean[r, c] = total / folds


def _objective(booster: Any) -> str:
    for line in booster.model_to_string().splitlines()[:20]:
        if line.startswith("objective="):
            return line.split("=", 1)[1].split()[0]
    return ""
