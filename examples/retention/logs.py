"""Randomized logs of the subscription-retention product (``drivetrain.yaml`` beside this file), with known truth.

A small simulator of renewals, written the way a team's own exports look: a decisions file (one row per
subscriber due to renew, with the randomized offer and call and their propensity, the subscriber's email
in clear as the CRM exports it) and an outcomes file (one row per renewal and its revenue), each with a few
bad rows of the kinds real exports have. Subscribers with support tickets renew far more after a call,
basic plans respond to a discount and premium ones hardly, so the best policy differs by plan and
tickets. :func:`truth` gives the exact expected value of every outcome for every (subscriber, action).

    python examples/retention/logs.py --out retention-logs                  # 20,000 subscribers over 21 days
    python examples/retention/logs.py due --out due.csv --subscribers 3000 --seed 7          # contexts to decide on
    python examples/retention/logs.py respond --decisions served.csv --out outcomes.csv   # the loop's outcomes
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from drivetrain.spec import Spec, load_spec

SPEC_PATH = Path(__file__).with_name("drivetrain.yaml")
PLANS = ("basic", "premium")
CHANNELS = ("web", "app", "store")
START = datetime(2026, 4, 1, tzinfo=UTC)
STAMP = "%Y-%m-%dT%H:%M:%S.%fZ"


def subscribers(n: int, seed: int) -> pd.DataFrame:
    """``n`` subscribers' contexts (``unit_id``, the spec's features); 8% never logged in (null)."""
    rng = np.random.default_rng([seed, 1])
    plan = np.array(PLANS, dtype=object)[rng.choice(2, n, p=[0.65, 0.35])]
    fee = np.where(plan == "basic", rng.choice([9.99, 14.99], n), rng.choice([24.99, 29.99], n))
    last = rng.geometric(0.08, n).astype(np.float64)
    return pd.DataFrame({
        "unit_id": [f"s{seed}-{i:07d}" for i in range(n)],
        "tenure_months": rng.integers(1, 60, n).astype(np.int64),
        "monthly_fee": fee,
        "plan": plan,
        "channel": np.array(CHANNELS, dtype=object)[rng.choice(3, n, p=[0.5, 0.35, 0.15])],
        "tickets_90d": rng.poisson(0.8, n).astype(np.int64),
        "last_login_days": pd.array(np.where(rng.random(n) < 0.08, np.nan, last)).astype("Int64"),
        "email": [f"user{seed}.{i}@example.com" for i in range(n)],
    })


def truth(spec: Spec, contexts: pd.DataFrame) -> dict[str, np.ndarray]:
    """Exact E[component | context, action] for every component, shape (n, K) in the spec's action order."""
    basic = (contexts["plan"] == "basic").to_numpy()
    tickets = contexts["tickets_90d"].to_numpy(dtype=np.float64)
    tenure = np.log1p(contexts["tenure_months"].to_numpy(dtype=np.float64))
    login = pd.to_numeric(contexts["last_login_days"], errors="coerce").fillna(60.0).to_numpy(dtype=np.float64)
    fee = contexts["monthly_fee"].to_numpy(dtype=np.float64)
    base = 0.6 + 0.45 * tenure - 0.45 * tickets - 0.02 * login + 0.4 * ~basic
    per_discount = np.where(basic, 0.045, 0.008)  # logit per point of discount
    per_call = np.where(tickets >= 2, 1.1, 0.15) + 0.2 * (contexts["channel"] == "store").to_numpy()
    levers = spec.action_space.lever_columns()
    n, k = len(contexts), len(spec.action_space)
    out = {c: np.zeros((n, k)) for c in ("renewed", "revenue")}
    for j in range(k):
        discount, call = float(levers["discount"][j]), float(levers["call"][j] == "yes")
        p = 1.0 / (1.0 + np.exp(-(base + per_discount * discount + per_call * call)))
        out["renewed"][:, j] = p
        out["revenue"][:, j] = p * 3 * fee * (1 - discount / 100)
    return out


def objective(spec: Spec, components: dict[str, np.ndarray]) -> np.ndarray:
    """The spec's objective of the true components, (n, K)."""
    return np.asarray(spec.objective({**components, **spec.action_space.lever_columns()}), dtype=np.float64)


