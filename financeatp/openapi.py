"""The OpenAPI 3 document of /openapi.json, derived from the operations table and the error
table: its error responses describe every code of api.error_codes() (read from the database at
startup) and of HTTP_ERRORS, so that a code the database adds is documented without an edit."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterable, Mapping
from typing import Any

from financeatp.operations import (
    HTTP_ERRORS,
    MAX_CORRELATION_ID,
    OPERATIONS,
    ErrorCode,
    Field,
    Operation,
)

VERSION = "0.1.0"
JSON = "application/json"
UUID_SCHEMA = {"type": "string", "format": "uuid"}
TIME_SCHEMA = {"type": "string", "format": "date-time", "example": "2026-01-01T15:46:00.000000Z"}
ATP_SCHEMA = {"type": "string", "pattern": r"^[0-9]+\.[0-9]{8}$", "example": "100.50000000"}


def nullable(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def obj(properties: Mapping[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    required = [name for name in properties if name not in optional]
    return {"type": "object", "properties": dict(properties), "required": required}


TRANSFER = obj(
    {
        "transfer_id": UUID_SCHEMA,
        "status": {"type": "string", "enum": ["completed"]},
        "from_user_id": UUID_SCHEMA,
        "to_user_id": UUID_SCHEMA,
        "amount": ATP_SCHEMA,
        "memo": nullable({"type": "string"}),
        "created_at": TIME_SCHEMA,
        "refunded_amount": {**ATP_SCHEMA, "description": "GET only: what refunds gave back"},
    },
    optional=("refunded_amount",),
)
MINT = obj(
    {
        "mint_id": UUID_SCHEMA,
        "status": {"type": "string", "enum": ["completed"]},
        "to_user_id": UUID_SCHEMA,
        "amount": ATP_SCHEMA,
        "reason": nullable({"type": "string"}),
        "created_at": TIME_SCHEMA,
    }
)

RESPONSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": obj(
        {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "index": {
                "type": "integer",
                "description": "a batch's failing leg (0-based), when one leg failed it",
            },
            "retry_after": {"type": "integer", "description": "with 429: as Retry-After"},
        },
        optional=("index", "retry_after"),
    ),
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
            "available": {
                **ATP_SCHEMA,
                "description": "the balance less what pending holds reserve; only without as_of",
            },
            "held": {**ATP_SCHEMA, "description": "what pending holds reserve; only without as_of"},
            "is_frozen": {"type": "boolean", "description": "only without as_of"},
            "as_of": {**TIME_SCHEMA, "description": "only with as_of"},
            "updated_at": TIME_SCHEMA,
        },
        optional=("available", "held", "is_frozen", "as_of"),
    ),
    "History": obj(
        {
            "user_id": UUID_SCHEMA,
            "items": {
                "type": "array",
                "items": obj(
                    {
                        "id": {
                            **UUID_SCHEMA,
                            "description": "the transfer, mint, burn or refund id",
                        },
                        "kind": {
                            "type": "string",
                            "enum": [
                                "mint",
                                "burn",
                                "transfer_in",
                                "transfer_out",
                                "refund_in",
                                "refund_out",
                            ],
                        },
                        "amount": ATP_SCHEMA,
                        "counterparty": nullable(UUID_SCHEMA),
                        "memo": nullable({"type": "string"}),
                        "balance_after": ATP_SCHEMA,
                        "created_at": TIME_SCHEMA,
                        "hold_id": {**UUID_SCHEMA, "description": "a captured hold's transfer"},
                        "transfer_id": {
                            **UUID_SCHEMA,
                            "description": "refunds only: the transfer given back",
                        },
                    },
                    optional=("hold_id", "transfer_id"),
                ),
            },
            "next_cursor": nullable({"type": "string", "description": "null on the last page"}),
        }
    ),
    "Transfer": TRANSFER,
    "Refund": obj(
        {
            "refund_id": UUID_SCHEMA,
            "status": {"type": "string", "enum": ["completed"]},
            "transfer_id": UUID_SCHEMA,
            "from_user_id": {**UUID_SCHEMA, "description": "the transfer's receiver"},
            "to_user_id": {**UUID_SCHEMA, "description": "the transfer's sender"},
            "amount": ATP_SCHEMA,
            "reason": nullable({"type": "string"}),
            "created_at": TIME_SCHEMA,
        }
    ),
    "Hold": obj(
        {
            "hold_id": UUID_SCHEMA,
            "status": {"type": "string", "enum": ["pending", "captured", "voided", "expired"]},
            "from_user_id": UUID_SCHEMA,
            "to_user_id": UUID_SCHEMA,
            "amount": ATP_SCHEMA,
            "captured_amount": ATP_SCHEMA,
            "memo": nullable({"type": "string"}),
            "expires_at": TIME_SCHEMA,
            "transfer_id": nullable({**UUID_SCHEMA, "description": "when captured"}),
            "created_at": TIME_SCHEMA,
            "settled_at": nullable(TIME_SCHEMA),
            "version": {"type": "integer"},
        }
    ),
    "TransferBatch": obj(
        {
            "batch_id": UUID_SCHEMA,
            "from_user_id": UUID_SCHEMA,
            "amount": {**ATP_SCHEMA, "description": "the sum of the legs"},
            "transfers": {"type": "array", "items": TRANSFER},
            "created_at": TIME_SCHEMA,
        }
    ),
    "MintBatch": obj(
        {
            "batch_id": UUID_SCHEMA,
            "amount": {**ATP_SCHEMA, "description": "the sum of the legs"},
            "reason": nullable({"type": "string"}),
            "mints": {"type": "array", "items": MINT},
            "created_at": TIME_SCHEMA,
        }
    ),
    "Mint": MINT,
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


def error_descriptions(codes: Iterable[ErrorCode]) -> dict[int, str]:
    """Per HTTP status, every error code answered with it and what it means."""
    meanings: dict[int, dict[str, list[str]]] = {}
    for code in codes:
        meanings.setdefault(code.http_status, {}).setdefault(code.error, []).append(code.meaning)
    return {
        status: "; ".join(f"{error}: {' '.join(texts)}" for error, texts in by_error.items())
        for status, by_error in sorted(meanings.items())
    }


def error_schema(codes: Iterable[ErrorCode]) -> dict[str, Any]:
    """The error body, its `error` one of the codes: a typed client can switch over them."""
    schema = copy.deepcopy(RESPONSE_SCHEMAS["Error"])
    names = sorted({code.error for code in codes})
    schema["properties"]["error"] = {"type": "string", "enum": names}
    return schema


def error_responses(codes: Iterable[ErrorCode]) -> dict[str, Any]:
    responses = {}
    for status, description in error_descriptions(codes).items():
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
    if field.kind == "array":
        return {
            "type": "array",
            "minItems": 1,
            "maxItems": field.max_items,
            "description": field.description,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {item.name: field_schema(item) for item in field.items},
                "required": [item.name for item in field.items if item.required],
            },
        }
    base: dict[str, Any] = {"type": "integer" if field.kind == "integer" else "string"}
    if field.null_as is not None:
        base["nullable"] = True
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
        by_name = {field.name: field for field in fields}
        # At least one of them, given as a value; a field whose null means something (a PATCH's
        # display_name: remove it) counts with its null too.
        schema["anyOf"] = [
            {
                "required": [name],
                "properties": {
                    name: {"type": "string", "nullable": by_name[name].null_as is not None}
                },
            }
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
    acting = "the person acting (from the front end); recorded with the events and audit rows"
    if op.needs_acting_user:
        acting += "; without it, or naming a user who may not act here, 403 unauthorized_transfer"
    params.append(header_parameter("X-Request-User-Id", op.needs_acting_user, UUID_SCHEMA, acting))
    params.append({"$ref": "#/components/parameters/CorrelationId"})
    return params


# What a created resource's id leads to (OpenAPI links: documentation, and stateful tests).
LINKS = {
    "create_user": (
        "user_id",
        ("get_user", "update_user", "get_balance", "get_history", "freeze_wallet",
         "unfreeze_wallet", "delete_user"),
    ),
    "transfer": ("transfer_id", ("get_transfer", "refund_transfer")),
    "create_hold": ("hold_id", ("get_hold", "capture_hold", "void_hold")),
}  # fmt: skip


def operation_responses(op: Operation, documented: set[int]) -> dict[str, Any]:
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
    errors = {
        str(s): {"$ref": f"#/components/responses/E{s}"}
        for s in sorted(statuses)
        if s in documented
    }
    return {str(op.success): success, **errors}


def operation_document(op: Operation, documented: set[int]) -> dict[str, Any]:
    document: dict[str, Any] = {
        "operationId": op.function,
        "summary": op.summary,
        "description": f"Needs the {op.permission} permission. Calls api.{op.function}. "
        + op.description,
        "tags": [op.tag],
        "security": [{"ApiKey": []}],
        "parameters": parameters(op),
        "responses": operation_responses(op, documented),
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


def openapi_document(database_errors: Iterable[ErrorCode]) -> dict[str, Any]:
    """The whole document; its errors are those of api.error_codes() and HTTP_ERRORS."""
    errors = [*database_errors, *HTTP_ERRORS]
    documented = {code.http_status for code in errors}
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = operation_document(op, documented)
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
            "schemas": RESPONSE_SCHEMAS | {"Error": error_schema(errors)},
            "responses": error_responses(errors),
            "headers": HEADER_DOCS,
            "parameters": {
                "CorrelationId": header_parameter(
                    "X-Correlation-Id",
                    False,
                    {"type": "string", "maxLength": MAX_CORRELATION_ID},
                    "UTF-8 text of up to 128 characters, echoed and stored with events and "
                    "audit rows",
                )
            },
        },
    }


@functools.lru_cache(maxsize=4)
def openapi_text(database_errors: tuple[ErrorCode, ...]) -> str:
    return json.dumps(openapi_document(database_errors), ensure_ascii=False)


# The page of /docs: Swagger UI, served from this process (no internet needed).
DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>financeATP API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", validatorUrl: null});</script>
</body></html>
"""
