"""financeatp/pgcall.py against a real PostgreSQL: a request's one statement at the protocol level
answers as a psycopg cursor would (values, NULLs, errors by SQLSTATE, a broken connection), is
prepared once per connection, and sends an argument larger than the socket's buffer."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from financeatp.pgcall import Statement, fetch_row


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
