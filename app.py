"""financeATP over HTTP: a thin Starlette layer in front of the `api` schema.

It authenticates (the SHA-256 of X-API-Key, never the key itself, goes to PostgreSQL), maps the
path, query, headers and body of a request to the named arguments of ONE `api` function call, and
maps SQLSTATE codes to HTTP statuses by rule. Every rule about money lives in PostgreSQL (sql/).

Commands (the Makefile calls them):
    python app.py run       make run: migrate and serve (embedded PostgreSQL without DATABASE_URL)
    python app.py serve     serve DATABASE_URL as it is (no migration)
    python app.py api-key   make api-key: create an API key and print it once
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import ipaddress
import json
import logging
import logging.config
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import uvicorn
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path
from uvicorn.supervisors import Multiprocess

ROOT = Path(__file__).resolve().parent
VERSION = "0.1.0"
JSON = "application/json"
MAX_CORRELATION_ID = 128
UUID_PATTERN = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
# Anything shaped like an API key is cut to its prefix in every log line, whoever logged it.
KEY_IN_TEXT = re.compile(r"(sk_(?:live|test)_)[A-Za-z0-9]+")

log = logging.getLogger("financeatp")
access_log = logging.getLogger("financeatp.access")


# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What the server reads from its environment (README.md, "Configuration")."""

    database_url: str
    db_role: str = "atp_app"
    pool_min_size: int = 2
    pool_max_size: int = 4
    pool_timeout: float = 5.0
    max_body_bytes: int = 64 * 1024
    maintenance_interval: float = 60.0
    key_name_ttl: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        url = env.get("DATABASE_URL", "")
        if not url:
            raise RuntimeError("DATABASE_URL is not set (postgresql://user@host:port/dbname)")
        return cls(
            database_url=url,
            db_role=env.get("DB_ROLE", cls.db_role),
            pool_min_size=int(env.get("POOL_MIN_SIZE", cls.pool_min_size)),
            pool_max_size=int(env.get("POOL_MAX_SIZE", cls.pool_max_size)),
            pool_timeout=float(env.get("POOL_TIMEOUT", cls.pool_timeout)),
            max_body_bytes=int(env.get("MAX_BODY_BYTES", cls.max_body_bytes)),
            maintenance_interval=float(env.get("MAINTENANCE_INTERVAL", cls.maintenance_interval)),
        )


# --- errors --------------------------------------------------------------------------------


