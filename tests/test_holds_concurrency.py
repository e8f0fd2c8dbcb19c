"""Holds under concurrency: many holds, transfers, batches and burns against one
wallet never reserve or spend more than it holds; a capture racing a void, or an expiry, settles
the hold once. verify_projections (which checks held against the pending holds) runs after each."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from test_concurrency import (
    BARRIER_TIMEOUT,
    Outcome,
    call,
    connect,
    make_users,
    run_parallel,
    verify_projections,
    wait_for_lock_wait,
)

from financeatp.maintenance import run_maintenance


def create_holds(
    dba: psycopg.Connection, senders: list[uuid.UUID], receiver: uuid.UUID, count: int
) -> None:
    """count holds of 1 ATP to receiver, from the senders in turn, in one statement."""
    dba.execute(
        "SELECT count(*) FROM generate_series(0, %(n)s - 1) n, LATERAL api.create_hold("
        " from_user_id => (%(s)s::uuid[])[n %% cardinality(%(s)s::uuid[]) + 1],"
        " to_user_id => %(r)s, amount => 1,"
        " request_user_id => (%(s)s::uuid[])[n %% cardinality(%(s)s::uuid[]) + 1]) h",
        {"n": count, "s": senders, "r": receiver},
    )


def held_and_balance(dba: psycopg.Connection, user: uuid.UUID) -> tuple[Decimal, Decimal]:
    row = dba.execute(
        """SELECT b.held, b.balance
             FROM ledger.balances b JOIN ledger.accounts a ON a.id = b.account_id
            WHERE a.user_id = %s AND a.account_type = 'user_wallet'""",
        [user],
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_holds_transfers_batches_and_burns_never_spend_reserved_money(
    database: str, dba: psycopg.Connection
) -> None:
    payer, *others = make_users(dba, 4, "spender")
    assert call(dba, "mint", to_user_id=payer, amount=Decimal(100)).ok
    clients = 16
    barrier = threading.Barrier(clients, timeout=BARRIER_TIMEOUT)

    def client(index: int) -> list[tuple[str, Decimal, Outcome]]:
        rng = random.Random(index)  # noqa: S311 (reproducible test data)
        done = []
        with connect(database) as conn:
            barrier.wait()
            for _ in range(15):
                amount = Decimal(rng.randint(1, 900)) / 100
                target = rng.choice(others)
                kind = rng.choice(["hold", "hold", "transfer", "batch", "burn"])
                if kind == "hold":
                    outcome = call(
                        conn,
                        "create_hold",
                        from_user_id=payer,
                        to_user_id=target,
                        amount=amount,
                        request_user_id=payer,
                    )
                elif kind == "transfer":
                    outcome = call(
                        conn,
                        "transfer",
                        from_user_id=payer,
                        to_user_id=target,
                        amount=amount,
                        request_user_id=payer,
                    )
                elif kind == "batch":  # two legs of half the amount each
                    half = str(amount / 2)
                    legs = [{"to_user_id": str(t), "amount": half} for t in (target, others[0])]
                    outcome = call(
                        conn,
                        "transfer_batch",
                        from_user_id=payer,
                        transfers=Jsonb(legs),
                        request_user_id=payer,
                    )
                else:
                    outcome = call(conn, "burn", from_user_id=payer, amount=amount)
                assert outcome.ok or outcome.error == "L4002", outcome
                done.append((kind, amount, outcome))
        return done

    results = [
        r for rs in run_parallel(*[lambda i=i: client(i) for i in range(clients)]) for r in rs
    ]
    spent = {
        kind: sum((a for k, a, o in results if k == kind and o.ok), Decimal(0))
        for kind in ("hold", "transfer", "batch", "burn")
    }
    assert any(not o.ok for _, _, o in results), "the wallet was never exhausted: test too weak"
    held, balance = held_and_balance(dba, payer)
    assert held == spent["hold"]
    assert balance == 100 - spent["transfer"] - spent["batch"] - spent["burn"]
    assert held <= balance  # available never below zero
    verify_projections(dba)


def race(database: str, *calls: tuple[str, dict[str, object]]) -> list[Outcome]:
    barrier = threading.Barrier(len(calls), timeout=BARRIER_TIMEOUT)

    def one(function: str, args: dict[str, object]) -> Outcome:
        with connect(database) as conn:
            barrier.wait()
            return call(conn, function, **args)

    return run_parallel(*[lambda f=f, a=a: one(f, a) for f, a in calls])


def test_capture_racing_void_settles_once(database: str, dba: psycopg.Connection) -> None:
    payer, payee = make_users(dba, 2, "racer")
    assert call(dba, "mint", to_user_id=payer, amount=Decimal(100)).ok
    for round_ in range(12):
        created = call(
            dba,
            "create_hold",
            from_user_id=payer,
            to_user_id=payee,
            amount=Decimal(5),
            request_user_id=payer,
        )
        assert created.ok, created
        hold_id = created.body["hold_id"]  # type: ignore[index]
        contenders = [
            ("capture_hold", {"hold_id": hold_id, "amount": Decimal(3), "request_user_id": payee}),
            ("void_hold", {"hold_id": hold_id, "request_user_id": payer}),
        ]
        if round_ % 2:
            contenders.reverse()
        outcomes = race(database, *contenders)
        assert sorted(o.error or "ok" for o in outcomes) == ["L4095", "ok"], outcomes
        status = dba.execute("SELECT status FROM ledger.holds WHERE id = %s", [hold_id]).fetchone()
        assert status in (("captured",), ("voided",))
        events = dba.execute(
            "SELECT count(*) FROM ledger.events"
            " WHERE aggregate_type = 'hold' AND aggregate_id = %s",
            [hold_id],
        ).fetchone()
        assert events == (2,)
    captured = dba.execute("SELECT count(*) FROM ledger.holds WHERE status = 'captured'").fetchone()
    assert captured is not None
    held, balance = held_and_balance(dba, payer)
    assert (held, balance) == (0, 100 - 3 * captured[0])
    verify_projections(dba)


def test_capture_racing_expiry_settles_once(database: str, dba: psycopg.Connection) -> None:
    payer, payee = make_users(dba, 2, "expiry")
    assert call(dba, "mint", to_user_id=payer, amount=Decimal(100)).ok
    holds = []
    for _ in range(20):
        created = call(
            dba,
            "create_hold",
            from_user_id=payer,
            to_user_id=payee,
            amount=Decimal(2),
            request_user_id=payer,
        )
        assert created.ok, created
        holds.append(created.body["hold_id"])  # type: ignore[index]
    # The clock, driven: every hold expires at one moment just ahead, then captures and the
    # maintenance job start together around it.
    dba.execute(
        "UPDATE ledger.holds SET expires_at = clock_timestamp() + interval '300 milliseconds'"
    )
    time.sleep(0.25)
    stop = time.monotonic() + 1.0

    def expirer() -> int:
        expired = 0
        with connect(database) as conn:
            while time.monotonic() < stop:
                row = conn.execute("SELECT api.expire_holds()").fetchone()
                assert row is not None
                expired += row[0]
        return expired

    def capturer(hold_id: str) -> Outcome:
        with connect(database) as conn:
            return call(conn, "capture_hold", hold_id=hold_id, request_user_id=payee)

    results = run_parallel(expirer, expirer, *[lambda h=h: capturer(h) for h in holds])
    expired, captures = results[0] + results[1], results[2:]
    for outcome in captures:
        assert outcome.ok or outcome.error == "L4095", outcome
    won = sum(1 for o in captures if o.ok)
    assert won + expired == len(holds), (won, expired)
    rows = dba.execute(
        """SELECT h.status, count(e.*) FROM ledger.holds h
             JOIN ledger.events e ON e.aggregate_type = 'hold' AND e.aggregate_id = h.id
            GROUP BY h.id, h.status"""
    ).fetchall()
    assert sorted(status for status, _ in rows) == sorted(
        ["captured"] * won + ["expired"] * expired
    )
    assert all(count == 2 for _, count in rows)
    held, balance = held_and_balance(dba, payer)
    assert (held, balance) == (0, 100 - 2 * won)
    verify_projections(dba)


def test_expiry_locks_wallets_in_the_order_transfers_do(
    database: str, dba: psycopg.Connection
) -> None:
    """Two holds expiring in the order opposite to their senders' wallets' ids, and a transfer
    between the two senders that holds the lower wallet when the job starts: taken hold by
    hold, the job locked the higher wallet, waited for the lower, and the transfer's second
    lock closed the cycle (a deadlock: the transfer's client got 503). In account-id order, as
    every movement locks, the job waits for the transfer and then expires both holds."""
    first, second = make_users(dba, 2, "expiry_order", mint=Decimal(10))
    wallet = {
        user: dba.execute(
            "SELECT id FROM ledger.accounts WHERE user_id = %s AND account_type = 'user_wallet'",
            [user],
        ).fetchone()[0]  # type: ignore[index]
        for user in (first, second)
    }
    low, high = sorted((first, second), key=lambda user: wallet[user])
    for sender, expired_ago in ((high, "2 seconds"), (low, "1 second")):
        created = call(
            dba, "create_hold", from_user_id=sender, to_user_id=low if sender == high else high,
            amount=Decimal(1), request_user_id=sender,
        )  # fmt: skip
        assert created.ok, created
        dba.execute(
            "UPDATE ledger.holds SET expires_at = now() - %s::interval WHERE id = %s",
            [expired_ago, created.body["hold_id"]],  # type: ignore[index]
        )
    lock = "SELECT 1 FROM ledger.balances WHERE account_id = %s FOR UPDATE"
    with connect(database, autocommit=False) as moving, connect(database) as expiring:
        moving.execute(lock, [wallet[low]])  # a transfer from low to high, between its locks
        with ThreadPoolExecutor(max_workers=1) as pool:
            job = pool.submit(lambda: expiring.execute("SELECT api.expire_holds()").fetchone())
            assert wait_for_lock_wait(dba, expiring.info.backend_pid), "the job never waited"
            moving.execute(lock, [wallet[high]])
            moving.commit()
            assert job.result(timeout=30) == (2,)
    assert dba.execute("SELECT count(*) FROM ledger.holds WHERE status = 'expired'"
                       " AND from_user_id IN (%s, %s)", [low, high]).fetchone() == (2,)  # fmt: skip
    verify_projections(dba)


def test_a_capture_judges_expiry_by_the_clock(database: str, dba: psycopg.Connection) -> None:
    """A capture in a transaction older than the hold's expiry (a psql session left open, or a
    call that waited for locks) used now(), the transaction's start, and settled the hold after
    its expires_at."""
    payer, payee = make_users(dba, 2, "late", mint=Decimal(10))
    with connect(database, autocommit=False) as late:
        late.execute("SELECT 1")  # the transaction, and its now(), start here
        created = call(
            late, "create_hold", from_user_id=payer, to_user_id=payee, amount=Decimal(1),
            expires_in_seconds=1, request_user_id=payer,
        )  # fmt: skip
        assert created.ok, created
        time.sleep(1.2)
        for function, user in (("capture_hold", payee), ("void_hold", payer)):
            late.execute("SAVEPOINT attempt")
            settled = call(late, function, hold_id=created.body["hold_id"], request_user_id=user)  # type: ignore[index]
            assert settled.error == "L4095", (function, settled)
            late.execute("ROLLBACK TO SAVEPOINT attempt")
        late.rollback()


def wallets_in_lock_order(dba: psycopg.Connection, count: int, prefix: str) -> list[uuid.UUID]:
    """Users whose wallets lock_pair locks in this order (by account id)."""
    users = make_users(dba, count, prefix)
    return sorted(
        users,
        key=lambda user: dba.execute(
            "SELECT id FROM ledger.accounts WHERE user_id = %s AND account_type = 'user_wallet'",
            [user],
        ).fetchone()[0],  # type: ignore[index]
    )


def settle_after_waiting(
    database: str, dba: psycopg.Connection, function: str, delete_payee: bool
) -> Outcome:
    """A settlement that passes the expiry check, then waits for the sender's wallet (held by a
    transfer) until the hold has expired; meanwhile, if asked, the receiver, whom an expired hold
    no longer keeps, is deleted. The settlement's outcome once the transfer commits."""
    payer, payee = wallets_in_lock_order(dba, 2, f"waited_{function}")
    assert call(dba, "mint", to_user_id=payer, amount=Decimal(10)).ok
    created = call(
        dba, "create_hold", from_user_id=payer, to_user_id=payee, amount=Decimal(1),
        request_user_id=payer,
    )  # fmt: skip
    assert created.ok, created
    hold_id = created.body["hold_id"]  # type: ignore[index]
    dba.execute(
        "UPDATE ledger.holds SET expires_at = clock_timestamp() + interval '2 seconds'"
        " WHERE id = %s",
        [hold_id],
    )
    user = payee if function == "capture_hold" else payer
    lock = """SELECT 1 FROM ledger.balances b JOIN ledger.accounts a ON a.id = b.account_id
               WHERE a.user_id = %s AND a.account_type = 'user_wallet' FOR UPDATE OF b"""
    with connect(database, autocommit=False) as moving, connect(database) as settling:
        moving.execute(lock, [payer])
        with ThreadPoolExecutor(max_workers=1) as pool:
            settled = pool.submit(call, settling, function, hold_id=hold_id, request_user_id=user)
            assert wait_for_lock_wait(dba, settling.info.backend_pid), "it never waited"
            expired = dba.execute(
                "SELECT expires_at - clock_timestamp() FROM ledger.holds WHERE id = %s", [hold_id]
            ).fetchone()[0]  # type: ignore[index]
            time.sleep(max(0.0, expired.total_seconds()) + 0.05)
            if delete_payee:
                assert call(dba, "delete_user", user_id=payee).ok
            moving.commit()
            outcome = settled.result(timeout=30)
    status = dba.execute("SELECT status FROM ledger.holds WHERE id = %s", [hold_id]).fetchone()
    assert status == ("pending",), status  # for expire_holds to release
    verify_projections(dba)
    return outcome


