"""Concurrency: many real connections at once against one ledger database.

Concurrent requests never deadlock into an error for the client and never lose an update; one
execution per (API key, idempotency key). Every test runs
threads with one psycopg connection each and checks the books afterwards from the database itself.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

# A client that waits this long is stuck: the statement fails (57014) instead of hanging the suite.
STATEMENT_TIMEOUT = "-c statement_timeout=30s"
BARRIER_TIMEOUT = 60


@dataclass
class Outcome:
    """What one client got back: a row (status, body, replayed) or an error's SQLSTATE."""

    status: int | None = None
    body: dict[str, Any] | None = None
    replayed: bool | None = None
    error: str | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Attempt:
    """One transfer a client asked for, and what it got."""

    source: uuid.UUID
    target: uuid.UUID
    amount: Decimal
    outcome: Outcome
    after_freeze: bool = False


def connect(url: str, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=autocommit, options=STATEMENT_TIMEOUT)


def call(conn: psycopg.Connection, function: str, **args: Any) -> Outcome:
    """SELECT * FROM api.<function>(name => value, ...): (status, body, replayed) or the error."""
    query = sql.SQL("SELECT * FROM api.{}({})").format(
        sql.Identifier(function),
        sql.SQL(", ").join(
            sql.SQL("{} => {}").format(sql.Identifier(name), sql.Placeholder(name)) for name in args
        ),
    )
    try:
        row = conn.execute(query, args).fetchone()
    except psycopg.Error as error:
        return Outcome(error=error.sqlstate or type(error).__name__, message=str(error))
    assert row is not None
    return Outcome(status=row[0], body=row[1], replayed=row[2])


def run_parallel(*targets: Callable[[], Any]) -> list[Any]:
    """Runs each target in its own thread; returns their results, re-raising any exception."""
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        futures = [pool.submit(target) for target in targets]
        return [future.result() for future in futures]


def make_users(
    dba: psycopg.Connection, count: int, prefix: str, mint: Decimal | None = None
) -> list[uuid.UUID]:
    """Creates users as a DBA (no API key), and mints each of them `mint` ATP."""
    users = []
    for i in range(count):
        user_id = uuid.uuid4()
        name = f"{prefix}_{i}_{user_id.hex[:8]}"
        created = call(
            dba, "create_user", user_id=user_id, username=name, email=f"{name}@example.com"
        )
        assert created.ok and created.status == 201, created
        if mint is not None:
            minted = call(dba, "mint", to_user_id=user_id, amount=mint, reason="setup")
            assert minted.ok and minted.status == 201, minted
        users.append(user_id)
    return users


def wallets(dba: psycopg.Connection, users: list[uuid.UUID]) -> dict[uuid.UUID, Decimal]:
    rows = dba.execute(
        """SELECT a.user_id, b.balance
             FROM ledger.accounts a JOIN ledger.balances b ON b.account_id = a.id
            WHERE a.account_type = 'user_wallet' AND a.user_id = ANY(%s)""",
        (users,),
    ).fetchall()
    return dict(rows)


def all_wallets_total(dba: psycopg.Connection) -> Decimal:
    row = dba.execute(
        """SELECT COALESCE(sum(b.balance), 0)
             FROM ledger.balances b JOIN ledger.accounts a ON a.id = b.account_id
            WHERE a.account_type = 'user_wallet'"""
    ).fetchone()
    assert row is not None
    return row[0]


def verify_projections(dba: psycopg.Connection) -> None:
    row = dba.execute("SELECT api.verify_projections()").fetchone()
    assert row is not None
    assert row[0]["ok"] is True, row[0]


def random_amount(rng: random.Random, supply: Decimal) -> Decimal:
    """Mostly small amounts with up to 8 decimals; some larger than a typical balance; a few
    larger than all the money there is (those can only fail)."""
    draw = rng.random()
    if draw < 0.05:
        return supply + 1
    if draw < 0.2:
        return Decimal(rng.randint(500, 3000))
    return Decimal(rng.randint(1, 10**10)).scaleb(-8)


