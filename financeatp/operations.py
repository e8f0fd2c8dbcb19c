"""The contract's operations: one declarative row per route, from which app.py derives the
routing and the arguments of the one api function call, and openapi.py the document. A new
route is a new row here (and its response schema in openapi.py when it answers a new shape).
Also the contract's error table as the HTTP layer sees it: api.error_codes() holds the database's
errors; HTTP_ERRORS the few that the HTTP layer answers without calling it."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

MAX_CORRELATION_ID = 128  # characters of X-Correlation-Id


class ErrorCode(NamedTuple):
    """A row of api.error_codes(), or one of HTTP_ERRORS (sqlstate None)."""

    sqlstate: str | None
    http_status: int
    error: str
    meaning: str


HTTP_ERRORS: tuple[ErrorCode, ...] = (
    ErrorCode(None, 400, "invalid_request", "Or the request's shape is wrong: malformed JSON, "
              "a number where an amount string belongs, an amount not in plain decimal notation, "
              "a time that is not RFC 3339, an unknown field, a malformed UUID, a missing "
              "Idempotency-Key header, a chunked body, a body on a request that takes none, a "
              "request that cannot be parsed as HTTP/1.x, a request line and headers over 16 "
              "KB (the connection is closed). A "
              "request with an unknown key is 401, with a key that lacks the permission 403, and "
              "with a key over its rate limit 429, before its shape is judged."),
    ErrorCode(None, 404, "not_found", "Or there is no such route."),
    ErrorCode(None, 408, "request_timeout", "The request line and headers did not all arrive "
              "within 60 seconds of the connection or of the request's first byte; the "
              "connection is closed."),
    ErrorCode(None, 405, "method_not_allowed", "The route exists, the method does not."),
    ErrorCode(None, 413, "payload_too_large", "The body is larger than MAX_BODY_BYTES."),
    ErrorCode(None, 503, "unavailable", "The database cannot be reached, every connection is "
              "busy, or the server holds as many connections and requests as it takes; retry "
              "after Retry-After seconds."),
)  # fmt: skip


@dataclass(frozen=True)
class Field:
    """A body or query field: how it is checked for shape here, and how OpenAPI shows it.
    Patterns and lengths are documentation of the database's rules; only the database enforces them.
    """

    name: str
    kind: str  # uuid | amount | text | integer | timestamp | array (of objects of items' fields)
    required: bool = False
    max_length: int | None = None
    pattern: str | None = None
    minimum: int | None = None
    maximum: int | None = None
    bits: int = 32  # an integer's parameter: integer (32) or bigint (64)
    description: str = ""
    example: Any = None
    items: tuple[Field, ...] = ()  # an array's objects: their fields
    max_items: int | None = None
    # What an explicit JSON null stands for, where it differs from leaving the field out: a PATCH
    # with "display_name": null clears the name (JSON Merge Patch, RFC 7396), as "" does.
    null_as: str | None = None


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
    description="null or an empty string clears it",
    null_as="",
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
                bits=64,
                description="refuse with 409 version_conflict unless the user is at this version",
            ),
        ),
        needs_one_of=("username", "email", "display_name"),
        description="A field that is absent keeps its value, as does a null username or email "
        "(they cannot be removed); a null or empty display_name removes it. Give at least one.",
    ),
    Operation(
        "DELETE",
        "/users/{user_id}",
        "delete_user",
        "write",
        "Delete a user (logically; only with a zero balance)",
        "DeletedUser",
        description="History stays; username and email become free again. "
        "409 balance_not_zero while the wallet holds ATP, 409 pending_holds while a hold "
        "of the user (as sender or receiver) is pending.",
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
                description="RFC 3339, not in the future (microseconds; finer fractions are cut "
                "off); the posted balance at that moment, replayed from the events",
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
    # Beside GET /transfers/{transfer_id}, which never takes "batch" for an id (routing.py).
    Operation(
        "POST",
        "/transfers/batch",
        "transfer_batch",
        "write",
        "Move ATP from one sender to 1 to 100 receivers, all or nothing",
        "TransferBatch",
        success=201,
        can_404=True,
        needs_acting_user=True,
        body=(
            user_ref("from_user_id", "the sender: must equal X-Request-User-Id"),
            Field(
                "transfers",
                "array",
                required=True,
                max_items=100,
                description="the legs, each a transfer of its own; a leg to SYSTEM_FEE "
                "(00000000-0000-0000-0000-000000000002) credits the fee account",
                items=(
                    user_ref("to_user_id"),
                    AMOUNT,
                    note("memo", "shown in both users' history"),
                ),
            ),
        ),
        description="X-Request-User-Id must equal from_user_id (else 403 unauthorized_transfer). "
        "One transaction: a failing leg fails the batch, and the error body's index names it "
        "(0-based).",
    ),
    Operation(
        "POST",
        "/holds",
        "create_hold",
        "write",
        "Reserve ATP for another user (a two-phase transfer)",
        "Hold",
        success=201,
        needs_acting_user=True,
        body=(
            user_ref("from_user_id", "the sender: must equal X-Request-User-Id"),
            user_ref("to_user_id"),
            AMOUNT,
            note("memo", "shown in both users' history once captured"),
            Field(
                "expires_in_seconds",
                "integer",
                minimum=1,
                maximum=2592000,
                description="seconds until the hold expires (3600)",
            ),
        ),
        description="The sender's available balance falls by the amount; the posted balance does "
        "not move. X-Request-User-Id must equal from_user_id (else 403 unauthorized_transfer).",
    ),
    Operation(
        "POST",
        "/holds/{hold_id}/capture",
        "capture_hold",
        "write",
        "Capture a pending hold: move all or part of it, release the rest",
        "Hold",
        needs_acting_user=True,
        body=(
            dataclasses.replace(
                AMOUNT, required=False, description="at most the held amount (all of it)"
            ),
        ),
        body_required=False,
        description="X-Request-User-Id must be the sender or the receiver. The captured amount "
        "moves as a transfer (transfer_id); 409 hold_not_pending once captured, voided or expired.",
    ),
    Operation(
        "POST",
        "/holds/{hold_id}/void",
        "void_hold",
        "write",
        "Void a pending hold: release all it reserves",
        "Hold",
        needs_acting_user=True,
        body=(),
        body_required=False,
        description="X-Request-User-Id must be the sender or the receiver; allowed on a frozen "
        "wallet. 409 hold_not_pending once captured, voided or expired.",
    ),
    Operation("GET", "/holds/{hold_id}", "get_hold", "read", "One hold", "Hold"),
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
        "GET", "/transfers/{transfer_id}", "get_transfer", "read", "One transfer", "Transfer"
    ),
    Operation(
        "POST",
        "/transfers/{transfer_id}/refund",
        "refund_transfer",
        "write",
        "Give back all or part of a transfer, from its receiver to its sender",
        "Refund",
        success=201,
        needs_acting_user=True,
        body=(
            dataclasses.replace(
                AMOUNT,
                required=False,
                description="ATP as a JSON string; default: all that is not refunded yet",
            ),
            note("reason", "shown in both users' history"),
        ),
        body_required=False,
        description="X-Request-User-Id must be the transfer's receiver (else 403 "
        "unauthorized_transfer). Refunds of one transfer never add up to more than it: 400 "
        "refund_exceeds_transfer. History kinds refund_out / refund_in, with transfer_id.",
    ),
    Operation(
        "POST",
        "/admin/mint/batch",
        "mint_batch",
        "admin",
        "Issue new ATP into 1 to 1,000 wallets, all or nothing",
        "MintBatch",
        success=201,
        body=(
            Field(
                "mints",
                "array",
                required=True,
                max_items=1000,
                description="the legs, each a mint of its own",
                items=(user_ref("to_user_id"), AMOUNT),
            ),
            note("reason", "why, for the audit log (one audit row holds the whole batch)"),
        ),
        description="One transaction: a failing leg fails the batch, and the error body's index "
        "names it (0-based).",
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
