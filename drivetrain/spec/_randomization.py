"""Randomization rules shared by the serving system, the twin's logger and the store's checks.

Holdout membership is ``hash(salt, unit_id) < holdout_share``: stable across policy versions, reloads and
restarts, and independent of everything else about the unit. The logged propensity is the probability
that the whole serving system picks the logged action for that context (docs/architecture.md, Randomization)::

    h * [a = control] + (1 - h) * pi(a | x)

where ``pi`` is the policy's own distribution, e.g. ``eps / K + (1 - eps) * [a = chosen]``. A decision the
policy could not make (a broken context, a model error, over the latency budget) still keeps its arm: a
held-out unit gets control and every other unit the fallback, so ``pi`` is then ``[a = fallback]``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

__all__ = ["failed_propensity", "holdout_draw", "in_holdout", "serving_propensity"]

_SCALE = float(2**64)


def holdout_draw(salt: str, unit_ids: Iterable[object]) -> np.ndarray:
    """A uniform number in [0, 1) per unit, a pure function of (salt, unit_id); shape (n,)."""
    prefix = salt.encode() + b"\x1f"
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(prefix + str(u).encode(), digest_size=8).digest(), "big") / _SCALE for u in unit_ids),
        dtype=np.float64,
    )


def in_holdout(salt: str, unit_ids: Iterable[object], share: float) -> np.ndarray:
    """Holdout membership per unit; shape (n,) bool."""
    return holdout_draw(salt, unit_ids) < share


def serving_propensity(policy_probability: np.ndarray, is_control: np.ndarray, holdout_share: float) -> np.ndarray:
    """Propensity of the logged action under holdout + policy; inputs and output shape (n,)."""
    return holdout_share * np.asarray(is_control, dtype=np.float64) + (1.0 - holdout_share) * np.asarray(policy_probability)


def failed_propensity(action: np.ndarray, fallback: int, control: int, holdout_share: float) -> np.ndarray:
    """Propensity of the logged ``action`` (n,) of decisions the policy could not make: the holdout's
    control or everyone else's fallback, ``h [a = control] + (1 - h) [a = fallback]``; shape (n,)."""
    a = np.asarray(action)
    return serving_propensity((a == fallback).astype(np.float64), a == control, holdout_share)
