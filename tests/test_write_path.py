"""The shape of the write path, counted on one call: transfer, mint, burn and create_hold run one
PL/pgSQL body (the api function), at most three nested SQL statements, one other function call
(the posting: ledger.post_transfer for one journal, ledger.post_hold for a new hold) and no
trigger; and the two hot reads, get_balance and get_history, run one PL/pgSQL body whose caller
and wallet are read by one statement. pg_stat_statements (track = all) counts the statements,
pg_stat_xact_user_functions the calls of PL/pgSQL and SQL functions that were not inlined, trigger
functions included. And api.expire_holds releases a batch of holds in as many statements and calls
for two holds as for thirty."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

MAX_NESTED_STATEMENTS = 3


def create_user(dba: psycopg.Connection) -> str:
    user_id = str(uuid.uuid4())
    name = "u" + user_id[:8]
    dba.execute("SELECT api.create_user(%s, %s, %s)", (user_id, name, f"{name}@example.com"))
    return user_id


CALLS: dict[str, Callable[[str, str], tuple[str, dict[str, Any]]]] = {
    "transfer": lambda a, b: (
        "SELECT status FROM api.transfer(from_user_id => %(a)s, to_user_id => %(b)s, amount => 1,"
        " request_user_id => %(a)s, idempotency_key => %(k)s, api_key_hash => %(h)s)",
        {"a": a, "b": b},
    ),
    "mint": lambda a, b: (
        "SELECT status FROM api.mint(to_user_id => %(a)s, amount => 1, idempotency_key => %(k)s,"
        " api_key_hash => %(h)s)",
        {"a": a},
    ),
    "create_hold": lambda a, b: (
        "SELECT status FROM api.create_hold(from_user_id => %(a)s, to_user_id => %(b)s,"
        " amount => 1, request_user_id => %(a)s, idempotency_key => %(k)s, api_key_hash => %(h)s)",
        {"a": a, "b": b},
    ),
    "burn": lambda a, b: (
        "SELECT status FROM api.burn(from_user_id => %(a)s, amount => 1, idempotency_key => %(k)s,"
        " api_key_hash => %(h)s)",
        {"a": a},
    ),
}


def call(app: psycopg.Connection, statement: str, args: dict[str, Any], key_hash: str) -> int:
    row = app.execute(statement, {**args, "k": uuid.uuid4(), "h": key_hash}).fetchone()
    assert row is not None
    return int(row[0])


def function_calls(conn: psycopg.Connection) -> dict[str, int]:
    """Calls of each function in this backend not yet flushed to the shared statistics (the
    view keeps counting across transactions until a flush, so a call is the difference)."""
    rows = conn.execute(
        "SELECT schemaname || '.' || funcname, calls FROM pg_stat_xact_user_functions"
    ).fetchall()
    return dict(rows)


def called_between(before: dict[str, int], after: dict[str, int]) -> list[tuple[str, int]]:
    """The functions called between two readings of function_calls, with how often."""
    return sorted(
        (name, calls - before.get(name, 0))
        for name, calls in after.items()
        if calls != before.get(name)
    )


def counted(
    dba: psycopg.Connection, app_url: str, run: Callable[[psycopg.Connection], None]
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(functions called, nested statements) of the fourth run, as the application role: the
    first three warm up (plans cached, the key's last_used_at fresh)."""
    dba.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    with psycopg.connect(app_url) as app:
        for _ in range(3):
            run(app)
            app.commit()
        dba.execute("SELECT pg_stat_statements_reset()")
        before = function_calls(app)
        run(app)
        after = function_calls(app)
        app.commit()
    functions = called_between(before, after)
    nested = dba.execute(
        "SELECT query, calls FROM pg_stat_statements WHERE NOT toplevel ORDER BY query"
    ).fetchall()
    return functions, nested


