"""`make migrate`: safe to run again on a migrated database (nothing duplicated, nothing
widened), works on an empty database, and leaves every object owned by atp_owner."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import ROOT, Cluster, migrate, url

API_FILES = sorted(p.stem for p in (ROOT / "sql" / "api").glob("*.sql"))
LEDGER_FILES = sorted(p.stem for p in (ROOT / "sql" / "ledger").glob("*.sql"))

# Everything a migrate could duplicate, drop or widen: functions with their owner, security,
# settings, grants, body and comment; triggers; relations with owner and grants; schemas.
SNAPSHOT = """
SELECT 'function', p.oid::regprocedure::text,
       concat_ws(' | ', p.proowner::regrole, p.prosecdef, p.proconfig::text, p.proacl::text,
                 md5(p.prosrc), md5(COALESCE(obj_description(p.oid, 'pg_proc'), '')))
  FROM pg_proc p WHERE p.pronamespace IN ('api'::regnamespace, 'ledger'::regnamespace)
UNION ALL
SELECT 'trigger', t.tgrelid::regclass::text || '.' || t.tgname,
       concat_ws(' | ', t.tgfoid::regprocedure, t.tgenabled, t.tgtype)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE NOT t.tgisinternal AND c.relnamespace = 'ledger'::regnamespace
UNION ALL
SELECT 'relation', c.oid::regclass::text,
       concat_ws(' | ', c.relkind, c.relowner::regrole, c.relacl::text)
  FROM pg_class c WHERE c.relnamespace IN ('api'::regnamespace, 'ledger'::regnamespace)
UNION ALL
SELECT 'schema', n.nspname, concat_ws(' | ', n.nspowner::regrole, n.nspacl::text)
  FROM pg_namespace n WHERE n.nspname IN ('api', 'ledger')
