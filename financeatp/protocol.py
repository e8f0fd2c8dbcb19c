"""HTTP/1.x as uvicorn's httptools protocol speaks it, with its own answers in the contract's
shape. Before any application sees a request, uvicorn answers two itself, in plain text: one
that cannot be parsed as HTTP/1.x (400) and one over its concurrency limit (503); and it waits
for a request line and headers of any size for any time (its httptools protocol has no limit, so
a client could make a worker hold megabytes per connection, or connections that never finish a
request). Here both answers are the contract's JSON error body with the headers every other
answer carries, a head over MAX_HEAD_BYTES is refused as nginx refuses one over its buffers
(400), and a head not complete HEAD_SECONDS after the connection or its first byte as nginx and
Node.js time one out (408); after each of these the connection is closed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from financeatp.errors import JSON, error_body
from financeatp.observe import SAFETY_HEADERS, new_correlation_id

log = logging.getLogger("financeatp")

# The request line and headers of one request, as Node.js and uvicorn's h11 protocol bound them,
# and the time they may take: from the connection, or from the request's first byte (Node.js's
# headersTimeout and nginx's client_header_timeout are 60 s too).
MAX_HEAD_BYTES = 16 * 1024
HEAD_SECONDS = 60.0
NOT_HTTP = "the request is not valid HTTP/1.x: its request line or a header could not be parsed"
HEAD_TOO_LARGE = f"the request line and headers are over {MAX_HEAD_BYTES} bytes"
HEAD_TOO_SLOW = "the request line and headers did not arrive in time"
BUSY = "the server holds as many connections and requests as it takes; retry in a moment"


class HeadTooLarge(httptools.HttpParserError):
    """Raised in a parser callback: httptools stops and re-raises it from feed_data, where
    uvicorn answers an HttpParserError with send_400_response."""


def error_headers(body: bytes, correlation_id: str) -> list[tuple[bytes, bytes]]:
    """The headers of an answer the protocol gives itself, after which it closes the connection."""
    return [
        (b"content-type", JSON.encode()),
        (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"),
        *SAFETY_HEADERS,
        (b"x-correlation-id", correlation_id.encode()),
    ]


async def busy(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer over the concurrency limit, in place of uvicorn's plain-text one."""
    correlation_id = new_correlation_id()
    log.warning(BUSY, extra={"fields": {"status": 503, "correlation_id": correlation_id}})
    body = error_body("unavailable", BUSY)
    headers = [*error_headers(body, correlation_id), (b"retry-after", b"1")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering in the contract's shape what it answers itself.

    A head's size is bounded two ways. While it arrives: httptools keeps a header it has not
    finished in memory, so the bytes of every read that began and ended inside a head are
    counted, and a head sent without end is refused as it grows. When it is complete: the request
    line and headers the parser handed over, counted only when the reads could hold that much
    (a request's head is a few hundred bytes: its callbacks stay uvicorn's own, uncounted). Its
    time is bounded by head_timer (see __init__).

    The overrides call uvicorn's methods by their class rather than through super(): they run for
    every request, and so the protocol costs a request 0.6-0.9 µs more than uvicorn's own, about
    1 µs through super() (bench/ab_protocol.py; a transfer takes about 270 µs of the server's
    CPU)."""

    head_seconds = HEAD_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's own check answers in plain text: checked here instead (on_headers_complete).
        self.limit, self.limit_concurrency = self.limit_concurrency, None
        self.in_head = False
        self.head_begun = False  # the head began in the read being parsed
        self.head_read = 0  # bytes of whole reads inside the head
        self.first_read = 0  # bytes of the read in which the head began
        self.read_size = 0  # bytes of the read being parsed
        self.refusal = NOT_HTTP
        # Armed while a head is awaited: from the connection until its first head is complete,
        # and from the end of a read that left a head unfinished (a head comes in one read as a
        # rule, so a request seldom arms it). Between requests uvicorn's keep-alive timeout rules.
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        HttpToolsProtocol.connection_made(self, transport)
        self.head_timer = self.loop.call_later(self.head_seconds, self.head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_head_timer()
        HttpToolsProtocol.connection_lost(self, exc)

    def data_received(self, data: bytes) -> None:
        # A closed transport reads no more: after a refusal nothing else arrives here.
        self.head_begun = False
        self.read_size = len(data)
        HttpToolsProtocol.data_received(self, data)
        if self.in_head:
            if self.head_timer is None and not self.transport.is_closing():
                self.head_timer = self.loop.call_later(self.head_seconds, self.head_timed_out)
            if not self.head_begun:
                self.head_read += len(data)
                if self.head_read > MAX_HEAD_BYTES and not self.transport.is_closing():
                    self.refusal = HEAD_TOO_LARGE
                    self.send_400_response(HEAD_TOO_LARGE)

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self.in_head = self.head_begun = True
        self.head_read = 0
        self.first_read = self.read_size

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.head_timer is not None:
            self.stop_head_timer()
        # The reads that held this head (the first and the last may hold more than it): only
        # when they could hold more than MAX_HEAD_BYTES is the head itself measured.
        could_be = self.first_read + self.head_read + self.read_size > MAX_HEAD_BYTES
        if could_be and self.head_size() > MAX_HEAD_BYTES:
            self.refusal = HEAD_TOO_LARGE
            raise HeadTooLarge(HEAD_TOO_LARGE)
        if self.limit is not None and (
            len(self.connections) >= self.limit or len(self.tasks) >= self.limit
        ):
            app, self.app = self.app, busy
            try:
                HttpToolsProtocol.on_headers_complete(self)
            finally:
                self.app = app
            return
        HttpToolsProtocol.on_headers_complete(self)

    def stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def head_timed_out(self) -> None:
        """A head begun and not finished in time: 408 and the connection closed. A new connection
        that sent nothing at all is closed as an idle keep-alive one is, without an answer.
        (uvicorn itself waits for ever in both cases.)"""
        self.head_timer = None
        if self.transport.is_closing():
            return
        if self.in_head:
            self.refuse(408, b"Request Timeout", "request_timeout", HEAD_TOO_SLOW)
        else:
            self.transport.close()

    def head_size(self) -> int:
        """The request line's target and the headers as the parser handed them over."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it could not parse, in the contract's shape."""
        self.refuse(400, b"Bad Request", "invalid_request", self.refusal)

    def refuse(self, status: int, reason: bytes, error: str, message: str) -> None:
        """An answer written before any application saw the request, and the connection closed."""
        self.stop_head_timer()
        correlation_id = new_correlation_id()
        fields = {"status": status, "correlation_id": correlation_id, "client": self.client_host()}
        log.warning(message, extra={"fields": fields})
        body = error_body(error, message)
        headers = [*error_headers(body, correlation_id), *self.server_state.default_headers]
        lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        self.transport.write(b"HTTP/1.1 %d %s\r\n" % (status, reason) + lines + b"\r\n" + body)
        self.transport.close()

    def client_host(self) -> str:
        return self.client[0] if self.client else ""
