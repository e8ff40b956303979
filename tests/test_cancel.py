"""Cancellation: refund exactly once before the commit point, 409 after it."""

from __future__ import annotations

import asyncio
from uuid import uuid4

from temporalio.client import WorkflowExecutionStatus

from core.temporal import workflow_id
from tests.helpers import balance, ledger_for_run, record_history, start_ok, step, wait_for


def _scraping(progress: dict) -> bool:
    return step(progress, "scrape_profile")["status"] == "running"


async def test_cancel_mid_scrape_refunds_exactly_once_even_when_sent_twice(
    api, new_account, system_pool, temporal_client
):
    account = await new_account(credits_granted=5)
    run_id = await start_ok(api, account, f"slow_{uuid4().hex[:8]}", "xray")
    await wait_for(api, account, run_id, {"processing"}, predicate=_scraping)

    first, second = await asyncio.gather(
        api.post(f"/api/analysis/{run_id}/cancel", headers=account.headers),
        api.post(f"/api/analysis/{run_id}/cancel", headers=account.headers),
    )
    assert first.status_code == 202, first.text
    assert second.status_code == 202, second.text

    progress = await wait_for(api, account, run_id)
    assert progress["status"] == "cancelled"
    assert progress["error"]["code"] == "run_cancelled"
    assert step(progress, "scrape_profile")["status"] == "cancelled"
    third = await api.post(f"/api/analysis/{run_id}/cancel", headers=account.headers)
    assert third.status_code == 202
    assert third.json()["status"] == "cancelled"

    assert await ledger_for_run(system_pool, run_id) == [("charge", -5), ("refund", 5)]
    assert await balance(api, account) == 5
    description = await temporal_client.get_workflow_handle(workflow_id(run_id)).describe()
    assert description.status == WorkflowExecutionStatus.CANCELED
    await record_history(temporal_client, run_id, "cancelled_mid_scrape")


async def test_operator_cancel_from_temporal_also_refunds(
    api, new_account, system_pool, temporal_client
):
    account = await new_account(credits_granted=3)
    run_id = await start_ok(api, account, f"slow_{uuid4().hex[:8]}", "deep")
    await wait_for(api, account, run_id, {"processing"}, predicate=_scraping)

    await temporal_client.get_workflow_handle(workflow_id(run_id)).cancel()

    assert (await wait_for(api, account, run_id))["status"] == "cancelled"
    assert await ledger_for_run(system_pool, run_id) == [("charge", -3), ("refund", 3)]
    await record_history(temporal_client, run_id, "cancelled_by_operator")


async def test_cancel_after_completion_answers_409_and_keeps_the_charge(
    api, new_account, system_pool
):
    account = await new_account(credits_granted=2)
    run_id = await start_ok(api, account, f"done_{uuid4().hex[:8]}")
    await wait_for(api, account, run_id, {"complete"})

    response = await api.post(f"/api/analysis/{run_id}/cancel", headers=account.headers)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "run_finished"
    assert response.json()["error"]["status"] == "complete"
    assert await ledger_for_run(system_pool, run_id) == [("charge", -1)]
    assert (
        await api.get(f"/api/analysis/{run_id}/result", headers=account.headers)
    ).status_code == 200


async def test_cancel_of_a_failed_run_answers_409(api, new_account):
    account = await new_account()
    run_id = await start_ok(api, account, f"notfound_{uuid4().hex[:8]}")
    await wait_for(api, account, run_id, {"failed"})
    response = await api.post(f"/api/analysis/{run_id}/cancel", headers=account.headers)
    assert response.status_code == 409
    assert response.json()["error"]["status"] == "failed"


async def test_cancel_flag_seen_at_the_commit_point_cancels_the_run(
    api, new_account, system_pool, temporal_client
):
    """The API flags the row before it tells Temporal; if the workflow reaches the commit
    step first, the commit refuses and the run is refunded as cancelled."""
    account = await new_account(credits_granted=1)
    run_id = await start_ok(api, account, f"slow_{uuid4().hex[:8]}")
    await wait_for(api, account, run_id, {"processing"}, predicate=_scraping)
    # Only the flag, as if the cancel RPC to Temporal had been lost.
    await system_pool.execute(
        "UPDATE analyses SET cancel_requested_at = now() WHERE id = $1::uuid", run_id
    )
    progress = await wait_for(api, account, run_id, timeout=40)
    assert progress["status"] == "cancelled"
    assert await ledger_for_run(system_pool, run_id) == [("charge", -1), ("refund", 1)]
    assert await balance(api, account) == 1
    await record_history(temporal_client, run_id, "cancelled_at_commit")
