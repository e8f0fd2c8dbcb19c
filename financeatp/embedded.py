"""The PostgreSQL cluster of `make run` when DATABASE_URL is unset: .pgdata/ in the checkout
(data/ is PGDATA; pgpass holds the generated passwords), listening on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from financeatp.pgcluster import LocalCluster, free_port, port_is_free

ROOT = Path(__file__).resolve().parent.parent


def say(message: str) -> None:
    print(f"financeATP: {message}", file=sys.stderr, flush=True)


class Embedded(LocalCluster):
    DATABASE = "financeatp"

    def __init__(self, checkout: Path) -> None:
        super().__init__(checkout / ".pgdata", fallback_tag="")
        self.passfile = self.home / "pgpass"
        if self.home != checkout / ".pgdata":
            assert self.user is not None
            say(f"user {self.user.pw_name} cannot reach {checkout}: data directory is {self.home}")

    def url(self, user: str, database: str = DATABASE) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSFILE": str(self.passfile)}

    def create(self) -> None:
        say(f"first start: creating the database cluster in {self.data}")
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        passwords = {"postgres": secrets.token_urlsafe(24), "atp_app": secrets.token_urlsafe(24)}
        self.passfile.write_text(
            "".join(f"127.0.0.1:*:*:{user}:{pw}\n" for user, pw in passwords.items())
        )
        self.passfile.chmod(0o600)
        pwfile = self.home / "initdb.pw"
        pwfile.write_text(passwords["postgres"] + "\n")
        try:
            self.initdb("--auth=scram-sha-256", f"--pwfile={pwfile}")
        finally:
            pwfile.unlink()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "''",
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
        }
        self.configure("financeATP (make run): local TCP only, durable writes.", settings)

    def choose_port(self) -> int:
        stored = self.home / "port"
        configured = os.environ.get("PGPORT")
        if configured:
            return int(configured)
        if stored.exists() and port_is_free(int(stored.read_text())):
            return int(stored.read_text())
        return free_port()

    def ensure_running(self) -> bool:
        """Starts the cluster (creating it first if needed); True if it was just created."""
        created = not self.initialized
        if created:
            self.create()
        port = self.running_port()
        if port is not None:
            self.port = port  # somebody else's server: theirs to stop
            return created
        self.start(self.choose_port())
        (self.home / "port").write_text(str(self.port))
        say(f"PostgreSQL is running on 127.0.0.1:{self.port} (data: {self.data})")
        say(f"psql: {self.psql_command()}")
        return created

    def psql_command(self) -> str:
        where = f"-h 127.0.0.1 -p {self.port}"
        return f"PGPASSFILE={self.passfile} psql {where} -U postgres {self.DATABASE}"

    def stop(self, mode: str = "fast") -> bool:
        if not self.running:
            return True
        stopped = super().stop(mode)
        say("PostgreSQL stopped" if stopped else "pg_ctl stop failed; stopped immediately")
        return stopped

    def admin(self, database: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(self.url("postgres", database), autocommit=True,
                               passfile=str(self.passfile))  # fmt: skip

    def prepare_database(self) -> None:
        with self.admin() as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [self.DATABASE]
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.DATABASE)))

    def set_app_password(self) -> None:
        """atp_app's login password (from pgpass), set after migrating: the role exists then."""
        password = self.password_literal("atp_app")
        with self.admin() as conn:
            conn.execute(sql.SQL("ALTER ROLE atp_app LOGIN PASSWORD {}").format(password))

    def password_literal(self, user: str) -> sql.Literal:
        for line in self.passfile.read_text().splitlines():
            if line.split(":")[3] == user:
                return sql.Literal(line.split(":", 4)[4])
        raise SystemExit(f"no password for {user} in {self.passfile}")


def stop_left_running() -> None:
    """`make stop`: stops the embedded cluster, which `make run` leaves running only when it was
    killed (SIGKILL) before it could stop it; the next `make run` would use it and leave it."""
    embedded = Embedded(ROOT)
    port = embedded.running_port() if embedded.initialized else None
    if port is None:
        say("the embedded PostgreSQL is not running")
        return
    embedded.port, embedded.running = port, True
    if not embedded.stop():
        raise SystemExit("pg_ctl stop failed; PostgreSQL was stopped immediately")


def migrate(database_url: str, env: Mapping[str, str]) -> None:
    """`make migrate` against database_url: migrations, then every file of sql/."""
    say("applying migrations and sql/")
    command = ["make", "--no-print-directory", "migrate", f"DATABASE_URL={database_url}"]
    result = subprocess.run(command, cwd=ROOT, env=dict(env), check=False, capture_output=True)
    if result.returncode != 0:
        sys.stderr.buffer.write(result.stdout + result.stderr)
        raise SystemExit("make migrate failed")
    say("migrations applied")


@contextlib.contextmanager
def embedded_database(migrate_always: bool) -> Iterator[Embedded]:
    """The embedded cluster, running, migrated and with its database; stopped again on exit
    if it was not running before."""
    embedded = Embedded(ROOT)
    try:
        created = embedded.ensure_running()
        embedded.prepare_database()
        if created or migrate_always:
            migrate(embedded.url("postgres"), embedded.env())
        embedded.set_app_password()
        yield embedded
    finally:
        embedded.stop()
