"""What operators see of each request: one JSON log line (API keys masked), Prometheus metrics,
and the correlation id, all kept by one pure ASGI middleware around the application."""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import logging
import logging.config
import os
import random
import re
import sys
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from json.encoder import encode_basestring
from typing import Any

import psycopg
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from financeatp.gate import Gate
from financeatp.operations import MAX_CORRELATION_ID

log = logging.getLogger("financeatp")

# Anything shaped like an API key is cut to its prefix in every log line, whoever logged it.
KEY_IN_TEXT = re.compile(r"(sk_(?:live|test)_)[A-Za-z0-9]+")
# Metric labels stay few: any other method (clients may send any token) counts as "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "DELETE", "PUT", "OPTIONS"})


def mask_key(key: str) -> str:
    """sk_live_abc... -> sk_live_****: the prefix names the kind of key, never the key."""
    return f"{key[:8]}****" if len(key) > 8 else "****"


# --- logs ----------------------------------------------------------------------------------


# Made once: json.dumps with options builds a new encoder on every call.
LINE_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


def mask_keys(text: str) -> str:
    """Anything in text shaped like an API key cut to its prefix."""
    return KEY_IN_TEXT.sub(r"\1****", text)


def json_line(entry: dict[str, Any]) -> str:
    """A log entry as one JSON line, anything shaped like an API key cut to its prefix."""
    return mask_keys(LINE_ENCODER.encode(entry))


def json_text(value: str | None) -> str:
    """A JSON string as json_line writes it (or null), anything shaped like an API key in it cut
    to its prefix."""
    if value is None:
        return "null"
    return encode_basestring(mask_keys(value) if "sk_" in value else value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; anything shaped like an API key is cut to its prefix."""

    second = -1
    second_text = ""

    def timestamp(self, record: logging.LogRecord) -> str:
        return self.timestamp_of(record.created)

    def timestamp_of(self, created: float) -> str:
        # strftime once a second, not once a line: a log line is written for every request.
        second = int(created)
        if second != self.second:
            self.second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self.second = second
        return f"{self.second_text}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= getattr(record, "fields", {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json_line(entry)


class AccessLog:
    """The access log: one line per request on standard output, in the shape JsonFormatter gives
    every other line (ts, level, logger, message, then the request's fields), keys masked the
    same way. Written here rather than through a LogRecord, a handler and the formatter: those
    layers cost 10% of the application's CPU for a balance read (bench/README.md, "Sixth pass").
    LOG_LEVEL above INFO silences it, as it silences the logger it is named after.

    Lines are written together, as nginx's buffered access_log does: at most FLUSH_DELAY
    seconds after the first of them, in one write(2) of at most FLUSH_BYTES, under PIPE_BUF so
    that two workers' writes to one pipe never interleave within a line (so a path, the one
    field a client can make long, is cut at MAX_PATH characters); a write of its own per
    request cost 3% of a request's server CPU (bench/README.md, twenty-third pass). A worker
    killed with SIGKILL loses the lines of its last FLUSH_DELAY; a stopping one writes them."""

    name = "financeatp.access"
    FLUSH_DELAY = 0.05
    FLUSH_BYTES = 4000
    MAX_PATH = 400  # characters, then "…": the line stays under FLUSH_BYTES

    def __init__(self) -> None:
        self.logger = logging.getLogger(self.name)
        self.clock = JsonFormatter()
        self.pending: list[str] = []
        self.pending_bytes = 0
        self.timer: asyncio.TimerHandle | None = None

    def write(
        self,
        *,
        method: str,
        route: str,
        path: str,
        status: int,
        latency_ms: float,
        correlation_id: str,
        api_key_name: str | None,
        api_key_prefix: str | None,
        client: str,
    ) -> None:
        """The line json_line would write for these fields in this order, from a template rather
        than the JSON encoder's pass over a dictionary and a key search over the whole line: 4%
        less of a balance read's server CPU (bench/README.md, fourteenth pass). api_key_prefix
        is mask_key's output."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        stamp = self.clock.timestamp_of(time.time())
        if len(path) > self.MAX_PATH:
            path = path[: self.MAX_PATH] + "\u2026"
        # mask_key's 8 characters and "****" are too short to hold a key to mask.
        prefix = "null" if api_key_prefix is None else encode_basestring(api_key_prefix)
        line = (
            f'{{"ts": "{stamp}", "level": "info", "logger": "{self.name}", "message": "request", '
            f'"method": {json_text(method)}, "route": {json_text(route)}, '
            f'"path": {json_text(path)}, "status": {status:d}, "latency_ms": {latency_ms!r}, '
            f'"correlation_id": {json_text(correlation_id)}, '
            f'"api_key_name": {json_text(api_key_name)}, '
            f'"api_key_prefix": {prefix}, "client": {json_text(client)}}}\n'
        )
        size = len(line) if line.isascii() else len(line.encode())
        if self.pending_bytes + size > self.FLUSH_BYTES:
            self.flush()
        self.pending.append(line)
        self.pending_bytes += size
        if self.timer is None:
            try:
                self.timer = asyncio.get_running_loop().call_later(self.FLUSH_DELAY, self.flush)
            except RuntimeError:  # no event loop: nothing would flush it later
                self.flush()

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.pending:
            return
        text = "".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        stream = sys.stdout
        stream.write(text)
        stream.flush()


LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "financeatp.observe.JsonFormatter"}},
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stdout",
        }
    },
    "root": {"handlers": ["stdout"], "level": os.environ.get("LOG_LEVEL", "INFO").upper()},
    "loggers": {
        "uvicorn": {"handlers": [], "propagate": True},
        "uvicorn.error": {"handlers": [], "propagate": True},
        "uvicorn.access": {"handlers": [], "propagate": False, "level": "WARNING"},
    },
}


