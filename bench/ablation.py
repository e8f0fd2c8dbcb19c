"""`make bench-ablation`: what the size of the record costs in PostgreSQL CPU.

A cluster prepared by bench/bench.py (migrated, 10,000 users, the API key), then pgbench, in
interleaved rounds: the baseline, api.transfer, and copies of api.transfer whose
ledger.post_transfer writes a smaller record (the options for the data model: journal lines as
the account event stream, an audit row slimmed to what the journal does not hold). CPU: the
postmaster and its exited backends, per transaction; autovacuum and timed
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
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as harness

SQL = harness.ROOT / "sql"
WORK = harness.OUT / "ablation"
# The posting function of transfer, mint and burn, which api.transfer calls once.
POSTING = "post_transfer"
# The parts of the write that a variant changes: cuts of the SQL text of a copy of
# ledger.post_transfer (which api.transfer's copy then calls), applied before renaming:
# (regex, replacement, how many matches it must have).
JOURNAL_CUTS: dict[str, list[tuple[str, str, int]]] = {
    "idempotency": [(rf"WHERE {POSTING}\.idempotency_key IS NOT NULL", "WHERE false", 1)],
    "audit": [(r"\), audited AS \(.*?AS tx_id\) r\s*\)", ")", 1)],
    # The audit row keeps who, when, what and which journal; the before and after states, which
    # the journal lines (balance_after) and the stored response already hold, go.
    "slim_audit": [(rf"{POSTING}\.(before|after)_state", "NULL::jsonb", 4)],
    # Journal lines as the account event stream: no AccountDebited/AccountCredited row per line
    # (the line would carry the version and the event's columns; here it is measured as it is).
    "journal_events": [
        (r"FROM line l\n    \), journal AS \(", "FROM line l WHERE false\n    ), journal AS (", 1)
    ],
}
# Each variant: the parts it changes. The first two are the options for the data model that the
# next decision about it needs numbers for; the last leaves out the audit row altogether.
VARIANTS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "full": (),
    "slim_audit": ("slim_audit",),
    "journal_as_events": ("journal_events",),
    "journal_as_events_slim_audit": ("journal_events", "slim_audit"),
    "no_audit": ("audit",),
    "no_idempotency": ("idempotency",),
}
PART_TEXT = {
    "slim_audit": "the audit row without before/after states (what the journal already holds)",
    "journal_events": "no event row per journal line (journal lines as the account event stream)",
    "audit": "the audit_log insert",
    "idempotency": "the idempotency_keys insert",
}
LEFT_OUT = {
    "baseline": "plain tables: lock 2 rows, update 2 balances, insert 2 entries (numeric(21,8))",
    "full": "nothing: api.transfer as it is (bench/db_transfer.sql)",
} | {
    name: "; ".join(PART_TEXT[part] for part in parts) for name, parts in VARIANTS.items() if parts
}


def copied(name: str) -> bool:
    """Whether the variant calls a cut copy of api.transfer (else api.transfer itself)."""
    return bool(VARIANTS[name])


def sub_once(text: str, pattern: str, replacement: str, what: str, times: int = 1) -> str:
    new, count = re.subn(pattern, lambda _: replacement, text, flags=re.DOTALL)
    if count != times:
        raise SystemExit(f"ablation: {what}: {pattern!r} matched {count} times, not {times}")
    return new


def function_sql(path: Path, old: str, new: str, cuts: list[tuple[str, str, int]]) -> str:
    """The CREATE FUNCTION statement of path, cut, and renamed from schema.old to schema.new
    (including the function-name qualifier of its parameters, e.g. transfer.amount)."""
    text = path.read_text()
    start = text.index("CREATE OR REPLACE FUNCTION")
    text = text[start : text.index("\n$$;", start) + 4]
    for pattern, replacement, times in cuts:
        text = sub_once(text, pattern, replacement, f"{path.name}", times)
    schema = "api" if path.parent.name == "api" else "ledger"
    text = sub_once(text, rf"FUNCTION {schema}\.{old}\(", f"FUNCTION {schema}.{new}(", path.name)
    return re.sub(rf"\b{old}\.", f"{new}.", text)


def variant_sql(name: str) -> list[str]:
    journal = f"ablation_{POSTING}_{name}"
    cuts = [cut for part in VARIANTS[name] for cut in JOURNAL_CUTS[part]]
    return [
        function_sql(SQL / "ledger" / f"{POSTING}.sql", POSTING, journal, cuts),
        function_sql(
            SQL / "api" / "transfer.sql",
            "transfer",
            f"ablation_{name}",
            [(rf"ledger\.{POSTING}\(", f"ledger.{journal}(", 1)],
        ),
        f"GRANT EXECUTE ON FUNCTION api.ablation_{name} TO atp_app",
    ]


def setup(bench: harness.Bench) -> None:
    """The variants (as atp_owner, who owns api.transfer), the CPU-only settings, a smoke test
    of each variant's effects, and VACUUM ANALYZE."""
    WORK.mkdir(parents=True, exist_ok=True)
    script = (harness.BENCH / "db_transfer.sql").read_text()
    with bench.cluster.connect() as conn:
        conn.execute("SET ROLE atp_owner")
        for name in filter(copied, VARIANTS):
            for statement in variant_sql(name):
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


def before_run(bench: harness.Bench) -> None:
    """The same start for every run: the updated tables vacuumed, a checkpoint."""
    with bench.cluster.connect() as conn:
        conn.execute("VACUUM ledger.balances, ledger.api_keys, bench_accounts")
        conn.execute("CHECKPOINT")


def run(bench: harness.Bench, name: str, pm: int) -> dict[str, float]:
    config = bench.config
    script, user = harness.BENCH / "db_transfer.sql", "atp_app"
    if name == "baseline":
        script, user = harness.BENCH / "baseline.sql", "postgres"
    elif copied(name):
        script = WORK / f"{name}.sql"
    variables = {"users": str(config.users), "key_hash": bench.key_hash}  # baseline: unused
    before_run(bench)
    wait_for_backends(pm)
    before, label = pg_ticks(pm), f"ablation-{name}"
    usage: dict[str, Any] = {}
    with harness.CpuMeter(bench.cluster, None).measure(usage):  # for other_cores: neighbours
        result = harness.pgbench(bench.cluster, label, script, user, variables, config,
                                 config.seconds, log=False)  # fmt: skip
    wait_for_backends(pm)
    after = pg_ticks(pm)
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
    harness.exit_on_signals()
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