class ApiError(Exception):
    """An answer with the contract's error body {"error", "message"}."""

    def __init__(
        self, status: int, error: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> Response:
        return error_response(self.status, self.error, self.message, self.headers)


def error_response(
    status: int, error: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    body = json.dumps({"error": error, "message": message}, ensure_ascii=False)
    return Response(body, status, headers=dict(headers or {}), media_type=JSON)


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


def unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message, {"Retry-After": "1"})


# Used only until api.error_codes() could be read: the status is in the code itself.
FALLBACK_ERROR_NAMES = {
    400: "invalid_request",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    409: "conflict",
    429: "rate_limit_exceeded",
}
API_SQLSTATE = re.compile(r"L([45][0-9]{2})[0-9]")


class ErrorCodes:
    """SQLSTATE -> (HTTP status, error name), read once from api.error_codes()."""

    def __init__(self) -> None:
        self.codes: dict[str, tuple[int, str]] = {}

    async def load(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cur = await conn.execute("SELECT sqlstate, http_status, error FROM api.error_codes()")
        self.codes = {state: (status, name) for state, status, name in await cur.fetchall()}

    def lookup(self, sqlstate: str) -> tuple[int, str] | None:
        if sqlstate in self.codes:
            return self.codes[sqlstate]
        match = API_SQLSTATE.fullmatch(sqlstate)
        if match is None:
            return None
        status = int(match.group(1))
        return status, FALLBACK_ERROR_NAMES.get(status, "error")


def retry_after(exc: psycopg.Error) -> dict[str, str]:
    """L4291 carries {"retry_after": seconds} in its DETAIL."""
    try:
        seconds = int(json.loads(exc.diag.message_detail or "{}")["retry_after"])
    except (ValueError, KeyError, TypeError):
        seconds = 60
    return {"Retry-After": str(max(1, seconds))}


def translate(exc: psycopg.Error, codes: ErrorCodes) -> ApiError | None:
    """The HTTP answer for a database error, by its SQLSTATE; None for a bug (a 500)."""
    state = exc.sqlstate or ""
    message = exc.diag.message_primary or str(exc)
    known = codes.lookup(state) if state.startswith("L") else None
    if known is not None:
        status, name = known
        return ApiError(status, name, message, retry_after(exc) if status == 429 else None)
    if state.startswith("22") or (not state and isinstance(exc, psycopg.DataError)):
        return invalid(message)  # data exception: text that is not a number, a date, ...
    if state in ("40001", "40P01"):
        return unavailable("the database asked to retry this request")
    if state[:2] in ("08", "53", "57") or (not state and isinstance(exc, psycopg.OperationalError)):
        return unavailable("the database is not available")
    return None


# --- the operations of the contract --------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A body or query field: how it is checked for shape here, and how OpenAPI shows it.
    Patterns and lengths are documentation of the database's rules; only the database enforces them.
    """

    name: str
    kind: str  # uuid | amount | text | integer | timestamp
    required: bool = False
    max_length: int | None = None
    pattern: str | None = None
    minimum: int | None = None
    maximum: int | None = None
    description: str = ""
    example: Any = None


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    function: str
    permission: str
    summary: str
    response: str
    success: int = 200
    body: tuple[Field, ...] | None = None
    body_required: bool = True
    query: tuple[Field, ...] = ()
    can_404: bool = True
    needs_acting_user: bool = False
    needs_one_of: tuple[str, ...] = ()  # documents a rule of the function: one of these, not null
    description: str = ""

    @property
    def writes(self) -> bool:
        return self.method != "GET"

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    @property
    def tag(self) -> str:
        return "admin" if self.path.startswith("/admin") else self.path.split("/")[1]


# An amount as the database accepts it in plain decimal notation: more than 0, at most 10^12,
# at most 8 decimal places (zeros beyond them change nothing).
AMOUNT_PATTERN = (
    r"^0*(?:[1-9][0-9]{0,11}(?:\.[0-9]{0,8}0*)?|1000000000000(?:\.0*)?|\.[0-9]{0,7}[1-9]0*)$"
)
NO_NUL = r"^[^\u0000]*$"
USERNAME = Field(
    "username",
    "text",
    pattern=r"^[A-Za-z0-9_]{3,50}$",
    description="3 to 50 letters, digits and underscores; unique among live users",
    example="alice",
)
EMAIL = Field(
    "email",
    "text",
    max_length=254,
    pattern=r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$",
    description="unique among live users",
    example="alice@example.com",
)
DISPLAY_NAME = Field(
    "display_name",
    "text",
    max_length=100,
    pattern=NO_NUL,
    description="an empty string clears it",
    example="Alice Smith",
)
AMOUNT = Field(
    "amount",
    "amount",
    required=True,
    pattern=AMOUNT_PATTERN,
    description="ATP as a JSON string: more than 0, at most 1000000000000, at most 8 decimals",
    example="100.50000000",
)


def user_ref(name: str, description: str = "") -> Field:
    return Field(name, "uuid", required=True, description=description)


def note(name: str, description: str) -> Field:
    return Field(name, "text", max_length=500, pattern=NO_NUL, description=description)


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST",
        "/users",
        "create_user",
        "write",
        "Create a user and their wallet",
        "User",
        success=201,
        can_404=False,
        body=(
            user_ref("user_id", "chosen by the caller"),
            dataclasses.replace(USERNAME, required=True),
            dataclasses.replace(EMAIL, required=True),
            DISPLAY_NAME,
        ),
    ),
    Operation("GET", "/users/{user_id}", "get_user", "read", "A live user", "User"),
    Operation(
        "PATCH",
        "/users/{user_id}",
        "update_user",
        "write",
        "Change a user's username, email or display name",
        "User",
        body=(
            USERNAME,
            EMAIL,
            DISPLAY_NAME,
            Field(
                "expected_version",
                "integer",
                minimum=1,
                maximum=2**63 - 1,
                description="refuse with 409 version_conflict unless the user is at this version",
            ),
        ),
        needs_one_of=("username", "email", "display_name"),
        description="A field that is absent or null keeps its value; give at least one.",
    ),
    Operation(
        "DELETE",
        "/users/{user_id}",
        "delete_user",
        "write",
        "Delete a user (logically; only with a zero balance)",
        "DeletedUser",
        description="History stays; username and email become free again. "
        "409 balance_not_zero while the wallet holds ATP.",
    ),
    Operation(
        "GET",
        "/users/{user_id}/balance",
        "get_balance",
        "read",
        "A user's balance, now or at a past moment",
        "Balance",
        query=(
            Field(
                "as_of",
                "timestamp",
                description="RFC 3339; the balance at that moment, replayed from the events",
                example="2026-01-01T15:46:00Z",
            ),
        ),
    ),
    Operation(
        "GET",
        "/users/{user_id}/history",
        "get_history",
        "read",
        "A user's money movements, newest first",
        "History",
        query=(
            Field("limit", "integer", minimum=1, maximum=200, description="page size (50)"),
            Field(
                "cursor",
                "text",
                pattern=r"^[0-9]{1,18}$",
                description="next_cursor of the previous page",
            ),
        ),
    ),
    Operation(
        "POST",
        "/transfers",
        "transfer",
        "write",
        "Move ATP from one user to another",
        "Transfer",
        success=201,
        needs_acting_user=True,
        body=(
            user_ref("from_user_id", "the sender: must equal X-Request-User-Id"),
            user_ref("to_user_id"),
            AMOUNT,
            note("memo", "shown in both users' history"),
        ),
        description="X-Request-User-Id must equal from_user_id (else 403 unauthorized_transfer).",
    ),
    Operation(
        "GET", "/transfers/{transfer_id}", "get_transfer", "read", "One transfer", "Transfer"
    ),
    Operation(
        "POST",
        "/admin/mint",
        "mint",
        "admin",
        "Issue new ATP into a user's wallet",
        "Mint",
        success=201,
        body=(user_ref("to_user_id"), AMOUNT, note("reason", "why, for the audit log")),
    ),
    Operation(
        "POST",
        "/admin/burn",
        "burn",
        "admin",
        "Retire ATP from a user's wallet",
        "Burn",
        success=201,
        body=(user_ref("from_user_id"), AMOUNT, note("reason", "why, for the audit log")),
    ),
    Operation(
        "POST",
        "/admin/users/{user_id}/freeze",
        "freeze_wallet",
        "admin",
        "Freeze a user's wallet: it can neither send nor receive",
        "User",
        body=(note("reason", "why, for the audit log"),),
        body_required=False,
    ),
    Operation(
        "POST",
        "/admin/users/{user_id}/unfreeze",
        "unfreeze_wallet",
        "admin",
        "Unfreeze a user's wallet",
        "User",
        body=(note("reason", "why, for the audit log"),),
        body_required=False,
    ),
    Operation(
        "GET",
        "/admin/events",
        "list_events",
        "admin",
        "The global event feed in commit order",
        "EventPage",
        can_404=False,
        query=(
            Field(
                "after",
                "text",
                pattern=r"^[0-9]{1,19}-[0-9]{1,18}$",
                description="next_cursor of the previous page; every committed event comes once",
            ),
            Field("limit", "integer", minimum=1, maximum=1000, description="page size (100)"),
        ),
    ),
)


# --- reading a request ---------------------------------------------------------------------


def uuid_text(value: str, what: str) -> str:
    if not UUID_PATTERN.fullmatch(value):
        raise invalid(f"{what} must be a UUID such as 123e4567-e89b-12d3-a456-426614174000")
    return value


def clean_text(value: str, what: str) -> str:
    if "\x00" in value:
        raise invalid(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(f"{what} is not valid Unicode text") from None
    return value


def field_value(field: Field, value: Any) -> str | None:
    """A JSON value as the text PostgreSQL parses; only JSON types are judged here."""
    if value is None:
        return None
    if field.kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(f"{field.name} must be an integer")
        return str(value)
    if not isinstance(value, str):
        if (
            field.kind == "amount"
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            raise invalid(
                f'{field.name} must be a JSON string such as "100.50", not a number: '
                "numbers lose exactness"
            )
        raise invalid(f"{field.name} must be a string")
    if field.kind == "uuid":
        return uuid_text(value, field.name)
    return clean_text(value, field.name)


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the request body is larger than {limit} bytes")


def parse_object(raw: bytes, required: bool) -> dict[str, Any]:
    if not raw.strip() and not required:
        return {}
    try:
        body = json.loads(raw, parse_constant=reject_constant)
    except (ValueError, RecursionError):
        raise invalid("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    return body


def body_arguments(op: Operation, body: Mapping[str, Any]) -> dict[str, str | None]:
    fields = {field.name: field for field in op.body or ()}
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(fields)}")
    # Every field goes to the function, an absent one as NULL: the database says what is required.
    return {name: field_value(field, body.get(name)) for name, field in fields.items()}


def query_arguments(op: Operation, request: Request) -> dict[str, str]:
    allowed = {field.name: field for field in op.query}
    given = request.query_params.multi_items()
    args: dict[str, str] = {}
    for name, value in given:
        if name not in allowed:
            raise invalid(f"unknown query parameter {name!r}")
        if name in args:
            raise invalid(f"query parameter {name!r} is given more than once")
        args[name] = clean_text(value, name)
    return args


def path_arguments(op: Operation, request: Request) -> dict[str, str]:
    return {name: uuid_text(request.path_params[name], name) for name in op.path_params}


def request_hash(request: Request, body: Mapping[str, Any], acting_user: str | None) -> str:
    """The same method, path, parsed body and acting user make the same request, whatever the
    JSON's spacing or key order; stored with the idempotency key to tell replays from conflicts."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    text = "\n".join((request.method, request.url.path, canonical, acting_user or ""))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def context_arguments(request: Request) -> dict[str, str | None]:
    """Who is calling, for authentication, the transfer rule and the audit trail."""
    key_hash = request.state.api_key_hash
    if key_hash is None:
        raise ApiError(401, "invalid_api_key", "the X-API-Key header is required")
    acting = request.headers.get("x-request-user-id")
    return {
        "api_key_hash": key_hash,
        "request_user_id": None if acting is None else uuid_text(acting, "X-Request-User-Id"),
        "correlation_id": request.state.correlation_id,
        "client_addr": client_address(request),
    }


def client_address(request: Request) -> str | None:
    host = request.client.host if request.client else ""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def idempotency_key(request: Request) -> str:
    key = request.headers.get("idempotency-key")
    if not key:
        raise invalid("the Idempotency-Key header (a UUID) is required on POST, PATCH and DELETE")
    return uuid_text(key, "Idempotency-Key")


async def arguments(request: Request, op: Operation, limit: int) -> dict[str, str | None]:
    """Every named argument of the api function, each as text or NULL."""
    args: dict[str, str | None] = dict(context_arguments(request))
    if op.writes:
        args["idempotency_key"] = idempotency_key(request)
    args |= path_arguments(op, request)
    args |= query_arguments(op, request)
    if op.body is not None:
        body = parse_object(await read_body(request, limit), op.body_required)
        args |= body_arguments(op, body)
    else:
        body = {}
    if op.writes:
        args["request_hash"] = request_hash(request, body, args["request_user_id"])
    return args


# --- calling the database ------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def call_statement(function: str, names: tuple[str, ...], writes: bool) -> bytes:
    """SELECT api.<function>(name => %(name)s, ...): values go as untyped text, so PostgreSQL
    parses each by the function's signature (an amount as numeric, an id as uuid, ...).
    Rendered to bytes once: psycopg would render a Composed again on every execution, and
    caches its parse of a query given as bytes (make bench's py-spy profile)."""
    args = sql.SQL(", ").join(
        sql.SQL("{} => {}").format(sql.Identifier(name), sql.Placeholder(name)) for name in names
    )
    function_name = sql.Identifier("api", function)
    if writes:
        statement = sql.SQL("SELECT status, body::text, replayed FROM {}({})")
    else:
        statement = sql.SQL("SELECT {}({})::text")
    return statement.format(function_name, args).as_bytes(None)


async def call(state: AppState, op: Operation, args: dict[str, str | None]) -> Response:
    statement = call_statement(op.function, tuple(sorted(args)), op.writes)
    row = await fetch_one(state, statement, args)
    if op.writes:
        status, body, replayed = row
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        return Response(body, status, headers=headers, media_type=JSON)
    return Response(row[0], op.success, media_type=JSON)


class DeadConnectionError(Exception):
    """The connection broke under the statement (e.g. the server restarted since it was opened)."""


async def execute_once(state: AppState, statement: bytes, args: Mapping[str, Any]) -> Any:
    async with state.pool.connection() as conn:
        try:
            cur = await conn.execute(statement, args)
        except psycopg.OperationalError as exc:
            if conn.broken:
                raise DeadConnectionError from exc
            raise
        row = await cur.fetchone()
    if row is None:
        raise RuntimeError(f"{statement!r} returned no row")
    return row


async def fetch_one(state: AppState, statement: bytes, args: Mapping[str, Any]) -> Any:
    # A connection that died while idle in the pool fails on first use: try once more on a new
    # one. Safe for writes too: the idempotency key makes a second execution a replay.
    for attempt in (1, 2):
        try:
            return await execute_once(state, statement, args)
        except DeadConnectionError as dead:
            if attempt == 1:
                await state.pool.check()  # the other idle connections died with it, most likely
                continue
            raise unavailable("the database connection was lost") from dead
        except PoolTimeout:
            raise unavailable("no database connection is available") from None
        except psycopg.Error as exc:
            if not state.codes.codes and (exc.sqlstate or "").startswith("L"):
                await load_error_codes(state, timeout=1.0)  # the database was down at startup
            error = translate(exc, state.codes)
            if error is None:
                raise  # a bug: RequestContext logs it and answers 500
            raise error from exc
    raise AssertionError("unreachable")


def operation_endpoint(operations: Mapping[str, Operation]) -> Callable[..., Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        op = operations["GET" if request.method == "HEAD" else request.method]
        state: AppState = request.state.atp
        try:
            args = await arguments(request, op, state.settings.max_body_bytes)
            return await call(state, op, args)
        except ApiError as error:
            return error.response()
        except ClientDisconnect:
            # Gone before its body arrived: nothing was called; 499 (nginx's "client closed
            # request") is for the log only, nobody receives it.
            return Response(status_code=499)

    return endpoint


# --- state of one server process -----------------------------------------------------------


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


@dataclass
class AppState:
    settings: Settings
    pool: AsyncConnectionPool[Any]
    codes: ErrorCodes
    key_names: KeyNames


async def configure_connection(role: str, conn: psycopg.AsyncConnection[Any]) -> None:
    # The login user may be a superuser (the embedded setup): act as the application role, which
    # may only execute api functions, and may not call them without a key.
    if role:
        await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))


def make_pool(settings: Settings) -> AsyncConnectionPool[Any]:
    return AsyncConnectionPool(
        settings.database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout,
        kwargs={"autocommit": True, "application_name": "financeatp"},
        configure=functools.partial(configure_connection, settings.db_role),
        name="financeatp",
        open=False,
    )


async def load_error_codes(state: AppState, timeout: float) -> bool:
    try:
        async with state.pool.connection(timeout=timeout) as conn:
            await state.codes.load(conn)
        return True
    except (psycopg.Error, PoolTimeout) as exc:
        log.warning("could not read api.error_codes()", extra={"fields": {"error": str(exc)}})
        return False


async def run_maintenance(state: AppState) -> None:
    """api.run_maintenance() every MAINTENANCE_INTERVAL seconds, in every worker: each job is
    safe to run concurrently and cheap when there is nothing to do, and it needs no leader."""
    interval = state.settings.maintenance_interval
    await asyncio.sleep(secrets.randbelow(int(min(interval, 10)) * 1000 + 1) / 1000)
    while True:
        try:
            async with state.pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT api.run_maintenance(correlation_id => %s)", ["maintenance"]
                )
                row = await cur.fetchone()
            log.info("maintenance", extra={"fields": {"result": row[0] if row else None}})
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("maintenance failed", extra={"fields": {"error": str(exc)}})
        await asyncio.sleep(interval)