@pytest.mark.parametrize("function", ["capture_hold", "void_hold"])
def test_a_settlement_that_waited_past_expiry_is_refused(
    database: str, dba: psycopg.Connection, function: str
) -> None:
    """The expiry was judged before the wallets' locks, and a capture or void that waited for
    them settled the hold after its expires_at."""
    outcome = settle_after_waiting(database, dba, function, delete_payee=False)
    assert outcome.error == "L4095" and "expired" in outcome.message, outcome


def test_a_capture_whose_receiver_was_deleted_meanwhile_is_refused(
    database: str, dba: psycopg.Connection
) -> None:
    """An expired hold no longer keeps its receiver: deleted while the capture waited for the
    sender's wallet, the receiver's wallet was missing from the locked pair and the capture
    failed on it (an internal error, 500 over HTTP)."""
    outcome = settle_after_waiting(database, dba, "capture_hold", delete_payee=True)
    assert outcome.error == "L4095" and "expired" in outcome.message, outcome


def test_the_scheduler_releases_a_backlog_of_holds_a_batch_per_transaction(dba, app_url):
    """Every sender's wallet of a batch of expired holds stays locked until the batch commits
    (6,216 holds, released one by one as they were then, held every writer for 1.4 s on a large
    store). api.run_maintenance() releases at most 1,000 per call and says when more are
    waiting; the scheduler then runs it again at once, in a new transaction: a backlog of 2,001
    goes in three, well within one interval."""
    users = make_users(dba, 21, "hold_backlog", mint=Decimal(1000))
    senders, receiver = users[:20], users[20]
    create_holds(dba, senders, receiver, 2001)
    dba.execute(
        "UPDATE ledger.holds SET expires_at = now() - interval '1 second' WHERE to_user_id = %s",
        (receiver,),
    )
    pending = "SELECT count(*) FROM ledger.holds WHERE to_user_id = %s AND status = 'pending'"

    async def drain() -> None:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            app_url, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False
        )
        await pool.open(wait=True)
        task = asyncio.create_task(run_maintenance(pool, interval=3600, first_delay=0))
        try:
            deadline = time.monotonic() + 60
            while dba.execute(pending, (receiver,)).fetchone() != (0,):
                assert time.monotonic() < deadline, "the backlog waited for the next interval"
                await asyncio.sleep(0.1)
        finally:
            task.cancel()
            await pool.close()

    asyncio.run(drain())
    batches = dba.execute(
        "SELECT count(*) FROM ledger.events e JOIN ledger.holds h ON h.id = e.aggregate_id"
        " WHERE e.event_type = 'HoldExpired' AND h.to_user_id = %s GROUP BY e.tx_id ORDER BY 1",
        (receiver,),
    ).fetchall()
    assert batches == [(1,), (1000,), (1000,)], batches
    verify_projections(dba)


