"""`make bench-ablation`: what each part of api.transfer costs in PostgreSQL CPU.

A cluster prepared by bench/bench.py (migrated, 10,000 users, the API key), then pgbench, in
interleaved rounds: the baseline, api.transfer, and api.transfer without one part or several
(a trigger dropped for the run, or a copy of api.transfer / ledger.post_journal with the part
cut out). CPU: the postmaster and its exited backends, per transaction; autovacuum and timed
checkpoints off, synchronous_commit off unless BENCH_ABLATION_DURABLE=1. Writes
bench/out/ablation.md and bench/out/ablation.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as harness

SQL = harness.ROOT / "sql"
WORK = harness.OUT / "ablation"
# The parts of api.transfer that a variant can leave out. A trigger part drops the trigger for
# the run (and re-creates it after); the others cut the SQL text of a copy of api.transfer or
# ledger.post_journal, applied before renaming: (regex, replacement), each must match once.
TRIGGERS = {
    "projection": ("ledger.events", "events_project"),
    "balance_check": ("ledger.ledger_entries", "ledger_entries_balanced"),
    "audit_hash": ("ledger.audit_log", "audit_log_hash"),
}
NO_AUTH_CTX = (
    "_ctx := ROW('{key_id}'::uuid, session_user, transfer.request_user_id,"
    " transfer.correlation_id, transfer.client_addr, '{key_id}')::ledger.request_context;"
)
TRANSFER_CUTS = {
    "auth": [(r"_ctx := ledger\.authorize\(.*?\);", NO_AUTH_CTX)],
    "idempotency": [(r"_stored := ledger\.idempotency_lookup\(.*?\);", "")],
}
JOURNAL_CUTS = {
    "idempotency": [(r"WHERE post_journal\.idempotency_key IS NOT NULL;", "WHERE false;")],
    "audit": [(r"\), audited AS \(.*?'\\x'::bytea\)\s*\)", ")")],
}
# Each variant: the parts it leaves out. The single cuts say what each part costs; the
# cumulative ones (a staircase, each step leaving out one part more) say how close to the
# baseline a transfer gets without them, down to the events and journal lines alone.
VARIANTS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "full": (),
    "no_projection": ("projection",),
    "no_balance_check": ("balance_check",),
    "no_audit_hash": ("audit_hash",),
    "no_auth": ("auth",),
    "no_idempotency": ("idempotency",),
    "no_audit": ("audit",),
    "no_auth_idempotency": ("auth", "idempotency"),
    "no_auth_idempotency_audit": ("auth", "idempotency", "audit"),
    "no_auth_idempotency_audit_check": ("auth", "idempotency", "audit", "balance_check"),
    "events_and_lines_only": ("auth", "idempotency", "audit", "balance_check", "projection"),
}
PART_TEXT = {
    "projection": "trigger events_project (balances and snapshots do not move)",
    "balance_check": "trigger ledger_entries_balanced (journal balance check)",
    "audit_hash": "trigger audit_log_hash (the audit row's hash)",
    "auth": "ledger.authorize (API key lookup, rate limit): a fixed request context",
    "idempotency": "ledger.idempotency_lookup and the idempotency_keys insert",
    "audit": "the audit_log insert (and so its hash trigger)",
}
LEFT_OUT = {
    "baseline": "plain tables: lock 2 rows, update 2 balances, insert 2 entries",
    "full": "nothing: api.transfer as it is (bench/db_transfer.sql)",
} | {
    name: "; ".join(PART_TEXT[part] for part in parts) for name, parts in VARIANTS.items() if parts
}


def copied(name: str) -> bool:
    """Whether the variant calls a cut copy of api.transfer (else api.transfer itself)."""
    return any(part in TRANSFER_CUTS or part in JOURNAL_CUTS for part in VARIANTS[name])


def sub_once(text: str, pattern: str, replacement: str, what: str) -> str:
    new, count = re.subn(pattern, lambda _: replacement, text, flags=re.DOTALL)
    if count != 1:
        raise SystemExit(f"ablation: {what}: {pattern!r} matched {count} times, not once")
    return new


def function_sql(path: Path, old: str, new: str, cuts: list[tuple[str, str]]) -> str:
    """The CREATE FUNCTION statement of path, cut, and renamed from schema.old to schema.new
    (including the function-name qualifier of its parameters, e.g. transfer.amount)."""
    text = path.read_text()
    start = text.index("CREATE OR REPLACE FUNCTION")
    text = text[start : text.index("\n$$;", start) + 4]
    for pattern, replacement in cuts:
        text = sub_once(text, pattern, replacement, f"{path.name}")
    schema = "api" if path.parent.name == "api" else "ledger"
    text = sub_once(text, rf"FUNCTION {schema}\.{old}\(", f"FUNCTION {schema}.{new}(", path.name)
    return re.sub(rf"\b{old}\.", f"{new}.", text)


def variant_sql(name: str, key_id: str) -> list[str]:
    parts = VARIANTS[name]
    cuts = [
        (p, r.replace("{key_id}", key_id)) for part in parts for p, r in TRANSFER_CUTS.get(part, [])
    ]
    statements: list[str] = []
    journal_cuts = [cut for part in parts for cut in JOURNAL_CUTS.get(part, [])]
    if journal_cuts:
        journal = f"ablation_post_journal_{name}"
        path = SQL / "ledger" / "post_journal.sql"
        statements.append(function_sql(path, "post_journal", journal, journal_cuts))
        cuts.append((r"ledger\.post_journal\(", f"ledger.{journal}("))
    path = SQL / "api" / "transfer.sql"
    statements.append(function_sql(path, "transfer", f"ablation_{name}", cuts))
    statements.append(f"GRANT EXECUTE ON FUNCTION api.ablation_{name} TO atp_app")
    return statements


def setup(bench: harness.Bench) -> None:
    """The variants (as atp_owner, who owns api.transfer), the CPU-only settings, a smoke test
    of each variant's effects, and VACUUM ANALYZE."""
    WORK.mkdir(parents=True, exist_ok=True)
    script = (harness.BENCH / "db_transfer.sql").read_text()
    with bench.cluster.connect() as conn:
        conn.execute("SET ROLE atp_owner")
        for name in filter(copied, VARIANTS):
            for statement in variant_sql(name, bench.key_id):
                conn.execute(statement.encode())
            call = sub_once(script, r"api\.transfer\(", f"api.ablation_{name}(", "db_transfer.sql")
            (WORK / f"{name}.sql").write_text(call)
        conn.execute("RESET ROLE")
        for setting in ("autovacuum = off", "checkpoint_timeout = '1h'"):
            conn.execute(f"ALTER SYSTEM SET {setting}")
        conn.execute("SELECT pg_reload_conf()")
        for name in ("full", *filter(copied, VARIANTS)):
            smoke(conn, name, bench.key_hash)
        conn.execute("VACUUM ANALYZE")


