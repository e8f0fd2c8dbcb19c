"""`make bench`: financeATP measured against this machine's own limit for a transfer.

Starts a temporary PostgreSQL cluster (durable settings), migrates it with `make migrate`,
seeds the bench users, copies that database and seeds the copy as a large store by a fast path
(proved with api.verify_projections()), then measures in rounds: in each, pgbench (baseline,
api.transfer, api.create_hold) and wrk (HTTP) against servers started as `python app.py serve`
on either database, each run for a piece of its time; a run's pieces are pooled. Prints a table
and writes bench/results.json, bench/results.png and the tables in bench/README.md and
README.md. bench/README.md describes every run and setting.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from financeatp.pgcluster import LocalCluster, free_port
from financeatp.serving import default_workers

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
DATABASE = "bench"
# The large store lives in a database of its own, a copy of DATABASE made before the runs, so
# that its runs can alternate with the fresh store's within each round.
LARGE_DATABASE = "bench_large"
API_KEY_RATE = 100_000_000  # per minute: the rate limit is measured, never hit
MINT_PER_USER = 1_000_000
NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")

FRESH_RUNS = (
    "baseline",
    "db_transfer",
    "db_hold",
    "http_transfer",
    "http_transfer_hot",
    "http_balance",
    "http_history",
)
LARGE_RUNS = ("http_transfer_large", "http_history_large")
ALL_RUNS = FRESH_RUNS + LARGE_RUNS
# Not a goal and not in results.json's "runs": a request that reaches no database, so that the
# server's CPU per request in the HTTP runs can be read against the server's own floor.
REFERENCE_RUNS = ("http_healthz",)
KNOWN_RUNS = ALL_RUNS + REFERENCE_RUNS
PGBENCH_RUNS = ("baseline", "db_transfer", "db_hold")
# The order of the HTTP runs within a round: each large-store run right after its fresh-store
# twin, so that the two are compared at the same moment of the host's phase.
HTTP_ORDER = (
    "http_transfer",
    "http_transfer_large",
    "http_transfer_hot",
    "http_balance",
    "http_history",
    "http_history_large",
    "http_healthz",
)

DESCRIPTIONS = {
    "baseline": "pgbench: lock 2 rows, update 2 balances, insert 2 entries",
    "db_transfer": "pgbench: SELECT api.transfer(...) as atp_app",
    "db_hold": "pgbench: SELECT api.create_hold(...) as atp_app",
    "http_transfer": "wrk: POST /transfers, uniform random pairs",
    "http_transfer_hot": "wrk: POST /transfers, every payment to one merchant",
    "http_balance": "wrk: GET /users/{id}/balance",
    "http_history": "wrk: GET /users/{id}/history?limit=20",
    "http_transfer_large": "wrk: POST /transfers, large store",
    "http_history_large": "wrk: GET /users/{id}/history?limit=20, large store",
    "http_healthz": "wrk: GET /healthz, no database (the server's floor)",
}


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


@dataclass(frozen=True)
class Config:
    seconds: int
    rounds: int
    connections: int
    events: int
    users: int
    workers: int
    wrk_threads: int
    pgbench_jobs: int
    warmup: int
    runs: tuple[str, ...]
    latency: str
    fsync_probe: int
    profile: bool
    keep: bool
    huge_pages: bool

    @classmethod
    def from_env(cls) -> Config:
        only = [r.strip() for r in os.environ.get("BENCH_ONLY", "").split(",") if r.strip()]
        if os.environ.get("BENCH_LATENCY", "wrk").strip() not in ("", "wrk", "measured"):
            raise SystemExit("BENCH_LATENCY: wrk (default) or measured")
        unknown = sorted(set(only) - set(KNOWN_RUNS))
        if unknown:
            raise SystemExit(f"BENCH_ONLY: unknown runs {unknown}; known: {', '.join(KNOWN_RUNS)}")
        profile = os.environ.get("BENCH_PROFILE", "") not in ("", "0")
        seconds = env_int("BENCH_SECONDS", 30)
        # A profile is one piece per run (its profilers cover one stretch of time); a piece is
        # at least a second.
        rounds = 1 if profile else env_int("BENCH_ROUNDS", 3)
        if rounds < 1:
            raise SystemExit("BENCH_ROUNDS: at least 1")
        rounds = max(1, min(rounds, seconds))
        return cls(
            seconds=seconds,
            rounds=rounds,
            connections=env_int("BENCH_CONNECTIONS", 16),
            events=env_int("BENCH_EVENTS", 5_000_000),
            users=env_int("BENCH_USERS", 10_000),
            workers=env_int("BENCH_WORKERS", default_workers()),
            # As many load generator threads as pgbench has (a caller such as Next.js is one
            # process with many connections); for the Lua timer's measured latencies one thread
            # per connection, which costs the machine more (bench/README.md, sixteenth pass).
            wrk_threads=env_int(
                "BENCH_WRK_THREADS",
                env_int("BENCH_CONNECTIONS", 16)
                if os.environ.get("BENCH_LATENCY", "").strip() == "measured"
                else env_int("BENCH_PGBENCH_JOBS", 2),
            ),
            pgbench_jobs=env_int("BENCH_PGBENCH_JOBS", 2),
            warmup=env_int("BENCH_WARMUP", 3),
            runs=tuple(r for r in KNOWN_RUNS if not only or r in only),
            latency=os.environ.get("BENCH_LATENCY", "wrk").strip() or "wrk",
            fsync_probe=env_int("BENCH_FSYNC_PROBE", 10),
            profile=profile,
            keep=os.environ.get("BENCH_KEEP", "") not in ("", "0"),
            huge_pages=os.environ.get("BENCH_HUGE_PAGES", "1") not in ("", "0"),
        )

    @property
    def complete(self) -> bool:
        """Every run, unprofiled: only such a run updates results.json and the README."""
        return self.runs == KNOWN_RUNS and not self.profile

    @property
    def piece(self) -> int:
        """Seconds of each run measured in one round."""
        return self.seconds // self.rounds


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    details: dict[str, Any] = field(default_factory=dict)
    # wrk's latency distribution (and the Lua timer's, "raw") as equal-share quantiles in ms,
    # so that a run's rounds can be pooled; not reported.
    quantiles: dict[str, list[float]] = field(default_factory=dict)

    def cpu_ms_per_request(self, part: str) -> float | None:
        """CPU milliseconds that `part` (server, postgres) spent per request of this run."""
        cores = (self.details.get("cpu") or {}).get(f"{part}_cores")
        return None if cores is None or not self.rps else round(cores / self.rps * 1000, 3)

    def public(self) -> dict[str, Any]:
        return {
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "errors": self.errors,
            "server_cpu_ms_per_req": self.cpu_ms_per_request("server"),
            "postgres_cpu_ms_per_req": self.cpu_ms_per_request("postgres"),
        }


# --- processes -----------------------------------------------------------------------------


class Cluster(LocalCluster):
    """A throwaway PostgreSQL cluster in bench/out/pgdata: durable settings, TCP on 127.0.0.1,
    trust authentication (loopback only, deleted at the end)."""

    def __init__(self, config: Config) -> None:
        super().__init__(OUT / "pgdata", fallback_tag="bench-")
        self.profile = config.profile
        self.huge_pages = "not asked for (PostgreSQL's default, try)"
        self.nr_hugepages_before: int | None = None

    @property
    def account(self) -> tuple[int, int] | None:
        return None if self.user is None else (self.user.pw_uid, self.user.pw_gid)

    def use_own_home(self, suffix: str) -> None:
        """A directory of its own (home + suffix), so that `make bench` may run beside it."""
        self.home = self.home.with_name(self.home.name + suffix)
        self.data, self.log = self.home / "data", self.home / "postgresql.log"

    def run_pg(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return super().run_pg(*command, check=check)

    def create(self) -> None:
        if self.home.exists():
            # Left over by a run that was killed: stop its postmaster if it still runs.
            if (self.data / "postmaster.pid").exists():
                self.run_pg(self.tool("pg_ctl"), "stop", "-D", str(self.data),
                            "-m", "immediate", "-w", check=False)  # fmt: skip
            shutil.rmtree(self.home)
        self.initdb("-A", "trust")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            # For bench/ab_http.py's socket side; make bench's server uses loopback TCP.
            "unix_socket_directories": f"'{self.home}'",
            "unix_socket_permissions": "0700",
            # Durable, as in production: every commit waits for its WAL flush.
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            # Raised from the defaults (128MB, 1GB) for the large store; said in the README.
            "shared_buffers": "'512MB'",
            "max_wal_size": "'4GB'",
            "max_connections": "200",
            "log_min_messages": "warning",
            "log_checkpoints": "on",
        }
        if self.profile:
            settings |= {
                "shared_preload_libraries": "'pg_stat_statements'",
                "pg_stat_statements.track": "all",
                "track_functions": "'pl'",
            }
        self.configure("make bench", settings)

    def use_huge_pages(self) -> None:
        """Shared memory in huge pages, as a production server has it: reserve as many as the
        cluster needs (only root may), return them when the cluster is removed, and start it with
        huge_pages = on, so that it fails rather than run without them. With 4 kB pages every
        backend takes a page fault and TLB misses for each shared buffer page it touches; a
        transfer touches several times the baseline's pages (bench/README.md, seventeenth pass)."""
        found = self.run_pg(self.tool("postgres"), "-D", str(self.data),
                            "-C", "shared_memory_size_in_huge_pages", check=False)  # fmt: skip
        needed = int(found.stdout.strip() or -1) if found.returncode == 0 else -1
        if needed <= 0:
            self.huge_pages = "off (this kernel has none)"
            return
        available = meminfo_kb("HugePages_Free") - meminfo_kb("HugePages_Rsvd")
        if available < needed:
            if os.geteuid() != 0:
                self.huge_pages = (
                    f"off ({needed} needed, {max(available, 0)} free; root reserves them)"
                )
                return
            before = int(NR_HUGEPAGES.read_text())
            try:  # a container may show /proc/sys read-only, even to root
                NR_HUGEPAGES.write_text(f"{before + needed - available}\n")
            except OSError as error:
                self.huge_pages = f"off (could not reserve {needed}: {error.strerror})"
                return
            self.nr_hugepages_before = before
            if meminfo_kb("HugePages_Free") - meminfo_kb("HugePages_Rsvd") < needed:
                self.release_huge_pages()
                self.huge_pages = f"off (the kernel could not reserve {needed})"
                return
        size_mb = meminfo_kb("Hugepagesize") // 1024
        reserved = ", reserved for the run" if self.nr_hugepages_before is not None else ""
        self.huge_pages = f"on ({needed} of {size_mb} MB{reserved})"
        self.server_options.append("-c huge_pages=on")

    def release_huge_pages(self) -> None:
        if self.nr_hugepages_before is not None:
            NR_HUGEPAGES.write_text(f"{self.nr_hugepages_before}\n")
            self.nr_hugepages_before = None

    def start(self, port: int | None = None) -> None:
        super().start(port)
        say(f"PostgreSQL {self.version()} on 127.0.0.1:{self.port} (data: {self.data}); "
            f"huge pages {self.huge_pages}")  # fmt: skip

    def stop(self, mode: str = "fast") -> bool:
        if not self.running:
            return True
        stopped = super().stop(mode)
        say("PostgreSQL stopped")
        return stopped

    def remove(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)

    def url(self, user: str = "postgres", database: str = DATABASE, socket: bool = False) -> str:
        if socket:
            return f"postgresql://{user}@/{database}?host={self.home}&port={self.port}"
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = DATABASE) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url("postgres", database), autocommit=True)

    def psql(self, *args: str, log: Path | None = None, database: str = DATABASE) -> str:
        command = [self.tool("psql"), self.url(database=database), "-X", "-v", "ON_ERROR_STOP=1",
                   *args]  # fmt: skip
        result = subprocess.run(command, check=False, capture_output=True, text=True)
        if log is not None:
            log.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise SystemExit(f"psql {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout


def meminfo_kb(field: str) -> int:
    """A field of /proc/meminfo (kB, or a count for the HugePages_ fields); 0 if absent."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == field:
                return int(value.split()[0])
    return 0


def process_rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


LOADGENS = ("pgbench", "wrk")


def command_name(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Server:
    """`python app.py serve` (what `make run` serves with DATABASE_URL set), logging to
    bench/out/server.log, with the resident memory of its processes sampled while it runs."""

    def __init__(
        self, cluster: Cluster, workers: int, checkout: Path = ROOT, socket: bool = False,
        database: str = DATABASE, log_name: str = "server.log",
    ) -> None:  # fmt: skip
        self.cluster = cluster
        self.workers = workers
        self.checkout = checkout  # bench/ab_http.py serves another version of app.py
        self.socket = socket  # the Unix socket to PostgreSQL, or loopback TCP
        self.database = database
        self.log_name = log_name
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.max_rss_kb = 0
        self.max_rss_by_role: dict[str, int] = {}
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self.split: list[int] = []

    def start(self) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": self.cluster.url("atp_app", self.database, socket=self.socket),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        log = (OUT / self.log_name).open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(self.checkout / "app.py"), "serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(self.workers)],
            cwd=self.checkout, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"the server exited with {self.proc.returncode}: see {OUT}/{self.log_name}"
                )
            with contextlib.suppress(OSError, urllib.error.URLError):
                url = f"http://127.0.0.1:{self.port}/readyz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            time.sleep(0.2)
        else:
            raise SystemExit("the server did not become ready within 60 s")
        say(f"server on http://127.0.0.1:{self.port} ({self.workers} workers, pid {self.proc.pid}, "
            f"database {self.database})")  # fmt: skip

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *descendants(self.proc.pid)]

    def connections_per_worker(self) -> list[int]:
        """Established connections to the server's port held by each worker, most first: wrk's
        keep-alive connections stay with the worker that accepted them for the whole run, and
        the tail latency follows how they split (bench/README.md, fourth pass)."""
        inodes: set[str] = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(table).read_text().splitlines()[1:]:
                    fields = line.split()
                    local_port = int(fields[1].rsplit(":", 1)[1], 16)
                    if fields[3] == "01" and local_port == self.port:  # 01: ESTABLISHED
                        inodes.add(fields[9])
        counts = []
        for pid in self.pids()[1:]:  # not the supervisor
            with contextlib.suppress(OSError):
                if b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    continue  # multiprocessing's helper, not a worker
            held = 0
            with contextlib.suppress(OSError):
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        target = os.readlink(fd)
                        held += target.startswith("socket:[") and target[8:-1] in inodes
            counts.append(held)
        return sorted(counts, reverse=True)

    def sample(self) -> None:
        split = self.connections_per_worker()
        if sum(split) > 0:
            self.split = split
        for pid in self.pids():
            rss = process_rss_kb(pid)
            self.max_rss_kb = max(self.max_rss_kb, rss)
            role = "supervisor" if self.proc is not None and pid == self.proc.pid else "worker"
            self.max_rss_by_role[role] = max(self.max_rss_by_role.get(role, 0), rss)

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        self._sampling.clear()
        self.split = []

        def loop() -> None:
            while not self._sampling.wait(0.5):
                self.sample()

        self._sampler = threading.Thread(target=loop, daemon=True)
        self._sampler.start()
        try:
            yield
        finally:
            self._sampling.set()
            self._sampler.join()
            self.sample()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Workers that outlived their supervisor (they share its session: nobody else does).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None
        say("server stopped")


# --- measuring -----------------------------------------------------------------------------


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(pct / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def pgbench_log(logdir: Path, since: float = 0.0) -> list[tuple[float, float]]:
    """(end, latency ms) of every transaction in pgbench's per-transaction logs (-l) in logdir
    that ended at or after since (a Unix time): client, transaction, latency in µs, script, and
    the time it ended in seconds and µs."""
    found: list[tuple[float, float]] = []
    for path in logdir.glob("tx.*"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 6 and parts[2].isdigit():
                end = int(parts[4]) + int(parts[5]) / 1e6
                if end >= since:
                    found.append((end, int(parts[2]) / 1000.0))
    return found


def pgbench_latencies(pieces: list[tuple[Path, float]]) -> list[float]:
    """The latencies (ms), sorted, of the transactions of each (log directory, since)."""
    return sorted(ms for logdir, since in pieces for _, ms in pgbench_log(logdir, since))


def pgbench(
    cluster: Cluster, name: str, script: Path, user: str, variables: dict[str, str],
    config: Config, seconds: int, log: bool = True, warmup: int = 0,
    measuring: Callable[[], None] | None = None,
) -> Result:  # fmt: skip
    """pgbench for seconds. With warmup, its sessions run warmup seconds more first, which are
    not measured: then measuring() is called, and the rate and latencies are those of the
    transactions that ended afterwards (from the log), so the measured sessions have compiled
    and planned the script's calls already, as a server's pooled connections have."""
    logdir = OUT / "pgbench" / name
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir(parents=True)
    command = [
        str(cluster.bindir / "pgbench"), "-n", "-M", "prepared",
        "-c", str(config.connections), "-j", str(min(config.pgbench_jobs, config.connections)),
        "-T", str(seconds + warmup),
        "-h", "127.0.0.1", "-p", str(cluster.port), "-U", user, "-f", str(script),
    ]  # fmt: skip
    for key, value in variables.items():
        command += ["-D", f"{key}={value}"]
    if log:
        command += ["-l", f"--log-prefix={logdir}/tx"]
    command.append(DATABASE)
    since = 0.0
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:  # fmt: skip
        if warmup > 0:
            time.sleep(warmup)
            since = time.time()
            if measuring is not None:
                measuring()
        stdout, stderr = process.communicate()
    (logdir / "pgbench.out").write_text(stdout + stderr)
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", stdout)
    if tps is None:
        raise SystemExit(f"pgbench {name} failed:\n{stdout}{stderr}")
    failed = re.search(r"number of failed transactions: (\d+)", stdout)
    aborted = len(re.findall(r"client \d+ aborted", stderr))
    measured = pgbench_log(logdir, since)
    latencies = sorted(ms for _, ms in measured)
    rps = float(tps.group(1))
    if warmup > 0 and measured:
        rps = len(measured) / max(1e-3, max(end for end, _ in measured) - since)
    errors = (int(failed.group(1)) if failed else 0) + aborted
    if process.returncode != 0 and errors == 0:
        errors = 1  # pgbench said the run failed without counting it
    return Result(
        rps=rps,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        errors=errors,
        details={"transactions": len(latencies), "aborted_clients": aborted,
                 "p90_ms": percentile(latencies, 90), "max_ms": latencies[-1] if latencies else 0,
                 "log_dir": str(logdir), "since": since},
    )  # fmt: skip


def wrk(
    server: Server, name: str, script: str, env: dict[str, str], config: Config, seconds: int
) -> Result:
    threads = min(config.wrk_threads, config.connections)  # wrk wants no more threads than them
    command = [
        "wrk", "-t", str(threads), "-c", str(config.connections), "-d", f"{seconds}s",
        "--timeout", "10s", "--latency", "-s", str(BENCH / script), f"http://127.0.0.1:{server.port}",
    ]  # fmt: skip
    full_env = {
        **os.environ,
        **env,
        "BENCH_SEED": str(secrets.randbelow(2**31)),
        "BENCH_RAW": "1" if threads == config.connections else "0",
    }
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=full_env)
    output = OUT / "wrk" / f"{name}.out"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(result.stdout + result.stderr)
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if result.returncode != 0 or line is None:
        raise SystemExit(f"wrk {name} failed:\n{result.stdout}{result.stderr}")
    data = json.loads(line.removeprefix("BENCH_RESULT "))
    raw = next((ln for ln in result.stdout.splitlines() if ln.startswith("BENCH_RAW ")), None)
    if raw is not None:
        measured = json.loads(raw.removeprefix("BENCH_RAW "))
        if measured["count"] > 0:
            data |= {f"raw_{k}": v for k, v in measured.items()}
    quantiles: dict[str, list[float]] = {}
    shares = next((ln for ln in result.stdout.splitlines() if ln.startswith("BENCH_QUANTILES ")),
                  None)  # fmt: skip
    if shares is not None:
        for kind, values in json.loads(shares.removeprefix("BENCH_QUANTILES ")).items():
            if kind == "wrk" or "raw_p50_us" in data:
                quantiles[kind] = [v / 1000 for v in values]
    sockets = data["connect"] + data["read"] + data["write"] + data["timeout"]
    source = "raw_" if config.latency == "measured" and "raw_p50_us" in data else ""
    return Result(
        rps=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data[f"{source}p50_us"] / 1000,
        p99_ms=data[f"{source}p99_us"] / 1000,
        # Anything but a fresh 2xx: non-2xx answers, socket errors and timeouts, and replays
        # (a fresh Idempotency-Key must never replay; a replay would inflate the rate).
        errors=data["non_2xx"] + sockets + data["replayed"],
        details=data,
        quantiles=quantiles,
    )


# --- pooling a run's rounds ----------------------------------------------------------------


def weighted_percentile(points: list[tuple[float, float]], pct: float) -> float:
    """The value at which points (value, weight) reach pct of their total weight."""
    points = sorted(points)
    total = sum(w for _, w in points)
    reached = 0.0
    for value, weight in points:
        reached += weight
        if reached >= pct / 100 * total - 1e-9:
            return value
    return points[-1][0] if points else 0.0


def pooled_cpu(pieces: list[Result]) -> dict[str, Any]:
    """The pieces' CPU usage over their whole time: each figure weighted by its piece's wall
    time, so that cores stay CPU seconds per second."""
    usages = [p.details.get("cpu") for p in pieces]
    if not usages or not all(usages):
        return {}
    walls = [u["wall_s"] for u in usages if u]
    total = sum(walls) or 1.0
    first = usages[0]
    assert first is not None
    pooled: dict[str, Any] = {"wall_s": round(total, 3), "cores": first["cores"]}
    for key, value in first.items():
        if key in pooled or not isinstance(value, int | float):
            continue
        if all(u is not None and key in u for u in usages):
            pooled[key] = round(sum(u[key] * w for u, w in zip(usages, walls, strict=True) if u)
                                / total, 3)  # fmt: skip
    splits = [u.get("server_cores_by_process") or [] for u in usages if u]
    if splits and splits[0] and all(len(x) == len(splits[0]) for x in splits):
        pooled["server_cores_by_process"] = [
            round(sum(x[i] * w for x, w in zip(splits, walls, strict=True)) / total, 2)
            for i in range(len(splits[0]))
        ]
    return pooled


def pool(pieces: list[Result], latency: str) -> Result:
    """One result for a run measured in pieces (one per round): its rate over all of them, its
    percentiles over all their requests (pgbench's logs; wrk's distributions as quantiles),
    errors summed, CPU over their whole time; latency: the p50 and p99 reported, wrk's or the
    Lua timer's ("measured")."""
    if len(pieces) == 1:
        return pieces[0]
    first, last = pieces[0].details, pieces[-1].details
    details: dict[str, Any] = {
        "rounds": [
            {"rps": round(p.rps, 1), "p50_ms": round(p.p50_ms, 2), "p99_ms": round(p.p99_ms, 2),
             "errors": p.errors, "connections_per_worker": p.details.get("connections_per_worker"),
             "server_cpu_ms_per_req": p.cpu_ms_per_request("server"),
             "postgres_cpu_ms_per_req": p.cpu_ms_per_request("postgres")}
            for p in pieces
        ],
        "load_before_after": [*first["load_before_after"][:3], *last["load_before_after"][3:]],
    }  # fmt: skip
    cpu = pooled_cpu(pieces)
    if cpu:
        details["cpu"] = cpu
    if "connections_per_worker" in first:
        details["connections_per_worker"] = [p.details["connections_per_worker"] for p in pieces]
    errors = sum(p.errors for p in pieces)
    if "log_dir" in first:  # pgbench: every transaction's latency is in its logs
        latencies = pgbench_latencies(
            [(Path(p.details["log_dir"]), p.details["since"]) for p in pieces]
        )
        details |= {
            "transactions": len(latencies),
            "aborted_clients": sum(p.details["aborted_clients"] for p in pieces),
            "p90_ms": percentile(latencies, 90),
            "max_ms": latencies[-1] if latencies else 0,
        }
        rps = sum(p.rps for p in pieces) / len(pieces)  # pieces of equal length
        return Result(rps, percentile(latencies, 50), percentile(latencies, 99), errors, details)
    counters = ("requests", "duration_us", "non_2xx", "status_ge_400", "replayed", "connect",
                "read", "write", "timeout")  # fmt: skip
    details |= {key: sum(p.details[key] for p in pieces) for key in counters}
    details["mean_us"] = round(
        sum(p.details["mean_us"] * p.details["requests"] for p in pieces)
        / max(1, details["requests"]),
        1,
    )
    details["max_us"] = max(p.details["max_us"] for p in pieces)
    kinds = [("wrk", "", "requests")]
    if all("raw" in p.quantiles for p in pieces):
        kinds.append(("raw", "raw_", "raw_count"))
        details["raw_count"] = sum(p.details["raw_count"] for p in pieces)
        details["raw_max_us"] = max(p.details["raw_max_us"] for p in pieces)
    for kind, prefix, count in kinds:
        points = [
            (value, p.details[count] / len(p.quantiles[kind]))
            for p in pieces
            for value in p.quantiles[kind]
        ]
        for pct in (50, 90, 99):
            details[f"{prefix}p{pct}_us"] = round(weighted_percentile(points, pct) * 1000)
    source = "raw_" if latency == "measured" and "raw_p50_us" in details else ""
    return Result(
        rps=details["requests"] / (details["duration_us"] / 1e6),
        p50_ms=details[f"{source}p50_us"] / 1000,
        p99_ms=details[f"{source}p99_us"] / 1000,
        errors=errors,
        details=details,
    )


class CpuMeter:
    """Who used the CPU during a run: the server's processes, PostgreSQL's (live backends plus
    what the postmaster collected from exited ones), the load generator (a child of this
    process), and the machine as a whole (busy, I/O wait, idle) from /proc/stat."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, cluster: Cluster, server: Server | None) -> None:
        self.cluster = cluster
        self.server = server
        self.before: dict[str, float] = {}

    @staticmethod
    def ticks(pid: int, children: bool = False) -> int:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return 0
        # after the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
        own = int(fields[11]) + int(fields[12])
        return own + (int(fields[13]) + int(fields[14]) if children else 0)

    def postmaster(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.cluster.data / "postmaster.pid").read_text().split()[0])
        return None

    def snapshot(self) -> dict[str, float]:
        snap: dict[str, float] = {"wall": time.monotonic()}
        pm = self.postmaster()
        if pm is not None:
            snap["postgres"] = self.ticks(pm, children=True) + sum(
                self.ticks(pid) for pid in descendants(pm)
            )
        if self.server is not None:
            for pid in self.server.pids():
                snap[f"pid:{pid}"] = self.ticks(pid)
            snap["server"] = sum(v for k, v in snap.items() if k.startswith("pid:"))
        times = os.times()
        # The load generators this process ran: those it has reaped, and one still running (a
        # pgbench whose measured part starts after its warm-up).
        snap["loadgen"] = (times.children_user + times.children_system) * self.TICK + sum(
            self.ticks(pid) for pid in descendants(os.getpid()) if command_name(pid) in LOADGENS
        )
        cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        values = [int(v) for v in cpu]
        snap["machine_total"] = sum(values[:8])
        snap["machine_idle"] = values[3]
        snap["machine_iowait"] = values[4]
        # Time the hypervisor ran another machine while this one had work: cores it did not get.
        snap["machine_steal"] = values[7] if len(values) > 7 else 0
        return snap

    @contextlib.contextmanager
    def measure(self, into: dict[str, Any]) -> Iterator[None]:
        self.start()
        yield
        self.stop(into)

    def start(self) -> None:
        self.before = self.snapshot()

    def stop(self, into: dict[str, Any]) -> None:
        before, after = self.before, self.snapshot()
        wall = after["wall"] - before["wall"]
        total = after["machine_total"] - before["machine_total"] or 1
        idle = after["machine_idle"] - before["machine_idle"]
        iowait = after["machine_iowait"] - before["machine_iowait"]
        steal = after["machine_steal"] - before["machine_steal"]
        cores = os.cpu_count() or 1
        usage: dict[str, Any] = {
            "wall_s": round(wall, 3),
            "machine_busy": round(1 - (idle + iowait) / total, 3),
            "machine_iowait": round(iowait / total, 3),
            "machine_steal": round(steal / total, 3),
        }
        accounted = 0.0
        for part in ("server", "postgres", "loadgen"):
            if part in before and part in after:
                seconds = (after[part] - before[part]) / self.TICK
                usage[f"{part}_cores"] = round(seconds / wall, 2) if wall else 0
                accounted += usage[f"{part}_cores"]
        # Busy cores nobody above accounts for: the kernel's own threads, this script, and
        # anything else running on the machine. Stolen time is not counted busy here: it is
        # its own column (a neighbour on the same host).
        busy_cores = (1 - (idle + iowait + steal) / total) * (os.cpu_count() or 1)
        usage["other_cores"] = round(max(0.0, busy_cores - accounted), 2)
        # Per server process: whether the workers share the load (connections are accepted
        # by whichever worker is first, and keep-alive connections stay with it).
        usage["server_cores_by_process"] = sorted(
            (
                round((after[k] - before[k]) / self.TICK / wall, 2)
                for k in after
                if k.startswith("pid:") and k in before and wall
            ),
            reverse=True,
        )
        usage["cores"] = cores
        into["cpu"] = usage


class Profiler:
    """BENCH_PROFILE=1: pg_stat_statements (track = all), PL/pgSQL function times, wait events
    sampled from pg_stat_activity, and py-spy on the server, per run into bench/out/profile/."""

    def __init__(self, cluster: Cluster, enabled: bool) -> None:
        self.cluster = cluster
        self.enabled = enabled
        self.dir = OUT / "profile"
        self.waits: dict[str, int] = {}
        self._stop = threading.Event()

    def setup(self) -> None:
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.cluster.connect() as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    @contextlib.contextmanager
    def run(self, name: str, server: Server | None, seconds: int) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with self.cluster.connect() as conn:
            conn.execute(
                "SELECT pg_stat_statements_reset(), pg_stat_reset(), pg_stat_reset_shared('wal')"
            )
        self.waits = {}
        self._stop.clear()
        sampler = threading.Thread(target=self._sample_waits, daemon=True)
        sampler.start()
        spy = None
        spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if server is not None and server.proc is not None and Path(spy_bin).exists():
            spy = subprocess.Popen(
                [spy_bin, "record", "--pid", str(server.proc.pid), "--subprocesses",
                 "--duration", str(max(1, seconds - 2)), "--rate", "200", "--nonblocking",
                 "--format", "raw", "-o", str(self.dir / f"{name}.pyspy.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        try:
            yield
        finally:
            self._stop.set()
            sampler.join()
            if spy is not None:
                try:
                    spy.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
            self._dump(name)

    def _sample_waits(self) -> None:
        with self.cluster.connect() as conn:
            while not self._stop.wait(0.02):
                rows = conn.execute(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU'), count(*)"
                    "  FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid()"
                    "   AND backend_type = 'client backend' GROUP BY 1"
                ).fetchall()
                for event, count in rows:
                    self.waits[event] = self.waits.get(event, 0) + int(count)

    def _dump(self, name: str) -> None:
        with self.cluster.connect() as conn:
            statements = conn.execute(
                "SELECT calls, round(total_exec_time::numeric, 1) AS total_ms,"
                "       round(mean_exec_time::numeric, 4) AS mean_ms, toplevel,"
                "       round(shared_blks_hit::numeric / greatest(calls, 1), 1),"
                "       round(shared_blks_read::numeric / greatest(calls, 1), 2),"
                "       round(wal_bytes / greatest(calls, 1)),"
                "       left(regexp_replace(query, '\\s+', ' ', 'g'), 160)"
                "  FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 40"
            ).fetchall()
            functions = conn.execute(
                "SELECT schemaname || '.' || funcname, calls, round(total_time::numeric, 1),"
                "       round(self_time::numeric, 1)"
                "  FROM pg_stat_user_functions ORDER BY self_time DESC LIMIT 30"
            ).fetchall()
            wal = conn.execute(
                "SELECT wal_records, wal_fpi, pg_size_pretty(wal_bytes), wal_bytes, wal_sync"
                "  FROM pg_stat_wal"
            ).fetchone()
            commits = conn.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
        total = sum(self.waits.values()) or 1
        lines = [f"# {name}", "", "## wait events of active client backends (share of samples)"]
        lines += [
            f"{count / total:7.1%}  {event}"
            for event, count in sorted(self.waits.items(), key=lambda kv: -kv[1])
        ]
        lines += ["", "## functions (calls, total ms, self ms)"]
        lines += [f"{calls:>9} {tot:>12} {own:>12}  {fn}" for fn, calls, tot, own in functions]
        lines += [
            "",
            "## statements (calls, total ms, mean ms, toplevel, per call: buffer hits, buffer"
            " reads (from the OS), WAL bytes; query)",
        ]
        lines += [
            f"{c:>9} {t:>12} {m:>10} {top!s:>5} {hit:>8} {read:>7} {wal:>7}  {q}"
            for c, t, m, top, hit, read, wal, q in statements
        ]
        if wal is not None and commits is not None and commits[0]:
            records, fpi, pretty, size, syncs = wal
            n = commits[0]
            lines += ["", f"## WAL: {pretty} in {records} records, {fpi} full-page images, "
                      f"{syncs} syncs; per commit ({n} commits): {size / n:.0f} bytes, "
                      f"{records / n:.1f} records, {fpi / n:.2f} full-page images, "
                      f"{n / max(syncs, 1):.1f} commits per sync"]  # fmt: skip
        lines += pyspy_summary(self.dir / f"{name}.pyspy.txt")
        (self.dir / f"{name}.txt").write_text("\n".join(lines) + "\n")


def pyspy_summary(path: Path, top: int = 40) -> list[str]:
    """The hottest Python functions of a py-spy raw (collapsed) profile: inclusive and own
    share of the samples (py-spy counts only samples where a thread was not idle)."""
    if not path.exists():
        return []
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r" \((?:.*/)?([^/]*?):\d+\)$", r" (\1)", f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        return []
    lines = ["", f"## py-spy: {total} samples of busy server threads; inclusive share"]
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])
    lines += [
        f"{n / total:7.1%}  {f[:150]}" for f, n in ranked[:top] if not f.startswith("process")
    ]
    lines += ["", "## py-spy: own share (the function itself, including C code it calls)"]
    lines += [
        f"{n / total:7.1%}  {f[:150]}" for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]
    ]
    return lines


def fsync_probe(directory: Path, seconds: int) -> dict[str, Any]:
    """How this disk answers the WAL's question: 8 kB written and fdatasync'ed, again and again,
    for a few seconds before anything else runs. Commit latency cannot beat it, and its stalls
    show up in every write run's tail."""
    path = directory / "fsync-probe"
    block = os.urandom(8192)
    latencies: list[float] = []
    stalls = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            os.pwrite(fd, block, (len(latencies) % 1024) * 8192)
            os.fdatasync(fd)
            latencies.append((time.perf_counter() - started) * 1000)
            stalls += latencies[-1] > 100
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    latencies.sort()
    return {
        "seconds": seconds,
        "syncs": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "p99.9_ms": round(percentile(latencies, 99.9), 3),
        "max_ms": round(latencies[-1], 1) if latencies else 0,
        "stalls_over_100ms": stalls,
    }


# --- the bench -----------------------------------------------------------------------------


def user_id(i: int) -> str:
    return str(uuid.UUID(hex=hashlib.md5(str(i).encode()).hexdigest()))  # noqa: S324 (ids)


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    kb = meminfo_kb("MemTotal")
    memory = f", {kb / 1024 / 1024:.0f} GB RAM" if kb else ""
    return f"{platform.machine()}, {model}, {os.cpu_count()} cores{memory}"


class Bench:
    def __init__(self, config: Config, stack: contextlib.ExitStack) -> None:
        self.config = config
        self.stack = stack
        self.cluster = Cluster(config)
        self.server: Server | None = None
        self.large_server: Server | None = None
        self.results: dict[str, Result] = {}
        self.pieces: dict[str, list[Result]] = {}  # each run's pieces, one per round
        self.key = ""
        self.key_hash = ""
        self.key_id = ""
        self.timings: dict[str, float] = {}
        self.events_in_large_store = 0
        self.large_database = False  # LARGE_DATABASE made (prepare_large)
        self.verify: dict[str, Any] = {}
        self.max_rss_kb = 0
        self.rss_by_role: dict[str, int] = {}
        self.load: dict[str, list[float]] = {}
        self.disk: dict[str, Any] = {}
        self.profiler = Profiler(self.cluster, config.profile)

    # setup

    def timed(self, what: str, action: Callable[[], Any]) -> Any:
        started = time.monotonic()
        value = action()
        self.timings[what] = round(time.monotonic() - started, 1)
        say(f"{what}: {self.timings[what]} s")
        return value

    def prepare(self) -> None:
        OUT.mkdir(exist_ok=True)
        for log in ("server.log", "server-large.log"):
            (OUT / log).unlink(missing_ok=True)
        self.stack.callback(self.cleanup_cluster)
        self.stack.callback(self.stop_server)
        self.cluster.create()
        if self.config.huge_pages:
            self.cluster.use_huge_pages()
        self.cluster.start()
        with self.cluster.connect("postgres") as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        self.timed("migrate", self.migrate)
        self.profiler.setup()
        self.timed("seed users", self.seed_users)
        self.write_users_lua()

    def probe_disk(self) -> None:
        """After the runs: a probe before them left the host writing back for a minute, which
        took 14-24% of the first baseline's machine as stolen time (bench/README.md)."""
        if self.config.fsync_probe <= 0:
            return
        self.disk = fsync_probe(self.cluster.home, self.config.fsync_probe)
        say(
            f"disk: {self.disk['syncs']} fdatasync of 8 kB in {self.disk['seconds']} s, "
            f"p50 {self.disk['p50_ms']} ms, p99.9 {self.disk['p99.9_ms']} ms, "
            f"max {self.disk['max_ms']} ms, {self.disk['stalls_over_100ms']} over 100 ms"
        )

    def cleanup_cluster(self) -> None:
        self.cluster.stop()
        self.cluster.release_huge_pages()
        if not self.config.keep:
            self.cluster.remove()

    def migrate(self) -> None:
        command = ["make", "--no-print-directory", "migrate", f"DATABASE_URL={self.cluster.url()}"]
        result = subprocess.run(command, cwd=ROOT, check=False, capture_output=True, text=True)
        (OUT / "migrate.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise SystemExit(f"make migrate failed:\n{result.stdout}{result.stderr}")

    def seed_users(self) -> None:
        n = self.config.users
        with self.cluster.connect() as conn:
            created = conn.execute(
                "SELECT api.create_api_key('bench', ARRAY['read', 'write', 'admin'], %s, NULL)",
                [API_KEY_RATE],
            ).fetchone()
            assert created is not None
            self.key = created[0]["key"]
            self.key_id = created[0]["id"]
            self.key_hash = hashlib.sha256(self.key.encode()).hexdigest()
            with conn.transaction():
                conn.execute(
                    "SELECT count(*) FROM generate_series(1, %(n)s) i, LATERAL api.create_user("
                    "  user_id => md5(i::text)::uuid, username => 'user' || i,"
                    "  email => 'user' || i || '@bench.example', display_name => 'User ' || i) c"
                    " WHERE c.status = 201",
                    {"n": n},
                )
                conn.execute(
                    "SELECT count(*) FROM generate_series(1, %(n)s) i, LATERAL api.mint("
                    "  to_user_id => md5(i::text)::uuid, amount => %(amount)s,"
                    "  reason => 'bench') m WHERE m.status = 201",
                    {"n": n, "amount": MINT_PER_USER},
                )
            conn.execute("DROP TABLE IF EXISTS bench_entries, bench_accounts")
            # The ledger's own amount type, so that the ratio compares like with like.
            conn.execute(
                "CREATE TABLE bench_accounts (id integer PRIMARY KEY,"
                " balance numeric(21, 8) NOT NULL) WITH (fillfactor = 50)"
            )
            conn.execute(
                "CREATE TABLE bench_entries (id bigserial PRIMARY KEY, account integer NOT NULL,"
                " amount numeric(21, 8) NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
            )
            conn.execute(
                "INSERT INTO bench_accounts SELECT i, %s FROM generate_series(1, %s) i",
                [MINT_PER_USER, n],
            )
            row = conn.execute(
                "SELECT count(*) FROM ledger.users WHERE NOT is_system AND deleted_at IS NULL"
            ).fetchone()
            if row is None or row[0] != n:
                raise SystemExit(f"seeded {row} users, expected {n}")
            conn.execute("VACUUM ANALYZE")

    def write_users_lua(self) -> None:
        ids = ",\n".join(f'"{user_id(i)}"' for i in range(1, self.config.users + 1))
        (OUT / "users.lua").write_text(f"return {{\n{ids}\n}}\n")

    def start_server(self, large: bool = False) -> None:
        """The server on the fresh store, and with large one more on the large store's database
        (each idle while the other's runs are measured)."""
        # The audit rows written while no server ran (the seed, pgbench's api.transfer calls) are
        # sealed first: a server that had been running would have sealed them already, and its
        # first maintenance run would otherwise catch up on them inside a measured run.
        for database in (DATABASE, LARGE_DATABASE) if large else (DATABASE,):
            with self.cluster.connect(database) as conn:
                row = conn.execute("SELECT api.seal_audit(10000000) ->> 'sealed_rows'").fetchone()
            say(
                f"audit rows of {database} sealed before its server starts: "
                f"{row[0] if row else '?'}"
            )
        self.server = Server(self.cluster, self.config.workers)
        self.server.start()
        if large:
            self.large_server = Server(self.cluster, self.config.workers, database=LARGE_DATABASE,
                                       log_name="server-large.log")  # fmt: skip
            self.large_server.start()

    def stop_server(self) -> None:
        for server in (self.server, self.large_server):
            if server is not None:
                self.max_rss_kb = max(self.max_rss_kb, server.max_rss_kb)
                for role, kb in server.max_rss_by_role.items():
                    self.rss_by_role[role] = max(self.rss_by_role.get(role, 0), kb)
                server.stop()
        self.server = self.large_server = None

    # runs

    def databases(self) -> tuple[str, ...]:
        return (DATABASE, LARGE_DATABASE) if self.large_database else (DATABASE,)

    def vacuum_all(self) -> None:
        """Every run starts at the same point of the vacuum cycle: otherwise autovacuum, which
        looks at a database once a minute, vacuums what the previous runs wrote (200,000 rows and
        more) inside the next run, and charges its CPU to that run's requests."""
        for database in self.databases():
            with self.cluster.connect(database) as conn:
                conn.execute("VACUUM (ANALYZE)")

    def checkpoint(self) -> None:
        with self.cluster.connect() as conn:
            conn.execute("CHECKPOINT")

    def measure(self, name: str) -> None:
        """One run in one piece of BENCH_SECONDS (bench/ab_http.py measures this way)."""
        if name in self.config.runs:
            self.results[name] = self.piece(name, self.config.seconds, name)

    def piece(self, name: str, seconds: int, label: str) -> Result:
        """Run name for seconds, after a VACUUM (ANALYZE), a CHECKPOINT and a warm-up: pgbench's
        is its own sessions' first BENCH_WARMUP seconds (so that the measured ones have compiled
        and planned their calls, as a server's pooled connections have); wrk's a run of its own
        against the same server. label names its logs."""
        config = self.config
        server = self.large_server if name in LARGE_RUNS else self.server
        usage: dict[str, Any] = {}
        meter = CpuMeter(self.cluster, server)
        self.vacuum_all()
        self.checkpoint()
        load_before = os.getloadavg()
        say(f"{label}: {seconds} s at {config.connections} connections ({DESCRIPTIONS[name]})")
        if name in PGBENCH_RUNS:
            baseline = name == "baseline"
            variables = {"users": str(config.users)} | (
                {} if baseline else {"key_hash": self.key_hash}
            )
            if config.warmup <= 0:
                meter.start()
            with self.profiler.run(name, None, config.warmup + seconds):
                result = pgbench(
                    self.cluster, label, BENCH / ("baseline.sql" if baseline else f"{name}.sql"),
                    "postgres" if baseline else "atp_app", variables, config, seconds,
                    warmup=config.warmup, measuring=meter.start,
                )  # fmt: skip
            meter.stop(usage)
        else:
            assert server is not None
            env = {
                "BENCH_DIR": str(BENCH),
                "BENCH_USERS": str(OUT / "users.lua"),
                "BENCH_API_KEY": self.key,
                "BENCH_HOT": "1" if name == "http_transfer_hot" else "0",
                "BENCH_READ": {"http_balance": "balance", "http_healthz": "healthz"}.get(
                    name, "history"
                ),
            }
            script = "transfer.lua" if "transfer" in name else "read.lua"
            if config.warmup > 0:
                wrk(server, label, script, env, config, config.warmup)
            with server.sampling(), self.profiler.run(name, server, seconds), meter.measure(usage):
                result = wrk(server, label, script, env, config, seconds)
        result.details |= usage
        if server is not None:
            result.details["connections_per_worker"] = server.split
        result.details["load_before_after"] = [
            round(x, 2) for x in (*load_before, *os.getloadavg())
        ]
        cpu = result.details.get("cpu", {})
        say(
            f"{label}: {result.rps:.0f}/s p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms "
            f"errors {result.errors}; cores used: server {cpu.get('server_cores', '-')}, "
            f"postgres {cpu.get('postgres_cores', '-')}, load {cpu.get('loadgen_cores')}; "
            f"machine busy {cpu.get('machine_busy', 0):.0%}, "
            f"iowait {cpu.get('machine_iowait', 0):.0%}, steal {cpu.get('machine_steal', 0):.0%}"
        )
        return result

    def seed_large(self, database: str = DATABASE) -> None:
        with self.cluster.connect(database) as conn:
            row = conn.execute("SELECT count(*) FROM ledger.events").fetchone()
            assert row is not None
            existing = int(row[0])
        transfers = max(0, -(-(self.config.events - existing) // 2))
        say(
            f"large store ({database}): {existing} events now, "
            f"appending {transfers} transfers ({2 * transfers} events)"
        )
        if transfers:
            self.timed("seed large store", lambda: self.cluster.psql(
                "-v", f"users={self.config.users}", "-v", f"transfers={transfers}",
                "-v", f"api_key_id={self.key_id}", "-f", str(BENCH / "seed_large.sql"),
                log=OUT / "seed_large.log", database=database,
            ))  # fmt: skip
            self.timed("vacuum analyze", lambda: self.vacuum(database))
        self.verify = self.timed("verify projections", lambda: self.verify_projections(database))
        if self.verify.get("ok") is not True:
            (OUT / "verify.json").write_text(json.dumps(self.verify, indent=2))
            raise SystemExit(f"api.verify_projections() is not ok: see {OUT}/verify.json")
        with self.cluster.connect(database) as conn:
            row = conn.execute("SELECT count(*) FROM ledger.events").fetchone()
            assert row is not None
            self.events_in_large_store = int(row[0])
        say(f"large store: {self.events_in_large_store} events, api.verify_projections() ok")

    def prepare_large(self) -> None:
        """The large store: a copy of the bench database (its users, their wallets and the API
        key), seeded, proved and vacuumed, before the first round; then the host is given the
        seed's writes to finish (the fsync probe's lesson: writes still going back to the host
        cost the next run its CPU as stolen time)."""
        with self.cluster.connect("postgres") as conn:
            conn.execute(f"CREATE DATABASE {LARGE_DATABASE} TEMPLATE {DATABASE}")
        self.large_database = True
        self.seed_large(LARGE_DATABASE)
        self.timed("sync", os.sync)

    def vacuum(self, database: str = DATABASE) -> None:
        with self.cluster.connect(database) as conn:
            conn.execute("VACUUM (ANALYZE) ledger.events, ledger.ledger_entries, ledger.balances,"
                         " ledger.snapshots")  # fmt: skip
            conn.execute("CHECKPOINT")

    def verify_projections(self, database: str = DATABASE) -> dict[str, Any]:
        with self.cluster.connect(database) as conn:
            conn.execute("SET work_mem = '256MB'")
            row = conn.execute("SELECT api.verify_projections()").fetchone()
        assert row is not None
        result: dict[str, Any] = row[0]
        return result

    def run(self) -> None:
        """Every run in BENCH_ROUNDS pieces, one piece of each per round: a ratio between two
        runs compares rates pooled over the same rounds, so the host's drift during the bench
        (its speed moves by a third within an hour here) falls on both sides alike."""
        self.prepare()
        runs = self.config.runs
        large = any(r in runs for r in LARGE_RUNS)
        if large:
            self.prepare_large()
        http = [r for r in HTTP_ORDER if r in runs]
        for number in range(1, self.config.rounds + 1):
            say(f"round {number} of {self.config.rounds}")
            for name in (r for r in PGBENCH_RUNS if r in runs):
                self.record(name, number)
            if http:
                self.start_server(large)
                for name in http:
                    self.record(name, number)
                self.stop_server()
        self.results = {
            name: pool(pieces, self.config.latency) for name, pieces in self.pieces.items()
        }
        self.load = {name: r.details["load_before_after"] for name, r in self.results.items()}
        self.probe_disk()

    def record(self, name: str, number: int) -> None:
        label = name if self.config.rounds == 1 else f"{name}/round-{number}"
        self.pieces.setdefault(name, []).append(self.piece(name, self.config.piece, label))

    # reporting

    def baseline_rps(self) -> float:
        """The machine's limit: the baseline's rate over its pieces, one in each round, as every
        other run's rate is over its own in the same rounds."""
        return self.results["baseline"].rps if "baseline" in self.results else 0.0

    def table(self) -> str:
        base = self.baseline_rps()
        header = (
            "| run | rps | p50_ms | p99_ms | errors | ratio to baseline "
            "| server CPU ms/req | postgres CPU ms/req |"
        )
        lines = [header, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name in KNOWN_RUNS:
            r = self.results.get(name)
            if r is None:
                continue
            ratio = f"{r.rps / base:.2f}" if base and has_ratio(name) else "-"
            cpu = " | ".join(ms_text(r.cpu_ms_per_request(part)) for part in ("server", "postgres"))
            lines.append(
                f"| {name} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | {ratio} "
                f"| {cpu} |"
            )
        return "\n".join(lines)

    def latency_table(self) -> str:
        """wrk's percentiles (as reported, corrected for coordinated omission) next to the
        measured ones (each request timed by the Lua script; pgbench's log is measured too)."""
        lines = [
            "| run | p50_ms | p99_ms | measured p50_ms | measured p90_ms | measured p99_ms "
            "| measured max_ms | connections per worker |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name in KNOWN_RUNS:
            r = self.results.get(name)
            if r is None:
                continue
            d = r.details
            if "raw_p50_us" in d:
                measured = [d[f"raw_{k}_us"] / 1000 for k in ("p50", "p90", "p99", "max")]
            elif "max_ms" in d:  # pgbench: its per-transaction log is already measured
                measured = [r.p50_ms, d["p90_ms"], r.p99_ms, d["max_ms"]]
            else:
                measured = []
            cells = " | ".join(f"{v:.2f}" for v in measured) if measured else "- | - | - | -"
            split = split_text(d.get("connections_per_worker") or [])
            lines.append(f"| {name} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {cells} | {split} |")
        return "\n".join(lines)

    def cpu_table(self) -> str:
        """Where the CPU went in each run: cores used by each part, and CPU ms per request."""
        lines = [
            "| run | server cores | postgres cores | load generator cores | other cores "
            "| machine busy | iowait | steal | server ms/req | postgres ms/req |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name in KNOWN_RUNS:
            r = self.results.get(name)
            cpu = r.details.get("cpu") if r else None
            if r is None or not cpu:
                continue

            def cores(part: str, usage: dict[str, Any] = cpu) -> str:
                value = usage.get(f"{part}_cores")
                return "-" if value is None else f"{value:.2f}"

            lines.append(
                f"| {name} | {cores('server')} | {cores('postgres')} | {cores('loadgen')} "
                f"| {cores('other')} "
                f"| {cpu['machine_busy']:.0%} | {cpu['machine_iowait']:.0%} "
                f"| {cpu.get('machine_steal', 0):.0%} "
                f"| {ms_text(r.cpu_ms_per_request('server'))} "
                f"| {ms_text(r.cpu_ms_per_request('postgres'))} |"
            )
        return "\n".join(lines)

    def goals(self) -> list[str]:
        r = self.results
        out: list[str] = []

        def check(text: str, ok: bool | None, value: str) -> None:
            mark = "n/a " if ok is None else ("PASS" if ok else "FAIL")
            out.append(f"{mark}  {text}: {value}")

        def ratio(a: str, b: str) -> float | None:
            base = self.baseline_rps() if b == "baseline" else r[b].rps if b in r else 0
            if a in r and base:
                return r[a].rps / base
            return None

        def figure(value: float, passes: Callable[[float], bool]) -> str:
            # Two decimals, or three where two would hide the verdict (0.447 as 0.45, failing).
            return f"{value:.2f}" if passes(round(value, 2)) == passes(value) else f"{value:.3f}"

        def check_ratio(text: str, a: str, b: str, least: float) -> None:
            value = ratio(a, b)
            shown = "-" if value is None else figure(value, lambda v: v >= least)
            check(text, None if value is None else value >= least, shown)

        check_ratio("api.transfer via pgbench >= 0.45 of baseline", "db_transfer", "baseline", 0.45)
        # A hold's cost over a transfer's: the inverse of their rates.
        hold = ratio("db_transfer", "db_hold")
        check("api.create_hold costs <= 1.2x api.transfer", None if hold is None else hold <= 1.2,
              "-" if hold is None else f"{figure(hold, lambda v: v <= 1.2)}x")  # fmt: skip
        check_ratio("POST /transfers >= 0.35 of baseline", "http_transfer", "baseline", 0.35)
        if "http_transfer" in r:
            t = r["http_transfer"]
            check("POST /transfers p99 < 25 ms, 0 errors", t.p99_ms < 25 and t.errors == 0,
                  f"{t.p99_ms:.1f} ms, {t.errors} errors")  # fmt: skip
        check_ratio(
            "hot account >= 0.5 of uniform (HTTP)", "http_transfer_hot", "http_transfer", 0.5
        )
        if "http_transfer_hot" in r:
            h = r["http_transfer_hot"]
            check("hot account p99 < 100 ms", h.p99_ms < 100, f"{h.p99_ms:.1f} ms")
        check_ratio("balance reads >= 2x transfers (HTTP)", "http_balance", "http_transfer", 2.0)
        check_ratio("GET /users/{id}/balance >= 0.6 of baseline", "http_balance", "baseline", 0.6)
        for run, most in (("http_transfer", 0.35), ("http_balance", 0.25)):
            ms = r[run].cpu_ms_per_request("server") if run in r else None
            text = "-" if ms is None else f"{figure(ms, lambda v, most=most: v <= most)} ms"
            check(f"server CPU per request of {run} <= {most} ms",
                  None if ms is None else ms <= most, text)  # fmt: skip
        over_http, under_pgbench = (
            r[run].cpu_ms_per_request("postgres") if run in r else None
            for run in ("http_transfer", "db_transfer")
        )
        if over_http and under_pgbench:
            grow = over_http / under_pgbench
            text = f"{over_http:.2f} vs {under_pgbench:.2f} ms ({grow - 1:+.0%})"
            check("PostgreSQL CPU per transfer over HTTP within 10% of pgbench",
                  abs(grow - 1) <= 0.1, text)  # fmt: skip
        for large, fresh in (("http_transfer_large", "http_transfer"),
                             ("http_history_large", "http_history")):  # fmt: skip
            if large in r and fresh in r and r[fresh].p99_ms:
                grow = r[large].p99_ms / r[fresh].p99_ms
                value = f"{r[large].p99_ms:.1f} vs {r[fresh].p99_ms:.1f} ms ({grow - 1:+.0%})"
                check(f"{large} p99 within 15% of {fresh}", grow <= 1.15, value)
        if self.max_rss_kb:
            mb = self.max_rss_kb / 1024
            check("each server process < 200 MB resident", mb < 200, f"largest {mb:.0f} MB")
        errors = sum(x.errors for x in r.values())
        check("zero errors in every run", errors == 0, str(errors))
        rounds = r["baseline"].details.get("rounds", []) if "baseline" in r else []
        if len(rounds) > 1:
            rates = ", ".join(f"{x['rps']:,.0f}" for x in rounds)
            out.append(
                f"info  the baseline by round: {rates} per second (last/first"
                f" {rounds[-1]['rps'] / rounds[0]['rps']:.2f}: the machine's drift); each ratio"
                " compares rates pooled over the same rounds"
            )
        return out

    def report(self, started: dt.datetime) -> None:
        table = self.table()
        goals = self.goals()
        rss_mb = round(self.max_rss_kb / 1024, 1)
        date = started.strftime("%Y-%m-%dT%H:%M:%SZ")
        results = {
            "date": date,
            "machine": machine(),
            "server_rss_mb": rss_mb,
            "events_in_large_store": self.events_in_large_store,
            "baseline_rps": round(self.baseline_rps(), 1),
            "runs": {
                name: self.results[name].public() for name in ALL_RUNS if name in self.results
            },
        }
        reference = {n: self.results[n].public() for n in REFERENCE_RUNS if n in self.results}
        if reference:
            results["reference_runs"] = reference
        settings = (
            f"{self.config.piece * self.config.rounds} s per run in {self.config.rounds} "
            f"round{'s' if self.config.rounds > 1 else ''} of {self.config.piece} s, "
            f"{self.config.connections} connections, "
            f"{self.config.users} users, {self.config.workers} server workers, "
            f"HTTP latency from {'wrk' if self.config.latency == 'wrk' else 'the Lua timer'}, "
            f"PostgreSQL {self.cluster.version()} (fsync, synchronous_commit, full_page_writes on; "
            f"shared_buffers 512MB, max_wal_size 4GB; huge pages {self.cluster.huge_pages})"
        )
        details = {
            **results,
            "settings": settings,
            "config": self.config.__dict__,
            "timings_s": self.timings,
            "server_rss_mb_by_role": {k: round(v / 1024, 1) for k, v in self.rss_by_role.items()},
            "load_average_before_after": self.load,
            "disk_fsync_probe": self.disk,
            "latency_source": self.config.latency,
            "verify_projections": {k: v for k, v in self.verify.items() if not isinstance(v, list)},
            "runs_details": {name: res.details for name, res in self.results.items()},
            "goals": goals,
        }
        OUT.mkdir(exist_ok=True)
        (OUT / "details.json").write_text(json.dumps(details, indent=2, default=str) + "\n")
        print(f"\nfinanceATP bench, {date}, {results['machine']}")
        print(settings)
        print(f"largest server process: {rss_mb} MB resident; large store: "
              f"{self.events_in_large_store} events"
              + (f" (seeded in {self.timings['seed large store']} s)"
                 if "seed large store" in self.timings else ""))  # fmt: skip
        print(f"load average (1, 5, 15 min) before the bench: {self.load_at_start}")
        print(f"{disk_text(self.disk)}\n")
        print(table)
        print("\nLatency: wrk's percentiles against each request timed as it happened:\n")
        print(self.latency_table())
        print("\nWhere the CPU went (cores = CPU seconds per second of the run):\n")
        print(self.cpu_table())
        print("\nGoals:")
        print("\n".join(f"  {g}" for g in goals))
        if not self.config.complete:
            target = OUT / (
                "results-profile.json" if self.config.profile else "results-partial.json"
            )
            target.write_text(json.dumps(results, indent=2) + "\n")
            print(f"\n(partial or profiled run: wrote {target}, left bench/results.json alone)")
            return
        (BENCH / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        chart(results, BENCH / "results.png")
        tables = [
            "Latency: wrk's percentiles (corrected for coordinated omission, see above) against"
            " each request timed as it happened:",
            "",
            self.latency_table(),
            "",
            "Where the CPU went (cores: CPU seconds per second of the run; ms/req: CPU per"
            " request):",
            "",
            self.cpu_table(),
        ]
        update_readme(date, results["machine"], settings, table, "\n".join(tables), goals, details)
        update_main_readme(results, goals)
        print("\nwrote bench/results.json, bench/results.png, bench/README.md and README.md")

    load_at_start: tuple[float, ...] = ()


def split_text(split: list[Any]) -> str:
    """How wrk's connections split between the workers: 10/6, or per round 10/6 8/8 9/7."""
    if split and isinstance(split[0], list):
        return " ".join(split_text(x) for x in split) or "-"
    return "/".join(map(str, split)) or "-"


def ms_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def disk_text(disk: dict[str, Any]) -> str:
    if not disk:
        return "disk: not probed"
    return (
        f"disk (the cluster's filesystem, after the runs): 8 kB write + fdatasync "
        f"p50 {disk['p50_ms']} ms, p99.9 {disk['p99.9_ms']} ms, max {disk['max_ms']} ms, "
        f"{disk['stalls_over_100ms']} stalls over 100 ms in {disk['seconds']} s"
    )


def has_ratio(name: str) -> bool:
    """Whether a run's rate is shown against the baseline's: not for a reference run, which is no
    transfer."""
    return name in ALL_RUNS


def recorded_baseline_rps(results: dict[str, Any]) -> float:
    """The ratios' denominator as results.json records it (older files: the first baseline's)."""
    recorded = results.get("baseline_rps") or results["runs"].get("baseline", {}).get("rps")
    return float(recorded or 0)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    names = [n for n in ALL_RUNS if n in runs]
    rps = [runs[n]["rps"] for n in names]
    base = recorded_baseline_rps(results)
    colors = [
        "#7f7f7f" if n == "baseline" else "#1f77b4" if n.startswith("db_")
        else "#ff7f0e" if n.endswith("_large") else "#2ca02c"
        for n in names
    ]  # fmt: skip
    fig, ax = plt.subplots(figsize=(11, 5.5))
    bars = ax.bar(names, rps, color=colors)
    for bar, name in zip(bars, names, strict=True):
        run = runs[name]
        label = f"{run['rps']:.0f}/s\n{run['rps'] / base:.2f}x" if base else f"{run['rps']:.0f}/s"
        label += f"\np99 {run['p99_ms']:.0f} ms"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.set_ylabel("requests (transactions) per second")
    ax.set_title(
        f"financeATP make bench, {results['date']}\n{results['machine']}; "
        f"ratio = rps / baseline's, both over the same rounds; "
        f"{results['events_in_large_store']:,} events in the large store",
        fontsize=9,
    )
    ax.set_ylim(0, max(rps) * 1.25 if rps else 1)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_block(readme: Path, name: str, lines: list[str]) -> None:
    """Replaces what lies between readme's <!-- bench:NAME:start/end --> markers by lines."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        say(f"{readme.relative_to(ROOT)} has no {name} markers: the run not written there")
        return
    before, rest = text.split(start, 1)
    readme.write_text(before + "\n".join([start, *lines, end]) + rest.split(end, 1)[1])


def goals_and_chart(goals: list[str], chart_path: str) -> list[str]:
    return [
        "Goals, from this run:",
        "",
        "```",
        *goals,
        "```",
        "",
        f"![requests per second of each run, with the ratio to the baseline]({chart_path})",
    ]


def update_readme(
    date: str,
    machine_text: str,
    settings: str,
    table: str,
    extra_tables: str,
    goals: list[str],
    details: dict[str, Any],
) -> None:
    timings = details["timings_s"]
    load = details["load_average_before_after"]
    seeded = timings.get("seed large store")
    write_block(BENCH / "README.md", "results", [
        f"Latest run: {date}, {machine_text}; {settings}.",
        "",
        table,
        "",
        f"Largest server process: {details['server_rss_mb']} MB resident. Large store: "
        f"{details['events_in_large_store']:,} events"
        + (f", seeded in {seeded} s, verified by `api.verify_projections()` in "
           f"{timings.get('verify projections')} s." if seeded else "."),
        f"{disk_text(details['disk_fsync_probe'])}.",
        "Load average (1 min) before/after each run: "
        + ", ".join(f"{n} {v[0]}/{v[3]}" for n, v in load.items()) + ".",
        "",
        extra_tables,
        "",
        *goals_and_chart(goals, "results.png"),
    ])  # fmt: skip


def update_main_readme(results: dict[str, Any], goals: list[str]) -> None:
    """The latest run's table, goals and chart in README.md ("Performance"), from what
    results.json holds, so that the README shows the run that wrote results.json."""
    base = recorded_baseline_rps(results)
    rows = [
        (name, run, f"{run['rps'] / base:.2f}" if base and has_ratio(name) else "-", reference)
        for runs, reference in (
            (results["runs"], ""),
            (results.get("reference_runs", {}), "reference, not a goal: "),
        )
        for name, run in runs.items()
    ]
    write_block(ROOT / "README.md", "latest", [
        f"Latest full run, written by `make bench` from `bench/results.json`: {results['date']}, "
        f"{results['machine']}; largest server process {results['server_rss_mb']} MB; "
        f"{results['events_in_large_store']:,} events in the large store (the runs are described "
        "in [bench/README.md](bench/README.md#the-runs)).",
        "",
        "| run | rps | p50 ms | p99 ms | errors | ratio to baseline | server CPU ms/req "
        "| postgres CPU ms/req |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(f"| {prefix}`{name}` | {run['rps']:.0f} | {run['p50_ms']:.1f} | {run['p99_ms']:.1f} "
          f"| {run['errors']} | {ratio} | {ms_text(run.get('server_cpu_ms_per_req'))} "
          f"| {ms_text(run.get('postgres_cpu_ms_per_req'))} |"
          for name, run, ratio, prefix in rows),
        "",
        *goals_and_chart(goals, "bench/results.png"),
    ])  # fmt: skip


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP (a closed terminal) leave through Python's exit, so that what a run
    holds is released on the way out: its cluster stopped, its huge pages returned, its server
    stopped."""

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)


def main() -> None:
    config = Config.from_env()
    if shutil.which("wrk") is None and any(r.startswith("http_") for r in config.runs):
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")

    exit_on_signals()
    started = dt.datetime.now(dt.UTC)
    with contextlib.ExitStack() as stack:
        bench = Bench(config, stack)
        bench.load_at_start = tuple(round(x, 2) for x in os.getloadavg())
        say(f"load average before: {bench.load_at_start}; runs: {', '.join(config.runs)}")
        bench.run()
        bench.stop_server()
    bench.report(started)


if __name__ == "__main__":
    main()
