"""What a caller can make the service do: request ids across restarts, limits, timeouts, arrival-time
latency, batches beside single decisions. The real service on a free local port."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from tests.serve.service_helpers import Server, read_log, start_server


def _body(c: dict[str, Any], request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"unit_id": c["unit_id"], "context": {k: v for k, v in c.items() if k != "unit_id"}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def _raw_exchange(server: Server, chunks: list[tuple[bytes, float]], timeout: float = 60.0) -> bytes:
    """Send ``chunks`` (bytes, then a pause in seconds) on one connection; everything it answers until it closes."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        for data, pause in chunks:
            conn.sendall(data)
            time.sleep(pause)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        return received


def test_a_retry_after_a_kill_and_a_restart_replays_the_answered_decision(policies: tuple[Path, Path], contexts: list[dict[str, Any]],
                                                                         tmp_path: Path) -> None:
    """The first service answers (policy a) and dies; the second serves policy b. A retry of an id the client
    chose, and of one the service generated, gets the decision that was answered, in another JSON spelling
    of the same values too; the store keeps that decision once."""
    first = start_server(policies[0], tmp_path, "--compact-every", "1000")
    c = dict(contexts[10], page_views_30d=30)
    with first.client() as client:
        chosen = client.post("/v1/decide", json=_body(c, "retry-1")).json()
        generated = client.post("/v1/decide", json=_body(contexts[11])).json()
    first.stop(signal.SIGKILL)
    second = start_server(policies[1], tmp_path, "--compact-every", "1000")
    try:
        with second.client() as client:
            respelled = json.dumps(_body(c, "retry-1")).replace('"page_views_30d": 30,', '"page_views_30d": 30.0,')
            assert '"page_views_30d": 30.0' in respelled
            again = client.post("/v1/decide", content=respelled, headers={"content-type": "application/json"})
            assert again.status_code == 200 and again.json() == chosen and chosen["policy_version"] == "policy-a"
            assert client.post("/v1/decide", json=_body(contexts[11], generated["request_id"])).json() == generated
            assert client.post("/v1/decide", json=_body(contexts[12], "retry-1")).status_code == 409
            fresh = client.post("/v1/decide", json=_body(contexts[13], "retry-2")).json()
            assert fresh["policy_version"] == "policy-b"
    finally:
        second.stop(signal.SIGTERM)
    logged = read_log(second)
    mine = logged[logged["request_id"].isin(["retry-1", generated["request_id"]])]
    assert len(mine) == 2 and mine["request_id"].is_unique and set(mine["policy_version"]) == {"policy-a"}


