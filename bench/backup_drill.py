"""`make backup-drill`: a pgBackRest backup, WAL archiving and a point-in-time restore, verified.

The ledger's backups are WAL archiving and point-in-time recovery with pgBackRest; this drill
actually restores to a timestamp and verifies the ledger:

1. prepares a cluster as `make bench` does (durable settings, migrated, BENCH_USERS users with
   their minted ATP), then turns on WAL archiving through `pgbackrest archive-push`, with a
   repository of its own beside the cluster;
2. takes a full backup, then runs transfers (pgbench calling api.transfer, as the application
   role with an API key), seals the audit rows and records the target moment: every balance,
   and the counts and last ids of events, journal lines and audit rows;
3. runs more transfers after the target (what the restore must undo), archives the last WAL
   segment, and records what the event history says the balances were at the target
   (api.get_balance with as_of) for a sample of users;
4. stops PostgreSQL, deletes the data directory (the machine is lost), restores it with
   `pgbackrest restore --type=time --target=<the target>`, starts it and waits for the end of
   recovery;
5. verifies the restored ledger: every balance equals the one recorded at the target, and the
   as-of answers given before the loss; no event, journal line or audit row of after the target
   is there and none of before is missing; api.verify_projections() and
   api.verify_audit_chain() hold; and a new transfer succeeds.

Writes bench/out/backup_drill.json; exits 1 if any check fails. BACKUP_DRILL_RESTORE=latest restores
to the end of the archived WAL instead of the target, and the drill fails, as it should.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as harness

STANZA = "financeatp"
TRANSFER_SECONDS = 5
CLIENTS = 4
SAMPLE_USERS = 20
# Every count and last id the restore must bring back exactly as they were at the target.
STATE_SQL = """
SELECT jsonb_build_object(
    'balances', (SELECT jsonb_object_agg(account_id, balance::text) FROM ledger.balances),
    'events', (SELECT count(*) FROM ledger.events),
    'last_event_id', (SELECT max(id) FROM ledger.events),
    'journal_lines', (SELECT count(*) FROM ledger.ledger_entries),
    'audit_rows', (SELECT count(*) FROM ledger.audit_log),
    'last_audit_id', (SELECT max(id) FROM ledger.audit_log))
"""


def pgbackrest_conf(cluster: harness.Cluster) -> Path:
    """A configuration of its own: the repository, logs, locks and spool beside the cluster."""
    home = cluster.home
    conf = home / "pgbackrest.conf"
    conf.write_text(
        "[global]\n"
        f"repo1-path={home / 'repo'}\n"
        "repo1-retention-full=2\n"
        f"log-path={home / 'pgbackrest-log'}\n"
        f"lock-path={home / 'pgbackrest-lock'}\n"
        f"spool-path={home / 'pgbackrest-spool'}\n"
        "log-level-console=warn\n"
        "log-level-file=info\n"
        "start-fast=y\n"
        "compress-type=gz\n"
        "compress-level=1\n"
        f"\n[{STANZA}]\n"
        f"pg1-path={cluster.data}\n"
        f"pg1-port={cluster.port}\n"
        f"pg1-socket-path={home}\n"
        "pg1-user=postgres\n"
    )
    directories = [
        home / d for d in ("repo", "pgbackrest-log", "pgbackrest-lock", "pgbackrest-spool")
    ]
    for directory in directories:
        directory.mkdir(exist_ok=True)
    if cluster.account is not None:
        for path in (conf, *directories):
            os.chown(path, *cluster.account)
    return conf


def pgbackrest(cluster: harness.Cluster, conf: Path, *args: str) -> float:
    """Runs pgbackrest as the cluster's owner; returns the seconds it took."""
    started = time.monotonic()
    cluster.run_pg("pgbackrest", f"--config={conf}", f"--stanza={STANZA}", *args)
    return round(time.monotonic() - started, 1)


def enable_archiving(cluster: harness.Cluster, conf: Path) -> None:
    """archive_mode and the socket pgbackrest connects through need a restart."""
    command = f"pgbackrest --config={conf} --stanza={STANZA} archive-push %p"
    with cluster.connect() as conn:
        conn.execute("ALTER SYSTEM SET archive_mode = 'on'")
        for name, value in (("archive_command", command),
                            ("unix_socket_directories", str(cluster.home))):  # fmt: skip
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
    port = cluster.port
    cluster.stop()
    cluster.start()
    if cluster.port != port:  # pg1-port in the configuration
        pgbackrest_conf(cluster)


def transfers(bench: harness.Bench, label: str) -> harness.Result:
    config = dataclasses.replace(bench.config, connections=CLIENTS)
    variables = {"users": str(config.users), "key_hash": bench.key_hash}
    result = harness.pgbench(bench.cluster, f"backup-drill-{label}",
                             harness.BENCH / "db_transfer.sql", "atp_app", variables, config,
                             TRANSFER_SECONDS, log=False)  # fmt: skip
    if result.errors:
        raise SystemExit(f"backup drill: transfers {label} had {result.errors} errors")
    harness.say(f"transfers {label}: {result.rps * TRANSFER_SECONDS:.0f} in {TRANSFER_SECONDS} s")
    return result


def state(cluster: harness.Cluster) -> dict[str, Any]:
    with cluster.connect() as conn:
        row = conn.execute(STATE_SQL).fetchone()
    assert row is not None
    return dict(row[0])