def setup_logging() -> None:
    # No caller, thread or process lookups for each record (the logging HOWTO's "Optimization"):
    # JsonFormatter writes none of them (bench/README.md, third pass).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    if not any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers):
        logging.config.dictConfig(LOG_CONFIG)


# --- metrics -------------------------------------------------------------------------------


# prometheus_client's default buckets for request latency, in seconds; the last is +Inf.
LATENCY_BUCKETS = Histogram.DEFAULT_BUCKETS


class Metrics:
    """Prometheus metrics; with several workers they are summed over PROMETHEUS_MULTIPROC_DIR.

    Requests are counted here, in plain numbers, and handed to prometheus_client by publish(),
    once a second and before /metrics answers: with several workers each of its increments is a
    locked write into a memory-mapped file, three per request, which cost 5-7% of a request's
    server CPU (bench/README.md, fourteenth pass). A scrape sees the other workers' last second
    on its next visit; a worker killed outright loses at most that second of counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "atp_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "atp_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route", "method"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.pool = Gauge(
            "atp_db_pool_connections",
            "Database pool connections: size (open), available (idle), waiting (requests queued)",
            ["state"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        # (route, method, status) -> [requests, seconds in all, requests per latency bucket]
        self.pending: dict[tuple[str, str, int], list[Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        counts = self.pending.get((route, method, status))
        if counts is None:
            counts = self.pending[(route, method, status)] = [0, 0.0, [0] * len(LATENCY_BUCKETS)]
        counts[0] += 1
        counts[1] += seconds
        # The first bucket whose bound is at least the latency, as Histogram.observe picks it.
        counts[2][bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def publish(self) -> None:
        """What observe() counted since the last call, into prometheus_client's metrics. A
        histogram child has no public way to add several observations at once: its sum and
        bucket values are incremented directly (tests/test_observe.py checks the exposition)."""
        pending, self.pending = self.pending, {}
        for (route, method, status), (requests, seconds, buckets) in pending.items():
            self.requests.labels(route, method, str(status)).inc(requests)
            latency = self.latency.labels(route, method)
            latency._sum.inc(seconds)
            for bucket, count in zip(latency._buckets, buckets, strict=True):
                if count:
                    bucket.inc(count)

    def observe_pool(self, pool: AsyncConnectionPool[Any], gate: Gate) -> None:
        stats = pool.get_stats()
        self.pool.labels("size").set(stats.get("pool_size", 0))
        self.pool.labels("available").set(stats.get("pool_available", 0))
        self.pool.labels("waiting").set(stats.get("requests_waiting", 0) + gate.waiting)

    def exposition(self) -> bytes:
        self.publish()
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def process_ended(self) -> None:
        self.publish()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.mark_process_dead(os.getpid())


METRICS = Metrics()
ACCESS_LOG = AccessLog()
atexit.register(ACCESS_LOG.flush)


async def publish_metrics(
    pool: AsyncConnectionPool[Any], gate: Gate, interval: float = 1.0
) -> None:
    """This worker's requests and pool gauges, once a second (and by /metrics when it answers),
    not on every request (bench/README.md, third and fourteenth passes): a count or a gauge a
    second old is current enough."""
    while True:
        METRICS.publish()
        METRICS.observe_pool(pool, gate)
        await asyncio.sleep(interval)


# --- key names for the access log ---------------------------------------------------------


class KeyNames:
    """API key names for the logs, by key hash, cached for a minute (api.describe_api_key does
    not count toward the rate limit)."""

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self.cache: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    async def name(self, pool: AsyncConnectionPool[Any], key_hash: str) -> str | None:
        now = time.monotonic()
        cached = self.cache.get(key_hash)
        if cached and cached[0] > now:
            return cached[1]
        try:
            async with pool.connection(timeout=1.0) as conn:
                cur = await conn.execute(
                    "SELECT api.describe_api_key(api_key_hash => %s) ->> 'name'", [key_hash]
                )
                row = await cur.fetchone()
        except (psycopg.Error, PoolTimeout):
            return None
        name = row[0] if row else None
        self.cache[key_hash] = (now + self.ttl, name)
        self.cache.move_to_end(key_hash)
        while len(self.cache) > self.size:
            self.cache.popitem(last=False)
        return name


# --- the middleware ------------------------------------------------------------------------


# The version (4) and variant (RFC 4122) bits of a random UUID, and the bits they replace.
UUID4_CLEAR = ~(0xF000 << 64) & ~(0xC000 << 48)
UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_correlation_id() -> str:
    """A random UUID (version 4) for a request that brought no X-Correlation-Id, in its usual
    text. It only has to be unique, not secret: Python's generator, seeded from the OS per
    process, instead of an os.urandom call per request (uuid.uuid4, 2% of a balance read's server
    CPU), and the text formatted here rather than by a uuid.UUID built and checked per request."""
    digits = f"{random.getrandbits(128) & UUID4_CLEAR | UUID4_SET:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


# The headers a request may give once only, by their ASGI (lower-case) names. A second copy would
# leave it to each reader which one counts: a different key, user or idempotency key.
SINGLE_HEADERS = {
    b"x-api-key": "X-API-Key",
    b"x-correlation-id": "X-Correlation-Id",
    b"idempotency-key": "Idempotency-Key",
    b"x-request-user-id": "X-Request-User-Id",
}


def read_headers(raw: list[tuple[bytes, bytes]]) -> tuple[bytes, str | None, str | None]:
    """The API key's bytes, the correlation id as UTF-8 text ("" when absent, None when not
    UTF-8), and the first of SINGLE_HEADERS given twice (or "Transfer-Encoding" when the body
    is chunked), in one pass over the headers."""
    key = correlation = b""
    seen: set[bytes] = set()
    repeated = None
    for name, value in raw:
        if name == b"transfer-encoding":
            # uvicorn's httptools protocol appends a chunked body's trailer fields to the request's
            # headers: an X-API-Key or X-Request-User-Id sent as a trailer, past a proxy that
            # checks headers, would count. Bodies are small; they come with a Content-Length.
            repeated = "Transfer-Encoding"
        elif name in SINGLE_HEADERS:
            if name in seen:
                repeated = repeated or SINGLE_HEADERS[name]
                continue
            seen.add(name)
            if name == b"x-api-key":
                key = value
            elif name == b"x-correlation-id":
                correlation = value
    try:
        given: str | None = correlation.decode()
    except UnicodeDecodeError:
        given = None
    return key, given, repeated


def header_problem(correlation_id: str | None, repeated: str | None) -> str | None:
    """What makes a request's headers unreadable before its route is known: a correlation id
    that is not UTF-8, too long (in characters) or holding an API key, a chunked body, an API
    key or correlation id given twice.
    A repeated Idempotency-Key or X-Request-User-Id is the route's to refuse, after the key."""
    if correlation_id is None:
        return "X-Correlation-Id must be UTF-8 text"
    if len(correlation_id) > MAX_CORRELATION_ID:
        return f"X-Correlation-Id is longer than {MAX_CORRELATION_ID} characters"
    if KEY_IN_TEXT.search(correlation_id):
        # It would be stored in events and audit rows, which nothing can clean afterwards.
        return "X-Correlation-Id must not hold an API key"
    if repeated == "Transfer-Encoding":
        return "send the body with a Content-Length header: Transfer-Encoding is not accepted"
    if repeated in ("X-API-Key", "X-Correlation-Id"):
        return f"the {repeated} header is given more than once"
    return None


