"""The Next Best Offer twin: a simulated customer population with known ground truth.

Users carry behavioural (page views, cart adds, dwell time), transactional (purchases, tenure, average
order value) and segment (region, device, tier) features. How an offer moves each outcome is a closed-form
function of the observed context, so the expected value of every outcome component for every
(unit, action) is known exactly; realized outcomes add Bernoulli and log-normal noise and arrive as
events with realistic delays.

The response is built from soft segments, so that no single action is right for everyone:

* sure things (frequent buyers) buy anyway: a discount is pure cost;
* persuadables (cart adds without purchases) respond to discounts, more to deeper ones;
* lost causes (few page views) respond to nothing;
* sleeping dogs (long-tenured gold users) buy less when they get any offer;
* free-shipping responders (small baskets, mobile, the north) and bundle responders (large baskets);
* a delayed offer helps deliberate users (long dwell time) and loses impulse buyers;
* refunds rise with discount depth; delayed offers draw complaints.

Scenario knobs (:class:`Scenario`) add seasonality, a covariate shift in one segment, a change in a
feature's definition, a change in effects for one segment from a given day, and discount habituation
across days. Everything is a pure function of the seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from drivetrain.errors import UsageError
from drivetrain.spec import Spec, in_holdout, parse_spec, read_yaml, serving_propensity

__all__ = ["COMPONENTS", "NBOOTwin", "Scenario", "Truth", "nboo_spec"]

SPEC_PATH = Path(__file__).with_name("nboo.yaml")
COMPONENTS = ("purchase", "order_value", "gross_profit", "promo_cost", "redeemed", "refund", "complaint")
REGIONS = ("north", "south", "east", "west")
DEVICES = ("mobile", "desktop", "tablet")
TIERS = ("bronze", "silver", "gold")
EPOCH = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday

#: Logging policy: (observed contexts, eligible mask (n, K)) -> action probabilities (n, K).
LoggingPolicy = Callable[[pd.DataFrame, np.ndarray], np.ndarray]


def nboo_spec_yaml(horizon_days: int = 30) -> str:
    """The NBOO spec's YAML text (``examples/nboo/drivetrain.yaml``), with the horizon set to ``horizon_days``.

    The 30-day spec is the file as written, comments included; another horizon changes the parsed
    document (horizon, and a one-day settle) and writes it back, never the text by pattern.

    >>> "horizon: 7d" in nboo_spec_yaml(7)
    True
    """
    text = SPEC_PATH.read_text(encoding="utf-8")
    if horizon_days == 30:
        return text
    raw = read_yaml(text)
    raw["objective"]["horizon"] = f"{horizon_days}d"
    raw["objective"]["settle"] = "1d"
    return str(yaml.safe_dump(raw, sort_keys=False))


def nboo_spec(horizon_days: int = 30) -> Spec:
    """The NBOO spec (``examples/nboo/drivetrain.yaml``), with the horizon set to ``horizon_days``."""
    return parse_spec(read_yaml(nboo_spec_yaml(horizon_days)), source=f"nboo ({horizon_days}d horizon)")


@dataclass(frozen=True)
class Scenario:
    """Knobs that change the world over simulated days (day 0 is the first day).

    * ``seasonality``: amplitude of a weekly cycle on the purchase logit.
    * ``shift_*``: from ``shift_day`` on, ``shift_feature`` is multiplied by ``shift_factor`` for users
      with ``shift_segment`` (a (feature, value) pair): a real covariate shift, outcomes follow it.
    * ``redefine_*``: from ``redefine_day`` on, ``redefine_feature`` is logged multiplied by
      ``redefine_scale`` (say seconds become milliseconds); the world itself does not change.
    * ``effect_*``: from ``effect_day`` on, every offer's purchase effect in ``effect_segment`` moves by
      ``effect_delta`` on the logit scale, and its refund probability rises by ``effect_refund``.
    * ``discount_memory``: users who got discounts recently buy less without one (they wait for the next).
    """

    seasonality: float = 0.0
    shift_feature: str | None = None
    shift_segment: tuple[str, str] | None = None
    shift_factor: float = 1.0
    shift_day: int = 0
    redefine_feature: str | None = None
    redefine_scale: float = 1.0
    redefine_day: int = 0
    effect_segment: tuple[str, str] | None = None
    effect_delta: float = 0.0
    effect_refund: float = 0.0
    effect_day: int = 0
    discount_memory: float = 0.0


@dataclass(frozen=True)
class Truth:
    """Expected value of each outcome component per (unit, action) within the horizon; each (n, K)."""

    components: dict[str, np.ndarray]
    objective: np.ndarray
    eligible: np.ndarray
    action_ids: tuple[str, ...]

    def value(self, probabilities: np.ndarray) -> float:
        """Mean expected objective per unit of a stochastic policy given as (n, K) probabilities."""
        return float(np.mean(np.sum(self.objective * probabilities, axis=1)))

    def mean(self, component: str, probabilities: np.ndarray) -> float:
        return float(np.mean(np.sum(self.components[component] * probabilities, axis=1)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class NBOOTwin:
    """The twin. ``population`` draws users, ``truth`` gives exact expectations, ``log`` simulates a
    randomized logging policy with its delayed outcome events.

    >>> twin = NBOOTwin(seed=1)
    >>> users = twin.population(1000)
    >>> twin.truth(users).objective.shape
    (1000, 11)
    """

    horizon_days: int = 30
    seed: int = 0
    scenario: Scenario = field(default_factory=Scenario)
    start: datetime = EPOCH
    request_id_share: float = 0.7

    def __post_init__(self) -> None:
        if self.horizon_days < 1:
            raise UsageError(f"`horizon_days` must be >= 1, got {self.horizon_days}")
        if not 0 <= self.request_id_share <= 1:
            raise UsageError(f"`request_id_share` must be in [0, 1], got {self.request_id_share}")
        self._discounts: dict[str, float] = {}

    @cached_property
    def spec(self) -> Spec:
        return nboo_spec(self.horizon_days)

    def _rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *stream])

    # ------------------------------------------------------------------ population
    def population(self, n: int, *, day: int = 0, offset: int = 0) -> pd.DataFrame:
        """``n`` users as their true context (columns ``unit_id`` plus the spec's features).

        Users are numbered from ``offset``; the same (seed, offset, n) gives the same users.
        """
        if n < 1:
            raise UsageError(f"`n` must be >= 1, got {n}")
        rng = self._rng(1, offset, n)
        region = rng.choice(len(REGIONS), size=n, p=[0.3, 0.25, 0.25, 0.2])
        device = rng.choice(len(DEVICES), size=n, p=[0.55, 0.35, 0.10])
        tier = rng.choice(len(TIERS), size=n, p=[0.6, 0.3, 0.1])
        engagement = rng.normal(size=n)
        intent = rng.normal(size=n)
        tenure = np.minimum(rng.gamma(1.5, 300.0, size=n), 3650).astype(np.int64) + 30 * tier
        page_views = rng.poisson(np.exp(2.0 + 0.6 * engagement + 0.2 * tier))
        cart_adds = rng.binomial(page_views, _sigmoid(-2.2 + 0.8 * intent))
        dwell = np.exp(np.log(60.0) + 0.3 * engagement + rng.normal(0.0, 0.5, size=n))
        purchases = rng.poisson(np.exp(0.2 + 0.5 * engagement + 0.3 * intent + 0.35 * tier + 0.15 * np.log1p(tenure / 100)))
        aov = np.exp(np.log(55.0) + 0.25 * tier + 0.15 * (device == 1) + rng.normal(0.0, 0.45, size=n))
        aov = np.where(purchases > 0, np.round(aov, 2), np.nan)
        frame = pd.DataFrame(
            {
                "unit_id": [f"u{offset + i:08d}" for i in range(n)],
                "page_views_30d": page_views.astype(np.int64),
                "cart_adds_30d": cart_adds.astype(np.int64),
                "dwell_time_s": np.round(dwell, 2),
                "purchases_365d": purchases.astype(np.int64),
                "tenure_days": tenure,
                "avg_order_value": aov,
                "region": np.array(REGIONS, dtype=object)[region],
                "device": np.array(DEVICES, dtype=object)[device],
                "tier": np.array(TIERS, dtype=object)[tier],
                "postcode": [f"{x:05d}" for x in rng.integers(1000, 99999, size=n)],
            }
        )
        return self._shift(frame, day)

    def _shift(self, frame: pd.DataFrame, day: int) -> pd.DataFrame:
        sc = self.scenario
        if sc.shift_feature is None or day < sc.shift_day:
            return frame
        if sc.shift_feature not in frame.columns:
            raise UsageError(f"`shift_feature` must be a context feature, got {sc.shift_feature!r}")
        mask = np.ones(len(frame), dtype=bool)
        if sc.shift_segment is not None:
            mask = (frame[sc.shift_segment[0]] == sc.shift_segment[1]).to_numpy()
        col = frame[sc.shift_feature].to_numpy(dtype=np.float64)
        shifted = np.where(mask, col * sc.shift_factor, col)
        frame = frame.copy()
        frame[sc.shift_feature] = shifted.round().astype(np.int64) if frame[sc.shift_feature].dtype.kind == "i" else shifted
        return frame

    def observe(self, frame: pd.DataFrame, *, day: int = 0) -> pd.DataFrame:
        """The context as logging systems see it (a redefined feature changes here, not in the world)."""
        sc = self.scenario
        if sc.redefine_feature is None or day < sc.redefine_day:
            return frame
        frame = frame.copy()
        frame[sc.redefine_feature] = frame[sc.redefine_feature] * sc.redefine_scale
        return frame

    # ------------------------------------------------------------------ ground truth
    def truth(self, frame: pd.DataFrame, *, day: int = 0) -> Truth:
        """Exact expectations of every component for every (unit, action) of the true context ``frame``."""
        spec = self.spec
        space = spec.action_space
        n, k = len(frame), len(space)
        x = _Features.of(frame)
        sc = self.scenario
        memory = np.array([self._discounts.get(u, 0.0) for u in frame["unit_id"]]) if self._discounts else np.zeros(n)

        base = -2.35 + 0.35 * x.lpv + 0.5 * x.lca + 0.55 * x.lpu + 0.25 * x.tier - 0.2 * (x.region == 2)
        base = base - sc.discount_memory * memory
        if sc.seasonality:
            base = base + sc.seasonality * np.sin(2 * np.pi * day / 7.0)

        sure = _sigmoid(3.0 * (x.lpu - 1.9))
        persuadable = _sigmoid(2.5 * (x.lca - 0.6 * x.lpu - 0.9))
        lost = _sigmoid(-3.0 * (x.lpv - 1.3))
        dog = ((x.tier == 2) & (x.tenure > 500)).astype(np.float64)
        aov = np.where(np.isnan(x.aov), 45.0, x.aov)
        fs_aff = _sigmoid((55.0 - aov) / 8.0) * (0.5 + 0.8 * (x.device == 0) + 0.5 * (x.region == 0))
        bundle_aff = _sigmoid((aov - 75.0) / 12.0) * _sigmoid(1.5 * (x.lca - 1.0))
        deliberate = _sigmoid(3.0 * (np.log(x.dwell) - np.log(60.0)))
        delay_mult = 0.45 + 0.95 * deliberate
        reach = (1.0 - lost) * (1.0 - 0.85 * sure)
        segment_delta = np.zeros(n)
        segment_refund = np.zeros(n)
        if sc.effect_segment is not None and day >= sc.effect_day:
            hit = (frame[sc.effect_segment[0]] == sc.effect_segment[1]).to_numpy()
            segment_delta = np.where(hit, sc.effect_delta, 0.0)
            segment_refund = np.where(hit, sc.effect_refund, 0.0)

        lever = space.lever_columns()
        comps = {c: np.zeros((n, k)) for c in COMPONENTS}
        for j in range(k):
            offer, depth, timing = str(lever["offer_type"][j]), float(lever["depth"][j]), str(lever["timing"][j])
            if offer == "none":
                uplift = np.zeros(n)
            else:
                if offer == "discount":
                    strength = {5.0: 0.45, 10.0: 0.8, 15.0: 1.0}[depth]
                    raw = (0.25 + 1.8 * persuadable) * strength * reach + sc.discount_memory * memory * strength
                elif offer == "bundle":
                    raw = (0.05 + 1.3 * bundle_aff) * (1.0 - lost)
                else:
                    raw = (0.05 + 0.9 * fs_aff) * (1.0 - lost)
                uplift = raw * (delay_mult if timing == "delayed" else 1.0) - 0.8 * dog + segment_delta
            p = _sigmoid(base + uplift)
            basket = aov * (1.25 if offer == "bundle" else 1.04 if offer == "discount" else 1.0)
            margin = 0.31 if offer == "bundle" else 0.38
            redeem = 0.0 if offer == "none" else (0.93 if timing == "immediate" else 0.8)
            if offer == "discount":
                cost_given_redeem = depth / 100.0 * basket
            elif offer == "bundle":
                cost_given_redeem = np.full(n, 6.0)
            elif offer == "free_ship":
                cost_given_redeem = 5.5 + 2.0 * (x.region == 0)
            else:
                cost_given_redeem = np.zeros(n)
            refund_given = _sigmoid(-3.9 + 0.07 * depth + 0.25 * (offer == "bundle") + 0.4 * (x.tier == 0))
            refund_given = refund_given + (segment_refund if offer != "none" else 0.0)  # an offer's effect, not control's
            comps["purchase"][:, j] = p
            comps["order_value"][:, j] = p * basket
            comps["gross_profit"][:, j] = p * basket * margin
            comps["redeemed"][:, j] = p * redeem
            comps["promo_cost"][:, j] = p * redeem * cost_given_redeem
            comps["refund"][:, j] = p * np.clip(refund_given, 0.0, 1.0)
            comps["complaint"][:, j] = 0.004 + (0.012 if timing == "delayed" else 0.0) + (0.02 * dog if offer != "none" else 0.0)
        objective = spec.objective({**comps, **{name: col[None, :] for name, col in lever.items()}})
        eligible = spec.eligible_actions({c: frame[c].to_numpy() for c in spec.features})
        return Truth(components=comps, objective=np.asarray(objective, dtype=np.float64), eligible=eligible, action_ids=space.ids)

    # ------------------------------------------------------------------ logging
    def uniform_policy(self, contexts: pd.DataFrame, eligible: np.ndarray) -> np.ndarray:
        """Uniform random over each unit's eligible actions."""
        return eligible / eligible.sum(axis=1, keepdims=True)

    def expected_log(self, frame: pd.DataFrame, *, day: int = 0) -> pd.DataFrame:
        """The decisions :meth:`log` makes for ``frame``, with one column per outcome component holding its
        exact expectation under the logged action: a training table without outcome noise, for tests that
        need a model close to the truth from few users.

        >>> twin = NBOOTwin(seed=1)
        >>> table = twin.expected_log(twin.population(50))
        >>> sorted(set(twin.spec.outcomes) - set(table.columns))
        []
        """
        decisions, _ = self.log(frame, day=day)
        truth = self.truth(frame, day=day)
        action = self.spec.action_space.indices(decisions["action_id"].to_numpy())
        rows = np.arange(len(frame))
        for c in self.spec.outcomes:
            decisions[c] = truth.components[c][rows, action]
        return decisions

    def log(
        self,
        frame: pd.DataFrame,
        *,
        day: int = 0,
        policy: LoggingPolicy | None = None,
        policy_version: str = "uniform-logger",
        holdout: bool = True,
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Decisions for the users of ``frame`` on ``day`` and the outcome events they cause.

        Returns (decisions, outcomes) in the store's formats (``docs/data.md``). Propensities are exact:
        the holdout (``hash(salt, unit_id) < holdout_share``, control action) mixed with ``policy``.
        """
        spec = self.spec
        space = spec.action_space
        n = len(frame)
        rng = self._rng(2, day, int(frame.index[0]) if n else 0, n)
        observed = self.observe(frame, day=day)
        truth = self.truth(frame, day=day)
        probs = (policy or self.uniform_policy)(observed, truth.eligible)
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != truth.eligible.shape or np.any(probs < 0) or not np.allclose(probs.sum(axis=1), 1.0):
            raise UsageError(f"logging policy must return probabilities of shape {truth.eligible.shape} summing to 1 per row")
        draw = (probs.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
        share = spec.model.experimentation.holdout_share if holdout else 0.0
        held = in_holdout(spec.model.experimentation.salt, frame["unit_id"], share)
        action = np.where(held, spec.control.index, draw)
        chosen_p = probs[np.arange(n), action]
        propensity = serving_propensity(chosen_p, action == spec.control.index, share)

        day_start = self.start + timedelta(days=day)
        decided = pd.to_datetime(day_start) + pd.to_timedelta(np.sort(rng.uniform(0, 86_400, n)), unit="s")
        request_ids = [f"r{self.seed}-{day:04d}-{i:08d}" for i in range(n)]
        decisions = pd.DataFrame({"request_id": request_ids, "unit_id": frame["unit_id"].to_numpy()})
        decisions["decided_at"] = decided
        decisions["received_at"] = decided + pd.to_timedelta(rng.uniform(0.05, 2.0, n), unit="s")
        decisions["policy_version"] = policy_version
        decisions["action_id"] = np.array(space.ids, dtype=object)[action]
        for name, col in space.lever_columns(action).items():
            decisions[name] = col
        decisions["propensity"] = propensity
        decisions["assignment"] = np.where(held, "holdout", "explore")
        for name in spec.features:
            decisions[name] = observed[name].to_numpy()
        decisions["feature_version"] = spec.feature_version
        outcomes = self._outcomes(decisions, truth, action, rng)
        self._remember(frame["unit_id"].to_numpy(), action, day)
        return decisions, outcomes

    def respond(self, frame: pd.DataFrame, decisions: pd.DataFrame, *, day: int = 0) -> pd.DataFrame:
        """The outcome events that decisions made elsewhere (by the decision service, say) cause.

        ``frame`` holds the users (from :meth:`population`); ``decisions`` has ``request_id``, ``unit_id``,
        ``decided_at`` and ``action_id`` for some of them. Returns outcomes as :meth:`log` does.
        """
        space = self.spec.action_space
        action = space.indices(decisions["action_id"].to_numpy())
        if np.any(action < 0):
            raise UsageError(f"`action_id` must be one of {list(space.ids)}, got {decisions['action_id'].to_numpy()[action < 0][0]!r}")
        users = frame.set_index("unit_id", drop=False)
        unknown = ~decisions["unit_id"].isin(users.index)
        if unknown.any():
            raise UsageError(f"decisions must be for users of `frame`, got unit_id {decisions['unit_id'][unknown].iloc[0]!r}")
        rows = users.loc[decisions["unit_id"].to_numpy()].reset_index(drop=True)
        truth = self.truth(rows, day=day)
        made = decisions[["request_id", "unit_id"]].reset_index(drop=True)
        made["decided_at"] = pd.to_datetime(decisions["decided_at"].to_numpy(), utc=True)
        for name, col in space.lever_columns(action).items():
            made[name] = col
        rng = self._rng(3, day, len(made))
        self._remember(made["unit_id"].to_numpy(), action, day)
        return self._outcomes(made, truth, action, rng)

    def _remember(self, unit_ids: np.ndarray, action: np.ndarray, day: int) -> None:
        if not self.scenario.discount_memory:
            return
        discount = np.asarray(self.spec.action_space.lever_columns(action)["offer_type"] == "discount")
        for key in list(self._discounts):
            self._discounts[key] *= 0.8
        for unit, got in zip(unit_ids, discount, strict=True):
            if got:
                self._discounts[unit] = self._discounts.get(unit, 0.0) + 1.0

    def _outcomes(self, decisions: pd.DataFrame, truth: Truth, action: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
        n = len(decisions)
        rows = np.arange(n)
        H = float(self.horizon_days)
        comp = {c: truth.components[c][rows, action] for c in COMPONENTS}
        p = comp["purchase"]
        bought = rng.random(n) < p
        safe_p = np.where(p > 0, p, 1.0)
        redeem_p = comp["redeemed"] / safe_p
        refund_p = comp["refund"] / safe_p
        basket_mean = comp["order_value"] / safe_p
        sigma = 0.5
        value = basket_mean * np.exp(rng.normal(-sigma**2 / 2, sigma, n))
        margin = np.where(comp["order_value"] > 0, comp["gross_profit"] / np.where(comp["order_value"] > 0, comp["order_value"], 1.0), 0.0)
        cost_per_redeem = np.where(comp["redeemed"] > 0, comp["promo_cost"] / np.where(comp["redeemed"] > 0, comp["redeemed"], 1.0), 0.0)
        depth = decisions["depth"].to_numpy(dtype=np.float64)
        is_discount = (decisions["offer_type"] == "discount").to_numpy()
        # a discount's cost follows the realized basket; other offers cost a fixed amount per redemption
        cost = np.where(is_discount, depth / 100.0 * value, cost_per_redeem)
        redeemed = bought & (rng.random(n) < redeem_p)
        refunded = bought & (rng.random(n) < refund_p)
        complained = rng.random(n) < comp["complaint"]

        decided = decisions["decided_at"]
        t_buy = decided + pd.to_timedelta(H * rng.beta(1.0, 3.0, n), unit="D")
        t_refund = t_buy + (decided + pd.to_timedelta(H, unit="D") - t_buy) * rng.uniform(0.1, 0.999, n)
        t_complaint = decided + pd.to_timedelta(H * rng.uniform(0.0, 0.999, n), unit="D")
        # a repeat order after the horizon: real, but not this decision's outcome
        repeat = bought & (rng.random(n) < 0.15)
        t_repeat = decided + pd.to_timedelta(H * (1.0 + rng.uniform(0.01, 0.5, n)), unit="D")
        with_request = rng.random(n) < self.request_id_share

        frames = []

        def emit(mask: np.ndarray, component: str, values: np.ndarray, occurred: pd.Series, suffix: str, by_request: np.ndarray) -> None:
            idx = np.flatnonzero(mask)
            if idx.size == 0:
                return
            occ = occurred.iloc[idx].reset_index(drop=True)
            lag = rng.lognormal(np.log(600.0), 1.0, idx.size)
            late = rng.random(idx.size) < 0.03
            lag = np.where(late, rng.uniform(86_400, 2 * 86_400, idx.size), np.minimum(lag, 86_400))
            req = decisions["request_id"].to_numpy()[idx]
            given = req.astype(object)
            given[~by_request[idx]] = None
            frames.append(
                pd.DataFrame(
                    {
                        "event_id": [f"{r}:{component}{suffix}" for r in req],
                        "request_id": given,
                        "unit_id": decisions["unit_id"].to_numpy()[idx],
                        "occurred_at": occ,
                        "received_at": occ + pd.to_timedelta(lag, unit="s"),
                        "component": component,
                        "value": np.asarray(values, dtype=np.float64)[idx] if np.ndim(values) else float(values),
                    }
                )
            )

        no_request = np.zeros(n, dtype=bool)
        emit(bought, "purchase", np.ones(n), t_buy, "", with_request)
        emit(bought, "order_value", np.round(value, 2), t_buy, "", with_request)
        emit(bought, "gross_profit", np.round(value * margin, 2), t_buy, "", with_request)
        emit(redeemed, "redeemed", np.ones(n), t_buy, "", with_request)
        emit(redeemed & (cost > 0), "promo_cost", np.round(cost, 2), t_buy, "", with_request)
        emit(refunded, "refund", np.ones(n), t_refund, "", no_request)
        emit(complained, "complaint", np.ones(n), t_complaint, "", no_request)
        emit(repeat, "purchase", np.ones(n), t_repeat, ":repeat", no_request)
        emit(repeat, "order_value", np.round(value, 2), t_repeat, ":repeat", no_request)
        columns = ["event_id", "request_id", "unit_id", "occurred_at", "received_at", "component", "value"]
        if not frames:
            return pd.DataFrame({c: [] for c in columns})
        out = pd.concat(frames, ignore_index=True)
        out["occurred_at"] = pd.to_datetime(out["occurred_at"], utc=True)
        out["received_at"] = pd.to_datetime(out["received_at"], utc=True)
        return out.sort_values(["received_at", "event_id"], ignore_index=True)[columns]


@dataclass(frozen=True)
class _Features:
    lpv: np.ndarray
    lca: np.ndarray
    lpu: np.ndarray
    tenure: np.ndarray
    dwell: np.ndarray
    aov: np.ndarray
    region: np.ndarray
    device: np.ndarray
    tier: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame) -> _Features:
        def code(col: str, values: tuple[str, ...]) -> np.ndarray:
            return np.asarray(pd.Categorical(frame[col], categories=values).codes, dtype=np.int64)

        return cls(
            lpv=np.log1p(frame["page_views_30d"].to_numpy(dtype=np.float64)),
            lca=np.log1p(frame["cart_adds_30d"].to_numpy(dtype=np.float64)),
            lpu=np.log1p(frame["purchases_365d"].to_numpy(dtype=np.float64)),
            tenure=frame["tenure_days"].to_numpy(dtype=np.float64),
            dwell=np.maximum(frame["dwell_time_s"].to_numpy(dtype=np.float64), 1e-3),
            aov=frame["avg_order_value"].to_numpy(dtype=np.float64),
            region=code("region", REGIONS),
            device=code("device", DEVICES),
            tier=code("tier", TIERS),
        )
