"""The order of the fields of every JSON answer over HTTP, against the real server: each body's
keys, and each nested item's, come in the order of the properties of the route's response schema
in GET /openapi.json (ids first), as the database's json bodies and the HTTP layer's error bodies
write them; a replayed response is the first one's text. (jsonb, which the bodies were built
with before, orders keys by length: {"memo", "amount", "status", ...}.)"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from http_fixtures import Api

from financeatp.operations import OPERATIONS

FEE = "00000000-0000-0000-0000-000000000002"


@pytest.fixture(scope="module")
def admin(api: Api) -> str:
    return api.key(["admin"], name="order-admin")


@pytest.fixture(scope="module")
def document(api: Api) -> dict[str, Any]:
    response = api.client.get("/openapi.json")
    assert response.status_code == 200, response.text
    return dict(response.json())


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A schema or response with its $ref (#/components/...) followed."""
    while "$ref" in node:
        path = node["$ref"].removeprefix("#/").split("/")
        node = document
        for part in path:
            node = node[part]
    return node


def response_schema(document: dict[str, Any], method: str, path: str, status: int) -> Any:
    """The schema of the route's answer with this status, as /openapi.json documents it."""
    operation = document["paths"][path][method.lower()]
    response = resolve(document, operation["responses"][str(status)])
    return resolve(document, response["content"]["application/json"]["schema"])


def pairs(text: str) -> Any:
    """The JSON text with every object as its list of (key, value) pairs, in the text's order."""
    return json.loads(text, object_pairs_hook=list)


def check_order(document: dict[str, Any], schema: dict[str, Any], value: Any, where: str) -> int:
    """Asserts that every object in value lists only the schema's properties, in the schema's
    order (an optional one may be absent), down through nested objects and array items. Returns
    how many objects were checked, so that a test knows it looked at something."""
    schema = resolve(document, schema)
    if schema.get("type") == "array" and isinstance(value, list):
        return sum(
            check_order(document, schema["items"], item, f"{where}[{n}]")
            for n, item in enumerate(value)
        )
    if "properties" not in schema or not isinstance(value, list):
        return 0  # a scalar, or an object without documented properties (an event's data)
    properties = list(schema["properties"])
    keys = [key for key, _ in value]
    assert set(keys) <= set(properties), f"{where}: {keys} has fields not in {properties}"
    assert keys == [name for name in properties if name in keys], (
        f"{where}: the fields {keys} are not in the schema's order {properties}"
    )
    assert set(schema.get("required", ())) <= set(keys), f"{where}: {keys} lacks a required field"
    return 1 + sum(
        check_order(document, schema["properties"][key], item, f"{where}.{key}")
        for key, item in value
    )


class Checker:
    """Sends requests and checks each answer's field order against /openapi.json."""

    def __init__(self, api: Api, document: dict[str, Any]) -> None:
        self.api = api
        self.document = document
        self.checked: set[tuple[str, str, int]] = set()

    def __call__(
        self, method: str, template: str, status: int, key: str, body: Any = None, **path: str
    ) -> tuple[httpx.Response, dict[str, Any]]:
        options = {
            name: path.pop(name) for name in ("acting_user", "idempotency_key") if name in path
        }
        response = self.api.request(method, template.format(**path), key, body, **options)
        self.expect(response, method, template, status)
        return response, dict(response.json())

    def expect(self, response: httpx.Response, method: str, template: str, status: int) -> None:
        assert response.status_code == status, response.text
        schema = response_schema(self.document, method, template, status)
        objects = check_order(self.document, schema, pairs(response.text), f"{method} {template}")
        assert objects >= 1, response.text
        self.checked.add((method, template, status))


@pytest.fixture(scope="module")
def check(api: Api, document: dict[str, Any]) -> Checker:
    return Checker(api, document)