def test_limits_on_bodies_fields_and_batches(server: Server, contexts: list[dict[str, Any]]) -> None:
    base = _body(contexts[0])
    with server.client() as client:
        r = client.post("/v1/decide", json={**base, "context": {**base["context"], "note": "x" * 100_000}})
        assert r.status_code == 413 and "at most 65536 bytes" in r.json()["detail"], r.text
        r = client.post("/v1/decide", json={**base, "context": {**base["context"], "note": "x" * 2000}})
        assert r.status_code == 422 and any("at most 1024 characters" in d["msg"] for d in r.json()["detail"]), r.text
        r = client.post("/v1/decide", json={**base, "context": {f"k{i}": i for i in range(300)}})
        assert r.status_code == 422 and any(d["loc"][-1] == "context" for d in r.json()["detail"]), r.text
        r = client.post("/v1/decide", json={**base, "context": {"k" * 200: 1}})
        assert r.status_code == 422, r.text
        r = client.post("/v1/decide/batch", json={"requests": [base] * 1001})
        assert r.status_code == 422 and any("requests" in map(str, d["loc"]) for d in r.json()["detail"]), r.text
        r = client.post("/v1/decide/batch", content=b" " * (3 * 2**20), headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        assert client.get("/v1/health").json()["live"]


def test_idle_and_half_sent_connections_are_closed(policies: tuple[Path, Path], contexts: list[dict[str, Any]], tmp_path: Path) -> None:
    server = start_server(policies[0], tmp_path, "--header-timeout", "1", "--body-timeout", "1", "--compact-every", "1000")
    try:
        assert _raw_exchange(server, []) == b""  # never sends a byte: closed after the header timeout
        assert _raw_exchange(server, [(b"POST /v1/decide HTTP/1.1\r\nHost: t\r\n", 0.0)]) == b""
        answer = _raw_exchange(server, [(b"POST /v1/decide HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                                         b"Content-Length: 100\r\n\r\n{\"unit_id\"", 0.0)])
        assert answer.startswith(b"HTTP/1.1 408"), answer
        # a half-sent body does not hold up a graceful shutdown, which closes the log's open segment
        with server.client(timeout=30) as client:
            assert client.post("/v1/decide", json=_body(contexts[0])).status_code == 200
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            conn.sendall(b"POST /v1/decide HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it is done
        assert not list(server.log_dir.glob("*.open.jsonl")) and list(server.log_dir.glob("*.closed.jsonl"))
    finally:
        server.stop(signal.SIGKILL)


def test_latency_runs_from_arrival_and_a_client_deadline_is_kept(server: Server, contexts: list[dict[str, Any]]) -> None:
    """A request whose body arrives 0.3 s after its headers waited that long: its logged latency says so, and
    it is over the spec's 50 ms budget, or a client's shorter deadline, which the fallback names."""
    for request_id, deadline in (("arrival-1", None), ("arrival-2", 20)):
        body = json.dumps(_body(contexts[20], request_id)).encode()
        head = (b"POST /v1/decide HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + (b"X-Deadline-Ms: %d\r\n" % deadline if deadline else b"") + b"Content-Length: %d\r\n\r\n" % len(body))
        answer = _raw_exchange(server, [(head, 0.3), (body, 0.0)])
        assert answer.startswith(b"HTTP/1.1 200"), answer
        decision = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert decision["fallback_reason"].startswith("over the latency budget")
        assert decision["fallback_reason"].endswith(f"> {deadline or 50} ms"), decision
    deadline_at = time.monotonic() + 60
    while time.monotonic() < deadline_at:
        logged = read_log(server)
        if {"arrival-1", "arrival-2"} <= set(logged["request_id"]):
            break
        time.sleep(0.2)
    # from the headers' arrival: about the 300 ms the body waited, less however late a busy service read the
    # headers (297.6 ms was seen on a loaded machine); from the parsed body it would be a few milliseconds
    assert (logged.loc[logged["request_id"].isin(["arrival-1", "arrival-2"]), "latency_ms"] >= 200).all()


def test_a_batch_does_not_hold_up_single_decisions(server: Server, contexts: list[dict[str, Any]]) -> None:
    """Single decisions sent while a 1000-item batch is decided are decided between its items."""
    batch = {"requests": [_body(contexts[i % len(contexts)], f"big-{i}") for i in range(1000)]}
    singles: list[str] = []
    done = threading.Event()

    def send_batch() -> None:
        try:
            with server.client(timeout=120) as client:
                assert client.post("/v1/decide/batch", json=batch).status_code == 200
        finally:
            done.set()

    sender = threading.Thread(target=send_batch)
    sender.start()
    with server.client() as client:
        i = 0
        while not done.is_set() and i < 2000:
            r = client.post("/v1/decide", json=_body(contexts[(i * 7) % len(contexts)], f"beside-{i}"))
            assert r.status_code in (200, 409), r.text  # 409: a single with a batch id in flight, not here
            singles.append(f"beside-{i}")
            i += 1
    sender.join()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        logged = read_log(server)
        if {"big-0", "big-999"} <= set(logged["request_id"]) and set(singles) <= set(logged["request_id"]):
            break
        time.sleep(0.2)
    big = logged[logged["request_id"].str.startswith("big-")]["decided_at"]
    beside = logged[logged["request_id"].isin(singles)]["decided_at"]
    assert ((beside > big.min()) & (beside < big.max())).sum() >= 2, (big.min(), big.max(), sorted(beside))