async def publish_pool_gauges(state: AppState, interval: float = 1.0) -> None:
    """The pool gauges of this worker, once a second (and by /metrics when it answers), not
    three gauge writes on every request: the metrics cost about 0.06 ms of a request's 0.5 ms
    of server CPU (bench/README.md, third pass), and a gauge a second old is current enough."""
    while True:
        METRICS.observe_pool(state.pool)
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    setup_logging()
    settings = Settings.from_env()
    pool = make_pool(settings)
    await pool.open(wait=False)
    state = AppState(settings, pool, ErrorCodes(), KeyNames(settings.key_name_ttl))
    await load_error_codes(state, timeout=settings.pool_timeout)
    tasks = [asyncio.create_task(publish_pool_gauges(state))]
    if settings.maintenance_interval > 0:
        tasks.append(asyncio.create_task(run_maintenance(state)))
    try:
        yield {"atp": state}
    finally:
        for task in tasks:
            task.cancel()
        await pool.close()
        with contextlib.suppress(Exception):
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                multiprocess.mark_process_dead(os.getpid())


# --- health, metrics, documentation --------------------------------------------------------


async def healthz(request: Request) -> Response:
    return Response('{"status":"ok"}', media_type=JSON)


async def readyz(request: Request) -> Response:
    state: AppState = request.state.atp
    if await load_error_codes(state, timeout=2.0):
        return Response('{"status":"ready"}', media_type=JSON)
    return unavailable("the database is not reachable").response()


