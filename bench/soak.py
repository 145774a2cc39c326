"""Soak: the decision service under steady load while compactions run in a loop and processes are killed.

Starts `drivetrain serve` on a free local port (127.0.0.1 only) with short segments and compactions every
second, sends POST /v1/decide at a fixed rate with request ids of its own, runs `drivetrain compact` (as
an operator would) in a loop beside it, and `kill -9`s at random moments: the service's whole process
group (the service and its compactor, then a restart on the same store and log), the service's compactor
alone, or an operator's compaction in flight. A client retries every request that got no answer, or a
5xx, with the same id and body until it is answered. At the end the service stops, a last compaction
runs, and the store is compared with what the client was told:

    sent / acknowledged / stored       requests sent, answered with a 200, and in the store's decisions
    missing                            acknowledged but not in the store
    stored with another value          in the store with another action, propensity or policy version
    stored but unanswered              in the store but never acknowledged
    5xx                                server errors the client saw

Target: 0 in every column but the first three. Bounded by a request count and a duration.

    python bench/soak.py                 # 3 minutes at 40 requests/s, 6 kills
    python bench/soak.py --quick         # 15 s, 2 kills, for the test suite
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from drivetrain.model import OutcomeModel
from drivetrain.policy import Policy
from drivetrain.serve import ServiceProcess, http_client
from drivetrain.twin import NBOOTwin

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "nboo" / "drivetrain.yaml"


def build_policy(directory: Path) -> Path:
    twin = NBOOTwin(seed=3)
    decisions = twin.expected_log(twin.population(4000))
    model = OutcomeModel(n_folds=2, n_estimators=20, min_child_samples=50, num_threads=1).fit(decisions, twin.spec)
    Policy.from_model(twin.spec, model, {}, version="soak").save(directory)
    return directory


class Soak:
    def __init__(self, policy: Path, work: Path, rate: float, seconds: float, max_requests: int, kills: int, seed: int) -> None:
        self.policy, self.work, self.rate, self.seconds, self.max_requests = policy, work, rate, seconds, max_requests
        self.rng = random.Random(seed)
        self.kill_times = sorted(self.rng.uniform(0.15, 0.85) * seconds for _ in range(kills))
        self.lock = threading.Lock()
        self.answers: dict[str, dict[str, Any]] = {}
        self.sent: set[str] = set()
        self.server_errors = 0
        self.kills: dict[str, int] = {"service": 0, "compactor": 0, "operator": 0}
        self.operator_runs = 0
        self.stop = threading.Event()
        self.service = self._start()
        contexts = NBOOTwin(seed=11).population(500, offset=9_000_000)
        self.bodies = [{"unit_id": r.pop("unit_id"), "context": {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}}
                       for r in contexts.to_dict("records")]

    def _start(self) -> ServiceProcess:
        return ServiceProcess.start(SPEC, self.policy, self.work, "--segment-age", "1", "--compact-every", "1", "--segment-records", "200",
                                    deadline_s=180.0, ready=True)

    def request(self, i: int, client: httpx.Client) -> None:
        request_id = f"soak-{i}"
        body = {**self.bodies[i % len(self.bodies)], "request_id": request_id}
        with self.lock:
            self.sent.add(request_id)
        while not self.stop.is_set():
            url = self.service.url
            try:
                r = client.post(f"{url}/v1/decide", json=body)
            except httpx.TransportError:
                time.sleep(0.05)  # the service is being killed or restarted: retry with the same id
                continue
            if r.status_code >= 500:
                with self.lock:
                    self.server_errors += 1
                time.sleep(0.05)
                continue
            if r.status_code == 200:
                with self.lock:
                    self.answers[request_id] = r.json()
            return

    def operator(self) -> None:
        """`drivetrain compact` in a loop (a second apart), a few of them killed in flight."""
        s = self.service
        while not self.stop.is_set():
            child = subprocess.Popen([sys.executable, "-m", "drivetrain", "compact", "--spec", str(SPEC), "--store", str(s.store),
                                      "--log-dir", str(s.log_dir), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if self.rng.random() < 0.2:
                time.sleep(self.rng.uniform(0.3, 2.0))  # its start-up takes about a second; then mid-compaction, or not
                child.kill()
                self.kills["operator"] += 1
            _, err = child.communicate()
            if child.returncode not in (0, -signal.SIGKILL):
                print(f"drivetrain compact exited with {child.returncode}: {err.decode()[-2000:]}", file=sys.stderr)
            self.operator_runs += 1
            self.stop.wait(1.0)  # an operator's compaction every second or so, beside the service's own

    def killer(self, began: float) -> None:
        for at in self.kill_times:
            if self.stop.wait(max(0.0, began + at - time.monotonic())):
                return
            compactor = _children(self.service.process.pid)
            if compactor and self.rng.random() < 0.4:
                os.kill(compactor[0], signal.SIGKILL)
                self.kills["compactor"] += 1
                continue
            self.service.stop(signal.SIGKILL)
            self.kills["service"] += 1
            self.service = self._start()

    def run(self) -> dict[str, int]:
        began = time.monotonic()
        threads = [threading.Thread(target=self.operator), threading.Thread(target=self.killer, args=(began,))]
        for t in threads:
            t.start()
        clients = [http_client(timeout=10.0) for _ in range(16)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            futures = []
            i = 0
            while i < self.max_requests and time.monotonic() - began < self.seconds:
                scheduled = began + i / self.rate
                time.sleep(max(0.0, scheduled - time.monotonic()))
                futures.append(pool.submit(self.request, i, clients[i % len(clients)]))
                i += 1
            drain = time.monotonic() + 120  # retries of the last requests may wait for a restart
            while time.monotonic() < drain and not all(f.done() for f in futures):
                time.sleep(0.1)
            self.stop.set()
        for c in clients:
            c.close()
        for t in threads:
            t.join()
        self.service.stop(signal.SIGTERM)
        final = subprocess.run([sys.executable, "-m", "drivetrain", "compact", "--spec", str(SPEC), "--store", str(self.service.store),
                                "--log-dir", str(self.service.log_dir), "--quiet"], capture_output=True, text=True, check=False)
        if final.returncode:
            print(f"the last compaction failed: {final.stderr[-2000:]}", file=sys.stderr)
        return self.compare()

    def compare(self) -> dict[str, int]:
        decisions = self.service.store / "decisions"
        stored = (pd.read_parquet(decisions, columns=["request_id", "action_id", "propensity", "policy_version"])
                  if decisions.exists() and any(decisions.rglob("*.parquet")) else pd.DataFrame(columns=["request_id"]))
        stored = stored[stored["request_id"].isin(self.sent)]
        left = sorted(self.service.log_dir.glob("*.jsonl"))
        by_id = stored.drop_duplicates("request_id").set_index("request_id")
        acknowledged = set(self.answers)
        missing = acknowledged - set(by_id.index)
        other = sum(1 for rid in acknowledged & set(by_id.index)
                    if (by_id.at[rid, "action_id"], float(by_id.at[rid, "propensity"]), by_id.at[rid, "policy_version"])
                    != (self.answers[rid]["action_id"], float(self.answers[rid]["propensity"]), self.answers[rid]["policy_version"]))
        return {"sent": len(self.sent), "acknowledged": len(acknowledged), "stored": len(by_id), "missing": len(missing),
                "stored with another value": other, "stored but unanswered": len(set(by_id.index) - acknowledged),
                "stored twice": int(stored["request_id"].duplicated().sum()), "5xx": self.server_errors,
                "segments left": len(left)}


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="15 s at 20 requests/s with 2 kills")
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second")
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", type=Path, help="serve this policy directory instead of fitting a small one")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rate, args.kills, args.max_requests = 15.0, 20.0, 2, 1000
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        policy = args.policy or build_policy(work / "policy")
        soak = Soak(policy, work / "run", args.rate, args.seconds, args.max_requests, args.kills, args.seed)
        result = soak.run()
    print(f"soak: {args.seconds:g} s at {args.rate:g} requests/s; kill -9: {soak.kills['service']} of the service's process group, "
          f"{soak.kills['compactor']} of its compactor, {soak.kills['operator']} of an operator's compaction "
          f"({soak.operator_runs} operator compactions in all)")
    width = max(map(len, result))
    for name, value in result.items():
        print(f"{name:>{width}} {value:8d}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
