"""The requests' queue for the pool's connections.

At most as many requests as the pool holds connections ask it for one at a time; the others
wait here, in order of arrival, and the request that finishes hands its turn to the next. The
pool then nearly always has a connection ready, and a wait costs one future and one timer:
psycopg_pool's own queue (a lock, a condition and a timeout task per waiting request) cost a
request about three times the CPU of this one whenever it had to wait, which under load is most
of the time (bench/README.md, thirteenth pass)."""

from __future__ import annotations

import asyncio
from collections import deque


class Gate:
    def __init__(self, turns: int) -> None:
        self.free = turns
        self.waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for a turn (for the pool gauge)."""
        return sum(1 for turn in self.waiters if not turn.done())

    async def enter(self, timeout: float) -> float:
        """Waits for a turn, first come first served; returns the seconds it waited. Raises
        TimeoutError after timeout seconds without one. Every enter that returns needs a leave."""
        if self.free > 0:
            self.free -= 1
            return 0.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        turn: asyncio.Future[None] = loop.create_future()
        self.waiters.append(turn)
        timer = loop.call_later(timeout, expire, turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self.leave()  # handed a turn as it was cancelled: the next one takes it
            raise
        finally:
            timer.cancel()
        return loop.time() - started

    def leave(self) -> None:
        """Hands the turn to the longest waiting request, or frees it."""
        while self.waiters:
            turn = self.waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.free += 1


def expire(turn: asyncio.Future[None]) -> None:
    if not turn.done():
        turn.set_exception(TimeoutError("no turn for a database connection in time"))
