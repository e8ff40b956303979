"""Business profiles (replace and delete, with runs in flight, by role) and GET /api/me."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from uuid import uuid4

import httpx

from core.auth import mint_token
from core.settings import Settings
from db import accounts, credits
from tests.conftest import Account, app_client, make_settings
from tests.helpers import running_worker, wait_for

PROFILE = {
    "name": "Acme Fitness",
    "description": "Boutique gyms",
    "offering": "Training packages",
    "target_audience": "Fitness creators",
}


@asynccontextmanager
async def held(servers) -> AsyncIterator[tuple[Settings, httpx.AsyncClient]]:
    """An API whose task queue no worker polls yet: its runs wait before their charge."""
    settings = make_settings(servers, task_queue=f"held-{uuid4().hex[:8]}")
    async with app_client(settings) as api:
        yield settings, api


async def _start(api: httpx.AsyncClient, account: Account, username: str, profile: str) -> str:
    response = await api.post(
        "/api/leads/analyze",
        json={"username": username, "analysis_type": "light", "business_profile_id": profile},
        headers=account.headers,
    )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


async def test_replace_and_delete_with_runs_waiting_for_their_charge(
    servers, new_account, system_pool
):
    account = await new_account(credits_granted=5)
    async with held(servers) as (settings, api):
        kept = str(account.business_profile_id)
        doomed = await api.post("/api/business-profiles", json=PROFILE, headers=account.headers)
        assert doomed.status_code == 201
        doomed_id = doomed.json()["id"]
        kept_run = await _start(api, account, "kept_run", kept)
        doomed_run = await _start(api, account, "doomed_run", doomed_id)

        replaced = await api.put(
            f"/api/business-profiles/{kept}",
            json={"name": "Acme Gyms", "offering": "Memberships"},
            headers=account.headers,
        )
        assert replaced.status_code == 200, replaced.text
        body = replaced.json()
        # A full update: what is left out takes its default.
        assert (body["name"], body["offering"], body["description"]) == (
            "Acme Gyms",
            "Memberships",
            "",
        )
        assert body["updated_at"] > body["created_at"]
        assert (
            await api.delete(f"/api/business-profiles/{doomed_id}", headers=account.headers)
        ).status_code == 204

        async with running_worker(settings):
            kept_done = await wait_for(api, account, kept_run)
            doomed_done = await wait_for(api, account, doomed_run)
        assert kept_done["status"] == "complete"
        assert doomed_done["status"] == "failed"
        assert doomed_done["error"]["code"] == "business_profile_not_found"

        # The deleted profile is gone from every lookup, and nothing can use it.
        path = f"/api/business-profiles/{doomed_id}"
        for method, json_body in (("GET", None), ("PUT", PROFILE), ("DELETE", None)):
            response = await api.request(method, path, json=json_body, headers=account.headers)
            assert response.status_code == 404, method
            assert response.json()["error"]["code"] == "business_profile_not_found"
        listed = (await api.get("/api/business-profiles", headers=account.headers)).json()
        assert [p["id"] for p in listed["data"]] == [kept]
        again = await api.post(
            "/api/leads/analyze",
            json={"username": "late", "analysis_type": "light", "business_profile_id": doomed_id},
            headers=account.headers,
        )
        assert again.status_code == 404

    # Only the run that completed was paid for: the other never reached its charge.
    async with system_pool.acquire() as conn:
        assert await credits.balance(conn, account.account_id) == 4
        charged = await conn.fetch(
            "SELECT run_id FROM credit_ledger WHERE account_id = $1 AND kind = 'charge'",
            account.account_id,
        )
    assert [str(r["run_id"]) for r in charged] == [kept_run]


async def test_replace_validates_and_names_the_field(api, new_account):
    account = await new_account()
    path = f"/api/business-profiles/{account.business_profile_id}"
    for body, field in (
        ({"description": "no name"}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x", "offering": "o" * 4001}, "offering"),
        ({"name": "x", "colour": "red"}, "colour"),
    ):
        response = await api.put(path, json=body, headers=account.headers)
        assert response.status_code == 422, body
        assert response.json()["error"]["field"] == field
    assert (await api.get(path, headers=account.headers)).json()["name"] == "Test"
    missing = await api.put(
        f"/api/business-profiles/{uuid4()}", json=PROFILE, headers=account.headers
    )
    assert missing.status_code == 404


async def test_members_and_api_keys_read_profiles_but_do_not_manage_them(
    api, new_account, system_pool
):
    owner = await new_account()
    member = await new_account()
    async with system_pool.acquire() as conn:
        await accounts.add_member(conn, owner.account_id, member.user_id, "member")
    key = (await api.post("/api/api-keys", json={"name": "s"}, headers=owner.headers)).json()
    as_member = member.headers | {"X-Account-Id": str(owner.account_id)}
    as_key = {"Authorization": f"Bearer {key['key']}"}
    profile = f"/api/business-profiles/{owner.business_profile_id}"
    for headers in (as_member, as_key):
        assert (await api.get(profile, headers=headers)).status_code == 200
        assert (await api.get("/api/business-profiles", headers=headers)).json()["total"] == 1
        for method, path in (
            ("POST", "/api/business-profiles"),
            ("PUT", profile),
            ("DELETE", profile),
        ):
            response = await api.request(method, path, json=PROFILE, headers=headers)
            assert response.status_code == 403, (method, headers)
            assert "owner or admin" in response.json()["error"]["message"]
    # An admin manages them.
    async with system_pool.acquire() as conn:
        await accounts.add_member(conn, owner.account_id, member.user_id, "admin")
    assert (await api.put(profile, json=PROFILE, headers=as_member)).status_code == 200
    assert (await api.get(profile, headers=owner.headers)).json()["name"] == PROFILE["name"]


async def test_me_names_the_user_their_accounts_and_roles(api, new_account, system_pool, settings):
    first = await new_account(name="First")
    second = await new_account(name="Second")
    async with system_pool.acquire() as conn:
        await accounts.add_member(conn, second.account_id, first.user_id, "member")
        await conn.execute(
            "UPDATE users SET email = 'ana@acme.example' WHERE id = $1", first.user_id
        )
    # Two accounts and no X-Account-Id: /api/me still answers (it is how to find them).
    response = await api.get("/api/me", headers=first.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"] == {"id": str(first.user_id), "email": "ana@acme.example"}
    assert body["api_key"] is None
    assert [(a["id"], a["name"], a["role"]) for a in body["accounts"]] == [
        (str(first.account_id), "First", "owner"),
        (str(second.account_id), "Second", "member"),
    ]

    key = (await api.post("/api/api-keys", json={"name": "nightly"}, headers=second.headers)).json()
    as_key = await api.get("/api/me", headers={"Authorization": f"Bearer {key['key']}"})
    assert as_key.status_code == 200
    assert as_key.json() == {
        "user": None,
        "api_key": {"id": key["id"], "name": "nightly"},
        "accounts": [{"id": str(second.account_id), "name": "Second", "role": "member"}],
    }
    assert (await api.get("/api/me")).status_code == 401

    # A user with no account yet is still a user.
    lonely = uuid4()
    async with system_pool.acquire() as conn:
        await accounts.ensure_user(conn, lonely)
    token = mint_token(settings, lonely, valid_for=timedelta(hours=1))
    alone = await api.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert alone.json() == {
        "user": {"id": str(lonely), "email": None},
        "api_key": None,
        "accounts": [],
    }
