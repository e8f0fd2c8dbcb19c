"""The contract's error answers: {"error", "message", ...fields} with their HTTP status."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

JSON = "application/json"


class ApiError(Exception):
    """An answer with the contract's error body {"error", "message", ...fields}."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = dict(headers or {})
        self.fields = dict(fields or {})

    def response(self) -> Response:
        return error_response(self.status, self.error, self.message, self.headers, self.fields)


def error_response(
    status: int,
    error: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    fields: Mapping[str, Any] | None = None,
) -> Response:
    body = error_body(error, message, fields)
    return Response(body, status, headers=dict(headers or {}), media_type=JSON)


def error_body(error: str, message: str, fields: Mapping[str, Any] | None = None) -> bytes:
    """The Error schema's JSON, in its order: error and message first, then the fields (index,
    retry_after)."""
    content: dict[str, Any] = {"error": error, "message": message}
    content |= {key: value for key, value in (fields or {}).items() if key not in content}
    return json.dumps(content, ensure_ascii=False).encode()


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


def unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message, {"Retry-After": "1"})
