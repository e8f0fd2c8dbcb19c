"""The audit chain verifies from the first row to the last, and a changed,
inserted or removed row is found.

Every audit row is hashed on insert; api.seal_audit chains the rows of finished
transactions, in (tx_id, id) order, into ledger.audit_seals. Sealing needs committed
transactions, so these tests run from Python, each in its own fresh database (the
`database` fixture), and tamper with the tables as the superuser, who can do anything.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest


class Ledger:
    """Api calls as the DBA (keyless) or, given a key hash, as the application role."""

    def __init__(self, conn: psycopg.Connection, key_hash: str | None = None) -> None:
        self.conn = conn
        self.key_hash = key_hash

    def _call(self, sql: str, params: dict[str, Any]) -> dict[str, Any]:
        params = {**params, "idem": uuid.uuid4(), "key": self.key_hash}
        row = self.conn.execute(sql, params).fetchone()
        assert row is not None
        assert row[0] in (200, 201), row
        return row[1]

    def create_user(self, name: str) -> uuid.UUID:
        user_id = uuid.uuid4()
        self._call(
            "SELECT status, body FROM api.create_user(%(id)s, %(name)s, %(email)s,"
            " idempotency_key => %(idem)s, api_key_hash => %(key)s)",
            {"id": user_id, "name": name, "email": f"{name}@example.com"},
        )
        return user_id

    def mint(self, user_id: uuid.UUID, amount: str) -> None:
        self._call(
            "SELECT status, body FROM api.mint(%(id)s, %(amount)s::numeric, 'test',"
            " idempotency_key => %(idem)s, api_key_hash => %(key)s)",
            {"id": user_id, "amount": amount},
        )

    def burn(self, user_id: uuid.UUID, amount: str) -> None:
        self._call(
            "SELECT status, body FROM api.burn(%(id)s, %(amount)s::numeric, 'test',"
            " idempotency_key => %(idem)s, api_key_hash => %(key)s)",
            {"id": user_id, "amount": amount},
        )

    def transfer(self, sender: uuid.UUID, receiver: uuid.UUID, amount: str) -> None:
        self._call(
            "SELECT status, body FROM api.transfer(%(from)s, %(to)s, %(amount)s::numeric,"
            " 'memo \"quoted\" \\ and\nnewline', idempotency_key => %(idem)s,"
            " api_key_hash => %(key)s, request_user_id => %(from)s)",
            {"from": sender, "to": receiver, "amount": amount},
        )

    def rename(self, user_id: uuid.UUID, display_name: str) -> None:
        self._call(
            "SELECT status, body FROM api.update_user(%(id)s, display_name => %(dn)s,"
            " idempotency_key => %(idem)s, api_key_hash => %(key)s)",
            {"id": user_id, "dn": display_name},
        )

    def freeze(self, user_id: uuid.UUID, frozen: bool) -> None:
        fn = "freeze_wallet" if frozen else "unfreeze_wallet"
        self._call(
            f"SELECT status, body FROM api.{fn}(%(id)s, 'test',"
            " idempotency_key => %(idem)s, api_key_hash => %(key)s)",
            {"id": user_id},
        )


def seal(dba: psycopg.Connection) -> dict[str, Any]:
    row = dba.execute("SELECT api.seal_audit()").fetchone()
    assert row is not None
    return row[0]


def verify(dba: psycopg.Connection) -> dict[str, Any]:
    row = dba.execute("SELECT api.verify_audit_chain()").fetchone()
    assert row is not None
    return row[0]


def verify_projections(dba: psycopg.Connection) -> dict[str, Any]:
    row = dba.execute("SELECT api.verify_projections()").fetchone()
    assert row is not None
    return row[0]


def reported(result: dict[str, Any]) -> tuple[set[int], set[int]]:
    """(audit ids, seal numbers) named in the verifier's problems."""
    problems = result["problems"]
    return (
        {p["audit_id"] for p in problems if "audit_id" in p},
        {p["seal_no"] for p in problems if "seal_no" in p},
    )


