"""The decision service, started for real (uvicorn on a free local port) and driven over HTTP."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivetrain.serve.app import DecideBatchResponse, DecideResponse
from drivetrain.spec import holdout_draw, in_holdout, load_spec
from tests.conftest import ROOT
from tests.serve.service_helpers import TOKEN, Server, read_log, read_store, start_server

SPEC = Path(__file__).resolve().parents[2] / "examples" / "nboo" / "drivetrain.yaml"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOADED = load_spec(SPEC)  # read once: the fuzz tests check each answer against it


def doc_schema(client: Any, path: str) -> str:
    """The name of the schema that the OpenAPI document gives for a route's 200 response."""
    ref = client.get("/openapi.json").json()["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    return str(ref.rsplit("/", 1)[1])


def test_decide_contract(server: Server, contexts: list[dict[str, Any]]) -> None:
    spec = LOADED
    with server.client() as client:
        ctx = dict(contexts[0])
        unit = ctx.pop("unit_id")
        r = client.post("/v1/decide", json={"unit_id": unit, "context": ctx, "request_id": "contract-1"})
        assert r.status_code == 200, r.text
        body = r.json()
        # the routes write their JSON directly: it must be exactly the documented response model (optional
        # fields, such as ignored_context_keys, absent when they do not apply)
        assert DecideResponse.model_validate(body).model_dump(exclude_unset=True) == body
        assert body["request_id"] == "contract-1" and body["unit_id"] == unit
        assert body["action_id"] in spec.action_space.ids
        assert set(body["levers"]) == set(spec.action_space.levers)
        assert 0 < body["propensity"] <= 1 and body["policy_version"] == "policy-a"
        assert body["assignment"] in ("policy", "explore", "holdout") and body["fallback_reason"] is None
        # the batch form answers each request like the single form does
        batch = [{"unit_id": c["unit_id"], "context": {k: v for k, v in c.items() if k != "unit_id"}, "request_id": f"b-{i}"}
                 for i, c in enumerate(contexts[:20])]
        rb = client.post("/v1/decide/batch", json={"requests": batch})
        assert rb.status_code == 200
        assert DecideBatchResponse.model_validate(rb.json()).model_dump(exclude_unset=True) == rb.json()
        assert doc_schema(client, "/v1/decide") == "DecideResponse" and doc_schema(client, "/v1/decide/batch") == "DecideBatchResponse"
        singles = [client.post("/v1/decide", json=b).json() for b in batch]
        assert [d["action_id"] for d in rb.json()["decisions"]] == [d["action_id"] for d in singles]
        assert [d["propensity"] for d in rb.json()["decisions"]] == [d["propensity"] for d in singles]
        # OpenAPI names every route and the request fields
        doc = client.get("/openapi.json").json()
        assert {"/v1/decide", "/v1/decide/batch", "/v1/outcomes", "/v1/health", "/v1/policy", "/v1/admin/reload", "/metrics"} <= set(doc["paths"])
        assert set(doc["components"]["schemas"]["DecideRequest"]["properties"]) == {"unit_id", "context", "request_id"}
        assert client.get("/v1/policy").json()["manifest"]["policy_version"] == "policy-a"
        metrics = client.get("/metrics").text
        assert 'drivetrain_decide_seconds_bucket{le="0.001",stage="policy"}' in metrics
        assert "drivetrain_decisions_total" in metrics


def test_malformed_bodies_get_422_naming_the_field(server: Server) -> None:
    with server.client() as client:
        cases = [
            ({"context": {}}, "unit_id"),
            ({"unit_id": "u", "context": "not an object"}, "context"),
            ({"unit_id": "u", "context": {}, "surprise": 1}, "surprise"),
            ({"unit_id": "", "context": {}}, "unit_id"),
        ]
        for body, field in cases:
            r = client.post("/v1/decide", json=body)
            assert r.status_code == 422, (body, r.text)
            assert any(field in map(str, d["loc"]) for d in r.json()["detail"]), r.text
        r = client.post("/v1/decide", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        for body in (b'{"unit_id": "\xff\xfe", "context": {}}', b'{"unit_id": "u", "context": {"page_views_30d": 1' + b"0" * 5000 + b'}}'):
            r = client.post("/v1/decide", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"], r.text
        assert client.get("/v1/nowhere").status_code == 404  # other HTTP errors keep their status


def _raw(body: Any) -> dict[str, Any]:
    """A request whose JSON escapes every non-ASCII character, lone surrogates (``\\ud800``) included."""
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json", **AUTH}}


def test_ids_and_text_the_store_cannot_keep_get_422_naming_the_field(server: Server, contexts: list[dict[str, Any]]) -> None:
    """A lone surrogate cannot be written to a Parquet file, and ingest reads null words as missing and
    strips whitespace: such a decision would be answered and then never stored as answered."""
    ctx = {k: v for k, v in contexts[0].items() if k != "unit_id"}
    cases = [
        ({"unit_id": "\ud800", "context": ctx}, "unit_id", "lone surrogate"),
        ({"unit_id": "u-s", "context": {**ctx, "region": "\ud800"}}, "region", "lone surrogate"),
        ({"unit_id": "u-s", "context": {**ctx, "\udfff": 1}}, "context", "lone surrogate"),
        ({"unit_id": "u-s", "context": ctx, "request_id": "a\udfff"}, "request_id", "lone surrogate"),
        ({"unit_id": "null", "context": ctx}, "unit_id", "missing"),
        ({"unit_id": "u-s", "context": ctx, "request_id": "NaN"}, "request_id", "missing"),
        ({"unit_id": " u-pad ", "context": ctx}, "unit_id", "whitespace"),
    ]
    with server.client() as client:
        for body, field, words in cases:
            r = client.post("/v1/decide", **_raw(body))
            assert r.status_code == 422, (body, r.text)
            assert any(field in map(str, d["loc"]) and words in d["msg"] for d in r.json()["detail"]), r.text
            r = client.post("/v1/decide/batch", **_raw({"requests": [{"unit_id": "u-ok", "context": ctx}, body]}))
            assert r.status_code == 422 and any(field in map(str, d["loc"]) for d in r.json()["detail"]), r.text
        good = {"event_id": "sur-1", "unit_id": "nobody", "occurred_at": "2026-01-01T00:00:00Z", "component": "purchase", "value": 1}
        r = client.post("/v1/outcomes", **_raw({"outcomes": [good, dict(good, event_id="\ud800")]}))
        assert r.status_code == 422 and any("event_id" in map(str, d["loc"]) for d in r.json()["detail"]), r.text
        assert client.post("/v1/admin/reload", **_raw({"policy_dir": "/x\ud800"})).status_code == 422


def test_a_request_id_names_one_decision(server: Server, contexts: list[dict[str, Any]]) -> None:
    """A retry gets its decision again and logs nothing new; the same id for another unit or context is
    refused (409) before anything of its request is decided, so the store keeps what was answered."""
    (a, ctx_a), (b, ctx_b) = ((c["unit_id"], {k: v for k, v in c.items() if k != "unit_id"}) for c in contexts[300:302])
    with server.client() as client:
        first = client.post("/v1/decide", json={"unit_id": a, "context": ctx_a, "request_id": "once-1"})
        assert first.status_code == 200
        assert client.post("/v1/decide", json={"unit_id": a, "context": ctx_a, "request_id": "once-1"}).json() == first.json()
        r = client.post("/v1/decide", json={"unit_id": b, "context": ctx_b, "request_id": "once-1"})
        assert r.status_code == 409 and "`request_id` must name one decision, got 'once-1'" in r.json()["detail"], r.text
        r = client.post("/v1/decide", json={"unit_id": a, "context": {**ctx_a, "tier": "bronze" if ctx_a["tier"] != "bronze" else "gold"},
                                            "request_id": "once-1"})
        assert r.status_code == 409
        pair = [{"unit_id": a, "context": ctx_a, "request_id": "once-2"}, {"unit_id": b, "context": ctx_b, "request_id": "once-2"}]
        r = client.post("/v1/decide/batch", json={"requests": pair})
        assert r.status_code == 409 and "`requests[1].request_id`" in r.json()["detail"], r.text
        r = client.post("/v1/decide/batch", json={"requests": [pair[1], {"unit_id": a, "context": ctx_a, "request_id": "once-1"}]})
        assert r.status_code == 200, r.text  # once-2 was not decided by the refused batch; once-1 is a retry
        assert r.json()["decisions"][1] == first.json()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stored = read_store(server)
        if {"once-1", "once-2"} <= set(stored["request_id"]):
            break
        time.sleep(0.2)
    mine = stored[stored["request_id"].isin(["once-1", "once-2"])].set_index("request_id")
    assert len(mine) == 2 and mine.loc["once-1", "unit_id"] == a and mine.loc["once-2", "unit_id"] == b
    assert mine.loc["once-1", "action_id"] == first.json()["action_id"]


_feature_value = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**6),
                           st.sampled_from(["north", "gold", "mobile", "platinum", "", "NaN", "12", "true"]), st.booleans())


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    """One client for the fuzz tests' many requests (each new client loads the CA bundle, tens of ms of CPU)."""
    with server.client() as client:
        yield client


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data())
def test_fuzzed_contexts_never_5xx_and_fall_back_when_due(http: httpx.Client, contexts: list[dict[str, Any]], data: st.DataObject) -> None:
    base = dict(contexts[data.draw(st.integers(0, len(contexts) - 1))])
    unit = base.pop("unit_id")
    names = sorted(base)
    broken = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=3))
    for name in broken:
        if data.draw(st.booleans()):
            base.pop(name)
        else:
            base[name] = data.draw(_feature_value)
    body = json.dumps({"unit_id": unit, "context": base}, allow_nan=True)  # NaN/Infinity as a careless client sends them
    r = http.post("/v1/decide", content=body, headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text
    if r.status_code == 200:
        from drivetrain.data import check_context

        spec = LOADED
        _, reason = check_context(spec, {k: v for k, v in base.items()}, typed=True)  # a JSON request is typed
        out = r.json()
        held = bool(in_holdout(spec.model.experimentation.salt, [unit], spec.model.experimentation.holdout_share)[0])
        if reason is not None:  # a held-out unit keeps its arm and gets control
            expected = ("holdout", spec.control.id) if held else ("fallback", spec.fallback.id)
            assert (out["assignment"], out["action_id"]) == expected
            assert out["fallback_reason"] == reason
        else:
            assert out["assignment"] != "fallback" and out["fallback_reason"] is None


_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
                     lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                     max_leaves=12)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(body=st.one_of(_json, st.fixed_dictionaries({"unit_id": _json, "context": _json}),
                      st.fixed_dictionaries({"unit_id": st.text(min_size=1, max_size=5), "context": st.dictionaries(st.text(max_size=8), _json, max_size=4)})))
