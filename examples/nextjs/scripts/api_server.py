"""The real financeATP API on a temporary PostgreSQL cluster, for the Next.js example's tests
and for regenerating its TypeScript types.

    .venv/bin/python examples/nextjs/scripts/api_server.py

It starts a throw-away cluster (the one the Python tests use), migrates a database with
`make migrate`, creates API keys (the Next.js service's read,write key, an admin key for the
test's setup, a key limited to one request a minute), starts `python app.py serve` on a free
port, and prints one JSON line:

    {"url": "http://127.0.0.1:PORT", "key": "sk_live_...", "admin_key": "...", "limited_key": "...",
     "log": "/tmp/.../api.log"}

It then runs until its standard input closes or it gets SIGTERM/SIGINT, and removes everything.
The helpers come from tests/ (conftest.py, http_fixtures.py) by import, so this stays as small
as the way the HTTP tests start the server.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))

import psycopg  # noqa: E402
from conftest import Cluster, migrate, url  # noqa: E402
from http_fixtures import start_server  # noqa: E402

DATABASE = "atp_nextjs"


def create_key(database_url: str, name: str, permissions: list[str], rate_limit: int) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT api.create_api_key(%s, %s, %s, NULL) ->> 'key'", (name, permissions, rate_limit)
        ).fetchone()
    assert row is not None
    return str(row[0])


def main() -> None:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    settings = {"postgres_args": "-h 127.0.0.1 -F -c logging_collector=off"}
    with Cluster(**settings) as cluster, tempfile.TemporaryDirectory() as scratch:
        with psycopg.connect(url(cluster, "postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        result = migrate(url(cluster, DATABASE))
        if result.returncode != 0:
            sys.exit(f"make migrate failed:\n{result.stdout}{result.stderr}")
        superuser = url(cluster, DATABASE)
        keys = {
            "key": create_key(superuser, "nextjs", ["read", "write"], 6000),
            "admin_key": create_key(superuser, "nextjs-test-admin", ["admin"], 6000),
            # one request a minute: the browser test's real 429
            "limited_key": create_key(superuser, "nextjs-test-limited", ["read", "write"], 1),
        }
        log_path = Path(scratch) / "api.log"
        server = start_server(url(cluster, DATABASE, "atp_app"), log_path)
        try:
            print(json.dumps({"url": server.url, **keys, "log": str(log_path)}), flush=True)
            # Ends when the parent closes our stdin (or dies) or sends a signal.
            threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
            stop.wait()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