ORDER BY 1, 2
"""


def snapshot(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(SNAPSHOT).fetchall()


def scalar(database_url: str, sql: str) -> Any:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]


def names(database_url: str, schema: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT proname::text FROM pg_proc WHERE pronamespace = %s::regnamespace ORDER BY 1",
            (schema,),
        ).fetchall()
    return [r[0] for r in rows]


def assert_one_function_per_file(database_url: str) -> None:
    # Equal lists (duplicates included): one copy of each function, and no other function.
    assert names(database_url, "api") == API_FILES
    assert names(database_url, "ledger") == LEDGER_FILES


def assert_owned_by_atp_owner(database_url: str) -> None:
    not_owned = scalar(
        database_url,
        """
        SELECT array_agg(what ORDER BY what) FROM (
            SELECT p.oid::regprocedure::text AS what FROM pg_proc p
             WHERE p.pronamespace IN ('api'::regnamespace, 'ledger'::regnamespace)
               AND p.proowner <> 'atp_owner'::regrole
            UNION ALL
            SELECT c.oid::regclass::text FROM pg_class c
             WHERE c.relnamespace IN ('api'::regnamespace, 'ledger'::regnamespace)
               AND c.relowner <> 'atp_owner'::regrole
            UNION ALL
            SELECT n.nspname::text FROM pg_namespace n
             WHERE n.nspname IN ('api', 'ledger') AND n.nspowner <> 'atp_owner'::regrole
        ) x
        """,
    )
    assert not_owned is None, not_owned


def test_migrate_again_changes_nothing(database: str) -> None:
    before = snapshot(database)
    assert len(before) > 100  # sanity: the snapshot sees the schema
    for attempt in (1, 2):
        result = migrate(database)
        assert result.returncode == 0, f"migrate #{attempt}:\n{result.stdout}{result.stderr}"
        assert snapshot(database) == before, f"migrate #{attempt} changed the schema"
    assert_one_function_per_file(database)
    assert_owned_by_atp_owner(database)
    assert scalar(database, "SELECT count(*) FROM ledger.users WHERE is_system") == 3


@pytest.fixture
def empty_database(cluster: Cluster) -> Iterator[str]:
    name = f"m_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url(cluster, "postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield url(cluster, name)
    with psycopg.connect(url(cluster, "postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_migrate_empty_database(empty_database: str) -> None:
    result = migrate(empty_database)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_one_function_per_file(empty_database)
    assert_owned_by_atp_owner(empty_database)
    assert scalar(empty_database, "SELECT count(*) FROM _yoyo_migration") == len(
        list((ROOT / "migrations").glob("*.sql"))
    )
    # This month and three ahead, plus DEFAULT, for both partitioned tables.
    assert (
        scalar(
            empty_database,
            "SELECT count(*) FROM pg_inherits"
            " WHERE inhparent IN ('ledger.events'::regclass, 'ledger.ledger_entries'::regclass)",
        )
        == 10
    )
    assert scalar(empty_database, "SELECT api.verify_projections() ->> 'ok'") == "true"
    assert scalar(empty_database, "SELECT api.verify_audit_chain() ->> 'ok'") == "true"

    before = snapshot(empty_database)
    again = migrate(empty_database)
    assert again.returncode == 0, again.stdout + again.stderr
    assert snapshot(empty_database) == before


def test_migrate_removes_a_previous_versions_overload(database: str) -> None:
    """An upgrade that changes a function's parameters must not leave the old signature
    behind: CREATE OR REPLACE with new parameters creates a second function, which keeps its
    EXECUTE grant and its old logic, and makes calls by name ambiguous. Simulated here by an
    api.transfer overload as the previous release could have left it."""
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("SET ROLE atp_owner")
        conn.execute(
            "CREATE FUNCTION api.transfer(from_user_id uuid, to_user_id uuid, amount numeric)"
            " RETURNS TABLE (status integer, body jsonb, replayed boolean)"
            " LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
            " AS $$ SELECT 201, '{}'::jsonb, false $$"
        )
        conn.execute(
            "GRANT EXECUTE ON FUNCTION api.transfer(uuid, uuid, numeric) TO atp_app, atp_dba"
        )
    result = migrate(database)
    assert result.returncode == 0, result.stdout + result.stderr
    assert names(database, "api").count("transfer") == 1, (
        "make migrate left an old overload of api.transfer in place"
    )


def test_migrate_and_calls_ignore_hostile_session_defaults(empty_database: str) -> None:
    """Database defaults a migrating session, or a caller's, would otherwise take on: backslashes
    read as escapes, a schema before pg_catalog holding always-true look-alikes of the
    comparisons the CHECKs use, a time zone 13:45 ahead, serializable transactions, a
    statement timeout. An audit found the CHECKs bound to the look-alikes, an email pattern
    without its escaped dot, the audit seal unable to compile, and partitions that overlap."""
    name = empty_database.rsplit("/", 1)[1]
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA evil")
        conn.execute("GRANT USAGE ON SCHEMA evil TO PUBLIC")
        for op, fn, right in (
            (">=", "ge", "integer"),
            (">", "gt", "integer"),
            ("<=", "le", "bigint"),
        ):
            conn.execute(
                f"CREATE FUNCTION evil.{fn}(numeric, {right}) RETURNS boolean"
                " LANGUAGE sql IMMUTABLE AS 'SELECT true'"
            )
            conn.execute(
                f"CREATE OPERATOR evil.{op} (LEFTARG = numeric, RIGHTARG = {right},"
                f" FUNCTION = evil.{fn})"
            )
        for setting in (
            "standard_conforming_strings = off",
            "search_path = evil, public",
            "timezone = 'Pacific/Chatham'",
            "default_transaction_isolation = 'serializable'",
            "statement_timeout = '1s'",
        ):
            conn.execute(f"ALTER DATABASE {name} SET {setting}")
    result = migrate(empty_database)
    assert result.returncode == 0, result.stdout + result.stderr
    with psycopg.connect(empty_database, autocommit=True) as conn:
        bound = conn.execute(
            "SELECT count(*) FROM pg_depend d JOIN pg_operator o ON o.oid = d.refobjid"
            " WHERE d.classid = 'pg_constraint'::regclass AND o.oprnamespace = 'evil'::regnamespace"
        ).fetchone()
        assert bound == (0,)
        conn.execute("SET timezone = 'UTC'")  # to read the bounds; they are the same moments
        bounds = conn.execute(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'ledger.events'::regclass AND NOT c.relname LIKE '%default'"
        ).fetchall()
        assert bounds and all("00:00:00+00" in bound for (bound,) in bounds), bounds
        # A session that reads backslashes as escapes (the database's default here).
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("off",)
        user = uuid.uuid4()
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("SELECT api.create_user(%s, 'x_0', 'y@bcde')", (user,))
        assert refused.value.sqlstate == "L4001"
        conn.execute("SELECT api.create_user(%s, 'x_0', 'y@b.cd')", (user,))
        conn.execute("SELECT api.mint(%s, 10)", (user,))
        other = uuid.uuid4()
        conn.execute("SELECT api.create_user(%s, 'x_1', 'z@b.cd')", (other,))
        legs = f'[{{"to_user_id": "{other}", "amount": "{"0" * 50}7.5"}}]'
        conn.execute("SELECT api.transfer_batch(%s, %s, request_user_id => %s)", (user, legs, user))
        assert conn.execute("SELECT api.seal_audit() ->> 'sealed_rows'").fetchone() != ("0",)
        assert conn.execute("SELECT api.verify_audit_chain() ->> 'ok'").fetchone() == ("true",)
        assert conn.execute("SELECT api.verify_projections() ->> 'ok'").fetchone() == ("true",)