class Metrics:
    """Prometheus metrics; with several workers they are summed over PROMETHEUS_MULTIPROC_DIR."""

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
        )
        self.pool = Gauge(
            "atp_db_pool_connections",
            "Database pool connections: size (open), available (idle), waiting (requests queued)",
            ["state"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        # The labelled children, looked up once per (route, method, status): few of them.
        children = self.children.get((route, method, status))
        if children is None:
            children = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method),
            )
            self.children[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_pool(self, pool: AsyncConnectionPool[Any]) -> None:
        stats = pool.get_stats()
        self.pool.labels("size").set(stats.get("pool_size", 0))
        self.pool.labels("available").set(stats.get("pool_available", 0))
        self.pool.labels("waiting").set(stats.get("requests_waiting", 0))

    def exposition(self) -> bytes:
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


METRICS = Metrics()


async def metrics(request: Request) -> Response:
    METRICS.observe_pool(request.state.atp.pool)
    return Response(METRICS.exposition(), media_type=CONTENT_TYPE_LATEST)


async def openapi_json(request: Request) -> Response:
    return Response(openapi_text(), media_type=JSON)


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>financeATP API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", validatorUrl: null});</script>
</body></html>
"""


async def docs(request: Request) -> Response:
    return HTMLResponse(DOCS_PAGE)


# --- OpenAPI -------------------------------------------------------------------------------

UUID_SCHEMA = {"type": "string", "format": "uuid"}
TIME_SCHEMA = {"type": "string", "format": "date-time", "example": "2026-01-01T15:46:00.000000Z"}
ATP_SCHEMA = {"type": "string", "pattern": r"^[0-9]+\.[0-9]{8}$", "example": "100.50000000"}


def nullable(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def obj(properties: Mapping[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    required = [name for name in properties if name not in optional]
    return {"type": "object", "properties": dict(properties), "required": required}


RESPONSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": obj({"error": {"type": "string"}, "message": {"type": "string"}}),
    "User": obj(
        {
            "user_id": UUID_SCHEMA,
            "username": {"type": "string"},
            "email": {"type": "string"},
            "display_name": nullable({"type": "string"}),
            "balance": ATP_SCHEMA,
            "is_frozen": {"type": "boolean"},
            "version": {"type": "integer"},
            "created_at": TIME_SCHEMA,
            "updated_at": TIME_SCHEMA,
        }
    ),
    "DeletedUser": obj(
        {
            "user_id": UUID_SCHEMA,
            "status": {"type": "string", "enum": ["deleted"]},
            "deleted_at": TIME_SCHEMA,
        }
    ),
    "Balance": obj(
        {
            "user_id": UUID_SCHEMA,
            "username": {"type": "string"},
            "balance": ATP_SCHEMA,
            "is_frozen": {"type": "boolean", "description": "only without as_of"},
            "as_of": {**TIME_SCHEMA, "description": "only with as_of"},
            "updated_at": TIME_SCHEMA,
        },
        optional=("is_frozen", "as_of"),
    ),
    "History": obj(
        {
            "user_id": UUID_SCHEMA,
            "items": {
                "type": "array",
                "items": obj(
                    {
                        "id": {**UUID_SCHEMA, "description": "the transfer, mint or burn id"},
                        "kind": {
                            "type": "string",
                            "enum": ["mint", "burn", "transfer_in", "transfer_out"],
                        },
                        "amount": ATP_SCHEMA,
                        "counterparty": nullable(UUID_SCHEMA),
                        "memo": nullable({"type": "string"}),
                        "balance_after": ATP_SCHEMA,
                        "created_at": TIME_SCHEMA,
                    }
                ),
            },
            "next_cursor": nullable({"type": "string", "description": "null on the last page"}),
        }
    ),
    "Transfer": obj(
        {
            "transfer_id": UUID_SCHEMA,
            "status": {"type": "string", "enum": ["completed"]},
            "from_user_id": UUID_SCHEMA,
            "to_user_id": UUID_SCHEMA,
            "amount": ATP_SCHEMA,
            "memo": nullable({"type": "string"}),
            "created_at": TIME_SCHEMA,
        }
    ),
    "Mint": obj(
        {
            "mint_id": UUID_SCHEMA,
            "status": {"type": "string", "enum": ["completed"]},
            "to_user_id": UUID_SCHEMA,
            "amount": ATP_SCHEMA,
            "reason": nullable({"type": "string"}),
            "created_at": TIME_SCHEMA,
        }
    ),
    "Burn": obj(
        {
            "burn_id": UUID_SCHEMA,
            "status": {"type": "string", "enum": ["completed"]},
            "from_user_id": UUID_SCHEMA,
            "amount": ATP_SCHEMA,
            "reason": nullable({"type": "string"}),
            "created_at": TIME_SCHEMA,
        }
    ),
    "EventPage": obj(
        {
            "events": {
                "type": "array",
                "items": obj(
                    {
                        "id": {"type": "integer"},
                        "cursor": {"type": "string"},
                        "aggregate_type": {"type": "string"},
                        "aggregate_id": UUID_SCHEMA,
                        "version": {"type": "integer"},
                        "event_type": {"type": "string"},
                        "data": {"type": "object"},
                        "actor": {"type": "string"},
                        "api_key_id": nullable(UUID_SCHEMA),
                        "request_user_id": nullable(UUID_SCHEMA),
                        "correlation_id": nullable({"type": "string"}),
                        "created_at": TIME_SCHEMA,
                    }
                ),
            },
            "next_cursor": {"type": "string", "description": "pass back as after"},
        }
    ),
    "Status": obj({"status": {"type": "string"}}),
}

ERROR_DESCRIPTIONS = {
    400: "invalid_request (malformed JSON, wrong JSON type, unknown field, bad UUID or value, "
    "missing Idempotency-Key), insufficient_balance, account_frozen, balance_limit_exceeded",
    401: "invalid_api_key: missing, unknown, revoked or expired",
    403: "permission_denied, or unauthorized_transfer (X-Request-User-Id is not from_user_id)",
    404: "user_not_found, or not_found (transfer)",
    409: "idempotency_conflict, version_conflict, user_exists, balance_not_zero",
    413: "payload_too_large",
    429: "rate_limit_exceeded; Retry-After says when to retry",
    503: "unavailable: the database cannot be reached; retry later",
}

HEADER_DOCS: dict[str, dict[str, Any]] = {
    "X-Correlation-Id": {
        "description": "the request's X-Correlation-Id, or one generated for it",
        "required": True,
        "schema": {"type": "string", "maxLength": MAX_CORRELATION_ID},
    },
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 1},
    },
    "Idempotent-Replayed": {
        "description": "true when this is the stored response of an earlier request",
        "schema": {"type": "string", "enum": ["true"]},
    },
}


def header_refs(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def error_responses() -> dict[str, Any]:
    responses = {}
    for status, description in ERROR_DESCRIPTIONS.items():
        headers = header_refs("X-Correlation-Id")
        if status in (429, 503):
            headers |= header_refs("Retry-After")
        responses[f"E{status}"] = {
            "description": description,
            "headers": headers,
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return responses


def field_schema(field: Field) -> dict[str, Any]:
    base: dict[str, Any] = {"type": "integer" if field.kind == "integer" else "string"}
    if field.kind == "uuid":
        base["format"] = "uuid"
    if field.kind == "timestamp":
        base["format"] = "date-time"
    extras = {
        "maxLength": field.max_length,
        "pattern": field.pattern,
        "minimum": field.minimum,
        "maximum": field.maximum,
        "description": field.description or None,
        "example": field.example,
    }
    base |= {key: value for key, value in extras.items() if value is not None}
    return base if field.required else nullable(base)


def body_schema(op: Operation) -> dict[str, Any]:
    fields = op.body or ()
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {field.name: field_schema(field) for field in fields},
        "required": [field.name for field in fields if field.required],
    }
    if op.needs_one_of:
        schema["anyOf"] = [
            {"required": [name], "properties": {name: {"type": "string"}}}
            for name in op.needs_one_of
        ]
    return schema


def header_parameter(name: str, required: bool, schema: dict[str, Any], text: str) -> Any:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "schema": schema,
        "description": text,
    }


def parameters(op: Operation) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": UUID_SCHEMA}
        for name in op.path_params
    ]
    for field in op.query:
        schema = {key: value for key, value in field_schema(field).items() if key != "nullable"}
        params.append({"name": field.name, "in": "query", "required": False, "schema": schema})
    if op.writes:
        params.append(
            header_parameter(
                "Idempotency-Key",
                True,
                UUID_SCHEMA,
                "a new UUID per request; the same key with the same request replays the response",
            )
        )
    params.append(
        header_parameter(
            "X-Request-User-Id",
            op.needs_acting_user,
            UUID_SCHEMA,
            "the person acting (from the front end); recorded with the events and audit rows",
        )
    )
    params.append({"$ref": "#/components/parameters/CorrelationId"})
    return params


# What a created resource's id leads to (OpenAPI links: documentation, and stateful tests).
LINKS = {
    "create_user": (
        "user_id",
        ("get_user", "update_user", "get_balance", "get_history", "freeze_wallet",
         "unfreeze_wallet", "delete_user"),
    ),
    "transfer": ("transfer_id", ("get_transfer",)),
}  # fmt: skip


def operation_responses(op: Operation) -> dict[str, Any]:
    headers = header_refs("X-Correlation-Id")
    if op.writes:
        headers |= header_refs("Idempotent-Replayed")
    success = {
        "description": "success",
        "headers": headers,
        "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{op.response}"}}},
    }
    if op.function in LINKS:
        field, targets = LINKS[op.function]
        success["links"] = {
            target: {"operationId": target, "parameters": {field: f"$response.body#/{field}"}}
            for target in targets
        }
    statuses = [400, 401, 403, 429, 503]
    statuses += [404] if op.can_404 else []
    statuses += [409] if op.writes else []
    statuses += [413] if op.body is not None else []
    errors = {str(s): {"$ref": f"#/components/responses/E{s}"} for s in sorted(statuses)}
    return {str(op.success): success, **errors}


def operation_document(op: Operation) -> dict[str, Any]:
    document: dict[str, Any] = {
        "operationId": op.function,
        "summary": op.summary,
        "description": f"Needs the {op.permission} permission. Calls api.{op.function}. "
        + op.description,
        "tags": [op.tag],
        "security": [{"ApiKey": []}],
        "parameters": parameters(op),
        "responses": operation_responses(op),
    }
    if op.body is not None:
        document["requestBody"] = {
            "required": op.body_required,
            "content": {JSON: {"schema": body_schema(op)}},
        }
    return document


def open_operation(summary: str, media: str, schema: dict[str, Any], extra: int = 0) -> Any:
    ok = {
        "description": summary,
        "headers": header_refs("X-Correlation-Id"),
        "content": {media: {"schema": schema}},
    }
    responses = {"200": ok, "400": {"$ref": "#/components/responses/E400"}}
    if extra:
        responses[str(extra)] = {"$ref": f"#/components/responses/E{extra}"}
    return {
        "get": {
            "summary": summary,
            "tags": ["service"],
            "security": [],
            "parameters": [{"$ref": "#/components/parameters/CorrelationId"}],
            "responses": responses,
        }
    }


def service_paths() -> dict[str, Any]:
    status = {"$ref": "#/components/schemas/Status"}
    return {
        "/healthz": open_operation("The process is alive", JSON, status),
        "/readyz": open_operation("The database answers", JSON, status, extra=503),
        "/metrics": open_operation("Prometheus metrics", "text/plain", {"type": "string"}),
        "/openapi.json": open_operation("This document", JSON, {"type": "object"}),
        "/docs": open_operation("This document, rendered", "text/html", {"type": "string"}),
    }


@functools.cache
def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = operation_document(op)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "financeATP",
            "version": VERSION,
            "description": "The ledger of the in-house currency ATP. Every rule lives in "
            "PostgreSQL; errors are {error, message} with the codes of README.md.",
        },
        "paths": paths | service_paths(),
        "components": {
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
            "schemas": RESPONSE_SCHEMAS,
            "responses": error_responses(),
            "headers": HEADER_DOCS,
            "parameters": {
                "CorrelationId": header_parameter(
                    "X-Correlation-Id",
                    False,
                    {"type": "string", "maxLength": MAX_CORRELATION_ID},
                    "any text up to 128 characters, echoed and stored with events and audit rows",
                )
            },
        },
    }


@functools.cache
def openapi_text() -> str:
    return json.dumps(openapi_document(), ensure_ascii=False)


# --- request context, access log and metrics (pure ASGI middleware) ------------------------


# Metric labels stay few: any other method (clients may send any token) counts as "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "DELETE", "PUT", "OPTIONS"})


def mask_key(key: str) -> str:
    """sk_live_abc... -> sk_live_****: the prefix names the kind of key, never the key."""
    return f"{key[:8]}****" if len(key) > 8 else "****"


class RequestContext:
    """Correlation id (checked, generated, echoed), the API key's hash and masked prefix, one JSON
    log line and the metrics of every request, and a JSON 500 for anything unexpected."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = Headers(scope=scope)
        state = scope.setdefault("state", {})
        given = headers.get("x-correlation-id") or ""
        correlation_id = given if 0 < len(given) <= MAX_CORRELATION_ID else str(uuid.uuid4())
        key = headers.get("x-api-key") or ""
        state.update(
            correlation_id=correlation_id,
            api_key_hash=hashlib.sha256(key.encode("latin-1")).hexdigest() if key else None,
            key_prefix=mask_key(key) if key else None,
        )
        response = {"status": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                response.update(status=message["status"], started=True)
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-correlation-id", correlation_id.encode("latin-1")),
                ]
            await send(message)

        try:
            if len(given) > MAX_CORRELATION_ID:
                too_long = f"X-Correlation-Id is longer than {MAX_CORRELATION_ID} characters"
                await invalid(too_long).response()(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error", extra={"fields": {"correlation_id": correlation_id}})
            if not response["started"]:
                failure = error_response(500, "internal_error", "an unexpected error occurred")
                await failure(scope, receive, send_with_id)
        await self.record(scope, int(response["status"]), time.perf_counter() - started)

    async def record(self, scope: Scope, status: int, seconds: float) -> None:
        state = scope["state"]
        route = scope.get("route")
        route_name = getattr(route, "path", None) or "unmatched"
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
        METRICS.observe(route_name, method, status, seconds)
        atp: AppState | None = state.get("atp")
        key_name = None
        if atp is not None:
            if state["api_key_hash"] and status != 503:
                key_name = await atp.key_names.name(atp.pool, state["api_key_hash"])
        fields = {
            "method": scope["method"],
            "route": route_name,
            "path": scope["path"],
            "status": status,
            "latency_ms": round(seconds * 1000, 2),
            "correlation_id": state["correlation_id"],
            "api_key_name": key_name,
            "api_key_prefix": state["key_prefix"],
            "client": (scope.get("client") or ("", 0))[0],
        }
        access_log.info("request", extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line; anything shaped like an API key is cut to its prefix."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= getattr(record, "fields", {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return KEY_IN_TEXT.sub(r"\1****", json.dumps(entry, ensure_ascii=False, default=str))


LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "app.JsonFormatter"}},
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
    # JsonFormatter writes none of them, and they cost about 40 us of the access log's 100 us
    # per request under load (bench/README.md, third pass).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    if not any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers):
        logging.config.dictConfig(LOG_CONFIG)


# --- the application -----------------------------------------------------------------------


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        return error_response(405, "method_not_allowed", message, exc.headers)
    if exc.status_code == 404:
        message = f"no route for {request.method} {request.url.path}"
        return error_response(404, "not_found", message, exc.headers)
    return error_response(exc.status_code, "invalid_request", str(exc.detail), exc.headers)


def routes() -> list[Route | Mount]:
    by_path: dict[str, dict[str, Operation]] = {}
    for op in OPERATIONS:
        by_path.setdefault(op.path, {})[op.method] = op
    api_routes: list[Route | Mount] = [
        Route(path, operation_endpoint(ops), methods=list(ops)) for path, ops in by_path.items()
    ]
    return [
        *api_routes,
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Mount("/docs/static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static"),
    ]


def create_app() -> Starlette:
    application = Starlette(
        routes=routes(),
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
    )
    application.router.redirect_slashes = False  # /users/ is not /users: a 404, not a redirect
    application.add_middleware(RequestContext)
    return application


app = create_app()


# --- command line: serve, run (make run), api-key (make api-key) ---------------------------


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class TcpConfig(uvicorn.Config):
    """uvicorn's configuration, with a listening socket that says it is TCP. The socket uvicorn
    binds for its workers has proto 0, and asyncio sets TCP_NODELAY only on IPPROTO_TCP sockets:
    without it every keep-alive response waits 40 ms (Nagle against delayed ACKs)."""

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return sock
        return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())


