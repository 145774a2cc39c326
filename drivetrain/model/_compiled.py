"""Compiled outcome models: every tree of every fold and component evaluated in one native call.

``OutcomeModel`` predicts through this form whenever its parts are LightGBM models or constants: a
:class:`CompiledModel` evaluates the trees of a compiled :class:`~drivetrain.model._forest.Forest` (one
context at a time for the decision service, in parallel chunks for a batch), then applies the same steps
as the models' own ``predict`` in compiled code: the link, the monotone running max, the clip, the
two-part composition, structural zeros and the mean over folds. ``tests/model/test_forest.py`` checks it
equals LightGBM's ``Booster.predict`` to 1e-12.

Parts it cannot compile (scikit-learn estimators) make :meth:`CompiledModel.compile` return ``None``; the
caller then predicts with the parts themselves.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numba
import numpy as np

from drivetrain.model._forest import Forest, ForestBuilder, _threads
from drivetrain.model._learners import ComponentLearner
from drivetrain.spec import Spec

if TYPE_CHECKING:
    from drivetrain.model._modeler import OutcomeModel

__all__ = ["CompiledModel"]

#: Contexts evaluated per chunk of a batch: bounds the raw scores held at once (chunk x K x slots floats).
CHUNK = 16_384


@dataclass(frozen=True)
class CompiledModel:
    """Predicts the components of encoded contexts for every action: ``predict_row(x) -> {comp: (1, K)}``
    for one context, ``predict(x) -> {comp: (n, K)}`` and ``predict_folds(x)`` for a batch."""

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
        """Compile what a fitted model predicts with (the models refitted on every row when there are any,
        else the fold models); ``None`` when one of its parts cannot be compiled."""
        return model.compiled()

    @classmethod
    def compile(cls, spec: Spec, parts: Mapping[str, Sequence[ComponentLearner]], *, n_context: int, with_actions: bool,
                zero_actions: Mapping[str, Sequence[int]]) -> CompiledModel | None:
        """Compile one model per fold of each component (``parts``, the same number of folds each) over
        ``n_context`` encoded context columns, followed by the encoded action when ``with_actions``."""
        space = spec.action_space
        k = len(space)
        comps = tuple(parts)
        folds = len(parts[comps[0]])
        actions = space.encode(np.arange(k)) if with_actions else np.zeros((k, 0))
        builder = ForestBuilder(n_context, actions)
        link = np.zeros(len(comps) * folds, dtype=np.int64)
        constant = np.zeros(len(comps) * folds)
        for comp in comps:
            if len(parts[comp]) != folds:
                raise ValueError(f"every component must have {folds} fold models, got {len(parts[comp])} for {comp!r}")
            for part in parts[comp]:
                s = builder.slot()
                compiled = part.compile_into(builder, s)
                if compiled is None:
                    return None
                link[s], constant[s] = compiled
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
            zeros[list(zero_actions.get(comp, [])), c] = True
        width = max((len(o) for _, o, _ in monotone), default=1)
        order = np.zeros((len(monotone), width), dtype=np.int64)
        for m, (_, o, _) in enumerate(monotone):
            order[m, : len(o)] = o
        binary = np.array([spec.model.outcomes[c].type == "binary" for c in comps])
        return cls(comps, folds, builder.build(), link, constant, binary,
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

    def _chunks(self, x: np.ndarray, num_threads: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, each fold's components (m, K, C, F)) of successive chunks of encoded contexts."""
        k = self.forest.rows.shape[0]
        for lo in range(0, x.shape[0], CHUNK):
            raw = self.forest.raw_batch(x[lo: lo + CHUNK], num_threads=num_threads)
            values = np.empty((raw.shape[0], k, len(self.components), self.n_folds))
            with _threads(num_threads):
                _values_batch(raw, self.constant, self.link, self.binary, self.n_folds, self.mono_component, self.mono_order,
                              self.mono_length, self.mono_increasing, self.gate_pairs, self.zeros, values)
            yield lo, values

    def predict(self, x: np.ndarray, *, num_threads: int = 1) -> dict[str, np.ndarray]:
        """Expected value of each component for every action (mean over folds) of encoded contexts ``x``
        (n, d): {comp: (n, K)}. Memory: the result plus one chunk of raw scores."""
        n, k = x.shape[0], self.forest.rows.shape[0]
        out = {comp: np.empty((n, k)) for comp in self.components}
        for lo, values in self._chunks(x, num_threads):
            mean = values[..., 0].copy()
            for f in range(1, self.n_folds):
                mean += values[..., f]
            if self.n_folds > 1:
                mean /= self.n_folds
            for c, comp in enumerate(self.components):
                out[comp][lo: lo + len(values)] = mean[:, :, c]
        return out

    def predict_folds(self, x: np.ndarray, *, num_threads: int = 1) -> list[dict[str, np.ndarray]]:
        """Each fold's components for every action: one {comp: (n, K)} per fold."""
        n, k = x.shape[0], self.forest.rows.shape[0]
        out = [{comp: np.empty((n, k)) for comp in self.components} for _ in range(self.n_folds)]
        for lo, values in self._chunks(x, num_threads):
            for f in range(self.n_folds):
                for c, comp in enumerate(self.components):
                    out[f][comp][lo: lo + len(values)] = values[:, :, c, f]
        return out


@numba.njit(cache=True, nogil=True)
def _values(raw: np.ndarray, constant: np.ndarray, link: np.ndarray, binary: np.ndarray, folds: int,
            mono_component: np.ndarray, mono_order: np.ndarray, mono_length: np.ndarray, mono_increasing: np.ndarray,
            gates: np.ndarray, zeros: np.ndarray, value: np.ndarray) -> None:
    """The link, the monotone running max, the clip, structural zeros and the two-part products (what
    ``OutcomeModel`` does in NumPy with its parts' predictions), on raw (K, C*F) scores: value (K, C, F)."""
    k, n_comp = value.shape[0], value.shape[1]
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


@numba.njit(cache=True, nogil=True, parallel=True)
def _values_batch(raw: np.ndarray, constant: np.ndarray, link: np.ndarray, binary: np.ndarray, folds: int,
                  mono_component: np.ndarray, mono_order: np.ndarray, mono_length: np.ndarray, mono_increasing: np.ndarray,
                  gates: np.ndarray, zeros: np.ndarray, value: np.ndarray) -> None:
    for i in numba.prange(raw.shape[0]):
        _values(raw[i], constant, link, binary, folds, mono_component, mono_order, mono_length, mono_increasing,
                gates, zeros, value[i])


@numba.njit(cache=True, nogil=True)
def _finish(raw: np.ndarray, constant: np.ndarray, link: np.ndarray, binary: np.ndarray, folds: int,
            mono_component: np.ndarray, mono_order: np.ndarray, mono_length: np.ndarray, mono_increasing: np.ndarray,
            gates: np.ndarray, zeros: np.ndarray, mean: np.ndarray) -> None:
    """:func:`_values` of one context, then the mean over folds: mean (K, C)."""
    k, n_comp = mean.shape
    value = np.empty((k, n_comp, folds))
    _values(raw, constant, link, binary, folds, mono_component, mono_order, mono_length, mono_increasing, gates, zeros, value)
    for r in range(k):
        for c in range(n_comp):
            total = 0.0
            for f in range(folds):
                total += value[r, c, f]
            mean[r, c] = total / folds
