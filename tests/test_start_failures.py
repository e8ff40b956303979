"""When the workflow cannot be started: a clear 503, nothing charged, and nothing stuck."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import pytest

from tests.conftest import app_client, make_settings
from tests.helpers import insert_run, ledger_for_run, start, wait_for


@pytest.fixture
async def temporal_down(servers):
    """An API whose Temporal server does not answer."""
    settings = make_settings(servers, temporal_address="127.0.0.1:9")
    async with app_client(settings) as client:
        yield client


async def test_unstartable_run_answers_503_charges_nothing_and_frees_its_key(
    temporal_down, api, new_account, system_pool
):
    account = await new_account(credits_granted=3)
    key = {"Idempotency-Key": uuid4().hex}
    username = f"unstartable_{uuid4().hex[:8]}"

    refused = await start(temporal_down, account, username, "light", headers=key)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "service_unavailable"
    row = await system_pool.fetchrow(
        "SELECT id, status, error_code FROM analyses WHERE account_id = $1", account.account_id
    )
    assert (row["status"], row["error_code"]) == ("failed", "not_started")
    assert await ledger_for_run(system_pool, row["id"]) == []

    # Temporal is back: the same key and the same username start a new run at once.
    retried = await start(api, account, username, "light", headers=key)
    assert retried.status_code == 202, retried.text
    assert retried.json()["run_id"] != str(row["id"])
    assert (await wait_for(api, account, retried.json()["run_id"]))["status"] == "complete"


async def test_cancel_of_a_run_whose_workflow_never_started_cancels_it(
    api, new_account, system_pool
):
    account = await new_account()
    run_id = await insert_run(system_pool, account, f"orphan_{uuid4().hex[:8]}")
    response = await api.post(f"/api/analysis/{run_id}/cancel", headers=account.headers)
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    # The username is free again.
    assert (await start(api, account, "fresh_after_cancel")).status_code == 202


async def test_text_with_nul_characters_is_refused(api, new_account):
    account = await new_account()
    response = await api.post(
        "/api/business-profiles", json={"name": "bad\u0000name"}, headers=account.headers
    )
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "name"


async def test_unstartable_batch_answers_503_charges_nothing_and_frees_its_key(
    temporal_down, api, new_account, system_pool
):
    account = await new_account(credits_granted=5)
    key = {"Idempotency-Key": uuid4().hex}
    body = {
        "usernames": [f"unstartable_{uuid4().hex[:8]}_{i}" for i in range(3)],
        "analysis_type": "light",
        "business_profile_id": str(account.business_profile_id),
    }

    refused = await temporal_down.post(
        "/api/leads/analyze/bulk", json=body, headers=account.headers | key
    )
    assert refused.status_code == 503, refused.text
    batch = await system_pool.fetchrow(
        "SELECT id, status, error_code, idempotency_key FROM batches WHERE account_id = $1",
        account.account_id,
    )
    assert (batch["status"], batch["error_code"], batch["idempotency_key"]) == (
        "failed",
        "not_started",
        None,
    )
    items = await system_pool.fetch("SELECT status FROM analyses WHERE batch_id = $1", batch["id"])
    assert [i["status"] for i in items] == ["failed"] * 3
    # Nothing was charged, and nothing stays promised: the same key starts a new batch
    # of the same usernames once Temporal is back, and it completes.
    retried = await api.post("/api/leads/analyze/bulk", json=body, headers=account.headers | key)
    assert retried.status_code == 202, retried.text
    assert retried.json()["batch_id"] != str(batch["id"]) and retried.json()["total"] == 3
    progress = f"/api/leads/analyze/bulk/{retried.json()['batch_id']}/progress"
    for _ in range(300):
        done = (await api.get(progress, headers=account.headers)).json()
        if done["status"] == "complete":
            break
        await asyncio.sleep(0.1)
    assert done["counts"]["complete"] == 3 and done["credits_charged"] == 3
    balance = (await api.get("/api/credits/balance", headers=account.headers)).json()
    assert balance["balance"] == 2
