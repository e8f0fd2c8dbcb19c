"""The HTTP contract (README.md, /openapi.json) against the real server (uvicorn, `python app.py
serve`) and a real PostgreSQL: every route, every error code, every permission, the transfer rule,
idempotency, the correlation id, and what the logs may and may not contain."""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from conftest import TEMPLATE, Cluster, key_hash, url
from http_fixtures import Api, cluster_log, read_answer, serve_fresh_database, start_server
from prometheus_client.parser import text_string_to_metric_families

from financeatp.operations import OPERATIONS, Operation

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def admin_key(api: Api) -> str:
    return api.key(["admin"], name="http-admin")


def error_of(response: httpx.Response) -> str:
    body = response.json()
    # DETAIL's fields (a batch leg's index, retry_after) may come beside error and message.
    assert {"error", "message"} <= set(body) <= {"error", "message", "index", "retry_after"}, body
    assert body["message"]
    return str(body["error"])


def expect_error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert error_of(response) == error, response.text
    assert response.headers["content-type"] == "application/json"
    return dict(response.json())


# --- every route's success path ------------------------------------------------------------


def test_user_lifecycle(api: Api, admin_key: str) -> None:
    writer = api.key(["read", "write"])
    user = api.new_user(writer, display_name="Alice A")
    assert user["balance"] == "0.00000000"
    assert user["version"] == 1 and user["is_frozen"] is False
    user_id = user["user_id"]

    got = api.request("GET", f"/users/{user_id}", writer)
    assert got.status_code == 200 and got.json() == user

    patched = api.request("PATCH", f"/users/{user_id}", writer, {"display_name": "Alice B"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["display_name"] == "Alice B" and patched.json()["version"] == 2
    stale = api.request(
        "PATCH", f"/users/{user_id}", writer, {"display_name": "C", "expected_version": 1}
    )
    expect_error(stale, 409, "version_conflict")
    # An explicit null clears the name, as "" does (JSON Merge Patch); a field left out is kept.
    cleared = api.request("PATCH", f"/users/{user_id}", writer, {"display_name": None})
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["display_name"] is None and cleared.json()["version"] == 3
    # ... and the published schema admits that body: one of its "at least one field" branches.
    document = api.client.get("/openapi.json").json()
    patch = document["paths"]["/users/{user_id}"]["patch"]["requestBody"]
    branches = patch["content"]["application/json"]["schema"]["anyOf"]
    display_name = {"type": "string", "nullable": True}
    assert {"required": ["display_name"], "properties": {"display_name": display_name}} in branches
    email = f"{user_id[:8]}@example.com"
    key = str(uuid.uuid4())
    renamed = api.request(
        "PATCH", f"/users/{user_id}", writer, {"email": email}, idempotency_key=key
    )
    assert renamed.json()["display_name"] is None and renamed.json()["email"] == email
    # Here a null is not an absence (it clears the name): under the same key, another request.
    also_cleared = {"email": email, "display_name": None}
    again = api.request("PATCH", f"/users/{user_id}", writer, also_cleared, idempotency_key=key)
    expect_error(again, 409, "idempotency_conflict")

    api.mint(admin_key, user_id, "5")
    expect_error(api.request("DELETE", f"/users/{user_id}", writer), 409, "balance_not_zero")
    burn = {"from_user_id": user_id, "amount": "5", "reason": "close"}
    assert api.request("POST", "/admin/burn", admin_key, burn).status_code == 201

    deleted = api.request("DELETE", f"/users/{user_id}", writer)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["status"] == "deleted" and deleted.json()["user_id"] == user_id
    # Its own reads are 404, and say why; a movement to it too.
    for path in ("", "/balance", "/history"):
        gone = api.request("GET", f"/users/{user_id}{path}", writer)
        expect_error(gone, 404, "user_not_found")
        assert gone.json()["message"] == f"user {user_id} was deleted", gone.text
    never = api.request("GET", f"/users/{uuid.uuid4()}", writer)
    assert never.json()["message"].endswith("not found"), never.text
    to_deleted = api.request(
        "POST", "/admin/mint", admin_key, {"to_user_id": user_id, "amount": "1"}
    )
    assert to_deleted.json()["message"] == f"user {user_id} was deleted", to_deleted.text
    # The username and email are free again.
    again = api.new_user(writer, username=user["username"], email=user["email"])
    assert again["user_id"] != user_id


def test_money_routes(api: Api, admin_key: str) -> None:
    alice = api.new_user(admin_key)["user_id"]
    bob = api.new_user(admin_key)["user_id"]
    minted = api.mint(admin_key, alice, "1000.5").json()
    assert minted["amount"] == "1000.50000000" and minted["status"] == "completed"
    assert UUID_RE.match(minted["mint_id"]) and minted["to_user_id"] == alice

    body = {"from_user_id": alice, "to_user_id": bob, "amount": "100.25", "memo": "lunch"}
    sent = api.request("POST", "/transfers", admin_key, body, acting_user=alice)
    assert sent.status_code == 201, sent.text
    transfer = sent.json()
    assert transfer["amount"] == "100.25000000" and transfer["memo"] == "lunch"
    assert "idempotent-replayed" not in sent.headers

    fetched = api.request("GET", f"/transfers/{transfer['transfer_id']}", admin_key)
    assert fetched.status_code == 200
    assert fetched.json() == transfer | {"refunded_amount": "0.00000000"}

    burned = api.request(
        "POST", "/admin/burn", admin_key, {"from_user_id": bob, "amount": "0.25", "reason": "x"}
    )
    assert burned.status_code == 201, burned.text
    assert burned.json()["amount"] == "0.25000000" and burned.json()["from_user_id"] == bob

    assert api.balance(admin_key, alice) == "900.25000000"
    assert api.balance(admin_key, bob) == "100.00000000"
    past = api.request(
        "GET", f"/users/{alice}/balance", admin_key, params={"as_of": minted["created_at"]}
    )
    assert past.status_code == 200, past.text
    assert past.json()["balance"] == "1000.50000000"
    # A time without an offset is UTC, as every time of the contract is.
    naive = api.request(
        "GET",
        f"/users/{alice}/balance",
        admin_key,
        params={"as_of": minted["created_at"].removesuffix("Z")},
    )
    assert naive.json() == past.json(), naive.text
    # A moment between two microseconds is the earlier one: PostgreSQL would round it up to the
    # mint's own microsecond (and count the mint) when it names the moment just before it.
    stamp = datetime.fromisoformat(minted["created_at"].replace("Z", "+00:00"))
    before = (stamp - timedelta(microseconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "9Z"
    just_before = api.request("GET", f"/users/{alice}/balance", admin_key, params={"as_of": before})
    assert just_before.json()["balance"] == "0.00000000", just_before.text
    # The user exists from the moment its creation answered, with its wallet.
    created = api.request("GET", f"/users/{alice}", admin_key).json()["created_at"]
    at_creation = api.request(
        "GET", f"/users/{alice}/balance", admin_key, params={"as_of": created}
    )
    assert at_creation.status_code == 200 and at_creation.json()["balance"] == "0.00000000"
    instant = datetime.fromisoformat(created.replace("Z", "+00:00")) - timedelta(microseconds=1)
    earlier = api.request(
        "GET", f"/users/{alice}/balance", admin_key, params={"as_of": instant.isoformat()}
    )
    expect_error(earlier, 404, "user_not_found")

    history = api.request("GET", f"/users/{alice}/history", admin_key).json()
    assert [(i["kind"], i["amount"], i["balance_after"]) for i in history["items"]] == [
        ("transfer_out", "100.25000000", "900.25000000"),
        ("mint", "1000.50000000", "1000.50000000"),
    ]
    assert history["items"][0]["counterparty"] == bob and history["next_cursor"] is None
    first = api.request("GET", f"/users/{alice}/history", admin_key, params={"limit": 1}).json()
    assert len(first["items"]) == 1 and first["next_cursor"]
    rest = api.request(
        "GET",
        f"/users/{alice}/history",
        admin_key,
        params={"limit": 1, "cursor": first["next_cursor"]},
    ).json()
    assert rest["items"] == history["items"][1:] and rest["next_cursor"] is None


def test_freeze_and_unfreeze(api: Api, admin_key: str) -> None:
    alice = api.new_user(admin_key)["user_id"]
    bob = api.new_user(admin_key)["user_id"]
    api.mint(admin_key, alice, "10")
    frozen = api.request("POST", f"/admin/users/{bob}/freeze", admin_key, {"reason": "ticket 42"})
    assert frozen.status_code == 200 and frozen.json()["is_frozen"] is True
    body = {"from_user_id": alice, "to_user_id": bob, "amount": "1"}
    refused = api.request("POST", "/transfers", admin_key, body, acting_user=alice)
    expect_error(refused, 400, "account_frozen")
    # No body at all is fine: the reason is optional.
    thawed = api.request("POST", f"/admin/users/{bob}/unfreeze", admin_key)
    assert thawed.status_code == 200 and thawed.json()["is_frozen"] is False
    assert api.request("POST", "/transfers", admin_key, body, acting_user=alice).status_code == 201


def all_events(api: Api, key: str, page_size: int = 100) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": page_size} | ({"after": after} if after else {})
        page = api.request("GET", "/admin/events", key, params=params)
        assert page.status_code == 200, page.text
        if not page.json()["events"]:
            return events
        events += page.json()["events"]
        after = page.json()["next_cursor"]


def test_event_feed_pages_every_event_once(api: Api, admin_key: str) -> None:
    user = api.new_user(admin_key)["user_id"]
    api.mint(admin_key, user, "3")
    seen = [event["id"] for event in all_events(api, admin_key, page_size=7)]
    assert len(seen) == len(set(seen))
    assert api.dba.execute("SELECT count(*) FROM ledger.events").fetchone() == (len(seen),)


def test_service_routes(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.get("/readyz").json() == {"status": "ready"}
    metrics = api.client.get("/metrics")
    assert metrics.status_code == 200
    assert "atp_http_requests_total{" in metrics.text
    assert "atp_http_request_duration_seconds_bucket{" in metrics.text
    assert 'atp_db_pool_connections{state="size"}' in metrics.text
    document = api.client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, item in document["paths"].items() for m in item}
    assert {(op.method, op.path) for op in OPERATIONS} <= documented
    docs = api.client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    for asset in re.findall(r'(?:src|href)="(/docs/static/[^"]+)"', docs.text):
        assert api.client.get(asset).status_code == 200, asset


# --- errors: every code of the contract ----------------------------------------------------


def test_invalid_request_shapes(api: Api, admin_key: str) -> None:
    alice = api.new_user(admin_key)["user_id"]
    bob = api.new_user(admin_key)["user_id"]
    good = {"from_user_id": alice, "to_user_id": bob, "amount": "1"}

    def post(body: Any = None, **kwargs: Any) -> httpx.Response:
        return api.request("POST", "/transfers", admin_key, body, acting_user=alice, **kwargs)

    cases = {
        "malformed JSON": post(content=b'{"amount": '),
        "NaN literal": post(content=b'{"amount": NaN}'),
        "not an object": post(["a"]),
        "empty body": post(content=b""),
        "amount as number": post(good | {"amount": 1}),
        "amount as bool": post(good | {"amount": True}),
        "unknown field": post(good | {"fee": "1"}),
        "malformed uuid in body": post(good | {"to_user_id": "bob"}),
        "uuid without dashes": post(good | {"to_user_id": bob.replace("-", "")}),
        "memo not a string": post(good | {"memo": 5}),
        "NUL in memo": post(good | {"memo": "a\u0000b"}),
        "too many decimals": post(good | {"amount": "1.123456789"}),
        "zero": post(good | {"amount": "0"}),
        "negative": post(good | {"amount": "-5"}),
        "over the maximum": post(good | {"amount": "1000000000000.00000001"}),
        "huge": post(good | {"amount": "1e400"}),
        "not a number": post(good | {"amount": "ten"}),
        "amount with an exponent": post(good | {"amount": "1e3"}),
        "amount with spaces": post(good | {"amount": " 1"}),
        "amount with a plus sign": post(good | {"amount": "+1"}),
        "amount Infinity": post(good | {"amount": "Infinity"}),
        "missing amount": post({"from_user_id": alice, "to_user_id": bob}),
        "missing Idempotency-Key": api.client.post(
            "/transfers",
            json=good,
            headers={"X-API-Key": admin_key, "X-Request-User-Id": alice},
        ),
        "malformed Idempotency-Key": post(good, idempotency_key="not-a-uuid"),
        "malformed X-Request-User-Id": api.request(
            "GET", f"/users/{alice}", admin_key, acting_user="alice"
        ),
        "malformed path uuid": api.request("GET", "/users/alice", admin_key),
        "X-Correlation-Id too long": api.request(
            "GET", f"/users/{alice}", admin_key, correlation_id="x" * 129
        ),
        "limit not a number": api.request(
            "GET", f"/users/{alice}/history", admin_key, params={"limit": "ten"}
        ),
        "limit out of range": api.request(
            "GET", f"/users/{alice}/history", admin_key, params={"limit": 500}
        ),
        "bad cursor": api.request(
            "GET", f"/users/{alice}/history", admin_key, params={"cursor": "x"}
        ),
        "unknown query parameter": api.request(
            "GET", f"/users/{alice}/history", admin_key, params={"limt": 5}
        ),
        "bad as_of": api.request(
            "GET", f"/users/{alice}/balance", admin_key, params={"as_of": "yesterday-ish"}
        ),
        "as_of a word PostgreSQL knows": api.request(
            "GET", f"/users/{alice}/balance", admin_key, params={"as_of": "yesterday"}
        ),
        "as_of a date only": api.request(
            "GET", f"/users/{alice}/balance", admin_key, params={"as_of": "2026-01-01"}
        ),
        "as_of February 30th": api.request(
            "GET", f"/users/{alice}/balance", admin_key, params={"as_of": "2026-02-30T00:00:00Z"}
        ),
        "as_of at hour 24": api.request(
            "GET", f"/users/{alice}/balance", admin_key, params={"as_of": "2026-01-01T24:00:00Z"}
        ),
        "as_of with its + read as a space": api.request(
            "GET",
            f"/users/{alice}/balance",
            admin_key,
            params={"as_of": "2026-01-01T00:00:00 02:00"},
        ),
        "as_of 16 hours from UTC": api.request(
            "GET",
            f"/users/{alice}/balance",
            admin_key,
            params={"as_of": "2026-01-01T00:00:00+16:00"},
        ),
        "bad username": api.request(
            "POST",
            "/users",
            admin_key,
            {"user_id": str(uuid.uuid4()), "username": "a b", "email": "ab@example.com"},
        ),
        "version not an integer": api.request(
            "PATCH", f"/users/{alice}", admin_key, {"display_name": "x", "expected_version": "1"}
        ),
        "nothing to update": api.request("PATCH", f"/users/{alice}", admin_key, {}),
        "a body on a read": api.request(
            "GET", f"/users/{alice}/balance", admin_key, content=b'{"as_of": "now"}'
        ),
    }
    for name, response in cases.items():
        assert response.status_code == 400, f"{name}: {response.status_code} {response.text}"
        assert error_of(response) == "invalid_request", name
    number = cases["amount as number"].json()["message"]
    assert "string" in number and "number" in number
    assert "exponent" in cases["amount with an exponent"].json()["message"]
    assert "RFC 3339" in cases["as_of a date only"].json()["message"]
    impossible = {
        "as_of February 30th": "as_of is not a time that exists: day is out of range for month",
        "as_of at hour 24": "as_of is not a time that exists: the hour must be 00-23, the minute "
        "00-59 and the second 00-60",
        "as_of 16 hours from UTC": "as_of is not a time that exists: an offset from UTC must be "
        "between -15:59 and +15:59",
    }
    assert "%2B" in cases["as_of with its + read as a space"].json()["message"]
    for name, message in impossible.items():
        assert cases[name].json()["message"] == message, name
    assert api.balance(admin_key, alice) == "0.00000000"


def test_a_body_where_none_is_taken_is_refused(api: Api, admin_key: str) -> None:
    """A body sent to a route that takes none (a reason given with a delete) is refused rather
    than ignored, and nothing happens; an empty one is no body."""
    user = api.new_user(admin_key)["user_id"]
    refused = api.request("DELETE", f"/users/{user}", admin_key, content=b'{"reason": "fraud"}')
    expect_error(refused, 400, "invalid_request")
    assert refused.json()["message"] == "this request takes no body"
    assert api.request("GET", f"/users/{user}", admin_key).status_code == 200
    empty = api.request("DELETE", f"/users/{user}", admin_key, content=b"")
    assert empty.status_code == 200, empty.text
    assert empty.json()["status"] == "deleted"


def test_zeros_that_change_nothing_may_be_many(api: Api, admin_key: str) -> None:
    """The contract allows leading zeros and zeros after the last decimal in any number; more
    than 16,383 digits after the point overflowed PostgreSQL's numeric input."""
    alice = api.new_user(admin_key)["user_id"]
    bob = api.new_user(admin_key)["user_id"]
    api.mint(admin_key, alice, "10")

    def send(amount: str) -> httpx.Response:
        body = {"from_user_id": alice, "to_user_id": bob, "amount": amount}
        return api.request("POST", "/transfers", admin_key, body, acting_user=alice)

    sent = send("0" * 20000 + "1." + "0" * 20000)
    assert sent.status_code == 201, sent.text[:300]
    assert sent.json()["amount"] == "1.00000000"
    digits = send("0." + "0" * 20000 + "1")
    expect_error(digits, 400, "invalid_request")
    assert digits.json()["message"] == "amount has more digits than any amount can have"
    decimals = send("0." + "0" * 100 + "1")
    assert decimals.json()["message"] == "amount has more than 8 decimal places", decimals.text
    assert api.balance(admin_key, alice) == "9.00000000"


def test_the_key_is_judged_before_the_request(api: Api, admin_key: str) -> None:
    """An unknown key is 401 and a key without the permission 403, however malformed the rest."""
    alice = api.new_user(admin_key)["user_id"]
    malformed = {"from_user_id": alice, "to_user_id": "bob", "amount": 1, "fee": "1"}
    no_idempotency_key = api.client.post(
        "/transfers", json=malformed, headers={"X-API-Key": "sk_live_unknown"}
    )
    expect_error(no_idempotency_key, 401, "invalid_api_key")
    expect_error(api.request("GET", "/users/alice", "sk_live_unknown"), 401, "invalid_api_key")
    read_key = api.key(["read"])
    expect_error(
        api.request("POST", "/transfers", read_key, malformed, acting_user=alice),
        403,
        "permission_denied",
    )
    write_key = api.key(["read", "write"])
    mint = {"to_user_id": alice, "amount": "1e3", "reason": "x"}
    expect_error(api.request("POST", "/admin/mint", write_key, mint), 403, "permission_denied")
    # The right key gets the shape's answer.
    expect_error(api.request("POST", "/admin/mint", admin_key, mint), 400, "invalid_request")
    expect_error(api.request("GET", "/users/alice", read_key), 400, "invalid_request")


def test_business_rejections(api: Api, admin_key: str) -> None:
    alice = api.new_user(admin_key)["user_id"]
    bob = api.new_user(admin_key)["user_id"]
    api.mint(admin_key, alice, "10")
    body = {"from_user_id": alice, "to_user_id": bob, "amount": "10.00000001"}
    expect_error(
        api.request("POST", "/transfers", admin_key, body, acting_user=alice),
        400,
        "insufficient_balance",
    )
    # A wallet holds at most 10^12; what is issued in all may be more than one full wallet.
    carol = api.new_user(admin_key)["user_id"]
    for user in (bob, carol):
        api.mint(admin_key, user, "1000000000000")
    over = {"to_user_id": bob, "amount": "0.00000001", "reason": "one unit over"}
    expect_error(api.request("POST", "/admin/mint", admin_key, over), 400, "balance_limit_exceeded")
    for user in (bob, carol):
        back = {"from_user_id": user, "amount": "1000000000000", "reason": "given back"}
        assert api.request("POST", "/admin/burn", admin_key, back).status_code == 201
    nobody = str(uuid.uuid4())
    expect_error(api.request("GET", f"/users/{nobody}", admin_key), 404, "user_not_found")
    expect_error(api.request("GET", f"/transfers/{nobody}", admin_key), 404, "not_found")
    user = api.request("GET", f"/users/{alice}", admin_key).json()
    taken = {"user_id": str(uuid.uuid4()), "username": user["username"], "email": "n@example.com"}
    expect_error(api.request("POST", "/users", admin_key, taken), 409, "user_exists")


def test_routing_errors(api: Api, admin_key: str) -> None:
    expect_error(api.client.get("/nowhere"), 404, "not_found")
    expect_error(api.client.post("/users/", headers={"X-API-Key": admin_key}), 404, "not_found")
    wrong = api.client.put("/transfers", headers={"X-API-Key": admin_key})
    expect_error(wrong, 405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"
    allowed = api.client.request("OPTIONS", f"/users/{uuid.uuid4()}").headers["allow"]
    assert set(allowed.split(", ")) == {"GET", "HEAD", "PATCH", "DELETE"}


def test_payload_too_large(api: Api, admin_key: str) -> None:
    user = api.new_user(admin_key)["user_id"]
    huge = {"to_user_id": user, "amount": "1", "reason": "x" * 300_000}
    expect_error(api.request("POST", "/admin/mint", admin_key, huge), 413, "payload_too_large")

    def chunks() -> Any:
        yield b'{"reason": "'
        for _ in range(300):
            yield b"x" * 1000
        yield b'"}'

    # Sent chunked, with no length to judge first: refused as chunked (see below).
    streamed = api.request("POST", "/admin/mint", admin_key, content=chunks())
    expect_error(streamed, 400, "invalid_request")
    assert "Transfer-Encoding" in streamed.json()["message"]
    assert api.balance(admin_key, user) == "0.00000000"


def test_rate_limit(api: Api, admin_key: str) -> None:
    user = api.new_user(admin_key)["user_id"]
    key = api.key(["read"], rate_limit=3, name="slow")
    statuses = [api.request("GET", f"/users/{user}", key).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    limited = api.request("GET", f"/users/{user}", key)
    expect_error(limited, 429, "rate_limit_exceeded")
    assert int(limited.headers["retry-after"]) >= 1


def test_refused_requests_count_toward_rate_limit(api: Api) -> None:
    """A client that only makes failing calls is limited too."""
    key = api.key(["read"], rate_limit=3, name="slow-failing")
    user = str(uuid.uuid4())
    statuses = [api.request("GET", f"/users/{user}", key).status_code for _ in range(4)]
    assert statuses == [404, 404, 404, 429]


def test_internal_error_is_json_without_trace(api: Api, admin_key: str) -> None:
    """A bug (here: a privilege taken away) is a 500 with no detail, and a logged trace."""
    signature = "api.get_transfer(uuid, text, uuid, text, inet)"
    api.dba.execute(f"REVOKE EXECUTE ON FUNCTION {signature} FROM atp_app")
    try:
        cid = f"bug-{uuid.uuid4()}"
        response = api.request("GET", f"/transfers/{uuid.uuid4()}", admin_key, correlation_id=cid)
    finally:
        api.dba.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO atp_app")
    expect_error(response, 500, "internal_error")
    assert "Traceback" not in response.text and "permission" not in response.text
    assert response.headers["x-correlation-id"] == cid
    logged = [e for e in api.server.log_entries() if e.get("correlation_id") == cid]
    assert any("InsufficientPrivilege" in e.get("exception", "") for e in logged)


# --- permissions ---------------------------------------------------------------------------


def call_with(api: Api, op: Operation, key: str, user: str) -> httpx.Response:
    """A well-formed request for the operation, so that only the key decides."""
    path = op.path.replace("{user_id}", user).replace("{transfer_id}", str(uuid.uuid4()))
    path = path.replace("{hold_id}", str(uuid.uuid4()))
    body: dict[str, Any] | None = None
    if op.body is not None:
        body = {}
        for field in op.body:
            if field.kind == "uuid":
                body[field.name] = user if field.name != "to_user_id" else str(uuid.uuid4())
            elif field.kind == "amount":
                body[field.name] = "1"
        if op.function == "create_user":
            body |= {"user_id": str(uuid.uuid4()), "username": "perm", "email": "p@example.com"}
        if op.function == "update_user":
            body = {"display_name": "x"}
    return api.request(op.method, path, key, body, acting_user=user)


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: f"{op.method} {op.path}")
def test_every_permission(api: Api, admin_key: str, op: Operation) -> None:
    user = api.new_user(admin_key)["user_id"]
    lacking = {"read": ["write"], "write": ["read"], "admin": ["read", "write"]}[op.permission]
    expect_error(call_with(api, op, api.key(lacking), user), 403, "permission_denied")
    assert call_with(api, op, api.key([op.permission]), user).status_code != 403


def test_invalid_keys(api: Api, admin_key: str) -> None:
    user = api.new_user(admin_key)["user_id"]
    revoked = api.key(["admin"], name="revoked")
    api.dba.execute("SELECT api.revoke_api_key(%s)", [api.key_id(revoked)])
    expiring = api.key(
        ["admin"], name="expiring", expires_at=datetime.now(UTC) + timedelta(seconds=1)
    )
    time.sleep(1.1)
    wrong = "sk_live_" + "0" * 64
    api.server.keys.append(wrong)
    for key in (None, "", wrong, revoked, expiring):
        for op in OPERATIONS:
            response = call_with(api, op, key, user) if key is not None else None
            if key is None:
                path = op.path.replace("{user_id}", user).replace("{transfer_id}", user)
                response = api.client.request(op.method, path)
            assert response is not None
            expect_error(response, 401, "invalid_api_key")


# --- the transfer rule ---------------------------------------------------------------------


def test_transfer_rule(api: Api, admin_key: str) -> None:
    alice = api.new_user(admin_key)["user_id"]
    bob = api.new_user(admin_key)["user_id"]
    api.mint(admin_key, alice, "5")
    body = {"from_user_id": alice, "to_user_id": bob, "amount": "1"}
    for acting in (bob, None):
        response = api.request("POST", "/transfers", admin_key, body, acting_user=acting)
        expect_error(response, 403, "unauthorized_transfer")
    ok = api.request("POST", "/transfers", admin_key, body, acting_user=alice.upper())
    assert ok.status_code == 201, ok.text
    assert api.balance(admin_key, alice) == "4.00000000"


# --- idempotency ---------------------------------------------------------------------------


def test_replay_and_conflict(api: Api, admin_key: str) -> None:
    alice = api.new_user(admin_key)["user_id"]
    bob = api.new_user(admin_key)["user_id"]
    api.mint(admin_key, alice, "100")
    ik = str(uuid.uuid4())
    raw = f'{{"from_user_id":"{alice}","to_user_id":"{bob}","amount":"10"}}'
    spaced = f'{{ "amount" : "10",\n "to_user_id": "{bob}", "from_user_id": "{alice}" }}'

    def send(content: str, key: str = admin_key) -> httpx.Response:
        return api.request(
            "POST", "/transfers", key, content=content.encode(), idempotency_key=ik,
            acting_user=alice, headers={"Content-Type": "application/json"},
        )  # fmt: skip

    first = send(raw)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    replay = send(spaced)
    assert replay.status_code == 201, replay.text
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert api.balance(admin_key, alice) == "90.00000000"

    conflict = send(raw.replace('"10"', '"11"'))
    expect_error(conflict, 409, "idempotency_conflict")
    assert api.balance(admin_key, alice) == "90.00000000"

    # Keys are scoped to the API key: another key may use the same idempotency key.
    other = send(raw, api.key(["write"]))
    assert other.status_code == 201 and "idempotent-replayed" not in other.headers
    assert other.json()["transfer_id"] != first.json()["transfer_id"]
    assert api.balance(admin_key, alice) == "80.00000000"


def test_a_used_key_with_another_request_is_a_conflict_before_its_rules(
    api: Api, admin_key: str
) -> None:
    """A request under a key that answered another request is idempotency_conflict, even when
    the new request would be refused on its own (a missing user, a short balance, a hold no
    longer pending, a taken username): the key is compared first, once the request is well
    formed."""
    alice = api.new_user(admin_key)["user_id"]
    bob = api.new_user(admin_key)["user_id"]
    nobody = str(uuid.uuid4())
    api.mint(admin_key, alice, "100")

    def first_then(
        method: str, path: str, body: Any, other_path: str, other: Any, acting: str | None
    ) -> None:
        ik = str(uuid.uuid4())
        done = api.request(method, path, admin_key, body, idempotency_key=ik, acting_user=acting)
        assert done.status_code in (200, 201), done.text
        again = api.request(
            method, other_path, admin_key, other, idempotency_key=ik, acting_user=acting
        )
        expect_error(again, 409, "idempotency_conflict")

    pay = {"from_user_id": alice, "to_user_id": bob, "amount": "1"}
    first_then("POST", "/transfers", pay, "/transfers", pay | {"to_user_id": nobody}, alice)
    first_then("POST", "/transfers", pay, "/transfers", pay | {"amount": "5000"}, alice)
    batch = {"from_user_id": alice, "transfers": [{"to_user_id": bob, "amount": "1"}]}
    first_then(
        "POST", "/transfers/batch", batch, "/transfers/batch",
        batch | {"transfers": [{"to_user_id": nobody, "amount": "1"}]}, alice,
    )  # fmt: skip
    hold = {"from_user_id": alice, "to_user_id": bob, "amount": "1"}
    first_then("POST", "/holds", hold, "/holds", hold | {"amount": "5000"}, alice)
    held = api.request("POST", "/holds", admin_key, hold, acting_user=alice).json()["hold_id"]
    voided = api.request("POST", "/holds", admin_key, hold, acting_user=alice).json()["hold_id"]
    assert api.request("POST", f"/holds/{voided}/void", admin_key, acting_user=alice).is_success
    first_then(
        "POST", f"/holds/{held}/capture", None, f"/holds/{voided}/capture", None, alice
    )  # fmt: skip
    other = api.request("POST", "/holds", admin_key, hold, acting_user=alice).json()["hold_id"]
    first_then("POST", f"/holds/{other}/void", None, f"/holds/{voided}/void", None, alice)
    mint = {"to_user_id": alice, "amount": "1"}
    first_then("POST", "/admin/mint", mint, "/admin/mint", mint | {"to_user_id": nobody}, None)
    mints = {"mints": [{"to_user_id": alice, "amount": "1"}]}
    first_then(
        "POST", "/admin/mint/batch", mints, "/admin/mint/batch",
        {"mints": [{"to_user_id": nobody, "amount": "1"}]}, None,
    )  # fmt: skip
    burn = {"from_user_id": alice, "amount": "1"}
    first_then("POST", "/admin/burn", burn, "/admin/burn", burn | {"amount": "5000"}, None)
    sent = api.request("POST", "/transfers", admin_key, pay, acting_user=alice).json()
    first_then(
        "POST", f"/transfers/{sent['transfer_id']}/refund", {"amount": "0.5"},
        f"/transfers/{sent['transfer_id']}/refund", {"amount": "5"}, bob,
    )  # fmt: skip
    first_then(
        "POST", f"/admin/users/{bob}/freeze", None, f"/admin/users/{nobody}/freeze", None, None
    )  # fmt: skip
    first_then(
        "POST", f"/admin/users/{bob}/unfreeze", None, f"/admin/users/{nobody}/unfreeze", None, None
    )  # fmt: skip
    taken = api.request("GET", f"/users/{bob}", admin_key).json()["username"]
    first_then(
        "PATCH", f"/users/{alice}", {"display_name": "A"}, f"/users/{alice}",
        {"username": taken}, None,
    )  # fmt: skip
    fresh = api.new_user(admin_key)
    user = {"user_id": str(uuid.uuid4()), "username": f"u_{uuid.uuid4().hex[:10]}",
            "email": f"e_{uuid.uuid4().hex[:10]}@example.com"}  # fmt: skip
    first_then("POST", "/users", user, "/users", user | {"username": fresh["username"]}, None)
    empty = api.new_user(admin_key)["user_id"]
    first_then("DELETE", f"/users/{empty}", None, f"/users/{alice}", None, None)
    # bob: two transfers, a batch, a capture and one more transfer of 1 each, less a refund of 0.5.
    assert api.balance(admin_key, bob) == "4.50000000", "nothing ran twice, nothing else ran"
    # A request refused for its own shape gets that error whatever its key.
    ik = str(uuid.uuid4())
    done = api.request("POST", "/transfers", admin_key, pay, idempotency_key=ik, acting_user=alice)
    assert done.status_code == 201, done.text
    invalid = pay | {"to_user_id": alice}
    selfish = api.request(
        "POST", "/transfers", admin_key, invalid, idempotency_key=ik, acting_user=alice
    )
    expect_error(selfish, 400, "invalid_request")


def test_a_success_body_arrives_as_postgresql_wrote_it(api: Api, admin_key: str) -> None:
    """A success is sent as PostgreSQL's UTF-8 bytes: its Content-Length counts bytes, not
    characters, for the first answer, its replay, a read and a HEAD of that read."""
    alice = api.new_user(admin_key)["user_id"]
    bob = api.new_user(admin_key)["user_id"]
    api.mint(admin_key, alice, "5")
    memo = "caf\u00e9 \u2615 \u4e2d \U0001f600"
    body = {"from_user_id": alice, "to_user_id": bob, "amount": "1", "memo": memo}
    ik = str(uuid.uuid4())
    sent = api.request("POST", "/transfers", admin_key, body, idempotency_key=ik, acting_user=alice)
    replay = api.request(
        "POST", "/transfers", admin_key, body, idempotency_key=ik, acting_user=alice
    )
    read = api.request("GET", f"/transfers/{sent.json()['transfer_id']}", admin_key)
    for response in (sent, replay, read):
        assert response.status_code in (200, 201), response.text
        assert response.headers["content-type"] == "application/json"
        assert int(response.headers["content-length"]) == len(response.content)
        assert len(response.content) > len(response.text)  # multi-byte characters
        assert response.json()["memo"] == memo
    head = api.request("HEAD", f"/transfers/{sent.json()['transfer_id']}", admin_key)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == read.headers["content-length"]


def test_rejections_are_not_stored(api: Api, admin_key: str) -> None:
    """Only executed requests are stored: a refused one may be sent again once it can succeed."""
    alice = api.new_user(admin_key)["user_id"]
    bob = api.new_user(admin_key)["user_id"]
    ik = str(uuid.uuid4())
    body = {"from_user_id": alice, "to_user_id": bob, "amount": "7"}
    first = api.request(
        "POST", "/transfers", admin_key, body, idempotency_key=ik, acting_user=alice
    )
    expect_error(first, 400, "insufficient_balance")
    api.mint(admin_key, alice, "7")
    again = api.request(
        "POST", "/transfers", admin_key, body, idempotency_key=ik, acting_user=alice
    )
    assert again.status_code == 201 and "idempotent-replayed" not in again.headers


def test_concurrent_duplicates_execute_once(api: Api, admin_key: str) -> None:
    alice = api.new_user(admin_key)["user_id"]
    bob = api.new_user(admin_key)["user_id"]
    api.mint(admin_key, alice, "100")
    ik = str(uuid.uuid4())
    body = {"from_user_id": alice, "to_user_id": bob, "amount": "1.5"}
    barrier = threading.Barrier(8)
    responses: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=api.server.url, timeout=30) as client:
            barrier.wait()
            responses.append(
                client.post(
                    "/transfers",
                    json=body,
                    headers={
                        "X-API-Key": admin_key,
                        "Idempotency-Key": ik,
                        "X-Request-User-Id": alice,
                    },
                )
            )

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in responses] == [201] * 8
    assert len({r.json()["transfer_id"] for r in responses}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
    assert api.balance(admin_key, alice) == "98.50000000"
    assert api.balance(admin_key, bob) == "1.50000000"


def test_concurrent_transfers_add_up(api: Api, admin_key: str) -> None:
    users = [api.new_user(admin_key)["user_id"] for _ in range(4)]
    for user in users:
        api.mint(admin_key, user, "100")
    results: list[int] = []

    def worker(offset: int) -> None:
        with httpx.Client(base_url=api.server.url, timeout=30) as client:
            for i in range(10):
                sender, receiver = users[(offset + i) % 4], users[(offset + i + 1 + i % 2) % 4]
                response = client.post(
                    "/transfers",
                    json={"from_user_id": sender, "to_user_id": receiver, "amount": "0.01"},
                    headers={
                        "X-API-Key": admin_key,
                        "Idempotency-Key": str(uuid.uuid4()),
                        "X-Request-User-Id": sender,
                    },
                )
                results.append(response.status_code)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [201] * 60
    assert sum(Decimal(api.balance(admin_key, user)) for user in users) == 400


# --- correlation id ------------------------------------------------------------------------


def test_correlation_id_round_trip(api: Api, admin_key: str) -> None:
    cid = f"req-{uuid.uuid4()}"
    user = api.new_user(admin_key)["user_id"]
    minted = api.request(
        "POST",
        "/admin/mint",
        admin_key,
        {"to_user_id": user, "amount": "2"},
        correlation_id=cid,
        acting_user=user,
    )
    assert minted.status_code == 201 and minted.headers["x-correlation-id"] == cid
    events = api.dba.execute(
        "SELECT count(*), bool_and(request_user_id = %s) FROM ledger.events"
        " WHERE correlation_id = %s",
        [user, cid],
    ).fetchone()
    assert events == (2, True)  # the two accounts' events of the mint
    audit = api.dba.execute(
        "SELECT action, host(client_addr) FROM ledger.audit_log WHERE correlation_id = %s", [cid]
    ).fetchall()
    assert audit == [("mint", "127.0.0.1")]
    assert sum(e["correlation_id"] == cid for e in all_events(api, admin_key)) == 2

    generated = api.client.get("/nowhere").headers["x-correlation-id"]
    assert UUID_RE.match(generated)
    for response in (
        api.request("GET", f"/users/{user}", None, correlation_id=cid),
        api.request("GET", "/nowhere", admin_key, correlation_id=cid),
        api.client.get("/healthz", headers={"X-Correlation-Id": cid}),
    ):
        assert response.headers["x-correlation-id"] == cid


def test_correlation_id_is_utf8_text(api: Api, admin_key: str) -> None:
    """Any text of up to 128 characters (not bytes), stored and echoed as the caller wrote it."""
    user = api.new_user(admin_key)["user_id"]
    cid = f"café-ü-{uuid.uuid4()}"
    minted = api.client.post(
        "/admin/mint",
        json={"to_user_id": user, "amount": "1"},
        headers=[
            (b"X-API-Key", admin_key.encode()),
            (b"Idempotency-Key", str(uuid.uuid4()).encode()),
            (b"X-Correlation-Id", cid.encode()),
        ],
    )
    assert minted.status_code == 201, minted.text
    assert minted.headers.raw[-1] == (b"x-correlation-id", cid.encode())
    stored = api.dba.execute(
        "SELECT count(*) FROM ledger.audit_log WHERE correlation_id = %s", [cid]
    ).fetchone()
    assert stored == (1,)
    assert api.server.access_log(cid)["correlation_id"] == cid

    def read(value: bytes) -> Any:
        return api.client.get(
            f"/users/{user}",
            headers=[(b"X-API-Key", admin_key.encode()), (b"X-Correlation-Id", value)],
        )

    assert read(("é" * 128).encode()).status_code == 200  # 256 bytes, 128 characters
    expect_error(read(("é" * 129).encode()), 400, "invalid_request")
    not_utf8 = read(b"caf\xe9")
    expect_error(not_utf8, 400, "invalid_request")
    assert not_utf8.json()["message"] == "X-Correlation-Id must be UTF-8 text"


def test_a_request_must_say_one_thing(api: Api, admin_key: str) -> None:
    """A field or header given twice is refused, not read as whichever copy a parser keeps:
    nothing moves."""
    alice = api.new_user(admin_key)["user_id"]
    bob = api.new_user(admin_key)["user_id"]
    api.mint(admin_key, alice, "10")
    body = f'{{"from_user_id": "{alice}", "to_user_id": "{bob}", "amount": "1", "amount": "2"}}'
    twice = api.request(
        "POST",
        "/transfers",
        admin_key,
        content=body.encode(),
        acting_user=alice,
        headers={"Content-Type": "application/json"},
    )
    expect_error(twice, 400, "invalid_request")
    assert twice.json()["message"] == "the field 'amount' is given more than once"
    legs = (
        f'{{"from_user_id": "{alice}", "transfers": '
        f'[{{"to_user_id": "{bob}", "amount": "1", "to_user_id": "{alice}"}}]}}'
    )
    expect_error(
        api.request(
            "POST", "/transfers/batch", admin_key, content=legs.encode(), acting_user=alice
        ),
        400,
        "invalid_request",
    )

    good = {"from_user_id": alice, "to_user_id": bob, "amount": "1"}
    base = [(b"X-API-Key", admin_key.encode()), (b"X-Request-User-Id", alice.encode())]
    for name, first, second in (
        (b"Idempotency-Key", str(uuid.uuid4()), str(uuid.uuid4())),
        (b"X-Request-User-Id", alice, bob),
        (b"X-API-Key", admin_key, "sk_live_unknown"),
        (b"X-Correlation-Id", "one", "two"),
    ):
        headers = [*base, (b"Idempotency-Key", str(uuid.uuid4()).encode())]
        headers = [h for h in headers if h[0] != name] + [
            (name, first.encode()),
            (name, second.encode()),
        ]
        response = api.client.post("/transfers", json=good, headers=headers)
        expect_error(response, 400, "invalid_request")
        expected = f"the {name.decode()} header is given more than once"
        assert response.json()["message"] == expected, response.text
    # A repeated header is a malformed request like any other: the key is judged first.
    unknown = api.client.post(
        "/transfers",
        json=good,
        headers=[
            (b"X-API-Key", b"sk_live_unknown"),
            (b"Idempotency-Key", str(uuid.uuid4()).encode()),
            (b"Idempotency-Key", str(uuid.uuid4()).encode()),
        ],
    )
    expect_error(unknown, 401, "invalid_api_key")
    keyless = api.client.post(
        "/transfers",
        json=good,
        headers=[
            (b"Idempotency-Key", str(uuid.uuid4()).encode()),
            (b"Idempotency-Key", str(uuid.uuid4()).encode()),
        ],
    )
    expect_error(keyless, 401, "invalid_api_key")
    assert api.balance(admin_key, alice) == "10.00000000"


def raw_http(server_url: str, request: bytes) -> bytes:
    """One request on a socket of its own, as written (httpx would normalise it); the answer's
    head and body, read until its Content-Length is complete or the server closes."""
    host, port = server_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        return read_answer(conn)


def test_a_chunked_body_is_refused_so_trailers_cannot_act_as_headers(
    api: Api, admin_key: str
) -> None:
    """uvicorn's httptools protocol appends a chunked body's trailer fields to the request's
    headers: a key, an acting user and an idempotency key sent only as trailers made a
    transfer. A body comes with a Content-Length."""
    alice = api.new_user(admin_key)["user_id"]
    bob = api.new_user(admin_key)["user_id"]
    api.mint(admin_key, alice, "5")
    body = json.dumps({"from_user_id": alice, "to_user_id": bob, "amount": "1"}).encode()
    trailers = (
        f"X-API-Key: {admin_key}\r\nX-Request-User-Id: {alice}\r\n"
        f"Idempotency-Key: {uuid.uuid4()}\r\n\r\n"
    ).encode()
    request = (
        b"POST /transfers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(body)
        + body
        + b"\r\n0\r\n"
        + trailers
    )
    answer = raw_http(api.server.url, request)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"Transfer-Encoding is not accepted" in answer, answer
    streamed = api.request(
        "POST", "/transfers", admin_key, content=iter([body]), acting_user=alice,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    expect_error(streamed, 400, "invalid_request")
    assert api.balance(admin_key, alice) == "5.00000000"


def test_what_uvicorn_refuses_is_answered_in_the_contracts_shape(api: Api) -> None:
    """uvicorn answers a request it cannot parse itself, before the application; that answer is
    the contract's JSON 400 with the headers of every other answer, logged with its correlation
    id. A request line and headers over 16 KB are refused the same way (uvicorn's httptools
    protocol read a head of any size): sent at once, or sent on and on without an end."""
    too_large = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17_000 + b"\r\n\r\n"
    for request, message in (
        (b"GARBAGE\r\n\r\n", "not valid HTTP/1.x"),
        (b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n", "not valid HTTP/1.x"),
        (too_large, "over 16384 bytes"),
    ):
        answer = raw_http(api.server.url, request)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), answer[:300]
        headers = head.lower()
        assert b"content-type: application/json" in headers, head
        assert b"x-content-type-options: nosniff" in headers and b"connection: close" in headers
        assert (json.loads(body)["error"], message in json.loads(body)["message"]) == (
            "invalid_request", True), body  # fmt: skip
        correlation_id = re.search(rb"x-correlation-id: ([0-9a-f-]{36})", headers)
        assert correlation_id is not None, head
        assert correlation_id.group(1).decode() in api.server.log_text()
    under = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 15_000 + b"\r\n\r\n"
    assert raw_http(api.server.url, under).startswith(b"HTTP/1.1 200 ")

    host, port = api.server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        while sent < 300 * 1024 and not select.select([conn], [], [], 0.005)[0]:
            try:
                conn.sendall(b"a" * 1024)
            except OSError:
                break  # closed by the server: its answer is waiting
            sent += 1024
        answer = conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"over 16384 bytes" in answer, answer[:300]
    assert sent < 256 * 1024, f"the server read {sent} bytes of an unfinished head"


def test_a_client_gone_before_its_body_arrived_calls_nothing(api: Api, admin_key: str) -> None:
    """A body promised by Content-Length and cut short by the client's close: nothing is called
    (no transfer), the access line says 499 (nobody receives it), and the server goes on."""
    alice = api.new_user(admin_key)["user_id"]
    bob = api.new_user(admin_key)["user_id"]
    api.mint(admin_key, alice, "5")
    body = json.dumps({"from_user_id": alice, "to_user_id": bob, "amount": "1"}).encode()
    correlation_id = str(uuid.uuid4())
    head = (
        f"POST /transfers HTTP/1.1\r\nHost: x\r\nX-API-Key: {admin_key}\r\n"
        f"X-Request-User-Id: {alice}\r\nIdempotency-Key: {uuid.uuid4()}\r\n"
        f"X-Correlation-Id: {correlation_id}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    host, port = api.server.url.removeprefix("http://").split(":")
    logged = len(api.server.log_text())  # the module's server: other tests' lines come before
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head + body[: len(body) // 2])
    line = api.server.access_log(correlation_id)
    assert (line["status"], line["route"]) == (499, "/transfers"), line
    assert api.balance(admin_key, alice) == "5.00000000"
    assert "Traceback" not in api.server.log_text()[logged:]


def test_an_encoded_slash_in_a_path_is_no_route(api: Api, admin_key: str) -> None:
    """The router sees a path decoded: /users/<id>%2Fbalance answered the balance, past any
    proxy rule written for /users/<id>/balance."""
    user = api.new_user(admin_key)["user_id"]
    for path in (f"/users/{user}%2Fbalance", f"/users/{user}%2fhistory", f"/users/{user}%00"):
        request = (
            f"GET {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {admin_key}\r\nConnection: close\r\n\r\n"
        ).encode()
        answer = raw_http(api.server.url, request)
        assert answer.startswith(b"HTTP/1.1 404"), answer[:300]
        assert b'"error": "not_found"' in answer and b"encoded / or NUL" in answer, answer
    assert api.request("GET", f"/users/{user}/balance", admin_key).status_code == 200


def test_answers_are_not_cached_or_sniffed_and_hold_no_key_as_correlation_id(
    api: Api, admin_key: str
) -> None:
    user = api.new_user(admin_key)["user_id"]
    for response in (
        api.request("GET", f"/users/{user}/balance", admin_key),
        api.request("GET", f"/users/{uuid.uuid4()}", admin_key),
        api.client.get("/healthz"),
    ):
        assert response.headers["cache-control"] == "no-store", response.headers
        assert response.headers["x-content-type-options"] == "nosniff", response.headers
    # A correlation id is stored in events and audit rows for good: never an API key.
    keyed = api.request("GET", f"/users/{user}", admin_key, correlation_id=admin_key)
    expect_error(keyed, 400, "invalid_request")
    assert keyed.json()["message"] == "X-Correlation-Id must not hold an API key"
    assert admin_key not in keyed.headers["x-correlation-id"]


def test_made_up_keys_cost_no_lookup_of_their_name(api: Api, admin_key: str) -> None:
    """The access log names a request's key by a lookup in the database (cached): for a key no
    API route judged, or one it refused as unknown, there is nothing to name, and a flood of
    made-up keys on /healthz made one lookup each."""

    def lookups() -> int:
        # pg_stat_statements counts a statement as it ends, in shared memory: no flush to wait.
        row = api.dba.execute(
            "SELECT COALESCE(sum(calls), 0) FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            "   AND query LIKE %s",
            ["%api.describe_api_key(api_key_hash =>%"],
        ).fetchone()
        return int(row[0]) if row else 0

    api.dba.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    before = lookups()
    for _ in range(20):
        made_up = {"X-API-Key": f"sk_live_{uuid.uuid4().hex}"}
        assert api.client.get("/healthz", headers=made_up).status_code == 200
        refused = api.client.get(f"/users/{uuid.uuid4()}", headers=made_up)
        assert refused.status_code == 401
    named = api.key(["read"], name="named-once")
    for _ in range(3):
        api.request("GET", f"/users/{uuid.uuid4()}", named)
    for _ in range(50):  # the access line, and its lookup, come after the answer
        if lookups() > before:
            break
        time.sleep(0.02)
    assert lookups() == before + 1  # the judged key, once (then cached)


def test_a_request_refused_for_its_headers_is_counted_under_its_route(api: Api) -> None:
    """The refusal comes before routing; the metrics still name the route it was sent to."""

    def refused() -> tuple[float, float]:
        found = {"/transfers": 0.0, "unmatched": 0.0}
        for family in text_string_to_metric_families(api.client.get("/metrics").text):
            for sample in family.samples:
                labels = sample.labels
                if (
                    sample.name == "atp_http_requests_total"
                    and (labels.get("method"), labels.get("status")) == ("POST", "400")
                    and labels.get("route") in found
                ):
                    found[labels["route"]] += sample.value
        return found["/transfers"], found["unmatched"]

    def counted(expected: tuple[float, float]) -> tuple[float, float]:
        """A request is counted after its answer is sent: ask until it shows (or 10 s pass)."""
        for _ in range(100):
            if (now := refused()) == expected:
                return now
            time.sleep(0.1)
        return now

    transfers, unmatched = refused()
    headers = [(b"X-Correlation-Id", b"one"), (b"X-Correlation-Id", b"two")]
    expect_error(api.client.post("/transfers", json={}, headers=headers), 400, "invalid_request")
    assert counted((transfers + 1, unmatched)) == (transfers + 1, unmatched)
    expect_error(api.client.post("/nowhere", json={}, headers=headers), 400, "invalid_request")
    assert counted((transfers + 1, unmatched + 1)) == (transfers + 1, unmatched + 1)


def test_integers_out_of_range_name_their_field(api: Api, admin_key: str) -> None:
    alice = api.new_user(admin_key)["user_id"]
    bob = api.new_user(admin_key)["user_id"]
    cases = {
        "limit beyond integer": (
            api.request(
                "GET", f"/users/{alice}/history", admin_key, params={"limit": "99999999999"}
            ),
            "limit must be between 1 and 200",
        ),
        "limit of 5,000 digits": (
            api.request("GET", "/admin/events", admin_key, params={"limit": "9" * 5000}),
            "limit must be between 1 and 1000",
        ),
        "expected_version beyond bigint": (
            api.request(
                "PATCH",
                f"/users/{alice}",
                admin_key,
                {"display_name": "x", "expected_version": 2**63},
            ),
            "expected_version must be between 1 and 9223372036854775807",
        ),
        "expected_version below 1": (
            api.request(
                "PATCH", f"/users/{alice}", admin_key, {"display_name": "x", "expected_version": 0}
            ),
            "expected_version must be at least 1 (a user starts at version 1)",
        ),
        "expires_in_seconds beyond integer": (
            api.request(
                "POST",
                "/holds",
                admin_key,
                {
                    "from_user_id": alice,
                    "to_user_id": bob,
                    "amount": "1",
                    "expires_in_seconds": 2**31,
                },
                acting_user=alice,
            ),
            "expires_in_seconds must be between 1 and 2592000",
        ),
        "a number of 5,000 digits": (
            api.request(
                "POST",
                "/holds",
                admin_key,
                content=(
                    f'{{"from_user_id": "{alice}", "to_user_id": "{bob}", "amount": "1", '
                    f'"expires_in_seconds": {"9" * 5000}}}'
                ).encode(),
                acting_user=alice,
            ),
            "a number in the request body has more than 20 digits",
        ),
    }
    for name, (response, message) in cases.items():
        expect_error(response, 400, "invalid_request")
        assert response.json()["message"] == message, f"{name}: {response.text}"


def test_forwarded_for_is_believed_only_from_named_proxies(
    api: Api, admin_key: str, cluster: Cluster, tmp_path: Any
) -> None:
    """The client an audit row and the access line name is the connection's peer; a caller's
    X-Forwarded-For is believed only when that peer is one of FORWARDED_ALLOW_IPS."""

    def minted_from(server: Api, key: str) -> tuple[str, str]:
        cid = f"fwd-{uuid.uuid4()}"
        user = server.new_user(key)["user_id"]
        minted = server.request(
            "POST",
            "/admin/mint",
            key,
            {"to_user_id": user, "amount": "1"},
            correlation_id=cid,
            headers={"X-Forwarded-For": "203.0.113.7"},
        )
        assert minted.status_code == 201, minted.text
        row = server.dba.execute(
            "SELECT host(client_addr) FROM ledger.audit_log WHERE correlation_id = %s", [cid]
        ).fetchone()
        assert row is not None
        return row[0], server.server.access_log(cid)["client"]

    assert minted_from(api, admin_key) == ("127.0.0.1", "127.0.0.1")
    with serve_fresh_database(
        cluster, tmp_path / "server.log", MAINTENANCE_INTERVAL="0", FORWARDED_ALLOW_IPS="127.0.0.1"
    ) as behind_proxy:
        assert minted_from(behind_proxy, behind_proxy.key(["admin"])) == (
            "203.0.113.7",
            "203.0.113.7",
        )


def test_connections_lost_while_idle_are_replaced(api: Api, admin_key: str) -> None:
    """After the database dropped the pool's connections (a restart, a failover), requests still
    succeed: a dead connection is retried once on a new one."""
    user = api.new_user(admin_key)["user_id"]
    terminated = api.dba.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = 'financeatp' AND datname = current_database()"
    ).fetchone()
    assert terminated is not None and terminated[0] >= 1
    for _ in range(3):
        assert api.request("GET", f"/users/{user}", admin_key).status_code == 200
    assert (
        api.request(
            "POST", "/admin/mint", admin_key, {"to_user_id": user, "amount": "1"}
        ).status_code
        == 201
    )


def test_unavailable_database(cluster: Cluster, tmp_path: Any) -> None:
    """A database that is down: 503 unavailable (never a 500), /readyz 503, /healthz 200; once it
    is back, the same server answers, with the error names read from the database."""
    name = f"late_{uuid.uuid4().hex[:12]}"
    server = start_server(url(cluster, name, "atp_app"), tmp_path / "down.log", POOL_TIMEOUT="1")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            headers = {"X-API-Key": "sk_live_" + "1" * 64}
            down = client.get(f"/users/{uuid.uuid4()}", headers=headers)
            expect_error(down, 503, "unavailable")
            assert down.headers["retry-after"] == "1"
            expect_error(client.get("/readyz"), 503, "unavailable")
            assert client.get("/healthz").status_code == 200
            # A malformed request's key is judged first: while it cannot be, that is the answer.
            malformed = client.post("/transfers", headers=headers, content=b"{bad")
            expect_error(malformed, 503, "unavailable")

            with psycopg.connect(url(cluster, "postgres"), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
            with psycopg.connect(url(cluster, name), autocommit=True) as dba:
                row = dba.execute("SELECT api.create_api_key('late', ARRAY['read'], 100, NULL)")
                key = row.fetchone()[0]["key"]  # type: ignore[index]
            deadline = time.monotonic() + 30
            back = client.get(f"/users/{uuid.uuid4()}", headers={"X-API-Key": key})
            while back.status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.5)
                back = client.get(f"/users/{uuid.uuid4()}", headers={"X-API-Key": key})
            expect_error(back, 404, "user_not_found")
    finally:
        server.stop()
        with psycopg.connect(url(cluster, "postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_stricter_default_isolation_does_not_turn_transfers_into_retries(
    cluster: Cluster, tmp_path: Any
) -> None:
    """The functions are written for read committed. A database whose default is serializable
    made about half of 30 concurrent transfers from one sender answer 503 ("the database asked
    to retry"); the server's connections now use read committed whatever the default."""
    name = f"ser_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url(cluster, "postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        conn.execute(f"ALTER DATABASE {name} SET default_transaction_isolation = 'serializable'")
    server = start_server(url(cluster, name, "atp_app"), tmp_path / "serializable.log")
    try:
        with psycopg.connect(url(cluster, name), autocommit=True) as dba:
            key = dba.execute("SELECT api.create_api_key('ser', ARRAY['admin'], 100000, NULL)")
            api_key = key.fetchone()[0]["key"]  # type: ignore[index]
            users = []
            for i in range(2):
                user = str(uuid.uuid4())
                dba.execute(
                    "SELECT api.create_user(%s, %s, %s)", (user, f"ser_{i}", f"ser{i}@ex.com")
                )
                users.append(user)
            dba.execute("SELECT api.mint(%s, 100)", (users[0],))
        sender, receiver = users
        body = {"from_user_id": sender, "to_user_id": receiver, "amount": "1"}

        def send(_: int) -> int:
            headers = {
                "X-API-Key": api_key,
                "X-Request-User-Id": sender,
                "Idempotency-Key": str(uuid.uuid4()),
            }
            with httpx.Client(base_url=server.url, timeout=30) as client:
                return client.post("/transfers", json=body, headers=headers).status_code

        with ThreadPoolExecutor(max_workers=15) as pool:
            statuses = list(pool.map(send, range(30)))
        assert statuses == [201] * 30, statuses
    finally:
        server.stop()
        with psycopg.connect(url(cluster, "postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# --- logs: one JSON line per request, no secret in any of them ------------------------------


def test_access_log_line(api: Api) -> None:
    key = api.key(["read"], name="logged-key")
    cid = f"log-{uuid.uuid4()}"
    api.request("GET", f"/users/{uuid.uuid4()}", key, correlation_id=cid)
    entry = api.server.access_log(cid)
    assert entry["method"] == "GET" and entry["route"] == "/users/{user_id}"
    assert entry["status"] == 404 and entry["latency_ms"] >= 0
    assert entry["api_key_name"] == "logged-key" and entry["api_key_prefix"] == "sk_live_****"


def test_zz_no_key_in_any_log(api: Api, cluster: Any) -> None:
    """Runs last in this module: every key it issued or sent, searched for in the server's log
    and in PostgreSQL's (which logged every statement with its parameters)."""
    server_log = api.server.log_text()
    database_log = cluster_log(cluster)
    assert len(api.server.keys) > 10
    # The statements are there, with their parameters: the hashes, never the keys.
    assert key_hash(api.server.keys[0]) in database_log
    for key in api.server.keys:
        assert key not in server_log
        assert key not in database_log
        assert key[8:24] not in server_log
    assert "sk_live_****" in server_log
    lines = [line for line in server_log.splitlines() if line.strip()]
    assert all(json.loads(line) for line in lines)
