"""Randomization rules shared by the serving system, the twin's logger and the store's checks.

Holdout membership is ``hash(salt, unit_id) < holdout_share``: stable across policy versions, reloads and
restarts, and independent of everything else about the unit. The logged propensity is the probability
that the whole serving system picks the logged action for that context (docs/architecture.md, Randomization)::

    h * [a = control] + (1 - h) * pi(a | x)

where ``pi`` is the policy's own distribution, e.g. ``eps / K + (1 - eps) * [a = chosen]``. A decision the
policy could not make (a broken context, a model error, over the latency budget) still keeps its arm: a
held-out unit gets control and every other unit the fallback, so ``pi`` is then ``[a = fallback]``.

The hash is BLAKE2b (RFC 7693) with an 8-byte digest of ``salt + 0x1f + str(unit_id)`` in UTF-8, read as
a big-endian integer over 2**64. A batch of 2048 or more is hashed by a compiled implementation of the same function
(``tests/spec/test_randomization.py`` checks it against :mod:`hashlib` bit for bit), so a unit draws the
same number alone, in a batch, in the service and in the logger.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numba
import numpy as np

if TYPE_CHECKING:
    from drivetrain.spec._load import Spec

__all__ = ["canary_units", "failed_propensity", "holdout_draw", "in_holdout", "serving_propensity"]

_SCALE = float(2**64)
#: Units from which a batch is hashed by the compiled implementation rather than one by one by hashlib.
_BATCH = 2048
#: BLAKE2b's initialization vector and message schedule (RFC 7693, section 2.6 and 2.7).
_IV = np.array([0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
                0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179], dtype=np.uint64)
_SIGMA = np.array([
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0]], dtype=np.int64)


@numba.njit(cache=True, nogil=True, inline="always")
def _rotr(x: np.uint64, n: int) -> np.uint64:
    return (x >> np.uint64(n)) | (x << np.uint64(64 - n))


@numba.njit(cache=True, nogil=True, inline="always")
def _mix(v: np.ndarray, a: int, b: int, c: int, d: int, x: np.uint64, y: np.uint64) -> None:
    """BLAKE2b's mixing function G (RFC 7693, 3.1)."""
    v[a] = v[a] + v[b] + x
    v[d] = _rotr(v[d] ^ v[a], 32)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], 24)
    v[a] = v[a] + v[b] + y
    v[d] = _rotr(v[d] ^ v[a], 16)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], 63)


@numba.njit(cache=True, nogil=True)
def _compress(h: np.ndarray, block: np.ndarray, counter: int, last: bool, v: np.ndarray, m: np.ndarray) -> None:
    """BLAKE2b's compression F of one 128-byte ``block`` into the state ``h`` (8,) (RFC 7693, 3.2)."""
    for w in range(16):
        word = np.uint64(0)
        for b in range(8):
            word |= np.uint64(block[8 * w + b]) << np.uint64(8 * b)
        m[w] = word
    for i in range(8):
        v[i] = h[i]
        v[i + 8] = _IV[i]
    v[12] ^= np.uint64(counter)
    if last:
        v[14] = ~v[14]
    for r in range(12):
        s = _SIGMA[r % 10]
        _mix(v, 0, 4, 8, 12, m[s[0]], m[s[1]])
        _mix(v, 1, 5, 9, 13, m[s[2]], m[s[3]])
        _mix(v, 2, 6, 10, 14, m[s[4]], m[s[5]])
        _mix(v, 3, 7, 11, 15, m[s[6]], m[s[7]])
        _mix(v, 0, 5, 10, 15, m[s[8]], m[s[9]])
        _mix(v, 1, 6, 11, 12, m[s[10]], m[s[11]])
        _mix(v, 2, 7, 8, 13, m[s[12]], m[s[13]])
        _mix(v, 3, 4, 9, 14, m[s[14]], m[s[15]])
    for i in range(8):
        h[i] ^= v[i] ^ v[i + 8]


@numba.njit(cache=True, nogil=True, parallel=True)
def _draws(prefix: np.ndarray, data: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> None:
    """The uniform draw of each message ``prefix + data[offsets[i]:offsets[i + 1]]``: the first 8 bytes of
    its 8-byte BLAKE2b digest as a big-endian integer, over 2**64."""
    n = offsets.shape[0] - 1
    p = prefix.shape[0]
    for i in numba.prange(n):
        h = _IV.copy()
        h[0] ^= np.uint64(0x01010008)  # digest length 8, no key, fanout 1, depth 1
        block = np.zeros(128, dtype=np.uint8)
        v = np.empty(16, dtype=np.uint64)
        m = np.empty(16, dtype=np.uint64)
        start = offsets[i]
        length = p + offsets[i + 1] - start
        done = 0
        while True:
            size = min(128, length - done)
            for j in range(128):
                k = done + j
                if j >= size:
                    block[j] = 0
                elif k < p:
                    block[j] = prefix[k]
                else:
                    block[j] = data[start + k - p]
            done += size
            last = done >= length
            _compress(h, block, done, last, v, m)
            if last:
                break
        word = h[0]
        swapped = np.uint64(0)
        for b in range(8):  # the digest's bytes are h[0] little-endian; the draw reads them big-endian
            swapped = (swapped << np.uint64(8)) | ((word >> np.uint64(8 * b)) & np.uint64(0xFF))
        out[i] = np.float64(swapped) / 18446744073709551616.0


def holdout_draw(salt: str, unit_ids: Iterable[object]) -> np.ndarray:
    """A uniform number in [0, 1) per unit, a pure function of (salt, unit_id); shape (n,)."""
    prefix = salt.encode() + b"\x1f"
    encoded = [str(u).encode() for u in unit_ids]
    if len(encoded) < _BATCH:  # a request or a few: hashlib, without the compiled batch's start-up
        return np.fromiter((int.from_bytes(hashlib.blake2b(prefix + e, digest_size=8).digest(), "big") / _SCALE for e in encoded),
                           dtype=np.float64, count=len(encoded))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    out = np.empty(len(encoded))
    _draws(np.frombuffer(prefix, dtype=np.uint8), np.frombuffer(b"".join(encoded) or b"\x00", dtype=np.uint8), offsets, out)
    return out


def in_holdout(salt: str, unit_ids: Iterable[object], share: float) -> np.ndarray:
    """Holdout membership per unit; shape (n,) bool."""
    return holdout_draw(salt, unit_ids) < share


def canary_units(spec: Spec, unit_ids: Iterable[object]) -> np.ndarray:
    """Whether each unit is in a candidate's canary (``adaptation.canary``): a draw of its own salt below
    the canary share, so the same units whichever version is the candidate, in the service and in the
    twin's loop; shape (n,) bool."""
    canary = spec.model.adaptation.canary
    salt = canary.salt or f"{spec.model.experimentation.salt}\x1fcanary"
    return holdout_draw(salt, unit_ids) < canary.share


def serving_propensity(policy_probability: np.ndarray, is_control: np.ndarray, holdout_share: float) -> np.ndarray:
    """Propensity of the logged action under holdout + policy; inputs and output shape (n,)."""
    return holdout_share * np.asarray(is_control, dtype=np.float64) + (1.0 - holdout_share) * np.asarray(policy_probability)


def failed_propensity(action: np.ndarray, fallback: int, control: int, holdout_share: float) -> np.ndarray:
    """Propensity of the logged ``action`` (n,) of decisions the policy could not make: the holdout's
    control or everyone else's fallback, ``h [a = control] + (1 - h) [a = fallback]``; shape (n,)."""
    a = np.asarray(action)
    return serving_propensity((a == fallback).astype(np.float64), a == control, holdout_share)