def count(dba: psycopg.Connection, sql: str, params: tuple[Any, ...] = ()) -> int:
    row = dba.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def as_attacker(dba: psycopg.Connection, table: str, trigger: str, sql: str, params: tuple) -> None:
    """What a superuser can do: switch the append-only trigger off, change, switch it on."""
    with dba.transaction():
        dba.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
        dba.execute(sql, params)
        dba.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")


def covering_seal(dba: psycopg.Connection, audit_id: int) -> int:
    """The number of the seal whose range holds the audit row."""
    return count(
        dba,
        "SELECT s.seal_no FROM ledger.audit_seals s, ledger.audit_log a"
        " WHERE a.id = %s AND (s.last_tx_id, s.last_id) >= (a.tx_id, a.id)"
        " ORDER BY s.seal_no LIMIT 1",
        (audit_id,),
    )


@pytest.fixture
def history(dba: psycopg.Connection, app_url: str, make_key) -> Iterator[dict[str, Any]]:
    """Two batches of operations in many committed transactions, by the DBA and by the app
    with a key, each batch sealed: two seals covering every audit row."""
    _, key_hash, _ = make_key(["admin"])
    as_dba = Ledger(dba)
    with psycopg.connect(app_url, autocommit=True) as app:
        as_app = Ledger(app, key_hash)
        alice = as_dba.create_user("chain_alice")
        bob = as_app.create_user("chain_bob")
        as_dba.mint(alice, "100")
        as_app.transfer(alice, bob, "10.5")
        as_app.rename(bob, "Bob B.")
        with dba.transaction():  # several audit rows in one transaction
            as_dba.mint(bob, "5")
            as_dba.freeze(bob, True)
            as_dba.freeze(bob, False)
        first = seal(dba)
        as_app.transfer(bob, alice, "1")
        as_dba.burn(alice, "2")
        second = seal(dba)
        yield {
            "alice": alice,
            "bob": bob,
            "key_hash": key_hash,
            "app": as_app,
            "seals": (first, second),
        }


def test_untouched_history_verifies(dba: psycopg.Connection, history: dict[str, Any]) -> None:
    first, second = history["seals"]
    assert first["sealed_rows"] >= 7
    assert second["sealed_rows"] >= 2
    result = verify(dba)
    assert result["ok"] is True, result
    assert result["problems"] == []
    assert result["seals"] == 2
    assert result["unsealed_rows"] == 0
    assert (
        result["sealed_rows"]
        == result["rows"]
        == count(dba, "SELECT count(*) FROM ledger.audit_log")
    )
    # The app's rows are in the chain with their key, the DBA's with their role.
    assert count(dba, "SELECT count(*) FROM ledger.audit_log WHERE api_key_id IS NOT NULL") >= 4
    assert count(dba, "SELECT count(*) FROM ledger.audit_log WHERE actor = 'postgres'") >= 5


def test_a_verification_late_in_a_transaction_reports_nothing_false(
    database: str, dba: psycopg.Connection, history: dict[str, Any]
) -> None:
    """A DBA's transaction that sealed (and so holds a transaction id) and then verifies, after
    others committed rows: those rows' ids are younger than this transaction's own, and the
    verifier, comparing with that id, called every one of them impossible."""
    with psycopg.connect(database) as session:  # one transaction until the end of the block
        assert session.execute("SELECT api.seal_audit()").fetchone() is not None
        history["app"].transfer(history["alice"], history["bob"], "1")
        history["app"].rename(history["bob"], "Bob C.")
        row = session.execute("SELECT api.verify_audit_chain()").fetchone()
        assert row is not None
        assert row[0]["ok"] is True and row[0]["problems"] == [], row[0]
        assert row[0]["unsealed_rows"] == 2
    assert verify(dba)["ok"] is True
    # This transaction's own rows, the newest of all, are no more impossible than others'.
    with psycopg.connect(database) as session:
        Ledger(session).mint(history["alice"], "1")
        row = session.execute("SELECT api.verify_audit_chain()").fetchone()
        assert row is not None and row[0]["ok"] is True, row


