"""financeatp/pgcall.py against a real PostgreSQL: a request's one statement at the protocol level
answers as a psycopg cursor would (values, NULLs, errors by SQLSTATE, a broken connection), is
prepared once per connection, and sends an argument larger than the socket's buffer; on the
pool's connections the socket's reader stays registered between calls and never outlives the
socket (a closed, a lost and a killed connection, on uvloop and on asyncio's own loop)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
import uvloop

from financeatp.pgcall import Connection, Statement, fetch_row


def run(database: str, body: Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        conn = await psycopg.AsyncConnection.connect(
            database, autocommit=True, client_encoding="utf8"
        )
        try:
            return await body(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


def test_values_come_back_as_text_with_null_as_none(database: str) -> None:
    statement = Statement.of("SELECT $1::int + 1, NULL::text, $2::text, 'ü'::text".encode())

    async def body(conn: psycopg.AsyncConnection[Any]) -> Any:
        return await fetch_row(conn, statement, [b"41", None])

    assert run(database, body) == (b"42", None, None, "ü".encode())


def test_no_row_is_none(database: str) -> None:
    statement = Statement.of(b"SELECT 1 WHERE $1::boolean")

    async def body(conn: psycopg.AsyncConnection[Any]) -> Any:
        return await fetch_row(conn, statement, [b"false"]), await fetch_row(
            conn, statement, [b"true"]
        )

    assert run(database, body) == (None, (b"1",))


def test_prepared_once_per_connection(database: str) -> None:
    statement = Statement.of(b"SELECT $1::int * 2")

    async def body(conn: psycopg.AsyncConnection[Any]) -> Any:
        values = [await fetch_row(conn, statement, [str(i).encode()]) for i in range(5)]
        cur = await conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE name = %s",
            [statement.name.decode()],
        )
        return values, await cur.fetchone()

    values, prepared = run(database, body)
    assert values == [(str(2 * i).encode(),) for i in range(5)]
    assert prepared == (1,)


def test_an_error_raises_the_class_of_its_sqlstate_and_the_connection_stays_usable(
    database: str,
) -> None:
    failing = Statement.of(
        b"DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'L4002', MESSAGE = 'insufficient',"
        b" DETAIL = '{\"index\": 3}'; END $$"
    )
    bad_text = Statement.of(b"SELECT $1::numeric")
    fine = Statement.of(b"SELECT 7")

    async def body(conn: psycopg.AsyncConnection[Any]) -> Any:
        errors = []
        for statement, params in ((failing, []), (bad_text, [b"ten"])):
            try:
                await fetch_row(conn, statement, params)
            except psycopg.Error as exc:
                errors.append(exc)
        return errors, await fetch_row(conn, fine, []), conn.pgconn.transaction_status

    errors, row, status = run(database, body)
    assert [e.sqlstate for e in errors] == ["L4002", "22P02"]
    assert errors[0].diag.message_primary == "insufficient"
    assert errors[0].diag.message_detail == '{"index": 3}'
    assert isinstance(errors[1], psycopg.errors.InvalidTextRepresentation)
    assert row == (b"7",)
    assert status == psycopg.pq.TransactionStatus.IDLE


def test_an_argument_larger_than_the_socket_buffer(database: str) -> None:
    big = b"x" * (16 * 1024 * 1024)  # far more than a loopback socket buffers: flush must wait
    statement = Statement.of(
        b"SELECT length($1::text), encode(sha256(convert_to($1::text, 'UTF8')), 'hex')"
    )

    async def body(conn: psycopg.AsyncConnection[Any]) -> Any:
        return await fetch_row(conn, statement, [big])

    assert run(database, body) == (str(len(big)).encode(), hashlib.sha256(big).hexdigest().encode())


def test_a_connection_killed_under_it_raises_and_is_broken(database: str) -> None:
    statement = Statement.of(b"SELECT pg_terminate_backend(pg_backend_pid())")

    async def body(conn: psycopg.AsyncConnection[Any]) -> Any:
        with pytest.raises(psycopg.Error):
            await fetch_row(conn, statement, [])
        return conn.broken

    assert run(database, body) is True


# --- the pool's connections: the socket's reader stays registered between calls ------------
# Run on both event loops: uvloop serves, asyncio's own runs wherever uvloop is absent.

LOOPS = ["asyncio", "uvloop"]


def run_loop(loop: str, main: Callable[[], Awaitable[Any]]) -> Any:
    if loop == "uvloop":
        return uvloop.run(main())
    return asyncio.run(main())


async def kill(database: str, pid: int) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as other:
        await other.execute("SELECT pg_terminate_backend(%s)", [pid])


@pytest.mark.parametrize("loop", LOOPS)
def test_the_reader_stays_between_calls_and_goes_at_close(database: str, loop: str) -> None:
    statement = Statement.of(b"SELECT $1::int + 1")

    async def main() -> Any:
        conn = await Connection.connect(database, autocommit=True)
        rows = [await fetch_row(conn, statement, [str(i).encode()]) for i in range(3)]
        watched = conn.watched == conn.pgconn.socket
        await conn.close()
        # The next socket takes the closed one's number: it must be reported readable.
        again = await Connection.connect(database, autocommit=True)
        row = await asyncio.wait_for(fetch_row(again, statement, [b"9"]), 10)
        cur = await asyncio.wait_for(again.execute("SELECT 'psycopg''s own wait'"), 10)
        await again.close()
        return rows, watched, conn.watched, row, await cur.fetchone()

    rows, watched, after_close, row, own = run_loop(loop, main)
    assert rows == [(b"1",), (b"2",), (b"3",)]
    assert watched is True
    assert after_close is None
    assert row == (b"10",)
    assert own == ("psycopg's own wait",)


@pytest.mark.parametrize("loop", LOOPS)
def test_an_idle_connection_the_server_closes_stops_being_watched(database: str, loop: str) -> None:
    statement = Statement.of(b"SELECT pg_backend_pid()")

    async def main() -> Any:
        conn = await Connection.connect(database, autocommit=True)
        row = await fetch_row(conn, statement, [])
        assert row is not None and row[0] is not None
        await kill(database, int(row[0]))
        for _ in range(100):  # readable with no call waiting: the reader goes, no busy loop
            if conn.watched is None:
                break
            await asyncio.sleep(0.05)
        unwatched = conn.watched is None
        with pytest.raises(psycopg.OperationalError):
            await asyncio.wait_for(fetch_row(conn, statement, []), 10)
        await conn.close()
        again = await Connection.connect(database, autocommit=True)
        alive = await asyncio.wait_for(fetch_row(again, statement, []), 10)
        await again.close()
        return unwatched, alive is not None

    assert run_loop(loop, main) == (True, True)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_connection_lost_under_a_call_leaves_no_reader_on_its_number(
    database: str, loop: str
) -> None:
    lose = Statement.of(b"SELECT pg_terminate_backend(pg_backend_pid())")
    fine = Statement.of(b"SELECT 7")

    async def main() -> Any:
        conn = await Connection.connect(database, autocommit=True)
        await fetch_row(conn, fine, [])
        with pytest.raises(psycopg.OperationalError):
            await fetch_row(conn, lose, [])
        lost = conn.watched is None and conn.broken
        # libpq closed the socket; the next connection likely takes its number.
        again = await Connection.connect(database, autocommit=True)
        row = await asyncio.wait_for(fetch_row(again, fine, []), 10)
        await conn.close()  # must not remove the reader of the socket that took the number
        row_after = await asyncio.wait_for(fetch_row(again, fine, []), 10)
        await again.close()
        return lost, row, row_after

    assert run_loop(loop, main) == (True, (b"7",), (b"7",))


@pytest.mark.parametrize("loop", LOOPS)
def test_an_error_result_keeps_the_reader(database: str, loop: str) -> None:
    failing = Statement.of(b"SELECT 1 / $1::int")

    async def main() -> Any:
        conn = await Connection.connect(database, autocommit=True)
        with pytest.raises(psycopg.errors.DivisionByZero):
            await fetch_row(conn, failing, [b"0"])
        kept = conn.watched == conn.pgconn.socket
        row = await fetch_row(conn, failing, [b"1"])
        await conn.close()
        return kept, row

    assert run_loop(loop, main) == (True, (b"1",))