def test_maintenance_says_more_when_it_skipped_a_locked_hold_and_others_wait(database, dba):
    """1,001 expired holds, and a capture holding the lock of the first of them: the run releases
    the other 999 of its batch of 1,000 and must say that more wait (it said so only for a full
    batch, which left the 1,001st for the next interval); the next run, the lock gone, releases
    the last two and ends the round."""
    users = make_users(dba, 11, "hold_more", mint=Decimal(1000))
    senders, receiver = users[:10], users[10]
    create_holds(dba, senders, receiver, 1001)
    dba.execute(
        "UPDATE ledger.holds h SET expires_at = now() - interval '1 hour' + o.n * interval '1 ms'"
        " FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM ledger.holds"
        " WHERE to_user_id = %s) o WHERE h.id = o.id",
        (receiver,),
    )
    first = dba.execute(
        "SELECT id FROM ledger.holds WHERE to_user_id = %s ORDER BY expires_at LIMIT 1", (receiver,)
    ).fetchone()
    with connect(database, autocommit=False) as settling:
        settling.execute("SELECT FROM ledger.holds WHERE id = %s FOR UPDATE", first)
        run = dba.execute("SELECT api.run_maintenance()").fetchone()[0]  # type: ignore[index]
        assert (run["holds_expired"], run["more"]) == (999, True), run
    again = dba.execute("SELECT api.run_maintenance()").fetchone()[0]  # type: ignore[index]
    assert (again["holds_expired"], again["more"]) == (2, False), again
    verify_projections(dba)
