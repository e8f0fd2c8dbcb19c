"""`make bench-instructions`: CPU instructions per call, counted, not timed.

On a virtual machine whose CPU speed moves by a third from one minute to the next, a change worth
a few percent of a transfer cannot be seen in timings (bench/README.md). Instructions can. A
cluster prepared as `make bench` prepares it (migrated, the users, the API key), 2,000 transfers
and VACUUM ANALYZE (BENCH_INSTRUCTIONS_WARM), then, with the server stopped, for each workload
(BENCH_INSTRUCTIONS_ONLY picks some) one backend in single-user mode (`postgres --single`, fsync
off) under valgrind's callgrind, on a fresh copy of that data directory, executes the workload's
prepared statement n times, and another 3n times (BENCH_INSTRUCTIONS_CALLS is n); the difference
of the two counts over 2n is the instructions of one call, the backend's start and the first
calls' planning subtracted out. For the transfer it also lists the functions that take most of
them (inclusive). BENCH_INSTRUCTIONS_B=<another checkout> applies that checkout's make migrate to
the same prepared cluster and counts again: an A/B of a change to the SQL.
BENCH_INSTRUCTIONS_EVENTS=5000000 first seeds make bench's large store; BENCH_INSTRUCTIONS_CACHE=1
has callgrind simulate the caches and reports their misses per call. Writes
bench/out/instructions.md and bench/out/instructions.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as harness

WORK = harness.OUT / "instructions"
# Each workload: a PREPARE, the arguments of one EXECUTE (i and j: two different users' numbers,
# a and b: their ids, key: an idempotency key, key_hash: the API key's hash), and what it is.
WORKLOADS: dict[str, tuple[str, str, str]] = {
    "empty": (
        "PREPARE w(uuid) AS SELECT $1",
        "('{key}')",
        "a prepared statement that does nothing: what every line of the loop costs",
    ),
    "baseline": (
        "PREPARE w(integer, integer) AS WITH"
        " l AS (SELECT id FROM bench_accounts WHERE id IN ($1, $2) ORDER BY id FOR UPDATE),"
        " d AS (UPDATE bench_accounts SET balance = balance - 1 WHERE id = $1),"
        " c AS (UPDATE bench_accounts SET balance = balance + 1 WHERE id = $2)"
        " INSERT INTO bench_entries (account, amount) SELECT * FROM (VALUES ($1, -1), ($2, 1)) v"
        " WHERE (SELECT count(*) FROM l) = 2",
        "({i}, {j})",
        "the baseline's transfer (lock 2 rows, update 2 balances, insert 2 entries), one statement",
    ),
    "caller": (
        "PREPARE w(text, uuid) AS SELECT refusal FROM ledger.caller($1, 'write', $2, NULL, true)",
        "('{key_hash}', '{key}')",
        "api.transfer's first statement alone: the API key, the rate limit, the idempotency lock",
    ),
    "lock_pair": (
        "PREPARE w(uuid, uuid, uuid) AS SELECT count(*)"
        " FROM ledger.lock_pair($1, 'user_wallet', $2, 'user_wallet', 'bench', $3)",
        "('{a}', '{b}', '{key}')",
        "api.transfer's second statement alone: both wallets locked and read",
    ),
    "transfer": (
        "PREPARE w(uuid, uuid, uuid, text) AS SELECT status FROM api.transfer(from_user_id => $1,"
        " to_user_id => $2, amount => 1.00000000, memo => 'bench', idempotency_key => $3,"
        " api_key_hash => $4, request_user_id => $1)",
        "('{a}', '{b}', '{key}', '{key_hash}')",
        "api.transfer as bench/db_transfer.sql calls it",
    ),
    "transfer_http": (
        "PREPARE w AS SELECT status, body::text, replayed FROM api.transfer(amount => $1,"
        " api_key_hash => $2, client_addr => $3, correlation_id => $4, from_user_id => $5,"
        " idempotency_key => $6, memo => $7, request_hash => $8, request_user_id => $9,"
        " to_user_id => $10)",
        "('1.00000000', '{key_hash}', '127.0.0.1', '{key}', '{a}', '{key}', 'bench', '{key_hash}',"
        " '{a}', '{b}')",
        "api.transfer as the server calls it for POST /transfers (the request's hash computed by"
        " the server; its body printed by this loop)",
    ),
    "balance": (
        "PREPARE w(uuid, text) AS SELECT api.get_balance(user_id => $1, api_key_hash => $2)",
        "('{a}', '{key_hash}')",
        "api.get_balance, as GET /users/{id}/balance calls it",
    ),
}
# Frames every call passes through (the loop, the portal, the executor's entry): not informative.
WRAPPERS = re.compile(r"^(main|PostgresMain|PostgresSingleUserMain|__libc_start|0x)|'")


def pair(i: int, users: int) -> tuple[int, int]:
    """Two different users for call i, spread like pgbench's random pairs, but the same each run."""
    a = 1 + (i * 7919) % users
    b = 1 + (a + (i * 104729) % (users - 1)) % users
    return (a, b) if b != a else (a, a % users + 1)