def supervisor(config: uvicorn.Config, sock: socket.socket) -> Multiprocess:
    # uvicorn up to 0.4x took the workers' target; later versions make it themselves.
    if "target" in inspect.signature(Multiprocess).parameters:
        target = uvicorn.Server(config).run
        return Multiprocess(config, target=target, sockets=[sock])  # type: ignore[call-arg]
    return Multiprocess(config, sockets=[sock])


def serve(host: str, port: int, workers: int) -> None:
    """uvicorn in this process (one worker) or as a supervisor of several."""
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="financeatp-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    config = TcpConfig(
        "app:app",
        host=host,
        port=port,
        workers=workers,
        log_config=LOG_CONFIG,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
        # Longer than clients keep idle connections (httpx 5 s, Node 4 s, nginx 60 s), so that
        # a client never sends a request on a connection the server is closing.
        timeout_keep_alive=75,
    )
    server = uvicorn.Server(config)
    try:
        if workers > 1:
            supervisor(config, config.bind_socket()).run()
        else:
            server.run(sockets=[config.bind_socket()])
            if not server.started:
                raise SystemExit(3)  # uvicorn's exit status for a failed startup
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def pg_user() -> pwd.struct_passwd | None:
    """initdb and postgres refuse to run as root: then they run as the postgres system user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise SystemExit("running as root and there is no 'postgres' user to run PostgreSQL")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def say(message: str) -> None:
    print(f"financeATP: {message}", file=sys.stderr, flush=True)


class Embedded:
    """The PostgreSQL cluster of `make run` when DATABASE_URL is unset: .pgdata/ in the checkout
    (data/ is PGDATA; pgpass holds the generated passwords), listening on 127.0.0.1 only."""

    DATABASE = "financeatp"

    def __init__(self, checkout: Path) -> None:
        self.user = pg_user()
        self.home = self.choose_home(checkout)
        self.data = self.home / "data"
        self.passfile = self.home / "pgpass"
        self.started = False
        self.port = 0

    def as_pg(self) -> list[str]:
        if self.user is None:
            return []
        uid, gid = self.user.pw_uid, self.user.pw_gid
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--"]

    def reachable(self, path: Path) -> bool:
        check = [*self.as_pg(), "test", "-x", str(path)]
        return subprocess.run(check, check=False).returncode == 0

    def choose_home(self, checkout: Path) -> Path:
        home = checkout / ".pgdata"
        if self.user is None or self.reachable(checkout):
            return home
        digest = hashlib.sha256(str(checkout).encode()).hexdigest()[:12]
        fallback = Path("/var/tmp") / f"financeatp-{digest}"  # noqa: S108 (private, 0700)
        # A shared directory: use it only if nobody else made that path first.
        if fallback.is_symlink() or (
            fallback.exists() and fallback.stat().st_uid not in (0, self.user.pw_uid)
        ):
            raise SystemExit(f"{fallback} exists and belongs to someone else: remove it")
        say(f"user {self.user.pw_name} cannot reach {checkout}: data directory is {fallback}")
        return fallback

    def run_pg(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.as_pg(), *command], check=False, capture_output=True, text=True
        )

    def url(self, user: str, database: str = DATABASE) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    @property
    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSFILE": str(self.passfile)}

    def initdb(self) -> None:
        say(f"first start: creating the database cluster in {self.data}")
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        passwords = {"postgres": secrets.token_urlsafe(24), "atp_app": secrets.token_urlsafe(24)}
        self.passfile.write_text(
            "".join(f"127.0.0.1:*:*:{user}:{pw}\n" for user, pw in passwords.items())
        )
        self.passfile.chmod(0o600)
        pwfile = self.home / "initdb.pw"
        pwfile.write_text(passwords["postgres"] + "\n")
        self.give_to_pg(self.home)
        result = self.run_pg(
            "initdb", "-D", str(self.data), "-U", "postgres", "--data-checksums", "-E", "UTF8",
            "--no-locale", "--lc-messages=C", "--auth=scram-sha-256", f"--pwfile={pwfile}",
        )  # fmt: skip
        pwfile.unlink()
        if result.returncode != 0:
            raise SystemExit(f"initdb failed:\n{result.stdout}{result.stderr}")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# financeATP (make run): local TCP only, durable writes.\n"
                "listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
                "fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n"
            )

    def give_to_pg(self, path: Path) -> None:
        if self.user is None:
            return
        for entry in [path, *path.rglob("*")]:
            os.chown(entry, self.user.pw_uid, self.user.pw_gid)

    def running_port(self) -> int | None:
        """The port of a postmaster already running on this data directory, if any."""
        if self.run_pg("pg_ctl", "status", "-D", str(self.data)).returncode != 0:
            return None
        lines = (self.data / "postmaster.pid").read_text().splitlines()
        return int(lines[3])

    def choose_port(self) -> int:
        stored = self.home / "port"
        configured = os.environ.get("PGPORT")
        if configured:
            return int(configured)
        if stored.exists() and port_is_free(int(stored.read_text())):
            return int(stored.read_text())
        return free_port()

    def start(self) -> None:
        self.port = self.choose_port()
        (self.home / "port").write_text(str(self.port))
        log_file = self.home / "postgresql.log"
        options = f"-p {self.port}"
        result = self.run_pg(
            "pg_ctl", "start", "-D", str(self.data), "-l", str(log_file), "-w", "-t", "60",
            "-o", options,
        )  # fmt: skip
        if result.returncode != 0:
            tail = log_file.read_text()[-2000:] if log_file.exists() else ""
            raise SystemExit(f"PostgreSQL did not start:\n{result.stdout}{result.stderr}{tail}")
        self.started = True
        say(f"PostgreSQL is running on 127.0.0.1:{self.port} (data: {self.data})")

    def stop(self) -> None:
        if not self.started:
            return
        result = self.run_pg("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w")
        self.started = False
        say("PostgreSQL stopped" if result.returncode == 0 else f"pg_ctl stop: {result.stderr}")

    def ensure_running(self) -> bool:
        """Starts the cluster (creating it first if needed); True if it was just created."""
        created = not self.initialized
        if created:
            self.initdb()
        port = self.running_port()
        if port is None:
            self.start()
        else:
            self.port = port
        return created

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url("postgres", "postgres"), autocommit=True,
                               passfile=str(self.passfile))  # fmt: skip

    def prepare_database(self) -> None:
        """Creates the database and sets atp_app's login password (from pgpass) after migrating."""
        with self.admin() as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [self.DATABASE]
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.DATABASE)))

    def set_app_password(self) -> None:
        password = self.password_literal("atp_app")
        with self.admin() as conn:
            conn.execute(sql.SQL("ALTER ROLE atp_app LOGIN PASSWORD {}").format(password))

    def password_literal(self, user: str) -> sql.Literal:
        for line in self.passfile.read_text().splitlines():
            if line.split(":")[3] == user:
                return sql.Literal(line.split(":", 4)[4])
        raise SystemExit(f"no password for {user} in {self.passfile}")