def smoke(conn: Any, name: str, key_hash: str) -> None:
    """One call as atp_app: answers 201 and writes (or not) the audit row and stored response."""
    counts = "SELECT (SELECT count(*) FROM ledger.audit_log), count(*) FROM ledger.idempotency_keys"
    before = conn.execute(counts).fetchone()
    conn.execute("SET ROLE atp_app")
    row = conn.execute(
        f"SELECT status FROM api.{'transfer' if name == 'full' else 'ablation_' + name}("
        "from_user_id => md5('1')::uuid, to_user_id => md5('2')::uuid, amount => 1, memo => 'x',"
        " idempotency_key => gen_random_uuid(), api_key_hash => %s,"
        " request_user_id => md5('1')::uuid)",
        [key_hash],
    ).fetchone()
    conn.execute("RESET ROLE")
    after = conn.execute(counts).fetchone()
    expected = (int("audit" not in VARIANTS[name]), int("idempotency" not in VARIANTS[name]))
    got = tuple(a - b for a, b in zip(after, before, strict=True))
    if row is None or row[0] != 201 or got != expected:
        raise SystemExit(f"ablation: {name} smoke test: status {row}, rows (audit, idem) {got}")


def pg_ticks(pm: int) -> tuple[int, int]:
    """(postmaster with its exited children, its live children): clock ticks."""
    live = sum(harness.CpuMeter.ticks(pid) for pid in harness.descendants(pm))
    return harness.CpuMeter.ticks(pm, children=True), live


