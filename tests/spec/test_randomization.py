"""The batch hash of the randomization draws is hashlib's BLAKE2b, bit for bit, for every kind of id."""

from __future__ import annotations

import hashlib

import numpy as np

from drivetrain.spec import holdout_draw, in_holdout


def _one_by_one(salt: str, ids: list[object]) -> np.ndarray:
    prefix = salt.encode() + b"\x1f"
    return np.array([int.from_bytes(hashlib.blake2b(prefix + str(u).encode(), digest_size=8).digest(), "big") / 2.0**64 for u in ids])


def _ids() -> list[object]:
    rng = np.random.default_rng(7)
    ids: list[object] = [f"u{i}" for i in range(2_500)]
    # empty, non-ASCII, and lengths around BLAKE2b's 128-byte block (the salt's prefix included)
    ids += ["", "é", "日本" * 50, "x" * 127, "x" * 128, "x" * 129, "y" * 255, "y" * 256, "z" * 300, 12, 3.5, None]
    ids += ["".join(chr(int(c)) for c in rng.integers(32, 0x2FFF, size=int(rng.integers(0, 200)))) for _ in range(300)]
    return ids


def test_batch_draws_equal_hashlib_bit_for_bit() -> None:
    ids = _ids()
    for salt in ("", "nboo-2026", "nboo-2026\x1fexplore", "k" * 130):
        batch = holdout_draw(salt, ids)
        assert batch.dtype == np.float64 and batch.shape == (len(ids),)
        assert np.array_equal(batch, _one_by_one(salt, ids)), salt


def test_a_unit_draws_the_same_alone_and_in_a_batch() -> None:
    ids = _ids()
    batch = holdout_draw("s", ids)
    alone = np.array([holdout_draw("s", [u])[0] for u in ids[::97]])
    assert np.array_equal(alone, batch[::97])
    assert np.array_equal(in_holdout("s", ids, 0.1), batch < 0.1)
    assert holdout_draw("s", []).shape == (0,)


def test_draws_are_uniform() -> None:
    draws = holdout_draw("salt", range(20_000))
    assert 0.0 <= draws.min() and draws.max() < 1.0
    counts = np.histogram(draws, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(counts - 2_000) < 200)  # 4.5 standard deviations of a binomial(20000, 0.1)
