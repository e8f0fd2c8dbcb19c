"""The listening socket financeatp.serving binds: every connection the workers accept from it
answers a keep-alive request at once. asyncio sets TCP_NODELAY only on sockets whose proto is
IPPROTO_TCP, and without it each response waits 40 ms (Nagle against delayed ACKs). Shown on
the accepted connection's own socket option, not with a clock."""

from __future__ import annotations

import asyncio
import socket

from financeatp.pgcluster import free_port
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