def wait_for_backends(pm: int, timeout: float = 60) -> None:
    """Until every client backend has exited and been reaped (its CPU then is in cutime)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        titles: list[bytes] = []
        for pid in harness.descendants(pm):
            with contextlib.suppress(OSError):
                titles.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        if not any(not t or b"127.0.0.1(" in t for t in titles):  # empty: a zombie
            return
        time.sleep(0.05)
    raise SystemExit("ablation: client backends still there 60 s after pgbench ended")


def before_run(bench: harness.Bench, name: str) -> list[str]:
    """Drops the variant's triggers, if any (all of each: DISABLE would leave the transition
    table and the queueing of AFTER events), then the same start for every run: the updated
    tables vacuumed, a checkpoint. Returns the statements that re-create the triggers."""
    recreate: list[str] = []
    with bench.cluster.connect() as conn:
        for table, trigger in (TRIGGERS[p] for p in VARIANTS[name] if p in TRIGGERS):
            row = conn.execute("SELECT pg_get_triggerdef(oid) FROM pg_trigger"
                               " WHERE tgrelid = %s::regclass AND tgname = %s", [table, trigger],
                               ).fetchone()  # fmt: skip
            if row is None:
                raise SystemExit(f"ablation: trigger {trigger} on {table} not found")
            recreate.append(str(row[0]))
            conn.execute(f"DROP TRIGGER {trigger} ON {table}".encode())
        conn.execute("VACUUM ledger.balances, ledger.api_keys, bench_accounts")
        conn.execute("CHECKPOINT")
    return recreate


def run(bench: harness.Bench, name: str, pm: int) -> dict[str, float]:
    config = bench.config
    script, user = harness.BENCH / "db_transfer.sql", "atp_app"
    if name == "baseline":
        script, user = harness.BENCH / "baseline.sql", "postgres"
    elif copied(name):
        script = WORK / f"{name}.sql"
    variables = {"users": str(config.users), "key_hash": bench.key_hash}  # baseline: unused
    recreate = before_run(bench, name)
    wait_for_backends(pm)
    before, label = pg_ticks(pm), f"ablation-{name}"
    usage: dict[str, Any] = {}
    with harness.CpuMeter(bench.cluster, None).measure(usage):  # for other_cores: neighbours
        result = harness.pgbench(bench.cluster, label, script, user, variables, config,
                                 config.seconds, log=False)  # fmt: skip
    wait_for_backends(pm)
    after = pg_ticks(pm)
    with bench.cluster.connect() as conn:
        for statement in recreate:
            conn.execute(statement.encode())
    output = (harness.OUT / "pgbench" / label / "pgbench.out").read_text()
    done = re.search(r"number of transactions actually processed: (\d+)", output)
    if result.errors or done is None or int(done.group(1)) == 0:
        raise SystemExit(f"ablation: pgbench {name} had failures:\n{output}")
    transactions = int(done.group(1))
    tick_us = 1e6 / harness.CpuMeter.TICK
    return {"tps": result.rps, "transactions": transactions,
            "cpu_us": (after[0] - before[0]) * tick_us / transactions,
            "background_us": (after[1] - before[1]) * tick_us / transactions,
            "other_cores": usage["cpu"]["other_cores"]}  # fmt: skip


def summarize(rounds: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for name, runs in rounds.items():
        summary[name] = {
            key: round(statistics.median(r[key] for r in runs), 1)
            for key in ("tps", "cpu_us", "background_us")
        } | {"left_out": LEFT_OUT[name], "rounds": runs}
    full, base = summary["full"]["cpu_us"], summary["baseline"]["tps"]
    for values in summary.values():
        values["ratio"] = round(values["tps"] / base, 2) if base else 0
        values["saving_us"] = round(full - values["cpu_us"], 1)
        values["saving_pct"] = round(100 * (full - values["cpu_us"]) / full, 1) if full else 0
    return summary


def markdown(summary: dict[str, dict[str, Any]], header: str) -> str:
    lines = ["# api.transfer ablation (`make bench-ablation`)", "", header, "",
             "| variant | tps | tps / baseline | PostgreSQL CPU µs per transfer (range) "
             "| saving vs full |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name, v in summary.items():
        saving = "-" if name == "full" else f"{v['saving_us']:.0f} µs ({v['saving_pct']:.0f}%)"
        cpu = sorted(r["cpu_us"] for r in v["rounds"])
        spread = f"{v['cpu_us']:.0f} ({cpu[0]:.0f}-{cpu[-1]:.0f})"
        lines.append(f"| {name} | {v['tps']:.0f} | {v['ratio']:.2f} | {spread} | {saving} |")
    lines += ["", "Left out by each variant:", ""]
    lines += [f"- `{name}`: {LEFT_OUT[name]}" for name in summary]
    return "\n".join(lines) + "\n"


def selected() -> tuple[str, ...]:
    """BENCH_ABLATION_ONLY (comma-separated), with the baseline and full always; else all."""
    only = {v.strip() for v in os.environ.get("BENCH_ABLATION_ONLY", "").split(",") if v.strip()}
    unknown = sorted(only - set(VARIANTS))
    if unknown:
        raise SystemExit(f"BENCH_ABLATION_ONLY: unknown {unknown}; known: {', '.join(VARIANTS)}")
    return tuple(v for v in VARIANTS if not only or v in only or v in ("baseline", "full"))


def measure_all(
    bench: harness.Bench, names: tuple[str, ...], rounds: int
) -> dict[str, list[dict[str, float]]]:
    pm = int((bench.cluster.data / "postmaster.pid").read_text().split()[0])
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    harness.say(f"ablation warm-up: full, {run(bench, 'full', pm)['cpu_us']:.0f} µs (discarded)")
    for i in range(rounds):
        shift = i % len(names)  # each round starts one variant later: no fixed order
        for name in names[shift:] + names[:shift]:
            r = run(bench, name, pm)
            results[name].append(r)
            harness.say(f"ablation round {i + 1}/{rounds} {name}: {r['tps']:.0f} tps, "
                        f"{r['cpu_us']:.0f} µs CPU, other cores {r['other_cores']}")  # fmt: skip
    return results


def report(results: dict[str, list[dict[str, float]]], settings: str) -> None:
    started = dt.datetime.now(dt.UTC)
    summary = summarize(results)
    header = f"{started:%Y-%m-%dT%H:%M:%SZ}, {harness.machine()}; {settings}"
    table = markdown(summary, header)
    print(table)
    (harness.OUT / "ablation.md").write_text(table)
    document = {"date": f"{started:%Y-%m-%dT%H:%M:%SZ}", "machine": harness.machine(),
                "settings": settings, "variants": summary}  # fmt: skip
    (harness.OUT / "ablation.json").write_text(json.dumps(document, indent=2) + "\n")
    harness.say("wrote bench/out/ablation.md and bench/out/ablation.json")


def main() -> None:
    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    clients = harness.env_int("BENCH_ABLATION_CLIENTS", 2)
    config = dataclasses.replace(
        harness.Config.from_env(), seconds=harness.env_int("BENCH_ABLATION_SECONDS", 8),
        connections=clients, pgbench_jobs=2, events=0, warmup=0, fsync_probe=0, profile=False,
    )  # fmt: skip
    rounds = harness.env_int("BENCH_ABLATION_ROUNDS", 3)
    # Durable: synchronous_commit on, as in `make bench`, so that tps / baseline compares with
    # its goals; by default off, so that only CPU is measured.
    durable = os.environ.get("BENCH_ABLATION_DURABLE", "") not in ("", "0")
    names = selected()
    with contextlib.ExitStack() as stack:
        bench = harness.Bench(config, stack)
        cluster = bench.cluster
        cluster.use_own_home("-ablation")
        bench.prepare()
        setup(bench)
        if not durable:
            os.environ["PGOPTIONS"] = "-c synchronous_commit=off"  # for pgbench's sessions
        results = measure_all(bench, names, rounds)
        version = cluster.version()
    report(results, (
        f"PostgreSQL {version}; pgbench -M prepared, {clients} clients, -j {min(2, clients)}, "
        f"{config.seconds} s per run, median (range) of {rounds} interleaved rounds after a "
        f"discarded warm-up; synchronous_commit {'on' if durable else 'off'}, autovacuum off; "
        "before each run VACUUM of "
        "the updated tables and CHECKPOINT. CPU: the postmaster and its exited backends (the "
        "sessions), per transaction."
    ))  # fmt: skip


if __name__ == "__main__":
    main()
