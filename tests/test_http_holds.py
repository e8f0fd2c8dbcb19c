"""Holds over HTTP against the real server: POST /holds, /holds/{id}/capture, /holds/{id}/void,
GET /holds/{id}; the available balance; every error of the routes; idempotency; the feed; and
maintenance releasing an expired hold within one interval."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from conftest import Cluster
from http_fixtures import Api, serve_fresh_database
from test_http_api import UUID_RE, all_events, expect_error


@pytest.fixture(scope="module")
def admin_key(api: Api) -> str:
    return api.key(["admin"], name="http-holds-admin")


def wallet(api: Api, key: str, user: str) -> dict[str, str]:
    response = api.request("GET", f"/users/{user}/balance", key)
    assert response.status_code == 200, response.text
    body = response.json()
    return {name: body[name] for name in ("balance", "available", "held")}


def hold(api: Api, key: str, sender: str, receiver: str, amount: str, **fields: Any) -> Any:
    body = {"from_user_id": sender, "to_user_id": receiver, "amount": amount} | fields
    return api.request("POST", "/holds", key, body, acting_user=sender)


def pair(api: Api, key: str, amount: str = "100") -> tuple[str, str]:
    sender = api.new_user(key)["user_id"]
    receiver = api.new_user(key)["user_id"]
    api.mint(key, sender, amount)
    return sender, receiver


def test_purchase_hold_capture_part_release_rest(api: Api, admin_key: str) -> None:
    alice, shop = pair(api, admin_key)
    created = hold(api, admin_key, alice, shop, "30", memo="order 17")
    assert created.status_code == 201, created.text
    h = created.json()
    assert UUID_RE.match(h["hold_id"])
    assert (h["status"], h["amount"], h["captured_amount"], h["memo"]) == (
        "pending",
        "30.00000000",
        "0.00000000",
        "order 17",
    )
    expires = datetime.fromisoformat(h["expires_at"]) - datetime.fromisoformat(h["created_at"])
    assert expires == timedelta(hours=1)
    assert wallet(api, admin_key, alice) == {
        "balance": "100.00000000",
        "available": "70.00000000",
        "held": "30.00000000",
    }
    assert api.request("GET", f"/holds/{h['hold_id']}", admin_key).json() == h
    past = api.request(
        "GET", f"/users/{alice}/balance", admin_key, params={"as_of": h["created_at"]}
    ).json()
    assert past["balance"] == "100.00000000" and "available" not in past  # the posted balance

    captured = api.request(
        "POST", f"/holds/{h['hold_id']}/capture", admin_key, {"amount": "20"}, acting_user=shop
    )
    assert captured.status_code == 200, captured.text
    c = captured.json()
    assert (c["status"], c["captured_amount"], c["amount"]) == (
        "captured",
        "20.00000000",
        "30.00000000",
    )
    assert UUID_RE.match(c["transfer_id"])
    assert wallet(api, admin_key, alice) == {
        "balance": "80.00000000",
        "available": "80.00000000",
        "held": "0.00000000",
    }
    assert wallet(api, admin_key, shop)["balance"] == "20.00000000"
    assert api.request("GET", f"/holds/{h['hold_id']}", admin_key).json() == c

    transfer = api.request("GET", f"/transfers/{c['transfer_id']}", admin_key).json()
    assert (transfer["from_user_id"], transfer["to_user_id"], transfer["amount"]) == (
        alice,
        shop,
        "20.00000000",
    )
    for user, kind in ((alice, "transfer_out"), (shop, "transfer_in")):
        item = api.request("GET", f"/users/{user}/history", admin_key).json()["items"][0]
        assert (item["id"], item["kind"], item["hold_id"]) == (c["transfer_id"], kind, h["hold_id"])

    again = api.request(
        "POST", f"/holds/{h['hold_id']}/capture", admin_key, {"amount": "5"}, acting_user=shop
    )
    expect_error(again, 409, "hold_not_pending")
    voided = api.request("POST", f"/holds/{h['hold_id']}/void", admin_key, acting_user=alice)
    expect_error(voided, 409, "hold_not_pending")

    events = [e for e in all_events(api, admin_key) if e["aggregate_id"] == h["hold_id"]]
    assert [e["event_type"] for e in events] == ["HoldCreated", "HoldCaptured"]
    actions = api.dba.execute(
        "SELECT action FROM ledger.audit_log WHERE resource_id = %s ORDER BY id", [h["hold_id"]]
    ).fetchall()
    assert actions == [("hold.create",), ("hold.capture",)]


def test_capture_all_by_default_and_void(api: Api, admin_key: str) -> None:
    alice, bob = pair(api, admin_key)
    first = hold(api, admin_key, alice, bob, "10").json()
    whole = api.request("POST", f"/holds/{first['hold_id']}/capture", admin_key, acting_user=alice)
    assert whole.status_code == 200, whole.text
    assert whole.json()["captured_amount"] == "10.00000000"

    second = hold(api, admin_key, alice, bob, "40").json()
    with_reason = api.request(
        "POST", f"/holds/{second['hold_id']}/void", admin_key, {"reason": "x"}, acting_user=bob
    )
    expect_error(with_reason, 400, "invalid_request")
    assert with_reason.json()["message"] == "unknown field(s): reason; this request takes no fields"
    voided = api.request("POST", f"/holds/{second['hold_id']}/void", admin_key, acting_user=bob)
    assert voided.status_code == 200, voided.text
    assert (voided.json()["status"], voided.json()["captured_amount"]) == ("voided", "0.00000000")
    assert wallet(api, admin_key, alice) == {
        "balance": "90.00000000",
        "available": "90.00000000",
        "held": "0.00000000",
    }


def test_reserved_money_cannot_be_spent(api: Api, admin_key: str) -> None:
    alice, bob = pair(api, admin_key)
    assert hold(api, admin_key, alice, bob, "60").status_code == 201
    over = "40.00000001"
    transfer = {"from_user_id": alice, "to_user_id": bob, "amount": over}
    expect_error(
        api.request("POST", "/transfers", admin_key, transfer, acting_user=alice),
        400,
        "insufficient_balance",
    )
    burn = {"from_user_id": alice, "amount": over, "reason": "x"}
    expect_error(api.request("POST", "/admin/burn", admin_key, burn), 400, "insufficient_balance")
    expect_error(hold(api, admin_key, alice, bob, over), 400, "insufficient_balance")
    assert wallet(api, admin_key, alice)["available"] == "40.00000000"


def test_hold_errors(api: Api, admin_key: str) -> None:
    alice, bob = pair(api, admin_key)
    carol = api.new_user(admin_key)["user_id"]
    body = {"from_user_id": alice, "to_user_id": bob, "amount": "1"}
    expect_error(
        api.request("POST", "/holds", admin_key, body, acting_user=bob),
        403,
        "unauthorized_transfer",
    )
    for wrong in (
        {"expires_in_seconds": 0},
        {"expires_in_seconds": 2592001},
        {"amount": 1},
        {"amount": "0"},
        {"to_user_id": alice},
        {"surprise": 1},
    ):
        expect_error(
            api.request("POST", "/holds", admin_key, body | wrong, acting_user=alice),
            400,
            "invalid_request",
        )
    expect_error(hold(api, admin_key, alice, str(uuid.uuid4()), "1"), 404, "user_not_found")
    expect_error(api.request("GET", f"/holds/{uuid.uuid4()}", admin_key), 404, "not_found")
    for action in ("capture", "void"):
        expect_error(
            api.request("POST", f"/holds/{uuid.uuid4()}/{action}", admin_key, acting_user=alice),
            404,
            "not_found",
        )

    h = hold(api, admin_key, alice, bob, "10", expires_in_seconds=2592000).json()
    for action in ("capture", "void"):
        expect_error(
            api.request("POST", f"/holds/{h['hold_id']}/{action}", admin_key, acting_user=carol),
            403,
            "unauthorized_transfer",
        )
    expect_error(
        api.request(
            "POST", f"/holds/{h['hold_id']}/capture", admin_key, {"amount": "10.5"}, acting_user=bob
        ),
        400,
        "invalid_request",
    )

    # Frozen: no hold towards it, no capture into it; voiding is allowed.
    api.request("POST", f"/admin/users/{bob}/freeze", admin_key)
    expect_error(hold(api, admin_key, alice, bob, "1"), 400, "account_frozen")
    expect_error(
        api.request("POST", f"/holds/{h['hold_id']}/capture", admin_key, acting_user=bob),
        400,
        "account_frozen",
    )
    voided = api.request("POST", f"/holds/{h['hold_id']}/void", admin_key, acting_user=bob)
    assert voided.status_code == 200, voided.text
    api.request("POST", f"/admin/users/{bob}/unfreeze", admin_key)

    # Pending holds keep both users from being deleted.
    dave = api.new_user(admin_key)["user_id"]
    pending = hold(api, admin_key, alice, dave, "1").json()
    expect_error(api.request("DELETE", f"/users/{dave}", admin_key), 409, "pending_holds")
    api.request("POST", f"/holds/{pending['hold_id']}/void", admin_key, acting_user=dave)
    assert api.request("DELETE", f"/users/{dave}", admin_key).status_code == 200


def test_idempotency(api: Api, admin_key: str) -> None:
    alice, bob = pair(api, admin_key)
    key = str(uuid.uuid4())
    body = {"from_user_id": alice, "to_user_id": bob, "amount": "5"}
    first = api.request("POST", "/holds", admin_key, body, idempotency_key=key, acting_user=alice)
    again = api.request("POST", "/holds", admin_key, body, idempotency_key=key, acting_user=alice)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert wallet(api, admin_key, alice)["held"] == "5.00000000"
    expect_error(
        api.request(
            "POST",
            "/holds",
            admin_key,
            body | {"amount": "6"},
            idempotency_key=key,
            acting_user=alice,
        ),
        409,
        "idempotency_conflict",
    )
    path = f"/holds/{first.json()['hold_id']}/capture"
    capture_key = str(uuid.uuid4())
    one = api.request(
        "POST", path, admin_key, {"amount": "2"}, idempotency_key=capture_key, acting_user=bob
    )
    two = api.request(
        "POST", path, admin_key, {"amount": "2"}, idempotency_key=capture_key, acting_user=bob
    )
    assert one.status_code == two.status_code == 200 and one.json() == two.json()
    assert two.headers["idempotent-replayed"] == "true"
    assert wallet(api, admin_key, bob)["balance"] == "2.00000000"
    # A null the function receives as absent is the same request: a retry that writes the
    # optional amount as null, or leaves it out, replays.
    other = hold(api, admin_key, alice, bob, "1").json()
    whole_key = str(uuid.uuid4())
    path = f"/holds/{other['hold_id']}/capture"
    whole = api.request("POST", path, admin_key, idempotency_key=whole_key, acting_user=bob)
    null = api.request(
        "POST", path, admin_key, {"amount": None}, idempotency_key=whole_key, acting_user=bob
    )
    assert whole.status_code == null.status_code == 200, null.text
    assert null.headers["idempotent-replayed"] == "true" and null.json() == whole.json()
    assert wallet(api, admin_key, bob)["balance"] == "3.00000000"


def test_expired_hold(api: Api, admin_key: str) -> None:
    alice, bob = pair(api, admin_key)
    h = hold(api, admin_key, alice, bob, "25", expires_in_seconds=1).json()
    time.sleep(1.2)
    assert api.request("GET", f"/holds/{h['hold_id']}", admin_key).json()["status"] == "expired"
    for action in ("capture", "void"):
        expect_error(
            api.request("POST", f"/holds/{h['hold_id']}/{action}", admin_key, acting_user=alice),
            409,
            "hold_not_pending",
        )
    assert wallet(api, admin_key, alice)["available"] == "75.00000000"  # not released yet
    # It no longer keeps its receiver from being deleted; its sender's balance still holds it.
    delete = api.request("DELETE", f"/users/{bob}", admin_key)
    assert delete.status_code == 200, delete.text
    burn = api.request("POST", "/admin/burn", admin_key, {"from_user_id": alice, "amount": "75"})
    assert burn.status_code == 201, burn.text
    expect_error(api.request("DELETE", f"/users/{alice}", admin_key), 409, "balance_not_zero")
    api.mint(admin_key, alice, "75")
    api.dba.execute("SELECT api.run_maintenance()")
    assert wallet(api, admin_key, alice) == {
        "balance": "100.00000000",
        "available": "100.00000000",
        "held": "0.00000000",
    }
    assert api.dba.execute("SELECT api.verify_projections() ->> 'ok'").fetchone() == ("true",)


def test_maintenance_releases_expired_holds_within_an_interval(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with serve_fresh_database(cluster, log_path, MAINTENANCE_INTERVAL="1") as api:
        key = api.key(["admin"])
        alice, bob = pair(api, key, "10")
        assert hold(api, key, alice, bob, "10", expires_in_seconds=1).status_code == 201
        assert wallet(api, key, alice)["available"] == "0.00000000"
        deadline = time.monotonic() + 1 + 1 + 2  # expiry, one interval, slack for a busy machine
        while wallet(api, key, alice)["available"] != "10.00000000":
            assert time.monotonic() < deadline, "the expired hold was not released"
            time.sleep(0.1)


def test_a_hold_without_a_sender_is_incomplete_not_unauthorized(api: Api, admin_key: str) -> None:
    alice, bob = pair(api, admin_key)
    body = {"to_user_id": bob, "amount": "5"}
    response = expect_error(
        api.request("POST", "/holds", admin_key, body, acting_user=alice), 400, "invalid_request"
    )
    assert response["message"] == "from_user_id is required"
    other = api.request(
        "POST", "/holds", admin_key, body | {"from_user_id": alice}, acting_user=bob
    )
    message = expect_error(other, 403, "unauthorized_transfer")["message"]
    assert "X-Request-User-Id" in message
