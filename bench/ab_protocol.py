"""What financeatp's HTTP protocol (financeatp/protocol.py) costs a request next to uvicorn's own
httptools protocol: both parse the same request, a transfer's head and body, on one connection
with a transport that writes nowhere, in front of an application that answers at once, 20,000
times a round, the two alternating for seven rounds; prints the CPU per request of each
(time.process_time), median and rounds. No network, no PostgreSQL: the protocol alone.

    .venv/bin/python bench/ab_protocol.py
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from financeatp.protocol import HttpProtocol

BODY = b'{"from_user_id":"0190c1a2-0000-7000-8000-000000000001","to_user_id":"0190c1a2-0000-7000-8000-000000000003","amount":"1.5"}'  # noqa: E501
REQUEST = (
    b"POST /transfers HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nX-API-Key: sk_live_" + b"a" * 64 + b"\r\n"
    b"X-Request-User-Id: 0190c1a2-0000-7000-8000-000000000001\r\n"
    b"Idempotency-Key: 0190c1a2-0000-7000-8000-000000000002\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
)
REQUESTS = 20_000
ROUNDS = 7


class Nowhere(asyncio.Transport):
    """A connection from 127.0.0.1 whose writes go nowhere."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def answer(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def per_request(protocol_class: type[HttpToolsProtocol]) -> float:
    """Microseconds of CPU per request, parsed and answered on one keep-alive connection."""
    config = uvicorn.Config(answer, lifespan="off", log_config=None, limit_concurrency=2048)
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(Nowhere())
    started = time.process_time()
    for _ in range(REQUESTS):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)  # the application's task runs and answers
        await asyncio.sleep(0)
    return (time.process_time() - started) / REQUESTS * 1e6


async def main() -> None:
    rounds: dict[str, list[float]] = {"uvicorn": [], "financeatp": []}
    for _ in range(ROUNDS):
        rounds["uvicorn"].append(await per_request(HttpToolsProtocol))
        rounds["financeatp"].append(await per_request(HttpProtocol))
    for name, values in rounds.items():
        shown = ", ".join(f"{value:.2f}" for value in values)
        print(f"{name}: median {statistics.median(values):.2f} us per request ({shown})")


if __name__ == "__main__":
    uvloop.run(main())
