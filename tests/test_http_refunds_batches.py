"""POST /transfers/{id}/refund, POST /transfers/batch and POST /admin/mint/batch over HTTP
against the real server: success bodies, every error with its code, the failing leg's index in
the error body, idempotent replays, and the OpenAPI document."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from http_fixtures import Api

FEE = "00000000-0000-0000-0000-000000000002"


@pytest.fixture(scope="module")
def admin(api: Api) -> str:
    return api.key(["admin"], name="rb-admin")


def expect_error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = dict(response.json())
    assert body["error"] == error, body
    assert body["message"], body
    return body


def funded(api: Api, admin: str, amount: str = "100") -> str:
    user = str(api.new_user(admin)["user_id"])
    api.mint(admin, user, amount)
    return user


def transfer(api: Api, admin: str, sender: str, receiver: str, amount: str) -> str:
    body = {"from_user_id": sender, "to_user_id": receiver, "amount": amount, "memo": "buy"}
    response = api.request("POST", "/transfers", admin, body, acting_user=sender)
    assert response.status_code == 201, response.text
    return str(response.json()["transfer_id"])


def refund(api: Api, key: str, transfer_id: str, acting: str | None, body: Any = None,
           **kwargs: Any) -> httpx.Response:  # fmt: skip
    return api.request("POST", f"/transfers/{transfer_id}/refund", key, body, acting_user=acting,
                       **kwargs)  # fmt: skip


# --- refunds -------------------------------------------------------------------------------


def test_partial_and_full_refund(api: Api, admin: str) -> None:
    alice, bob = funded(api, admin), funded(api, admin, "1")
    tid = transfer(api, admin, alice, bob, "10")
    first = refund(api, admin, tid, bob, {"amount": "2.5", "reason": "damaged"})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["transfer_id"] == tid and body["amount"] == "2.50000000"
    assert (body["from_user_id"], body["to_user_id"]) == (bob, alice)
    assert set(body) >= {"refund_id", "created_at"}
    rest = refund(api, admin, tid, bob)  # no body: all that is left
    assert rest.status_code == 201, rest.text
    assert rest.json()["amount"] == "7.50000000"
    expect_error(refund(api, admin, tid, bob, {"amount": "0.00000001"}), 400,
                 "refund_exceeds_transfer")  # fmt: skip
    expect_error(refund(api, admin, tid, bob), 400, "refund_exceeds_transfer")
    got = api.request("GET", f"/transfers/{tid}", admin).json()
    assert got["refunded_amount"] == "10.00000000"
    assert api.balance(admin, alice) == "100.00000000"
    assert api.balance(admin, bob) == "1.00000000"
    items = api.request("GET", f"/users/{bob}/history", admin).json()["items"]
    assert [i["kind"] for i in items[:3]] == ["refund_out", "refund_out", "transfer_in"]
    assert items[0]["transfer_id"] == tid and "transfer_id" not in items[2]
    sender_items = api.request("GET", f"/users/{alice}/history", admin).json()["items"]
    assert sender_items[0]["kind"] == "refund_in" and sender_items[0]["transfer_id"] == tid


def test_refund_errors(api: Api, admin: str) -> None:
    alice, bob = funded(api, admin), str(api.new_user(admin)["user_id"])
    tid = transfer(api, admin, alice, bob, "10")
    expect_error(refund(api, admin, tid, alice), 403, "unauthorized_transfer")
    expect_error(refund(api, admin, tid, None), 403, "unauthorized_transfer")
    expect_error(refund(api, admin, str(uuid.uuid4()), bob), 404, "not_found")
    expect_error(refund(api, admin, tid, bob, {"amount": "11"}), 400, "refund_exceeds_transfer")
    expect_error(refund(api, admin, tid, bob, {"amount": 1}), 400, "invalid_request")
    expect_error(refund(api, admin, tid, bob, {"amount": "-1"}), 400, "invalid_request")
    expect_error(refund(api, admin, tid, bob, {"bogus": "1"}), 400, "invalid_request")
    expect_error(refund(api, admin, "not-a-uuid", bob), 400, "invalid_request")
    expect_error(refund(api, api.key(["read"]), tid, bob), 403, "permission_denied")
    # What the receiver has spent meanwhile cannot be refunded.
    transfer(api, admin, bob, alice, "8")
    expect_error(refund(api, admin, tid, bob, {"amount": "5"}), 400, "insufficient_balance")
    api.dba.execute("SELECT api.freeze_wallet(%s)", [alice])
    expect_error(refund(api, admin, tid, bob, {"amount": "1"}), 400, "account_frozen")


def test_refund_to_a_deleted_sender_says_so(api: Api, admin: str) -> None:
    alice, bob = funded(api, admin, "10"), funded(api, admin, "1")
    tid = transfer(api, admin, alice, bob, "10")
    assert api.request("DELETE", f"/users/{alice}", admin).status_code == 200
    body = expect_error(refund(api, admin, tid, bob), 404, "user_not_found")
    assert body["message"] == (
        f"user {alice} was deleted, the transfer's sender: the refund has no wallet to return to"
    )


def test_refund_idempotency(api: Api, admin: str) -> None:
    alice, bob = funded(api, admin), str(api.new_user(admin)["user_id"])
    tid = transfer(api, admin, alice, bob, "10")
    key = str(uuid.uuid4())
    first = refund(api, admin, tid, bob, {"amount": "3"}, idempotency_key=key)
    again = refund(api, admin, tid, bob, {"amount": "3"}, idempotency_key=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    expect_error(refund(api, admin, tid, bob, {"amount": "4"}, idempotency_key=key), 409,
                 "idempotency_conflict")  # fmt: skip
    assert api.request("GET", f"/transfers/{tid}", admin).json()["refunded_amount"] == "3.00000000"


# --- batch transfers -----------------------------------------------------------------------


def batch(api: Api, key: str, sender: str, legs: Any, acting: str | None = "same",
          **kwargs: Any) -> httpx.Response:  # fmt: skip
    return api.request("POST", "/transfers/batch", key, {"from_user_id": sender, "transfers": legs},
                       acting_user=sender if acting == "same" else acting, **kwargs)  # fmt: skip


def fee_balance(api: Api) -> Any:
    row = api.dba.execute(
        "SELECT b.balance FROM ledger.balances b JOIN ledger.accounts a ON a.id = b.account_id"
        " WHERE a.user_id = %s AND a.account_type = 'fee_income'",
        [FEE],
    ).fetchone()
    assert row is not None
    return row[0]


def test_transfer_batch_with_fee(api: Api, admin: str) -> None:
    alice, bob, carol = funded(api, admin), funded(api, admin, "1"), funded(api, admin, "1")
    fee_before = fee_balance(api)
    legs = [
        {"to_user_id": bob, "amount": "90", "memo": "item"},
        {"to_user_id": FEE, "amount": "5", "memo": "fee"},
        {"to_user_id": carol, "amount": "5"},
    ]
    response = batch(api, admin, alice, legs)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["amount"] == "100.00000000" and len(body["transfers"]) == 3
    assert [t["to_user_id"] for t in body["transfers"]] == [bob, FEE, carol]
    for leg in body["transfers"]:
        got = api.request("GET", f"/transfers/{leg['transfer_id']}", admin)
        assert got.status_code == 200 and got.json()["amount"] == leg["amount"]
    assert api.balance(admin, alice) == "0.00000000"
    assert api.balance(admin, bob) == "91.00000000"
    fee_after = fee_balance(api)
    assert fee_after - fee_before == 5
    # A batch leg is a transfer like any other: its receiver can refund it, the fee's too.
    leg = body["transfers"][0]["transfer_id"]
    assert refund(api, admin, leg, bob, {"amount": "1"}).status_code == 201
    fee = body["transfers"][1]["transfer_id"]
    expect_error(refund(api, admin, fee, alice), 403, "unauthorized_transfer")
    assert refund(api, admin, fee, FEE, {"amount": "2"}).status_code == 201
    assert fee_balance(api) - fee_before == 3


def test_transfer_batch_errors_name_the_leg(api: Api, admin: str) -> None:
    alice, bob = funded(api, admin, "10"), str(api.new_user(admin)["user_id"])
    ok = {"to_user_id": bob, "amount": "1"}
    cases: list[tuple[list[Any], int, str, int]] = [
        ([ok, ok, {"to_user_id": str(uuid.uuid4()), "amount": "1"}], 404, "user_not_found", 2),
        ([ok, {"to_user_id": bob, "amount": "9.5"}], 400, "insufficient_balance", 1),
        ([ok, {"to_user_id": bob, "amount": 1}], 400, "invalid_request", 1),
        ([ok, {"to_user_id": bob}], 400, "invalid_request", 1),
        ([{"to_user_id": alice, "amount": "1"}], 400, "invalid_request", 0),
        ([ok, {"to_user_id": bob, "amount": "1", "x": 1}], 400, "invalid_request", 1),
        ([ok, "leg"], 400, "invalid_request", 1),
    ]
    for legs, status, error, index in cases:
        body = expect_error(batch(api, admin, alice, legs), status, error)
        assert body["index"] == index, body
    for amount in ("-1", "-0"):
        body = expect_error(
            batch(api, admin, alice, [ok, {"to_user_id": bob, "amount": amount}]),
            400,
            "invalid_request",
        )
        assert body["message"] == "transfers[1]: amount must be greater than 0", body
    # Zeros that change nothing, as many as a request holds; digits beyond any amount's.
    one = "1." + "0" * 20000
    tiny = "0." + "0" * 20000 + "1"
    body = expect_error(
        batch(api, admin, alice, [ok, {"to_user_id": bob, "amount": tiny}]), 400, "invalid_request"
    )
    assert body["message"] == "transfers[1].amount has more digits than any amount can have", body
    assert body["index"] == 1
    decimals = "0." + "0" * 100 + "1"
    body = expect_error(
        batch(api, admin, alice, [{"to_user_id": bob, "amount": decimals}]), 400, "invalid_request"
    )
    assert body["message"] == "transfers[0]: amount has more than 8 decimal places", body
    long_batch = batch(api, admin, alice, [{"to_user_id": bob, "amount": "0" * 20000 + one}])
    assert long_batch.status_code == 201, long_batch.text[:500]
    assert long_batch.json()["amount"] == "1.00000000"
    for legs in ([], [ok] * 101, "x"):
        body = expect_error(batch(api, admin, alice, legs), 400, "invalid_request")
        assert "index" not in body
    expect_error(batch(api, admin, alice, [ok], acting=bob), 403, "unauthorized_transfer")
    missing = api.request("POST", "/transfers/batch", admin, {"transfers": [ok]}, acting_user=alice)
    assert expect_error(missing, 400, "invalid_request")["message"] == "from_user_id is required"
    expect_error(batch(api, api.key(["read"]), alice, [ok]), 403, "permission_denied")
    api.dba.execute("SELECT api.freeze_wallet(%s)", [bob])
    body = expect_error(batch(api, admin, alice, [ok]), 400, "account_frozen")
    assert body["index"] == 0
    assert api.balance(admin, alice) == "9.00000000"


def test_transfer_batch_idempotency(api: Api, admin: str) -> None:
    alice, bob = funded(api, admin), str(api.new_user(admin)["user_id"])
    key = str(uuid.uuid4())
    legs = [{"to_user_id": bob, "amount": "1"}, {"to_user_id": bob, "amount": "2"}]
    first = batch(api, admin, alice, legs, idempotency_key=key)
    again = batch(api, admin, alice, legs, idempotency_key=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    expect_error(batch(api, admin, alice, legs[:1], idempotency_key=key), 409,
                 "idempotency_conflict")  # fmt: skip
    assert api.balance(admin, bob) == "3.00000000"


# --- batch mints ---------------------------------------------------------------------------


def test_mint_batch(api: Api, admin: str) -> None:
    users = [str(api.new_user(admin)["user_id"]) for _ in range(3)]
    legs = [{"to_user_id": u, "amount": f"{i + 1}"} for i, u in enumerate(users)]
    key = str(uuid.uuid4())
    body = {"mints": legs, "reason": "airdrop"}
    response = api.request("POST", "/admin/mint/batch", admin, body, idempotency_key=key)
    assert response.status_code == 201, response.text
    got = response.json()
    assert got["amount"] == "6.00000000" and [m["to_user_id"] for m in got["mints"]] == users
    again = api.request("POST", "/admin/mint/batch", admin, body, idempotency_key=key)
    assert again.json() == got and again.headers["idempotent-replayed"] == "true"
    assert [api.balance(admin, u) for u in users] == ["1.00000000", "2.00000000", "3.00000000"]
    audit = api.dba.execute(
        "SELECT count(*), max(jsonb_array_length(after_state -> 'mints')) FROM ledger.audit_log"
        " WHERE resource_id = %s",
        [got["batch_id"]],
    ).fetchone()
    assert audit == (1, 3)


def test_mint_batch_errors(api: Api, admin: str) -> None:
    user = str(api.new_user(admin)["user_id"])
    ok = {"to_user_id": user, "amount": "1"}
    bad = {"to_user_id": str(uuid.uuid4()), "amount": "1"}
    body = expect_error(api.request("POST", "/admin/mint/batch", admin, {"mints": [ok, bad]}), 404,
                        "user_not_found")  # fmt: skip
    assert body["index"] == 1
    body = expect_error(
        api.request("POST", "/admin/mint/batch", admin, {"mints": [ok, {**ok, "memo": "x"}]}),
        400,
        "invalid_request",
    )
    assert body["index"] == 1
    expect_error(api.request("POST", "/admin/mint/batch", admin, {"mints": [ok] * 1001}), 400,
                 "invalid_request")  # fmt: skip
    writer = api.key(["read", "write"])
    expect_error(api.request("POST", "/admin/mint/batch", writer, {"mints": [ok]}), 403,
                 "permission_denied")  # fmt: skip
    assert api.balance(admin, user) == "0.00000000"


def test_openapi_documents_the_routes(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    batch_body = document["paths"]["/transfers/batch"]["post"]["requestBody"]
    legs = batch_body["content"]["application/json"]["schema"]["properties"]["transfers"]
    assert legs["type"] == "array" and legs["maxItems"] == 100
    assert set(legs["items"]["required"]) == {"to_user_id", "amount"}
    assert "201" in document["paths"]["/transfers/{transfer_id}/refund"]["post"]["responses"]
    assert document["paths"]["/admin/mint/batch"]["post"]["requestBody"]["content"]
    assert "refund_exceeds_transfer" in document["components"]["responses"]["E400"]["description"]


def test_a_thousand_leg_mint_fits_a_request(api: Api, admin: str) -> None:
    users = [str(api.new_user(admin)["user_id"]) for _ in range(10)]
    legs = [{"to_user_id": users[i % 10], "amount": "0.00000001"} for i in range(1000)]
    response = api.request("POST", "/admin/mint/batch", admin, {"mints": legs, "reason": "airdrop"})
    assert response.status_code == 201, response.text[:500]
    assert len(response.json()["mints"]) == 1000
    assert api.balance(admin, users[0]) == "0.00000100"
