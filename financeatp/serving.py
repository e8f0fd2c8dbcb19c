"""uvicorn serving app:app: in this process (one worker) or as a supervisor of several."""

from __future__ import annotations

import asyncio
import inspect
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Mapping
from types import FrameType

import uvicorn
from uvicorn.supervisors import Multiprocess

from financeatp.observe import LOG_CONFIG
from financeatp.protocol import HttpProtocol

log = logging.getLogger("financeatp")


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class TcpConfig(uvicorn.Config):
    """uvicorn's configuration, with a listening socket that says it is TCP. The socket uvicorn
    binds for its workers has proto 0, and asyncio sets TCP_NODELAY only on IPPROTO_TCP sockets:
    without it every keep-alive response waits 40 ms (Nagle against delayed ACKs)."""

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return sock
        return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())


def supervisor(config: uvicorn.Config, sock: socket.socket) -> Multiprocess:
    # uvicorn up to 0.4x took the workers' target; later versions make it themselves.
    if "target" in inspect.signature(Multiprocess).parameters:
        target = uvicorn.Server(config).run
        return Multiprocess(config, target=target, sockets=[sock])  # type: ignore[call-arg]
    return Multiprocess(config, sockets=[sock])


async def stop_with_supervisor(interval: float = 1.0) -> None:
    """In a worker of several: stops this worker as SIGTERM does (what is in flight is answered)
    once its supervisor is gone. A supervisor killed with SIGKILL cannot stop its workers: they
    went on serving, and holding the listening socket, so that the next start could not bind its
    port. In a single process, nothing: its parent is not its supervisor."""
    supervisor = multiprocessing.parent_process()  # uvicorn spawns its workers
    if supervisor is None:
        return
    while os.getppid() == supervisor.pid:
        await asyncio.sleep(interval)
    log.warning("the supervisor is gone: this worker stops", extra={"fields": {"pid": os.getpid()}})
    os.kill(os.getpid(), signal.SIGTERM)


def trusted_proxies(env: Mapping[str, str] = os.environ) -> str | None:
    """FORWARDED_ALLOW_IPS: the proxies whose X-Forwarded-For and X-Forwarded-Proto name the
    client (uvicorn's format: addresses or networks, comma-separated; * for any). Unset: none, and
    the client is the connection's peer. The address goes into audit rows, so a caller is not
    believed about it unless it is named here (uvicorn's own default would believe 127.0.0.1)."""
    return env.get("FORWARDED_ALLOW_IPS", "").strip() or None


def exit_on_sigterm() -> None:
    """SIGTERM (a service manager's stop) leaves through Python's exit, so that what the command
    holds is released: the embedded PostgreSQL of `run`, `migrate` and `api-key` is stopped, the
    workers' metrics directory deleted. uvicorn serving in this process shuts down gracefully on
    SIGTERM and then raises the signal again under the handler it found: with the default one, the
    process would die there, leaving the embedded PostgreSQL running without its server."""
    signal.signal(signal.SIGTERM, terminated)


def terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)  # a stop asked for, and done: as the supervisor of several workers exits


def serve(host: str, port: int, workers: int) -> None:
    proxies = trusted_proxies()
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="financeatp-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    config = TcpConfig(
        "app:app",
        host=host,
        port=port,
        workers=workers,
        log_config=LOG_CONFIG,
        http=HttpProtocol,  # httptools, with the contract's answers for what uvicorn refuses
        access_log=False,
        server_header=False,
        proxy_headers=proxies is not None,
        forwarded_allow_ips=proxies,
        timeout_graceful_shutdown=10,
        # Longer than clients keep idle connections (httpx 5 s, Node 4 s, nginx 60 s), so that
        # a client never sends a request on a connection the server is closing.
        timeout_keep_alive=75,
        # Connections and requests a worker holds at once before it answers 503: far above what
        # its pool serves (4 connections; the rest queue in the server), a bound on what idle or
        # slow connections can hold.
        limit_concurrency=2048,
    )
    server = uvicorn.Server(config)
    try:
        if workers > 1:
            supervisor(config, config.bind_socket()).run()
        else:
            server.run(sockets=[config.bind_socket()])
            if not server.started:
                raise SystemExit(3)  # uvicorn's exit status for a failed startup
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
