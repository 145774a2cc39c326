"""The declarative spec of a data product, validated at the boundary.

The models below are pydantic models with ``extra="forbid"`` (unknown keys are errors) and ``frozen=True``
(a loaded spec is a value). Cross-references (formulas, the control action, cohorts) are checked in
:func:`drivetrain.spec.load_spec`, which gathers every problem before it raises one :class:`SpecError`.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)

from drivetrain.spec._definition import definition_sql

__all__ = [
    "ActionEligibility",
    "AlertRule",
    "Adaptation",
    "Budget",
    "Canary",
    "Cap",
    "Context",
    "Duration",
    "Eligibility",
    "Constraints",
    "Experimentation",
    "Feature",
    "Gates",
    "Guardrail",
    "Lever",
    "Monitoring",
    "Objective",
    "Outcome",
    "Serving",
    "SpecModel",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhm])\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


def parse_duration(value: Any) -> timedelta:
    """``'30d'``, ``'12h'`` or ``'45m'`` as a timedelta (a timedelta passes through)."""
    if isinstance(value, timedelta):
        return value
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a duration such as '30d', '12h' or '45m', got {value!r}")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m"


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(f"expected a duration longer than zero, got {format_duration(value)!r}")
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration)]
#: A horizon: no outcome could ever count within a horizon of zero.
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
Name = Annotated[str, Field(pattern=_NAME)]
Scalar = str | int | float | bool


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Fields added after a spec format was published: left out of the dump (and so of the spec's hashes)
    #: while they keep their default, so that a spec that does not use them keeps the hash it had.
    _added: ClassVar[dict[str, Any]] = {}

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name, default in self._added.items():
                if getattr(self, name) == default:
                    data.pop(name, None)
        return data


class Objective(_Value):
    """What the product maximizes: a formula over outcome components, measured over a horizon per decision."""

    name: Name
    formula: str
    direction: Literal["maximize", "minimize"] = "maximize"
    horizon: PositiveDuration
    settle: Duration = timedelta(0)
    description: str = ""


class Outcome(_Value):
    """One outcome component, aggregated per decision over the horizon.

    ``given`` names a binary component without which this one is zero (an order value needs a purchase);
    the Modeler then learns E[c] = P(given) * E[c | given], a two-part model that spends no capacity on
    the zeros.
    """

    type: Literal["binary", "count", "continuous"]
    aggregate: Literal["sum", "max", "count", "last"] = "sum"
    given: str | None = None
    min: float | None = None
    max: float | None = None
    description: str = ""


def _refuse_booleans(values: Any) -> Any:
    """A list of values written as unquoted yes/no (or true/false, on/off) reaches us as booleans, which no
    log's text matches; say so at validation rather than quarantine every row later."""
    if isinstance(values, list):
        flagged = [v for v in values if isinstance(v, bool)]
        if flagged:
            raise ValueError(f"must be text or numbers, got the boolean{'s' if len(flagged) > 1 else ''} {flagged}: YAML reads "
                             "unquoted yes, no, true, false, on and off as booleans, so quote them ('yes', 'no')")
    return values


class Lever(_Value):
    """A lever the team controls: categorical values or a numeric grid.

    ``monotone`` declares, for a numeric lever, outcomes that never fall (``increasing``) or never rise
    (``decreasing``) as the lever grows, other levers fixed; the Modeler respects it.
    """

    type: Literal["categorical", "numeric"]
    values: Annotated[list[Scalar], Field(min_length=1)]
    monotone: dict[str, Literal["increasing", "decreasing"]] = {}
    description: str = ""

    _no_booleans = field_validator("values", mode="before")(lambda values: _refuse_booleans(values))


class ActionEligibility(_Value):
    """The actions matching ``actions`` are available to a unit only where ``when`` holds on its context."""

    name: Name
    actions: dict[str, list[Scalar]]
    when: str


class Eligibility(_Value):
    unit: str | None = None
    actions: list[ActionEligibility] = []


class Budget(_Value):
    """Expected ``formula`` per eligible unit must stay at or below ``max_per_unit``."""

    name: Name
    formula: str
    max_per_unit: Annotated[float, Field(ge=0)]


class Cap(_Value):
    """At most ``max_share`` of eligible units may get an action matching ``actions``. A ``hard`` cap also
    holds as served: a counter per UTC day stops giving its actions once they reached that share of the
    day's decisions of program units (:class:`drivetrain.policy.CapCounter`)."""

    _added: ClassVar[dict[str, Any]] = {"hard": False}

    name: Name
    actions: dict[str, list[Scalar]]
    max_share: Annotated[float, Field(ge=0, le=1)]
    hard: bool = False


class Constraints(_Value):
    budgets: list[Budget] = []
    caps: list[Cap] = []


