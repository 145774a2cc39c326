"""Alert rules on the twin's 7-day configuration and on hand-built logs; the monitor command."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from drivetrain.cli import app
from drivetrain.clock import SimulatedClock
from drivetrain.data import (
    MemoryStore,
    ParquetStore,
    RawRows,
    Store,
    ingest_decisions,
    ingest_outcomes,
    training_table,
    write_baselines,
)
from drivetrain.evaluate import GuardrailCheck, SliceEvaluation, check_alerts, evaluate, measure_drift, store_alerts
from drivetrain.spec import Spec, parse_spec
from drivetrain.twin import NBOOTwin, Scenario
from drivetrain.twin._nboo import LoggingPolicy

RULES = [
    {"name": "drift", "kind": "drift", "feature": "*", "psi_above": 0.2},
    {"name": "guardrails", "kind": "guardrail", "cohort": "any"},
    {"name": "srm", "kind": "sample_ratio"},
    {"name": "redeemed_drop", "kind": "metric_drop", "figure": "outcome:redeemed", "arm": "policy", "drop_pct": 50, "for_days": 3},
    {"name": "slow", "kind": "latency", "percentile": 95, "above_ms": 20, "for_minutes": 5},
]


def _with_rules(spec: Spec, rules: list[dict[str, Any]] = RULES) -> Spec:
    raw = copy.deepcopy(spec.model.model_dump(mode="json"))
    raw["monitoring"]["alerts"] = rules
    return parse_spec(raw)


def _served(contexts: pd.DataFrame, eligible: np.ndarray) -> np.ndarray:
    probs = 0.3 * eligible / eligible.sum(axis=1, keepdims=True)
    probs[:, 3] += 0.7  # mostly a 10% immediate discount
    return probs


def _run(twin: NBOOTwin, days: int, users: int, policy: LoggingPolicy = _served) -> tuple[Store, SimulatedClock]:
    spec = _with_rules(twin.spec)
    store = MemoryStore(spec)
    clock = SimulatedClock(twin.start + timedelta(days=days + 20))
    logs = [twin.log(twin.population(users, day=day, offset=100_000 * day), day=day, policy=policy) for day in range(days)]
    # every day arrives at the same (later) time, so one ingest of all days stores what one ingest a day would
    # (an ingest costs about a second whatever its size: 45 days of them were most of a test's time)
    ingest_decisions(store, RawRows(pd.concat([d for d, _ in logs], ignore_index=True), (), f"days 0-{days - 1}"), clock=clock)
    ingest_outcomes(store, RawRows(pd.concat([o for _, o in logs], ignore_index=True), (), f"days 0-{days - 1}"), clock=clock)
    reference = training_table(store, clock.now())[0].to_pandas()
    reference = reference[reference["decided_at"] < twin.start + timedelta(days=2)]
    columns = {n: ("feature", reference[n].to_numpy()) for n in spec.features if n not in spec.personal_features}
    write_baselines(store, columns, version="v1", created_at=twin.start, cohorts={c: reference[c].to_numpy() for c in spec.model.cohorts})
    return store, clock


def _check(store: Store, twin: NBOOTwin, day: int) -> list[Any]:
    end = twin.start + timedelta(days=day + 1)
    as_of = end + twin.spec.horizon + twin.spec.settle  # the day's decisions are mature
    drift = measure_drift(store, "v1", start=end - timedelta(days=1), end=end, as_of=as_of)
    return check_alerts(store.spec, evaluation=evaluate(store, as_of), drift=drift, store=store, as_of=as_of)


def test_45_quiet_days_raise_no_alert() -> None:
    twin = NBOOTwin(horizon_days=7, seed=12)
    store, _ = _run(twin, 45, 800)
    for day in (20, 35, 44):
        assert _check(store, twin, day) == [], day


def test_a_covariate_shift_fires_the_drift_alert_of_that_feature_within_two_days() -> None:
    scenario = Scenario(shift_feature="dwell_time_s", shift_factor=1.6, shift_day=6)
    twin = NBOOTwin(horizon_days=7, seed=13, scenario=scenario)
    store, _ = _run(twin, 9, 3000)
    assert [a for a in _check(store, twin, 5) if a.kind == "drift"] == []
    fired = [a for day in (6, 7) for a in _check(store, twin, day) if a.kind == "drift"]
    assert fired and {a.subject.split(" ")[0] for a in fired} == {"dwell_time_s"}


def _fitted_before_the_change(twin: NBOOTwin) -> LoggingPolicy:
    """A good policy that knows the world as it was on day 0: the truly best action, 10% exploration."""

    def policy(contexts: pd.DataFrame, eligible: np.ndarray) -> np.ndarray:
        value = np.where(eligible, twin.truth(contexts, day=0).objective, -np.inf)
        probs = 0.1 * eligible / eligible.sum(axis=1, keepdims=True)
        probs[np.arange(len(contexts)), value.argmax(axis=1)] += 0.9
        return probs

    return policy


def test_an_effect_change_in_one_segment_fires_that_segments_guardrail_while_the_overall_figure_looks_fine() -> None:
    """From day 2, every offer to gold users lowers their purchase logit by 1 and raises their refund
    probability by 0.25 (gold is a tenth of the users). The refund guardrail (max 0.03) of tier = gold
    fires within three days of the change and stays (Holm's correction over the rule's slices and bounds
    costs a day: without it the alert fired within two); nothing else fires, and overall the policy still
    looks fine: a positive north star and refunds within the guardrail."""
    change = 2
    scenario = Scenario(effect_segment=("tier", "gold"), effect_delta=-1.0, effect_refund=0.25, effect_day=change)
    twin = NBOOTwin(horizon_days=7, seed=15, scenario=scenario)
    days = change + 4
    store, _ = _run(twin, days, 2500, policy=_fitted_before_the_change(twin))
    assert _check(store, twin, change - 1) == []
    fired = {day: _check(store, twin, day) for day in range(change, days)}
    assert {a.subject for alerts in fired.values() for a in alerts} == {"refund_rate [tier=gold]"}
    first = min(day for day, alerts in fired.items() if alerts)
    assert first <= change + 3, first
    assert "adjusted over" in fired[first][0].message
    assert all(fired[day] for day in range(first, days))  # once crossed, it stays crossed
    ev = evaluate(store, twin.start + timedelta(days=days) + twin.spec.horizon + twin.spec.settle)

    def refund(s: SliceEvaluation) -> GuardrailCheck:
        return next(g for g in s.guardrails if g.name == "refund_rate")

    gold = refund(ev.slice(cohort="tier", value="gold"))
    assert gold.breached is True and gold.effect.low is not None and gold.effect.low > 0  # above the holdout's, too
    assert all(refund(s).breached is False for s in (ev.overall, *(s for s in ev.by_cohort("tier") if s.value != "gold")))
    overall = ev.overall.north_star
    assert overall.difference is not None and overall.difference > 0
    assert overall.high is not None and overall.high > 0  # not significantly negative: no reason to look closer


def _latency_store(spec: Spec, minutes_slow: int) -> MemoryStore:
    store = MemoryStore(spec)
    start = pd.Timestamp("2026-02-01T10:00:00Z")
    n = 60 * 20  # 20 decisions a minute for an hour
    rng = np.random.default_rng(0)
    latency = rng.uniform(1.0, 5.0, n)
    slow = (np.arange(n) // 20 >= 30) & (np.arange(n) // 20 < 30 + minutes_slow)
    latency[slow] = rng.uniform(30.0, 40.0, slow.sum())
    frame = NBOOTwin().population(n)
    frame["request_id"] = [f"r{i}" for i in range(n)]
    frame["decided_at"] = start + pd.to_timedelta(np.arange(n) * 3, unit="s")
    frame["received_at"] = frame["decided_at"]
    frame["action_id"] = spec.control.id
    frame["propensity"] = 1.0
    frame["latency_ms"] = latency
    ingest_decisions(store, RawRows(frame, (), "hand"), clock=SimulatedClock(start.to_pydatetime() + timedelta(days=1)))
    return store


@pytest.mark.parametrize(("minutes_slow", "fires"), [(8, True), (3, False)])
def test_latency_above_the_slo_for_n_minutes(minutes_slow: int, fires: bool) -> None:
    spec = _with_rules(NBOOTwin().spec, [r for r in RULES if r["kind"] == "latency"])
    store = _latency_store(spec, minutes_slow)
    as_of = pd.Timestamp("2026-02-01T12:00:00Z").to_pydatetime()
    alerts = check_alerts(spec, store=store, as_of=as_of)
    assert bool(alerts) == fires
    if fires:
        assert "for 8 consecutive minutes" in alerts[0].message and alerts[0].value > 20


def test_sample_ratio_mismatch_fires_and_alerts_are_stored_once(tmp_path: Path) -> None:
    twin = NBOOTwin(horizon_days=7, seed=14)
    spec = _with_rules(twin.spec, [r for r in RULES if r["kind"] == "sample_ratio"])
    users = twin.population(6000)
    decisions, _ = twin.log(users, policy=_served)
    held = np.flatnonzero((decisions["assignment"] == "holdout").to_numpy())
    store = ParquetStore(tmp_path / "store", spec, create=True)
    clock = SimulatedClock(twin.start + timedelta(days=30))
    ingest_decisions(store, RawRows(decisions.drop(index=held[::3]), (), "d"), clock=clock)
    as_of = twin.start + timedelta(days=1)
    alerts = check_alerts(spec, evaluation=evaluate(store, as_of))
    assert [a.kind for a in alerts] == ["sample_ratio"]
    assert store_alerts(store, alerts, fired_at=clock.now()) == 1
    assert store_alerts(store, alerts, fired_at=clock.now()) == 0  # the same check again adds nothing
    assert store.count("alerts") == 1
    # the command: exit code 1 when an alert fired, the alert stored once
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model.model_dump(mode="json"), sort_keys=False))
    result = CliRunner().invoke(app, ["monitor", "--spec", str(spec_file), "--store", str(tmp_path / "store"), "--as-of", as_of.isoformat()])
    assert result.exit_code == 1, result.output
    assert "ALERT srm (sample_ratio)" in result.output
    assert store.count("alerts") == 1
    healthy = ParquetStore(tmp_path / "healthy", spec, create=True)
    ingest_decisions(healthy, RawRows(decisions, (), "d"), clock=clock)
    result = CliRunner().invoke(app, ["monitor", "--spec", str(spec_file), "--store", str(tmp_path / "healthy"), "--as-of", as_of.isoformat()])
    assert result.exit_code == 0 and "no alert fired" in result.output, result.output
    result = CliRunner().invoke(app, ["evaluate", "--spec", str(spec_file), "--store", str(tmp_path / "healthy"), "--as-of", as_of.isoformat()])
    assert result.exit_code == 0 and "north star" in result.output, result.output


def test_rules_are_validated_against_the_spec() -> None:
    from drivetrain.errors import SpecError

    spec = NBOOTwin().spec
    for rule, message in [
        ({"name": "x", "kind": "metric_drop", "figure": "nonsense"}, "figure: must be one of"),
        ({"name": "x", "kind": "drift", "feature": "shoe_size"}, "feature: must be '*'"),
        ({"name": "x", "kind": "guardrail", "cohort": "planet"}, "cohort: must be 'any' or one of the cohorts"),
    ]:
        with pytest.raises(SpecError, match=message):
            _with_rules(spec, [rule])
    with pytest.raises(SpecError, match="names must be distinct"):
        _with_rules(spec, [{"name": "a", "kind": "sample_ratio"}, {"name": "a", "kind": "guardrail"}])


def test_the_guardrail_alert_uses_the_policy_arms_own_variance_for_a_guardrail_that_is_not_a_rate() -> None:
    """A guardrail is any formula's mean. With the true mean exactly at the bound, the 99% alert must fire
    in at most about 0.5% of evaluations (a binomial error on a mean basket value of 60 fired in half of
    them), and with the true mean 4 standard errors over the bound in most of them."""
    from types import SimpleNamespace

    from scipy import stats

    from drivetrain.evaluate._alerts import _guardrail

    rng = np.random.default_rng(0)
    z = float(stats.norm.ppf(0.995))
    rule = SimpleNamespace(cohort=None, name="g", kind="guardrail", sequential_units=None)
    n, reps, bound, sd = 2000, 2000, 60.0, 50.0

    def fires(values: np.ndarray) -> bool:
        effect = SimpleNamespace(policy=float(values.mean()), policy_se=float(values.std(ddof=1) / np.sqrt(len(values))))
        s = SimpleNamespace(guardrails=[SimpleNamespace(name="basket", max=bound, min=None, effect=effect)], policy_units=len(values))
        evaluation = SimpleNamespace(cohorts=(), slice=lambda cohort=None, value=None: s, as_of=None)
        return bool(_guardrail(rule, evaluation, z))  # type: ignore[arg-type]

    at_bound = np.mean([fires(rng.normal(bound, sd, n)) for _ in range(reps)])
    over = np.mean([fires(rng.normal(bound + 4 * sd / np.sqrt(n), sd, n)) for _ in range(reps // 4)])
    assert at_bound <= 0.012
    assert over > 0.85


def test_the_guardrail_alert_holds_its_false_alarm_rate_over_many_cohort_values() -> None:
    """Twenty cohort values and the overall figure, every policy arm exactly at the bound: without a
    correction a 99% check fires somewhere in about 1 - 0.995^21 = 10% of evaluations; Holm's over the 21
    tests keeps any alert at about 0.5%. One value 5 standard errors over the bound still fires, and
    only that one."""
    from types import SimpleNamespace

    from scipy import stats

    from drivetrain.evaluate._alerts import _guardrail

    rng = np.random.default_rng(1)
    z = float(stats.norm.ppf(0.995))
    rule = SimpleNamespace(cohort="any", name="g", kind="guardrail", sequential_units=None)
    bound, se, values = 0.03, 0.002, [f"v{i}" for i in range(20)]

    def alerts(shift: dict[str | None, float]) -> list[str]:
        def part(value: str | None) -> SimpleNamespace:
            effect = SimpleNamespace(policy=bound + se * (shift.get(value, 0.0) + rng.standard_normal()), policy_se=se)
            return SimpleNamespace(value=value, guardrails=[SimpleNamespace(name="refund", max=bound, min=None, effect=effect)],
                                   policy_units=1000)
        parts = {None: part(None), **{v: part(v) for v in values}}
        evaluation = SimpleNamespace(cohorts=("segment",), by_cohort=lambda name: [parts[v] for v in values],
                                     slice=lambda cohort=None, value=None: parts[value], as_of=None)
        return [a.subject for a in _guardrail(rule, evaluation, z)]  # type: ignore[arg-type]

    null = np.mean([bool(alerts({})) for _ in range(2000)])
    assert null <= 0.01, null  # uncorrected: about 0.10
    hits = [alerts({"v7": 5.0}) for _ in range(500)]
    assert np.mean([s == ["refund [segment=v7]"] for s in hits]) > 0.75


def test_a_sequential_guardrail_alert_holds_its_level_over_thirty_daily_checks() -> None:
    """The program grows by 300 policy-arm units a day and the rule is checked every day on all of them
    so far, the arm exactly at the bound. The fixed-level check (0.5% one-sided per check) fires on some
    day of thirty in about 4% of programs; with ``sequential_units`` the always-valid p-value keeps that
    at most 0.5%. A mean 0.1 standard deviations per unit over the bound still fires within ten days."""
    from types import SimpleNamespace

    from scipy import stats

    from drivetrain.evaluate._alerts import _guardrail, always_valid_p, mixture_variance

    rng = np.random.default_rng(2)
    z, bound, sd, per_day, days, reps = float(stats.norm.ppf(0.995)), 0.03, 0.17, 300, 30, 1000

    def first_day(shift: float, units: int | None) -> int | None:
        rule = SimpleNamespace(cohort=None, name="g", kind="guardrail", sequential_units=units)
        total = 0.0
        for day in range(1, days + 1):
            total += rng.normal((bound + shift * sd) * per_day, sd * np.sqrt(per_day))
            n = day * per_day
            effect = SimpleNamespace(policy=total / n, policy_se=sd / np.sqrt(n))
            part = SimpleNamespace(value=None, policy_units=n,
                                   guardrails=[SimpleNamespace(name="refund", max=bound, min=None, effect=effect)])
            evaluation = SimpleNamespace(cohorts=(), slice=lambda cohort=None, value=None: part, as_of=None)  # noqa: B023 (called within the iteration)
            if _guardrail(rule, evaluation, z):  # type: ignore[arg-type]
                return day
        return None

    fixed = np.mean([first_day(0.0, None) is not None for _ in range(reps)])
    sequential = np.mean([first_day(0.0, 1000) is not None for _ in range(reps)])
    assert fixed > 0.02, fixed  # the problem: each check at 0.5%, thirty checks of the same growing sample
    assert sequential <= 0.005, sequential
    hits = [first_day(0.1, 1000) for _ in range(200)]
    assert np.mean([d is not None and d <= 10 for d in hits]) > 0.95
    # the p-value itself: never below the fixed one, equal to 1 at or under the null, and the mixing variance is the
    # one whose boundary is tightest at the units it is tuned for
    rho2 = mixture_variance(0.005, 1000)
    grid = np.linspace(-3, 8, 45)
    assert np.all(always_valid_p(grid, 1000, rho2) >= stats.norm.sf(grid) - 1e-12)
    assert always_valid_p(0.0, 1000, rho2) == 1.0

    def threshold(n: int) -> float:
        from scipy.optimize import brentq

        return float(brentq(lambda x: float(always_valid_p(x, n, rho2)) - 0.005, 0.1, 20.0))

    assert threshold(1000) < min(threshold(300), threshold(3000))


def test_the_sequential_sample_ratio_test_never_rejects_a_right_split_more_often_than_its_level() -> None:
    """Exact, not simulated: the chance that the always-valid split test ever rejects a correct 10%
    holdout, checked after every one of 3,000 units, computed over every path of holdout counts (the
    counts' distribution among the paths not rejected yet, stepped unit by unit). Ville's inequality
    bounds it by the level; the chi-square test, checked as often, exceeds it several times over."""
    from scipy import stats

    from drivetrain.evaluate._alerts import always_valid_split_p, mixture_variance

    share, alpha, units = 0.1, 0.01, 3000
    rho2 = mixture_variance(alpha, 1000)

    def ever_rejected(p_value: Any) -> float:
        alive = np.array([1.0])  # mass of holdout count x = 0, 1, ... among paths with no rejection yet
        rejected = 0.0
        for n in range(1, units + 1):
            alive = np.concatenate([alive * (1 - share), [0.0]]) + np.concatenate([[0.0], alive * share])
            hit = p_value(np.arange(n + 1), n) < alpha
            rejected += float(alive[hit].sum())
            alive[hit] = 0.0
        return rejected

    def chi_square(x: np.ndarray, n: int) -> np.ndarray:
        expected = np.array([share, 1 - share])[:, None] * n
        observed = np.vstack([x, n - x])
        return stats.chi2.sf(((observed - expected) ** 2 / expected).sum(axis=0), df=1)

    sequential = ever_rejected(lambda x, n: always_valid_split_p(x, n, share, rho2))
    fixed = ever_rejected(chi_square)
    assert 0.0 < sequential <= alpha, sequential
    assert fixed > 5 * alpha, fixed
    # a real mismatch is still found: 9% held out instead of 10%, checked daily on 2,000 new units a day
    rng = np.random.default_rng(3)
    daily = rng.binomial(2000, 0.09, size=(300, 30)).cumsum(axis=1)
    n = 2000 * np.arange(1, 31)
    fires = always_valid_split_p(daily, n, share, mixture_variance(alpha, 20_000)) < alpha
    assert np.mean(fires[:, 9]) > 0.9  # by day 10, 20,000 units
    assert np.all(always_valid_split_p(np.arange(0, 2001, 50), 2000, share, rho2) >= chi_square(np.arange(0, 2001, 50), 2000) - 1e-12)


def test_a_sample_ratio_rule_with_sequential_units_fires_on_a_broken_split_and_not_on_a_healthy_one() -> None:
    """Through ``check_alerts`` with the spec's rule: a third of the holdout lost fires (naming the
    always-valid test), the twin's own split does not."""
    twin = NBOOTwin(horizon_days=7, seed=14)
    spec = _with_rules(twin.spec, [{"name": "srm", "kind": "sample_ratio", "sequential_units": 5000}])
    decisions, _ = twin.log(twin.population(6000), policy=_served)
    held = np.flatnonzero((decisions["assignment"] == "holdout").to_numpy())
    clock = SimulatedClock(twin.start + timedelta(days=30))
    as_of = twin.start + timedelta(days=1)
    broken, healthy = MemoryStore(spec), MemoryStore(spec)
    ingest_decisions(broken, RawRows(decisions.drop(index=held[::3]), (), "d"), clock=clock)
    ingest_decisions(healthy, RawRows(decisions, (), "d"), clock=clock)
    alerts = check_alerts(spec, evaluation=evaluate(broken, as_of))
    assert [a.kind for a in alerts] == ["sample_ratio"]
    assert "always valid over repeated checks" in alerts[0].message
    assert check_alerts(spec, evaluation=evaluate(healthy, as_of)) == []
