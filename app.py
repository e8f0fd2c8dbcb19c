"""financeATP over HTTP: a thin Starlette layer in front of the `api` schema.

It authenticates (the SHA-256 of X-API-Key, never the key itself, goes to PostgreSQL), maps the
path, query, headers and body of a request to the named arguments of ONE `api` function call, and
maps SQLSTATE codes to HTTP statuses by rule. Every rule about money lives in PostgreSQL (sql/).

Read top to bottom: settings, the SQLSTATE rule, reading a request, the one function call, the
process's state and lifespan, the routes. Everything else is in financeatp/: the error answers
(errors.py), how a JSON value becomes an argument's text (values.py), the call itself at the
protocol level (pgcall.py), the requests' queue for the pool's connections (gate.py), the
operations table, the OpenAPI document, logs and metrics, Starlette paths (routing.py), the
scheduled jobs, the embedded PostgreSQL, uvicorn and its HTTP protocol (serving.py, protocol.py),
and the commands `python app.py run|serve|migrate|api-key|stop` (commands.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from prometheus_client import CONTENT_TYPE_LATEST
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from financeatp.errors import JSON, ApiError, error_response, invalid, unavailable
from financeatp.gate import Gate
from financeatp.maintenance import run_maintenance
from financeatp.observe import (
    ACCESS_LOG,
    METRICS,
    KeyNames,
    RequestContext,
    log,
    publish_metrics,
    setup_logging,
)
from financeatp.openapi import DOCS_PAGE, openapi_text
from financeatp.operations import OPERATIONS, ErrorCode, Operation
from financeatp.pgcall import Connection, Row, Statement, fetch_row
from financeatp.routing import routing_path
from financeatp.serving import stop_with_supervisor
from financeatp.values import (
    field_value,
    parse_object,
    query_value,
    read_body,
    refuse_body,
    uuid_text,
)

# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What the server reads from its environment (README.md, "Configuration")."""

    database_url: str
    db_role: str = "atp_app"
    pool_min_size: int = 2
    pool_max_size: int = 4
    pool_timeout: float = 5.0
    max_body_bytes: int = 256 * 1024  # a 1,000-leg mint batch is about 70 KB
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


# --- the SQLSTATE rule -----------------------------------------------------------------------


