"""Refunds and batches under concurrency (invariants 8 and 9): concurrent partial refunds of one
transfer never add up to more than it; batches over the same users in opposite orders never
deadlock; a batch whose last leg fails leaves nothing behind. The books are verified after each."""

from __future__ import annotations

import json
import threading
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from test_concurrency import (
    BARRIER_TIMEOUT,
    Outcome,
    call,
    connect,
    make_users,
    run_parallel,
    verify_projections,
    wallets,
)


def together(url: str, count: int, function: str, args_of: Any) -> list[Outcome]:
    """count clients, each on its own connection, released at once; args_of(i) gives the args."""
    barrier = threading.Barrier(count, timeout=BARRIER_TIMEOUT)

    def client(i: int) -> Outcome:
        with connect(url) as conn:
            barrier.wait()
            return call(conn, function, **args_of(i))

    return run_parallel(*(lambda i=i: client(i) for i in range(count)))


def test_concurrent_partial_refunds_never_exceed_the_transfer(dba, app_url, make_key):
    _, write_hash, _ = make_key(["write"])
    alice, bob = make_users(dba, 2, "refund", Decimal("100"))
    sent = call(dba, "transfer", from_user_id=alice, to_user_id=bob, amount=Decimal("10"),
                request_user_id=alice)  # fmt: skip
    assert sent.ok and sent.body is not None, sent
    transfer_id = sent.body["transfer_id"]
    outcomes = together(
        app_url,
        12,
        "refund_transfer",
        lambda i: {
            "transfer_id": transfer_id,
            "amount": Decimal("3"),
            "idempotency_key": uuid.uuid4(),
            "api_key_hash": write_hash,
            "request_user_id": bob,
        },
    )
    done = [o for o in outcomes if o.ok]
    assert len(done) == 3, outcomes  # 3 x 3 ATP fit into 10, a fourth would not
    assert {o.error for o in outcomes if not o.ok} == {"L4006"}, outcomes
    refunded = dba.execute("SELECT api.get_transfer(%s)", [transfer_id]).fetchone()[0]
    assert refunded["refunded_amount"] == "9.00000000"
    assert wallets(dba, [alice, bob]) == {alice: Decimal("99"), bob: Decimal("101")}
    verify_projections(dba)


def test_opposite_batches_never_deadlock(dba, app_url, make_key):
    _, write_hash, _ = make_key(["write"])
    users = make_users(dba, 4, "batch", Decimal("1000"))

    def legs_of(i: int) -> dict[str, Any]:
        sender = users[i % len(users)]
        others = [u for u in users if u != sender]
        if i % 2:
            others.reverse()  # the same accounts, named in the opposite order
        legs = [{"to_user_id": str(u), "amount": "1.5", "memo": f"b{i}"} for u in others * 3]
        return {
            "from_user_id": sender,
            "transfers": Jsonb(legs),
            "idempotency_key": uuid.uuid4(),
            "api_key_hash": write_hash,
            "request_user_id": sender,
        }

    for _ in range(3):
        outcomes = together(app_url, 16, "transfer_batch", legs_of)
        assert all(o.ok and o.status == 201 for o in outcomes), [o for o in outcomes if not o.ok]
    assert sum(wallets(dba, users).values()) == Decimal("4000")
    verify_projections(dba)


def snapshot(dba: psycopg.Connection) -> dict[str, Any]:
    counts = dba.execute(
        """SELECT (SELECT count(*) FROM ledger.events),
                  (SELECT count(*) FROM ledger.ledger_entries),
                  (SELECT count(*) FROM ledger.audit_log),
                  (SELECT count(*) FROM ledger.idempotency_keys)"""
    ).fetchone()
    feed = dba.execute('SELECT api.list_events("limit" => 1000)').fetchone()
    assert counts is not None and feed is not None
    balances = dict(dba.execute("SELECT account_id, balance FROM ledger.balances").fetchall())
    return {"counts": counts, "feed": len(feed[0]["events"]), "balances": balances}


def test_a_batch_whose_last_leg_fails_leaves_nothing(dba, app_url, make_key):
    _, write_hash, _ = make_key(["write"])
    _, admin_hash, _ = make_key(["admin"])
    alice, bob, carol = make_users(dba, 3, "atomic", Decimal("50"))
    before = snapshot(dba)
    legs = [{"to_user_id": str(bob), "amount": "10"}, {"to_user_id": str(carol), "amount": "10"},
            {"to_user_id": str(uuid.uuid4()), "amount": "1"}]  # fmt: skip
    with connect(app_url) as conn:
        failed = call(conn, "transfer_batch", from_user_id=alice, transfers=Jsonb(legs),
                      idempotency_key=uuid.uuid4(), api_key_hash=write_hash,
                      request_user_id=alice)  # fmt: skip
        assert failed.error == "L4041", failed
        mints = [{"to_user_id": str(bob), "amount": "5"}, {"to_user_id": str(carol), "amount": "5"},
                 {"to_user_id": str(alice), "amount": "999999999999"}]  # fmt: skip
        failed = call(conn, "mint_batch", mints=Jsonb(mints), idempotency_key=uuid.uuid4(),
                      api_key_hash=admin_hash)  # fmt: skip
        assert failed.error == "L4004", failed
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(
                "SELECT * FROM api.transfer_batch(%s, %s, %s, api_key_hash => %s,"
                " request_user_id => %s)",
                [alice, json.dumps(legs), uuid.uuid4(), write_hash, alice],
            )
        assert json.loads(raised.value.diag.message_detail or "{}") == {"index": 2}
    assert snapshot(dba) == before
    verify_projections(dba)


def test_a_thousand_leg_mint_posts_every_leg(dba, make_key):
    # How long it takes is the bench's to say (bench/README.md, "Batches against single
    # transfers"); a timing assertion here would be a flaky test on a shared machine.
    users = make_users(dba, 50, "airdrop")
    legs = [{"to_user_id": str(users[i % 50]), "amount": "1.00000001"} for i in range(1000)]
    minted = call(dba, "mint_batch", mints=Jsonb(legs), reason="airdrop",
                  idempotency_key=uuid.uuid4())  # fmt: skip
    assert minted.ok and minted.body is not None and len(minted.body["mints"]) == 1000, minted
    assert sum(wallets(dba, users).values()) == Decimal("1000.00001")
    verify_projections(dba)
