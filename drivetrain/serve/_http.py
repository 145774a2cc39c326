"""The HTTP edge of the service: what one connection or request may cost, and the server that runs it.

* :class:`Limits`: body bytes per endpoint, how long a client may take to send its headers and its body,
  idle keep-alive, and the deadline of a graceful shutdown (docs/serving.md gives the defaults).
* :class:`BoundedBodies`: an ASGI middleware that stamps each request's arrival, reads its body within the
  endpoint's byte limit (413) and the body timeout (408) before any route sees it.
* :func:`run`: uvicorn with a protocol that closes a connection whose request headers are not complete
  within the header timeout (an idle or half-sent connection cannot stay open, nor hold up a shutdown),
  and that stamps the arrival of each request as its first byte is parsed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ARRIVED", "BoundedBodies", "Limits", "run"]

#: The scope key that holds the ``time.perf_counter()`` of a request's first parsed byte.
ARRIVED = "drivetrain.arrived"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class Limits:
    """What one request or connection may cost the service."""

    decide_body_bytes: int = 64 * 2**10
    batch_body_bytes: int = 2 * 2**20
    outcomes_body_bytes: int = 4 * 2**20
    other_body_bytes: int = 16 * 2**10
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    shutdown_s: float = 10.0

    def body_bytes(self, path: str) -> int:
        return {"/v1/decide": self.decide_body_bytes, "/v1/decide/batch": self.batch_body_bytes,
                "/v1/outcomes": self.outcomes_body_bytes}.get(path, self.other_body_bytes)


class BoundedBodies:
    """Reads a request's whole body within its endpoint's limit and the body timeout, then hands the
    application a ``receive`` that replays it."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault(ARRIVED, time.perf_counter())
        limit = self.limits.body_bytes(scope["path"])
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await _refuse(send, 413, f"the body of {scope['path']} must be at most {limit} bytes, got a "
                                             f"`Content-Length` of {declared}")
                    return
        chunks: list[bytes] = []
        size = 0
        end = time.monotonic() + self.limits.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, end - time.monotonic()))
            except TimeoutError:
                await _refuse(send, 408, f"the body must arrive within {self.limits.body_timeout_s:g} s, got {size} bytes by then")
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _refuse(send, 413, f"the body of {scope['path']} must be at most {limit} bytes, got more")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _protocol(limits: Limits) -> type:
    """uvicorn's HTTP protocol (httptools), with a deadline on the request headers and the arrival stamp."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class Protocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes of a new request on a kept-alive connection
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope[ARRIVED] = time.perf_counter()  # type: ignore[literal-required]

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    return Protocol


def run(app: Any, host: str, port: int, limits: Limits) -> None:
    """Serve ``app`` with uvicorn under ``limits`` until SIGINT or SIGTERM (then at most ``shutdown_s``)."""
    import uvicorn

    uvicorn.run(BoundedBodies(app, limits), host=host, port=port, log_level="warning", access_log=False, http=_protocol(limits),
                timeout_keep_alive=max(1, round(limits.keep_alive_s)), timeout_graceful_shutdown=max(1, round(limits.shutdown_s)))
