"""The demo behind ``make demo``: the Next Best Offer twin's logs go through the real ingest path.

A partner's CSV export of support events (refunds, complaints) arrives first, with a few percent of
faulty and repeated rows, before the decisions it refers to; then the decision log and the checkout's
outcome events arrive, and the decision log is sent twice. The store must reconcile every row, attribute
every outcome, and the joined outcome means per action must match the twin's ground truth. The fitted
policy is then served over HTTP, and finally runs the closed loop for simulated days (:func:`closed_loop`):
it decides in process, outcomes arrive late, and each day ends with the evaluation and the monitoring.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from drivetrain.clock import SimulatedClock
from drivetrain.data import (
    ParquetStore,
    Store,
    attribute_pending,
    ingest_decisions,
    ingest_outcomes,
    read_rows,
    summarize,
)
from drivetrain.loop import closed_loop, loop_spec, start_loop
from drivetrain.model import OutcomeModel
from drivetrain.policy import Policy
from drivetrain.twin import NBOOTwin, Scenario, best_single_action, oracle, oracle_under_budget

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


def run_demo(out: Path, *, users: int, seed: int, console: Console, loop_days: int = 21, loop_users: int = 2500) -> None:
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
    model = _assembly_line(twin, store, clock.now(), frame, console, out)
    _serve(twin, out, console)
    _loop(model, seed=seed, out=out, console=console, days=loop_days, users=loop_users)
    console.print(f"demo finished in {time.perf_counter() - start:.1f}s; files and store under {out}/")


def _assembly_line(twin: NBOOTwin, store: ParquetStore, as_of: datetime, logged: pd.DataFrame, console: Console, out: Path) -> OutcomeModel:
    """Fit, evaluate what-ifs off-policy, optimize under the budget, and judge it all by ground truth."""
    from drivetrain.assembly import evaluate_on_logs, fit_model, fixed_action, plan_policy, write_policy_baselines

    spec = twin.spec
    console.rule("6. the Modeler: how each offer moves the objective")
    t0 = time.perf_counter()
    model, table, _ = fit_model(store, as_of, OutcomeModel(n_folds=2, n_estimators=100, learning_rate=0.1, num_threads=2, seed=twin.seed))
    truth_logged = twin.truth(logged.set_index("unit_id").loc[table["unit_id"]].reset_index())
    effects = model.effect_interval(table, cluster=table["unit_id"] if "unit_id" in table else None)
    true_effect = truth_logged.objective.mean(axis=0) - truth_logged.objective[:, spec.control.index].mean()
    t = Table(title=f"average effect on {spec.model.objective.name} per user vs control (fit in {time.perf_counter() - t0:.0f}s)")
    for column in ("action", "estimate [95% interval]", "twin truth"):
        t.add_column(column, justify="left" if column == "action" else "right")
    for r in effects.to_dict("records"):
        j = spec.action_space.index_of(str(r["action_id"]))
        t.add_row(str(r["action_id"]), f"{r['effect']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]", f"{true_effect[j]:+.3f}")
    console.print(t)

    console.rule("7. the Optimizer: per-user offers under the promotion budget")
    fresh = NBOOTwin(seed=twin.seed + 1).population(len(logged), offset=10_000_000)
    truth = twin.truth(fresh)
    plan = plan_policy(spec, model, fresh)
    written = write_policy_baselines(store, plan, fresh, created_at=as_of)
    plan.policy.save(out / "policy")
    probs = plan.assignment.probabilities
    control = spec.control.index
    levers = {name: col[None, :] for name, col in spec.action_space.lever_columns().items()}
    costs = [np.broadcast_to(f({**truth.components, **levers}), truth.objective.shape) for _, f in spec.budgets]
    capped = oracle_under_budget(truth.objective, truth.eligible, costs, [b.max_per_unit for b, _ in spec.budgets])
    j, single = best_single_action(truth.objective, truth.eligible, control)
    base = float(truth.objective[:, control].mean())
    value = truth.value(probs)
    t = Table(title=f"on {len(fresh)} new users, by the twin's ground truth (budget {spec.budgets[0][0].max_per_unit:g} per user)")
    for column in ("policy", spec.model.objective.name, "gain over control", "promo cost", "refund rate"):
        t.add_column(column, justify="left" if column == "policy" else "right")
    for label, p in (("control (no offers)", np.eye(len(spec.action_space))[np.full(len(fresh), control)]),
                     (f"best single action ({spec.action_space.ids[j]})", np.eye(len(spec.action_space))[np.full(len(fresh), j)]),
                     ("drivetrain policy", probs), ("exact oracle under the budget", capped.probabilities)):
        v = truth.value(p)
        t.add_row(label, f"{v:.3f}", f"{v - base:+.3f}", f"{truth.mean('promo_cost', p):.3f}", f"{truth.mean('refund', p):.4f}")
    console.print(t)
    console.print(f"the policy captures {100 * (value - base) / (capped.value - base):.0f}% of the budgeted oracle's gain over control;"
                  f" saved as {plan.policy.version} in {out / 'policy'} ({written} baseline columns stored for monitoring)")

    _why(twin, model, plan.policy, fresh, truth, console)

    console.rule("8. the Simulator: what-ifs evaluated off-policy from the randomized log")
    scenarios = {
        "no offers": fixed_action(spec, spec.control.values),
        "10% immediate discount for everyone": fixed_action(spec, {"offer_type": "discount", "depth": 10, "timing": "immediate"}),
        "free shipping for tier = gold": fixed_action(spec, {"offer_type": "free_ship", "depth": 0, "timing": "immediate"}, where="tier == 'gold'"),
        "the drivetrain policy": plan.policy.action_distribution,
    }
    result = evaluate_on_logs(model, table, scenarios)
    t = Table(title="doubly robust estimate per user [95% interval] from the log, and the twin's truth on the same users")
    for column in ("what-if", spec.model.objective.name, "truth", "promo cost", "truth "):
        t.add_column(column, justify="left" if column == "what-if" else "right")
    for label, fn in scenarios.items():
        dist = fn(table)
        obj, cost = result.estimate(label, "objective", "DR"), result.estimate(label, "promotion_budget", "DR")
        t.add_row(label, f"{obj.value:.3f} [{obj.ci_low:.3f}, {obj.ci_high:.3f}]", f"{truth_logged.value(dist):.3f}",
                  f"{cost.value:.3f} [{cost.ci_low:.3f}, {cost.ci_high:.3f}]", f"{truth_logged.mean('promo_cost', dist):.3f}")
    console.print(t)
    console.print("the policy's estimate comes from the same log it was fitted on, so it is optimistic; evaluate a policy on a later window")
    return model


def _why(twin: NBOOTwin, model: OutcomeModel, policy: Policy, fresh: pd.DataFrame, truth: Any, console: Console) -> None:
    """Where the policy acts and why: effects and the action mix by tier next to the twin's truth, one
    user's decision explained, and what the promotion budget buys at other limits."""
    from drivetrain.explain import effects_by_cohort, explain_unit, frontier

    spec = twin.spec
    control = spec.control.index
    table = effects_by_cohort(policy, fresh, ["tier"])
    t = Table(title="by tier: the policy's most frequent offer, its predicted effect per user vs control, and the twin's truth")
    for column in ("tier", "users", "most frequent offer", "share", "predicted effect", "true effect"):
        t.add_column(column, justify="left" if column in ("tier", "most frequent offer") else "right")
    for tier, part in table.groupby("tier", sort=True):
        top = part.sort_values("share", ascending=False).iloc[0]
        k = spec.action_space.index_of(str(top["action_id"]))
        members = (fresh["tier"] == tier).to_numpy()
        true_effect = float(np.mean(truth.objective[members, k] - truth.objective[members, control]))
        t.add_row(str(tier), str(int(top["units"])), str(top["action_id"]), f"{top['share']:.0%}", f"{top['effect']:+.3f}", f"{true_effect:+.3f}")
    console.print(t)
    console.print(explain_unit(policy, fresh.iloc[[0]]).summary(), markup=False, highlight=False, soft_wrap=True)
    budget = spec.budgets[0][0]
    curve = frontier(spec, model, fresh, budget.name, [budget.max_per_unit * f for f in (0.25, 0.5, 1.0, 2.0)]).table
    console.print(f"what the {budget.name} buys (predicted {spec.model.objective.name} per user as served, shadow price): "
                  + "; ".join(f"{r['limit']:g}: {r['objective']:.3f} ({r['price']:.2f})" for r in curve.to_dict("records")),
                  markup=False, highlight=False, soft_wrap=True)