def key_for(text: str) -> str:
    return str(uuid.UUID(hex=hashlib.md5(text.encode()).hexdigest()))  # noqa: S324 (ids)


def script(side: str, name: str, calls: int, users: int, key_hash: str) -> Path:
    """The workload's PREPARE and its calls, every argument a literal (an expression would be
    evaluated by EXECUTE, which the server's calls do not do): users as bench.py seeds them
    (md5 of the number), an idempotency key new to the cluster."""
    prepare, arguments, _ = WORKLOADS[name]
    lines = [prepare]
    for n in range(calls):
        i, j = pair(n, users)
        key = key_for(f"{side}/{name}/{calls}/{n}")
        lines.append("EXECUTE w" + arguments.format(
            i=i, j=j, a=harness.user_id(i), b=harness.user_id(j), key=key, key_hash=key_hash
        ))  # fmt: skip
    path = WORK / f"{side}-{name}-{calls}.sql"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


def count(cluster: harness.Cluster, sql: Path, out: Path, cache: bool) -> dict[str, int]:
    """Callgrind's totals (Ir: instructions; with cache, the simulated cache's misses too) of one
    single-user backend running sql (its output checked for errors), on a copy of the cluster's
    data directory: every run starts from the same database (one run's dead rows would make the
    next run's calls dearer)."""
    copy = cluster.home / "copy"
    cluster.run_pg("rm", "-rf", str(copy), check=True)
    cluster.run_pg("cp", "-a", str(cluster.data), str(copy), check=True)
    command = [
        *cluster.as_pg(), "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        f"--cache-sim={'yes' if cache else 'no'}",
        cluster.tool("postgres"), "--single", "-D", str(copy), "-c", "fsync=off",
        "-c", "synchronous_commit=off", "-c", "log_min_messages=error", harness.DATABASE,
    ]  # fmt: skip
    with sql.open() as stdin:
        result = subprocess.run(command, stdin=stdin, capture_output=True, text=True, check=False)
    cluster.run_pg("rm", "-rf", str(copy), check=True)
    errors = [line for line in result.stderr.splitlines() if re.search(r"\b(ERROR|FATAL)\b", line)]
    if result.returncode != 0 or errors or not out.exists():
        raise SystemExit(f"instructions: {sql.name} failed:\n{result.stderr[-3000:]}")
    text = out.read_text()
    names = re.search(r"^events: (.+)$", text, flags=re.MULTILINE)
    summary = re.search(r"^summary: (.+)$", text, flags=re.MULTILINE)
    if names is None or summary is None:
        raise SystemExit(f"instructions: no summary in {out}")
    return dict(zip(names.group(1).split(), map(int, summary.group(1).split()), strict=True))


def inclusive(out: Path) -> dict[str, int]:
    """Function name -> inclusive instructions, from callgrind_annotate."""
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--show=Ir", "--threshold=100", str(out)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    functions: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([\d,]+) \([^)]*\)\s+(?:\S*:)?(\S+) \[", line)
        if m:
            name = m.group(2)
            functions[name] = functions.get(name, 0) + int(m.group(1).replace(",", ""))
    return functions