def test_changed_sealed_row_is_found(dba: psycopg.Connection, history: dict[str, Any]) -> None:
    target = count(dba, "SELECT min(id) FROM ledger.audit_log WHERE action = 'transfer'")
    as_attacker(
        dba,
        "ledger.audit_log",
        "audit_log_append_only",
        'UPDATE ledger.audit_log SET after_state = after_state || \'{"amount": "1000.00000000"}\''
        " WHERE id = %s",
        (target,),
    )
    result = verify(dba)
    assert result["ok"] is False
    assert reported(result) == ({target}, set()), result


def test_changed_row_with_recomputed_hash_breaks_its_seal(
    dba: psycopg.Connection, history: dict[str, Any]
) -> None:
    target = count(dba, "SELECT min(id) FROM ledger.audit_log WHERE action = 'transfer'")
    seal_no = covering_seal(dba, target)
    as_attacker(
        dba,
        "ledger.audit_log",
        "audit_log_append_only",
        "UPDATE ledger.audit_log SET actor = 'someone else' WHERE id = %s",
        (target,),
    )
    as_attacker(
        dba,
        "ledger.audit_log",
        "audit_log_append_only",
        "UPDATE ledger.audit_log a SET row_hash = ledger.audit_row_hash(a) WHERE id = %s",
        (target,),
    )
    result = verify(dba)
    assert result["ok"] is False
    assert reported(result) == (set(), {seal_no}), result


def test_deleted_sealed_row_breaks_its_seal(
    dba: psycopg.Connection, history: dict[str, Any]
) -> None:
    target = count(dba, "SELECT min(id) FROM ledger.audit_log WHERE action = 'mint'")
    seal_no = covering_seal(dba, target)
    as_attacker(
        dba,
        "ledger.audit_log",
        "audit_log_append_only",
        "DELETE FROM ledger.audit_log WHERE id = %s",
        (target,),
    )
    result = verify(dba)
    assert result["ok"] is False
    assert reported(result) == (set(), {seal_no}), result
    assert result["rows"] == result["sealed_rows"]
    # ... and the mint's journal has lost the row that says what it was.
    assert [p["problem"] for p in result["problems"] if "journal_id" in p] == [
        "journal has no audit row"
    ]


def test_forged_row_in_sealed_range_breaks_its_seal(
    dba: psycopg.Connection, history: dict[str, Any]
) -> None:
    first_tx, first_id = dba.execute(
        "SELECT tx_id::text, id FROM ledger.audit_log ORDER BY tx_id, id LIMIT 1"
    ).fetchone()
    forged_id = count(dba, "SELECT max(id) + 1000 FROM ledger.audit_log")
    # No trigger needs switching off: INSERT is allowed, with a row hash that matches the row.
    dba.execute(
        "WITH f AS (SELECT %s::bigint AS id, %s::xid8 AS tx_id, created_at, actor,"
        "                  gen_random_uuid()::text AS resource_id,"
        '                  \'{"mint_id": "not a uuid", "amount": "lots"}\'::jsonb AS after_state'
        "             FROM ledger.audit_log WHERE id = %s)"
        " INSERT INTO ledger.audit_log (id, tx_id, created_at, actor, action, resource_type,"
        " resource_id, after_state, row_hash) OVERRIDING SYSTEM VALUE"
        " SELECT id, tx_id, created_at, actor, 'mint', 'mint', resource_id, after_state,"
        "        ledger.audit_hash(id, tx_id, created_at, actor, NULL, NULL, NULL, NULL, 'mint',"
        "                          'mint', resource_id, NULL, after_state)"
        "   FROM f",
        (forged_id, first_tx, first_id),
    )
    seal_no = covering_seal(dba, forged_id)
    last_tx_of_seal = count(
        dba,
        "SELECT last_tx_id::text::bigint FROM ledger.audit_seals WHERE seal_no = %s",
        (seal_no,),
    )
    assert last_tx_of_seal > int(first_tx), "the forged row must sit inside a sealed range"
    result = verify(dba)
    assert result["ok"] is False
    # Found twice: by its seal, and as a mint that posted no journal (its values, which no writer
    # would write, are reported, not cast into an error).
    assert reported(result) == ({forged_id}, {seal_no}), result