def as_of_balances(cluster: harness.Cluster, target: str, users: int) -> dict[str, str]:
    """What the event history says each sample user held at the target (api.get_balance)."""
    step = max(1, users // SAMPLE_USERS)
    with cluster.connect() as conn:
        rows = conn.execute(
            "SELECT md5(i::text)::uuid::text,"
            " api.get_balance(md5(i::text)::uuid, %s::timestamptz) ->> 'balance'"
            " FROM generate_series(1, %s, %s) i",
            [target, users, step],
        ).fetchall()
    return {user: balance for user, balance in rows}


def current_balances(cluster: harness.Cluster, users: list[str]) -> dict[str, str]:
    with cluster.connect() as conn:
        rows = conn.execute(
            "SELECT u::text, api.get_balance(u) ->> 'balance' FROM unnest(%s::uuid[]) u", [users]
        ).fetchall()
    return {user: balance for user, balance in rows}


def restore(cluster: harness.Cluster, conf: Path, target: str) -> dict[str, float]:
    """The machine is lost: the data directory goes, pgbackrest brings it back to the target."""
    cluster.stop()
    shutil.rmtree(cluster.data)
    cluster.data.mkdir(mode=0o700)
    if cluster.account is not None:
        os.chown(cluster.data, *cluster.account)
    # BACKUP_DRILL_RESTORE=latest replays all the WAL instead, as a restore that forgot its target
    # would: the drill must then fail (the transfers after the target come back).
    if os.environ.get("BACKUP_DRILL_RESTORE", "target") == "latest":
        seconds = pgbackrest(cluster, conf, "restore")
    else:
        seconds = pgbackrest(
            cluster, conf, "restore", "--type=time", f"--target={target}", "--target-action=promote"
        )
    started = time.monotonic()
    cluster.start()
    deadline = time.monotonic() + 300
    while True:
        with cluster.connect() as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        if row is not None and not row[0]:
            break
        if time.monotonic() > deadline:
            raise SystemExit("backup drill: still in recovery after 300 s")
        time.sleep(0.5)
    return {"restore_s": seconds, "recovery_s": round(time.monotonic() - started, 1)}


def verify(
    bench: harness.Bench, at_target: dict[str, Any], as_of: dict[str, str]
) -> dict[str, Any]:
    cluster = bench.cluster
    restored = state(cluster)
    checks: dict[str, Any] = {
        "balances_equal_target": restored["balances"] == at_target["balances"],
        "as_of_answers_equal_restored": current_balances(cluster, list(as_of)) == as_of,
    }
    for key in ("events", "last_event_id", "journal_lines", "audit_rows", "last_audit_id"):
        checks[f"{key}_equal_target"] = restored[key] == at_target[key]
    with cluster.connect() as conn:
        projections = conn.execute("SELECT api.verify_projections()").fetchone()
        chain = conn.execute("SELECT api.verify_audit_chain()").fetchone()
        conn.execute("SET ROLE atp_app")
        after = conn.execute(
            "SELECT status FROM api.transfer(from_user_id => md5('1')::uuid,"
            " to_user_id => md5('2')::uuid, amount => 1, memo => 'after the restore',"
            " idempotency_key => gen_random_uuid(), api_key_hash => %s,"
            " request_user_id => md5('1')::uuid)",
            [bench.key_hash],
        ).fetchone()
    assert projections is not None and chain is not None
    checks["verify_projections_ok"] = projections[0].get("ok") is True
    checks["verify_audit_chain_ok"] = chain[0].get("ok") is True
    checks["transfer_after_restore"] = after is not None and after[0] == 201
    return checks


def main() -> None:
    harness.exit_on_signals()
    if shutil.which("pgbackrest") is None:
        raise SystemExit("pgbackrest is missing (Debian: apt-get install pgbackrest)")
    config = dataclasses.replace(
        harness.Config.from_env(), users=harness.env_int("BENCH_USERS", 1000), events=0,
        warmup=0, fsync_probe=0, profile=False,
    )  # fmt: skip
    report: dict[str, Any] = {"date": f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"}
    with contextlib.ExitStack() as stack:
        bench = harness.Bench(config, stack)
        cluster = bench.cluster
        cluster.use_own_home("-backup-drill")
        bench.prepare()
        conf = pgbackrest_conf(cluster)
        enable_archiving(cluster, conf)
        report["stanza_create_s"] = pgbackrest(cluster, conf, "stanza-create")
        report["check_s"] = pgbackrest(cluster, conf, "check")
        report["full_backup_s"] = pgbackrest(cluster, conf, "backup", "--type=full")
        harness.say(f"full backup in {report['full_backup_s']} s")

        transfers(bench, "before-target")
        with cluster.connect() as conn:
            conn.execute("SELECT api.seal_audit(1000000)")
            row = conn.execute("SELECT clock_timestamp()::text").fetchone()
        assert row is not None
        target = str(row[0])
        at_target = state(cluster)
        time.sleep(1.0)  # no commit of after the target shares its timestamp
        transfers(bench, "after-target")
        after = state(cluster)
        as_of = as_of_balances(cluster, target, config.users)
        report["check_after_s"] = pgbackrest(cluster, conf, "check")  # the last WAL archived
        harness.say(
            f"target {target}: {at_target['events']} events; after it {after['events']} "
            "events; restoring"
        )
        report |= restore(cluster, conf, target)
        report["checks"] = verify(bench, at_target, as_of)
        report["target"] = target
        report["events_at_target"] = at_target["events"]
        report["events_before_loss"] = after["events"]
        report["version"] = cluster.version()
    report["machine"] = harness.machine()
    report["pass"] = all(report["checks"].values())
    harness.OUT.mkdir(exist_ok=True)
    (harness.OUT / "backup_drill.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"\nbackup drill: {'PASS' if report['pass'] else 'FAIL'} (bench/out/backup_drill.json)")
    if not report["pass"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
