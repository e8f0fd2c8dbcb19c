"""make faults: a Jepsen-style bank workload against the real server and the real PostgreSQL,
with processes killed under it (README.md, "Faults survived"; bench/README.md, "Faults").

One temporary cluster (data checksums on, log_statement = all), its postmaster a child of this
process; `python app.py serve` with several uvicorn workers, logged in through a small TCP proxy
that this process runs between the server and PostgreSQL. The proxy reads PostgreSQL's answers:
when a transfer's result has come back and the transaction is committed (ReadyForQuery, idle),
it can hold that answer and SIGKILL the server worker that was waiting for it, so the fault
between the database's commit and the HTTP response is hit on purpose, not by luck.

Load: FAULTS_WRITERS (16) writers make transfers among FAULTS_USERS (6) users funded by a mint;
each retries its request with the same Idempotency-Key until it gets a definite answer (201 or
a 4xx other than 429) and records it. Readers check, on every read, that the total is exact and
no balance is negative: one in a single SQL statement (the only consistent cut of all wallets;
the HTTP API has no multi-account read), one over HTTP per wallet; a third follows the event
feed. Faults, each FAULTS_ROUNDS (3) times, in random order: the postmaster SIGKILLed and
restarted; a random server worker SIGKILLed; a worker SIGKILLed after its transfer committed
and before it answered; the server's database connection cut after a commit; the whole cluster
paused with SIGSTOP for longer than the clients' timeout, then SIGCONT.

Then: every acknowledged transfer exists once (GET /transfers/{id}, and in the journal); every
transfer in the journal is one of the requests sent, and no idempotency key moved money twice;
balances equal the acknowledged transfers (plus those of requests that were never answered);
total exact, none negative; api.verify_projections(), api.seal_audit() then
api.verify_audit_chain(); the event feed from the start, and the feed followed during the run,
each hold every committed event once and nothing else. Then secrets (no API key in the server's
log, PostgreSQL's log with log_statement = all, or a pg_dump) and data checksums (a byte
flipped in a stopped copy of ledger.balances is reported by pg_checksums and by a read).

Prints a table of faults and checks; exits 1 when a check fails.
Environment: FAULTS_ROUNDS, FAULTS_WRITERS, FAULTS_USERS, FAULTS_WORKERS (2), FAULTS_APP (the
app.py to serve: a patched copy shows that the drill fails, bench/README.md), FAULTS_KEEP=1
(keep the temporary directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg

from financeatp.pgcluster import as_user, free_port, pg_bindir, pg_user

ROOT = Path(__file__).resolve().parent.parent
APP = Path(os.environ.get("FAULTS_APP", ROOT / "app.py")).resolve()
ROUNDS = int(os.environ.get("FAULTS_ROUNDS", "3"))
WRITERS = int(os.environ.get("FAULTS_WRITERS", "16"))
USERS = int(os.environ.get("FAULTS_USERS", "6"))
WORKERS = int(os.environ.get("FAULTS_WORKERS", "2"))
KEEP = os.environ.get("FAULTS_KEEP") == "1"
SEED = int(os.environ.get("FAULTS_SEED", str(random.randrange(1 << 30))))  # noqa: S311
FUNDING = Decimal("1000.00")
CLIENT_TIMEOUT = 2.5  # seconds; the pause lasts longer
PAUSE_SECONDS = 6.0
ANSWER_DEADLINE = 90.0  # after the load stops, how long a request may still retry
CENT = Decimal("0.00000001")

rng = random.Random(SEED)  # noqa: S311  (a workload, not a secret)


def say(message: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- processes -----------------------------------------------------------------------------


def become_subreaper() -> None:
    """Backends orphaned by a killed postmaster are re-parented to us, and reaped here: nothing
    else on this machine reaps orphans, and a zombie keeps its pid (and postmaster.pid) alive."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                found += [int(p) for p in text.split()]
    return found


