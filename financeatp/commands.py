"""The commands of app.py (the Makefile calls them):

python app.py run       make run: migrate and serve (embedded PostgreSQL without DATABASE_URL)
python app.py serve     serve DATABASE_URL as it is (no migration)
python app.py migrate   make migrate without DATABASE_URL: the embedded database
python app.py api-key   make api-key: create an API key and print it once
python app.py stop      make stop: stop the embedded PostgreSQL a killed `make run` left running
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

import psycopg

from financeatp.embedded import Embedded, embedded_database, migrate, say, stop_left_running
from financeatp.serving import default_workers, exit_on_sigterm, serve


def create_key(
    conn: psycopg.Connection[Any], name: str, permissions: list[str], rate: int, expires: str | None
) -> dict[str, Any]:
    row = conn.execute(
        "SELECT api.create_api_key(name => %s, permissions => %s, rate_limit_per_minute => %s,"
        " expires_at => %s)",
        [name, permissions, rate, expires],
    ).fetchone()
    assert row is not None
    return dict(row[0])


def announce_admin_key(embedded: Embedded) -> None:
    marker = embedded.home / "admin-key-issued"
    if marker.exists():
        return
    rate = int(os.environ.get("ADMIN_RATE_LIMIT", "10000"))
    with psycopg.connect(embedded.url("postgres"), passfile=str(embedded.passfile)) as conn:
        created = create_key(conn, "admin (make run)", ["admin"], rate, None)
        conn.commit()
    marker.touch()
    print(
        "\n  First start: an admin API key (shown once; it is not stored anywhere):\n\n"
        f"    X-API-Key: {created['key']}\n\n"
        "  More keys: make api-key NAME=nextjs PERMISSIONS=read,write\n",
        file=sys.stderr,  # the terminal's, not standard output, where the JSON logs go
        flush=True,
    )


def command_run(args: argparse.Namespace) -> None:
    if os.environ.get("DATABASE_URL"):
        migrate(os.environ["DATABASE_URL"], os.environ)
        with contextlib.suppress(KeyboardInterrupt):
            serve(args.host, args.port, args.workers)
        return
    with embedded_database(migrate_always=True) as embedded:
        announce_admin_key(embedded)
        os.environ.update(DATABASE_URL=embedded.url("atp_app"), PGPASSFILE=str(embedded.passfile))
        say(f"serving http://{args.host}:{args.port} with {args.workers} worker(s); Ctrl-C stops")
        with contextlib.suppress(KeyboardInterrupt):
            serve(args.host, args.port, args.workers)


def command_migrate(args: argparse.Namespace) -> None:
    with embedded_database(migrate_always=True):
        pass


def command_serve(args: argparse.Namespace) -> None:
    if not os.environ.get("DATABASE_URL"):  # fail here, with the message, not in every worker
        raise SystemExit("DATABASE_URL is not set (postgresql://user@host:port/dbname)")
    serve(args.host, args.port, args.workers)


def command_api_key(args: argparse.Namespace) -> None:
    permissions = [p.strip() for p in args.permissions.split(",") if p.strip()]
    if os.environ.get("DATABASE_URL"):
        with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
            created = create_key(conn, args.name, permissions, args.rate_limit, args.expires_at)
    else:
        with (
            embedded_database(migrate_always=False) as embedded,
            psycopg.connect(embedded.url("postgres"), passfile=str(embedded.passfile)) as conn,
        ):
            created = create_key(conn, args.name, permissions, args.rate_limit, args.expires_at)
    details = ", ".join(f"{k}={created[k]}" for k in ("id", "name", "permissions", "expires_at"))
    say(f"created API key ({details}, rate_limit_per_minute={created['rate_limit_per_minute']})")
    print(created["key"], flush=True)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app.py", description="financeATP over HTTP")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler in (("run", command_run), ("serve", command_serve)):
        command = commands.add_parser(name)
        command.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1")
        command.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
        command.add_argument(
            "--workers", type=int, default=int(os.environ.get("WORKERS") or default_workers())
        )
        command.set_defaults(handler=handler)
    key = commands.add_parser("api-key")
    key.add_argument("--name", required=True)
    key.add_argument("--permissions", default="read")
    key.add_argument("--rate-limit", type=int, default=1000)
    key.add_argument("--expires-at", default=None, help="RFC 3339; never when absent")
    key.set_defaults(handler=command_api_key)
    commands.add_parser("migrate").set_defaults(handler=command_migrate)
    commands.add_parser("stop").set_defaults(handler=lambda args: stop_left_running())
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    exit_on_sigterm()  # from here on, a stop releases the embedded database too
    try:
        args.handler(args)
    except psycopg.Error as exc:
        raise SystemExit(f"financeATP: {exc.diag.message_primary or exc}") from None
