"""How financeatp.serving serves. The listening socket it binds: every connection the workers
accept from it answers a keep-alive request at once. asyncio sets TCP_NODELAY only on sockets
whose proto is IPPROTO_TCP, and without it each response waits 40 ms (Nagle against delayed
ACKs). Shown on the accepted connection's own socket option, not with a clock. Its workers:
they stop when their supervisor is gone. And its protocol's own answers: over the concurrency
limit, and to a head not finished in time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from conftest import Cluster, url
from http_fixtures import drop_database, fresh_database, read_answer, start_server

from financeatp.pgcluster import free_port, port_is_free
from financeatp.protocol import HttpProtocol
from financeatp.serving import TcpConfig


async def accepted_nodelay(sock: socket.socket) -> int:
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            raw = transport.get_extra_info("socket")
            accepted.set_result(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    try:
        host, port = sock.getsockname()[:2]
        _, writer = await asyncio.open_connection(host, port)
        writer.close()
        return await asyncio.wait_for(accepted, 10)
    finally:
        server.close()


def test_accepted_connections_have_tcp_nodelay() -> None:
    sock = TcpConfig("app:app", host="127.0.0.1", port=free_port()).bind_socket()
    assert sock.proto == socket.IPPROTO_TCP
    assert asyncio.run(accepted_nodelay(sock)) != 0


STARTED = re.compile(r"Started server process \[(\d+)\]")  # uvicorn's line for each worker


def running(pid: int) -> bool:
    """Alive and not a zombie (nothing on some machines reaps an orphan that exited)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_workers_stop_when_their_supervisor_is_killed(cluster: Cluster, tmp_path: Path) -> None:
    """Killed with SIGKILL, uvicorn's supervisor cannot stop its workers: they went on serving,
    holding the listening socket, and the next start could not bind the port. Each worker now
    stops once its supervisor is gone."""
    name = fresh_database(cluster)
    server = start_server(url(cluster, name, "atp_app"), tmp_path / "server.log", WORKERS="2")
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = [int(pid) for pid in STARTED.findall(server.log_text())]
            time.sleep(0.1)
        assert len(workers) == 2 and all(map(running, workers)), server.log_text()
        server.process.kill()
        server.process.wait()
        deadline = time.monotonic() + 30
        while any(running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(running(pid) for pid in workers), server.log_text()
        assert port_is_free(int(server.url.rpartition(":")[2])), "the port is still held"
        assert "the supervisor is gone: this worker stops" in server.log_text()
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        drop_database(cluster, name)


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    headers = [(b"content-length", b"5")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"hello"})


@contextlib.contextmanager
def uvicorn_serving(
    limit_concurrency: int = 2048, protocol: type[HttpProtocol] = HttpProtocol
) -> Iterator[int]:
    """uvicorn with financeatp's protocol, as serve() configures it, in a thread of this
    process, in front of an application that says hello; yields its port."""
    port = free_port()
    config = TcpConfig(
        hello, host="127.0.0.1", port=port, http=protocol, lifespan="off",
        limit_concurrency=limit_concurrency, log_config=None,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def test_over_the_concurrency_limit_the_answer_is_the_contracts_503() -> None:
    """uvicorn's own answer over limit_concurrency was a plain-text 503; the contract's is JSON
    with Retry-After. Each connection counts toward the limit: with a limit of 1, the first
    connection is already at it."""
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with uvicorn_serving(limit_concurrency=1) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(request)
            answer = read_answer(conn)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), answer
    headers = head.lower()
    assert b"content-type: application/json" in headers and b"retry-after: 1" in headers, head
    assert b"x-correlation-id: " in headers and b"connection: close" in headers, head
    assert json.loads(body)["error"] == "unavailable", body
    with uvicorn_serving(limit_concurrency=2) as port:  # under the limit: the application answers
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(request)
            assert read_answer(conn).startswith(b"HTTP/1.1 200 "), "not the application's"


class QuickHead(HttpProtocol):
    head_seconds = 1.0  # short for the test; long enough that a busy machine answers in it


def test_a_head_not_finished_in_time_is_answered_408_and_closed() -> None:
    """uvicorn waited for ever for a head begun and not finished, and for a new connection that
    sends nothing: each held the connection (and counted toward the concurrency limit) for
    good. A head now has head_seconds from the connection or from its first byte; a connection
    that has had its head waits for its next request as uvicorn's keep-alive timeout says."""
    with uvicorn_serving(protocol=QuickHead) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # no blank line: never finished
            answer = read_answer(conn)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        assert b"content-type: application/json" in head.lower(), head
        assert json.loads(body)["error"] == "request_timeout", body

        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            assert conn.recv(100) == b"", "a connection that sent nothing stays open"

        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            for _ in range(2):  # the second request after more than head_seconds of quiet
                conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_answer(conn).startswith(b"HTTP/1.1 200 "), "not the application's"
                time.sleep(QuickHead.head_seconds * 2)