def migrate(database_url: str, env: Mapping[str, str]) -> None:
    say("applying migrations and sql/")
    command = ["make", "--no-print-directory", "migrate", f"DATABASE_URL={database_url}"]
    result = subprocess.run(command, cwd=ROOT, env=dict(env), check=False, capture_output=True)
    if result.returncode != 0:
        sys.stderr.buffer.write(result.stdout + result.stderr)
        raise SystemExit("make migrate failed")
    say("migrations applied")


def create_key(
    conn: psycopg.Connection[Any], name: str, permissions: list[str], rate: int, expires: str | None
) -> dict[str, Any]:
    row = conn.execute(
        "SELECT api.create_api_key(name => %s, permissions => %s, rate_limit_per_minute => %s,"
        " expires_at => %s)",
        [name, permissions, rate, expires],
    ).fetchone()
    assert row is not None
    return dict(row[0])


def announce_admin_key(embedded: Embedded) -> None:
    marker = embedded.home / "admin-key-issued"
    if marker.exists():
        return
    rate = int(os.environ.get("ADMIN_RATE_LIMIT", "10000"))
    with psycopg.connect(embedded.url("postgres"), passfile=str(embedded.passfile)) as conn:
        created = create_key(conn, "admin (make run)", ["admin"], rate, None)
        conn.commit()
    marker.touch()
    print(
        "\n  First start: an admin API key (shown once; it is not stored anywhere):\n\n"
        f"    X-API-Key: {created['key']}\n\n"
        "  More keys: make api-key NAME=nextjs PERMISSIONS=read,write\n",
        flush=True,
    )


