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


async def test_every_endpoint_answers_another_accounts_ids_with_404_and_no_data(
    api, new_account, system_pool
):
    """A sweep driven by the OpenAPI document: every operation that takes an id in its path
    is called by another account with the owner's ids (a new endpoint with an id this test
    does not know fails it), and every filter that takes an id finds nothing."""
    owner, stranger = await new_account(credits_granted=20), await new_account()
    run_id = await start_ok(api, owner, f"swept_{uuid4().hex[:8]}")
    await wait_for(api, owner, run_id)
    batch = await api.post(
        "/api/leads/analyze/bulk",
        json={
            "usernames": [f"swept_b{i}_{uuid4().hex[:6]}" for i in range(2)],
            "analysis_type": "light",
            "business_profile_id": str(owner.business_profile_id),
        },
        headers=owner.headers,
    )
    key = await api.post("/api/api-keys", json={"name": "owner's"}, headers=owner.headers)
    lead_id = await system_pool.fetchval("SELECT lead_id FROM analyses WHERE id = $1::uuid", run_id)
    ids = {
        "run_id": run_id,
        "batch_id": batch.json()["batch_id"],
        "lead_id": str(lead_id),
        "profile_id": str(owner.business_profile_id),
        "key_id": key.json()["id"],
    }
    secrets = set(ids.values())
    bodies = {
        "/api/business-profiles/{profile_id}": {"name": "Taken over"},
        "/api/leads/{lead_id}/refresh-check": {"analysis_type": "light"},
        "/api/leads/{lead_id}/force-refresh": {"analyze": True, "analysis_type": "light"},
    }

    spec = (await api.get("/openapi.json")).json()
    swept = 0
    for template, operations in spec["paths"].items():
        names = [part[1:-1] for part in template.split("/") if part.startswith("{")]
        if not names:
            continue
        path = template.format(**{name: ids[name] for name in names})
        for method in operations:
            response = await api.request(
                method.upper(), path, json=bodies.get(template), headers=stranger.headers
            )
            assert response.status_code == 404, (method, path, response.text)
            assert not any(secret in response.text for secret in secrets), response.text
            swept += 1
    assert swept >= 14  # the 14 such operations when this was written

    # Filters that take an id: nothing of the owner's comes back.
    for path, params in (
        ("/api/analysis", {"business_profile_id": ids["profile_id"]}),
        ("/api/leads", {"business_profile_id": ids["profile_id"]}),
        ("/api/credits/transactions", {"run_id": run_id}),
        ("/api/credits/transactions", {"batch_id": ids["batch_id"]}),
    ):
        response = await api.get(path, params=params, headers=stranger.headers)
        assert response.status_code == 200, (path, response.text)
        assert response.json()["total"] == 0 and response.json()["data"] == [], path
    export = await api.get(
        "/api/leads/export",
        params={"business_profile_id": ids["profile_id"]},
        headers=stranger.headers,
    )
    assert export.status_code == 200 and export.text.count("\n") == 1  # the header row only
    for path, body in (
        ("/api/leads/analyze", {"username": "x", "analysis_type": "light"}),
        ("/api/leads/analyze/bulk", {"usernames": ["x"], "analysis_type": "light"}),
    ):
        response = await api.post(
            path, json=body | {"business_profile_id": ids["profile_id"]}, headers=stranger.headers
        )
        assert response.status_code == 404, (path, response.text)

    # And the owner's things are as they were.
    for path in (
        f"/api/analysis/{run_id}/result",
        f"/api/leads/{lead_id}",
        f"/api/business-profiles/{owner.business_profile_id}",
        f"/api/leads/analyze/bulk/{ids['batch_id']}/progress",
    ):
        assert (await api.get(path, headers=owner.headers)).status_code == 200, path
    profile = await api.get(
        f"/api/business-profiles/{owner.business_profile_id}", headers=owner.headers
    )
    assert profile.json()["name"] != "Taken over"
    keys = (await api.get("/api/api-keys", headers=owner.headers)).json()["data"]
    assert [k["revoked_at"] for k in keys] == [None]
