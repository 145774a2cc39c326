"""How long a promotion and a rollback take to reach the traffic of a service that follows the registry's
champion alias, under a concurrent load, and whether any request fails meanwhile.

Fits two small policies of the NBOO twin (as the service tests do), registers both in an embedded
registry, promotes the first and starts `drivetrain serve --registry` on a free local port. Closed-loop
clients then decide without pause while the drill moves the alias ``--drills`` times: promote the second
policy, roll back to the first. For each move, the switch time runs from the registry's event written
(`promote` or `rollback` returned) to the first answer decided by the new version; the old version's last
answer after the move is shown too (requests already in flight). Counted over the whole run: answers
other than 200 or lost connections (failed), and fallbacks by reason. The baseline, measured in the same
run, is what switching without a restart saves: the time from starting the service to its first answer.

Target (issue: the adaptation loop): a rollback serves `last-good` in under a second with no failed request.

    python bench/rollback.py              # 5 drills, 3 clients
    python bench/rollback.py --drills 2   # shorter
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from drivetrain.adapt import EmbeddedRegistry, Lineage, promote, rollback
from drivetrain.model import OutcomeModel
from drivetrain.policy import Policy
from drivetrain.serve import DecisionLoad, ServiceProcess
from drivetrain.twin import NBOOTwin

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "nboo" / "drivetrain.yaml"


def fit(version: str, seed: int, users: int, trees: int) -> Policy:
    twin = NBOOTwin(seed=seed)
    model = OutcomeModel(n_folds=2, n_estimators=trees, min_child_samples=50).fit(twin.expected_log(twin.population(users)), twin.spec)
    return Policy.from_model(twin.spec, model, {}, version=version)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drills", type=int, default=5, help="promote-then-rollback drills")
    parser.add_argument("--clients", type=int, default=3, help="concurrent closed-loop clients")
    parser.add_argument("--users", type=int, default=6000, help="logged users each policy is fitted on")
    parser.add_argument("--trees", type=int, default=30, help="boosting rounds per model")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        first, second = fit("policy-a", 3, args.users, args.trees), fit("policy-b", 4, args.users, args.trees)
        registry = EmbeddedRegistry(work / "registry", create=True)
        lineage = Lineage(spec_hash=first.spec.hash, model_spec_hash=first.spec.model_hash, data_start=None, data_end=None, rows=args.users)
        t0 = datetime.now(UTC) - timedelta(days=1)
        for policy in (first, second):
            registry.register(policy, lineage, at=t0, who="bench")
        promote(registry, first.version, at=t0, who="bench", why="first")
        frame = NBOOTwin(seed=9).population(500, offset=7_000_000)
        contexts = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]

        started = time.monotonic()
        server = ServiceProcess.start(SPEC, None, work / "served", "--registry", str(registry.root), deadline_s=120.0)
        with server.client(timeout=30.0) as client:
            ctx = dict(contexts[0])
            client.post("/v1/decide", json={"unit_id": ctx.pop("unit_id"), "context": ctx})
        restart_s = time.monotonic() - started
        load = DecisionLoad(server.url, contexts, args.clients).start()
        time.sleep(2.0)
        promotions, rollbacks = [], []
        try:
            at = t0
            for _ in range(args.drills):
                at += timedelta(minutes=1)
                moved = time.monotonic()
                promote(registry, second.version, at=at, who="bench", why="drill")
                promotions.append(load.switch(moved, second.version, first.version))
                time.sleep(1.0)
                at += timedelta(minutes=1)
                moved = time.monotonic()
                rollback(registry, at=at, who="bench", why="drill")
                rollbacks.append(load.switch(moved, first.version, second.version))
                time.sleep(1.0)
            with server.client(timeout=30.0) as client:
                info = client.get("/v1/policy").json()
        finally:
            load.stop()
            server.stop(signal.SIGTERM)
        kinds = Counter(v if s == 200 and v.startswith("fallback") else ("ok" if s == 200 else f"failed ({s}): {v}") for _, s, v in load.answers)
        total = len(load.answers)
        print(f"{total} decisions by {args.clients} clients over {args.drills} promote-then-rollback drills "
              f"({total / (load.answers[-1][0] - load.answers[0][0]):.0f} decisions/s)")
        for name, times in (("promotion", promotions), ("rollback", rollbacks)):
            first_new = [t for t, _ in times]
            print(f"{name}: first answer by the new version after {statistics.median(first_new) * 1000:.0f} ms median, "
                  f"{max(first_new) * 1000:.0f} ms max; old version's last answer {max(t for _, t in times) * 1000:.0f} ms max after the move")
        print(f"baseline: a restart of the service to its first answer {restart_s * 1000:.0f} ms")
        failed = sum(n for k, n in kinds.items() if k.startswith("failed"))
        print(f"failed requests: {failed} of {total}; fallbacks: " + (", ".join(f"{n} {k}" for k, n in kinds.items() if k.startswith("fallback")) or "none"))
        same = info["manifest_sha256"] == registry.version(first.version).checksum
        print(f"served after the last rollback: {info['policy_version']}, manifest sha256 {'equals' if same else 'DIFFERS FROM'} "
              f"the registry's checksum of {first.version}")


if __name__ == "__main__":
    main()