@contextlib.contextmanager
def embedded_database(migrate_always: bool) -> Iterator[Embedded]:
    """The embedded cluster, running, migrated and with its database; stopped again on exit
    if it was not running before."""
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        raise SystemExit(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL 15+ "
            "(Debian: apt-get install postgresql-15), or set DATABASE_URL"
        )
    embedded = Embedded(ROOT)
    try:
        created = embedded.ensure_running()
        embedded.prepare_database()
        if created or migrate_always:
            migrate(embedded.url("postgres"), embedded.env())
        embedded.set_app_password()
        yield embedded
    finally:
        embedded.stop()


def command_run(args: argparse.Namespace) -> None:
    if os.environ.get("DATABASE_URL"):
        migrate(os.environ["DATABASE_URL"], os.environ)
        with contextlib.suppress(KeyboardInterrupt):
            serve(args.host, args.port, args.workers)
        return
    with embedded_database(migrate_always=True) as embedded:
        announce_admin_key(embedded)
        os.environ.update(DATABASE_URL=embedded.url("atp_app"), PGPASSFILE=str(embedded.passfile))
        say(f"serving http://{args.host}:{args.port} with {args.workers} worker(s); Ctrl-C stops")
        with contextlib.suppress(KeyboardInterrupt):
            serve(args.host, args.port, args.workers)


