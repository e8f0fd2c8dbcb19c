"""The real financeATP server for the HTTP tests: `python app.py serve` (uvicorn) in a subprocess,
over its own fresh copy of the migrated template, logged in as atp_app. Its stdout, the JSON log
lines, goes to a file that tests search."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from conftest import TEMPLATE, Cluster, key_hash, url

from financeatp.pgcluster import free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Server:
    url: str
    log_path: Path
    process: subprocess.Popen[bytes]
    keys: list[str] = field(default_factory=list)  # every key issued or sent in the tests

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_entries(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_text().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries

    def access_log(self, correlation_id: str) -> dict[str, Any]:
        """The request's log line, written just after its response was sent."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for entry in self.log_entries():
                if entry.get("logger") == "financeatp.access":
                    if entry.get("correlation_id") == correlation_id:
                        return entry
            time.sleep(0.05)
        raise AssertionError(f"no access log line for {correlation_id}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def read_answer(conn: socket.socket) -> bytes:
    """An HTTP answer's head and body from a socket, read until its Content-Length is complete
    or the server closes."""
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length: *([0-9]+)", head)
        if length and len(body) >= int(length.group(1)):
            break
    return answer


def start_server(database_url: str, log_path: Path, **env: str) -> Server:
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": "1",
        **env,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "app.py", "serve"],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", log_path, process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{server.log_text()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"the server did not start:\n{server.log_text()}")


def fresh_database(cluster: Cluster) -> str:
    name = f"h_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url(cluster, "postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    return name


def drop_database(cluster: Cluster, name: str) -> None:
    with psycopg.connect(url(cluster, "postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@dataclass
class Api:
    """A running server, its database (as the superuser), and helpers to call it."""

    server: Server
    dba: psycopg.Connection[Any]
    cluster: Cluster
    database: str
    client: httpx.Client

    def key(
        self,
        permissions: list[str],
        rate_limit: int = 100000,
        name: str = "http-test",
        expires_at: Any = None,
    ) -> str:
        row = self.dba.execute(
            "SELECT api.create_api_key(%s, %s, %s, %s)", (name, permissions, rate_limit, expires_at)
        ).fetchone()
        assert row is not None
        created = row[0]
        self.server.keys.append(created["key"])
        return str(created["key"])

    def key_id(self, key: str) -> str:
        row = self.dba.execute("SELECT api.describe_api_key(%s)", [key_hash(key)]).fetchone()
        assert row is not None
        return str(row[0]["api_key_id"])

    def request(
        self,
        method: str,
        path: str,
        key: str | None,
        body: Any = None,
        *,
        idempotency_key: str | None = None,
        acting_user: str | None = None,
        correlation_id: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        sent: dict[str, str] = {}
        if key is not None:
            sent["X-API-Key"] = key
        if method in ("POST", "PATCH", "DELETE"):
            sent["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        if acting_user is not None:
            sent["X-Request-User-Id"] = acting_user
        if correlation_id is not None:
            sent["X-Correlation-Id"] = correlation_id
        sent |= headers or {}
        if body is not None and "content" not in kwargs:
            kwargs["json"] = body
        return self.client.request(method, path, headers=sent, **kwargs)

    def new_user(self, key: str, **fields: Any) -> dict[str, Any]:
        suffix = uuid.uuid4().hex[:10]
        body = {
            "user_id": str(uuid.uuid4()),
            "username": f"user_{suffix}",
            "email": f"user_{suffix}@example.com",
            "display_name": f"User {suffix}",
        } | fields
        response = self.request("POST", "/users", key, body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def mint(self, key: str, user_id: str, amount: str) -> httpx.Response:
        response = self.request(
            "POST", "/admin/mint", key, {"to_user_id": user_id, "amount": amount, "reason": "test"}
        )
        assert response.status_code == 201, response.text
        return response

    def balance(self, key: str, user_id: str) -> str:
        response = self.request("GET", f"/users/{user_id}/balance", key)
        assert response.status_code == 200, response.text
        return str(response.json()["balance"])


@contextlib.contextmanager
def serve_fresh_database(cluster: Cluster, log_path: Path, **env: str) -> Iterator[Api]:
    """A server on a database of its own; every statement and its parameters go to the
    cluster's log, where the raw key must never be found."""
    name = fresh_database(cluster)
    with psycopg.connect(url(cluster, "postgres"), autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {name} SET log_statement = 'all'")
    server = start_server(url(cluster, name, "atp_app"), log_path, **env)
    try:
        with (
            psycopg.connect(url(cluster, name), autocommit=True) as dba,
            httpx.Client(base_url=server.url, timeout=30) as client,
        ):
            yield Api(server, dba, cluster, name, client)
    finally:
        server.stop()
        drop_database(cluster, name)


def cluster_log(cluster: Cluster) -> str:
    return (Path(cluster.base_dir) / f"{cluster.name}.log").read_text(errors="replace")
