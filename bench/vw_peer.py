"""Vowpal Wabbit's contextual bandit as a peer of the benches: ``--cb_explore_adf`` learned from the logged
decisions with their propensities, greedy at evaluation (the ``bench`` extra installs it).

The setup was chosen on the twin (seed 0, 100k logged users, 20k evaluated users, share of the oracle's gain
over control), giving the peer the better of each choice measured:

* the cost is the negated objective over its standard deviation (over its largest magnitude, the costs were
  so small that the learner barely moved: -0.36 against 0.07);
* each numeric feature enters as its decile (a one-hot bin per decile) rather than as its raw value, which a
  linear learner cannot bend: 0.07 against -0.32; categorical features as one-hot codes;
* one pass over the log in a shuffled order, learning rate 0.1 (VW's default 0.5: 0.07; 0.1: 0.36; 0.02: 0.27);
* each shared feature crossed with the action (``-q sa``); the default ``mtr`` reduction (``dr``: 0.07).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ARGS = "--cb_explore_adf --epsilon 0.0 --quiet -q sa -l 0.1"
DECILES = np.linspace(0.1, 0.9, 9)


@dataclass(frozen=True)
class VWFeatures:
    """How an encoded context row becomes VW's shared features: codes of the categorical columns, deciles of
    the others (edges from the training rows)."""

    categorical: tuple[int, ...]
    edges: dict[int, list[float]]

    @classmethod
    def fit(cls, x: np.ndarray, categorical: list[int]) -> VWFeatures:
        edges = {j: [float(e) for e in np.nanquantile(x[:, j], DECILES)] for j in range(x.shape[1])
                 if j not in categorical and np.isfinite(x[:, j]).any()}
        return cls(tuple(categorical), edges)

    def lines(self, x: np.ndarray) -> list[str]:
        """One ``shared |s ...`` line per row; a missing value adds no feature."""
        binned = {j: np.searchsorted(np.asarray(e), x[:, j]) for j, e in self.edges.items()}
        out = []
        for i, row in enumerate(x):
            parts = [f"c{j}_{int(v)}" if j in self.categorical else f"b{j}_{binned[j][i]}"
                     for j, v in enumerate(row) if np.isfinite(v) and (j in self.categorical or j in binned)]
            out.append("shared |s " + " ".join(parts))
        return out

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"categorical": list(self.categorical), "edges": {str(j): e for j, e in self.edges.items()}}))

    @classmethod
    def load(cls, path: Path) -> VWFeatures:
        raw = json.loads(path.read_text())
        return cls(tuple(raw["categorical"]), {int(j): e for j, e in raw["edges"].items()})


def arms(k: int) -> list[str]:
    return [f"|a a{j}" for j in range(k)]


def train(shared: list[str], action: np.ndarray, reward: np.ndarray, propensity: np.ndarray, k: int, seed: int,
          model_path: Path | None = None) -> Any:
    """A VW workspace learned from logged rows: ``shared`` lines, the logged ``action`` index, its ``reward``
    (higher is better) and logged ``propensity``; one pass in a seeded shuffled order."""
    import vowpalwabbit

    cost = -reward / (float(np.std(reward)) or 1.0)
    options = f"{ARGS} --random_seed {seed}" + (f" -f {model_path}" if model_path is not None else "")
    vw = vowpalwabbit.Workspace(options)
    actions = arms(k)
    for i in np.random.default_rng(seed).permutation(len(shared)):
        lines = [shared[i], *actions]
        lines[1 + action[i]] = f"0:{cost[i]:.6g}:{propensity[i]:.6g} {actions[action[i]]}"
        vw.learn(lines)
    return vw


def greedy(vw: Any, shared: list[str], eligible: np.ndarray) -> np.ndarray:
    """The action of highest probability for each row among its ``eligible`` (n, K) actions."""
    actions = arms(eligible.shape[1])
    choice = np.zeros(len(shared), dtype=np.int64)
    for i, line in enumerate(shared):
        allowed = np.flatnonzero(eligible[i])
        pmf = vw.predict([line, *(actions[j] for j in allowed)])  # the pmf follows the order of the actions given
        choice[i] = allowed[int(np.argmax(pmf))]
    return choice
