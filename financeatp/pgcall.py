"""One prepared statement on a pooled connection, at the protocol level (libpq through psycopg.pq).

A request's one function call does not need psycopg's cursor: its parameters are already text,
and its answer (a status and a JSON body, or a JSON body) goes to the client as the bytes
PostgreSQL sent. Measured in process, the cursor's execute and fetch cost 159-181 µs of the
server's CPU per call where sending the prepared statement and reading its one result cost 56-78
(bench/README.md, "Seventh pass"). Everything else (the pool, configuring a connection,
errors by SQLSTATE, the error-code table, maintenance) stays on psycopg's own API.

A statement is prepared on a connection the first time that connection runs it; the set of
statements a connection has prepared lives as long as the connection.
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


async def fetch_row(
    conn: psycopg.AsyncConnection[Any], statement: Statement, params: Sequence[bytes | None]
) -> Row | None:
    """The first row of statement's result as text values (bytes, NULL as None), or None when
    it returned no row. An error result raises the psycopg error of its SQLSTATE, as a cursor
    would; a broken connection raises psycopg.OperationalError."""
    pgconn = conn.pgconn
    prepared = _prepared.setdefault(conn, set())
    name = statement.name
    if name not in prepared:
        pgconn.send_prepare(name, statement.text)
        await result(pgconn)
        prepared.add(name)
    pgconn.send_query_prepared(name, params)
    res = await result(pgconn)
    if res.ntuples == 0:
        return None
    return tuple(res.get_value(0, column) for column in range(res.nfields))


async def result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult:
    """Sends what is queued, then reads every result of the one query in flight: the last, or
    the error of the first that failed."""
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
