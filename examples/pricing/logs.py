"""Randomized logs of the plan-pricing product (``drivetrain.yaml`` beside this file), with known truth.

A small simulator of a pricing page, written the way a team's own export would look: a decisions file
(one row per visitor shown a price, with the logging policy's propensity) and an outcomes file (one row
per purchase, revenue and refund event). Price sensitivity differs by segment and country (students and
visitors from India buy far less at a high price), a trial week sells to professionals with long sessions
and to teams, and teams buy add-ons. :func:`truth` gives the exact expected value of every outcome for
every (visitor, action), so a policy fitted on the logs can be judged against the best one possible.

    python examples/pricing/logs.py --out pricing-logs            # 30,000 visitors over 14 days
    drivetrain ingest --spec examples/pricing/drivetrain.yaml --store pricing-store --create \\
        pricing-logs/decisions.csv pricing-logs/outcomes.csv
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from drivetrain.spec import Spec, load_spec

SPEC_PATH = Path(__file__).with_name("drivetrain.yaml")
SEGMENTS = ("student", "professional", "team")
COUNTRIES = ("us", "de", "in")
START = datetime(2026, 3, 2, tzinfo=UTC)


def visitors(n: int, seed: int) -> pd.DataFrame:
    """``n`` visitors' contexts (``unit_id`` and the spec's features); session length is missing for 10%."""
    rng = np.random.default_rng([seed, 1])
    session = np.round(rng.lognormal(1.8, 0.7, n), 2)
    return pd.DataFrame({
        "unit_id": [f"v{seed}-{i:07d}" for i in range(n)],
        "visits_30d": rng.poisson(2.5, n).astype(np.int64),
        "segment": np.array(SEGMENTS, dtype=object)[rng.choice(3, n, p=[0.4, 0.45, 0.15])],
        "country": np.array(COUNTRIES, dtype=object)[rng.choice(3, n, p=[0.5, 0.3, 0.2])],
        "session_minutes": np.where(rng.random(n) < 0.1, np.nan, session),
    })


def truth(spec: Spec, contexts: pd.DataFrame) -> dict[str, np.ndarray]:
    """Exact E[component | context, action] for every component, shape (n, K) in the spec's action order."""
    segment = pd.Categorical(contexts["segment"], categories=SEGMENTS).codes
    india = (contexts["country"] == "in").to_numpy()
    session = np.nan_to_num(contexts["session_minutes"].to_numpy(dtype=np.float64), nan=6.0)
    visits = np.log1p(contexts["visits_30d"].to_numpy(dtype=np.float64))
    sensitivity = np.array([0.28, 0.03, 0.09])[segment] + 0.12 * india  # logit per unit of price
    trial_lift = np.where(segment == 0, 0.1, np.where(segment == 1, np.where(session > 8, 0.6, 0.05), 0.35))
    add_ons = np.array([0.5, 0.8, 4.0])[segment]
    levers = spec.action_space.lever_columns()
    n, k = len(contexts), len(spec.action_space)
    out = {c: np.zeros((n, k)) for c in ("purchase", "revenue", "refund")}
    for j in range(k):
        price, trial = float(levers["price"][j]), float(levers["trial"][j] == "week")
        p = 1.0 / (1.0 + np.exp(-(-2.0 + 0.45 * visits + 0.03 * session - sensitivity * (price - 12.0) + trial_lift * trial)))
        out["purchase"][:, j] = p
        out["revenue"][:, j] = p * (price + add_ons) * (0.8 if trial else 1.0)  # a trial week is a week not paid
        out["refund"][:, j] = p * (0.03 + 0.004 * (price - 9.0) + 0.08 * trial)
    return out


def objective(spec: Spec, components: dict[str, np.ndarray]) -> np.ndarray:
    """The spec's objective of the true components, (n, K)."""
    return np.asarray(spec.objective({**components, **spec.action_space.lever_columns()}), dtype=np.float64)


def log(spec: Spec, n: int, seed: int, *, days: int = 14) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decisions and outcome events of ``n`` visitors over ``days`` days: uniform random actions in the
    program (propensity 1/K), control outside it (propensity 1); outcomes within the horizon."""
    rng = np.random.default_rng([seed, 2])
    frame = visitors(n, seed)
    k = len(spec.action_space)
    program = spec.eligible_units({c: frame[c].to_numpy() for c in spec.features})
    action = np.where(program, rng.integers(0, k, n), spec.control.index)
    decided = START + pd.to_timedelta(np.sort(rng.uniform(0, days * 86400, n)), unit="s")
    levers = spec.action_space.lever_columns(action)
    decisions = frame.assign(
        request_id=[f"r{seed}-{i:07d}" for i in range(n)], decided_at=decided.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        price=levers["price"], trial=levers["trial"], propensity=np.where(program, 1.0 / k, 1.0))
    comps = truth(spec, frame)
    rows = np.arange(n)
    p = comps["purchase"][rows, action]
    bought = np.flatnonzero(rng.random(n) < p)
    at = decided[bought] + pd.to_timedelta(rng.uniform(0, 140 * 3600, bought.size), unit="s")
    revenue = comps["revenue"][bought, action[bought]] / p[bought] * rng.lognormal(-0.02, 0.2, bought.size)
    refunded = rng.random(bought.size) < comps["refund"][bought, action[bought]] / p[bought]
    events = pd.concat([
        pd.DataFrame({"event_id": [f"{r}-purchase" for r in decisions["request_id"].to_numpy()[bought]], "occurred_at": at,
                      "component": "purchase", "value": 1.0, "i": bought}),
        pd.DataFrame({"event_id": [f"{r}-revenue" for r in decisions["request_id"].to_numpy()[bought]],
                      "occurred_at": at + pd.Timedelta(minutes=1), "component": "revenue", "value": np.round(revenue, 2), "i": bought}),
        pd.DataFrame({"event_id": [f"{r}-refund" for r in decisions["request_id"].to_numpy()[bought[refunded]]],
                      "occurred_at": at[refunded] + pd.Timedelta(hours=20), "component": "refund", "value": 1.0, "i": bought[refunded]}),
    ], ignore_index=True)
    events.insert(1, "request_id", decisions["request_id"].to_numpy()[events.pop("i").to_numpy()])
    events["occurred_at"] = pd.DatetimeIndex(events["occurred_at"]).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    columns = ["request_id", "unit_id", "decided_at", "price", "trial", "propensity", *spec.features]
    return decisions[columns], events.sort_values(["occurred_at", "event_id"], ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for decisions.csv and outcomes.csv")
    parser.add_argument("--visitors", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.visitors < 1:
        parser.error(f"--visitors must be >= 1, got {args.visitors}")
    spec = load_spec(SPEC_PATH)
    decisions, outcomes = log(spec, args.visitors, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    decisions.to_csv(args.out / "decisions.csv", index=False)
    outcomes.to_csv(args.out / "outcomes.csv", index=False)
    print(f"wrote {len(decisions)} decisions and {len(outcomes)} outcome events to {args.out}")


if __name__ == "__main__":
    main()
