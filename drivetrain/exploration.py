"""How a policy explores: which action a request gets when its exploration draw says explore.

A request explores with probability ``eps`` (the spec's ``experimentation.exploration_rate``), drawn from
a hash of its request id; what it then gets is drawn, from a second hash of the request id, from a
distribution ``q_i`` over the unit's eligible actions that depends only on the unit's priced scores:

* ``uniform`` (the default): ``q_ia = 1 / K_i`` on the K_i eligible actions;
* ``directed``: a Thompson-style draw that spends exploration where the model cannot tell the actions
  apart and the possible gain is large. Each eligible action's chance of being the best is approximated
  by ``w_ia = Phi((s_ia - s_ib) / sigma_i)``, with ``b`` the best-scored action and ``sigma_i`` the
  unit's uncertainty: ``DIRECTED_SCALE`` times the standard deviation of its eligible scores (an action
  far below the best, in units of how far apart the unit's actions are, is rarely drawn; one close to it
  often). A share ``floor`` of the exploration stays uniform so that every eligible action keeps a
  propensity of at least ``eps * floor / K_i`` (off-policy estimates need it):
  ``q_i = floor / K_i + (1 - floor) w_i / sum(w_i)``.

Both are functions of the unit's row alone, so the logged propensity ``h [a = control] + (1 - h) (eps
q_ia + (1 - eps) pi_ia)`` is the exact probability of the logged action, and the same for any batch.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from drivetrain.errors import UsageError

__all__ = ["DIRECTED_SCALE", "EXPLORATIONS", "exploration_distribution", "pick"]

#: The exploration rules a spec may name (``experimentation.exploration``).
EXPLORATIONS = ("uniform", "directed")
#: The directed rule's uncertainty, as a multiple of the standard deviation of a unit's eligible scores.
DIRECTED_SCALE = 0.5


def exploration_distribution(scores: np.ndarray, *, rule: str = "uniform", floor: float = 1.0) -> np.ndarray:
    """``q`` (n, K): the probability of each action given that a request explores, from the priced
    ``scores`` (n, K; ``-inf`` where an action is not eligible). Each row sums to 1 over its eligible
    actions (a row with no eligible action is all zero)."""
    if rule not in EXPLORATIONS:
        raise UsageError(f"`exploration` must be one of {list(EXPLORATIONS)}, got {rule!r}")
    if not 0.0 <= floor <= 1.0:
        raise UsageError(f"`exploration_floor` must be in [0, 1], got {floor}")
    finite = np.isfinite(scores)
    k = finite.sum(axis=1, keepdims=True)
    uniform = np.divide(finite, k, out=np.zeros(scores.shape), where=k > 0)
    if rule == "uniform" or floor == 1.0:
        return uniform
    safe = np.where(finite, scores, 0.0)
    best = np.max(np.where(finite, scores, -np.inf), axis=1, keepdims=True)
    mean = safe.sum(axis=1, keepdims=True) / np.maximum(k, 1)
    spread = np.sqrt((np.where(finite, safe - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / np.maximum(k, 1))
    sigma = DIRECTED_SCALE * spread
    gap = np.where(finite, safe - np.where(np.isfinite(best), best, 0.0), 0.0)  # <= 0
    ratio = np.divide(gap, sigma, out=np.zeros(scores.shape), where=sigma > 0)
    # a unit whose actions all score the same (sigma 0) has nothing to direct by: uniform
    weight = np.where(finite, np.where(sigma > 0, ndtr(ratio), 1.0), 0.0)
    directed = weight / np.maximum(weight.sum(axis=1, keepdims=True), np.finfo(float).tiny)
    return floor * uniform + (1.0 - floor) * directed


def pick(q: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The action each row gets for a uniform ``draws`` (n,) in [0, 1): the inverse of ``q``'s cumulative
    distribution, so that action a is picked for a share ``q_ia`` of the draws. A draw above the last
    cumulative sum (rounding) gets the row's last action with a positive probability."""
    cumulative = np.cumsum(q, axis=1)
    index = np.argmax(cumulative > draws[:, None], axis=1)
    positive = q > 0
    last = q.shape[1] - 1 - np.argmax(positive[:, ::-1], axis=1)
    beyond = ~(cumulative > draws[:, None]).any(axis=1)
    return np.where(beyond, last, index)