ENCODED_SEPARATOR = re.compile(rb"%(?:2[fF]|00)")


def encoded_separator(raw_path: bytes | None) -> bool:
    """A path with %2F or %00: the router sees it decoded (/users/<id>%2Fbalance would be the
    balance's route), a proxy's path rules do not; no route of the contract has one."""
    return (
        raw_path is not None and b"%" in raw_path and ENCODED_SEPARATOR.search(raw_path) is not None
    )


# On every answer: balances and histories are nobody's to cache, and a JSON body is not to be
# sniffed into something else.
SAFETY_HEADERS = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))

ErrorResponse = Callable[[int, str, str], Response]
KeyName = Callable[[dict[str, Any], int], Awaitable[str | None]]
RouteOf = Callable[[Scope], Any]


class RequestContext:
    """Correlation id (checked, generated, echoed), the API key's hash and masked prefix, one JSON
    log line and the metrics of every request, and a JSON 500 for anything unexpected.
    `error` renders the contract's error body; `key_name` names the key for the log line;
    `route_of` finds the route of a request refused for its headers, which the router never saw,
    so that its log line and metrics name the route it was sent to."""

    def __init__(
        self, app: ASGIApp, error: ErrorResponse, key_name: KeyName, route_of: RouteOf
    ) -> None:
        self.app = app
        self.error = error
        self.key_name = key_name
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        key, given, repeated = read_headers(scope["headers"])
        problem = header_problem(given, repeated)
        correlation_id = given if given and problem is None else new_correlation_id()
        state.update(
            correlation_id=correlation_id,
            api_key_hash=hashlib.sha256(key).hexdigest() if key else None,
            key_prefix=mask_key(key.decode("latin-1")) if key else None,
            repeated_header=repeated,
        )
        response = {"status": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                response.update(status=message["status"], started=True)
                message["headers"] = [
                    *message.get("headers", []),
                    *SAFETY_HEADERS,
                    (b"x-correlation-id", correlation_id.encode()),
                ]
            await send(message)

        try:
            if problem is not None:
                scope["route"] = self.route_of(scope)
                await self.error(400, "invalid_request", problem)(scope, receive, send_with_id)
            elif encoded_separator(scope.get("raw_path")):
                message = "no such route: the path holds an encoded / or NUL"
                await self.error(404, "not_found", message)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error", extra={"fields": {"correlation_id": correlation_id}})
            if not response["started"]:
                failure = self.error(500, "internal_error", "an unexpected error occurred")
                await failure(scope, receive, send_with_id)
        await self.record(scope, int(response["status"]), time.perf_counter() - started)

    async def record(self, scope: Scope, status: int, seconds: float) -> None:
        state = scope["state"]
        route = scope.get("route")
        route_name = getattr(route, "path", None) or "unmatched"
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
        METRICS.observe(route_name, method, status, seconds)
        ACCESS_LOG.write(
            method=scope["method"],
            route=route_name,
            path=scope["path"],
            status=status,
            latency_ms=round(seconds * 1000, 2),
            correlation_id=state["correlation_id"],
            api_key_name=await self.key_name(state, status),
            api_key_prefix=state["key_prefix"],
            client=(scope.get("client") or ("", 0))[0],
        )