# For an L code that api.error_codes() does not list: before it could be read (the database
# away at startup), or one raised without its row. The status is in the code itself; 409 has
# no name of its own in the contract, so its fallback is the generic "conflict".
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
    """SQLSTATE -> (HTTP status, error name), from api.error_codes(): read at startup, by every
    /readyz (its check that the database answers), and, after a start without the database, by
    the first error and by /openapi.json."""

    def __init__(self) -> None:
        self.rows: tuple[ErrorCode, ...] = ()
        self.codes: dict[str, tuple[int, str]] = {}

    async def load(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cur = await conn.execute(
            "SELECT sqlstate, http_status, error, meaning FROM api.error_codes()"
        )
        self.rows = tuple(ErrorCode(*row) for row in await cur.fetchall())
        self.codes = {
            row.sqlstate: (row.http_status, row.error) for row in self.rows if row.sqlstate
        }

    def lookup(self, sqlstate: str) -> tuple[int, str] | None:
        if sqlstate in self.codes:
            return self.codes[sqlstate]
        match = API_SQLSTATE.fullmatch(sqlstate)
        if match is None:
            return None
        status = int(match.group(1))
        return status, FALLBACK_ERROR_NAMES.get(status, "error")


def detail_fields(exc: psycopg.Error) -> dict[str, Any]:
    """The fields of an api error's DETAIL when it is a JSON object (L4291: retry_after; a
    batch's failing leg: index), which the error body carries beside error and message."""
    try:
        fields = json.loads(exc.diag.message_detail or "{}")
    except ValueError:
        return {}
    if not isinstance(fields, dict):
        return {}
    return {key: value for key, value in fields.items() if key not in ("error", "message")}


def retry_after(fields: Mapping[str, Any]) -> dict[str, str]:
    """L4291 carries {"retry_after": seconds} in its DETAIL."""
    try:
        seconds = int(fields["retry_after"])
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
        fields = detail_fields(exc)
        headers = retry_after(fields) if status == 429 else None
        return ApiError(status, name, message, headers, fields)
    if state.startswith("22") or (not state and isinstance(exc, psycopg.DataError)):
        return invalid(message)  # data exception: text that is not a number, a date, ...
    if state in ("40001", "40P01"):
        return unavailable("the database asked to retry this request")
    if state[:2] in ("08", "53", "57") or (not state and isinstance(exc, psycopg.OperationalError)):
        return unavailable("the database is not available")
    return None


# --- reading a request ---------------------------------------------------------------------


def body_arguments(op: Operation, body: Mapping[str, Any]) -> dict[str, str | None]:
    fields = {field.name: field for field in op.body or ()}
    unknown = sorted(set(body) - set(fields))
    if unknown:
        allowed = f"allowed: {', '.join(fields)}" if fields else "this request takes no fields"
        raise invalid(f"unknown field(s): {', '.join(unknown)}; {allowed}")
    # Every field goes to the function, an absent one as NULL: the database says what is required.
    return {
        name: field_value(field, body[name]) if name in body else None
        for name, field in fields.items()
    }


def query_arguments(op: Operation, request: Request) -> dict[str, str]:
    if not request.scope.get("query_string"):
        return {}
    allowed = {field.name: field for field in op.query}
    given = request.query_params.multi_items()
    args: dict[str, str] = {}
    for name, value in given:
        if name not in allowed:
            raise invalid(f"unknown query parameter {name!r}")
        if name in args:
            raise invalid(f"query parameter {name!r} is given more than once")
        args[name] = query_value(allowed[name], value)
    return args


def path_arguments(op: Operation, request: Request) -> dict[str, str]:
    return {name: uuid_text(request.path_params[name], name) for name in op.path_params}


# Made once: json.dumps with options builds a new encoder on every call.
CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_hash(request: Request, body: Mapping[str, Any], acting_user: str | None) -> str:
    """The same method, path, parsed body and acting user make the same request, whatever the
    JSON's spacing or key order; stored with the idempotency key to tell replays from conflicts."""
    canonical = CANONICAL_JSON.encode(body)
    # The path as request.url.path gives it, without building the URL (its ids are checked UUIDs).
    path = request.scope.get("root_path", "") + request.scope["path"]
    text = "\n".join((request.method, path, canonical, acting_user or ""))
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
    return inet_text(request.client.host if request.client else "")


@functools.lru_cache(maxsize=1024)
def inet_text(host: str) -> str | None:
    """The client's address as PostgreSQL's inet parses it, or None (a Unix socket's peer)."""
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
    args: dict[str, str | None] = dict(context_arguments(request))  # no key: 401 before anything
    if request.state.repeated_header:  # Idempotency-Key or X-Request-User-Id (observe.py)
        raise invalid(f"the {request.state.repeated_header} header is given more than once")
    if op.writes:
        args["idempotency_key"] = idempotency_key(request)
    args |= path_arguments(op, request)
    args |= query_arguments(op, request)
    if op.body is not None:
        body = parse_object(await read_body(request, limit), op.body_required)
        args |= body_arguments(op, body)
    else:
        refuse_body(request)
        body = {}
    if op.writes:
        args["request_hash"] = request_hash(
            request, same_request(op, body), args["request_user_id"]
        )
    return args


def same_request(op: Operation, body: dict[str, Any]) -> dict[str, Any]:
    """The body as its request is compared for idempotency: a field given as null that the
    function receives as if it were absent (NULL) is left out, so a retry that writes it one way
    or the other is a replay, not a conflict."""
    if None not in body.values():
        return body
    nulls_mean = {field.name: field.null_as for field in op.body or ()}
    return {k: v for k, v in body.items() if v is not None or nulls_mean.get(k) is not None}


# --- calling the database ------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def call_statement(function: str, names: tuple[str, ...], writes: bool) -> Statement:
    """SELECT api.<function>(name => $1, ...): values go as untyped text, so PostgreSQL
    parses each by the function's signature (an amount as numeric, an id as uuid, ...).
    Rendered once per function and set of arguments, and prepared once per connection."""
    args = sql.SQL(", ").join(
        sql.SQL("{} => {}").format(sql.Identifier(name), sql.SQL(f"${number}"))
        for number, name in enumerate(names, 1)
    )
    function_name = sql.Identifier("api", function)
    if writes:
        statement = sql.SQL("SELECT status, body::text, replayed FROM {}({})")
    else:
        statement = sql.SQL("SELECT {}({})::text")
    return Statement.of(statement.format(function_name, args).as_bytes(None))


JSON_HEADER = (b"content-type", JSON.encode())


class Answer:
    """A success, its body the bytes PostgreSQL sent (UTF-8: see make_pool): the two ASGI
    messages, with their three headers written here rather than normalised by a Starlette
    Response (bench/README.md, fifteenth pass)."""

    __slots__ = ("body", "replayed", "status")

    def __init__(self, status: int, body: bytes | None, replayed: bool = False) -> None:
        self.status = status
        self.body = body or b""
        self.replayed = replayed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"%d" % len(self.body)), JSON_HEADER]
        if self.replayed:
            headers.append((b"idempotent-replayed", b"true"))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


