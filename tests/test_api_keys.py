"""API keys, as a script and an account's owner use them: created by an owner or admin and
shown once, accepted beside JWTs for their own account only, revoked at once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
from uuid import uuid4

from cli import stack
from tests.helpers import process_env, start_ok, wait_for


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _create(api, account, name: str = "nightly batch"):
    return await api.post("/api/api-keys", json={"name": name}, headers=account.headers)


async def test_a_key_acts_for_its_account_until_revoked(api, new_account, system_pool):
    owner = await new_account(credits_granted=5)
    created = await _create(api, owner)
    assert created.status_code == 201, created.text
    body = created.json()
    key = body["key"]
    assert key.startswith("osk_") and body["prefix"] == key[:12]

    # What a script does with it: read the balance, start and follow a run.
    balance = await api.get("/api/credits/balance", headers=_bearer(key))
    assert balance.json() == {"account_id": str(owner.account_id), "balance": 5}
    started = await api.post(
        "/api/leads/analyze",
        json={
            "username": f"scripted_{uuid4().hex[:8]}",
            "analysis_type": "light",
            "business_profile_id": str(owner.business_profile_id),
        },
        headers=_bearer(key),
    )
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    assert (await wait_for(api, owner, run_id))["status"] == "complete"
    requested_by = await system_pool.fetchval(
        "SELECT requested_by FROM analyses WHERE id = $1::uuid", run_id
    )
    assert requested_by is None  # a key is not a person

    listed = (await api.get("/api/api-keys", headers=owner.headers)).json()
    assert listed["total"] == 1
    assert listed["data"][0]["prefix"] == body["prefix"]
    assert "key" not in listed["data"][0] and key not in json.dumps(listed)
    stored = await system_pool.fetchval(
        "SELECT key_hash FROM api_keys WHERE id = $1::uuid", body["id"]
    )
    assert key.encode() not in stored  # a hash, not the key

    revoked = await api.delete(f"/api/api-keys/{body['id']}", headers=owner.headers)
    assert revoked.status_code == 204
    refused = await api.get("/api/credits/balance", headers=_bearer(key))
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    after = (await api.get("/api/api-keys", headers=owner.headers)).json()["data"][0]
    assert after["revoked_at"] is not None


async def test_a_key_never_reaches_another_account(api, new_account):
    mine, theirs = await new_account(), await new_account()
    key = (await _create(api, mine)).json()["key"]
    other = await api.get(
        "/api/credits/balance", headers=_bearer(key) | {"X-Account-Id": str(theirs.account_id)}
    )
    assert other.status_code == 403
    assert other.json()["error"]["field"] == "X-Account-Id"
    run_id = await start_ok(api, theirs, f"theirs_{uuid4().hex[:8]}")
    hidden = await api.get(f"/api/analysis/{run_id}/progress", headers=_bearer(key))
    assert hidden.status_code == 404
    their_keys = (await api.get("/api/api-keys", headers=theirs.headers)).json()
    assert their_keys["total"] == 0
    revoke_theirs = await api.delete(
        f"/api/api-keys/{(await _create(api, theirs)).json()['id']}", headers=mine.headers
    )
    assert revoke_theirs.status_code == 404


async def test_only_a_signed_in_owner_or_admin_manages_keys(api, new_account, system_pool):
    owner = await new_account()
    key = (await _create(api, owner)).json()["key"]
    by_key = await api.post("/api/api-keys", json={"name": "more"}, headers=_bearer(key))
    assert by_key.status_code == 403

    await system_pool.execute(
        "UPDATE account_members SET role = 'member' WHERE account_id = $1", owner.account_id
    )
    as_member = await _create(api, owner)
    assert as_member.status_code == 403
    assert as_member.json()["error"]["code"] == "forbidden"

    bad = await api.post("/api/api-keys", json={"name": ""}, headers=owner.headers)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "name"


async def test_made_up_keys_are_refused(api):
    for key in ("osk_" + "x" * 43, "osk_", "osk_" + uuid4().hex):
        refused = await api.get("/api/credits/balance", headers=_bearer(key))
        assert refused.status_code == 401, key


async def test_operators_create_keys_from_the_command_line(api, new_account, settings):
    account = await new_account(credits_granted=2)
    with tempfile.TemporaryDirectory() as home:
        created = await asyncio.to_thread(
            subprocess.run,
            stack.oslira_command("api-keys", "create", "--account", str(account.account_id)),
            env={**os.environ, **process_env(settings, home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    balance = await api.get("/api/credits/balance", headers=_bearer(key))
    assert balance.json()["balance"] == 2
