"""The operator commands as an operator runs them: `oslira accounts create|list`,
`oslira tokens issue`, `oslira credits grant`. Refusals are one clear line and a non-zero
exit, and change nothing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from uuid import uuid4

import pytest

from cli import stack
from tests.helpers import process_env


@pytest.fixture(scope="module")
def oslira(settings) -> Iterator:
    """Runs `oslira ARGS...` against the test servers; returns the completed process."""
    with tempfile.TemporaryDirectory() as home:
        base = {**os.environ, **process_env(settings, home)}

        async def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
            # In a thread: the session's in-process worker shares this event loop.
            return await asyncio.to_thread(
                subprocess.run,
                stack.oslira_command(*args),
                env=base | env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        yield run


def _refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


async def _accounts_named(system_pool, name: str) -> int:
    return await system_pool.fetchval("SELECT count(*) FROM accounts WHERE name = $1", name)


async def test_accounts_create_makes_a_working_account(oslira, api, system_pool):
    name = f"Acme {uuid4().hex[:6]}"
    email = f"owner-{uuid4().hex[:6]}@acme.test"
    result = await oslira("accounts", "create", "--name", name, "--credits", "7", "--email", email)
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    headers = {"Authorization": f"Bearer {created['token']}"}
    balance = await api.get("/api/credits/balance", headers=headers)
    assert balance.json() == {"account_id": created["account_id"], "balance": 7}
    profile = await api.get(
        f"/api/business-profiles/{created['business_profile_id']}", headers=headers
    )
    assert profile.status_code == 200

    listed = await oslira("accounts", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    mine = next(r for r in rows if r["account_id"] == created["account_id"])
    assert (mine["name"], mine["balance"], mine["members"]) == (name, 7, 1)
    table = await oslira("accounts", "list")
    assert name in table.stdout and created["account_id"] in table.stdout

    assert (
        await system_pool.fetchval(
            "SELECT plan FROM accounts WHERE id = $1::uuid", created["account_id"]
        )
        == "free"
    )
    plans = json.dumps({"free": {"name": "Free"}, "pro": {"name": "Pro"}})
    on_plan = await oslira(
        "accounts", "create", "--name", f"{name} pro", "--plan", "pro", PLANS=plans
    )
    assert on_plan.returncode == 0, on_plan.stderr
    assert (
        await system_pool.fetchval(
            "SELECT plan FROM accounts WHERE id = $1::uuid",
            json.loads(on_plan.stdout)["account_id"],
        )
        == "pro"
    )

    again = await oslira("accounts", "create", "--name", "Other", "--email", email.upper())
    _refused(again, "already exists")
    assert await _accounts_named(system_pool, "Other") == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", ""], "--name must not be empty"),
        (["--name", "   "], "--name must not be empty"),
        (["--name", "x" * 201], "longer than 200"),
        (["--name", "{name}", "--email", "not-an-email"], "not an email address"),
        (["--name", "{name}", "--token-days", "100000000"], "--token-days"),
        (["--name", "{name}", "--credits", "-5"], "--credits"),
        (["--name", "{name}", "--plan", "platinum"], "no plan 'platinum'"),
    ],
    ids=["empty", "blank", "long", "bad email", "huge token days", "negative credits", "plan"],
)
async def test_accounts_create_refuses_bad_input_and_writes_nothing(
    oslira, system_pool, args, message
):
    name = f"Refused {uuid4().hex[:6]}"
    result = await oslira("accounts", "create", *[a.format(name=name) for a in args])
    _refused(result, message)
    assert await _accounts_named(system_pool, name) == 0


async def test_token_commands_refuse_without_a_secret(oslira, system_pool):
    name = f"Secretless {uuid4().hex[:6]}"
    _refused(await oslira("accounts", "create", "--name", name, JWT_SECRET=""), "JWT_SECRET")
    assert await _accounts_named(system_pool, name) == 0
    _refused(await oslira("tokens", "issue", "--user", str(uuid4()), JWT_SECRET=""), "JWT_SECRET")


async def test_tokens_issue_gives_an_existing_user_a_working_token(oslira, api, new_account):
    account = await new_account(credits_granted=4)
    result = await oslira("tokens", "issue", "--user", str(account.user_id), "--days", "2")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    balance = await api.get("/api/credits/balance", headers={"Authorization": f"Bearer {token}"})
    assert balance.json()["balance"] == 4

    _refused(await oslira("tokens", "issue", "--user", str(uuid4())), "no user")
    _refused(await oslira("tokens", "issue", "--user", "not-a-uuid"), "--user")


async def test_credits_grant_adds_an_adjustment_once_per_key(oslira, api, new_account, system_pool):
    account = await new_account(credits_granted=1)
    args = ["credits", "grant", "--account", str(account.account_id), "--amount", "5"]
    first = await oslira(*args, "--reason", "goodwill after an outage", "--idempotency-key", "t-1")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["balance_after"] == 6
    repeat = await oslira(*args, "--reason", "goodwill after an outage", "--idempotency-key", "t-1")
    assert repeat.returncode == 0, repeat.stderr
    assert json.loads(repeat.stdout)["applied"] == "earlier, with the same key"

    rows = await system_pool.fetch(
        "SELECT kind, delta, description FROM credit_ledger WHERE account_id = $1 ORDER BY id",
        account.account_id,
    )
    assert [tuple(r) for r in rows] == [
        ("grant", 1, "opening grant"),
        ("adjustment", 5, "goodwill after an outage"),
    ]
    balance = await api.get("/api/credits/balance", headers=account.headers)
    assert balance.json()["balance"] == 6

    other_amount = [*args[:-1], "6", "--reason", "goodwill after an outage"]
    _refused(await oslira(*other_amount, "--idempotency-key", "t-1"), "already used for 5 credits")
    _refused(await oslira(*args, "--reason", "another", "--idempotency-key", "t-1"), "already used")
    _refused(await oslira(*args, "--reason", "x", "--idempotency-key", ""), "must not be empty")
    _refused(await oslira(*args[:-1], "0", "--reason", "x"), "--amount")
    _refused(await oslira(*args, "--reason", "  "), "--reason must not be empty")
    _refused(
        await oslira(
            "credits", "grant", "--account", str(uuid4()), "--amount", "5", "--reason", "x"
        ),
        "no account",
    )
    assert (
        await system_pool.fetchval(
            "SELECT count(*) FROM credit_ledger WHERE account_id = $1", account.account_id
        )
        == 2
    )


async def test_operator_commands_say_so_when_the_database_is_unreachable(oslira):
    result = await oslira("accounts", "list", DATABASE_URL="postgresql://nobody@127.0.0.1:9/none")
    _refused(result, "cannot reach the database")
