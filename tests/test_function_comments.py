"""Every api function's COMMENT is what a DBA reads first (`\\df+`): its example runs as written in
psql, and the errors it lists are the ledger's own. Each example runs in a transaction rolled
back, on a database holding alice and bob, a transfer, a hold and an API key, named by the psql
variables the comments use, set as README.md's walkthrough sets them."""

from __future__ import annotations

import re
import subprocess

import psycopg
import pytest

# psql variables the examples use.
SETUP = r"""
SELECT body ->> 'user_id' AS alice
  FROM api.create_user(gen_random_uuid(), 'alice_0', 'alice_0@example.com') \gset
SELECT body ->> 'user_id' AS bob
  FROM api.create_user(gen_random_uuid(), 'bob_0', 'bob_0@example.com') \gset
SELECT status FROM api.mint(:'alice', 1000, 'setup');
SELECT status FROM api.mint(:'bob', 1000, 'setup');
SELECT body ->> 'transfer_id' AS transfer_id
  FROM api.transfer(:'alice', :'bob', 100, request_user_id => :'alice') \gset
SELECT body ->> 'hold_id' AS hold_id
  FROM api.create_hold(from_user_id => :'alice', to_user_id => :'bob', amount => 50,
                       request_user_id => :'alice') \gset
SELECT api.create_api_key('comments', ARRAY['read'], 60, NULL) ->> 'id' AS key_id \gset
-- As README.md sets them: users quoted by \set, ids as \gset leaves them (:'hold_id').
\set alice '''' :alice ''''
\set bob '''' :bob ''''
"""

# Examples that show a placeholder where the DBA puts a value of their own (a key they were
# given), or that cannot succeed beside the others' data: the error each must reach instead.
EXPECTED_ERRORS = {
    "authenticate": "L4011",  # sk_live_... is not a key
    "delete_user": "L4096",  # alice's pending hold, which the hold examples need
    "get_balance": "L4041",  # as of a day ago: the users are seconds old
}


def comments(database: str) -> dict[str, str]:
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT p.proname, obj_description(p.oid, 'pg_proc') FROM pg_proc p"
            " WHERE p.pronamespace = 'api'::regnamespace ORDER BY 1"
        ).fetchall()
    return {name: text or "" for name, text in rows}


def codes(database: str) -> set[str]:
    with psycopg.connect(database) as conn:
        return {row[0] for row in conn.execute("SELECT sqlstate FROM api.error_codes()")}


def example(comment: str) -> str:
    """The SQL after 'Example:' to the end of the comment."""
    found = re.search(r"Example:\s*(.*)\Z", comment, re.DOTALL)
    return found.group(1).strip() if found else ""


def psql(database: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", database, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )


def test_every_api_function_has_an_example_and_lists_only_ledger_errors(database: str) -> None:
    known = codes(database)
    for name, comment in comments(database).items():
        assert example(comment).startswith("SELECT"), f"api.{name}: no example in its comment"
        listed = set(re.findall(r"\bL[0-9]{4}\b", comment))
        assert listed <= known, (
            f"api.{name} lists codes that are not the ledger's: {listed - known}"
        )


def test_every_example_runs_as_written(database: str) -> None:
    failures = []
    for name, comment in comments(database).items():
        sql = example(comment)
        result = psql(database, f"BEGIN;\n{SETUP}\n{sql}\nROLLBACK;\n")
        state = re.search(r"ERROR:\s+([0-9A-Z]{5}):", result.stderr)
        reached = state.group(1) if state else None
        if reached != EXPECTED_ERRORS.get(name):
            failures.append(
                f"api.{name}: {reached or 'ran'}, not {EXPECTED_ERRORS.get(name)}\n"
                f"{sql}\n{result.stderr.strip()}"
            )
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_an_expected_error_is_the_one_the_function_lists(database: str, name: str) -> None:
    """An example allowed to fail fails with an error its own comment names."""
    assert EXPECTED_ERRORS[name] in comments(database)[name]