async def call(state: AppState, op: Operation, args: dict[str, str | None]) -> Answer:
    names = tuple(sorted(args))
    statement = call_statement(op.function, names, op.writes)
    params = [None if (value := args[name]) is None else value.encode() for name in names]
    row = await fetch_one(state, statement, params)
    if op.writes:
        status, body, replayed = row
        if status is None:
            raise RuntimeError(f"api.{op.function} answered without a status")  # a bug: a 500
        return Answer(int(status), body, replayed == b"t")
    return Answer(op.success, row[0])


class DeadConnectionError(Exception):
    """The connection broke under the statement (e.g. the server restarted since it was opened)."""


async def execute_once(state: AppState, statement: Statement, params: list[bytes | None]) -> Row:
    # A turn first (gate.py), then getconn/putconn rather than pool.connection(): the connections
    # are in autocommit, and the context manager's commit on exit cost 5% of a balance read's
    # server CPU (bench/README.md).
    timeout = state.settings.pool_timeout
    waited = await state.gate.enter(timeout)
    try:
        conn = await state.pool.getconn(timeout - waited)
        try:
            row = await fetch_row(conn, statement, params)
        except psycopg.Error as exc:
            if conn.broken:
                raise DeadConnectionError from exc
            raise
        finally:
            await state.pool.putconn(conn)
    finally:
        state.gate.leave()
    if row is None:
        raise RuntimeError(f"{statement.text!r} returned no row")
    return row


async def fetch_one(state: AppState, statement: Statement, params: list[bytes | None]) -> Row:
    # A connection that died while idle in the pool fails on first use: try once more on a new
    # one. Safe for writes too: the idempotency key makes a second execution a replay.
    for attempt in (1, 2):
        try:
            return await execute_once(state, statement, params)
        except DeadConnectionError as dead:
            if attempt == 1:
                await state.pool.check()  # the other idle connections died with it, most likely
                continue
            raise unavailable("the database connection was lost") from dead
        except (PoolTimeout, TimeoutError):
            raise unavailable("no database connection is available") from None
        except psycopg.Error as exc:
            if not state.codes.codes and (exc.sqlstate or "").startswith("L"):
                await load_error_codes(state, timeout=1.0)  # the database was down at startup
            error = translate(exc, state.codes)
            if error is None:
                raise  # a bug: RequestContext logs it and answers 500
            raise error from exc
    raise AssertionError("unreachable")


async def refusal_of_key(state: AppState, request: Request, op: Operation) -> ApiError | None:
    """A request refused before the call (its shape) is first judged by its key, as the call
    would have judged it: an unknown key is 401, a missing permission 403 and a key over its
    rate limit 429, whatever else is wrong; and while the database that would judge it is away,
    503. Only refused requests pay this second call."""
    key_hash = request.state.api_key_hash
    if key_hash is None:
        return None  # no key: context_arguments answered 401 already
    statement = call_statement("authenticate", ("api_key_hash", "permission"), False)
    try:
        await fetch_one(state, statement, [key_hash.encode(), op.permission.encode()])
    except ApiError as error:
        return error if error.status in (401, 403, 429, 503) else None
    return None


class OperationEndpoint:
    """The operations of one path, by method: an ASGI application, which Starlette calls as it
    is, where it would wrap an endpoint function in one more layer per request."""

    def __init__(self, operations: Mapping[str, Operation]) -> None:
        self.operations = operations

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        op = self.operations["GET" if request.method == "HEAD" else request.method]
        state: AppState = request.state.atp
        scope["state"]["keyed"] = request.state.api_key_hash is not None
        response: ASGIApp
        try:
            try:
                args = await arguments(request, op, state.settings.max_body_bytes)
            except ApiError as error:
                raise await refusal_of_key(state, request, op) or error from None
            response = await call(state, op, args)
        except ApiError as error:
            response = error.response()
        except ClientDisconnect:
            # Gone before its body arrived: nothing was called; 499 (nginx's "client closed
            # request") is for the log only, nobody receives it.
            response = Response(status_code=499)
        await response(scope, receive, send)


# --- state of one server process -----------------------------------------------------------


@dataclass
class AppState:
    settings: Settings
    pool: AsyncConnectionPool[Any]
    gate: Gate  # the requests' queue for the pool's connections
    codes: ErrorCodes
    key_names: KeyNames


async def configure_connection(role: str, conn: psycopg.AsyncConnection[Any]) -> None:
    # The login may hold more than atp_app (the owner's powers, when `make run` is given a
    # DATABASE_URL): act as the application role, which may only execute api functions, and may
    # not call them without a key. (The embedded setup logs in as atp_app itself.)
    if role:
        await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    # The functions are written for read committed (each statement sees what committed before
    # it: a queued duplicate finds the stored response); a database or role default of
    # repeatable read or serializable would turn concurrent transfers into retries (503s).
    await conn.execute("SET default_transaction_isolation = 'read committed'")