def test_journal_that_disagrees_with_its_audit_row_is_found(
    dba: psycopg.Connection, history: dict[str, Any]
) -> None:
    """Journal lines rewritten around the append-only triggers, the audit rows left alone: an
    inflated mint, a transfer whose credit goes to another user, a burn removed. The rows' hashes
    and seals still verify; the journals no longer say what their requests' audit rows say."""

    def journal(action: str) -> str:
        row = dba.execute(
            "SELECT resource_id FROM ledger.audit_log WHERE action = %s ORDER BY id LIMIT 1",
            (action,),
        ).fetchone()
        assert row is not None
        return str(row[0])

    def audit_id(journal_id: str) -> int:
        return count(dba, "SELECT id FROM ledger.audit_log WHERE resource_id = %s", (journal_id,))

    mint, transfer, burn = journal("mint"), journal("transfer"), journal("burn")
    with dba.transaction():
        dba.execute(
            "SET LOCAL session_replication_role = replica"
        )  # triggers off: a superuser's power
        dba.execute(
            "UPDATE ledger.ledger_entries SET amount = amount * 1000 WHERE journal_id = %s", (mint,)
        )
        dba.execute(
            "UPDATE ledger.ledger_entries SET account_id = (SELECT id FROM ledger.accounts"
            "  WHERE user_id = %s) WHERE journal_id = %s AND side = 'credit'",
            (history["alice"], transfer),
        )
        dba.execute("DELETE FROM ledger.ledger_entries WHERE journal_id = %s", (burn,))
    result = verify(dba)
    assert result["ok"] is False
    problems = {p["journal_id"]: p["problem"] for p in result["problems"] if "journal_id" in p}
    assert problems == {
        mint: "journal differs from its audit row (amount or users)",
        transfer: "journal differs from its audit row (amount or users)",
        burn: "audit row names a journal that is not there",
    }, result
    assert reported(result) == ({audit_id(mint), audit_id(transfer), audit_id(burn)}, set())


def test_lines_added_to_a_journal_are_found(
    dba: psycopg.Connection, history: dict[str, Any]
) -> None:
    """The owner needs no trigger lifted to insert: a second balanced pair of lines under a mint's
    journal (a second mint the audit row never saw), and a pair on an account that does not
    exist under a transfer's. Debits still equal credits; the first line of each side still
    equals the audit row."""
    columns = (
        "journal_id, event_id, account_id, side, amount, balance_after, kind,"
        " counterparty_user_id, memo, created_at, refund_of"
    )
    mint, transfer = (
        str(
            dba.execute(
                "SELECT resource_id FROM ledger.audit_log WHERE action = %s ORDER BY id LIMIT 1",
                (action,),
            ).fetchone()[0]  # type: ignore[index]
        )
        for action in ("mint", "transfer")
    )
    with dba.transaction():
        dba.execute("SET LOCAL ROLE atp_owner")
        dba.execute(
            f"INSERT INTO ledger.ledger_entries (id, {columns})"
            f" SELECT nextval('ledger.ledger_entry_id_seq'), {columns}"
            "   FROM ledger.ledger_entries WHERE journal_id = %s",
            (mint,),
        )
        dba.execute(
            f"INSERT INTO ledger.ledger_entries (id, {columns})"
            f" SELECT nextval('ledger.ledger_entry_id_seq'),"
            f" {columns.replace('account_id', 'gen_random_uuid()')}"
            "   FROM ledger.ledger_entries WHERE journal_id = %s",
            (transfer,),
        )
    result = verify(dba)
    assert result["ok"] is False
    problems = {p["journal_id"]: p["problem"] for p in result["problems"] if "journal_id" in p}
    malformed = "journal is not one debit and one credit line of one amount on existing accounts"
    assert problems == {mint: malformed, transfer: malformed}, result


def test_changed_seal_hash_is_found(dba: psycopg.Connection, history: dict[str, Any]) -> None:
    as_attacker(
        dba,
        "ledger.audit_seals",
        "audit_seals_append_only",
        "UPDATE ledger.audit_seals SET seal_hash = sha256(seal_hash) WHERE seal_no = %s",
        (1,),
    )
    result = verify(dba)
    assert result["ok"] is False
    # The seal no longer matches its rows, and the next seal no longer follows it.
    assert reported(result) == (set(), {1, 2}), result


