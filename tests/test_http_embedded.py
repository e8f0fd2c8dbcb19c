"""`make run` as a user runs it: from a clean copy of the checkout, with DATABASE_URL unset (the
embedded PostgreSQL in .pgdata/) or set; a real HTTP call; Ctrl-C (SIGINT to the foreground
process group) or a service manager's SIGTERM stops uvicorn and PostgreSQL cleanly. The copy
reuses this checkout's virtualenv (VENV=...) so that the test does not download every package
again."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from conftest import Cluster, url

from financeatp.embedded import Embedded
from financeatp.pgcluster import free_port

ROOT = Path(__file__).resolve().parent.parent
KEY = re.compile(r"sk_live_[0-9a-f]{64}")


@pytest.fixture
def checkout() -> Iterator[Path]:
    """The files a fresh clone would have (plus files not committed yet), in a directory that
    the postgres system user can reach when the tests run as root."""
    base = Path(tempfile.mkdtemp(prefix="atp-checkout-", dir="/tmp"))
    base.chmod(0o755)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        if (ROOT / name).is_file():
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, base / name)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def environment(**extra: str) -> dict[str, str]:
    """This environment without the database settings; VENV (which the Makefile reads from the
    environment too) is this checkout's, for the `make migrate` that `python app.py run` calls
    when no make started it: else that make would install a virtualenv into the copy."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PGPORT", "MAKEFLAGS")}
    return env | {"VENV": str(ROOT / ".venv")} | extra