def _events(spec: Spec, decisions: pd.DataFrame, contexts: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Renewal and revenue events of ``decisions`` (their actions and times) drawn from the truth."""
    action = spec.action_space.indices(decisions["action_id"].to_numpy())
    comps = truth(spec, contexts)
    rows = np.arange(len(decisions))
    renewed = np.flatnonzero(rng.random(len(decisions)) < comps["renewed"][rows, action])
    at = pd.DatetimeIndex(pd.to_datetime(decisions["decided_at"], utc=True))[renewed] + pd.to_timedelta(
        rng.uniform(0, 25 * 86400, renewed.size), unit="s")
    ids = decisions["request_id"].to_numpy()[renewed]
    revenue = comps["revenue"][renewed, action[renewed]] / comps["renewed"][renewed, action[renewed]]
    events = pd.concat([
        pd.DataFrame({"event_id": [f"{r}-renewed" for r in ids], "request_id": ids, "occurred_at": at, "component": "renewed", "value": 1.0}),
        pd.DataFrame({"event_id": [f"{r}-revenue" for r in ids], "request_id": ids, "occurred_at": at, "component": "revenue",
                      "value": np.round(revenue, 2)}),
    ], ignore_index=True)
    occurred = pd.DatetimeIndex(events["occurred_at"])
    events["occurred_at"] = occurred.strftime(STAMP)
    events["received_at"] = (occurred + pd.Timedelta(hours=2)).strftime(STAMP)  # when the export saw it: --as-of counts by it
    return events.sort_values(["occurred_at", "event_id"], ignore_index=True)


def log(spec: Spec, n: int, seed: int, *, days: int = 21, bad_rows: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decisions and outcome events of ``n`` subscribers over ``days`` days: uniform random actions in the
    program (propensity 1/K), control outside it (propensity 1); with ``bad_rows``, the bad rows of a real
    export appended (each kind once or twice, see the module docstring)."""
    rng = np.random.default_rng([seed, 2])
    frame = subscribers(n, seed)
    k = len(spec.action_space)
    program = spec.eligible_units({c: frame[c].to_numpy() for c in spec.features})
    action = np.where(program, rng.integers(0, k, n), spec.control.index)
    decided = pd.DatetimeIndex(START + pd.to_timedelta(np.sort(rng.uniform(0, days * 86400, n)), unit="s"))
    levers = spec.action_space.lever_columns(action)
    decisions = frame.assign(request_id=[f"r{seed}-{i:07d}" for i in range(n)], decided_at=decided.strftime(STAMP),
                             received_at=(decided + pd.Timedelta(minutes=5)).strftime(STAMP),
                             discount=levers["discount"], call=levers["call"], propensity=np.where(program, 1.0 / k, 1.0),
                             action_id=np.array(spec.action_space.ids, dtype=object)[action])
    events = _events(spec, decisions, frame, rng)
    columns = ["request_id", "unit_id", "decided_at", "received_at", "discount", "call", "propensity", *spec.features]
    decisions = decisions[columns].astype({"last_login_days": object})
    if bad_rows:
        decisions, events = _spoil(decisions, events)
    return decisions, events


def _spoil(decisions: pd.DataFrame, events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Append copies of good rows, each broken in one way an export breaks: 13 decisions, 4 events."""
    bad = decisions.head(13).astype(object)
    bad["request_id"] = [f"bad-{i:02d}" for i in range(13)]
    bad.loc[bad.index[0], "unit_id"] = None                    # no unit
    bad.loc[bad.index[1:3], "channel"] = "Web"                 # a category in another case (correctable)
    bad.loc[bad.index[3], "tenure_months"] = -4                # below the contract's min
    bad.loc[bad.index[4], "propensity"] = 0.0                  # a propensity that cannot be one
    bad.loc[bad.index[5], "decided_at"] = "2026-04-31T10:00:00Z"  # no such day
    bad.loc[bad.index[6], "discount"] = 15                     # not a lever value
    bad.loc[bad.index[7], "monthly_fee"] = "n/a"               # text in a number
    bad.loc[bad.index[8], "call"] = "maybe"                    # not a lever value
    bad.loc[bad.index[9], "last_login_days"] = 2.5             # not a whole number
    bad.loc[bad.index[10], "plan"] = None                      # a missing category that is not nullable
    bad.loc[bad.index[11], "propensity"] = 1.7                 # above 1
    dup = decisions.iloc[[20]].astype(object)
    dup["call"] = "yes" if dup["call"].iloc[0] == "no" else "no"  # a request id sent twice with another action
    bad = pd.concat([bad.iloc[:12], dup], ignore_index=True)
    spoiled = events.head(4).astype(object)
    spoiled["event_id"] = [f"bad-event-{i}" for i in range(4)]
    spoiled.loc[spoiled.index[0], "request_id"] = "r-unknown-1"   # an outcome of no decision
    spoiled.loc[spoiled.index[1], "value"] = "abc"                # text in a value
    spoiled.loc[spoiled.index[2], "component"] = "churned"        # not an outcome of the spec
    spoiled.loc[spoiled.index[3], "occurred_at"] = "yesterday"    # no time
    return (pd.concat([decisions, bad], ignore_index=True),
            pd.concat([events.astype({"value": object}), spoiled], ignore_index=True))


def respond(spec: Spec, decisions: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The outcome events that served decisions (a ``drivetrain decide`` output) cause, from the truth."""
    return _events(spec, decisions, decisions, np.random.default_rng([seed, 3]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["log", "due", "respond"], default="log",
                        help="log: the randomized history; due: contexts of subscribers due to renew; respond: outcomes of decisions")
    parser.add_argument("--out", type=Path, required=True, help="log: a directory for decisions.csv and outcomes.csv; due, respond: a CSV file")
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--decisions", type=Path, help="respond: the served decisions (CSV or Parquet)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clean", action="store_true", help="log: no bad rows")
    args = parser.parse_args()
    spec = load_spec(SPEC_PATH)
    if args.mode == "respond":
        if args.decisions is None:
            parser.error("respond needs --decisions FILE")
        served = pd.read_parquet(args.decisions) if args.decisions.suffix == ".parquet" else pd.read_csv(args.decisions)
        events = respond(spec, served, args.seed)
        events.to_csv(args.out, index=False)
        print(f"wrote {len(events)} outcome events of {len(served)} decisions to {args.out}")
        return
    if args.subscribers < 1:
        parser.error(f"--subscribers must be >= 1, got {args.subscribers}")
    if args.mode == "due":
        subscribers(args.subscribers, args.seed).to_csv(args.out, index=False)
        print(f"wrote {args.subscribers} subscribers due to renew to {args.out}")
        return
    decisions, outcomes = log(spec, args.subscribers, args.seed, bad_rows=not args.clean)
    args.out.mkdir(parents=True, exist_ok=True)
    decisions.to_csv(args.out / "decisions.csv", index=False)
    outcomes.to_csv(args.out / "outcomes.csv", index=False)
    print(f"wrote {len(decisions)} decisions and {len(outcomes)} outcome events to {args.out}")


if __name__ == "__main__":
    main()