@pytest.mark.parametrize("operation", sorted(CALLS))
def test_one_call_executes_the_lean_shape(dba, app_url, make_key, operation: str) -> None:
    _, key_hash, _ = make_key(["admin"])
    alice, bob = create_user(dba), create_user(dba)
    dba.execute("SELECT api.mint(%s, 1000)", (alice,))
    statement, args = CALLS[operation](alice, bob)

    def run(app: psycopg.Connection) -> None:
        assert call(app, statement, args, key_hash) == 201

    functions, nested = counted(dba, app_url, run)
    assert sum(calls for _, calls in nested) <= MAX_NESTED_STATEMENTS, nested
    posting = "ledger.post_hold" if operation == "create_hold" else "ledger.post_transfer"
    assert functions == [(f"api.{operation}", 1), (posting, 1)], functions


# A read: its statement, and how many nested statements it runs (the balance: the caller with
# the wallet; the history: that, then the page).
READS: dict[str, tuple[str, int]] = {
    "get_balance": ("SELECT api.get_balance(%(a)s, api_key_hash => %(h)s)", 1),
    "get_history": ("SELECT api.get_history(%(a)s, api_key_hash => %(h)s)", 2),
}


@pytest.mark.parametrize("operation", sorted(READS))
def test_one_read_is_one_body_and_the_caller_with_the_wallet_one_statement(
    dba, app_url, make_key, operation: str
) -> None:
    _, key_hash, _ = make_key(["read"])
    alice = create_user(dba)
    dba.execute("SELECT api.mint(%s, 1000)", (alice,))
    statement, statements = READS[operation]

    def run(app: psycopg.Connection) -> None:
        app.execute(statement, {"a": alice, "h": key_hash})

    functions, nested = counted(dba, app_url, run)
    assert sum(calls for _, calls in nested) == statements, nested
    assert functions == [(f"api.{operation}", 1)], functions


def test_no_trigger_fires_on_insert(dba) -> None:
    """The triggers left on the ledger's tables refuse UPDATE, DELETE and TRUNCATE; none fires on
    INSERT (tgtype bit 2), so a successful write runs none."""
    inserting = dba.execute(
        "SELECT tgrelid::regclass::text, tgname FROM pg_trigger t"
        " JOIN pg_class c ON c.oid = t.tgrelid"
        " WHERE c.relnamespace = 'ledger'::regnamespace AND NOT tgisinternal AND tgtype & 4 <> 0"
    ).fetchall()
    assert inserting == []


def test_expiring_holds_runs_the_same_statements_for_two_holds_as_for_thirty(dba, app_url) -> None:
    """Every sender's wallet of a batch of expired holds stays locked until the batch commits, so
    the release of a batch is set-based: released hold by hold (a ledger.post_journal call and
    the statements around it each), 1,000 holds kept their wallets from every transfer for 0.7 s
    in a test cluster. The statements and calls of api.expire_holds do not grow with the batch."""
    dba.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    senders = [create_user(dba) for _ in range(3)]
    receiver = create_user(dba)
    for sender in senders:
        dba.execute("SELECT api.mint(%s, 1000)", (sender,))
    shapes = []
    with psycopg.connect(app_url, autocommit=True) as app:  # maintenance's own role, keyless
        for holds in (2, 30):
            dba.execute(
                "SELECT count(*) FROM generate_series(1, %(n)s) n, LATERAL api.create_hold("
                " from_user_id => (%(s)s::uuid[])[n %% 3 + 1], to_user_id => %(r)s, amount => n,"
                " request_user_id => (%(s)s::uuid[])[n %% 3 + 1]) h",
                {"n": holds, "s": senders, "r": receiver},
            )
            dba.execute(
                "UPDATE ledger.holds SET expires_at = now() - amount * interval '1 second'"
                " WHERE status = 'pending'"
            )
            dba.execute("SELECT pg_stat_statements_reset()")
            before = function_calls(app)
            assert app.execute("SELECT api.expire_holds()").fetchone() == (holds,)
            functions = called_between(before, function_calls(app))
            nested = dba.execute(
                "SELECT sum(calls) FROM pg_stat_statements WHERE NOT toplevel"
            ).fetchone()
            shapes.append((functions, nested))
    assert shapes[0] == shapes[1], shapes
    assert dict(shapes[1][0]) == {"api.expire_holds": 1, "ledger.authorize": 1}, shapes
    report = dba.execute("SELECT api.verify_projections()").fetchone()
    assert report is not None and report[0]["ok"] is True, report
