"""`make migrate` carries a database filled by the version before the write path
(migration 0004) over to the new shape: the previous version's files (from git) migrate an
empty database and write users, mints, transfers, burns, freezes and a delete through its own
functions; then the current code migrates it. Balances, histories, as-of balances and both
verifiers agree before and after, and the new functions write on top of the old rows."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import ROOT, Cluster, migrate, url

FIRST_NEW = "migrations/0004.write-path.sql"


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def previous_version(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A checkout of the last commit before the write path's migration."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git history of the checkout")
    try:
        added = git("log", "--diff-filter=A", "--format=%H", "--", FIRST_NEW).splitlines()[-1]
        commit = git("rev-parse", f"{added}^")
    except (subprocess.CalledProcessError, IndexError):
        pytest.skip("the history before the write path is not in this clone")
    path = tmp_path_factory.mktemp("previous") / "checkout"
    git("worktree", "add", "--detach", str(path), commit)
    yield path
    git("worktree", "remove", "--force", str(path))


def migrate_previous(checkout: Path, database_url: str) -> None:
    """What the previous version's `make migrate` did with DATABASE_URL set."""
    venv = ROOT / ".venv" / "bin"
    subprocess.run(
        [str(venv / "yoyo"), "apply", "--batch", "--no-config-file", "--database",
         database_url.replace("postgresql://", "postgresql+psycopg://", 1),
         str(checkout / "migrations")],
        check=True, capture_output=True,
    )  # fmt: skip
    files = sorted((checkout / "sql" / "ledger").glob("*.sql")) + sorted(
        (checkout / "sql" / "api").glob("*.sql")
    )
    subprocess.run(
        ["psql", database_url, "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1",
         "-c", "SET ROLE atp_owner", "-c", "SET check_function_bodies = off",
         *[arg for f in files for arg in ("-f", str(f))],
         "-c", "SELECT ledger.drop_stale_functions()", "-c", "SELECT ledger.ensure_partitions(3)"],
        check=True, capture_output=True,
    )  # fmt: skip


def fill(conn: psycopg.Connection, users: list[str]) -> None:
    """Writes through the previous version's functions, as a DBA."""
    for n, user in enumerate(users):
        conn.execute("SELECT api.create_user(%s, %s, %s)", (user, f"up{n}", f"up{n}@example.com"))
        conn.execute("SELECT api.mint(%s, %s, 'grant')", (user, 1000 + n))
    for n in range(150):  # past a snapshot (every 100th version) on the busiest wallet
        sender, receiver = users[n % 2], users[2 + n % 3]
        conn.execute(
            "SELECT api.transfer(from_user_id => %s, to_user_id => %s, amount => %s,"
            " request_user_id => %s, idempotency_key => %s)",
            (sender, receiver, f"{1 + n % 7}.125", sender, uuid.uuid4()),
        )
    conn.execute("SELECT api.burn(%s, 10, 'reversal')", (users[4],))
    conn.execute("SELECT api.freeze_wallet(%s)", (users[3],))
    conn.execute("SELECT api.unfreeze_wallet(%s)", (users[3],))
    conn.execute("SELECT api.freeze_wallet(%s)", (users[2],))
    conn.execute(
        "SELECT api.burn(%s, (api.get_balance(%s) ->> 'balance')::numeric)", (users[5], users[5])
    )
    conn.execute("SELECT api.delete_user(%s)", (users[5],))


def state(conn: psycopg.Connection, users: list[str], moments: list[Any]) -> dict[str, Any]:
    live = users[:5]

    def one(sql: str, *args: Any) -> Any:
        row = conn.execute(sql, args).fetchone()
        assert row is not None
        return row[0]

    return {
        "balances": [one("SELECT api.get_balance(%s)::jsonb - 'updated_at'", u) for u in live],
        "as_of": [
            one("SELECT api.get_balance(%s, as_of => %s)", u, m) for u in live for m in moments
        ],
        "history": [one('SELECT api.get_history(%s, "limit" => 200)', u) for u in live],
        "events": one("SELECT array[count(*), max(id)] FROM ledger.events"),
        "entries": one("SELECT array[count(*), max(id)] FROM ledger.ledger_entries"),
        "audit_rows": one("SELECT count(*) FROM ledger.audit_log"),
    }


def same_as_before(before: Any, after: Any) -> bool:
    """Equal, except for fields that the new version adds to an answer (e.g. available)."""
    if isinstance(before, dict) and isinstance(after, dict):
        return all(k in after and same_as_before(v, after[k]) for k, v in before.items())
    if isinstance(before, list) and isinstance(after, list):
        return len(before) == len(after) and all(map(same_as_before, before, after))
    return before == after


def verified(conn: psycopg.Connection) -> tuple[Any, Any]:
    conn.execute("SELECT api.seal_audit()")
    projections = conn.execute("SELECT api.verify_projections()").fetchone()
    chain = conn.execute("SELECT api.verify_audit_chain()").fetchone()
    assert projections is not None and chain is not None
    return projections[0], chain[0]


def test_migrate_carries_the_previous_version_over(
    cluster: Cluster, previous_version: Path
) -> None:
    name = f"up_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url(cluster, "postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    database = url(cluster, name)
    migrate_previous(previous_version, database)
    users = [str(uuid.uuid4()) for _ in range(6)]
    with psycopg.connect(database, autocommit=True) as conn:
        fill(conn, users)
        moments = [
            row[0]
            for row in conn.execute(
                "SELECT created_at FROM ledger.events WHERE event_type = 'AccountCredited'"
                " ORDER BY id OFFSET 40 LIMIT 3"
            )
        ]
        before = state(conn, users, moments)
        projections, chain = verified(conn)
        assert projections["ok"] and chain["ok"], (projections, chain)

    result = migrate(database)
    assert result.returncode == 0, result.stdout + result.stderr

    with psycopg.connect(database, autocommit=True) as conn:
        after = state(conn, users, moments)
        assert same_as_before(before, after), (before, after)
        projections, chain = verified(conn)
        assert projections["ok"] and chain["ok"], (projections, chain)
        triggers = conn.execute(
            "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE c.relnamespace = 'ledger'::regnamespace AND NOT t.tgisinternal"
            "   AND t.tgtype & 4 <> 0"
        ).fetchone()
        assert triggers == (0,), "no trigger fires on INSERT after the upgrade"
        # The new write path on top of the old rows: versions continue, the books still add up.
        conn.execute(
            "SELECT api.transfer(from_user_id => %s, to_user_id => %s, amount => 1,"
            " request_user_id => %s)",
            (users[0], users[1], users[0]),
        )
        conn.execute("SELECT api.mint(%s, 5)", (users[3],))
        conn.execute("SELECT api.unfreeze_wallet(%s)", (users[2],))
        projections, chain = verified(conn)
        assert projections["ok"] and chain["ok"], (projections, chain)
    with psycopg.connect(url(cluster, "postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