def make(checkout: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    command = ["make", "--no-print-directory", *args, f"VENV={ROOT / '.venv'}"]
    return subprocess.run(
        command, cwd=checkout, env=environment(**env), capture_output=True, text=True, timeout=300
    )


class Running:
    """`make run` in its own process group, as a terminal would start it; or, with via_make=False,
    the command it runs (`python app.py run`), as a service manager would."""

    def __init__(self, checkout: Path, workers: int = 2, via_make: bool = True, **env: str) -> None:
        self.port = free_port()
        self.workers = workers
        self.output = checkout / "make-run.out"
        self.errors = checkout / "make-run.err"
        command = (
            ["make", "--no-print-directory", "run", f"VENV={ROOT / '.venv'}"]
            if via_make
            else [str(ROOT / ".venv" / "bin" / "python"), "app.py", "run"]
        )
        with self.output.open("wb") as out, self.errors.open("wb") as err:
            self.process = subprocess.Popen(
                command,
                cwd=checkout,
                env=environment(PORT=str(self.port), WORKERS=str(workers), **env),
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.output.read_text(errors="replace") + self.errors.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.text()
            # Every worker up: a Ctrl-C while one is still importing would show its traceback.
            booted = self.text().count("Application startup complete.") == self.workers
            try:
                if booted and httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"make run did not become ready:\n{self.text()}")

    def ctrl_c(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)


def create_user(base_url: str, key: str) -> httpx.Response:
    suffix = uuid.uuid4().hex[:8]
    body = {"user_id": str(uuid.uuid4()), "username": f"u_{suffix}", "email": f"{suffix}@ex.com"}
    headers = {"X-API-Key": key, "Idempotency-Key": str(uuid.uuid4())}
    return httpx.post(f"{base_url}/users", json=body, headers=headers, timeout=30)


def stopped_cleanly(output: str) -> None:
    assert "Traceback" not in output, output
    assert "PostgreSQL stopped" in output, output
    assert "Finished server process" in output, output


def test_make_run_embedded(checkout: Path) -> None:
    run = Running(checkout)
    data = checkout / ".pgdata" / "data"
    try:
        run.wait_ready()
        keys = KEY.findall(run.text())
        assert len(keys) == 1, run.text()  # the admin key, printed once on first start
        # ... to the terminal's standard error: standard output carries the JSON logs, which
        # log collectors keep.
        assert KEY.search(run.errors.read_text()), run.text()
        created = create_user(run.url, keys[0])
        assert created.status_code == 201, created.text
        # Keep-alive requests to the workers (that they answer without a Nagle wait is
        # tests/test_serving.py's to show, without a clock).
        with httpx.Client(base_url=run.url) as client:
            for _ in range(20):
                assert client.get("/healthz").status_code == 200

        port = int((checkout / ".pgdata" / "port").read_text())
        passfile = str(checkout / ".pgdata" / "pgpass")
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{port}/financeatp", passfile=passfile
        ) as conn:
            settings = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('data_checksums', 'fsync',"
                " 'synchronous_commit', 'full_page_writes', 'listen_addresses')"
            ).fetchall()
        assert dict(settings) == {
            "data_checksums": "on",
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "listen_addresses": "127.0.0.1",
        }
    finally:
        run.ctrl_c()
    output = run.text()
    stopped_cleanly(output)
    assert not (data / "postmaster.pid").exists()
    for line in output.splitlines():
        if line.startswith("{"):
            assert not KEY.search(line), line  # the key is in the banner, never in a log line
            assert json.loads(line)
    assert ".pgdata/" in (checkout / ".gitignore").read_text()

    # make api-key starts the stopped cluster for a moment, and stops it again.
    made = make(checkout, "api-key", "NAME=nextjs", "PERMISSIONS=read,write")
    assert made.returncode == 0, made.stdout + made.stderr
    assert KEY.fullmatch(made.stdout.strip().splitlines()[-1]), made.stdout
    assert not (data / "postmaster.pid").exists()

    # A second start migrates again and prints no new admin key. This time a service manager runs
    # `python app.py run` and stops it with SIGTERM. With one worker, uvicorn serves in that
    # process, shuts down gracefully and raises the signal again: the embedded PostgreSQL must be
    # stopped all the same, not left running without its server. (With several workers uvicorn's
    # supervisor takes SIGTERM itself and returns; this passed with WORKERS=2 too.)
    again = Running(checkout, workers=1, via_make=False)
    try:
        again.wait_ready()
        # The cluster's port is kept from one start to the next (the psql line README gives reads
        # it from .pgdata/port), though the last stop left connections to it in TIME_WAIT.
        assert int((checkout / ".pgdata" / "port").read_text()) == port, again.text()
        assert create_user(again.url, made.stdout.strip().splitlines()[-1]).status_code == 201
        assert not KEY.search(again.text())
        again.process.send_signal(signal.SIGTERM)
        assert again.process.wait(timeout=60) == 0, again.text()
    finally:
        if again.process.poll() is None:
            again.ctrl_c()
        left = data / "postmaster.pid"
        postmaster = int(left.read_text().split()[0]) if left.exists() else None
        if postmaster is not None:  # a failed stop: do not leave the cluster behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGQUIT)
    assert postmaster is None, again.text()
    stopped_cleanly(again.text())

    # Killed with SIGKILL, `python app.py run` cannot stop PostgreSQL: make stop does, once.
    killed = Running(checkout, workers=1, via_make=False)
    try:
        killed.wait_ready()
        assert f"psql: PGPASSFILE={checkout / '.pgdata' / 'pgpass'} psql" in killed.text()
    finally:
        os.killpg(killed.process.pid, signal.SIGKILL)
        killed.process.wait()
    assert (data / "postmaster.pid").exists(), killed.text()
    stopped = make(checkout, "stop")
    assert stopped.returncode == 0 and "PostgreSQL stopped" in stopped.stderr, stopped.stderr
    assert not (data / "postmaster.pid").exists()
    again_stopped = make(checkout, "stop")
    assert again_stopped.returncode == 0, again_stopped.stderr
    assert "not running" in again_stopped.stderr


def test_make_run_with_database_url(checkout: Path, cluster: Cluster) -> None:
    """With DATABASE_URL set, make run migrates that (empty) database and serves it."""
    name = f"r_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url(cluster, "postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    database_url = url(cluster, name)
    run = Running(checkout, DATABASE_URL=database_url)
    try:
        run.wait_ready()
        with psycopg.connect(database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT api.create_api_key('t', ARRAY['write'], 100, NULL)"
            ).fetchone()
        assert row is not None
        assert create_user(run.url, row[0]["key"]).status_code == 201
    finally:
        run.ctrl_c()
        with psycopg.connect(url(cluster, "postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
    assert "Traceback" not in run.text()
    assert "migrations applied" in run.text() and not (checkout / ".pgdata").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to another user")
def test_data_directory_where_postgres_can_reach_it(checkout: Path, tmp_path: Path) -> None:
    """As root, PostgreSQL runs as the postgres user: .pgdata/ in the checkout when that user
    can reach it, otherwise a directory under /var/tmp (named after the checkout)."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert Embedded(checkout).home == checkout / ".pgdata"
    fallback = Embedded(private).home
    assert str(fallback.parent) == "/var/tmp"  # noqa: S108
    assert fallback.name.startswith("financeatp-")
    assert Embedded(private).home == fallback  # the same checkout, the same place