def test_removed_seal_is_found(dba: psycopg.Connection, history: dict[str, Any]) -> None:
    as_attacker(
        dba,
        "ledger.audit_seals",
        "audit_seals_append_only",
        "DELETE FROM ledger.audit_seals WHERE seal_no = %s",
        (1,),
    )
    result = verify(dba)
    assert result["ok"] is False
    assert reported(result) == (set(), {2}), result


def test_changed_unsealed_row_is_found(dba: psycopg.Connection, history: dict[str, Any]) -> None:
    history["app"].transfer(history["alice"], history["bob"], "3")
    target = count(dba, "SELECT max(id) FROM ledger.audit_log")
    assert verify(dba)["unsealed_rows"] == 1
    as_attacker(
        dba,
        "ledger.audit_log",
        "audit_log_append_only",
        "UPDATE ledger.audit_log SET request_user_id = gen_random_uuid() WHERE id = %s",
        (target,),
    )
    result = verify(dba)
    assert result["ok"] is False
    assert reported(result) == ({target}, set()), result


def sealed_exactly_once(dba: psycopg.Connection) -> int:
    """How many audit rows are not covered by exactly one seal's range."""
    return count(
        dba,
        """
        WITH ranges AS (
            SELECT seal_no, last_tx_id, last_id,
                   lag(last_tx_id, 1, '0'::xid8) OVER (ORDER BY seal_no) AS prev_tx,
                   lag(last_id, 1, 0::bigint) OVER (ORDER BY seal_no) AS prev_id
              FROM ledger.audit_seals)
        SELECT count(*) FROM ledger.audit_log a
         WHERE (SELECT count(*) FROM ranges r
                 WHERE (a.tx_id, a.id) > (r.prev_tx, r.prev_id)
                   AND (a.tx_id, a.id) <= (r.last_tx_id, r.last_id)) <> 1
        """,
    )


def test_open_transaction_is_sealed_only_after_commit(
    dba: psycopg.Connection, app_url: str, make_key
) -> None:
    _, key_hash, _ = make_key(["admin"])
    as_dba = Ledger(dba)
    as_dba.create_user("early")
    assert seal(dba)["sealed_rows"] >= 2  # the key's and the user's rows

    with psycopg.connect(app_url) as held:  # a transaction, left open
        Ledger(held, key_hash).create_user("held_open")
        row = held.execute("SELECT pg_current_xact_id()::text").fetchone()
        assert row is not None
        held_tx = row[0]

        as_dba.create_user("later")  # commits while the other is still open
        during = seal(dba)
        assert during["sealed_rows"] == 0, "nothing at or after an open transaction is sealed"
        status = verify(dba)
        assert status["ok"] is True, status
        assert status["unsealed_rows"] == 1  # "later": the open transaction's row is not visible

        held.commit()

    seals_before = count(dba, "SELECT count(*) FROM ledger.audit_seals")
    after = seal(dba)
    assert after["sealed_rows"] == 2  # the held transaction's row and "later"
    held_ids = [
        r[0]
        for r in dba.execute(
            "SELECT id FROM ledger.audit_log WHERE tx_id = %s::xid8", (held_tx,)
        ).fetchall()
    ]
    assert len(held_ids) == 1
    assert covering_seal(dba, held_ids[0]) == after["last_seal_no"] == seals_before + 1

    again = seal(dba)
    assert again["sealed_rows"] == 0
    assert count(dba, "SELECT count(*) FROM ledger.audit_seals") == seals_before + 1
    assert sealed_exactly_once(dba) == 0
    assert count(dba, "SELECT sum(row_count) FROM ledger.audit_seals") == count(
        dba, "SELECT count(*) FROM ledger.audit_log"
    )
    result = verify(dba)
    assert result["ok"] is True, result
    assert result["unsealed_rows"] == 0


