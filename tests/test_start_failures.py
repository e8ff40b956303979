"""When the workflow cannot be started: a clear 503, nothing charged, and nothing stuck."""

from __future__ import annotations

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