def test_users_answer_in_schema_order(api: Api, admin: str, check: Checker) -> None:
    user_id = str(uuid.uuid4())
    body = {
        "user_id": user_id,
        "username": f"order_{uuid.uuid4().hex[:8]}",
        "email": f"order_{uuid.uuid4().hex[:8]}@example.com",
        "display_name": "Order",
    }
    created, _ = check("POST", "/users", 201, admin, body)
    assert created.text.startswith('{"user_id"'), created.text
    check("GET", "/users/{user_id}", 200, admin, user_id=user_id)
    check("PATCH", "/users/{user_id}", 200, admin, {"display_name": "O"}, user_id=user_id)
    check("POST", "/admin/users/{user_id}/freeze", 200, admin, {"reason": "check"}, user_id=user_id)
    check("POST", "/admin/users/{user_id}/unfreeze", 200, admin, user_id=user_id)
    _, deleted = check("DELETE", "/users/{user_id}", 200, admin, user_id=user_id)
    assert list(deleted) == ["user_id", "status", "deleted_at"]


def test_money_answers_in_schema_order(api: Api, admin: str, check: Checker) -> None:
    alice = str(api.new_user(admin)["user_id"])
    bob = str(api.new_user(admin)["user_id"])
    _, minted = check(
        "POST", "/admin/mint", 201, admin, {"to_user_id": alice, "amount": "100", "reason": "r"}
    )
    assert list(minted) == ["mint_id", "status", "to_user_id", "amount", "reason", "created_at"]
    sent = {"from_user_id": alice, "to_user_id": bob, "amount": "10", "memo": "lunch"}
    posted, transfer = check("POST", "/transfers", 201, admin, sent, acting_user=alice)
    assert posted.text.startswith('{"transfer_id"'), posted.text
    assert list(transfer) == [
        "transfer_id", "status", "from_user_id", "to_user_id", "amount", "memo", "created_at",
    ]  # fmt: skip
    refund = {"amount": "2", "reason": "damaged"}
    check(
        "POST", "/transfers/{transfer_id}/refund", 201, admin, refund,
        transfer_id=transfer["transfer_id"], acting_user=bob,
    )  # fmt: skip
    _, got = check(
        "GET", "/transfers/{transfer_id}", 200, admin, transfer_id=transfer["transfer_id"]
    )
    assert list(got)[-1] == "refunded_amount" and got["refunded_amount"] == "2.00000000"
    burn = {"from_user_id": alice, "amount": "1", "reason": "r"}
    check("POST", "/admin/burn", 201, admin, burn)
    legs = [{"to_user_id": bob, "amount": "3", "memo": "item"}, {"to_user_id": FEE, "amount": "1"}]
    _, batch = check(
        "POST", "/transfers/batch", 201, admin, {"from_user_id": alice, "transfers": legs},
        acting_user=alice,
    )  # fmt: skip
    assert len(batch["transfers"]) == 2
    mints = {"mints": [{"to_user_id": alice, "amount": "5"}, {"to_user_id": bob, "amount": "6"}]}
    _, minted_batch = check("POST", "/admin/mint/batch", 201, admin, mints | {"reason": "drop"})
    assert len(minted_batch["mints"]) == 2

    _, now = check("GET", "/users/{user_id}/balance", 200, admin, user_id=alice)
    assert "available" in now and "as_of" not in now
    past = api.request(
        "GET", f"/users/{alice}/balance", admin, params={"as_of": transfer["created_at"]}
    )
    check.expect(past, "GET", "/users/{user_id}/balance", 200)
    assert "as_of" in past.json() and "available" not in past.json()
    # Bob's history holds a refund (with transfer_id) and batch legs; alice's a captured hold below.
    _, history = check("GET", "/users/{user_id}/history", 200, admin, user_id=bob)
    assert any("transfer_id" in item for item in history["items"]), history


def test_holds_answer_in_schema_order(api: Api, admin: str, check: Checker) -> None:
    alice = str(api.new_user(admin)["user_id"])
    shop = str(api.new_user(admin)["user_id"])
    api.mint(admin, alice, "50")
    reserve = {"from_user_id": alice, "to_user_id": shop, "amount": "30", "memo": "order 17"}
    _, held = check("POST", "/holds", 201, admin, reserve, acting_user=alice)
    assert list(held)[:2] == ["hold_id", "status"]
    check("GET", "/holds/{hold_id}", 200, admin, hold_id=held["hold_id"])
    _, captured = check(
        "POST", "/holds/{hold_id}/capture", 200, admin, {"amount": "20"},
        hold_id=held["hold_id"], acting_user=shop,
    )  # fmt: skip
    assert captured["status"] == "captured"
    _, other = check("POST", "/holds", 201, admin, reserve | {"amount": "5"}, acting_user=alice)
    check("POST", "/holds/{hold_id}/void", 200, admin, hold_id=other["hold_id"], acting_user=alice)
    _, history = check("GET", "/users/{user_id}/history", 200, admin, user_id=alice)
    assert "hold_id" in history["items"][0], history