def process_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def reap(pids: list[int], timeout: float) -> list[int]:
    """Waits for these processes to end and reaps those that are ours; returns the survivors."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            state = process_state(pid)
            if state is None or state in ("Z", "X"):
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
                if process_state(pid) is None or state == "X":
                    alive.remove(pid)
        time.sleep(0.05)
    return alive


def give_to_pg(path: Path) -> None:
    user = pg_user()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


class Postgres:
    """A cluster whose postmaster is a child of this process, so that it can be SIGKILLed,
    reaped and started again."""

    def __init__(self, base: Path, data: Path, port: int, log: Path) -> None:
        self.bindir = pg_bindir()
        self.base = base
        self.data = data
        self.port = port
        self.log = log
        self.sockets = base / f"sock-{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def initdb(self) -> None:
        self.data.mkdir(parents=True)
        give_to_pg(self.data)
        command = [
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--lc-messages=C",
            "--data-checksums",
        ]
        subprocess.run([*as_user(pg_user()), *command], check=True, capture_output=True)

    def url(self, database: str = "atp", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def start(self, *settings: str) -> None:
        self.sockets.mkdir(exist_ok=True)
        give_to_pg(self.sockets)
        for stale in (self.data / "postmaster.pid", self.sockets / f".s.PGSQL.{self.port}.lock"):
            stale.unlink(missing_ok=True)  # only ever called with no postmaster of ours alive
        command = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self.sockets),
            "-c",
            "max_connections=100",
            "-c",
            "log_line_prefix=%m [%p] ",
            "-c",
            "log_statement=all",
            *settings,
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([*as_user(pg_user()), *command], stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log.read_text()[-2000:]}")
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise RuntimeError("postgres did not start")

    def pids(self) -> list[int]:
        if self.process is None or self.process.poll() is not None:
            return []
        return [self.process.pid, *children(self.process.pid)]

    def sigkill(self) -> None:
        """SIGKILL to the postmaster alone, as the OOM killer would; its orphaned backends end
        when they notice (or when the proxy closes their connections)."""
        assert self.process is not None
        orphans = children(self.process.pid)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        left = reap(orphans, timeout=30)
        for pid in left:  # still running after 30 s: a crash takes them too
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        reap(left, timeout=10)

    def signal_all(self, signum: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signum)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        orphans = children(self.process.pid)
        self.process.send_signal(signal.SIGINT)  # fast shutdown, with a checkpoint
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        reap(orphans, timeout=10)


# --- the proxy between the server and PostgreSQL -------------------------------------------


def socket_owner(port: int, candidates: list[int]) -> int | None:
    """The process (among candidates) holding the local TCP socket 127.0.0.1:port."""
    wanted = f"0100007F:{port:04X}"
    inode = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            if parts[1] == wanted:
                inode = parts[9]
                break
    if not inode:
        return None
    target = f"socket:[{inode}]"
    for pid in candidates:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
    return None


class Proxy:
    """TCP between the server and PostgreSQL. It frames PostgreSQL's messages to the server and,
    when asked (arm), holds the answer of the next committed, not replayed transfer and then
    either SIGKILLs the worker waiting for it ("kill") or just closes its connection ("cut")."""

    def __init__(self, upstream_port: int, workers: Any) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.workers = workers  # callable: the server's worker pids
        self.lock = threading.Lock()
        self.armed: str | None = None
        self.done = threading.Event()
        self.hit: dict[str, Any] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        ready = time.monotonic() + 10
        while not getattr(self, "server", None) and time.monotonic() < ready:
            time.sleep(0.01)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port)
        )
        self.loop.run_forever()

    def arm(self, action: str) -> None:
        with self.lock:
            self.done.clear()
            self.hit = {}
            self.armed = action

    def disarm(self) -> None:
        with self.lock:
            self.armed = None

    def _take(self) -> str | None:
        with self.lock:
            action, self.armed = self.armed, None
            return action

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        peer_port = writer.get_extra_info("peername")[1]

        async def upstream() -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while chunk := await reader.read(65536):
                    up_writer.write(chunk)
                    await up_writer.drain()
            up_writer.close()

        async def downstream() -> None:
            buffer = bytearray()
            held: list[bytes] = []
            body = b""
            try:
                while chunk := await up_reader.read(65536):
                    buffer += chunk
                    out: list[bytes] = []
                    while len(buffer) >= 5:
                        length = int.from_bytes(buffer[1:5], "big")
                        if len(buffer) < 1 + length:
                            break
                        message = bytes(buffer[: 1 + length])
                        del buffer[: 1 + length]
                        if held:
                            held.append(message)
                            if message[:1] == b"Z" and message[5:6] == b"I":  # committed
                                action = self._take()
                                if action is not None:
                                    self._fault(action, peer_port, body)
                                    writer.close()
                                    up_writer.close()
                                    return
                                out += held
                                held = []
                            continue
                        if message[:1] == b"D" and self.armed and (body := transfer_row(message)):
                            held = [message]
                            continue
                        out.append(message)
                    if out:
                        writer.write(b"".join(out))
                        await writer.drain()
            except (OSError, ConnectionError):
                pass
            writer.close()

        await asyncio.gather(upstream(), downstream())

    def _fault(self, action: str, peer_port: int, body: bytes) -> None:
        worker = socket_owner(peer_port, self.workers()) if action == "kill" else None
        if worker is not None:
            os.kill(worker, signal.SIGKILL)
        self.hit = {
            "action": action,
            "worker": worker,
            "transfer_id": json.loads(body)["transfer_id"],
        }
        self.done.set()


def transfer_row(message: bytes) -> bytes | None:
    """The body of a DataRow (status, body, replayed) = ('201', {...transfer_id...}, 'f')."""
    if int.from_bytes(message[5:7], "big") != 3:
        return None
    columns, at = [], 7
    for _ in range(3):
        size = int.from_bytes(message[at : at + 4], "big", signed=True)
        at += 4
        columns.append(message[at : at + max(size, 0)])
        at += max(size, 0)
    status, body, replayed = columns
    if status == b"201" and replayed == b"f" and b'"transfer_id"' in body:
        return body
    return None


# --- the server ----------------------------------------------------------------------------


class Server:
    def __init__(self, database_url: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WORKERS": str(WORKERS),
            "POOL_TIMEOUT": "2",
        }
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(APP), "serve"],
                cwd=APP.parent,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready(60)

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return True
            time.sleep(0.1)
        return False

    def workers(self) -> list[int]:
        return children(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- the workload --------------------------------------------------------------------------


@dataclass
class Request:
    key: str
    sender: str
    receiver: str
    amount: Decimal
    attempts: int = 0
    statuses: list[str] = field(default_factory=list)
    outcome: str = "pending"  # ack, rejected, indeterminate
    transfer_id: str | None = None
    replayed: bool = False
    error: str | None = None


class Drill:
    def __init__(self, server: Server, admin_key: str, write_key: str, users: list[str]) -> None:
        self.server = server
        self.admin_key = admin_key
        self.write_key = write_key
        self.users = users
        self.total = FUNDING * len(users)
        self.requests: list[Request] = []
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.stop_load = threading.Event()
        self.reads = Counter()
        self.feed_ids: list[int] = []
        self.feed_cursor = "0-0"

    def fail(self, message: str) -> None:
        with self.lock:
            if len(self.failures) < 200:
                self.failures.append(message)
        say(f"FAILURE: {message}")

    def writer(self, number: int) -> None:
        local = random.Random(SEED * 100 + number)  # noqa: S311
        with httpx.Client(base_url=self.server.url, timeout=CLIENT_TIMEOUT) as client:
            while not self.stop_load.is_set():
                sender, receiver = local.sample(self.users, 2)
                amount = Decimal(local.randint(1, 30000)) / 100
                request = Request(str(uuid.uuid4()), sender, receiver, amount)
                with self.lock:
                    self.requests.append(request)
                self.send(client, request, local)

    def send(self, client: httpx.Client, request: Request, local: random.Random) -> None:
        """The same request, with the same Idempotency-Key, until a definite answer."""
        body = {
            "from_user_id": request.sender,
            "to_user_id": request.receiver,
            "amount": str(request.amount),
            "memo": "faults",
        }
        headers = {
            "X-API-Key": self.write_key,
            "Idempotency-Key": request.key,
            "X-Request-User-Id": request.sender,
            "X-Correlation-Id": f"faults-{request.key}",
        }
        deadline = None
        while True:
            if deadline is None and self.stop_load.is_set():
                deadline = time.monotonic() + ANSWER_DEADLINE
            if deadline is not None and time.monotonic() > deadline:
                request.outcome = "indeterminate"
                return
            request.attempts += 1
            try:
                response = client.post("/transfers", json=body, headers=headers)
            except httpx.HTTPError as exc:
                request.statuses.append(type(exc).__name__)
                time.sleep(local.uniform(0.05, 0.3))
                continue
            request.statuses.append(str(response.status_code))
            if response.status_code == 500:
                self.fail(f"500 for transfer {request.key}: {response.text[:200]}")
            if response.status_code == 429 or response.status_code >= 500:
                time.sleep(local.uniform(0.05, 0.3))
                continue
            answer = response.json()
            replayed = response.headers.get("idempotent-replayed") == "true"
            if response.status_code == 201:
                request.outcome, request.transfer_id = "ack", answer["transfer_id"]
                request.replayed = replayed
                if Decimal(answer["amount"]) != request.amount:
                    self.fail(f"transfer {request.key} acknowledged with amount {answer['amount']}")
            elif response.status_code == 400 and answer.get("error") == "insufficient_balance":
                request.outcome = "rejected"
            else:  # 409 idempotency_conflict for the same request is a bug, like anything else
                request.outcome = "rejected"
                request.error = f"{response.status_code} {answer.get('error')}"
                self.fail(f"transfer {request.key}: {response.status_code} {response.text[:200]}")
            return

    def db_reader(self, url: str) -> None:
        """The whole bank in one statement: one snapshot of every wallet."""
        query = """SELECT count(*), sum(b.balance), min(b.balance)
                     FROM ledger.balances b JOIN ledger.accounts a ON a.id = b.account_id
                    WHERE a.user_id = ANY(%s::uuid[]) AND a.account_type = 'user_wallet'"""
        conn = None
        while not self.stop_load.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(url, autocommit=True, connect_timeout=2)
                    conn.execute("SET statement_timeout = '3s'")
                count, total, lowest = conn.execute(query, [self.users]).fetchone()
            except psycopg.Error:
                with contextlib.suppress(Exception):
                    conn.close()  # type: ignore[union-attr]
                conn = None
                time.sleep(0.2)
                continue
            self.reads["sql snapshot"] += 1
            if count != len(self.users) or total != self.total or lowest < 0:
                self.fail(f"snapshot read: {count} wallets, total {total}, lowest {lowest}")
            time.sleep(0.02)
        if conn is not None:
            conn.close()

    def http_reader(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=CLIENT_TIMEOUT) as client:
            while not self.stop_load.is_set():
                user = rng.choice(self.users)
                try:
                    response = client.get(
                        f"/users/{user}/balance", headers={"X-API-Key": self.write_key}
                    )
                except httpx.HTTPError:
                    time.sleep(0.1)
                    continue
                if response.status_code != 200:
                    if response.status_code == 500:
                        self.fail(f"500 on a balance read: {response.text[:200]}")
                    time.sleep(0.1)
                    continue
                self.reads["http balance"] += 1
                balance = Decimal(response.json()["balance"])
                if balance < 0 or balance > self.total:
                    self.fail(f"balance read of {user}: {balance}")
                time.sleep(0.02)

    def follow_feed(self, client: httpx.Client, cursor: str, seen: list[int]) -> tuple[str, bool]:
        """One page of the feed; (next cursor, whether the page was full)."""
        response = client.get(
            "/admin/events",
            params={"after": cursor, "limit": 1000},
            headers={"X-API-Key": self.admin_key},
        )
        if response.status_code == 500:
            self.fail(f"500 on the feed: {response.text[:200]}")
        response.raise_for_status()
        page = response.json()
        seen.extend(int(event["id"]) for event in page["events"])
        return page["next_cursor"], len(page["events"]) == 1000

    def feed_reader(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=CLIENT_TIMEOUT) as client:
            while not self.stop_load.is_set():
                try:
                    self.feed_cursor, _ = self.follow_feed(client, self.feed_cursor, self.feed_ids)
                    self.reads["event feed page"] += 1
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)


# --- faults --------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    injected: int = 0
    recovered: int = 0
    notes: list[str] = field(default_factory=list)


FAULT_NAMES = {
    "postmaster": "postmaster SIGKILL, restart",
    "worker": "server worker SIGKILL (random moment)",
    "commit-window": "worker SIGKILL after commit, before response",
    "connection-cut": "db connection cut after commit",
    "pause": f"cluster SIGSTOP {PAUSE_SECONDS:.0f} s, SIGCONT",
}


def inject(kind: str, fault: Fault, pg: Postgres, server: Server, proxy: Proxy) -> None:
    if kind == "postmaster":
        pg.sigkill()
        time.sleep(rng.uniform(0.2, 1.5))
        pg.start()
    elif kind == "worker":
        time.sleep(rng.uniform(0, 1))
        workers = server.workers()
        if not workers:
            fault.notes.append("no worker to kill")
            return
        os.kill(rng.choice(workers), signal.SIGKILL)
    elif kind in ("commit-window", "connection-cut"):
        proxy.arm("kill" if kind == "commit-window" else "cut")
        if not proxy.done.wait(15):
            proxy.disarm()
            fault.notes.append("no committed transfer came by in 15 s")
            return
        fault.notes.append(proxy.hit["transfer_id"])
    elif kind == "pause":
        pg.signal_all(signal.SIGSTOP)
        time.sleep(PAUSE_SECONDS)
        pg.signal_all(signal.SIGCONT)
    fault.injected += 1
    if server.wait_ready(60):
        fault.recovered += 1


# --- checks --------------------------------------------------------------------------------


class Checks:
    def __init__(self) -> None:
        self.rows: list[tuple[str, bool, str]] = []

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.rows.append((name, ok, detail))
        say(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.rows)


JOURNAL_TRANSFERS = """
SELECT e.journal_id::text, a.user_id::text, e.counterparty_user_id::text, e.amount,
       ev.correlation_id
  FROM ledger.ledger_entries e
  JOIN ledger.accounts a ON a.id = e.account_id
  JOIN ledger.events ev ON ev.id = e.event_id
 WHERE e.kind = 'transfer_out'