def random_transfers(
    url: str,
    users: list[uuid.UUID],
    threads: int,
    iterations: int,
    supply: Decimal,
    key_hash: str | None,
    seed: int,
) -> list[Attempt]:
    """`threads` clients released together, each making `iterations` transfers. Threads 2k and
    2k+1 share a pair of users in opposite directions (A->B against B->A) half of the time."""
    barrier = threading.Barrier(threads, timeout=BARRIER_TIMEOUT)

    def client(index: int) -> list[Attempt]:
        rng = random.Random(seed * 1000 + index)  # noqa: S311 (reproducible, not secret)
        first = users[(index // 2) % len(users)]
        second = users[(index // 2 + 1) % len(users)]
        pair = (first, second) if index % 2 == 0 else (second, first)
        attempts = []
        with connect(url) as conn:
            barrier.wait()
            for i in range(iterations):
                source, target = pair if rng.random() < 0.5 else rng.sample(users, 2)
                amount = random_amount(rng, supply)
                args: dict[str, Any] = {
                    "from_user_id": source,
                    "to_user_id": target,
                    "amount": amount,
                    "memo": f"client {index} #{i}",
                    "request_user_id": source,
                }
                if key_hash is not None:
                    args |= {"idempotency_key": uuid.uuid4(), "api_key_hash": key_hash}
                elif i % 2 == 0:
                    # psql-style callers may pass an idempotency key too (scoped to their role).
                    args["idempotency_key"] = uuid.uuid4()
                attempts.append(Attempt(source, target, amount, call(conn, "transfer", **args)))
        return attempts

    results = run_parallel(*(lambda index=index: client(index) for index in range(threads)))
    return [attempt for attempts in results for attempt in attempts]


def check_books(
    dba: psycopg.Connection,
    users: list[uuid.UUID],
    minted: Decimal,
    attempts: list[Attempt],
    allowed_errors: set[str],
) -> list[Attempt]:
    """The invariants after a concurrent run: only the allowed business errors, every success a
    fresh 201 describing what was asked, balances equal minted + received - sent from the bodies
    the clients got, no money created or lost, one transfer journal per 201, projections verify.
    Returns the successful attempts."""
    errors = Counter(attempt.outcome.error for attempt in attempts if not attempt.outcome.ok)
    unexpected = {
        attempt.outcome.error: attempt.outcome.message
        for attempt in attempts
        if not attempt.outcome.ok and attempt.outcome.error not in allowed_errors
    }
    assert not unexpected, f"clients saw errors other than {allowed_errors}: {errors} {unexpected}"

    succeeded = [attempt for attempt in attempts if attempt.outcome.ok]
    expected = dict.fromkeys(users, minted)
    for attempt in succeeded:
        outcome = attempt.outcome
        assert outcome.status == 201 and outcome.replayed is False, outcome
        assert outcome.body is not None
        body = outcome.body
        assert uuid.UUID(body["from_user_id"]) == attempt.source, body
        assert uuid.UUID(body["to_user_id"]) == attempt.target, body
        assert Decimal(body["amount"]) == attempt.amount, body
        expected[uuid.UUID(body["from_user_id"])] -= Decimal(body["amount"])
        expected[uuid.UUID(body["to_user_id"])] += Decimal(body["amount"])

    assert wallets(dba, users) == expected
    assert all_wallets_total(dba) == minted * len(users)

    journals = dba.execute(
        """SELECT journal_id, count(*) FILTER (WHERE kind = 'transfer_out'),
                  count(*) FILTER (WHERE kind = 'transfer_in')
             FROM ledger.ledger_entries WHERE kind IN ('transfer_out', 'transfer_in')
            GROUP BY journal_id"""
    ).fetchall()
    assert all(outs == 1 and ins == 1 for _, outs, ins in journals), journals
    responded = [uuid.UUID(attempt.outcome.body["transfer_id"]) for attempt in succeeded]  # type: ignore[index]
    assert len(journals) == len(succeeded)
    assert {journal for journal, _, _ in journals} == set(responded)
    verify_projections(dba)
    return succeeded


# --- 1 and 2: random transfers -------------------------------------------------------------


def test_random_transfers_as_app_never_deadlock_or_lose_money(dba, app_url, make_key):
    """10 HTTP-layer clients (atp_app with a write key), 40 random transfers each, many in
    opposite directions at the same moment, some for more than the sender holds."""
    _, write_hash, _ = make_key(["write"])
    minted = Decimal("1000")
    users = make_users(dba, 6, "rnd", minted)
    attempts = random_transfers(
        app_url, users, threads=10, iterations=40, supply=minted * 6, key_hash=write_hash, seed=1
    )
    assert len(attempts) == 400
    succeeded = check_books(dba, users, minted, attempts, allowed_errors={"L4002"})
    # The run exercised both paths.
    assert succeeded
    assert any(attempt.outcome.error == "L4002" for attempt in attempts)


def test_random_transfers_as_dba_without_keys(dba, database):
    """The same for psql-style callers: the superuser, no API key, some with idempotency keys."""
    minted = Decimal("500")
    users = make_users(dba, 6, "dba", minted)
    attempts = random_transfers(
        database, users, threads=8, iterations=20, supply=minted * 6, key_hash=None, seed=2
    )
    assert len(attempts) == 160
    succeeded = check_books(dba, users, minted, attempts, allowed_errors={"L4002"})
    assert succeeded
    assert any(attempt.outcome.error == "L4002" for attempt in attempts)


# --- 3: one idempotency key, twenty concurrent requests -------------------------------------


def same_key_from_many(url: str, count: int, function: str, args: dict[str, Any]) -> list[Outcome]:
    """`count` clients send the same request with the same idempotency key at the same moment."""
    barrier = threading.Barrier(count, timeout=BARRIER_TIMEOUT)

    def client() -> Outcome:
        with connect(url) as conn:
            barrier.wait()
            return call(conn, function, **args)

    return run_parallel(*([client] * count))


def assert_one_execution(outcomes: list[Outcome]) -> dict[str, Any]:
    failed = [outcome for outcome in outcomes if not outcome.ok]
    assert not failed, failed
    assert [outcome.status for outcome in outcomes] == [201] * len(outcomes)
    assert sum(outcome.replayed is False for outcome in outcomes) == 1, outcomes
    first = outcomes[0].body
    assert first is not None
    assert all(outcome.body == first for outcome in outcomes), outcomes
    return first


def count(dba: psycopg.Connection, query: str, *params: Any) -> int:
    row = dba.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def test_twenty_concurrent_transfers_with_one_key_execute_once(dba, app_url, make_key):
    _, write_hash, key_id = make_key(["write"])
    alice, bob = make_users(dba, 2, "idem", Decimal("100"))
    key = uuid.uuid4()
    outcomes = same_key_from_many(
        app_url,
        20,
        "transfer",
        {
            "from_user_id": alice,
            "to_user_id": bob,
            "amount": Decimal("7.25"),
            "memo": "once",
            "idempotency_key": key,
            "api_key_hash": write_hash,
            "request_user_id": alice,
        },
    )
    body = assert_one_execution(outcomes)
    transfer_id = uuid.UUID(body["transfer_id"])

    assert wallets(dba, [alice, bob]) == {alice: Decimal("92.75"), bob: Decimal("107.25")}
    assert (
        count(
            dba,
            """SELECT count(*) FROM ledger.ledger_entries
                WHERE journal_id = %s AND kind = 'transfer_out'""",
            transfer_id,
        )
        == 1
    )
    assert count(dba, "SELECT count(*) FROM ledger.ledger_entries WHERE kind = 'transfer_out'") == 1
    assert count(dba, "SELECT count(*) FROM ledger.audit_log WHERE action = 'transfer'") == 1
    assert (
        count(
            dba,
            """SELECT count(*) FROM ledger.audit_log
                WHERE resource_type = 'transfer' AND resource_id = %s""",
            str(transfer_id),
        )
        == 1
    )
    assert (
        count(
            dba,
            "SELECT count(*) FROM ledger.idempotency_keys WHERE scope = %s AND key = %s",
            str(key_id),
            key,
        )
        == 1
    )
    verify_projections(dba)


def test_twenty_concurrent_mints_with_one_key_execute_once(dba, app_url, make_key):
    _, admin_hash, _ = make_key(["admin"])
    (carol,) = make_users(dba, 1, "idem")
    outcomes = same_key_from_many(
        app_url,
        20,
        "mint",
        {
            "to_user_id": carol,
            "amount": Decimal("250.12345678"),
            "reason": "grant",
            "idempotency_key": uuid.uuid4(),
            "api_key_hash": admin_hash,
        },
    )
    body = assert_one_execution(outcomes)
    mint_id = uuid.UUID(body["mint_id"])

    assert wallets(dba, [carol]) == {carol: Decimal("250.12345678")}
    assert (
        count(
            dba,
            "SELECT count(*) FROM ledger.ledger_entries WHERE journal_id = %s AND side = 'credit'",
            mint_id,
        )
        == 1
    )
    assert count(dba, "SELECT count(*) FROM ledger.ledger_entries WHERE kind = 'mint'") == 2
    assert count(dba, "SELECT count(*) FROM ledger.audit_log WHERE action = 'mint'") == 1
    assert (
        count(dba, "SELECT count(*) FROM ledger.audit_log WHERE resource_id = %s", str(mint_id))
        == 1
    )
    verify_projections(dba)


def test_twenty_concurrent_create_users_with_one_key_execute_once(dba, app_url, make_key):
    _, write_hash, _ = make_key(["write"])
    user_id = uuid.uuid4()
    outcomes = same_key_from_many(
        app_url,
        20,
        "create_user",
        {
            "user_id": user_id,
            "username": "dora_once",
            "email": "dora@example.com",
            "display_name": "Dora",
            "idempotency_key": uuid.uuid4(),
            "api_key_hash": write_hash,
        },
    )
    body = assert_one_execution(outcomes)
    assert uuid.UUID(body["user_id"]) == user_id
    assert body["balance"] == "0.00000000"

    assert count(dba, "SELECT count(*) FROM ledger.users WHERE id = %s", user_id) == 1
    assert count(dba, "SELECT count(*) FROM ledger.accounts WHERE user_id = %s", user_id) == 1
    assert (
        count(
            dba,
            """SELECT count(*) FROM ledger.events
                WHERE aggregate_id = %s AND event_type = 'UserCreated'""",
            user_id,
        )
        == 1
    )
    assert (
        count(
            dba,
            """SELECT count(*) FROM ledger.audit_log
                WHERE action = 'user.create' AND resource_id = %s""",
            str(user_id),
        )
        == 1
    )
    verify_projections(dba)


# --- 4: same key, second request while the first is in flight -------------------------------


def wait_for_advisory_wait(dba: psycopg.Connection, pid: int) -> bool:
    """True once backend `pid` waits for an advisory lock (the idempotency key's)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if count(
            dba,
            """SELECT count(*) FROM pg_locks
                WHERE pid = %s AND locktype = 'advisory' AND NOT granted""",
            pid,
        ):
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize(
    ("second_amount", "first_ends", "expected"),
    [
        ("2", "commit", "conflict"),
        ("1", "commit", "replay"),
        ("2", "rollback", "executes"),
    ],
    ids=["different-request-conflicts", "same-request-replays", "first-rolled-back"],
)
def test_same_key_while_first_in_flight(
    dba, app_url, make_key, second_amount, first_ends, expected
):
    _, write_hash, _ = make_key(["write"])
    alice, bob = make_users(dba, 2, "flight", Decimal("100"))
    key = uuid.uuid4()

    def transfer(conn: psycopg.Connection, amount: str) -> Outcome:
        return call(
            conn,
            "transfer",
            from_user_id=alice,
            to_user_id=bob,
            amount=Decimal(amount),
            memo="flight",
            idempotency_key=key,
            api_key_hash=write_hash,
            request_user_id=alice,
        )

    with connect(app_url, autocommit=False) as first, connect(app_url) as second:
        started = transfer(first, "1")  # the transaction stays open
        assert started.ok and started.status == 201 and started.replayed is False, started
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(transfer, second, second_amount)
            assert wait_for_advisory_wait(dba, second.info.backend_pid), "second never waited"
            assert not pending.done()
            if first_ends == "commit":
                first.commit()
            else:
                first.rollback()
            outcome = pending.result(timeout=30)

    if expected == "conflict":
        assert outcome.error == "L4091", outcome
        assert wallets(dba, [alice, bob]) == {alice: Decimal("99"), bob: Decimal("101")}
    elif expected == "replay":
        assert outcome.ok and outcome.status == 201 and outcome.replayed is True, outcome
        assert outcome.body == started.body
        assert wallets(dba, [alice, bob]) == {alice: Decimal("99"), bob: Decimal("101")}
    else:
        assert outcome.ok and outcome.status == 201 and outcome.replayed is False, outcome
        assert outcome.body is not None and started.body is not None
        assert outcome.body["transfer_id"] != started.body["transfer_id"]
        assert wallets(dba, [alice, bob]) == {alice: Decimal("98"), bob: Decimal("102")}
    assert count(dba, "SELECT count(*) FROM ledger.audit_log WHERE action = 'transfer'") == 1
    verify_projections(dba)


# --- 5: the event feed under out-of-order commits -------------------------------------------


def test_event_feed_sees_every_committed_event_exactly_once(dba, database, app_url, make_key):
    _, write_hash, _ = make_key(["write"])
    _, admin_hash, _ = make_key(["admin"])
    normal = make_users(dba, 4, "feed", Decimal("1000"))
    slow_from, slow_to = make_users(dba, 2, "slow", Decimal("1000"))
    undone_from, undone_to = make_users(dba, 2, "undo", Decimal("1000"))

    writers_done = threading.Event()
    stop_normal = threading.Event()
    expected_total: list[int] = []
    rolled_back: list[str] = []
    overtaken: list[bool] = []

    def normal_writer(seed: int) -> int:
        rng = random.Random(seed)  # noqa: S311
        done = 0
        with connect(app_url) as conn:
            while done < 2000 and (done < 20 or not stop_normal.is_set()):
                source, target = rng.sample(normal, 2)
                outcome = call(
                    conn,
                    "transfer",
                    from_user_id=source,
                    to_user_id=target,
                    amount=Decimal(rng.randint(1, 300)).scaleb(-2),
                    idempotency_key=uuid.uuid4(),
                    api_key_hash=write_hash,
                    request_user_id=source,
                )
                assert outcome.ok, outcome
                done += 1
        return done

    def slow_writer() -> None:
        # A DBA at psql: BEGIN; SELECT api.transfer(...); ...; COMMIT. While the transaction is
        # open, other writers commit events with higher ids.
        with connect(database, autocommit=False) as conn:
            for _ in range(4):
                outcome = call(
                    conn,
                    "transfer",
                    from_user_id=slow_from,
                    to_user_id=slow_to,
                    amount=Decimal("1"),
                    request_user_id=slow_from,
                )
                assert outcome.ok, outcome
                mine = conn.execute(
                    "SELECT max(id) FROM ledger.events WHERE tx_id = pg_current_xact_id()"
                ).fetchone()
                assert mine is not None and mine[0] is not None
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    later = conn.execute(
                        """SELECT EXISTS (SELECT FROM ledger.events
                                           WHERE id > %s AND tx_id <> pg_current_xact_id())""",
                        (mine[0],),
                    ).fetchone()
                    if later is not None and later[0]:
                        overtaken.append(True)
                        break
                    time.sleep(0.01)
                time.sleep(0.1)
                conn.commit()

    def undone_writer() -> None:
        with connect(app_url, autocommit=False) as conn:
            for _ in range(5):
                outcome = call(
                    conn,
                    "transfer",
                    from_user_id=undone_from,
                    to_user_id=undone_to,
                    amount=Decimal("3"),
                    idempotency_key=uuid.uuid4(),
                    api_key_hash=write_hash,
                    request_user_id=undone_from,
                )
                assert outcome.ok and outcome.body is not None, outcome
                rolled_back.append(outcome.body["transfer_id"])
                time.sleep(0.05)
                conn.rollback()

    def reader() -> tuple[list[dict[str, Any]], int]:
        seen: list[dict[str, Any]] = []
        seen_while_writing = 0
        cursor = None
        deadline = None
        give_up = time.monotonic() + 120
        with connect(app_url) as conn:
            while time.monotonic() < give_up:
                done = writers_done.is_set()
                row = conn.execute(
                    'SELECT api.list_events(after => %s, "limit" => 25, api_key_hash => %s)',
                    (cursor, admin_hash),
                ).fetchone()
                assert row is not None
                page = row[0]
                seen.extend(page["events"])
                if not done:
                    seen_while_writing += len(page["events"])
                assert page["next_cursor"], page
                cursor = page["next_cursor"]
                if page["events"]:
                    continue
                if done:
                    # Caught up when a page is empty after every writer finished. (A short-lived
                    # transaction elsewhere may hold the horizon back for a moment: keep asking.)
                    deadline = deadline or time.monotonic() + 15
                    if len(seen) >= expected_total[0] or time.monotonic() > deadline:
                        return seen, seen_while_writing
                time.sleep(0.005)
        raise AssertionError("the writers never finished")

    def writers() -> None:
        try:
            with ThreadPoolExecutor(max_workers=4) as pool:
                normals = [pool.submit(normal_writer, seed) for seed in (51, 52)]
                special = [pool.submit(slow_writer), pool.submit(undone_writer)]
                try:
                    for future in special:
                        future.result()
                finally:
                    stop_normal.set()
                for future in normals:
                    assert future.result() >= 20
        finally:
            # Even when a writer failed, the reader catches up and stops.
            expected_total.append(count(dba, "SELECT count(*) FROM ledger.events"))
            writers_done.set()

    (seen, seen_while_writing), _ = run_parallel(reader, writers)

    ids = [event["id"] for event in seen]
    duplicates = sorted(event_id for event_id, n in Counter(ids).items() if n > 1)
    assert not duplicates, f"the feed repeated events {duplicates}"
    in_database = {row[0] for row in dba.execute("SELECT id FROM ledger.events").fetchall()}
    assert len(in_database) == expected_total[0]
    missing = sorted(in_database - set(ids))
    extra = sorted(set(ids) - in_database)
    assert not missing, f"the feed skipped committed events {missing}"
    assert not extra, f"the feed showed events that do not exist (rolled back?) {extra}"

    assert len(rolled_back) == 5
    journals_seen = {event["data"].get("journal_id") for event in seen}
    assert not journals_seen & set(rolled_back)
    assert not count(
        dba,
        "SELECT count(*) FROM ledger.events WHERE data ->> 'journal_id' = ANY(%s)",
        rolled_back,
    )
    # The scenario really happened: a transaction committed after events with higher ids, and
    # the reader was reading while it did.
    assert overtaken, "no other writer committed while the slow transaction was open"
    assert seen_while_writing > 0
    verify_projections(dba)


# --- 6: users created and deleted concurrently ----------------------------------------------


@pytest.mark.parametrize("shared", ["username", "email"])
def test_concurrent_create_user_with_one_username_or_email(dba, app_url, make_key, shared):
    _, write_hash, _ = make_key(["write"])
    clients = 8
    barrier = threading.Barrier(clients, timeout=BARRIER_TIMEOUT)
    user_ids = [uuid.uuid4() for _ in range(clients)]

    def client(i: int) -> Outcome:
        # Different ids, different idempotency keys; the shared field differs only in case.
        username = ("Erin_Same" if i % 2 else "erin_same") if shared == "username" else f"erin_{i}"
        email = (
            ("Erin@Example.com" if i % 2 else "erin@example.com")
            if shared == "email"
            else (f"erin{i}@example.com")
        )
        with connect(app_url) as conn:
            barrier.wait()
            return call(
                conn,
                "create_user",
                user_id=user_ids[i],
                username=username,
                email=email,
                idempotency_key=uuid.uuid4(),
                api_key_hash=write_hash,
            )

    outcomes = run_parallel(*(lambda i=i: client(i) for i in range(clients)))
    created = [outcome for outcome in outcomes if outcome.ok]
    assert len(created) == 1, outcomes
    assert created[0].status == 201
    assert Counter(outcome.error for outcome in outcomes if not outcome.ok) == {
        "L4093": clients - 1
    }, outcomes
    assert (
        count(
            dba,
            """SELECT count(*) FROM ledger.users
                WHERE deleted_at IS NULL
                  AND (lower(username) = 'erin_same' OR lower(email) = 'erin@example.com')""",
        )
        == 1
    )
    assert count(dba, "SELECT count(*) FROM ledger.users WHERE id = ANY(%s)", user_ids) == 1
    verify_projections(dba)


def test_concurrent_delete_and_mint_never_leave_money_in_a_deleted_wallet(dba, app_url, make_key):
    """Per victim, three clients at once: delete the user, mint to them, transfer to them."""
    _, write_hash, _ = make_key(["write"])
    _, admin_hash, _ = make_key(["admin"])
    rounds = 15
    victims = make_users(dba, rounds, "victim")
    (payer,) = make_users(dba, 1, "payer", Decimal("1000"))
    barrier = threading.Barrier(3, timeout=BARRIER_TIMEOUT)

    def client(function: str, **arguments: Any) -> Callable[[], list[Outcome]]:
        """One connection calling `function` once per victim, in step with the other clients."""

        def run() -> list[Outcome]:
            with connect(app_url) as conn:
                outcomes = []
                for victim in victims:
                    barrier.wait()
                    target = "to_user_id" if function != "delete_user" else "user_id"
                    outcomes.append(
                        call(
                            conn,
                            function,
                            **{target: victim},
                            idempotency_key=uuid.uuid4(),
                            **arguments,
                        )
                    )
                return outcomes

        return run

    deletes, mints, transfers = run_parallel(
        client("delete_user", api_key_hash=write_hash),
        client("mint", amount=Decimal("5"), api_key_hash=admin_hash),
        client(
            "transfer",
            from_user_id=payer,
            amount=Decimal("2"),
            api_key_hash=write_hash,
            request_user_id=payer,
        ),
    )

    closed = {}
    for victim, deleted, minted, paid in zip(victims, deletes, mints, transfers, strict=True):
        if deleted.ok:
            assert deleted.status == 200, deleted
            assert minted.error == "L4041", (deleted, minted)
            assert paid.error == "L4041", (deleted, paid)
        else:
            assert deleted.error == "L4094", deleted
            assert minted.ok or paid.ok, (deleted, minted, paid)
            assert minted.ok or minted.error == "L4041", minted
            assert paid.ok or paid.error == "L4041", paid
        closed[victim] = deleted.ok
        expected = Decimal(5 if minted.ok else 0) + Decimal(2 if paid.ok else 0)
        assert wallets(dba, [victim]) == {victim: expected}

    rows = dba.execute(
        """SELECT a.user_id, b.is_closed, b.balance, u.deleted_at IS NOT NULL
             FROM ledger.accounts a
             JOIN ledger.balances b ON b.account_id = a.id
             JOIN ledger.users u ON u.id = a.user_id
            WHERE a.user_id = ANY(%s)""",
        (victims,),
    ).fetchall()
    for user_id, is_closed, balance, is_deleted in rows:
        assert is_closed == is_deleted == closed[user_id]
        if is_closed:
            assert balance == 0
    assert not count(dba, "SELECT count(*) FROM ledger.balances WHERE is_closed AND balance <> 0")
    # No money event on any closed wallet after its AccountClosed.
    assert not count(
        dba,
        """SELECT count(*) FROM ledger.events e
             JOIN ledger.events c
               ON c.aggregate_id = e.aggregate_id AND c.event_type = 'AccountClosed'
            WHERE e.event_type IN ('AccountDebited', 'AccountCredited')
              AND e.version > c.version""",
    )
    verify_projections(dba)


# --- 7: freezing a wallet while transfers run -----------------------------------------------


def test_freeze_while_transfers_run(dba, app_url, make_key):
    _, write_hash, _ = make_key(["write"])
    _, admin_hash, _ = make_key(["admin"])
    minted = Decimal("1000")
    users = make_users(dba, 6, "frz", minted)
    frozen_user = users[0]
    threads = 8
    barrier = threading.Barrier(threads + 1, timeout=BARRIER_TIMEOUT)
    frozen = threading.Event()
    lock = threading.Lock()
    frozen_user_successes = [0]

    def client(index: int) -> list[Attempt]:
        rng = random.Random(700 + index)  # noqa: S311
        attempts: list[Attempt] = []
        after = 0
        with connect(app_url) as conn:
            barrier.wait()
            while len(attempts) < 1000 and (len(attempts) < 30 or after < 15):
                if rng.random() < 0.5:
                    other = rng.choice(users[1:])
                    source, target = (
                        (frozen_user, other) if rng.random() < 0.5 else (other, frozen_user)
                    )
                else:
                    source, target = rng.sample(users[1:], 2)
                amount = Decimal(rng.randint(1, 500)).scaleb(-2)
                # Read before the call starts: True means the freeze had already committed.
                after_freeze = frozen.is_set()
                outcome = call(
                    conn,
                    "transfer",
                    from_user_id=source,
                    to_user_id=target,
                    amount=amount,
                    idempotency_key=uuid.uuid4(),
                    api_key_hash=write_hash,
                    request_user_id=source,
                )
                attempts.append(Attempt(source, target, amount, outcome, after_freeze))
                after += after_freeze
                if outcome.ok and frozen_user in (source, target):
                    with lock:
                        frozen_user_successes[0] += 1
        return attempts

    def freezer() -> Outcome:
        with connect(app_url) as conn:
            barrier.wait()
            deadline = time.monotonic() + 30
            while frozen_user_successes[0] < 10 and time.monotonic() < deadline:
                time.sleep(0.002)
            outcome = call(
                conn,
                "freeze_wallet",
                user_id=frozen_user,
                reason="suspicious activity",
                idempotency_key=uuid.uuid4(),
                api_key_hash=admin_hash,
            )
            frozen.set()  # the call returned, so the freeze has committed (autocommit)
            return outcome

    *results, freeze = run_parallel(*(lambda i=i: client(i) for i in range(threads)), freezer)
    attempts = [attempt for attempts in results for attempt in attempts]

    assert freeze.ok and freeze.status == 200 and freeze.body is not None, freeze
    assert freeze.body["is_frozen"] is True
    for attempt in attempts:
        involved = frozen_user in (attempt.source, attempt.target)
        if attempt.outcome.error == "L4003":
            assert involved, attempt
        if attempt.after_freeze and involved:
            assert attempt.outcome.error == "L4003", attempt
    check_books(dba, users, minted, attempts, allowed_errors={"L4002", "L4003"})

    involving = [a for a in attempts if frozen_user in (a.source, a.target)]
    assert any(a.outcome.ok for a in involving)  # before the freeze they went through
    assert any(a.after_freeze for a in involving)  # and after it some were tried
    # Transfers among the others kept working after the freeze.
    others = [a for a in attempts if frozen_user not in (a.source, a.target)]
    assert any(a.after_freeze and a.outcome.ok for a in others)

    # In the event history of the frozen wallet, no money moved after AccountFrozen.
    events = dba.execute(
        """SELECT e.version, e.event_type
             FROM ledger.events e JOIN ledger.accounts a ON a.id = e.aggregate_id
            WHERE a.user_id = %s AND a.account_type = 'user_wallet'
            ORDER BY e.version""",
        (frozen_user,),
    ).fetchall()
    frozen_at = [version for version, kind in events if kind == "AccountFrozen"]
    assert len(frozen_at) == 1, events
    assert events[-1] == (frozen_at[0], "AccountFrozen"), events[-5:]


def wait_for_lock_wait(dba: psycopg.Connection, pid: int) -> bool:
    """True once backend `pid` waits for any lock."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if count(dba, "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", pid):
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("caller", ["app-with-key", "dba-without-key"])
@pytest.mark.parametrize("function", ["freeze_wallet", "unfreeze_wallet"])
def test_freeze_queued_behind_a_delete_finds_no_user(
    dba, database, app_url, make_key, caller, function
):
    """A freeze (or unfreeze) that waits for the wallet while delete_user commits must answer
    user_not_found, and must not append an event to the closed wallet."""
    _, write_hash, _ = make_key(["write"])
    _, admin_hash, _ = make_key(["admin"])
    (victim,) = make_users(dba, 1, "frzdel")
    if function == "unfreeze_wallet":
        frozen = call(dba, "freeze_wallet", user_id=victim, reason="before")
        assert frozen.ok, frozen
    url, args = (
        (app_url, {"idempotency_key": uuid.uuid4(), "api_key_hash": admin_hash})
        if caller == "app-with-key"
        else (database, {})
    )
    with connect(app_url, autocommit=False) as deleting, connect(url) as freezing:
        deleted = call(
            deleting,
            "delete_user",
            user_id=victim,
            idempotency_key=uuid.uuid4(),
            api_key_hash=write_hash,
        )
        assert deleted.ok and deleted.status == 200, deleted
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(call, freezing, function, user_id=victim, reason="race", **args)
            assert wait_for_lock_wait(dba, freezing.info.backend_pid), "freeze never waited"
            deleting.commit()
            outcome = pending.result(timeout=30)

    assert outcome.error == "L4041", outcome
    events = dba.execute(
        """SELECT e.event_type FROM ledger.events e JOIN ledger.accounts a ON a.id = e.aggregate_id
            WHERE a.user_id = %s ORDER BY e.version""",
        (victim,),
    ).fetchall()
    assert events[-1] == ("AccountClosed",), events
    verify_projections(dba)


def test_maintenance_does_not_block_transfers(dba, app_url, make_key):
    """The scheduler runs api.run_maintenance() every minute, in one transaction: with the
    partitions already in place it must take no lock that an event or journal INSERT waits for,
    so a transfer completes while a maintenance run is still open."""
    alice, bob = uuid.uuid4(), uuid.uuid4()
    for user_id, name in ((alice, "maint_alice"), (bob, "maint_bob")):
        dba.execute(
            "SELECT * FROM api.create_user(%s, %s, %s)", (user_id, name, f"{name}@example.com")
        )
    dba.execute("SELECT * FROM api.mint(%s, 10)", (alice,))
    _, key_hash, _ = make_key(["write"])
    with psycopg.connect(app_url) as maintenance, psycopg.connect(app_url, autocommit=True) as app:
        maintenance.execute("SELECT api.run_maintenance()")  # stays open: no commit yet
        held = maintenance.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE l.pid = pg_backend_pid() AND c.relnamespace = 'ledger'::regnamespace"
            "   AND l.mode NOT IN ('AccessShareLock', 'RowShareLock', 'RowExclusiveLock')"
        ).fetchone()
        assert held == (0,)
        app.execute("SET statement_timeout = '5s'")
        row = app.execute(
            "SELECT status FROM api.transfer(from_user_id => %s, to_user_id => %s, amount => 1,"
            " idempotency_key => %s, api_key_hash => %s, request_user_id => %s)",
            (alice, bob, uuid.uuid4(), key_hash, alice),
        ).fetchone()
        assert row == (201,)
        maintenance.rollback()


def transfer_in_time(
    app: psycopg.Connection, sender: uuid.UUID, receiver: uuid.UUID, key: str
) -> None:
    """One transfer as the app, which fails rather than waits past 5 s for a lock."""
    app.execute("SET statement_timeout = '5s'")
    transferred = call(
        app, "transfer", from_user_id=sender, to_user_id=receiver, amount=Decimal(1),
        idempotency_key=uuid.uuid4(), api_key_hash=key, request_user_id=sender,
    )  # fmt: skip
    assert transferred.ok, transferred


def test_a_partition_waits_for_no_long_reader(dba, database, app_url, make_key):
    """Creating a partition locks its parent exclusively. Behind a reader that keeps the parent
    (a report, a pg_dump), the request queued every transfer after it; now it waits 200 ms, is
    reported as skipped_locked and left for a later run, and transfers go on."""
    alice, bob = make_users(dba, 2, "partition_wait", mint=Decimal(10))
    _, key_hash, _ = make_key(["write"])
    months = count(
        dba, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'ledger.events'::regclass"
    )
    with (
        connect(database, autocommit=False) as report,
        connect(database) as dba2,
        connect(app_url) as app,
    ):
        report.execute("SELECT count(*) FROM ledger.events")  # holds the parent until it ends
        dba2.execute("SET statement_timeout = '10s'")
        result = dba2.execute("SELECT api.ensure_partitions(%s)", [months + 2]).fetchone()[0]
        assert result["skipped_locked"], result
        assert all(name.startswith("events_") for name in result["skipped_locked"]), result
        assert not any(name.startswith("events_") for name in result["created"]), result
        transfer_in_time(app, alice, bob, key_hash)
        report.rollback()
    created = dba.execute("SELECT api.ensure_partitions(%s)", [months + 2]).fetchone()[0]
    assert created["created"] == result["skipped_locked"], created
    assert "skipped_locked" not in created, created


def test_a_new_partition_stops_no_transfer_until_its_commit(dba, database, app_url, make_key):
    """Maintenance makes next months' partitions in the transaction of its other jobs. Made by
    CREATE TABLE ... PARTITION OF, a partition held its parent exclusively until that commit, and
    every transfer's INSERT waited (a DBA's open transaction, for as long as it stayed open).
    Attached, it lets transfers by, and is a partition like the others."""
    alice, bob = make_users(dba, 2, "partition_attach", mint=Decimal(10))
    _, key_hash, _ = make_key(["write"])
    month = (
        dba.execute(
            "SELECT max(c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'ledger.events'::regclass AND c.relname <> 'events_default'"
        )
        .fetchone()[0]
        .removeprefix("events_")
    )
    current = dba.execute("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')").fetchone()[0]
    assert month > current  # a month ahead: empty
    for parent in ("events", "ledger_entries"):
        dba.execute(f"DROP TABLE ledger.{parent}_{month}")
    with connect(app_url, autocommit=False) as maintenance, connect(app_url) as app:
        result = maintenance.execute("SELECT api.run_maintenance()").fetchone()[0]
        assert result["partitions"]["created"] == [f"events_{month}", f"ledger_entries_{month}"]
        transfer_in_time(app, alice, bob, key_hash)
        maintenance.commit()
    shape = (
        "SELECT (SELECT array_agg(tgname ORDER BY tgname) FROM pg_trigger"
        "         WHERE tgrelid = %(t)s::regclass),"
        " (SELECT array_agg(indisunique || split_part(pg_get_indexdef(indexrelid), ' USING ', 2)"
        "                   ORDER BY 1) FROM pg_index WHERE indrelid = %(t)s::regclass),"
        " has_table_privilege('atp_owner', %(t)s::regclass, 'INSERT')"
    )
    for parent in ("events", "ledger_entries"):
        made, usual = (
            dba.execute(shape, {"t": f"ledger.{parent}_{m}"}).fetchone() for m in (month, current)
        )
        assert made == usual and made[2] is False, (made, usual)
    verify_projections(dba)


def test_verify_projections_sees_one_moment_while_mints_commit(dba, database):
    """The trial balance read the balances and the journal lines in two statements, each with
    its own snapshot: a mint committed between them made minted less burned differ from what is
    held, and the books were reported broken while nothing was."""
    (user,) = make_users(dba, 1, "supply_race")

    def mint() -> None:
        with connect(database) as conn:
            for _ in range(400):
                assert call(conn, "mint", to_user_id=user, amount=Decimal("0.01")).ok

    reports = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        minters = [pool.submit(mint) for _ in range(2)]
        while not all(m.done() for m in minters):
            reports.append(dba.execute("SELECT api.verify_projections()").fetchone()[0])
        for m in minters:
            m.result()
    assert reports
    assert [r["supply"] | r["trial_balance"] for r in reports if not r["ok"]] == []


def test_rebuild_projections_stops_no_transfer_while_it_replays(dba, database, app_url, make_key):
    """api.rebuild_projections() locked the balances for its whole replay of every account's
    events (22 s for 5 million) and every write waited. Now it finds the wrong accounts without
    a lock and locks only to put those right: a transfer completes while the replay is still
    running (held here behind a lock on the holds it reads), and the corrupted account is
    repaired all the same."""
    alice, bob, carol = make_users(dba, 3, "rebuild_wait", mint=Decimal(10))
    _, key_hash, _ = make_key(["write"])
    (account,) = dba.execute(
        "SELECT id FROM ledger.accounts WHERE user_id = %s AND account_type = 'user_wallet'",
        (carol,),
    ).fetchone()
    dba.execute(
        "UPDATE ledger.balances SET balance = balance + 1 WHERE account_id = %s", (account,)
    )
    with (
        connect(database, autocommit=False) as blocker,
        connect(database) as rebuilding,
        connect(app_url) as app,
    ):
        blocker.execute("LOCK TABLE ledger.holds IN ACCESS EXCLUSIVE MODE")
        rebuilding.execute("SET statement_timeout = '20s'")
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(
                lambda: rebuilding.execute("SELECT api.rebuild_projections()").fetchone()[0]
            )
            assert wait_for_lock_wait(dba, rebuilding.info.backend_pid), "the rebuild never waited"
            transfer_in_time(app, alice, bob, key_hash)
            blocker.rollback()
            rebuilt = pending.result(timeout=30)
    assert rebuilt["changed"] == [
        {"account_id": str(account), "balance": "10.00000000", "held": "0.00000000"}
    ], rebuilt
    verify_projections(dba)