def make_pool(settings: Settings) -> AsyncConnectionPool[Any]:
    return AsyncConnectionPool(
        settings.database_url,
        connection_class=Connection,  # keeps its socket's reader between calls (pgcall.py)
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout,
        # UTF-8 whatever the database's encoding: response bodies are PostgreSQL's bytes.
        kwargs={"autocommit": True, "application_name": "financeatp", "client_encoding": "utf8"},
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


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    setup_logging()
    settings = Settings.from_env()
    pool = make_pool(settings)
    await pool.open(wait=False)
    gate = Gate(settings.pool_max_size)
    state = AppState(settings, pool, gate, ErrorCodes(), KeyNames(settings.key_name_ttl))
    await load_error_codes(state, timeout=settings.pool_timeout)
    tasks = [
        asyncio.create_task(publish_metrics(pool, gate)),
        asyncio.create_task(stop_with_supervisor()),
    ]
    if settings.maintenance_interval > 0:
        tasks.append(asyncio.create_task(run_maintenance(pool, settings.maintenance_interval)))
    try:
        yield {"atp": state}
    finally:
        for task in tasks:
            task.cancel()
        await pool.close()
        ACCESS_LOG.flush()
        with contextlib.suppress(Exception):
            METRICS.process_ended()


# --- health, metrics, documentation --------------------------------------------------------


async def healthz(request: Request) -> Response:
    return Response('{"status":"ok"}', media_type=JSON)


async def readyz(request: Request) -> Response:
    state: AppState = request.state.atp
    if await load_error_codes(state, timeout=2.0):
        return Response('{"status":"ready"}', media_type=JSON)
    return unavailable("the database is not reachable").response()


async def metrics(request: Request) -> Response:
    state: AppState = request.state.atp
    METRICS.observe_pool(state.pool, state.gate)
    return Response(METRICS.exposition(), media_type=CONTENT_TYPE_LATEST)


async def openapi_json(request: Request) -> Response:
    state: AppState = request.state.atp
    if not state.codes.rows:
        await load_error_codes(state, timeout=1.0)  # the database was down at startup
    return Response(openapi_text(state.codes.rows), media_type=JSON)


async def docs(request: Request) -> Response:
    return HTMLResponse(DOCS_PAGE)


# --- the application -----------------------------------------------------------------------


def http_error(request: Request, exc: HTTPException) -> Response:
    """The router's own answers (no route, a method the route does not take) as the contract's."""
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        return error_response(405, "method_not_allowed", message, exc.headers)
    if exc.status_code == 404:
        message = f"no route for {request.method} {request.url.path}"
        return error_response(404, "not_found", message, exc.headers)
    return error_response(exc.status_code, "invalid_request", str(exc.detail), exc.headers)


async def key_name(state: dict[str, Any], status: int) -> str | None:
    """The API key's name for the access log: only for a key an API route has judged and not
    refused as unknown (401), so that made-up keys cost no lookup (on /healthz, say), and
    none while the database is away."""
    atp: AppState | None = state.get("atp")
    if atp is None or not state.get("keyed") or status in (401, 503):
        return None
    return await atp.key_names.name(atp.pool, state["api_key_hash"])


def routes() -> list[Route | Mount]:
    by_path: dict[str, dict[str, Operation]] = {}
    for op in OPERATIONS:
        by_path.setdefault(op.path, {})[op.method] = op
    paths = list(by_path)
    api_routes: list[Route | Mount] = []
    for path, ops in by_path.items():
        route = Route(routing_path(path, paths), OperationEndpoint(ops), methods=list(ops))
        route.path = path  # the contract's path in logs and metrics; matching keeps the convertor
        api_routes.append(route)
    return [
        *api_routes,
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Mount("/docs/static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static"),
    ]


class Application(Starlette):
    """Starlette with one layer around its router: RequestContext. It answers anything
    unexpected with the contract's JSON 500, and `route` gives the router's 404 and 405 the
    contract's error body, in place of Starlette's two exception layers, which cost a frame per
    request and per message sent (bench/README.md, eleventh pass)."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestContext(
            self.route, error=error_response, key_name=key_name, route_of=self.route_of
        )

    def route_of(self, scope: Scope) -> BaseRoute | None:
        """The route a request's path and method would reach, if any (Starlette's own order)."""
        partial = None
        for route in self.router.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route
            if match is Match.PARTIAL and partial is None:
                partial = route
        return partial

    async def route(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.router(scope, receive, send)
        except HTTPException as exc:
            response = http_error(Request(scope), exc)
            await response(scope, receive, send)


def create_app() -> Starlette:
    application = Application(routes=routes(), lifespan=lifespan)
    application.router.redirect_slashes = False  # /users/ is not /users: a 404, not a redirect
    return application


app = create_app()


if __name__ == "__main__":
    from financeatp.commands import main

    main()
