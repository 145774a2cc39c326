"""Instances from the Next Best Offer twin's true values, shared by the optimizer tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from drivetrain.twin import NBOOTwin, Truth, oracle

N = 20_000


@dataclass(frozen=True)
class Instance:
    twin: NBOOTwin
    users: pd.DataFrame
    truth: Truth
    free_cost: float  # mean promotion cost of the unconstrained oracle

    @property
    def bundle(self) -> np.ndarray:
        return np.asarray(self.twin.spec.action_space.lever_columns()["offer_type"] == "bundle")


def make_instance(seed: int, n: int) -> Instance:
    twin = NBOOTwin(seed=seed)
    users = twin.population(n)
    truth = twin.truth(users)
    free = oracle(truth.objective, truth.eligible)
    return Instance(twin, users, truth, truth.mean("promo_cost", free.probabilities))


@pytest.fixture(scope="session")
def nboo() -> Instance:
    """20k users of twin seed 11."""
    return make_instance(11, N)