def _joined_objective(store: ParquetStore, as_of: object, spec: object) -> dict[str, float]:
    from drivetrain.data import training_table

    table, _ = training_table(store, as_of)  # type: ignore[arg-type]
    frame = table.to_pandas()
    frame["objective"] = store.spec.objective({c: frame[c].to_numpy() for c in frame.columns})
    return frame.groupby("action_id")["objective"].mean().to_dict()


def _serve(twin: NBOOTwin, out: Path, console: Console, users: int = 1500) -> None:
    """Serve the policy over HTTP, send the twin's traffic through it, and join every decision with its outcomes."""
    import secrets
    import signal
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from drivetrain.data import training_table
    from drivetrain.serve import ServiceProcess, compact, read_segments
    from drivetrain.spec import load_spec

    spec_path = Path(__file__).resolve().parent / "twin" / "nboo.yaml"
    spec = load_spec(spec_path)
    console.rule("9. the decision service: the checkout asks over HTTP, every answer is logged")
    token = secrets.token_hex(16)
    service = ServiceProcess.start(spec_path, out / "policy", out / "serving", "--segment-age", "2", "--compact-every", "2",
                                   token=token, ready=True)
    try:
        frame = NBOOTwin(seed=twin.seed + 2).population(users, offset=20_000_000)
        bodies = [{"unit_id": r.pop("unit_id"), "context": {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}}
                  for r in frame.to_dict("records")]
        latencies: list[float] = []
        local = threading.local()

        def ask(body: dict[str, object]) -> dict[str, object]:
            if not hasattr(local, "client"):
                local.client = service.client()  # one keep-alive connection per checkout thread
            t = time.perf_counter()
            answer = local.client.post("/v1/decide", json=body).json()
            latencies.append(time.perf_counter() - t)
            return dict(answer)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, bodies))
        elapsed = time.perf_counter() - t0
        ms = 1000 * np.array(latencies)
        counts = pd.Series([a["assignment"] for a in answers]).value_counts().to_dict()
        console.print(f"{len(answers)} decisions in {elapsed:.1f}s over HTTP (p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms"
                      f" as the checkout saw them); assignments: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        logged, _ = read_segments(sorted(service.log_dir.glob("*.jsonl")))  # segments first, then the store they move to
        decided = logged if len(logged) else pd.DataFrame(columns=["request_id", "unit_id", "decided_at", "action_id"])
        if service.store.joinpath("decisions").exists():
            stored = pd.read_parquet(service.store / "decisions", columns=["request_id", "unit_id", "decided_at", "action_id"])
            decided = pd.concat([stored, decided[["request_id", "unit_id", "decided_at", "action_id"]]], ignore_index=True)
        decided = decided.drop_duplicates("request_id").reset_index(drop=True)
        decided["decided_at"] = pd.to_datetime(decided["decided_at"], utc=True, format="ISO8601")
        outcomes = twin.respond(frame, decided)
        headers = {"Authorization": f"Bearer {token}"}
        sent = {"accepted": 0, "quarantined": 0}
        with service.client() as client:
            for start in range(0, len(outcomes), 5000):
                chunk = outcomes.iloc[start:start + 5000].copy()
                for col in ("occurred_at", "received_at"):
                    chunk[col] = chunk[col].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                rows = [{k: v for k, v in r.items() if v is not None and v == v} for r in chunk.to_dict("records")]
                reply = client.post("/v1/outcomes", json={"outcomes": rows}, headers=headers).json()
                sent["accepted"] += reply["accepted"]
                sent["quarantined"] += reply["quarantined"]
    finally:
        service.stop(signal.SIGTERM)  # the service never outlives the demo, whatever happened
    store = ParquetStore(service.store, spec)
    while (compacted := compact(store, service.log_dir)).segments or compacted.outcome_segments:  # decisions, then outcomes
        pass
    as_of = pd.Timestamp(decided["decided_at"].max()).to_pydatetime() + spec.horizon + spec.settle + timedelta(days=2)
    _, report = training_table(store, as_of)
    answered = {str(a["request_id"]) for a in answers}
    in_store = set(store.arrow("SELECT request_id FROM decisions")["request_id"].to_pylist())
    console.print(f"outcome events posted to /v1/outcomes: {len(outcomes)} ({sent['accepted']} accepted, {sent['quarantined']} quarantined);"
                  f" decisions in the store: {len(in_store & answered)} of {len(answered)} answered")
    console.print(report.summary() + " (the waiting ones are repeat orders after the horizon, which no decision claims)")
    served_truth = twin.truth(frame.set_index("unit_id").loc[decided["unit_id"]].reset_index())
    j = spec.action_space.indices(decided["action_id"].to_numpy())
    console.print(f"every answered decision is in the store: {answered <= in_store}; true expected {spec.model.objective.name} of the served"
                  f" decisions {served_truth.objective[np.arange(len(j)), j].mean():.3f} per user vs control"
                  f" {served_truth.objective[:, spec.control.index].mean():.3f}")




def _loop(model: OutcomeModel, *, seed: int, out: Path, console: Console, days: int, users: int) -> None:
    """Step 10: the fitted policy in the closed loop on the 7-day horizon, with a covariate shift in dwell
    time for the last third of the days; the report at the end."""
    shift_day = 2 * days // 3
    spec = loop_spec()
    scenario = Scenario(shift_feature="dwell_time_s", shift_factor=1.6, shift_day=shift_day)
    twin = NBOOTwin(horizon_days=7, seed=seed + 3, scenario=scenario)
    console.rule(f"10. the closed loop: {days} simulated days, the policy decides, outcomes arrive late")
    console.print(f"the step-7 models, planned again on the {spec.horizon.days}-day horizon (the twin's expectations do not"
                  f" depend on the horizon); from day {shift_day} the users' dwell time is {scenario.shift_factor:g} times longer")
    store = ParquetStore(out / "loop" / "store", spec, create=True)
    reference = twin.population(10_000, day=0, offset=29_000_000)
    policy = start_loop(store, model, reference, created_at=twin.start, version=f"{spec.name}-loop-v1")
    t0 = time.perf_counter()
    result = closed_loop(policy, twin, store, days=days, users=users, console=console)
    last = result[-1]
    drift_days = sorted({d.day for d in result for a in d.alerts if a.kind == "drift"})
    console.print(f"{days} days in {time.perf_counter() - t0:.0f}s; {store.count('alerts')} alerts stored; drift alerts on days"
                  f" {drift_days or 'none'} (the shift starts on day {shift_day}); at the end {last.counts.immature} decisions"
                  f" are still immature and {store.count('decisions')} are in the store")
    _write_report(store, last.as_of, out, console)


def _write_report(store: Store, as_of: datetime, out: Path, console: Console) -> None:
    """The HTML report of the loop's store as of ``as_of``, written into ``out``."""
    from drivetrain.report import write_report

    path = write_report(store, as_of=as_of, out=out / "report.html")
    console.print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB, opens offline)")
