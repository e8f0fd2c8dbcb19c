"""One prepared statement on a pooled connection, at the protocol level (libpq through psycopg.pq).

A request's one function call does not need psycopg's cursor: its parameters are already text,
and its answer (a status and a JSON body, or a JSON body) goes to the client as the bytes
PostgreSQL sent. Measured in process, the cursor's execute and fetch cost 159-181 µs of the
server's CPU per call where sending the prepared statement and reading its one result cost 56-78
(bench/README.md, "Seventh pass"). Everything else (the pool, configuring a connection,
errors by SQLSTATE, the error-code table, maintenance) stays on psycopg's own API.

A statement is prepared on a connection the first time that connection runs it; the set of
statements a connection has prepared lives as long as the connection.

On a `Connection` (the pool's connections), the socket's reader stays registered with the event
loop from one call to the next: with uvloop, registering a reader and removing it again cost
about ten system calls per wait (libuv tries the socket with an epoll ADD and DEL, makes it
non-blocking again, and removes it three times over), 6-8% of a request's server CPU
(bench/README.md, eleventh pass). A reader must never outlive its socket: once the socket is
closed, its number goes to the next socket opened, and the event loop, believing that number
watched already, would never report it. So the reader goes when the socket turns readable with
no call waiting (a notice, or the server closing it), when a call finds the connection lost
(libpq closes its socket then), before psycopg's own waits on the connection, and before the
connection closes.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors, pq

Row = tuple[bytes | None, ...]

# Statements prepared per connection; a connection the pool closes takes its entry with it.
_prepared: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], set[bytes]] = (
    weakref.WeakKeyDictionary()
)
_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)


@dataclass(frozen=True)
class Statement:
    """SQL text with $1..$n placeholders, and the name it is prepared under."""

    text: bytes
    name: bytes

    @classmethod
    def of(cls, text: bytes) -> Statement:
        return cls(text, b"atp_" + hashlib.sha256(text).hexdigest()[:24].encode())


class Connection(psycopg.AsyncConnection[Any]):
    """A connection whose socket's reader fetch_row leaves registered between calls (see the
    module's documentation). The reader goes before psycopg's own waits on the connection
    (which register and remove their own) and before the connection closes."""

    watched: int | None = None  # the socket's number while its reader is registered
    waiter: asyncio.Future[None] | None = None  # the call waiting for the socket, if any

    async def readable(self, fd: int) -> None:
        """Until the socket can be read. Adding the reader again when it is registered already
        only replaces its callback: no system call."""
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        try:
            loop.add_reader(fd, self.wake)
        except RuntimeError:
            # uvloop closes a reader whose socket reported an error (a reset) and keeps it
            # registered until it is removed: remove it, and watch the socket afresh.
            loop.remove_reader(fd)
            loop.add_reader(fd, self.wake)
        self.watched = fd
        try:
            await self.waiter
        finally:
            self.waiter = None

    def wake(self) -> None:
        if self.waiter is None:
            self.unwatch()  # readable with no call waiting: watch again at the next call
        elif not self.waiter.done():
            self.waiter.set_result(None)

    def unwatch(self) -> None:
        """Removes the reader; only while the socket is open, or right after libpq closed it
        (before any other socket could take its number)."""
        if self.watched is not None:
            asyncio.get_running_loop().remove_reader(self.watched)
            self.watched = None

    async def wait(self, *args: Any, **kwargs: Any) -> Any:
        # Every query psycopg itself runs on this connection waits here, with a reader of its own.
        self.unwatch()
        return await super().wait(*args, **kwargs)

    async def close(self) -> None:
        if self.watched is not None:
            try:
                still_ours = self.pgconn.socket == self.watched
            except psycopg.OperationalError:
                still_ours = False  # libpq closed it, and fetch_row removed the reader then
            if still_ours:
                self.unwatch()
            self.watched = None
        await super().close()


async def fetch_row(
    conn: psycopg.AsyncConnection[Any], statement: Statement, params: Sequence[bytes | None]
) -> Row | None:
    """The first row of statement's result as text values (bytes, NULL as None), or None when
    it returned no row. An error result raises the psycopg error of its SQLSTATE, as a cursor
    would; a broken connection raises psycopg.OperationalError."""
    try:
        res = await run_prepared(conn, statement, params)
    except BaseException:
        if isinstance(conn, Connection) and conn.pgconn.status != pq.ConnStatus.OK:
            conn.unwatch()  # libpq may have closed the socket: its number is still free
        raise
    if res.ntuples == 0:
        return None
    return tuple(res.get_value(0, column) for column in range(res.nfields))


async def run_prepared(
    conn: psycopg.AsyncConnection[Any], statement: Statement, params: Sequence[bytes | None]
) -> pq.abc.PGresult:
    pgconn = conn.pgconn
    prepared = _prepared.setdefault(conn, set())
    name = statement.name
    if name not in prepared:
        pgconn.send_prepare(name, statement.text)
        await result(conn)
        prepared.add(name)
    pgconn.send_query_prepared(name, params)
    return await result(conn)


async def result(conn: psycopg.AsyncConnection[Any]) -> pq.abc.PGresult:
    """Sends what is queued, then reads every result of the one query in flight: the last, or
    the error of the first that failed."""
    pgconn = conn.pgconn
    loop = asyncio.get_running_loop()
    fd = pgconn.socket
    while pgconn.flush() != 0:  # a large argument that the socket's buffer could not take
        await ready(loop, fd, write=True)
        pgconn.consume_input()
    last: pq.abc.PGresult | None = None
    failed: pq.abc.PGresult | None = None
    while True:
        while not pgconn.is_busy():  # what libpq has already read, first
            res = pgconn.get_result()
            if res is None:
                if failed is not None:
                    raise errors.error_from_result(failed, encoding="utf-8")
                if last is None:
                    raise psycopg.OperationalError("the server sent no result")
                return last
            if res.status not in _OK and failed is None:
                failed = res
            last = res
        if isinstance(conn, Connection):
            await conn.readable(fd)
        else:
            await ready(loop, fd, write=False)
        pgconn.consume_input()


async def ready(loop: asyncio.AbstractEventLoop, fd: int, write: bool) -> None:
    """Until the socket can be read (or written)."""
    waiter = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    if write:
        loop.add_writer(fd, wake)
        try:
            await waiter
        finally:
            loop.remove_writer(fd)
    else:
        loop.add_reader(fd, wake)
        try:
            await waiter
        finally:
            loop.remove_reader(fd)