def test_event_feed_answers_in_schema_order(api: Api, admin: str, check: Checker) -> None:
    api.mint(admin, str(api.new_user(admin)["user_id"]), "1")
    response = api.request("GET", "/admin/events", admin, params={"limit": 1000})
    check.expect(response, "GET", "/admin/events", 200)
    kinds = {event["event_type"] for event in response.json()["events"]}
    assert {"UserCreated", "AccountOpened", "AccountCredited"} <= kinds, kinds


def test_errors_answer_in_schema_order(api: Api, admin: str, check: Checker) -> None:
    # From the database, from the HTTP layer, with a failing leg's index, with retry_after.
    missing = check("GET", "/users/{user_id}", 404, admin, user_id=str(uuid.uuid4()))[1]
    assert list(missing) == ["error", "message"]
    malformed = api.request(
        "POST", "/admin/mint", admin, {"to_user_id": str(uuid.uuid4()), "amount": "1"},
        headers={"Idempotency-Key": "not-a-uuid"},
    )  # fmt: skip
    check.expect(malformed, "POST", "/admin/mint", 400)
    assert list(malformed.json()) == ["error", "message"]
    sender = str(api.new_user(admin)["user_id"])
    api.mint(admin, sender, "5")
    legs = [{"to_user_id": FEE, "amount": "1"}, {"to_user_id": str(uuid.uuid4()), "amount": "1"}]
    _, leg = check(
        "POST", "/transfers/batch", 404, admin, {"from_user_id": sender, "transfers": legs},
        acting_user=sender,
    )  # fmt: skip
    assert list(leg) == ["error", "message", "index"] and leg["index"] == 1
    slow = api.key(["read"], rate_limit=1, name="order-slow")
    statuses = []
    for _ in range(2):
        response = api.request("GET", f"/users/{sender}", slow)
        statuses.append(response.status_code)
    assert statuses == [200, 429]
    check.expect(response, "GET", "/users/{user_id}", 429)
    assert list(response.json()) == ["error", "message", "retry_after"]


def test_a_replay_answers_the_first_text(api: Api, admin: str, check: Checker) -> None:
    """Through each way a response is stored: a user's (ledger.idempotency_store), a transfer's
    (ledger.post_transfer), a hold's (ledger.post_hold) and a batch's (ledger.post_journal)."""
    alice = str(api.new_user(admin)["user_id"])
    bob = str(api.new_user(admin)["user_id"])
    api.mint(admin, alice, "10")
    name = f"again_{uuid.uuid4().hex[:8]}"
    user = {"user_id": str(uuid.uuid4()), "username": name, "email": f"{name}@example.com"}
    requests: list[tuple[str, Any, str | None]] = [
        ("/users", user, None),
        ("/transfers", {"from_user_id": alice, "to_user_id": bob, "amount": "1.5"}, alice),
        ("/holds", {"from_user_id": alice, "to_user_id": bob, "amount": "2"}, alice),
        ("/admin/mint/batch", {"mints": [{"to_user_id": bob, "amount": "1"}]}, None),
    ]
    for path, body, acting in requests:
        key = str(uuid.uuid4())
        first = api.request("POST", path, admin, body, acting_user=acting, idempotency_key=key)
        replay = api.request("POST", path, admin, body, acting_user=acting, idempotency_key=key)
        assert first.status_code == 201 and "idempotent-replayed" not in first.headers, first.text
        assert replay.headers.get("idempotent-replayed") == "true", replay.headers
        check.expect(replay, "POST", path, first.status_code)
        assert replay.text == first.text, path


def test_zz_every_route_was_checked(check: Checker) -> None:
    """Every route of the contract had its success answer checked above."""
    routes = {(op.method, op.path, op.success) for op in OPERATIONS}
    assert routes <= check.checked, sorted(routes - check.checked)
