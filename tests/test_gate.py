"""The requests' queue for the pool's connections (financeatp/gate.py): turns in order of
arrival, a timeout that loses no turn, and a cancelled waiter's turn passed on. Its use by the
server (many more requests than connections, 503 when none comes in time) is tested over HTTP."""

from __future__ import annotations

import asyncio

import pytest

from financeatp.gate import Gate


def run(coroutine: object) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


def test_turns_go_in_order_of_arrival_and_come_back() -> None:
    async def scenario() -> None:
        gate = Gate(2)
        order: list[int] = []

        async def request(n: int) -> None:
            await gate.enter(5.0)
            try:
                order.append(n)
                await asyncio.sleep(0.01)
            finally:
                gate.leave()

        await asyncio.gather(*(request(n) for n in range(8)))
        assert order == list(range(8))
        assert gate.free == 2 and gate.waiting == 0

    run(scenario())


def test_at_most_as_many_inside_as_turns() -> None:
    async def scenario() -> None:
        gate = Gate(3)
        inside = 0
        most = 0

        async def request() -> None:
            nonlocal inside, most
            await gate.enter(5.0)
            try:
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.001)
                inside -= 1
            finally:
                gate.leave()

        await asyncio.gather(*(request() for _ in range(50)))
        assert most == 3

    run(scenario())


def test_a_wait_that_times_out_raises_and_loses_no_turn() -> None:
    async def scenario() -> None:
        gate = Gate(1)
        assert await gate.enter(1.0) == 0.0
        with pytest.raises(TimeoutError):
            await gate.enter(0.05)
        assert gate.waiting == 0
        gate.leave()
        waited = await gate.enter(0.05)  # the turn came back, and nobody else holds it
        assert waited == 0.0
        gate.leave()
        assert gate.free == 1

    run(scenario())


def test_the_time_waited_is_returned() -> None:
    async def scenario() -> None:
        gate = Gate(1)
        await gate.enter(1.0)
        asyncio.get_running_loop().call_later(0.05, gate.leave)
        waited = await gate.enter(1.0)
        assert 0.04 <= waited < 1.0
        gate.leave()

    run(scenario())


def test_a_cancelled_waiter_does_not_keep_a_turn() -> None:
    async def scenario() -> None:
        gate = Gate(1)
        await gate.enter(1.0)
        first = asyncio.create_task(gate.enter(5.0))
        second = asyncio.create_task(gate.enter(5.0))
        await asyncio.sleep(0)
        assert gate.waiting == 2
        gate.leave()  # the turn goes to the first waiter...
        first.cancel()  # ...which is cancelled before it runs: the second gets the turn
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 1.0)
        gate.leave()
        assert gate.free == 1 and gate.waiting == 0

    run(scenario())


def test_a_waiter_cancelled_while_waiting_leaves_the_queue() -> None:
    async def scenario() -> None:
        gate = Gate(1)
        await gate.enter(1.0)
        waiter = asyncio.create_task(gate.enter(5.0))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert gate.waiting == 0
        gate.leave()
        assert gate.free == 1

    run(scenario())