"""


def final_checks(drill: Drill, pg: Postgres, faults: dict[str, Fault], checks: Checks) -> None:
    requests = drill.requests
    by_key = {r.key: r for r in requests}
    outcomes = Counter(r.outcome for r in requests)
    checks.add(
        "every request got a definite answer",
        outcomes["indeterminate"] == 0 and outcomes["pending"] == 0,
        dict(outcomes).__repr__(),
    )
    acked = [r for r in requests if r.outcome == "ack"]
    checks.add(
        "no 500, no unexpected status",
        not drill.failures,
        f"{len(drill.failures)} failures"
        + (f", first: {drill.failures[0]}" if drill.failures else ""),
    )

    with httpx.Client(
        base_url=drill.server.url, timeout=30, limits=httpx.Limits(max_connections=8)
    ) as client:

        def lookup(r: Request) -> str | None:
            response = client.get(
                f"/transfers/{r.transfer_id}", headers={"X-API-Key": drill.write_key}
            )
            body = response.json() if response.status_code == 200 else {}
            if (
                response.status_code != 200
                or body.get("from_user_id") != r.sender
                or body.get("to_user_id") != r.receiver
                or Decimal(body["amount"]) != r.amount
            ):
                return f"{r.transfer_id}: {response.status_code} {response.text[:120]}"
            return None

        with ThreadPoolExecutor(8) as pool:
            wrong = [w for w in pool.map(lookup, acked) if w is not None]
        checks.add(
            "every acknowledged transfer: GET /transfers/{id} matches",
            not wrong,
            f"{len(acked)} acknowledged" + (f"; wrong: {wrong[:3]}" if wrong else ""),
        )

        with psycopg.connect(pg.url(), autocommit=True) as db:
            rows = db.execute(JOURNAL_TRANSFERS).fetchall()
        per_journal = Counter(row[0] for row in rows)
        dupes = [j for j, n in per_journal.items() if n != 1]
        missing = [r.transfer_id for r in acked if per_journal.get(r.transfer_id) != 1]
        checks.add(
            "every acknowledged transfer is in the journal exactly once",
            not dupes and not missing,
            f"{len(rows)} transfers in the journal"
            + (f"; missing {missing[:3]}, doubled {dupes[:3]}" if missing or dupes else ""),
        )

        per_key: dict[str, list[tuple[Any, ...]]] = {}
        strangers = []
        for journal, sender, receiver, amount, correlation in rows:
            key = (correlation or "").removeprefix("faults-")
            request = by_key.get(key)
            if request is None or (sender, receiver, amount) != (
                request.sender,
                request.receiver,
                request.amount,
            ):
                strangers.append(journal)
                continue
            per_key.setdefault(key, []).append(journal)
        twice = {k: v for k, v in per_key.items() if len(v) > 1}
        mismatched = [
            k
            for k, v in per_key.items()
            if by_key[k].outcome == "ack" and v != [by_key[k].transfer_id]
        ]
        rejected_moved = [k for k in per_key if by_key[k].outcome == "rejected"]
        checks.add(
            "no idempotency key moved money twice (journal by correlation id)",
            not twice and not strangers and not mismatched and not rejected_moved,
            f"{len(per_key)} keys moved money once"
            + (
                f"; twice: {list(twice.items())[:2]}, unknown transfers: {strangers[:3]}, "
                f"ack mismatch: {mismatched[:3]}, rejected yet moved: {rejected_moved[:3]}"
                if twice or strangers or mismatched or rejected_moved
                else ""
            ),
        )

        # What the clients were told, not what the journal holds: each acknowledged request
        # moved its amount once; an unanswered one may have moved it once (the journal says).
        expected = dict.fromkeys(drill.users, FUNDING)
        unanswered_moved = 0
        for r in requests:
            if r.outcome == "ack" or (r.outcome == "indeterminate" and r.key in per_key):
                expected[r.sender] -= r.amount
                expected[r.receiver] += r.amount
                unanswered_moved += r.outcome == "indeterminate"
        balances = {}
        for user in drill.users:
            response = client.get(f"/users/{user}/balance", headers={"X-API-Key": drill.write_key})
            balances[user] = Decimal(response.json()["balance"])
        off = {u: (balances[u], expected[u]) for u in drill.users if balances[u] != expected[u]}
        checks.add(
            "balances = funding + acknowledged transfers",
            not off,
            f"{len(drill.users)} wallets, {unanswered_moved} unanswered requests moved money"
            + (f"; off: {off}" if off else ""),
        )
        total = sum(balances.values())
        checks.add(
            "total exact, no balance negative",
            total == drill.total and min(balances.values()) >= 0,
            f"total {total} of {drill.total}, lowest {min(balances.values())}",
        )
        reads = ", ".join(f"{n} {kind}" for kind, n in drill.reads.items())
        checks.add(
            "readers during the load: total exact, none negative",
            drill.reads["sql snapshot"] > 0
            and drill.reads["http balance"] > 0
            and not any("read" in f for f in drill.failures),
            reads,
        )

        with psycopg.connect(pg.url(), autocommit=True) as db:
            verify = db.execute("SELECT api.verify_projections()").fetchone()[0]
            checks.add(
                "api.verify_projections()", verify.get("ok") is True, json.dumps(verify)[:160]
            )
            db.execute("SELECT api.seal_audit()")
            chain = db.execute("SELECT api.verify_audit_chain()").fetchone()[0]
            checks.add(
                "api.verify_audit_chain() after api.seal_audit()",
                chain.get("ok") is True if isinstance(chain, dict) else chain is True,
                json.dumps(chain)[:160],
            )
            committed = [row[0] for row in db.execute("SELECT id FROM ledger.events ORDER BY id")]

        fresh: list[int] = []
        cursor, full = "0-0", True
        while full:
            cursor, full = drill.follow_feed(client, cursor, fresh)
        live = drill.feed_ids
        cursor, full = drill.feed_cursor, True
        while full:
            cursor, full = drill.follow_feed(client, cursor, live)
        cursor, _ = drill.follow_feed(client, cursor, live)
        for name, seen in (
            ("the event feed read from the start", fresh),
            ("the event feed followed during the faults", live),
        ):
            doubled = [i for i, n in Counter(seen).items() if n > 1]
            extra = sorted(set(seen) - set(committed))
            lost = sorted(set(committed) - set(seen))
            checks.add(
                f"{name}: every committed event once, nothing else",
                not doubled and not extra and not lost,
                f"{len(seen)} of {len(committed)} events"
                + (
                    f"; doubled {doubled[:3]}, extra {extra[:3]}, missing {lost[:3]}"
                    if doubled or extra or lost
                    else ""
                ),
            )

    hit = [
        tid
        for kind in ("commit-window", "connection-cut")
        for tid in faults[kind].notes
        if tid.count("-") == 4
    ]
    ack_ids = Counter(r.transfer_id for r in acked)
    replays = [r for r in acked if r.transfer_id in hit]
    checks.add(
        "transfers cut off after commit were answered by replay, once",
        all(ack_ids[t] == 1 for t in hit) and all(r.replayed for r in replays),
        f"{len(hit)} cut off, {sum(ack_ids[t] == 1 for t in hit)} acknowledged once, "
        f"{sum(r.replayed for r in replays)} with Idempotent-Replayed",
    )


def secrets_check(
    keys: list[str], places: dict[str, str], controls: dict[str, str], checks: Checks
) -> None:
    """No key, nor its secret part, in any place; each place holds its control string, which
    shows that the search would have found a value passed the way a key is."""
    needles = [k for key in keys for k in (key, key.split("_")[-1]) if len(k) >= 16]
    for place, text in places.items():
        found = [n[:12] + "…" for n in needles if n in text]
        control = controls[place]
        checks.add(
            f"no API key in {place}",
            not found and control in text,
            f"{len(text):,} bytes searched for {len(keys)} keys"
            + ("" if control in text else f"; control string {control!r} absent: search is blind")
            + (f"; FOUND {found}" if found else ""),
        )


def checksum_check(pg: Postgres, base: Path, relation_path: str, checks: Checks) -> None:
    """A stopped copy of the cluster, one byte of a ledger.balances heap tuple flipped."""
    copy = base / "data-copy"
    subprocess.run(["cp", "-a", str(pg.data), str(copy)], check=True)
    (copy / "postmaster.pid").unlink(missing_ok=True)
    target = copy / relation_path
    page = bytearray(target.read_bytes()[:8192])
    lp_off = int.from_bytes(page[24:28], "little") & 0x7FFF  # first line pointer's tuple
    offset = lp_off + 40 if lp_off else 8000
    with target.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    result = subprocess.run(
        [*as_user(pg_user()), str(pg.bindir / "pg_checksums"), "--check", "-D", str(copy)],
        capture_output=True,
        text=True,
    )
    report = (result.stdout + result.stderr).strip().replace("\n", " | ")
    checks.add(
        "pg_checksums --check reports the flipped byte",
        result.returncode != 0 and "checksum verification failed" in report,
        report[:200],
    )
    twin = Postgres(base, copy, free_port(), base / "postgres-copy.log")
    twin.start()
    try:
        with psycopg.connect(twin.url(), autocommit=True) as db:
            rows = db.execute("SELECT sum(balance) FROM ledger.balances").fetchone()
            outcome = f"read returned {rows}"
            ok = False
    except psycopg.Error as exc:
        outcome = str(exc).strip().splitlines()[0]
        ok = "invalid page" in outcome or "checksum" in outcome
    finally:
        twin.stop()
    checks.add("a read of the damaged table errors instead of returning data", ok, outcome[:200])


# --- main ----------------------------------------------------------------------------------


def setup_database(pg: Postgres) -> tuple[str, str]:
    with psycopg.connect(pg.url("postgres"), autocommit=True) as db:
        db.execute("CREATE DATABASE atp")
    result = subprocess.run(
        ["make", "--no-print-directory", "migrate", f"DATABASE_URL={pg.url()}"],
        cwd=APP.parent,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"make migrate failed:\n{result.stdout}{result.stderr}")
    with psycopg.connect(pg.url(), autocommit=True) as db:
        made = [
            db.execute(
                "SELECT api.create_api_key(%s, %s, 100000000, NULL) ->> 'key'", (name, perms)
            ).fetchone()[0]
            for name, perms in (
                ("faults-admin", ["read", "write", "admin"]),
                ("faults-writer", ["read", "write"]),
            )
        ]
    return made[0], made[1]


def create_users(server: Server, admin_key: str) -> list[str]:
    users = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for n in range(USERS):
            user = str(uuid.uuid4())
            body = {
                "user_id": user,
                "username": f"bank_{n}_{user[:8]}",
                "email": f"bank{n}.{user[:8]}@example.com",
                "display_name": f"Account {n}",
            }
            for path, payload in (
                ("/users", body),
                (
                    "/admin/mint",
                    {"to_user_id": user, "amount": str(FUNDING), "reason": "faults funding"},
                ),
            ):
                response = client.post(
                    path,
                    json=payload,
                    headers={"X-API-Key": admin_key, "Idempotency-Key": str(uuid.uuid4())},
                )
                response.raise_for_status()
            users.append(user)
    return users


def print_tables(faults: dict[str, Fault], checks: Checks, drill: Drill, seconds: float) -> None:
    requests = drill.requests
    attempts = sum(r.attempts for r in requests)
    print()
    print(
        f"faults drill: seed {SEED}, {WRITERS} writers, {USERS} users, {WORKERS} server workers, "
        f"{seconds:.0f} s of load, {len(requests)} transfer requests in {attempts} attempts "
        f"({sum(r.outcome == 'ack' for r in requests)} acknowledged, "
        f"{sum(r.replayed for r in requests)} answered by replay)"
    )
    seen = Counter(s for r in requests for s in r.statuses[:-1])  # every attempt but the answer
    print(
        "retried attempts, by what the client got: "
        + (", ".join(f"{what} {n}" for what, n in seen.most_common()) or "none")
    )
    print()
    print("| fault | injected | recovered |")
    print("| --- | ---: | ---: |")
    for kind, fault in faults.items():
        print(f"| {FAULT_NAMES[kind]} | {fault.injected} | {fault.recovered} |")
    print()
    print("| check | result | detail |")
    print("| --- | --- | --- |")
    for name, ok, detail in checks.rows:
        print(f"| {name} | {'PASS' if ok else 'FAIL'} | {detail.replace('|', '/')} |")
    print()


def main() -> int:
    become_subreaper()
    base = Path(tempfile.mkdtemp(prefix="financeatp-faults-"))
    give_to_pg(base)
    say(f"directory {base}, seed {SEED}, app {APP}")
    pg = Postgres(base, base / "data", free_port(), base / "postgres.log")
    pg.initdb()
    pg.start()
    server = proxy = None
    checks = Checks()
    try:
        with psycopg.connect(pg.url("postgres"), autocommit=True) as db:
            sums = db.execute("SHOW data_checksums").fetchone()[0]
        checks.add("the cluster has data checksums", sums == "on", f"data_checksums = {sums}")
        admin_key, write_key = setup_database(pg)
        holder: dict[str, Server] = {}
        proxy = Proxy(pg.port, lambda: holder["server"].workers() if "server" in holder else [])
        app_url = (
            f"postgresql://atp_app@127.0.0.1:{proxy.port}/atp?sslmode=disable&gssencmode=disable"
        )
        server = Server(app_url, base / "server.log")
        holder["server"] = server
        users = create_users(server, admin_key)
        drill = Drill(server, admin_key, write_key, users)
        threads = [threading.Thread(target=drill.writer, args=(n,)) for n in range(WRITERS)]
        threads += [
            threading.Thread(target=drill.db_reader, args=(pg.url(),)),
            threading.Thread(target=drill.http_reader),
            threading.Thread(target=drill.feed_reader),
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        faults = {kind: Fault(kind) for kind in FAULT_NAMES}
        plan = [kind for kind in FAULT_NAMES for _ in range(ROUNDS)]
        rng.shuffle(plan)
        time.sleep(3)
        for number, kind in enumerate(plan, 1):
            say(f"fault {number}/{len(plan)}: {FAULT_NAMES[kind]}")
            inject(kind, faults[kind], pg, server, proxy)
            time.sleep(rng.uniform(1.5, 3.5))
        drill.stop_load.set()
        say("load stopped; waiting for every request's answer")
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - started
        final_checks(drill, pg, faults, checks)

        server.stop()
        with psycopg.connect(pg.url(), autocommit=True) as db:
            relation = db.execute("SELECT pg_relation_filepath('ledger.balances')").fetchone()[0]
        dump = subprocess.run(
            [str(pg.bindir / "pg_dump"), "-d", pg.url()], capture_output=True, text=True, check=True
        ).stdout
        pg.stop()
        sample = drill.requests[0]
        secrets_check(
            [admin_key, write_key],
            {
                "the server's log": server.log.read_text(errors="replace"),
                "PostgreSQL's log (log_statement = all)": pg.log.read_text(errors="replace"),
                "a pg_dump of the database": dump,
            },
            {
                "the server's log": f"faults-{sample.key}",
                "PostgreSQL's log (log_statement = all)": f"faults-{sample.key}",
                "a pg_dump of the database": f"faults-{sample.key}",
            },
            checks,
        )
        checksum_check(pg, base, relation, checks)
        print_tables(faults, checks, drill, seconds)
        injected_ok = all(
            f.injected >= ROUNDS and f.recovered == f.injected for f in faults.values()
        )
        if not injected_ok:
            print(
                "not every fault was injected and recovered from:",
                {k: (f.injected, f.recovered, f.notes) for k, f in faults.items()},
            )
        ok = checks.ok and injected_ok
        print("faults drill:", "PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        if proxy is not None:
            proxy.loop.call_soon_threadsafe(proxy.loop.stop)
        if server is not None:
            server.stop()
        pg.stop()
        if KEEP:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
