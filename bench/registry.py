"""What following the registry costs a service as its history grows.

A service that follows an alias (`drivetrain serve --registry`) reads the registry on every tick, ten times
a second by default: the champion alias and its artifact, the challenger alias and its stage, the pacing
price of each. The history only grows (a pacing event a day, besides every promotion), so what a tick costs
must not grow with it. For each history length the bench appends that many pacing events to an embedded
registry and times the tick's reads two ways, in the same run:

* the follower: one registry object that has followed since the start (what the service holds), which
  reads only the events written since its last tick;
* the baseline: a fresh registry object each tick, which lists and parses every event file.

It also checks that both read the same aliases, stages and prices, and exits non-zero if not. The share of
a core is the tick's time at ten ticks a second.

    python bench/registry.py                          # 0, 365, 1,460 and 3,650 events (up to ten years of days)
    python bench/registry.py --quick                  # a small run, what the test suite runs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollback import fit  # the rollback bench's small policy of the twin

from drivetrain.adapt import EmbeddedRegistry, Lineage

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def tick(registry: EmbeddedRegistry) -> tuple[Any, ...]:
    """The reads of one tick of a service that serves the champion and its challenger."""
    champion, challenger = registry.alias("champion"), registry.alias("challenger")
    stage = registry.status(challenger) if challenger is not None else None
    return (champion, registry.artifact(champion) if champion else None, challenger, stage,
            registry.price(champion) if champion else {}, registry.price(challenger) if challenger else {})


def timed(read: Callable[[], tuple[Any, ...]], ticks: int) -> tuple[float, tuple[Any, ...]]:
    """Milliseconds per tick (the median of five rounds of ``ticks`` ticks) and the last tick's reads."""
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(ticks):
            got = read()
        rounds.append((time.perf_counter() - start) / ticks * 1000)
    return sorted(rounds)[2], got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (what the test suite runs)")
    parser.add_argument("--events", type=int, nargs="+", default=None, help="history lengths (pacing events)")
    args = parser.parse_args()
    lengths = args.events or ([0, 50] if args.quick else [0, 365, 1460, 3650])
    policy = fit("v1", seed=5, users=1500, trees=5)  # what it decides does not matter here
    with tempfile.TemporaryDirectory() as tmp:
        registry = EmbeddedRegistry(Path(tmp) / "registry", create=True)
        lineage = Lineage(spec_hash=policy.spec.hash, model_spec_hash=policy.spec.hash, data_start=None, data_end=None, rows=1500,
                          code_version="bench")
        for version in ("v1", "v2"):
            registry.register(replace(policy, version=version), lineage, at=T0, who="bench")
        registry.record(at=T0, who="bench", why="first", kind="promote", aliases={"champion": "v1", "last-good": "v1"},
                        statuses={"v1": "champion"})
        registry.record(at=T0, who="bench", why="candidate", kind="canary", aliases={"challenger": "v2"}, statuses={"v2": "canary"})
        follower = EmbeddedRegistry(registry.root)
        print(f"{'events':>7} {'follower ms/tick':>16} {'fresh reader ms/tick':>20} {'follower core share':>19} "
              f"{'fresh reader core share':>23}")
        written = 2
        for length in lengths:
            while written < length + 2:
                written += 1
                registry.record(at=T0 + timedelta(days=written), who="pacer", why="pacing", kind="price",
                                details={"budget": "promotion_budget", "prices": {"v1": 0.01 * (written % 50), "v2": 0.02}})
            ticks = max(3, min(200, 20_000 // (length + 10)))
            follow_ms, followed = timed(lambda: tick(follower), 200)
            fresh_ms, fresh = timed(lambda: tick(EmbeddedRegistry(registry.root)), ticks)
            if followed != fresh:
                raise SystemExit(f"the follower read {followed}, a fresh reader {fresh}: they must agree")
            print(f"{length:>7,} {follow_ms:>16.3f} {fresh_ms:>20.3f} {follow_ms / 100:>19.2%} {fresh_ms / 100:>23.2%}")
    print("the follower and a fresh reader read the same aliases, stages and prices at every length")


if __name__ == "__main__":
    main()