def measure(
    cluster: harness.Cluster, side: str, name: str, calls: int, users: int, key_hash: str,
    cache: bool,
) -> dict[str, Any]:  # fmt: skip
    short, long = calls, 3 * calls
    # In the cluster's home: the postgres user writes them.
    outs = [cluster.home / f"{side}-{name}-{n}.callgrind" for n in (short, long)]
    counts = [
        count(cluster, script(side, name, n, users, key_hash), out, cache)
        for n, out in zip((short, long), outs, strict=True)
    ]

    def per_call(*events: str) -> int:
        return round(sum(counts[1][e] - counts[0][e] for e in events) / (long - short))

    result: dict[str, Any] = {"per_call": per_call("Ir"), "counts": counts, "calls": [short, long]}
    if cache:  # first-level data cache and last-level misses, reads and writes
        result["d1_misses"] = per_call("D1mr", "D1mw")
        result["ll_misses"] = per_call("DLmr", "DLmw")
    harness.say(f"instructions: {side}: {name}: {result['per_call']:,} per call")
    if name == "transfer":
        first, second = inclusive(outs[0]), inclusive(outs[1])
        rows = [
            (round((second[f] - first.get(f, 0)) / (long - short)), f)
            for f in second
            if not WRAPPERS.search(f)
        ]
        rows.sort(reverse=True)
        result["functions"] = [{"function": f, "per_call": v} for v, f in rows[:40]]
    return result


def warm(bench: harness.Bench, transfers: int) -> None:
    """Transfers (with idempotency keys) before the counts, then VACUUM ANALYZE: on an empty
    idempotency_keys table the planner chooses a sequential scan for lock_pair's look-up of the
    key, which a session keeps while the table grows, so each call would read every key written
    before it in the run (in make bench the server's sessions start after pgbench's transfers,
    and autovacuum's ANALYZE of the table makes sessions plan again)."""
    with bench.cluster.connect() as conn:
        for n in range(transfers):
            i, j = pair(n + 1_000_000, bench.config.users)
            conn.execute(
                "SELECT api.transfer(from_user_id => %s, to_user_id => %s, amount => 1,"
                " idempotency_key => gen_random_uuid(), api_key_hash => %s, request_user_id => %s)",
                [harness.user_id(i), harness.user_id(j), bench.key_hash, harness.user_id(i)],
            )
        conn.execute("VACUUM ANALYZE")


def migrate_to(bench: harness.Bench, checkout: Path) -> None:
    """Apply another checkout's migrations and functions to the cluster (whose data directory the
    counts leave as prepared, since they run on copies): make migrate there, with
    this checkout's virtualenv, which it must not reinstall (its pyproject.toml is newer than the
    virtualenv's stamp: make would install that checkout into it)."""
    stamps = sorted((harness.ROOT / ".venv").glob(".installed-*"))
    if not stamps:
        raise SystemExit("instructions: no virtualenv stamp in .venv (run make venv)")
    bench.cluster.start()
    command = ["make", "--no-print-directory", "-o", str(stamps[0]), "migrate",
               f"DATABASE_URL={bench.cluster.url()}", f"VENV={harness.ROOT / '.venv'}",
               f"STAMP={stamps[0]}"]  # fmt: skip
    result = subprocess.run(command, cwd=checkout, check=False, capture_output=True, text=True)
    bench.cluster.stop()
    if result.returncode != 0 or "pip" in result.stdout:
        raise SystemExit(f"make migrate in {checkout} failed:\n{result.stdout}{result.stderr}")