def test_arbitrary_json_bodies_get_a_4xx_or_a_decision(http: httpx.Client, body: Any) -> None:
    r = http.post("/v1/decide", json=body)
    assert r.status_code in (200, 422), r.text
    if r.status_code == 422:
        assert all(d["loc"] for d in r.json()["detail"])


def test_tokens(server: Server) -> None:
    body = {"outcomes": [{"event_id": "tok-1", "unit_id": "nobody", "occurred_at": "2026-01-01T00:00:00Z", "component": "purchase", "value": 1}]}
    with server.client() as client:
        assert client.post("/v1/outcomes", json=body).status_code == 401
        assert client.post("/v1/outcomes", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = client.post("/v1/outcomes", json=body, headers={"Authorization": TOKEN})  # the token without its scheme
        assert r.status_code == 401 and "another scheme" in r.json()["detail"]
        assert client.post("/v1/admin/reload", json={"policy_dir": "/nowhere"}).status_code == 401
        ok = client.post("/v1/outcomes", json=body, headers=AUTH)
        assert ok.status_code == 200 and ok.json()["rows"] == 1
        bad = dict(body["outcomes"][0], event_id="tok-2", component="no_such_component")
        r = client.post("/v1/outcomes", json={"outcomes": [bad]}, headers=AUTH)
        assert r.json()["quarantined"] == 1 and any("component" in k for k in r.json()["reasons"])
        # a refused reload (no such directory) keeps the current policy
        r = client.post("/v1/admin/reload", json={"policy_dir": "/nowhere"}, headers=AUTH)
        assert r.status_code == 409 and client.get("/v1/health").json()["status"] == "ready"


def test_every_decision_is_logged_and_compacted_once(server: Server, contexts: list[dict[str, Any]]) -> None:
    ids = []
    with server.client() as client:
        for c in contexts[:200]:
            ctx = {k: v for k, v in c.items() if k != "unit_id"}
            ids.append(client.post("/v1/decide", json={"unit_id": c["unit_id"], "context": ctx}).json()["request_id"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the server rotates each second and compacts in a child process
        stored = read_store(server)
        if set(ids) <= set(stored["request_id"]):
            break
        time.sleep(0.2)
    mine = stored[stored["request_id"].isin(ids)]
    assert len(mine) == len(ids) and mine["request_id"].is_unique
    row = mine.iloc[0]
    spec = LOADED
    assert row["feature_version"] == spec.feature_version and str(row["postcode"]).startswith("hmac-sha256:")
    preds = mine[[f"pred__{a}" for a in spec.action_space.ids]]
    assert preds.notna().any(axis=1).all()
    assert (mine["latency_ms"] > 0).all()


def test_kill_9_loses_no_answered_decision(policies: tuple[Path, Path], contexts: list[dict[str, Any]], tmp_path: Path) -> None:
    server = start_server(policies[0], tmp_path, "--segment-age", "0.5", "--compact-every", "1000")
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop(k: int) -> None:
        with server.client(timeout=5.0) as client:
            for i in range(2000):
                if stop.is_set():
                    return
                c = contexts[(k * 131 + i) % len(contexts)]
                try:
                    r = client.post("/v1/decide", json={"unit_id": c["unit_id"], "context": {n: v for n, v in c.items() if n != "unit_id"},
                                                        "request_id": f"k{k}-{i}"})
                except httpx.TransportError:
                    return
                if r.status_code == 200:
                    with lock:
                        answered.append(r.json()["request_id"])

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    while len(answered) < 300:
        time.sleep(0.01)
    server.stop(signal.SIGKILL)  # mid-flight: the clients are still sending
    stop.set()
    for t in threads:
        t.join()
    # restart on the same log: recovery closes the dead worker's segment; compaction moves it to the store
    again = start_server(policies[0], tmp_path, "--compact-every", "1000")
    try:
        from drivetrain.data import open_store
        from drivetrain.serve import compact

        store = open_store(again.store, LOADED, create=True)
        while compact(store, again.log_dir).segments:
            pass
    finally:
        again.stop(signal.SIGTERM)
    logged = read_log(again)
    counts = logged["request_id"].value_counts()
    assert set(answered) <= set(counts.index), f"{len(set(answered) - set(counts.index))} answered decisions missing"
    assert (counts[answered] == 1).all()


def test_a_loaded_policy_decides_without_importing_lightgbm(policies: tuple[Path, Path], contexts: list[dict[str, Any]]) -> None:
    """Serving predicts with the compiled forest, read from the models' text: a process that loads a policy
    and decides never imports LightGBM, nor the scikit-learn LightGBM imports (half a second of a start)."""
    code = (
        "import json, sys; import pandas as pd; from drivetrain.policy import Policy\n"
        f"policy = Policy.load({str(policies[0])!r})\n"
        "rows = pd.DataFrame(json.loads(sys.stdin.read()))\n"
        "dist = policy.action_distribution(rows.drop(columns=['unit_id']).assign(unit_id=rows['unit_id']))\n"
        "print(dist.shape[0], 'lightgbm' in sys.modules, 'sklearn' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(contexts[:50]), capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["50", "False", "False"], done.stdout


def test_corrupt_policy_serves_the_fallback_in_degraded_mode(policies: tuple[Path, Path], contexts: list[dict[str, Any]], tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(policies[0], broken)
    model = sorted((broken / "models").glob("*.txt"))[0]
    model.write_text(model.read_text().replace("leaf_value=", "leaf_value=9", 1))
    server = start_server(broken, tmp_path, "--policy-root", str(policies[1].parents[1]))
    try:
        with server.client() as client:
            health = client.get("/v1/health").json()
            assert health["status"] == "degraded" and "checksum" in health["reason"]
            c = contexts[0]
            r = client.post("/v1/decide", json={"unit_id": c["unit_id"], "context": {k: v for k, v in c.items() if k != "unit_id"}})
            assert r.status_code == 200
            assert r.json()["assignment"] == "fallback" and r.json()["fallback_reason"].startswith("degraded")
            assert r.json()["action_id"] == LOADED.fallback.id
            # a good policy brings it back
            assert client.post("/v1/admin/reload", json={"policy_dir": str(policies[1])}, headers=AUTH).json()["reloaded"]
            assert client.get("/v1/health").json()["status"] == "ready"
    finally:
        server.stop(signal.SIGTERM)


def test_reload_under_load_fails_no_request_and_keeps_the_holdout(policies: tuple[Path, Path], contexts: list[dict[str, Any]], tmp_path: Path) -> None:
    server = start_server(policies[0], tmp_path)
    results: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()
    done = threading.Event()

    def client_loop(k: int) -> None:
        with server.client(timeout=10.0) as client:
            i = 0
            while i < 150 or not done.is_set():  # until every reload has served at least 30 more requests
                i += 1
                c = contexts[(k * 97 + i) % len(contexts)]
                r = client.post("/v1/decide", json={"unit_id": c["unit_id"], "context": {n: v for n, v in c.items() if n != "unit_id"}})
                with lock:
                    results.append((r.status_code, r.json()))

    try:
        threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        with server.client() as admin:
            for target in (policies[1], policies[0], policies[1]):
                while len(results) < 60 * (1 + [policies[1], policies[0], policies[1]].index(target)):
                    time.sleep(0.01)
                assert admin.post("/v1/admin/reload", json={"policy_dir": str(target)}, headers=AUTH).json()["reloaded"]
            after = len(results) + 30
            while len(results) < after:
                time.sleep(0.01)
            done.set()
        for t in threads:
            t.join()
    finally:
        server.stop(signal.SIGTERM)
    assert len(results) >= 450 and all(code == 200 for code, _ in results)
    assert {body["policy_version"] for _, body in results} == {"policy-a", "policy-b"}
    spec = LOADED
    share = 0.1
    for _, body in results:
        held = holdout_draw(spec.model.experimentation.salt, [body["unit_id"]])[0] < share
        assert (body["assignment"] == "holdout") == held
        # a decision the loaded machine made late falls back (the budget runs from its arrival); nothing else does
        assert body["assignment"] != "fallback" or body["fallback_reason"].startswith("over the latency budget"), body
    assert not any(math.isnan(b["propensity"]) for _, b in results) and np.all([b["propensity"] > 0 for _, b in results])


def test_clients_share_one_tls_context_that_verifies() -> None:
    """Every client of a process is built on one TLS context (httpx's default: its CA bundle, certificates
    and host names checked) instead of loading the bundle again for each client."""
    import ssl

    from drivetrain.serve import http_client
    from drivetrain.serve._process import _tls

    assert _tls() is _tls()
    assert _tls().verify_mode == ssl.CERT_REQUIRED and _tls().check_hostname
    assert _tls().cert_store_stats()["x509_ca"] > 0
    with http_client("http://127.0.0.1:1", timeout=2.0) as client:
        assert str(client.base_url) == "http://127.0.0.1:1" and client.timeout.connect == 2.0
