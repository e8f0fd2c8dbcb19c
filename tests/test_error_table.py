"""One error table: api.error_codes() in the database is the source; the README's Errors table
and the error responses of /openapi.json must say the same. HTTP_ERRORS (financeatp/operations.py)
lists the few errors that the HTTP layer answers without calling the database."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from http_fixtures import Api

from financeatp.operations import HTTP_ERRORS

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\|\s*(L\d{4}|\(HTTP\))\s*\|\s*(\d{3})\s*\|\s*(\w+)\s*\|")


def database_errors(api: Api) -> set[tuple[str, int, str, str]]:
    rows = api.dba.execute("SELECT sqlstate, http_status, error, meaning FROM api.error_codes()")
    return {(state, status, error, meaning) for state, status, error, meaning in rows}


def readme_errors() -> set[tuple[str, int, str]]:
    """The rows of README.md's "## Errors" table: (SQLSTATE or "(HTTP)", status, error)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    rows = set()
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            rows.add((match.group(1), int(match.group(2)), match.group(3)))
    assert rows, "README.md has no Errors table"
    return rows


def test_readme_lists_every_database_error(api: Api) -> None:
    in_database = {(state, status, error) for state, status, error, _ in database_errors(api)}
    in_readme = {row for row in readme_errors() if row[0] != "(HTTP)"}
    assert in_database - in_readme == set(), "api.error_codes() rows missing from README.md"
    assert in_readme - in_database == set(), "README.md rows that api.error_codes() lacks"


def test_readme_lists_every_http_layer_error() -> None:
    in_code = {("(HTTP)", code.http_status, code.error) for code in HTTP_ERRORS}
    in_readme = {row for row in readme_errors() if row[0] == "(HTTP)"}
    assert in_code - in_readme == set(), "HTTP_ERRORS missing from README.md's (HTTP) rows"
    assert in_readme - in_code == set(), "README.md (HTTP) rows that HTTP_ERRORS lacks"


def openapi_error_responses(api: Api) -> dict[str, Any]:
    document = api.client.get("/openapi.json").json()
    return dict(document["components"]["responses"])


def test_openapi_describes_every_error(api: Api) -> None:
    responses = openapi_error_responses(api)
    expected = [(status, error, meaning) for _, status, error, meaning in database_errors(api)]
    expected += [(code.http_status, code.error, code.meaning) for code in HTTP_ERRORS]
    missing = [
        (status, error, meaning)
        for status, error, meaning in expected
        if f"{error}: " not in responses.get(f"E{status}", {}).get("description", "")
        or meaning not in responses[f"E{status}"]["description"]
    ]
    assert missing == [], "errors that /openapi.json's components.responses do not describe"


def test_every_operation_error_response_is_defined(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    defined = set(document["components"]["responses"])
    used = {
        response["$ref"].rsplit("/", 1)[1]
        for path in document["paths"].values()
        for operation in path.values()
        for response in operation["responses"].values()
        if "$ref" in response
    }
    assert used <= defined, used - defined


def test_every_code_the_functions_raise_is_in_the_table(api: Api) -> None:
    """A code raised in sql/ without its row in api.error_codes() would reach a caller under
    the server's generic fallback name for its status: none is."""
    literal = re.compile(r"'(L[45]\d{3})'")
    raised = {
        code
        for path in (ROOT / "sql").rglob("*.sql")
        if path.name != "error_codes.sql"
        for code in literal.findall(path.read_text())
    }
    assert raised, "no L code found in sql/"
    listed = {state for state, _, _, _ in database_errors(api)}
    assert raised - listed == set(), "codes raised in sql/ that api.error_codes() lacks"
