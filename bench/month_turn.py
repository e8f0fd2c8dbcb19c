"""`make bench-month-turn`: transfers and history reads through midnight of a month's last day.

Events and journal lines are partitioned by month. The next month's partitions exist ahead of
time (ledger.ensure_partitions), so they are empty, and analysed while empty, when the month
begins; a plan chosen for an empty table could turn into a scan of a full one. This drill
prepares a cluster as `make bench` does (migrated, 10,000 users, about 30 journal lines each
appended by bench/seed_large.sql, VACUUM ANALYZE, which analyses the empty partitions of the
next months), restarts PostgreSQL under libfaketime (Debian's faketime) with its clock 60 s
before the next month begins, and runs pgbench for 120 s: half the clients call api.transfer,
half api.get_history for random users, autovacuum on as in production (BENCH_AUTOVACUUM=off:
off, so that no ANALYZE replaces the plans made while the month was empty).
It compares the rates of the 5-second intervals before and after midnight, and checks where the
rows went and that the projection still verifies. Writes bench/out/month_turn.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as harness

FAKETIME_LIBRARIES = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
)
BEFORE_MIDNIGHT = 60  # seconds of the run before the month turns
SECONDS = 120
INTERVAL = 5
MIN_RATIO = 0.8  # the rate after midnight, against before, for a PASS
HISTORY_SQL = """\\set a random(1, :users)
SELECT length(api.get_history(md5(CAST(:a AS text))::uuid, 20, NULL, :key_hash)::text);
"""


def faketime_library() -> str:
    found = next((lib for lib in FAKETIME_LIBRARIES if Path(lib).exists()), None)
    if found is None:
        raise SystemExit("libfaketime is missing (Debian: apt-get install faketime)")
    return found


def next_month(now: dt.datetime) -> dt.datetime:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + dt.timedelta(days=32)).replace(day=1)


def restart_with_clock(cluster: harness.Cluster, offset_s: float) -> None:
    """The same cluster, its clock moved by offset_s: libfaketime is preloaded into pg_ctl as
    the cluster's own user (not into a root process, whose shared memory the postgres user could
    not open), and every backend inherits the offset."""
    cluster.stop()
    cluster.port = harness.free_port()
    cluster.run_pg(
        "env", f"LD_PRELOAD={faketime_library()}", f"FAKETIME={round(offset_s):+d}",
        "FAKETIME_DONT_RESET=1", str(cluster.bindir / "pg_ctl"), "start", "-D", str(cluster.data),
        "-l", str(cluster.log), "-w", "-t", "120", "-o", f"-p {cluster.port}",
    )  # fmt: skip
    cluster.running = True


def start_pgbench(
    cluster: harness.Cluster, script: Path, clients: int, variables: dict[str, str], log: Path
) -> subprocess.Popen[str]:
    command = [
        str(cluster.bindir / "pgbench"), "-n", "-M", "prepared", "-c", str(clients), "-j", "1",
        "-T", str(SECONDS), "-P", str(INTERVAL), "-h", "127.0.0.1", "-p", str(cluster.port),
        "-U", "atp_app", "-f", str(script),
    ]  # fmt: skip
    for key, value in variables.items():
        command += ["-D", f"{key}={value}"]
    command.append(harness.DATABASE)
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def progress(log: Path) -> list[tuple[float, float, int]]:
    """(seconds, tps, failed) of each pgbench -P line; an aborted client counts as a failure."""
    text = log.read_text()
    found = re.findall(r"progress: ([0-9.]+) s, ([0-9.]+) tps, .*?(\d+) failed", text)
    rows = [(float(s), float(tps), int(failed)) for s, tps, failed in found]
    aborted = len(re.findall(r"client \d+ aborted", text))
    return [*rows, (0.0, 0.0, aborted)] if aborted else rows


def compare(rows: list[tuple[float, float, int]], turn_at: float) -> dict[str, Any]:
    """Mean rate of the intervals wholly before and wholly after midnight (the first interval of
    the run, a warm-up, left out)."""
    before = [tps for end, tps, _ in rows if INTERVAL < end <= turn_at]
    after = [tps for end, tps, _ in rows if end - INTERVAL >= turn_at]
    mean_before = statistics.fmean(before) if before else 0.0
    mean_after = statistics.fmean(after) if after else 0.0
    return {
        "tps_before": round(mean_before, 1),
        "tps_after": round(mean_after, 1),
        "ratio": round(mean_after / mean_before, 3) if mean_before else None,
        "min_after": round(min(after), 1) if after else None,
        "failed": sum(failed for _, _, failed in rows),
        "intervals": [[end, tps] for end, tps, _ in rows],
    }


def placement(cluster: harness.Cluster, month: dt.datetime) -> dict[str, Any]:
    new = month.strftime("%Y_%m")
    with cluster.connect() as conn:
        row = conn.execute(
            f"SELECT (SELECT count(*) FROM ledger.events_{new}),"  # a date, not input
            f" (SELECT count(*) FROM ledger.ledger_entries_{new}),"
            " (SELECT count(*) FROM ledger.events_default),"
            " (SELECT count(*) FROM ledger.ledger_entries_default),"
            " (api.verify_projections() ->> 'ok')::boolean, clock_timestamp()::text"
        ).fetchone()
    assert row is not None
    return {
        f"events_{new}": row[0],
        f"ledger_entries_{new}": row[1],
        "events_default": row[2],
        "ledger_entries_default": row[3],
        "projections_ok": row[4],
        "database_clock_at_end": row[5],
    }


def main() -> None:
    harness.exit_on_signals()
    faketime_library()
    clients = harness.env_int("BENCH_CONNECTIONS", 16)
    config = dataclasses.replace(
        harness.Config.from_env(), events=0, warmup=0, fsync_probe=0, profile=False,
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        bench = harness.Bench(config, stack)
        cluster = bench.cluster
        cluster.use_own_home("-month-turn")
        bench.prepare()
        # About 30 journal lines per user before the run, so that every history page is full
        # from the start and the pages do not grow during it (that would lower the rate too).
        bench.config = dataclasses.replace(config, events=30 * config.users)
        bench.seed_large()  # then VACUUM ANALYZE: the next months' partitions, empty, too
        # BENCH_AUTOVACUUM=off: nothing analyses the new partitions while the run lasts.
        autovacuum = os.environ.get("BENCH_AUTOVACUUM", "on").strip() or "on"
        with cluster.connect() as conn:
            conn.execute(f"ALTER SYSTEM SET autovacuum = {'off' if autovacuum == 'off' else 'on'}")
        now = dt.datetime.now(dt.UTC)
        month = next_month(now)
        restart_with_clock(cluster, (month - now).total_seconds() - BEFORE_MIDNIGHT - 3)
        with cluster.connect() as conn:
            row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        turn_at = (month - row[0]).total_seconds()
        harness.say(
            f"database clock {row[0]:%Y-%m-%d %H:%M:%S}; the month turns in {turn_at:.0f} s"
        )
        harness.OUT.mkdir(exist_ok=True)
        history = harness.OUT / "month_turn_history.sql"
        history.write_text(HISTORY_SQL)
        variables = {"users": str(config.users), "key_hash": bench.key_hash}
        runs = {
            "transfer": start_pgbench(cluster, harness.BENCH / "db_transfer.sql",
                                      max(1, clients // 2), variables,
                                      harness.OUT / "month_turn_transfer.log"),
            "history": start_pgbench(cluster, history, max(1, clients // 2), variables,
                                     harness.OUT / "month_turn_history.log"),
        }  # fmt: skip
        for process in runs.values():
            process.wait()
        results: dict[str, Any] = {
            name: compare(progress(harness.OUT / f"month_turn_{name}.log"), turn_at)
            for name in runs
        }
        results["rows"] = placement(cluster, month)
        version = cluster.version()
    results["settings"] = (
        f"PostgreSQL {version} under libfaketime, {clients // 2} + {clients // 2} pgbench clients "
        f"(-M prepared), {SECONDS} s, progress every {INTERVAL} s, midnight at {turn_at:.0f} s; "
        f"autovacuum {autovacuum}; fsync and synchronous_commit on"
    )
    ok = all(
        (results[name]["ratio"] or 0) >= MIN_RATIO and results[name]["failed"] == 0 for name in runs
    )
    rows = results["rows"]
    new = month.strftime("%Y_%m")
    ok = ok and rows[f"events_{new}"] > 0 and rows["events_default"] == 0
    ok = ok and rows["ledger_entries_default"] == 0 and rows["projections_ok"] is True
    results["pass"] = ok
    (harness.OUT / "month_turn.json").write_text(json.dumps(results, indent=2) + "\n")
    print(results["settings"])
    print("| load | tps before midnight | tps after | after / before | lowest 5 s after | failed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in runs:
        r = results[name]
        print(f"| {name} | {r['tps_before']} | {r['tps_after']} | {r['ratio']} "
              f"| {r['min_after']} | {r['failed']} |")  # fmt: skip
    print("rows: " + ", ".join(f"{k} {v}" for k, v in rows.items()))
    print(f"{'PASS' if ok else 'FAIL'}: after midnight at least {MIN_RATIO} of the rate before, "
          "no failures, new rows in the new month's partitions, none in the default ones, "
          "projections verified (bench/out/month_turn.json)")  # fmt: skip
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
