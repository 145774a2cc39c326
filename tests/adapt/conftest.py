"""Shared pieces of the adaptation tests: a tiny fitted policy, fitted once per session."""

from __future__ import annotations

from datetime import timedelta

import pytest

from drivetrain.assembly import fit_model, plan_policy
from drivetrain.clock import SimulatedClock
from drivetrain.data import MemoryStore, RawRows, ingest_decisions, ingest_outcomes
from drivetrain.demo import loop_spec
from drivetrain.model import OutcomeModel
from drivetrain.policy import Policy
from drivetrain.twin import NBOOTwin


@pytest.fixture(scope="session")
def tiny_policy() -> Policy:
    """A policy of 5 trees per model on 1,500 logged users: cheap to save, load and decide with."""
    twin = NBOOTwin(horizon_days=7, seed=5)
    store = MemoryStore(loop_spec())
    decisions, outcomes = twin.log(twin.population(1500))
    clock = SimulatedClock(twin.start + timedelta(days=10))
    ingest_decisions(store, RawRows(decisions, (), "log"), clock=clock)
    ingest_outcomes(store, RawRows(outcomes, (), "log"), clock=clock)
    model, frame, _ = fit_model(store, clock.now(), OutcomeModel(n_folds=0, n_estimators=5, num_threads=1, min_child_samples=50))
    return plan_policy(store.spec, model, frame, version="tiny-v1").policy

