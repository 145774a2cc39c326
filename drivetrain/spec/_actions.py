"""The action space: every valid combination of lever values, with a stable id and an encoding.

An action's id is its lever values joined by ``-`` in the order the levers are declared
(``discount-10-immediate``); it is what logs carry, so it does not change when actions are added.
The integer index is the position in the Cartesian product of the lever values, kept only if every
action rule holds; arrays of per-action quantities have shape (n_units, n_actions) in that order.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from drivetrain.errors import SpecError
from drivetrain.spec._formula import Formula

__all__ = ["Action", "ActionSpace"]


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class Action:
    index: int
    id: str
    values: Mapping[str, Any]


@dataclass(frozen=True)
class ActionSpace:
    """Valid lever combinations. ``lever_kinds`` maps lever name to ``categorical`` or ``numeric``."""

    lever_values: Mapping[str, tuple[Any, ...]]
    lever_kinds: Mapping[str, str]
    actions: tuple[Action, ...]

    @classmethod
    def build(
        cls,
        lever_values: Mapping[str, Sequence[Any]],
        lever_kinds: Mapping[str, str],
        rules: Sequence[Formula] = (),
    ) -> ActionSpace:
        names = list(lever_values)
        combos = list(itertools.product(*(lever_values[n] for n in names)))
        columns = {n: np.array([c[i] for c in combos], dtype=object) for i, n in enumerate(names)}
        keep = np.ones(len(combos), dtype=bool)
        for rule in rules:
            keep &= np.asarray(rule(columns), dtype=bool)
        actions = tuple(
            Action(index=j, id="-".join(_fmt(v) for v in combo), values=dict(zip(names, combo, strict=True)))
            for j, combo in enumerate(c for c, k in zip(combos, keep, strict=True) if k)
        )
        if not actions:
            raise SpecError("`action_rules` must leave at least one valid action, got none")
        ids = [a.id for a in actions]
        if len(set(ids)) != len(ids):
            raise SpecError(f"`levers` must give distinct action ids, got duplicates in {ids}")
        return cls(
            lever_values={n: tuple(lever_values[n]) for n in names},
            lever_kinds=dict(lever_kinds),
            actions=actions,
        )

    @property
    def levers(self) -> tuple[str, ...]:
        return tuple(self.lever_values)

    @cached_property
    def ids(self) -> tuple[str, ...]:
        return tuple(a.id for a in self.actions)

    @cached_property
    def id_array(self) -> np.ndarray:
        """The ids as a read-only object array (K,), to index by action."""
        ids = np.array(self.ids, dtype=object)
        ids.setflags(write=False)
        return ids

    def __len__(self) -> int:
        return len(self.actions)

    def index_of(self, action_id: str) -> int:
        for a in self.actions:
            if a.id == action_id:
                return a.index
        raise SpecError(f"action id must be one of {list(self.ids)}, got {action_id!r}")

    def find(self, values: Mapping[str, Any]) -> Action | None:
        """The action whose lever values equal ``values`` (numeric levers compared as numbers)."""
        for a in self.actions:
            if all(_same(a.values[n], values.get(n)) for n in self.levers):
                return a
        return None

    def indices(self, action_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Index of each id, ``-1`` for ids that are not actions; shape (n,)."""
        lookup = {a.id: a.index for a in self.actions}
        return np.array([lookup.get(str(x), -1) for x in np.asarray(action_ids, dtype=object)], dtype=np.int64)

    def lever_columns(self, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Lever values per action (shape (K,), read-only) or per given action index (shape (n,))."""
        if indices is None:
            return dict(self._columns)
        index = np.asarray(indices)
        return {name: col[index] for name, col in self._columns.items()}

    @cached_property
    def _columns(self) -> dict[str, np.ndarray]:
        """The per-action lever columns, built once (every priced request reads them)."""
        out: dict[str, np.ndarray] = {}
        for name in self.levers:
            col = np.array([a.values[name] for a in self.actions])
            col = col.astype(np.float64) if self.lever_kinds[name] == "numeric" else col.astype(object)
            col.setflags(write=False)
            out[name] = col
        return out

    def select(self, selector: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """Boolean mask (K,) of the actions whose levers take one of the listed values."""
        mask = np.ones(len(self.actions), dtype=bool)
        for name, allowed in selector.items():
            mask &= np.array([any(_same(a.values[name], v) for v in allowed) for a in self.actions])
        return mask

    def encoding_names(self) -> list[str]:
        names: list[str] = []
        for lever in self.levers:
            if self.lever_kinds[lever] == "numeric":
                names.append(lever)
            else:
                names.extend(f"{lever}={_fmt(v)}" for v in self.lever_values[lever])
        return names

    def encode(self, indices: np.ndarray) -> np.ndarray:
        """Model encoding of actions: numeric levers as values, categorical ones one-hot; shape (n, d)."""
        table = np.zeros((len(self.actions), len(self.encoding_names())), dtype=np.float64)
        col = 0
        for lever in self.levers:
            if self.lever_kinds[lever] == "numeric":
                table[:, col] = [float(a.values[lever]) for a in self.actions]
                col += 1
            else:
                for v in self.lever_values[lever]:
                    table[:, col] = [float(_same(a.values[lever], v)) for a in self.actions]
                    col += 1
        return table[np.asarray(indices)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return float(a) == float(b)
    return str(a) == str(b)
