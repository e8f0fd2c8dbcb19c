"""Real, temporary PostgreSQL for every test: one cluster per session, migrated once into a
template database with `make migrate`, and a fresh copy of that template for each test."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import testing.postgresql

from financeatp.pgcluster import as_user, pg_user

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "atp_template"

# pgTAP keeps its results in temporary tables of the session user; a test that switches to
# atp_app or atp_owner (SET LOCAL ROLE) calls SELECT tap_share() after plan() so that
# those roles can record results too.
TAP_SHARE = """
CREATE FUNCTION public.tap_share() RETURNS void LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    FOR r IN SELECT relname, relkind FROM pg_class
              WHERE relnamespace = pg_my_temp_schema() AND relkind IN ('r', 'S') LOOP
        EXECUTE format('GRANT ALL ON %s pg_temp.%I TO PUBLIC',
                       CASE r.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, r.relname);
    END LOOP;
END
$$
"""


# A test cluster holds about 90 MB at its largest; a container's /dev/shm may be 64 MB.
MEMORY = Path("/dev/shm")  # noqa: S108 (mkdtemp below: a new directory of our own)
MEMORY_NEEDED = 1 << 30


def memory_has_room() -> bool:
    try:
        return os.access(MEMORY, os.W_OK) and shutil.disk_usage(MEMORY).free >= MEMORY_NEEDED
    except OSError:
        return False


class Cluster(testing.postgresql.Postgresql):
    """testing.postgresql, made to work as root too, with a UTF-8 cluster, in memory (/dev/shm)
    where the machine has a gigabyte there: every test creates a database from the template and
    drops it, a thousand files each time, and on a disk's file system creating them is most of
    the cost. Elsewhere in the temporary directory, as testing.postgresql puts it."""

    def __init__(self, **settings: object) -> None:
        if "base_dir" in settings or not memory_has_room():
            super().__init__(**settings)
            return
        base_dir = tempfile.mkdtemp(prefix="atp-test-", dir=MEMORY)
        try:
            super().__init__(base_dir=base_dir, **settings)
        except BaseException:
            shutil.rmtree(base_dir, ignore_errors=True)
            raise
        self._use_tmpdir = True  # removed on stop, as testing.postgresql does with its own

    def initialize_database(self) -> None:
        user = pg_user()
        if user is not None:
            for path in (self.base_dir, *(Path(self.base_dir) / d for d in self.subdirectories)):
                os.chown(path, user.pw_uid, user.pw_gid)
        data = os.path.join(self.base_dir, "data")
        initdb = [self.initdb, "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "-k"]
        subprocess.run(
            [*as_user(pg_user()), *initdb, "--no-locale", "--lc-messages=C"],
            check=True,
            capture_output=True,
        )

    def get_server_commandline(self) -> list[str]:
        return [*as_user(pg_user()), *super().get_server_commandline()]


def url(cluster: Cluster, dbname: str, user: str = "postgres") -> str:
    return f"postgresql://{user}@127.0.0.1:{cluster.settings['port']}/{dbname}"


def migrate(database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "migrate", f"DATABASE_URL={database_url}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    # pg_stat_statements (every nested statement) and function counts: tests/test_write_path.py
    # counts what one call of the write path executes.
    settings = {
        "postgres_args": "-h 127.0.0.1 -F -c logging_collector=off -c max_connections=200"
        " -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
        " -c track_functions=all"
    }
    with Cluster(**settings) as pg:
        with psycopg.connect(url(pg, "postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE}")
        result = migrate(url(pg, TEMPLATE))
        assert result.returncode == 0, result.stdout + result.stderr
        with psycopg.connect(url(pg, TEMPLATE), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pgtap")
            conn.execute(TAP_SHARE)
        yield pg


@pytest.fixture(scope="module")
def api(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory):
    """The real server (`python app.py serve`) on a new database, one per test module, with the
    maintenance job off (it would only add noise). An http_fixtures.Api."""
    from http_fixtures import serve_fresh_database  # it imports this module

    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with serve_fresh_database(cluster, log_path, MAINTENANCE_INTERVAL="0") as api:
        yield api


@pytest.fixture
def database(cluster: Cluster) -> Iterator[str]:
    """The URL (as the superuser) of a new database holding the migrated ledger."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url(cluster, "postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    yield url(cluster, name)
    with psycopg.connect(url(cluster, "postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def dba(database: str) -> Iterator[psycopg.Connection]:
    """A superuser connection: what a DBA at a psql prompt has."""
    with psycopg.connect(database, autocommit=True) as conn:
        yield conn


@pytest.fixture
def app_url(database: str) -> str:
    """The same database, logged in as the application role atp_app."""
    return database.replace("postgresql://postgres@", "postgresql://atp_app@", 1)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
def make_key(dba: psycopg.Connection):
    """Creates an API key; returns (plaintext key, its SHA-256 hex, its id)."""

    def make(
        permissions: list[str], rate_limit: int = 100000, name: str = "test"
    ) -> tuple[str, str, str]:
        row = dba.execute(
            "SELECT api.create_api_key(%s, %s, %s, NULL)", (name, permissions, rate_limit)
        ).fetchone()
        assert row is not None
        created = row[0]
        return created["key"], key_hash(created["key"]), created["id"]

    return make
