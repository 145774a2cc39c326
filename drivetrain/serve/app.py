"""The routes of the decision service (``/v1/...``); the logic lives in :class:`Service` and :class:`Decider`.

Request bodies are validated by pydantic models: a malformed body gets a 422 whose ``detail`` names the
field (``loc``), what was expected and what arrived. Ids must be what the store keeps as they are (no
null words, no surrounding whitespace) and every text must be valid Unicode (JSON's ``\ud800`` escape
decodes to a lone surrogate, which no Parquet file can hold). A request id names one decision: a retry
gets the same decision, the same id with another unit or context a 409. A well-formed request always
gets a decision (the fallback when the policy cannot decide): no 5xx for what a caller sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from drivetrain.data import NULL_TEXT
from drivetrain.errors import ConflictError
from drivetrain.serve._http import ARRIVED
from drivetrain.serve._service import LogUnavailable, Service

__all__ = ["create_app"]

#: Limits of a request's fields (docs/serving.md): ids, context keys and text values, batch items.
MAX_CONTEXT_KEYS = 256
MAX_KEY_CHARS = 128
MAX_TEXT_CHARS = 1024
MAX_BATCH = 1000
MAX_OUTCOMES = 10_000


def _text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"must be valid Unicode text, got a lone surrogate {value[exc.start]!r} at position {exc.start}") from None
    return value


def _identifier(value: str) -> str:
    _text(value)
    if value != value.strip():
        raise ValueError(f"must not start or end with whitespace (the store strips it), got {value!r}")
    if value.lower() in NULL_TEXT:
        raise ValueError(f"must not be a word the store reads as missing {list(NULL_TEXT)}, got {value!r}")
    return value


def _short(limit: int) -> Any:
    def check(value: str) -> str:
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters, got {len(value)}")
        return value
    return AfterValidator(check)


# the length is checked after the Unicode check, so that a lone surrogate is named as such
Text = Annotated[str, AfterValidator(_text), _short(MAX_TEXT_CHARS)]
Key = Annotated[str, AfterValidator(_text), _short(MAX_KEY_CHARS)]
Identifier = Annotated[str, AfterValidator(_identifier)]
Scalar = Text | int | float | bool | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DecideRequest(_Body):
    unit_id: Annotated[Identifier, Field(min_length=1, max_length=256, description="The unit (user) to decide for.")]
    context: Annotated[dict[Key, Scalar], Field(max_length=MAX_CONTEXT_KEYS,
                                                description="Raw context features, as named in the spec's contract.")]
    request_id: Annotated[Identifier | None, Field(min_length=1, max_length=128,
                                                   description="Optional id of this decision (a retry with the same id and "
                                                               "inputs gets the same decision); generated when absent.")] = None


class DecideBatchRequest(_Body):
    requests: Annotated[list[DecideRequest], Field(min_length=1, max_length=MAX_BATCH)]


class DecideResponse(BaseModel):
    request_id: str
    unit_id: str
    action_id: str
    levers: dict[str, str | float]
    propensity: Annotated[float, Field(description="Probability that the serving system picks this action for this context.")]
    policy_version: str
    assignment: Literal["policy", "explore", "holdout", "fallback", "canary"]
    fallback_reason: str | None = None
    ignored_context_keys: Annotated[list[str] | None, Field(description="Context keys the spec's contract does not name: not "
                                                                        "used, not stored (a misspelt feature shows up here); absent "
                                                                        "when there are none.")] = None


class DecideBatchResponse(BaseModel):
    decisions: list[DecideResponse]


class OutcomeEvent(_Body):
    event_id: Annotated[Text, Field(min_length=1, max_length=256)]
    request_id: Text | None = None
    unit_id: Text | None = None
    occurred_at: Annotated[Text, Field(description="ISO 8601 time, UTC or with an offset.")]
    received_at: Text | None = None
    component: Text
    value: float


class OutcomesRequest(_Body):
    outcomes: Annotated[list[OutcomeEvent], Field(min_length=1, max_length=MAX_OUTCOMES)]


class OutcomesResponse(BaseModel):
    rows: int
    accepted: Annotated[int, Field(description="Rows that pass every check, logged for the store (the next compaction folds "
                                               "them in; one whose event_id the store holds already is a duplicate there).")]
    duplicates: Annotated[int, Field(description="Rows repeating an earlier row of this post exactly.")]
    quarantined: Annotated[int, Field(description="Rows that break a check; the store's quarantine keeps them with `reasons`.")]
    waiting: Annotated[int, Field(description="Rows of this post waiting to be attributed to their decision (at the next "
                                              "compaction).")]
    attributed: Annotated[int, Field(description="Rows of this post attributed already (0: attribution happens at the "
                                                 "next compaction).")]
    reasons: dict[str, int]


class ReloadRequest(_Body):
    policy_dir: Annotated[str, Field(min_length=1, max_length=4096, description="Absolute path of the policy directory to "
                                                                                  "serve, inside the service's policy root."),
                          AfterValidator(_text)]


class ReloadResponse(BaseModel):
    reloaded: bool
    policy_version: str
    previous_version: str | None = None
    reason: str | None = None


class ChallengerState(BaseModel):
    policy_version: str
    stage: Literal["shadow", "canary"]
    multipliers: Annotated[dict[str, float], Field(description="The constraint prices it is served at (its plan's, or the "
                                                               "registry's pacing price).")]


class HealthResponse(BaseModel):
    status: Literal["ready", "degraded"]
    reason: str | None
    policy_version: str
    logging: bool
    ready: Annotated[bool, Field(description="A policy serves, decisions can be logged and compaction keeps up.")]
    live: Annotated[bool, Field(description="Decisions can be logged (false after a failed write, until one succeeds).")]
    problems: list[str]
    log_error: str | None
    compaction_error: str | None
    closed_segments: int
    closed_outcome_segments: Annotated[int, Field(description="Closed outcome log segments waiting to be folded into the store.")] = 0
    oldest_closed_segment_age_s: float | None
    compactor_priority: Annotated[Literal["low", "normal"] | None, Field(
        description="The compactor's CPU priority: low (niced), or normal while the backlog is over its bound; null when "
                    "none runs.")] = None
    follow_error: Annotated[str | None, Field(
        description="Following a registry alias (serve --registry): why the last look at the alias failed, until one "
                    "succeeds; null otherwise and when the service follows no alias.")] = None
    challenger: Annotated[ChallengerState | None, Field(
        description="Following a registry (serve --registry): the challenger on live traffic (in shadow it decides beside "
                    "the champion without being acted on; in canary it decides for its share of units), or null.")] = None
    challenger_error: Annotated[str | None, Field(
        description="Why the registry's challenger is not served (refused by the reload's checks, or the registry "
                    "unreadable), until it is; null otherwise.")] = None


class Detail(BaseModel):
    detail: str


_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer $DRIVETRAIN_TOKEN`")
Deadline = Annotated[float | None, Header(alias="X-Deadline-Ms", gt=0, le=60_000,
                                          description="Milliseconds the caller waits, counted from the request's arrival: "
                                                      "a decision not made by then (or by the spec's latency budget, "
                                                      "whichever is sooner) is the fallback.")]


def create_app(service: Service) -> FastAPI:
    """The FastAPI application over ``service``."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(service.upkeep())
        following = asyncio.create_task(service.follow())
        try:
            yield
        finally:
            task.cancel()
            following.cancel()
            await service.aclose(service.config.limits.shutdown_s)

    app = FastAPI(title="drivetrain decision service", version="1", lifespan=lifespan,
                  description="Decisions for a checkout in milliseconds, each logged so that it joins its outcome.")
    token = service.config.token
    decide_needs_token = service.config.spec.model.serving.decide_requires_token

    def check_token(authorization: str | None) -> None:
        if token is None:
            raise HTTPException(403, "this endpoint needs a token: start the service with DRIVETRAIN_TOKEN set")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme != "Bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            got = "none" if not authorization else "another scheme" if scheme != "Bearer" else "a different token"
            raise HTTPException(401, f"`Authorization` must be `Bearer <token>` with the service's token, got {got}",
                                headers={"WWW-Authenticate": "Bearer"})

    # dependencies are coroutines: FastAPI would run plain functions in its thread pool, a thread hop per
    # request that costs more than the decision. `bearer` only declares the scheme in the OpenAPI document.
    async def write_access(authorization: Annotated[str | None, Header()] = None,
                           _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None) -> None:
        check_token(authorization)

    def error(description: str) -> dict[str, Any]:
        return {"description": description, "model": Detail}

    body_errors: dict[int | str, dict[str, Any]] = {
        408: error("the body did not arrive within the body timeout"),
        413: error("the body is larger than the endpoint's limit"),
    }
    guarded: dict[int | str, dict[str, Any]] = {
        401: error("the `Authorization` header is missing, not `Bearer <token>`, or another token"),
        403: error("the service was started without a token (DRIVETRAIN_TOKEN), so this endpoint is closed"),
    }
    decide_answers: dict[int | str, dict[str, Any]] = {
        **body_errors, **(guarded if decide_needs_token else {}),
        409: error("the request id was decided before for another unit or context, or a batch in flight decides it now"),
        503: error("the decision could not be logged, so it was not given; retry with the same request id"),
    }
    decide_guard = [Depends(write_access)] if decide_needs_token else []

    def arrival(request: Request) -> float:
        return float(request.scope.get(ARRIVED) or time.perf_counter())

    @app.post("/v1/decide", response_model=DecideResponse, dependencies=decide_guard, responses=decide_answers)
    async def decide(body: DecideRequest, request: Request, deadline: Deadline = None) -> Response:
        """The action for one unit now, with its propensity; the decision is logged before this returns."""
        # the service writes the documented shape (DecideResponse, checked in the tests) as JSON once, for
        # the answer and for a retry's replay; validating it again per request would only cost time
        return Response(service.decide(body.unit_id, body.context, body.request_id, arrival(request),
                                       budget_s=None if deadline is None else deadline / 1000.0), media_type="application/json")

    @app.post("/v1/decide/batch", response_model=DecideBatchResponse, dependencies=decide_guard, responses=decide_answers)
    async def decide_batch(body: DecideBatchRequest, request: Request, deadline: Deadline = None) -> Response:
        """Decisions for many units in one call, each logged before this returns. Between items the batch
        yields to other requests, so a batch never holds up a single decision by more than one item."""
        arrived = arrival(request)
        reserved = service.reserve([(r.unit_id, r.context, r.request_id) for r in body.requests])
        try:
            decisions: list[bytes] = []
            for r in body.requests:
                decisions.append(service.decide(r.unit_id, r.context, r.request_id, arrived, started=time.perf_counter(),
                                                budget_s=None if deadline is None else deadline / 1000.0 - (time.perf_counter() - arrived),
                                                reserved=True))
                await asyncio.sleep(0)
        finally:
            service.release(reserved)
        return Response(b'{"decisions":[' + b",".join(decisions) + b"]}", media_type="application/json")

    @app.post("/v1/outcomes", response_model=OutcomesResponse, dependencies=[Depends(write_access)],
              responses={**body_errors, **guarded,
                         503: error("the outcomes could not be logged, so they were not taken; post them again")})
    async def outcomes(body: OutcomesRequest) -> dict[str, Any]:
        """Outcome events, checked and appended to the outcome log; the compactor folds them into the store,
        where they are de-duplicated on `event_id` and attributed like `drivetrain ingest` does (posting
        the same events again stores nothing twice). Rows that break a check are quarantined."""
        rows = [e.model_dump() for e in body.outcomes]
        return await run_in_threadpool(service.outcomes, rows)

    @app.get("/v1/health", response_model=HealthResponse)
    async def health() -> dict[str, Any]:
        """`ready`, or `degraded` (serving the fallback) with the reason; the log's and compaction's state."""
        return service.health()

    @app.get("/v1/ready", response_model=HealthResponse, responses={503: {"description": "not ready (`problems` says why)",
                                                                          "model": HealthResponse}})
    async def ready() -> Any:
        """200 when a policy serves, decisions can be logged and compaction keeps up; else 503."""
        state = service.health()
        return state if state["ready"] else JSONResponse(state, status_code=503)

    @app.get("/v1/live", response_model=HealthResponse, responses={503: {"description": "decisions cannot be logged",
                                                                         "model": HealthResponse}})
    async def live() -> Any:
        """200 while decisions can be logged; 503 after a failed write (until one succeeds): restart it."""
        state = service.health()
        return state if state["live"] else JSONResponse(state, status_code=503)

    @app.get("/v1/policy")
    async def policy() -> dict[str, Any]:
        """The served policy's version and manifest."""
        return service.policy_info()

    @app.post("/v1/admin/reload", response_model=ReloadResponse, dependencies=[Depends(write_access)],
              responses={**body_errors, **guarded,
                         409: {"description": "refused (fails to load, outside the policy root, other randomization); "
                                              "the current policy stays", "model": ReloadResponse}})
    async def reload(body: ReloadRequest) -> Any:
        """Switch to another policy directory atomically; requests in flight finish on the old one."""
        result = await run_in_threadpool(service.reload, Path(body.policy_dir))
        if not result["reloaded"]:
            return JSONResponse(result, status_code=409)
        return result

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics() -> Response:
        """Prometheus metrics in the text exposition format."""
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(LogUnavailable)
    async def unlogged(request: Request, exc: LogUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        """FastAPI's 422, written as ASCII JSON: the detail echoes what arrived, which may hold a lone surrogate."""
        body = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True, allow_nan=False, default=str)
        return Response(body.encode(), status_code=422, media_type="application/json")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """A body FastAPI could not parse at all (not UTF-8, a number too long to convert) is a 400 there;
        here it is the 422 of every other malformed body, located at the body."""
        if exc.status_code == 400:
            detail = [{"loc": ["body"], "msg": f"must be UTF-8 JSON that parses, got a body that does not ({exc.detail})",
                       "type": "body_unparsable"}]
            return JSONResponse({"detail": detail}, status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(ConflictError)
    async def conflicting(request: Request, exc: ConflictError) -> JSONResponse:
        service.metrics.errors.labels(request.url.path, "conflict").inc()
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        service.metrics.errors.labels(request.url.path, type(exc).__name__).inc()
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    return app