class Guardrail(_Value):
    """The population mean of ``formula`` must stay within [min, max] (at least one bound); with ``by`` (a
    categorical or boolean context feature), the mean within each of its values must."""

    _added: ClassVar[dict[str, Any]] = {"by": None}

    name: Name
    formula: str
    max: float | None = None
    min: float | None = None
    description: str = ""
    by: Name | None = None


class Feature(_Value):
    """One field of the context contract. ``owner`` and ``version`` say who answers for its meaning and
    which meaning it has (``drivetrain contract check`` fails a change of meaning without a new version);
    ``definition``, for a derived feature, is the SQL that computes it point in time from the store's
    source tables (:mod:`drivetrain.spec._definition`), which rebuilds it offline."""

    _added: ClassVar[dict[str, Any]] = {"definition": None}

    type: Literal["integer", "float", "categorical", "boolean", "string"]
    min: float | None = None
    max: float | None = None
    values: list[str] | None = None

    _no_booleans = field_validator("values", mode="before")(lambda values: _refuse_booleans(values))
    nullable: bool = False
    owner: str
    version: str = "1"
    personal: bool = False
    description: str = ""
    definition: str | None = None

    @field_validator("definition")
    @classmethod
    def _sql(cls, value: str | None) -> str | None:
        if value is not None:
            definition_sql(value)
        return value


class Context(_Value):
    """The context contract: what a caller must send and what the logs must carry."""

    features: Annotated[dict[Name, Feature], Field(min_length=1)]


class Experimentation(_Value):
    """Randomization (docs/architecture.md). ``exploration`` is what an exploring request gets:
    ``uniform`` (a uniformly random eligible action) or ``directed`` (drawn where the model cannot tell
    the actions apart, keeping ``exploration_floor`` of it uniform); see :mod:`drivetrain.exploration`."""

    _added: ClassVar[dict[str, Any]] = {"exploration": "uniform", "exploration_floor": 0.25}

    salt: Annotated[str, Field(min_length=4)]
    exploration_rate: Annotated[float, Field(ge=0, lt=1)] = 0.05
    holdout_share: Annotated[float, Field(ge=0, lt=1)] = 0.1
    exploration: Literal["uniform", "directed"] = "uniform"
    exploration_floor: Annotated[float, Field(gt=0, le=1)] = 0.25


class Serving(_Value):
    """How decisions are served. ``cost_per_serving_hour`` prices the logged serving time (the sum of the
    decisions' ``latency_ms``) so that the evaluation can report the cost per 1,000 decisions; None leaves
    that figure out."""

    latency_budget_ms: Annotated[float, Field(gt=0)] = 50.0
    decide_requires_token: bool = False
    cost_per_serving_hour: Annotated[float, Field(ge=0)] | None = None


class AlertRule(_Value):
    """One alert rule (``docs/spec.md``, Alerts); the fields a kind does not use keep their defaults."""

    _added: ClassVar[dict[str, Any]] = {"tolerance": 1e-6, "share_above": 0.01}

    name: Name
    kind: Literal["metric_drop", "latency", "drift", "guardrail", "sample_ratio", "parity"]
    figure: str = "north_star"
    arm: Literal["difference", "policy"] = "difference"
    drop_pct: Annotated[float, Field(gt=0)] = 20.0
    window_days: Annotated[int, Field(ge=3)] = 30
    for_days: Annotated[int, Field(ge=1)] = 2
    cohort: str | None = None
    percentile: Annotated[float, Field(gt=0, lt=100)] = 95.0
    above_ms: Annotated[float, Field(gt=0)] = 50.0
    for_minutes: Annotated[int, Field(ge=1)] = 5
    lookback_hours: Annotated[float, Field(gt=0)] = 24.0
    feature: str = "*"
    psi_above: Annotated[float, Field(gt=0)] = 0.2
    sequential_units: Annotated[int, Field(ge=1)] | None = None
    tolerance: Annotated[float, Field(ge=0)] = 1e-6
    share_above: Annotated[float, Field(ge=0, lt=1)] = 0.01


class Monitoring(_Value):
    """Drift and evaluation settings. ``covariates`` names numeric context features measured before the
    decision (say last year's purchases) whose correlation with the objective narrows the north star's
    interval (CUPED); ``srm_alpha`` is the p-value below which the holdout split is a sample ratio mismatch."""

    psi_threshold: Annotated[float, Field(gt=0)] = 0.2
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.01
    covariates: list[Name] = []
    srm_alpha: Annotated[float, Field(gt=0, lt=1)] = 0.001
    alerts: list[AlertRule] = []

    @field_validator("covariates")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"covariates must be distinct, got {value}")
        return value