def command_migrate(args: argparse.Namespace) -> None:
    """`make migrate` without DATABASE_URL: the embedded database, started just for it."""
    with embedded_database(migrate_always=True):
        pass


def command_serve(args: argparse.Namespace) -> None:
    Settings.from_env()  # fail early, with the message, when DATABASE_URL is missing
    serve(args.host, args.port, args.workers)


def command_api_key(args: argparse.Namespace) -> None:
    permissions = [p.strip() for p in args.permissions.split(",") if p.strip()]
    if os.environ.get("DATABASE_URL"):
        with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
            created = create_key(conn, args.name, permissions, args.rate_limit, args.expires_at)
    else:
        with (
            embedded_database(migrate_always=False) as embedded,
            psycopg.connect(embedded.url("postgres"), passfile=str(embedded.passfile)) as conn,
        ):
            created = create_key(conn, args.name, permissions, args.rate_limit, args.expires_at)
    details = ", ".join(f"{k}={created[k]}" for k in ("id", "name", "permissions", "expires_at"))
    say(f"created API key ({details}, rate_limit_per_minute={created['rate_limit_per_minute']})")
    print(created["key"], flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="app.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler in (("run", command_run), ("serve", command_serve)):
        command = commands.add_parser(name)
        command.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1")
        command.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
        command.add_argument(
            "--workers", type=int, default=int(os.environ.get("WORKERS") or default_workers())
        )
        command.set_defaults(handler=handler)
    key = commands.add_parser("api-key")
    key.add_argument("--name", required=True)
    key.add_argument("--permissions", default="read")
    key.add_argument("--rate-limit", type=int, default=1000)
    key.add_argument("--expires-at", default=None, help="RFC 3339; never when absent")
    key.set_defaults(handler=command_api_key)
    commands.add_parser("migrate").set_defaults(handler=command_migrate)
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except psycopg.Error as exc:
        raise SystemExit(f"financeATP: {exc.diag.message_primary or exc}") from None


if __name__ == "__main__":
    main()
