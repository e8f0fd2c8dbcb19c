"""The HTTP API against a small model in Python, driven by hypothesis's stateful testing: users
are created, funded, drained, frozen, unfrozen and deleted, money moves between them, used
idempotency keys come back (with the same request: a replay; with another: a conflict), and
every status, error code, body and balance is checked against the model after every step.

Bounded for `make test` (HYPOTHESIS_PROFILE unset: a few hundred steps, well under a minute);
`make faults` runs HYPOTHESIS_PROFILE=faults, about seven times as many examples.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import url
from http_fixtures import Api, cluster_log, serve_fresh_database
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

PROFILES = {
    "default": settings(
        max_examples=12,
        stateful_step_count=25,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    ),
    "faults": settings(
        max_examples=80,
        stateful_step_count=40,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    ),
}
PROFILE = PROFILES[os.environ.get("HYPOTHESIS_PROFILE", "default")]

EIGHT = Decimal("0.00000001")
amounts = st.decimals(
    min_value=Decimal("0.00000001"), max_value=Decimal("500"), places=8, allow_nan=False
).map(lambda d: d.quantize(EIGHT))


def text(amount: Decimal) -> str:
    return f"{amount.quantize(EIGHT):f}"


@dataclass
class Wallet:
    balance: Decimal = Decimal(0)
    frozen: bool = False
    deleted: bool = False


@dataclass
class Sent:
    """A write that succeeded, with everything needed to send it again."""

    method: str
    path: str
    body: Any
    key: str
    acting: str | None
    status: int
    answer: Any


@dataclass
class Model:
    wallets: dict[str, Wallet] = field(default_factory=dict)

    def error(self, user: str, *, sending: bool = False, receiving: bool = False) -> str | None:
        wallet = self.wallets[user]
        if wallet.deleted:
            return "user_not_found"
        if wallet.frozen and (sending or receiving):
            return "account_frozen"
        return None


STATUS = {
    "user_not_found": 404,
    "account_frozen": 400,
    "insufficient_balance": 400,
    "balance_not_zero": 409,
    "invalid_request": 400,
    "idempotency_conflict": 409,
}


@pytest.fixture(scope="module")
def model_api(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    log = Path(tmp_path_factory.mktemp("model")) / "server.log"
    with serve_fresh_database(cluster, log) as api:
        yield api


def test_http_api_against_a_model(model_api: Api) -> None:
    api = model_api
    admin = api.key(["read", "write", "admin"], name="model-admin")

    class Ledger(RuleBasedStateMachine):
        users = Bundle("users")
        writes = Bundle("writes")

        def __init__(self) -> None:
            super().__init__()
            self.model = Model()

        # --- calling the API ---------------------------------------------------------------

        def write(
            self, method: str, path: str, body: Any, acting: str | None = None
        ) -> tuple[Any, Sent]:
            key = str(uuid.uuid4())
            response = api.request(
                method, path, admin, body, idempotency_key=key, acting_user=acting
            )
            assert response.headers.get("idempotent-replayed") is None, response.headers
            answer = response.json() if response.content else None
            return response, Sent(method, path, body, key, acting, response.status_code, answer)

        def expect(self, response: Any, error: str | None, success: int) -> None:
            if error is None:
                assert response.status_code == success, response.text
            else:
                assert response.status_code == STATUS[error], (error, response.text)
                assert response.json()["error"] == error, (error, response.text)

        def stored(self, sent: Sent, error: str | None) -> Any:
            return multiple(sent) if error is None else multiple()

        # --- rules -------------------------------------------------------------------------

        @precondition(lambda self: len(self.model.wallets) < 5)
        @rule(target=users)
        def create_user(self) -> str:
            user = str(uuid.uuid4())
            suffix = uuid.uuid4().hex[:10]
            body = {
                "user_id": user,
                "username": f"model_{suffix}",
                "email": f"model_{suffix}@example.com",
                "display_name": "Model",
            }
            response, _ = self.write("POST", "/users", body)
            assert response.status_code == 201, response.text
            answer = response.json()
            assert answer["user_id"] == user and answer["balance"] == "0.00000000", answer
            self.model.wallets[user] = Wallet()
            return user

        @rule(target=writes, user=users, amount=amounts)
        def mint(self, user: str, amount: Decimal) -> Any:
            body = {"to_user_id": user, "amount": text(amount), "reason": "model"}
            response, sent = self.write("POST", "/admin/mint", body)
            error = self.model.error(user, receiving=True)
            self.expect(response, error, 201)
            if error is None:
                assert response.json()["amount"] == text(amount), response.text
                self.model.wallets[user].balance += amount
            return self.stored(sent, error)

        @rule(target=writes, user=users, amount=amounts, everything=st.booleans())
        def burn(self, user: str, amount: Decimal, everything: bool) -> Any:
            wallet = self.model.wallets[user]
            if everything and wallet.balance > 0:
                amount = wallet.balance
            body = {"from_user_id": user, "amount": text(amount), "reason": "model"}
            response, sent = self.write("POST", "/admin/burn", body)
            error = self.model.error(user, sending=True)
            if error is None and amount > wallet.balance:
                error = "insufficient_balance"
            self.expect(response, error, 201)
            if error is None:
                wallet.balance -= amount
            return self.stored(sent, error)

        @rule(target=writes, sender=users, receiver=users, amount=amounts, everything=st.booleans())
        def transfer(self, sender: str, receiver: str, amount: Decimal, everything: bool) -> Any:
            source = self.model.wallets[sender]
            if everything and source.balance > 0:
                amount = source.balance
            body = {
                "from_user_id": sender,
                "to_user_id": receiver,
                "amount": text(amount),
                "memo": "model",
            }
            response, sent = self.write("POST", "/transfers", body, acting=sender)
            if sender == receiver:
                error: str | None = "invalid_request"
            else:  # both users must exist before either wallet's state matters
                error = self.model.error(sender) or self.model.error(receiver)
                error = error or self.model.error(sender, sending=True)
                error = error or self.model.error(receiver, receiving=True)
            if error is None and amount > source.balance:
                error = "insufficient_balance"
            self.expect(response, error, 201)
            if error is None:
                answer = response.json()
                assert answer["amount"] == text(amount), answer
                assert (answer["from_user_id"], answer["to_user_id"]) == (sender, receiver)
                source.balance -= amount
                self.model.wallets[receiver].balance += amount
                got = api.request("GET", f"/transfers/{answer['transfer_id']}", admin)
                assert got.status_code == 200 and got.json()["amount"] == text(amount), got.text
            return self.stored(sent, error)

        @rule(target=writes, user=users, frozen=st.booleans())
        def freeze(self, user: str, frozen: bool) -> Any:
            verb = "freeze" if frozen else "unfreeze"
            response, sent = self.write("POST", f"/admin/users/{user}/{verb}", {"reason": "model"})
            error = self.model.error(user)
            self.expect(response, error, 200)
            if error is None:
                self.model.wallets[user].frozen = frozen
                assert response.json()["is_frozen"] is frozen, response.text
            return self.stored(sent, error)

        @rule(target=writes, user=users)
        def delete(self, user: str) -> Any:
            response, sent = self.write("DELETE", f"/users/{user}", None)
            wallet = self.model.wallets[user]
            error = self.model.error(user)
            if error is None and wallet.balance != 0:
                error = "balance_not_zero"
            self.expect(response, error, 200)
            if error is None:
                wallet.deleted = True
            return self.stored(sent, error)

        @rule(sent=writes)
        def replay(self, sent: Sent) -> None:
            """The same request under its used key: the first answer again, nothing moves."""
            response = api.request(
                sent.method,
                sent.path,
                admin,
                sent.body,
                idempotency_key=sent.key,
                acting_user=sent.acting,
            )
            assert response.status_code == sent.status, response.text
            assert response.json() == sent.answer
            assert response.headers.get("idempotent-replayed") == "true", response.headers

        @rule(sent=consumes(writes), user=users)
        def conflict(self, sent: Sent, user: str) -> None:
            """Another request under a used key: 409, nothing moves."""
            body = {"to_user_id": user, "amount": "1", "reason": "conflict"}
            if sent.path == "/admin/mint" and sent.body == body:
                body["amount"] = "2"
            response = api.request("POST", "/admin/mint", admin, body, idempotency_key=sent.key)
            self.expect(response, "idempotency_conflict", 0)

        @rule(user=users)
        def read_user(self, user: str) -> None:
            response = api.request("GET", f"/users/{user}", admin)
            if self.model.wallets[user].deleted:
                self.expect(response, "user_not_found", 200)
            else:
                assert response.status_code == 200, response.text
                assert response.json()["user_id"] == user

        # --- after every step --------------------------------------------------------------

        @invariant()
        def balances_match(self) -> None:
            for user, wallet in self.model.wallets.items():
                response = api.request("GET", f"/users/{user}/balance", admin)
                if wallet.deleted:
                    self.expect(response, "user_not_found", 200)
                    continue
                assert response.status_code == 200, response.text
                answer = response.json()
                assert Decimal(answer["balance"]) == wallet.balance, (answer, wallet)
                assert answer["balance"] == text(wallet.balance), answer
                assert answer["is_frozen"] is wallet.frozen, (answer, wallet)

    run_state_machine_as_test(Ledger, settings=PROFILE)
    verify = api.dba.execute("SELECT api.verify_projections()").fetchone()
    assert verify is not None and verify[0]["ok"] is True, verify


def pg_dump_binary() -> str:
    found = shutil.which("pg_dump")
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"))
    return candidates[-1] if candidates else (found or "pg_dump")


def test_zz_no_key_in_logs_or_dump(model_api: Api, cluster: Any) -> None:
    """After the model's run (log_statement = all on its database): no key it used is in the
    server's log, PostgreSQL's log or a pg_dump of the database, while a value sent the same
    way (a correlation id) is found in each, so the search is not blind."""
    api = model_api
    correlation = f"model-control-{uuid.uuid4()}"
    key = api.key(["read", "write"], name="model-dump")
    user = api.new_user(key)
    response = api.request(
        "POST",
        "/admin/users/" + user["user_id"] + "/freeze",
        api.key(["read", "write", "admin"], name="model-freeze"),
        {"reason": "control"},
        correlation_id=correlation,
    )
    assert response.status_code == 200, response.text
    api.server.access_log(correlation)
    dump = subprocess.run(
        [pg_dump_binary(), "-d", url(api.cluster, api.database)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    places = {
        "server log": api.server.log_text(),
        "PostgreSQL log": cluster_log(cluster),
        "pg_dump": dump,
    }
    assert len(api.server.keys) >= 3
    for place, text_ in places.items():
        assert correlation in text_, place
        for secret in api.server.keys:
            assert secret not in text_, place
            assert secret[8:] not in text_, place