def test_audit_writers_do_not_block_each_other(
    dba: psycopg.Connection, app_url: str, make_key
) -> None:
    _, key_hash, _ = make_key(["admin"])
    as_dba = Ledger(dba)
    alice = as_dba.create_user("w_alice")
    bob = as_dba.create_user("w_bob")
    as_dba.mint(alice, "50")

    with (
        psycopg.connect(app_url) as first,
        psycopg.connect(app_url, autocommit=True) as second,
    ):
        Ledger(first, key_hash).transfer(alice, bob, "1")  # holds its audit row, uncommitted
        second.execute("SET statement_timeout = '2s'")
        as_second = Ledger(second, key_hash)  # same API key, other users
        carol = as_second.create_user("w_carol")
        as_second.mint(carol, "7")
        as_second.rename(carol, "Carol C.")
        dba.execute("SET statement_timeout = '2s'")
        seal(dba)  # the sealer does not wait for writers either
        dba.execute("RESET statement_timeout")
        first.commit()

    assert (
        count(dba, "SELECT count(*) FROM ledger.audit_log WHERE resource_id = %s", (str(carol),))
        == 2
    )
    seal(dba)
    result = verify(dba)
    assert result["ok"] is True, result
    assert result["unsealed_rows"] == 0


def test_forged_row_outside_every_seal_is_found(
    dba: psycopg.Connection, history: dict[str, Any]
) -> None:
    """Seal ranges start after (tx_id 0, id 0): a row forged at or below that point (no CHECK
    refuses it: identity ids start at 1 by construction), and a row claiming a transaction that
    has not started yet, which no seal would ever cover, are reported by the verifier instead of
    counted as merely unsealed."""
    forged = (
        "INSERT INTO ledger.audit_log (id, tx_id, created_at, actor, action, resource_type,"
        " resource_id, after_state, row_hash) OVERRIDING SYSTEM VALUE"
        " VALUES ({id}, '{tx}', now() - interval '1 year', 'postgres', 'mint', 'mint',"
        "         gen_random_uuid()::text, '{{\"amount\": \"5000.00000000\"}}', '\\x')"
    )
    dba.execute(forged.format(id=-1, tx="0"))
    dba.execute(forged.format(id=10**9, tx=10**12))
    assert seal(dba)["sealed_rows"] == 0  # they can never be sealed
    result = verify(dba)
    assert result["ok"] is False, result
    assert {-1, 10**9} <= set(reported(result)[0]), result


# A changed value for each column type of ledger.audit_log, as an SQL expression over row a.
CHANGED = {
    "bigint": "a.{c} + 1",
    "xid8": "(a.{c}::text::bigint + 1)::text::xid8",
    "timestamp with time zone": "a.{c} + interval '1 microsecond'",
    "text": "COALESCE(a.{c}, '') || 'x'",
    "uuid": "gen_random_uuid()",
    "inet": "CASE WHEN a.{c} = '10.9.9.9' THEN '10.9.9.8' ELSE '10.9.9.9' END::inet",
    "jsonb": "COALESCE(a.{c}, '{{}}') || '{{\"tampered\": true}}'",
}


def test_row_hash_covers_every_column(dba: psycopg.Connection, history: dict[str, Any]) -> None:
    """Any change to any column (present or added later) changes the row's hash."""
    columns = dba.execute(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'ledger.audit_log'::regclass AND attnum > 0 AND NOT attisdropped"
        "   AND attname <> 'row_hash' ORDER BY attnum"
    ).fetchall()
    assert len(columns) >= 13
    target = count(dba, "SELECT min(id) FROM ledger.audit_log WHERE action = 'transfer'")
    unchanged = []
    for column, type_name in columns:
        assert type_name in CHANGED, f"add a changed value for {type_name} ({column})"
        expression = CHANGED[type_name].format(c=column)
        row = dba.execute(
            "SELECT ledger.audit_row_hash(a) = a.row_hash, ledger.audit_row_hash("
            f"jsonb_populate_record(a, jsonb_build_object(%s::text, {expression}))) = a.row_hash"
            " FROM ledger.audit_log a WHERE a.id = %s",
            (column, target),
        ).fetchone()
        assert row is not None
        assert row[0] is True, "the untouched row matches its hash"
        if row[1]:
            unchanged.append(column)
    assert unchanged == [], f"the row hash ignores {unchanged}"


