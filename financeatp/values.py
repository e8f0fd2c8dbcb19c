"""A request's JSON values as the text PostgreSQL parses: only JSON types, UUID shapes, integers
that fit their parameter's type, times that exist, text that PostgreSQL can store, each field
given once, the body's size, and no body where none is taken are judged here; every rule about
what a value means is the database's."""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from typing import Any

from starlette.requests import ClientDisconnect, Request

from financeatp.errors import ApiError, invalid
from financeatp.operations import Field

UUID_PATTERN = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
# Plain decimal notation: PostgreSQL's numeric input also takes exponents, spaces and a plus
# sign, which the contract's amount strings do not have. The sign stays for the database to
# answer "more than 0"; the value's range and decimals are the database's to judge.
DECIMAL_PATTERN = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
SHORT_DECIMAL = 40  # characters: a decimal this short is passed as it is
MAX_DECIMAL_DIGITS = 1000
# An RFC 3339 date and time (a space for the T allowed, as RFC 3339 notes); PostgreSQL's own
# input also takes "yesterday", "epoch" and dates alone. Without an offset the time is UTC, as
# every time of the contract is, whatever the database session's time zone. A date that does
# not exist is refused here, in words that name the field (calendar_problem).
RFC3339_PATTERN = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"[Tt ](?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?P<fraction>\.[0-9]+)?"
    r"(?P<offset>[Zz]|[+-](?P<offset_hour>[0-9]{2}):(?P<offset_minute>[0-9]{2}))?"
)
INTEGER_PATTERN = re.compile(r"-?[0-9]+")


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
    """A JSON value as the text PostgreSQL parses. Judged here is only the value's shape: its
    JSON type, a UUID's form, an amount's plain decimal notation, an integer's range, text that
    PostgreSQL could not store (NUL, invalid Unicode), each element of an array; what the value
    means is the database's to judge."""
    if value is None:
        return field.null_as
    if field.kind == "array":
        return array_value(field, value)
    if field.kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(f"{field.name} must be an integer")
        return integer_text(field, value)
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
    if field.kind == "amount":
        if not DECIMAL_PATTERN.fullmatch(value):
            raise invalid(
                f'{field.name} must be a decimal number such as "100.50": digits and at most one '
                "point, without exponent, plus sign or spaces"
            )
        return decimal_text(value, field.name) if len(value) > SHORT_DECIMAL else value
    return clean_text(value, field.name)


def decimal_text(value: str, name: str) -> str:
    """A long decimal without the zeros that change nothing (leading, and trailing after the
    point), which the contract allows in any number: PostgreSQL's numeric input refuses more than
    16,383 digits after the point ("value overflows numeric format"). What is left is the
    database's to judge, unless it is longer than any number it could read."""
    sign, _, digits = value.rpartition("-")
    whole, _, fraction = digits.partition(".")
    whole, fraction = whole.lstrip("0"), fraction.rstrip("0")
    if len(whole) + len(fraction) > MAX_DECIMAL_DIGITS:
        raise invalid(f"{name} has more digits than any amount can have")
    return f"{sign}{whole or '0'}.{fraction}" if fraction else f"{sign}{whole or '0'}"


def query_value(field: Field, value: str) -> str:
    """A query parameter's text: a time must be RFC 3339 (UTC when it has no offset), an
    integer digits."""
    if field.kind == "timestamp":
        time = RFC3339_PATTERN.fullmatch(value)
        if time is None:
            hint = ""
            if RFC3339_PATTERN.fullmatch(value.replace(" ", "+")):
                hint = " (a + in a URL's query means a space: write its offset's + as %2B)"
            raise invalid(
                f"{field.name} must be an RFC 3339 time such as 2026-01-01T15:46:00Z{hint}"
            )
        if problem := calendar_problem(time):
            raise invalid(f"{field.name} is not a time that exists: {problem}")
        fraction = time["fraction"]
        if fraction and len(fraction) > 7:
            # PostgreSQL keeps microseconds and would round the rest, up to a later moment:
            # the time asked for is the moment it names, so the rest is cut off.
            value = value[: time.start("fraction") + 7] + value[time.end("fraction") :]
        return value if time["offset"] else value + "Z"
    if field.kind == "integer":
        if not INTEGER_PATTERN.fullmatch(value):
            raise invalid(f"{field.name} must be an integer")
        if len(value) > MAX_INTEGER_DIGITS:
            raise out_of_range(field)
        return integer_text(field, int(value))
    return clean_text(value, field.name)