class Gates(_Value):
    """The tolerances of a candidate's gates (``docs/spec.md``, Adaptation). Figures of the objective are
    per unit, in the objective's own units; a constraint's tolerance is a share of its limit."""

    min_decisions: Annotated[int, Field(ge=1)] = 2_000
    max_quarantine_share: Annotated[float, Field(ge=0, le=1)] = 0.05
    regression_tolerance: Annotated[float, Field(ge=0)] = 0.1
    non_inferiority_margin: Annotated[float, Field(ge=0)] = 0.05
    constraint_tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.02
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.1
    min_cohort_units: Annotated[int, Field(ge=1)] = 50
    latency_samples: Annotated[int, Field(ge=10)] = 200


class Canary(_Value):
    """The live stages of a candidate: ``shadow_decisions`` it decides beside the champion first, then
    ``share`` of units (by a salted hash of the unit id) get it until at least ``min_units`` of them are
    mature and as many decisions as an equal candidate needs to be shown non-inferior with ``power`` (at
    most ``max_units`` units; None: no cap). Before those decisions, each look may pass a candidate that
    an always-valid test already shows non-inferior at level ``early_alpha`` (0: no early pass)."""

    _added: ClassVar[dict[str, Any]] = {"power": 0.8, "max_units": 20_000, "early_alpha": 0.01}

    shadow_decisions: Annotated[int, Field(ge=0)] = 2_000
    share: Annotated[float, Field(gt=0, lt=1)] = 0.1
    min_units: Annotated[int, Field(ge=1)] = 2_000
    power: Annotated[float, Field(ge=0.5, lt=1)] = 0.8
    max_units: Annotated[int, Field(ge=1)] | None = 20_000
    early_alpha: Annotated[float, Field(ge=0, lt=0.5)] = 0.01

    @field_validator("max_units")
    @classmethod
    def _cap_above_min(cls, value: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("min_units")
        if value is not None and low is not None and value < low:
            raise ValueError(f"must be at least min_units ({low}) or null, got {value}")
        return value
    salt: Annotated[str, Field(min_length=4)] | None = None
    srm_alpha: Annotated[float, Field(gt=0, lt=1)] = 0.001
    guardrail_alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05


class Adaptation(_Value):
    """When to retrain and how a candidate replaces the champion (``docs/spec.md``, Adaptation). Retraining
    is triggered by the data, never by the calendar alone: ``min_new_decisions`` newly matured decisions
    since the last fit, a drift alert (``retrain_on_drift``), a north-star or guardrail alert
    (``retrain_on_alert``), or, as a backstop, ``max_staleness`` since the last fit. ``window`` is how far
    back the training table reaches (None: every mature decision); ``evaluation_share`` of units (salted
    hash) never train and give the frozen evaluation set; ``watch_window`` after a promotion, a guardrail
    alert rolls the promotion back. ``pacing_period`` (None: off) paces the first budget: its shadow price
    is set before each day from observed and predicted spend so that spend over each period tracks the
    budget (:mod:`drivetrain.pacing`). With ``guard_on_alert``, a cohort value the champion's own decisions
    harm (its north star below the holdout's, or a guardrail beyond its bound) gets control alone, in a
    new version of the champion; a retrained candidate keeps the guard unless it beats control there on
    the decisions since the change (:func:`drivetrain.adapt.carried_guards`)."""

    _added: ClassVar[dict[str, Any]] = {"pacing_period": None, "guard_on_alert": False}

    min_new_decisions: Annotated[int, Field(ge=0)] = 10_000
    min_lift: float = 0.0
    retrain_on_drift: bool = True
    retrain_on_alert: bool = True
    max_staleness: PositiveDuration | None = timedelta(days=28)
    window: PositiveDuration | None = None
    evaluation_share: Annotated[float, Field(ge=0, lt=0.5)] = 0.1
    watch_window: PositiveDuration = timedelta(days=7)
    gates: Gates = Gates()
    canary: Canary = Canary()
    pacing_period: PositiveDuration | None = None
    guard_on_alert: bool = False


class SpecModel(_Value):
    """The whole spec as written; see ``docs/spec.md`` for every field."""

    version: Literal[1]
    name: Name
    unit: Name
    description: str = ""
    objective: Objective
    outcomes: Annotated[dict[Name, Outcome], Field(min_length=1)]
    levers: Annotated[dict[Name, Lever], Field(min_length=1)]
    action_rules: list[str] = []
    control: dict[str, Scalar]
    fallback: dict[str, Scalar] | None = None
    eligibility: Eligibility = Eligibility()
    constraints: Constraints = Constraints()
    guardrails: list[Guardrail] = []
    context: Context
    cohorts: list[str] = []
    experimentation: Experimentation
    serving: Serving = Serving()
    monitoring: Monitoring = Monitoring()
    adaptation: Adaptation = Adaptation()