def test_hash_does_not_depend_on_session_settings(
    dba: psycopg.Connection, app_url: str, make_key
) -> None:
    """Rows written in a session with exotic settings verify in any other session."""
    _, key_hash, _ = make_key(["admin"])
    settings = (
        "SET TimeZone = 'America/St_Johns'; SET DateStyle = 'SQL, DMY';"
        " SET IntervalStyle = 'postgres_verbose'; SET extra_float_digits = -3"
    )
    with psycopg.connect(app_url, autocommit=True) as odd:
        odd.execute(settings)
        as_odd = Ledger(odd, key_hash)
        someone = as_odd.create_user("tz_someone")
        as_odd.mint(someone, "12.34567891")
    seal(dba)
    assert verify(dba)["ok"] is True
    dba.execute("SET TimeZone = 'Pacific/Chatham'; SET DateStyle = 'German'")
    result = verify(dba)
    assert result["ok"] is True, result
    assert result["unsealed_rows"] == 0


def test_no_role_without_privileges_can_stop_sealing(
    dba: psycopg.Connection, database: str, history: dict[str, Any]
) -> None:
    """Sealers queue on the lock of ledger.settings' row, which only the owner can take: a login
    role with no grant at all, holding the advisory lock sealing once used, does not make a seal
    wait, and cannot take the row's lock."""
    role = f"nobody_{uuid.uuid4().hex[:8]}"
    dba.execute(f"CREATE ROLE {role} LOGIN")
    try:
        outsider = database.replace("postgres@", f"{role}@", 1)
        with psycopg.connect(outsider) as conn:
            conn.execute("SELECT pg_advisory_lock(hashtextextended('financeatp.audit_seal', 0))")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT FROM ledger.settings FOR UPDATE")
            conn.rollback()
            conn.execute("SELECT pg_advisory_lock(hashtextextended('financeatp.audit_seal', 0))")
            with psycopg.connect(database, autocommit=True) as sealer:
                sealer.execute("SET statement_timeout = '5s'")
                history["app"].mint(history["alice"], "1")
                assert sealer.execute("SELECT api.seal_audit()").fetchone()[0]["sealed_rows"] >= 1  # type: ignore[index]
    finally:
        dba.execute(f"DROP ROLE {role}")


def test_a_hold_changed_around_the_functions_is_found(
    dba: psycopg.Connection, history: dict[str, Any]
) -> None:
    """Holds are rows that change: each is compared with the audit row of its last change.
    Holds created, captured, voided and expired verify; then the owner, who may UPDATE holds,
    inflates a pending one (with the held balance to match, so verify_projections agrees),
    pushes another's expiry out and voids a third without a request."""
    alice, bob = history["alice"], history["bob"]

    def hold(amount: str) -> str:
        row = dba.execute(
            "SELECT body ->> 'hold_id' FROM api.create_hold(%s, %s, %s::numeric,"
            " request_user_id => %s)",
            (alice, bob, amount, alice),
        ).fetchone()
        assert row is not None
        return str(row[0])

    captured, voided, expired, inflated, later, quiet = (hold("1") for _ in range(6))
    dba.execute("SELECT api.capture_hold(%s, 0.5, request_user_id => %s)", (captured, bob))
    dba.execute("SELECT api.void_hold(%s, request_user_id => %s)", (voided, alice))
    with dba.transaction():
        dba.execute("SET LOCAL session_replication_role = replica")
        dba.execute(
            "UPDATE ledger.holds SET expires_at = now() - interval '1 second' WHERE id = %s",
            (expired,),
        )
    dba.execute("SELECT api.expire_holds()")
    # The expiry pushed by hand above is what the expiry's own audit row states since.
    assert verify(dba)["ok"] is True, verify(dba)

    with dba.transaction():
        dba.execute("SET LOCAL ROLE atp_owner")
        dba.execute("UPDATE ledger.holds SET amount = 50 WHERE id = %s", (inflated,))
        dba.execute(
            "UPDATE ledger.balances SET held = held + 49 - 1 WHERE account_id ="
            " (SELECT id FROM ledger.accounts WHERE user_id = %s AND account_type = 'user_wallet')",
            (alice,),
        )
        dba.execute(
            "UPDATE ledger.holds SET expires_at = expires_at + interval '10 years' WHERE id = %s",
            (later,),
        )
        dba.execute(
            "UPDATE ledger.holds SET status = 'voided', settled_at = now(), version = version + 1"
            " WHERE id = %s",
            (quiet,),
        )
    result = verify(dba)
    problems = {p["hold_id"]: p["problem"] for p in result["problems"] if "hold_id" in p}
    changed = "hold differs from the audit row of its last change"
    assert problems == {inflated: changed, later: changed, quiet: changed}, result


