"""Short interleaved A/B runs of two versions of the HTTP layer on one temporary cluster: the
server's and PostgreSQL's CPU per request, the rate and wrk's p99, as ratios B/A (the machine
is shared: absolute numbers drift between minutes, ratios of runs taken side by side drift
much less).

    BENCH_AB_A=/tmp/old BENCH_AB_B=. .venv/bin/python bench/ab_http.py

A and B are checkouts (each with its app.py); BENCH_AB_A_SOCKET=1 (or _B_) has that side reach
PostgreSQL over its Unix socket instead of loopback TCP; BENCH_AB_RUNS (http_balance,http_transfer),
BENCH_AB_ROUNDS (3), BENCH_SECONDS (10), BENCH_WORKERS (1) and BENCH_USERS (1000) choose the
runs. Each round runs every run on A and on B, the order alternating round by round. Writes
bench/out/ab_http.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
from pathlib import Path
from typing import Any

import bench as harness


def side(bench: harness.Bench, label: str, checkout: Path, name: str) -> dict[str, float]:
    socket = os.environ.get(f"BENCH_AB_{label}_SOCKET", "0") == "1"
    bench.server = harness.Server(bench.cluster, bench.config.workers, checkout, socket)
    try:
        bench.server.start()
        bench.measure(name)
    finally:
        bench.stop_server()
    result = bench.results.pop(name)
    return {
        "rps": result.rps,
        "p99_ms": result.p99_ms,
        "errors": result.errors,
        "server_ms": result.cpu_ms_per_request("server") or 0.0,
        "postgres_ms": result.cpu_ms_per_request("postgres") or 0.0,
    }


def summary(rounds: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric in ("server_ms", "postgres_ms", "rps", "p99_ms"):
        a = [r["A"][metric] for r in rounds]
        b = [r["B"][metric] for r in rounds]
        ratios = [y / x for x, y in zip(a, b, strict=True) if x]
        out[metric] = {
            "A_median": round(statistics.median(a), 3),
            "B_median": round(statistics.median(b), 3),
            "B_over_A": [round(x, 3) for x in ratios],
            "B_over_A_median": round(statistics.median(ratios), 3) if ratios else None,
        }
    return out


def ab_checkouts() -> dict[str, Path]:
    """BENCH_AB_A (required) and BENCH_AB_B (this checkout), the two versions compared."""
    return {
        "A": Path(os.environ["BENCH_AB_A"]).resolve(),
        "B": Path(os.environ.get("BENCH_AB_B", harness.ROOT)).resolve(),
    }


def main() -> None:
    os.environ.setdefault("BENCH_WORKERS", "1")
    os.environ.setdefault("BENCH_USERS", "1000")
    os.environ.setdefault("BENCH_SECONDS", "10")
    os.environ.setdefault("BENCH_WARMUP", "2")
    os.environ.setdefault("BENCH_FSYNC_PROBE", "0")
    checkouts = ab_checkouts()
    runs = os.environ.get("BENCH_AB_RUNS", "http_balance,http_transfer").split(",")
    rounds = int(os.environ.get("BENCH_AB_ROUNDS", "3"))
    results: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in runs}
    with contextlib.ExitStack() as stack:
        bench = harness.Bench(harness.Config.from_env(), stack)
        bench.cluster.use_own_home("-ab")
        bench.prepare()
        for number in range(rounds):
            order = ("A", "B") if number % 2 == 0 else ("B", "A")
            for name in runs:
                measured = {label: side(bench, label, checkouts[label], name) for label in order}
                results[name].append(measured)
                harness.say(f"round {number + 1} {name}: {json.dumps(measured)}")
    report = {
        "checkouts": {k: str(v) for k, v in checkouts.items()},
        "settings": {k: v for k, v in os.environ.items() if k.startswith("BENCH_")},
        "runs": {name: summary(rounds) for name, rounds in results.items()},
        "rounds": results,
    }
    harness.OUT.mkdir(exist_ok=True)
    (harness.OUT / "ab_http.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["runs"], indent=2))


if __name__ == "__main__":
    main()
