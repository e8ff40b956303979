"""Tenant isolation: through the API (404) and in the database itself (row level security)."""

from __future__ import annotations

from uuid import uuid4

import asyncpg

from tests.helpers import as_tenant, start_ok, wait_for


async def test_another_accounts_token_cannot_see_or_cancel_a_run(api, new_account):
    owner, stranger = await new_account(), await new_account()
    run_id = await start_ok(api, owner, f"mine_{uuid4().hex[:8]}")

    for method, path in [
        ("GET", f"/api/analysis/{run_id}/progress"),
        ("GET", f"/api/analysis/{run_id}/result"),
        ("POST", f"/api/analysis/{run_id}/cancel"),
        ("GET", f"/api/business-profiles/{owner.business_profile_id}"),
    ]:
        response = await api.request(method, path, headers=stranger.headers)
        assert response.status_code == 404, (method, path, response.text)
        assert str(run_id) not in response.text

    borrowed = await api.post(
        "/api/leads/analyze",
        json={
            "username": "someone",
            "analysis_type": "light",
            "business_profile_id": str(owner.business_profile_id),
        },
        headers=stranger.headers,
    )
    assert borrowed.status_code == 404
    assert borrowed.json()["error"]["field"] == "business_profile_id"

    # The stranger's cancel changed nothing: the run completes and keeps its charge.
    assert (await wait_for(api, owner, run_id))["status"] == "complete"


async def test_x_account_id_of_an_account_the_user_is_not_in_is_forbidden(api, new_account):
    me, other = await new_account(), await new_account()
    response = await api.get(
        "/api/credits/balance", headers=me.headers | {"X-Account-Id": str(other.account_id)}
    )
    assert response.status_code == 403
    assert response.json()["error"]["field"] == "X-Account-Id"


async def test_user_in_two_accounts_chooses_with_x_account_id(api, new_account, system_pool):
    first, second = await new_account(credits_granted=7), await new_account(credits_granted=9)
    await system_pool.execute(
        "INSERT INTO account_members (account_id, user_id, role) VALUES ($1, $2, 'member')",
        second.account_id,
        first.user_id,
    )
    unclear = await api.get("/api/credits/balance", headers=first.headers)
    assert unclear.status_code == 422
    assert unclear.json()["error"]["field"] == "X-Account-Id"
    chosen = await api.get(
        "/api/credits/balance", headers=first.headers | {"X-Account-Id": str(second.account_id)}
    )
    assert chosen.json()["balance"] == 9


TENANT_TABLES = ["analyses", "credit_ledger", "credit_balances", "business_profiles", "leads"]


async def test_tenant_scoped_connection_cannot_read_other_accounts_rows(api, new_account, settings):
    mine, theirs = await new_account(), await new_account()
    for account in (mine, theirs):
        await wait_for(api, account, await start_ok(api, account, f"rls_{uuid4().hex[:8]}"))

    conn = await asyncpg.connect(settings.api_dsn)
    try:
        async with as_tenant(conn, mine.account_id):
            for table in TENANT_TABLES:
                visible = await conn.fetch(f"SELECT DISTINCT account_id FROM {table}")
                assert [r["account_id"] for r in visible] == [mine.account_id], table
                filtered = await conn.fetchval(
                    f"SELECT count(*) FROM {table} WHERE account_id = $1", theirs.account_id
                )
                assert filtered == 0, table
        async with conn.transaction():  # no tenant set: nothing at all
            for table in TENANT_TABLES:
                assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    finally:
        await conn.close()


async def test_x_account_id_that_is_not_an_id_answers_422(api, new_account):
    me = await new_account()
    response = await api.get(
        "/api/credits/balance", headers=me.headers | {"X-Account-Id": "not-an-id"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "X-Account-Id"
