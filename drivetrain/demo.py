"""The demo behind ``make demo``: the Next Best Offer twin's logs go through the real ingest path.

A partner's CSV export of support events (refunds, complaints) arrives first, with a few percent of
faulty and repeated rows, before the decisions it refers to; then the decision log and the checkout's
outcome events arrive, and the decision log is sent twice. The store must reconcile every row, attribute
every outcome, and the joined outcome means per action must match the twin's ground truth. The fitted
policy is then served over HTTP; finally the adaptation loop runs for simulated days (:func:`adaptation_loop`):
it decides in process, outcomes arrive late, each day ends with the monitoring and a step of ``adapt``
(retrain on its own logs, gates, shadow, canary, promotion), a bad candidate is blocked, a good one
promoted, a rollback drilled, every line next to the twin's truth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from drivetrain.adapt import Registry
from drivetrain.clock import SimulatedClock
from drivetrain.data import (
    ParquetStore,
    RawRows,
    Store,
    attribute_pending,
    ingest_decisions,
    ingest_outcomes,
    read_rows,
    summarize,
)
from drivetrain.loop import loop_spec
from drivetrain.model import OutcomeModel
from drivetrain.policy import Policy
from drivetrain.spec import Spec, parse_spec
from drivetrain.twin import NBOOTwin, Scenario, best_single_action, oracle, oracle_under_budget
from drivetrain.twin_loop import LoopDay

__all__ = ["AdaptationDemo", "adaptation_loop", "demo_loop_spec", "faulty_export", "run_demo"]

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


def run_demo(out: Path, *, users: int, seed: int, console: Console, loop_days: int = 26, loop_users: int = 1000) -> None:
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
    _assembly_line(twin, store, clock.now(), frame, console, out)
    _serve(twin, out, console)
    _loop(seed=seed, out=out, console=console, days=loop_days, users=loop_users)
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




@dataclass(frozen=True)
class AdaptationDemo:
    """What the demo's adaptation loop did: its days, the candidate blocked (version, gate, reason), the
    version promoted through shadow and canary, and the rollback drill (from, to, seconds, whether the
    version serving after it is the one the promotion replaced)."""

    days: tuple[LoopDay, ...]
    blocked: tuple[str, str, str] | None
    promoted: str | None
    drill: tuple[str, str, float, bool] | None


def adaptation_loop(store: Store, registry: Registry, *, seed: int, days: int, users: int, first_users: int,
                    console: Console, trees: int = 60, drift: int = 0) -> AdaptationDemo:
    """The adaptation loop on the 7-day twin for ``days`` days of ``users`` users, from a ``first_users``
    randomized log: from day ``drift`` every offer works worse for mobile users (which offers work changes
    for a segment); the loop retrains when enough decisions have matured; the first retrain's join is
    broken on purpose (shuffled outcomes) and its candidate must be blocked (by the regression gate: its
    model predicts the frozen set's outcomes no better than a constant); the next goes through shadow and
    canary; the day after a promotion, a rollback drill returns to ``last-good`` (the previous version
    serves that day's users) and the promotion is restored at the end of that day.
    Every line is printed next to the twin's truth (the champion's share of the budgeted oracle's gain)."""
    from drivetrain.adapt import adapt, promote, rollback
    from drivetrain.twin_loop import run_twin_loop

    start_day = 9
    twin = NBOOTwin(horizon_days=7, seed=seed, scenario=Scenario(effect_segment=("device", "mobile"), effect_delta=-1.5,
                                                                  effect_refund=0.02, effect_day=start_day + drift))
    decisions, outcomes = twin.log(twin.population(first_users))
    clock = SimulatedClock(twin.start + timedelta(days=start_day))
    ingest_decisions(store, RawRows(decisions, (), "first randomized log"), clock=clock)
    ingest_outcomes(store, RawRows(outcomes, (), "first randomized log"), clock=clock)
    fits = {"n": 0}
    rng = np.random.default_rng(seed)

    def trainer(table: pd.DataFrame, product: Spec) -> OutcomeModel:
        fits["n"] += 1
        if fits["n"] == 2:  # the first retrain: a broken join hands the trainer shuffled purchases (costs intact)
            order = rng.permutation(len(table))
            table = table.copy()
            costs = set().union(*(f.variables for _, f in product.budgets))
            for name in product.model.outcomes:
                if name in table and name not in costs:
                    table[name] = table[name].to_numpy()[order]
        return OutcomeModel(n_folds=0, n_estimators=trees, num_threads=1, seed=0).fit(table, product)

    first = adapt(store, registry, clock.now(), trainer=trainer, who="demo", population_size=min(5000, 2 * users))
    console.print(f"day 0: {first.actions[0]} on the {first_users}-user randomized log; from day {drift} every offer works worse for"
                  " mobile users (their purchase effect -1.5 on the logit scale, refunds +2 points)", markup=False, highlight=False, soft_wrap=True)
    state: dict[str, Any] = {"blocked": None, "promoted": None, "drill": None, "restore": None}

    def on_day(d: LoopDay) -> None:
        t = d.day - start_day
        truth = f"true share {d.share:.2f}" if d.share is not None else "true share -"
        done = [a for a in (d.step.actions if d.step else ()) if a != "no trigger fired" and "waiting for" not in a]
        line = f"day {t:>2}: {d.champion} serves ({truth}; spend {d.spend / d.budget:.2f} of budget)"
        if d.replaced_share is not None:
            line += f"; it replaced {d.replaced} (true share {d.replaced_share:.2f} on the same users)"
        console.print(line + ("; " + "; ".join(a[:200] for a in done) if done else ""), markup=False, highlight=False, soft_wrap=True)
        step = d.step
        if step is not None and step.candidate and step.gates and not step.gates[-1].passed and state["blocked"] is None:
            gate = step.gates[-1]
            state["blocked"] = (step.candidate, gate.gate, gate.reason)
            registered = any(r.version == step.candidate for r in registry.versions())
            share = f"{_true_share(twin, registry.load(step.candidate), d.day, users):.2f}" if registered else "- (no plan)"
            console.print(f"        blocked: {step.candidate} by the {gate.gate} gate; its true share {share} against the champion's "
                          f"{d.share if d.share is not None else float('nan'):.2f}; the gate's reason: {gate.reason}",
                          markup=False, highlight=False, soft_wrap=True)
        if d.promoted and state["promoted"] is None and step is not None:
            state["promoted"] = step.champion
        if state["restore"] is not None:  # the drill is over: the promotion is restored
            promote(registry, state["restore"], at=d.as_of, who="demo", why="rollback drill over: the promotion restored")
            console.print(f"        drill over: {state['restore']} is the champion again", markup=False, highlight=False)
            state["restore"] = None
        elif state["promoted"] is not None and state["drill"] is None and not d.promoted:
            before = registry.alias("champion")
            t0 = time.perf_counter()
            back = rollback(registry, at=d.as_of, who="demo", why="rollback drill")
            served = registry.load(back)
            elapsed = time.perf_counter() - t0
            same = back == d.replaced and served.version == back  # the version the promotion replaced serves again
            state["drill"] = (str(before), back, elapsed, same)
            state["restore"] = before
            console.print(f"        rollback drill: {before} -> {back} in {elapsed * 1000:.0f} ms (the artifact loaded is {back}, "
                          f"checksum {registry.version(back).checksum[:12]}); true share of {back} "
                          f"{_true_share(twin, served, d.day, users):.2f}", markup=False, highlight=False, soft_wrap=True)

    result = run_twin_loop(twin, store, registry, days=range(start_day, start_day + days), users=users, trainer=trainer,
                           truth_sample=min(2000, users), population_size=min(5000, 2 * users), on_day=on_day)
    return AdaptationDemo(tuple(result), state["blocked"], state["promoted"], state["drill"])


def _true_share(twin: NBOOTwin, policy: Policy, day: int, users: int) -> float:
    """``policy``'s greedy share of the budgeted oracle's gain over control on a fresh sample of ``day``'s users."""
    spec = policy.spec
    frame = twin.population(min(2000, users), day=day, offset=90_000_000 + day * 10_000)
    truth = twin.truth(frame, day=day)
    contexts = twin.observe(frame, day=day)
    greedy = replace(policy, exploration_rate=0.0, holdout_share=0.0).action_distribution(contexts)
    base = float(truth.objective[:, spec.control.index].mean())
    budgets = [(np.broadcast_to(f({**truth.components}), truth.objective.shape), b.max_per_unit) for b, f in spec.budgets]
    best = oracle_under_budget(truth.objective, truth.eligible, [c for c, _ in budgets], [m for _, m in budgets]).value
    return (truth.value(greedy) - base) / (best - base)


def _loop(*, seed: int, out: Path, console: Console, days: int, users: int) -> None:
    """Step 10: the adaptation loop on the 7-day twin (:func:`adaptation_loop`), its store and registry on
    disk, the report at the end."""
    from drivetrain.adapt import EmbeddedRegistry

    spec = demo_loop_spec(users)
    console.rule(f"10. the adaptation loop: {days} simulated days; it retrains on its own logs, gates, promotes, rolls back")
    store = ParquetStore(out / "loop" / "store", spec, create=True)
    registry = EmbeddedRegistry(out / "loop" / "registry", create=True)
    t0 = time.perf_counter()
    run = adaptation_loop(store, registry, seed=seed + 3, days=days, users=users, first_users=20_000, console=console)
    console.print(f"{days} days in {time.perf_counter() - t0:.0f}s; blocked: {run.blocked[0] + ' (' + run.blocked[1] + ')' if run.blocked else 'none'}; "
                  f"promoted through shadow and canary: {run.promoted or 'none'}; rollback drill: "
                  f"{f'{run.drill[2] * 1000:.0f} ms' if run.drill else 'not reached'}; {len(registry.history())} registry events",
                  markup=False, highlight=False, soft_wrap=True)
    _write_report(store, run.days[-1].as_of, out, console)


def demo_loop_spec(users: int) -> Spec:
    """The loop's spec with the adaptation settings the demo's days and users call for: a retrain once two
    days of decisions have matured, a day of shadow, a canary on half of the units until a day's users
    are mature in it, and a non-inferiority margin of 0.5 per unit (5% of the objective per user: the
    default 0.05 is a hundredth of the interval a canary of a few hundred units gives). The canary is
    judged on that day of units (``max_units``) even though a test powered for an equal candidate would
    ask for more: the demo's candidate is better than its champion, not equal to it."""
    raw = loop_spec().model.model_dump(mode="json")
    raw["adaptation"].update({"min_new_decisions": 2 * users, "max_staleness": "14d", "pacing_period": "28d"})
    raw["adaptation"]["gates"].update({"min_decisions": min(2000, 2 * users), "latency_samples": 50, "non_inferiority_margin": 0.5})
    raw["adaptation"]["canary"].update({"shadow_decisions": users // 2, "share": 0.5, "min_units": max(100, users // 2),
                                        "max_units": max(100, users // 2)})
    return parse_spec(raw, source=f"nboo loop ({users} users a day)")


def _write_report(store: Store, as_of: datetime, out: Path, console: Console) -> None:
    """The HTML report of the loop's store as of ``as_of``, written into ``out``."""
    from drivetrain.report import write_report

    path = write_report(store, as_of=as_of, out=out / "report.html")
    console.print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB, opens offline)")
