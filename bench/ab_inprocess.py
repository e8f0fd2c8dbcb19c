"""Two versions of app.py in one process, called as ASGI applications against one temporary
cluster, their requests alternating one by one: the server's CPU per request of each, without
wrk, HTTP or a second process. What the kernel does for a request's sockets to the client is
left out; what remains is the application and its call to PostgreSQL, measured finely enough to
see a few percent, which the runs over HTTP on this machine cannot (bench/README.md).

    BENCH_AB_A=/tmp/old BENCH_AB_B=. .venv/bin/python bench/ab_inprocess.py

A and B are checkouts, each with its app.py and its own financeatp/: each app is loaded with
its checkout first on sys.path and the package's modules forgotten in between, so each keeps
the modules it imported (none imports inside a function), and a change inside financeatp/ is
compared like one in app.py. BENCH_AB_KINDS (healthz,nokey,balance,transfer), BENCH_AB_REQUESTS
(5000 per side and kind) and BENCH_USERS (1000) choose the work; `nokey` is a balance read
without X-API-Key, answered 401 before the database. Prints, per kind, the median and mean CPU
per request of each side (time.process_time_ns around the ASGI call) and their ratios B/A.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import uvloop
from ab_http import ab_checkouts

import bench as harness

Request = tuple[str, str, list[tuple[bytes, bytes]], bytes]
ASGI = Callable[..., Awaitable[None]]


def forget_package() -> None:
    for module in [m for m in sys.modules if m == "financeatp" or m.startswith("financeatp.")]:
        del sys.modules[module]


def load_app(label: str, checkout: Path) -> Any:
    """checkout/app.py as module app_<label> (the `app` it defines), importing the financeatp
    package of the same checkout."""
    forget_package()  # bench.py imported ours, or the other side imported its own
    sys.path.insert(0, str(checkout))
    name = f"app_{label.lower()}"
    spec = importlib.util.spec_from_file_location(name, checkout / "app.py")
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it is executed
    spec.loader.exec_module(module)
    sys.path.remove(str(checkout))
    package = Path(sys.modules["financeatp"].__file__ or "").resolve().parent.parent
    if package != checkout.resolve():
        raise SystemExit(f"{label}'s app.py imported financeatp from {package}, not {checkout}")
    return module.app


async def call(app: ASGI, state: dict[str, Any], request: Request) -> int:
    """One request through the ASGI application; its status."""
    method, path, headers, body = request
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": headers, "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000), "state": dict(state),
    }  # fmt: skip
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Future()  # no disconnect while the request runs
        raise AssertionError("unreachable")

    status: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


def request_of(kind: str, users: list[str], key: str, rng: random.Random) -> Request:
    host = (b"host", b"bench")
    if kind == "healthz":
        return "GET", "/healthz", [host], b""
    if kind == "nokey":
        return "GET", f"/users/{rng.choice(users)}/balance", [host], b""
    if kind == "balance":
        return (
            "GET",
            f"/users/{rng.choice(users)}/balance",
            [host, (b"x-api-key", key.encode())],
            b"",
        )
    if kind != "transfer":
        raise SystemExit(f"unknown kind {kind!r}: healthz, nokey, balance or transfer")
    payer, payee = rng.sample(users, 2)
    body = json.dumps(
        {"from_user_id": payer, "to_user_id": payee, "amount": "1.00000000", "memo": "bench"}
    ).encode()
    headers = [
        host,
        (b"x-api-key", key.encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"idempotency-key", str(uuid.uuid4()).encode()),
        (b"x-request-user-id", payer.encode()),
    ]
    return "POST", "/transfers", headers, body


async def measure(
    apps: dict[str, ASGI], kinds: list[str], n: int, users: list[str], key: str
) -> dict[str, Any]:
    report: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        states = {
            label: await stack.enter_async_context(app.router.lifespan_context(app))
            for label, app in apps.items()
        }
        for kind in kinds:
            cpu: dict[str, list[float]] = {label: [] for label in apps}
            rng = random.Random(kind)  # noqa: S311 (a workload, not a secret)
            warmup = 200
            for i in range(warmup + n):
                for label in ("A", "B") if i % 2 == 0 else ("B", "A"):
                    request = request_of(kind, users, key, rng)
                    started = time.process_time_ns()
                    status = await call(apps[label], states[label], request)
                    spent = time.process_time_ns() - started
                    if status >= 500 or (kind != "nokey" and status >= 400):
                        raise SystemExit(f"{label} answered {kind} with {status}")
                    if i >= warmup:
                        cpu[label].append(spent / 1000)
            medians = {label: statistics.median(v) for label, v in cpu.items()}
            means = {label: statistics.fmean(v) for label, v in cpu.items()}
            report[kind] = {
                "median_us": {label: round(v, 1) for label, v in medians.items()},
                "mean_us": {label: round(v, 1) for label, v in means.items()},
                "B_over_A_median": round(medians["B"] / medians["A"], 3),
                "B_over_A_mean": round(means["B"] / means["A"], 3),
            }
            harness.say(f"{kind}: {json.dumps(report[kind])}")
    return report


def main() -> None:
    os.environ.setdefault("BENCH_USERS", "1000")
    os.environ.setdefault("BENCH_FSYNC_PROBE", "0")
    checkouts = ab_checkouts()
    kinds = os.environ.get("BENCH_AB_KINDS", "healthz,nokey,balance,transfer").split(",")
    n = int(os.environ.get("BENCH_AB_REQUESTS", "5000"))
    with contextlib.ExitStack() as stack:
        bench = harness.Bench(harness.Config.from_env(), stack)
        bench.cluster.use_own_home("-inprocess")
        bench.prepare()
        os.environ.update(
            DATABASE_URL=bench.cluster.url("atp_app"), MAINTENANCE_INTERVAL="0", LOG_LEVEL="INFO"
        )
        apps = {label: load_app(label, checkout) for label, checkout in checkouts.items()}
        users = [harness.user_id(i) for i in range(1, bench.config.users + 1)]
        # The access log goes to standard output, a line per request: to a file, as in the bench.
        log = (harness.OUT / "ab_inprocess.log").open("w")
        with contextlib.redirect_stdout(log):
            report = uvloop.run(measure(apps, kinds, n, users, bench.key))
        log.close()
    result = {
        "checkouts": {k: str(v) for k, v in checkouts.items()},
        "requests": n,
        "kinds": report,
    }
    (harness.OUT / "ab_inprocess.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
