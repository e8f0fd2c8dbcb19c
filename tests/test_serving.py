"""How financeatp.serving serves. The listening socket it binds: every connection the workers
accept from it answers a keep-alive request at once. asyncio sets TCP_NODELAY only on sockets
whose proto is IPPROTO_TCP, and without it each response waits 40 ms (Nagle against delayed
ACKs). Shown on the accepted connection's own socket option, not with a clock. And its workers:
they stop when their supervisor is gone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import time
from pathlib import Path

from conftest import Cluster, url
from http_fixtures import drop_database, fresh_database, start_server

from financeatp.pgcluster import free_port, port_is_free
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