def test_events_and_lines_that_disagree_are_found(
    dba: psycopg.Connection, history: dict[str, Any]
) -> None:
    """Rewrites that keep every balance: two of alice's debit events swap their amounts (her
    as-of balances change, her total does not), an event moves back ten days (an as-of
    balance went negative), a line's balance_after is changed. verify_projections compares
    each line with its event, and balance_after with the sum of the lines before it."""
    alice = history["alice"]
    # Alice's money events, newest last: mint 100 (credit), transfer 10.5 out, transfer 1 in,
    # burn 2 out.
    debits = dba.execute(
        "SELECT e.id, e.data ->> 'amount' FROM ledger.events e JOIN ledger.accounts a"
        " ON a.id = e.aggregate_id WHERE a.user_id = %s AND e.event_type = 'AccountDebited'"
        " ORDER BY e.version",
        (alice,),
    ).fetchall()
    assert [amount for _, amount in debits] == ["10.50000000", "2.00000000"]
    (first, first_amount), (second, second_amount) = debits
    credit = count(
        dba,
        "SELECT e.id FROM ledger.events e JOIN ledger.accounts a ON a.id = e.aggregate_id"
        " WHERE a.user_id = %s AND e.event_type = 'AccountCredited' ORDER BY e.version LIMIT 1",
        (alice,),
    )
    assert verify_projections(dba)["ok"] is True
    with dba.transaction():
        dba.execute("SET LOCAL session_replication_role = replica")
        for event, amount in ((first, second_amount), (second, first_amount)):
            dba.execute(
                "UPDATE ledger.events SET data = jsonb_set(data, '{amount}', to_jsonb(%s::text))"
                " WHERE id = %s",
                (amount, event),
            )
        dba.execute(
            "UPDATE ledger.events SET created_at = created_at - interval '10 days' WHERE id = %s",
            (credit,),
        )
        dba.execute(
            "UPDATE ledger.ledger_entries SET balance_after = balance_after + 1"
            " WHERE event_id = (SELECT max(id) FROM ledger.events WHERE aggregate_id ="
            " (SELECT id FROM ledger.accounts WHERE user_id = %s)"
            " AND event_type = 'AccountCredited')",
            (history["bob"],),
        )
    result = verify_projections(dba)
    assert result["ok"] is False
    assert result["projection_mismatches"] == [], result  # the balances still agree
    found = {p["event_id"]: p["problem"] for p in result["line_event_mismatches"]}
    differ = "journal line and its event differ"
    assert {first: differ, second: differ, credit: differ}.items() <= found.items(), found
    assert "balance_after is not the sum of the lines before it" in found.values(), found


def test_an_event_amount_that_is_no_number_is_reported(
    dba: psycopg.Connection, history: dict[str, Any]
) -> None:
    """verify_projections replays money events by their amounts: one that is not a number,
    forged by hand, is named instead of stopping the verification with a cast's error."""
    event = count(
        dba,
        "SELECT min(id) FROM ledger.events WHERE event_type = 'AccountDebited'",
    )
    with dba.transaction():
        dba.execute("SET LOCAL session_replication_role = replica")
        dba.execute(
            "UPDATE ledger.events SET data = jsonb_set(data, '{amount}', '\"12,5\"') WHERE id = %s",
            (event,),
        )
    result = verify_projections(dba)
    assert result["ok"] is False
    assert result["malformed_events"] == [event], result
