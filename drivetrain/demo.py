"""The demo behind ``make demo``: the Next Best Offer twin's logs go through the real ingest path.

A partner's CSV export of support events (refunds, complaints) arrives first, with a few percent of
faulty and repeated rows, before the decisions it refers to; then the decision log and the checkout's
outcome events arrive, and the decision log is sent twice. The store must reconcile every row, attribute
every outcome, and the joined outcome means per action must match the twin's ground truth.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from drivetrain.clock import SimulatedClock
from drivetrain.data import ParquetStore, attribute_pending, ingest_decisions, ingest_outcomes, read_rows, summarize
from drivetrain.twin import NBOOTwin, best_single_action, oracle

__all__ = ["faulty_export", "run_demo"]


def faulty_export(outcomes: pd.DataFrame, rng: np.random.Generator, share: float = 0.03) -> tuple[pd.DataFrame, int]:
    """A copy of ``outcomes`` as text with ``share`` of rows broken and 1% repeated; returns (frame, broken)."""
    frame = outcomes.copy()
    frame["occurred_at"] = frame["occurred_at"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    frame["received_at"] = frame["received_at"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    frame = frame.astype(object)
    n = len(frame)
    broken = rng.choice(n, size=max(1, int(share * n)), replace=False)
    kinds = rng.integers(0, 5, size=broken.size)
    for row, kind in zip(broken, kinds, strict=True):
        if kind == 0:
            frame.at[row, "value"] = "n/a"
        elif kind == 1:
            frame.at[row, "component"] = "chargeback"
        elif kind == 2:
            frame.at[row, "occurred_at"] = "yesterday"
        elif kind == 3:
            frame.at[row, "value"] = 3.0  # a binary outcome must be 0 or 1
        else:
            frame.at[row, "event_id"] = None
    repeats = frame.iloc[rng.choice(n, size=max(1, n // 100), replace=False)]
    return pd.concat([frame, repeats], ignore_index=True), int(broken.size)


def run_demo(out: Path, *, users: int, seed: int, console: Console) -> None:
    start = time.perf_counter()
    twin = NBOOTwin(seed=seed)
    spec = twin.spec
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)

    console.rule("1. the twin logs a randomized experiment")
    frame = twin.population(users)
    decisions, outcomes = twin.log(frame)
    support = outcomes["component"].isin(["refund", "complaint"]).to_numpy()
    export, broken = faulty_export(outcomes[support].reset_index(drop=True), rng)
    decisions.to_parquet(out / "decisions.parquet", index=False)
    outcomes[~support].to_parquet(out / "checkout_outcomes.parquet", index=False)
    export.to_csv(out / "support_export.csv", index=False)
    console.print(
        f"{len(decisions)} decisions over {len(spec.action_space)} actions (uniform logging, holdout"
        f" {spec.model.experimentation.holdout_share:.0%}), {int((~support).sum())} checkout outcome events,"
        f" {len(export)} support export rows ({broken} broken on purpose, {len(export) - int(support.sum())} repeated)"
    )

    console.rule("2. ingest, in the order the files arrive")
    store = ParquetStore(out / "store", spec, create=True)
    clock = SimulatedClock(twin.start + spec.horizon + spec.settle + timedelta(days=1))
    steps = [
        ("support_export.csv", ingest_outcomes),
        ("decisions.parquet", ingest_decisions),
        ("checkout_outcomes.parquet", ingest_outcomes),
        ("decisions.parquet", ingest_decisions),
    ]
    for name, fn in steps:
        report = fn(store, read_rows(out / name), clock=clock)
        check = "reconciles" if report.reconciles else "DOES NOT RECONCILE"
        console.print(f"{report.summary()} [{check}]")
        for reason, count in sorted(report.reasons.items(), key=lambda kv: -kv[1]):
            console.print(f"    quarantined {count}: {reason}")

    console.rule("3. a month later: outcomes no decision claims go to quarantine")
    clock.advance(spec.horizon + timedelta(days=1))
    with store.writing():
        attributed, waiting, moved = attribute_pending(store, now=clock.now())
    console.print(
        f"after the grace period ({spec.horizon.days} days waiting): attributed {attributed}, still waiting {waiting},"
        f" moved to quarantine {moved} (orders after the horizon of the only decision of their user)"
    )

    console.rule("4. what the store holds")
    result = summarize(store, clock.now())
    console.print("rows: " + ", ".join(f"{k} {v}" for k, v in result.tables.items()))
    console.print(result.join.summary())
    truth = twin.truth(frame)
    action = spec.action_space.indices(decisions["action_id"].to_numpy())
    table = Table(title="per action: logged propensity, mature outcome means (twin truth in brackets)")
    for column in ("action", "decisions", "propensity", "purchase", "promo_cost", "objective"):
        table.add_column(column, justify="left" if column == "action" else "right")
    joined = _joined_objective(store, clock.now(), spec)
    per_action = {r["action_id"]: r for r in result.actions.to_dict("records")}
    for j, action_id in enumerate(spec.action_space.ids):
        rows = action == j
        r = per_action[action_id]
        true = {c: truth.components[c][rows, j].mean() for c in ("purchase", "promo_cost")}
        table.add_row(
            action_id,
            str(int(r["decisions"])),
            f"{r['p_mean']:.3f}",
            f"{r['purchase']:.3f} ({true['purchase']:.3f})",
            f"{r['promo_cost']:.2f} ({true['promo_cost']:.2f})",
            f"{joined.get(action_id, float('nan')):.2f} ({truth.objective[rows, j].mean():.2f})",
        )
    console.print(table)

    console.rule("5. the twin's ground truth: why per-user decisions matter")
    control = spec.control.index
    best = oracle(truth.objective, truth.eligible)
    j, single = best_single_action(truth.objective, truth.eligible, control)
    base = float(truth.objective[:, control].mean())
    console.print(
        f"expected {spec.model.objective.name} per user: control {base:.3f}, best single action for everyone"
        f" ({spec.action_space.ids[j]}) {single:.3f}, per-user oracle {best.value:.3f}"
        f" (+{best.value - base:.3f} over control, {100 * (best.value - single) / best.value:.1f}% above the best single action)"
    )
    console.print(f"demo finished in {time.perf_counter() - start:.1f}s; files and store under {out}/")


def _joined_objective(store: ParquetStore, as_of: object, spec: object) -> dict[str, float]:
    from drivetrain.data import training_table

    table, _ = training_table(store, as_of)  # type: ignore[arg-type]
    frame = table.to_pandas()
    frame["objective"] = store.spec.objective({c: frame[c].to_numpy() for c in frame.columns})
    return frame.groupby("action_id")["objective"].mean().to_dict()