def markdown(sides: dict[str, dict[str, dict[str, Any]]], header: str) -> str:
    a = sides["A"]
    transfer = a.get("transfer", {}).get("per_call")
    b = sides.get("B")
    lines = ["# Instructions per call (`make bench-instructions`)", "", header, ""]
    if b is None:
        cache = all("ll_misses" in r for r in a.values())
        extra = " simulated cache misses per call, first level / last level |" if cache else ""
        lines += [f"| workload | instructions per call | of a transfer |{extra} what it is |",
                  f"| --- | ---: | ---: |{' ---: |' if cache else ''} --- |"]  # fmt: skip
        for name, r in a.items():
            share = f"{r['per_call'] / transfer:.0%}" if transfer else "-"
            misses = f" {r['d1_misses']:,} / {r['ll_misses']:,} |" if cache else ""
            lines.append(f"| {name} | {r['per_call']:,} | {share} |{misses} {WORKLOADS[name][2]} |")
    else:
        lines += [
            "| workload | A: instructions per call | B | B - A |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, r in a.items():
            diff = b[name]["per_call"] - r["per_call"]
            lines.append(f"| {name} | {r['per_call']:,} | {b[name]['per_call']:,} | "
                         f"{diff:+,} ({diff / r['per_call']:+.1%}) |")  # fmt: skip
    if transfer and "functions" in a["transfer"]:
        lines += [
            "",
            "Where a transfer's instructions go (inclusive: a function with all it calls; the"
            " loop's own frames, recursive calls and names callgrind could not resolve left out):",
            "",
            "| function | instructions per call | of a transfer |",
            "| --- | ---: | ---: |",
        ]
        for row in a["transfer"]["functions"]:
            lines.append(f"| `{row['function']}` | {row['per_call']:,} | "
                         f"{row['per_call'] / transfer:.1%} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def selected() -> tuple[str, ...]:
    only = {
        w.strip() for w in os.environ.get("BENCH_INSTRUCTIONS_ONLY", "").split(",") if w.strip()
    }
    unknown = sorted(only - set(WORKLOADS))
    if unknown:
        raise SystemExit(
            f"BENCH_INSTRUCTIONS_ONLY: unknown {unknown}; known: {', '.join(WORKLOADS)}"
        )
    return tuple(w for w in WORKLOADS if not only or w in only)


def main() -> None:
    harness.exit_on_signals()
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    calls = harness.env_int("BENCH_INSTRUCTIONS_CALLS", 300)
    other = os.environ.get("BENCH_INSTRUCTIONS_B", "").strip()
    cache = os.environ.get("BENCH_INSTRUCTIONS_CACHE", "") not in ("", "0")
    config = dataclasses.replace(
        harness.Config.from_env(), events=harness.env_int("BENCH_INSTRUCTIONS_EVENTS", 0),
        warmup=0, fsync_probe=0, profile=False, huge_pages=False,
    )  # fmt: skip
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    sides: dict[str, dict[str, dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        bench = harness.Bench(config, stack)
        cluster = bench.cluster
        cluster.use_own_home("-instructions")
        bench.prepare()
        if config.events:  # the large store of make bench, BENCH_INSTRUCTIONS_EVENTS events
            bench.seed_large()
        warm(bench, harness.env_int("BENCH_INSTRUCTIONS_WARM", 2000))
        version = cluster.version()
        cluster.stop()  # single-user mode needs the data directory to itself
        checkouts = [("A", harness.ROOT)] + ([("B", Path(other).resolve())] if other else [])
        for side, checkout in checkouts:
            if side == "B":
                migrate_to(bench, checkout)
            sides[side] = {
                name: measure(cluster, side, name, calls, config.users, bench.key_hash, cache)
                for name in selected()
            }
    started = dt.datetime.now(dt.UTC)
    compared = f"; A: this checkout, B: {other} (its make migrate applied after A's counts)"
    header = (
        f"{started:%Y-%m-%dT%H:%M:%SZ}, {harness.machine()}; PostgreSQL {version}, one backend in "
        f"single-user mode under valgrind --tool=callgrind, {config.users:,} users; instructions "
        f"of {2 * calls} calls (the difference between runs of {calls} and {3 * calls}) per call; "
        f"fsync and synchronous_commit off in that backend"
        f"{f'; a large store of {bench.events_in_large_store:,} events' if config.events else ''}"
        f"{'; cache simulated (--cache-sim=yes)' if cache else ''}{compared if other else ''}."
    )
    table = markdown(sides, header)
    print(table)
    (harness.OUT / "instructions.md").write_text(table)
    document = {
        "date": f"{started:%Y-%m-%dT%H:%M:%SZ}",
        "machine": harness.machine(),
        "postgresql": version,
        "calls": calls,
        "events": bench.events_in_large_store,
        "b": other or None,
        "sides": sides,
    }
    (harness.OUT / "instructions.json").write_text(json.dumps(document, indent=2) + "\n")
    harness.say("wrote bench/out/instructions.md and bench/out/instructions.json")


if __name__ == "__main__":
    main()
