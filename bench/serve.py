"""Latency of the decision service, over HTTP and in process, on the policy that bench/policy_value.py evaluates.

Builds that policy (seed 0: 100k randomized logged users of the NBOO twin, 3 cross-fitted folds of
two-stage models with 150 context rounds (the Modeler's rule sets the effect rounds), planned under half
the unconstrained oracle's promotion cost), starts
`drivetrain serve` on a free local port, and drives POST /v1/decide with an open-loop load generator at
fixed rates (each request is sent at its scheduled time, whatever the earlier ones are doing), with the
durable decision log on and off. Prints p50 / p99 / p99.9 latency as the client saw it (JSON work and
the network stack included), the error rate (answers other than 200) and the fallback rate (decisions
over the latency budget, which runs from the request's arrival, or otherwise failed). Then the in-process latency of one decision: the
service's Decider (compiled trees) against the batch path (`Policy.decisions_table` on one row) as the
baseline measured in the same run.

Targets on a 2-core machine: HTTP p99 under 10 ms at 200 requests/s with durable logging; in-process
p99 under 1 ms.

    python bench/serve.py             # full run (about 3 minutes, most of it fitting the policy)
    python bench/serve.py --quick     # a small policy and short runs, for the test suite
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from policy_value import logged_store

from drivetrain.assembly import fit_model, plan_policy
from drivetrain.model import CompiledModel, OutcomeModel
from drivetrain.policy import Policy
from drivetrain.serve import Decider, ServiceProcess, settle_heap
from drivetrain.twin import NBOOTwin, oracle

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "nboo" / "drivetrain.yaml"


def build_policy(directory: Path, n_log: int, trees: int, rate: float, folds: int) -> Policy:
    twin = NBOOTwin(seed=0)
    spec = twin.spec
    store, clock = logged_store(twin, n_log)
    model, _, _ = fit_model(store, clock.now(), OutcomeModel(n_folds=folds, n_estimators=trees, learning_rate=rate, num_threads=2))
    population = NBOOTwin(seed=1000).population(min(n_log, 20_000), offset=50_000_000)
    truth = twin.truth(population)
    budget = 0.5 * truth.mean("promo_cost", oracle(truth.objective, truth.eligible).probabilities)
    loose = {g.name: 1e9 for g, _ in spec.guardrails}
    plan = plan_policy(spec, model, population, budget_overrides={"promotion_budget": budget}, guardrail_overrides=loose,
                       version="bench-serve")
    plan.policy.save(directory)
    return plan.policy


def contexts(n: int) -> list[dict[str, Any]]:
    frame = NBOOTwin(seed=77).population(n, offset=80_000_000)
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> tuple[int, bytes]:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def drive(host: str, port: int, rate: float, n: int, bodies: list[bytes], connections: int = 32) -> dict[str, float]:
    """Open loop: request i is sent at t0 + i / rate on an idle keep-alive connection; its latency runs from
    that send to its full response. The client is raw HTTP/1.1 over asyncio streams with the requests
    encoded in advance, so that the load generator's own CPU work stays small next to the service's."""
    raws = [b"POST /v1/decide HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(b), b) for b in bodies]
    latencies = np.full(n, np.nan)
    from_schedule = np.full(n, np.nan)
    errors = fallbacks = 0
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection(host, port))
    for i in range(min(100, n)):  # warm up every connection and the service
        conn = await pool.get()
        await _request(*conn, raws[i % len(raws)])
        pool.put_nowait(conn)
    clock = time.perf_counter  # uvloop's loop.time() ticks in whole milliseconds
    t0 = clock() + 0.05

    async def one(i: int) -> None:
        nonlocal errors, fallbacks
        scheduled = t0 + i / rate
        await asyncio.sleep(max(0.0, scheduled - clock()))
        conn = await pool.get()
        sent = clock()
        try:
            status, body = await _request(*conn, raws[i % len(raws)])
            if status != 200:
                errors += 1
            elif json.loads(body)["assignment"] == "fallback":  # over the latency budget (from arrival), most often
                fallbacks += 1
            pool.put_nowait(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            pool.put_nowait(await asyncio.open_connection(host, port))
        done = clock()
        latencies[i] = done - sent
        from_schedule[i] = done - scheduled

    gc.collect()
    gc.disable()  # a collection in the load generator would show up as the service's latency
    try:
        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - began
    finally:
        gc.enable()
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
    ms = latencies * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "p999": float(np.percentile(ms, 99.9)),
            "errors": errors / n, "fallbacks": fallbacks / n, "achieved": n / elapsed, "sched_p99": float(np.percentile(from_schedule, 99) * 1000)}


def _run(coroutine: Any) -> Any:
    """Run on uvloop where it is installed (it comes with uvicorn[standard] on Linux), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def in_process(policy_dir: Path, ctx: list[dict[str, Any]], n: int) -> tuple[np.ndarray, np.ndarray]:
    policy = Policy.load(policy_dir)
    decider = Decider(policy.spec, policy)
    settle_heap()  # as `drivetrain serve` does before it serves
    now = datetime.now(UTC)
    fast = np.empty(n)
    for i in range(n):
        c = dict(ctx[i % len(ctx)])
        unit = str(c.pop("unit_id"))
        t = time.perf_counter()
        decider.decide(unit, c, request_id=f"bench-{i}", now=now)
        fast[i] = time.perf_counter() - t
    import pandas as pd

    m = max(50, n // 20)
    slow = np.empty(m)
    for i in range(m):
        row = pd.DataFrame([ctx[i % len(ctx)]])
        t = time.perf_counter()
        policy.decisions_table(row, now=now)
        slow[i] = time.perf_counter() - t
    return fast * 1000, slow * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small policy and short runs")
    parser.add_argument("--policy", type=Path, help="serve this policy directory instead of building one")
    parser.add_argument("--rates", type=float, nargs="+", default=[200.0, 500.0])
    parser.add_argument("--requests", type=int, default=6000, help="requests per rate and setting")
    parser.add_argument("--compact-every", type=float, default=5.0,
                        help="seconds between the service's segment rotations and compactions with logging on, so that "
                             "compactions run while the load is measured (the service's default is 30)")
    args = parser.parse_args()
    n_log, trees, requests = (100_000, 150, args.requests) if not args.quick else (5_000, 10, 100)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        policy_dir = args.policy
        if policy_dir is None:
            policy_dir = work / "policy"
            t = time.perf_counter()
            build_policy(policy_dir, n_log, trees, 0.1, 3)
            print(f"built the policy of bench/policy_value.py (seed 0, {n_log} logged users, {trees} context rounds per component, 3 folds) "
                  f"in {time.perf_counter() - t:.0f} s")
        models = list((policy_dir / "models").glob("*.txt"))
        compiled = CompiledModel.of(Policy.load(policy_dir).model)
        print(f"policy: {sum(p.read_text().count(chr(10) + 'Tree=') for p in models)} trees in {len(models)} LightGBM models; "
              f"a decision runs {compiled.forest.root.shape[0] if compiled else 'all'} of them")
        ctx = contexts(2000)
        bodies = [json.dumps({"unit_id": c["unit_id"], "context": {k: v for k, v in c.items() if k != "unit_id"}}).encode() for c in ctx]

        print("\nHTTP POST /v1/decide, open loop, latency seen by the client (ms); service CPU per request (ms)")
        print(f"{'logging':>16} {'rate/s':>7} {'sent':>6} {'achieved/s':>10} {'p50':>7} {'p99':>7} {'p99.9':>7} {'errors':>7} "
              f"{'p99 from schedule':>17} {'CPU/request':>11} {'fallbacks':>9}")
        for logging in (True, False):
            service = ServiceProcess.start(SPEC, policy_dir, work / ("on" if logging else "off"),
                                           *(["--segment-age", str(args.compact_every), "--compact-every", str(args.compact_every)]
                                             if logging else ["--no-logging"]), ready=True)
            host, port = service.url.removeprefix("http://").rsplit(":", 1)
            try:
                for rate in args.rates:
                    cpu = _cpu_seconds(service.process.pid)
                    r = _run(drive(host, int(port), rate, requests, bodies))
                    cpu_ms = 1000 * (_cpu_seconds(service.process.pid) - cpu) / (requests + min(100, requests))
                    label = "durable (rotate)" if logging else "off"
                    print(f"{label:>16} {rate:7.0f} {requests:6d} {r['achieved']:10.0f} {r['p50']:7.2f} {r['p99']:7.2f} {r['p999']:7.2f} "
                          f"{100 * r['errors']:6.2f}% {r['sched_p99']:17.2f} {cpu_ms:11.3f} {100 * r['fallbacks']:8.2f}%")
            finally:
                service.stop()
        logged = sum(1 for p in (work / "on" / "store-log").glob("*.jsonl") for _ in p.open())
        stored = 0
        if (work / "on" / "store" / "decisions").exists():
            import pandas as pd

            stored = len(pd.read_parquet(work / "on" / "store" / "decisions", columns=["request_id"]))
        print(f"decisions logged with logging on: {logged + stored} ({stored} compacted into the store, {logged} in segments)")

        fast, slow = in_process(policy_dir, ctx, 500 if args.quick else 5000)
        print("\nin-process decision for one request (ms)")
        print(f"{'path':>34} {'p50':>7} {'p99':>7}")
        print(f"{'Decider (compiled trees)':>34} {np.percentile(fast, 50):7.3f} {np.percentile(fast, 99):7.3f}")
        print(f"{'baseline: Policy.decisions_table':>34} {np.percentile(slow, 50):7.3f} {np.percentile(slow, 99):7.3f}")
        print(f"speed-up at p50: {np.percentile(slow, 50) / np.percentile(fast, 50):.0f}x")


if __name__ == "__main__":
    main()