def calendar_problem(time: re.Match[str]) -> str | None:
    """What makes a time of the right shape impossible (February 30th, 24:00, an offset of 16
    hours), in words: PostgreSQL's "date/time field value out of range" names no field. A leap
    second (:60) is RFC 3339's, and PostgreSQL's."""
    part = {name: int(text) for name, text in time.groupdict().items() if text and text.isdigit()}
    try:
        datetime.date(part["year"], part["month"], part["day"])
    except ValueError as error:
        return str(error)
    if part["hour"] > 23 or part["minute"] > 59 or part["second"] > 60:
        return "the hour must be 00-23, the minute 00-59 and the second 00-60"
    if part.get("offset_hour", 0) > 15 or part.get("offset_minute", 0) > 59:
        return "an offset from UTC must be between -15:59 and +15:59"
    return None


def integer_text(field: Field, value: int) -> str:
    """An integer that fits the function's parameter (integer or bigint): beyond that, PostgreSQL
    would refuse it in words that name neither the field nor its range."""
    limit = 2 ** (field.bits - 1)
    if not -limit <= value < limit:
        raise out_of_range(field)
    return str(value)


def out_of_range(field: Field) -> ApiError:
    if field.minimum is not None and field.maximum is not None:
        return invalid(f"{field.name} must be between {field.minimum} and {field.maximum}")
    return invalid(f"{field.name} is out of range")


def array_value(field: Field, value: Any) -> str:
    """An array of objects (a batch's legs) as JSON text for a jsonb parameter, each object's
    fields judged like a body's; a bad one is named by its 0-based index, as the database does."""
    if not isinstance(value, list):
        raise invalid(f"{field.name} must be an array")
    items = {item.name: item for item in field.items}
    for index, element in enumerate(value):
        where = f"{field.name}[{index}]"
        if not isinstance(element, dict):
            raise ApiError(
                400, "invalid_request", f"{where} must be an object", fields={"index": index}
            )
        unknown = sorted(set(element) - set(items))
        try:
            if unknown:
                raise invalid(
                    f"{where}: unknown field(s): {', '.join(unknown)}; allowed: {', '.join(items)}"
                )
            for name, item in items.items():
                field_value(dataclasses.replace(item, name=f"{where}.{name}"), element.get(name))
        except ApiError as error:
            error.fields["index"] = index
            raise
    return ENCODER.encode(value)


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class AmbiguousBodyError(ValueError):
    """Valid JSON that does not say one thing: a field given twice (JSON parsers keep the last
    or the first, so the two ends of a request could read different amounts), or an integer too
    long to be one of ours."""


def unique_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    fields = dict(pairs)
    if len(fields) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise AmbiguousBodyError(f"the field {name!r} is given more than once")
            seen.add(name)
    return fields


def bounded_int(text: str) -> int:
    if len(text) > MAX_INTEGER_DIGITS:
        raise AmbiguousBodyError(
            f"a number in the request body has more than {MAX_INTEGER_DIGITS} digits"
        )
    return int(text)


MAX_INTEGER_DIGITS = 20  # a bigint has 19 digits and a sign
# Made once: json.loads and json.dumps with options build a new decoder or encoder on every call.
DECODER = json.JSONDecoder(
    parse_constant=reject_constant, parse_int=bounded_int, object_pairs_hook=unique_fields
)
ENCODER = json.JSONEncoder(ensure_ascii=False)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, at most limit bytes, from the ASGI messages themselves: Starlette's
    request.stream() is an async generator, which the event loop registers and finalizes for
    every request, 4% of a transfer's server CPU in process (bench/README.md, twenty-fifth pass).
    A client that stops sending holds its request until it goes: a time limit here
    (asyncio.timeout) cost 4% too (twenty-second pass); a reverse proxy's body timeout does it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def refuse_body(request: Request) -> None:
    """A request whose operation takes no body is refused when it sends one: ignored, a body (a
    reason given with a delete, say) would look accepted. Only its Content-Length is read (a
    chunked body was refused before the application)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip("0") != "":
        raise invalid("this request takes no body")


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the request body is larger than {limit} bytes")


def parse_object(raw: bytes, required: bool) -> dict[str, Any]:
    if not raw.strip() and not required:
        return {}
    try:
        # As json.loads reads bytes: UTF-8, or UTF-16/32 by the first bytes.
        body = DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except AmbiguousBodyError as ambiguous:
        raise invalid(str(ambiguous)) from None
    except (ValueError, RecursionError):
        raise invalid("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    return body
