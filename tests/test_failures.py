"""Business failures: no retry, a stable error code, and a refund when credits were taken."""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

import asyncpg
import pytest
from temporalio.client import WorkflowExecutionStatus

from core.models import AnalysisInput
from core.temporal import workflow_id
from core.tiers import Tier
from tests.helpers import (
    apify_calls,
    balance,
    insert_run,
    ledger_for_run,
    record_history,
    start_ok,
    step,
    wait_for,
)
from workflows.analysis import AnalysisWorkflow, start_options


@pytest.mark.parametrize(
    ("prefix", "code"), [("notfound", "profile_not_found"), ("private", "profile_private")]
)
async def test_missing_or_private_profile_fails_without_retry_and_refunds(
    api, new_account, servers, system_pool, temporal_client, prefix, code
):
    account = await new_account(credits_granted=3)
    username = f"{prefix}_{uuid4().hex[:8]}"
    run_id = await start_ok(api, account, username, "deep")

    progress = await wait_for(api, account, run_id)
    assert progress["status"] == "failed"
    assert progress["error"]["code"] == code
    assert step(progress, "scrape_profile")["attempt"] == 1
    assert await apify_calls(servers.simulator_url, username) == 1
    assert await ledger_for_run(system_pool, run_id) == [("charge", -3), ("refund", 3)]
    assert await balance(api, account) == 3

    description = await temporal_client.get_workflow_handle(workflow_id(run_id)).describe()
    assert description.status == WorkflowExecutionStatus.FAILED

    response = await api.get(f"/api/analysis/{run_id}/result", headers=account.headers)
    assert response.status_code == 409
    assert response.json()["error"]["status"] == "failed"
    await record_history(temporal_client, run_id, f"failed_{code}")


async def _start_directly(system_pool, temporal_client, settings, account, username, cost) -> UUID:
    """A run whose request row exists but that the API did not vet (a race the workflow
    itself must handle)."""
    run_id = await insert_run(system_pool, account, username, cost)
    run = AnalysisInput(
        run_id=run_id,
        account_id=account.account_id,
        business_profile_id=account.business_profile_id,
        username=username,
        tier=Tier.light,
        credits_cost=cost,
    )
    await temporal_client.start_workflow(
        AnalysisWorkflow.run, run, **start_options(run, settings.task_queue)
    )
    return run_id


async def test_insufficient_credits_at_the_charge_fails_and_charges_nothing(
    api, new_account, system_pool, temporal_client, settings
):
    account = await new_account(credits_granted=0)
    run_id = await _start_directly(system_pool, temporal_client, settings, account, "broke", 1)
    progress = await wait_for(api, account, str(run_id))
    assert progress["status"] == "failed"
    assert progress["error"]["code"] == "insufficient_credits"
    assert step(progress, "deduct_credits")["status"] == "failed"
    assert await ledger_for_run(system_pool, run_id) == []
    assert await balance(api, account) == 0
    await record_history(temporal_client, run_id, "failed_insufficient_credits")


async def test_deleted_business_profile_fails_before_charging(
    api, new_account, system_pool, temporal_client, settings
):
    account = await new_account(credits_granted=2)
    await system_pool.execute(
        "UPDATE business_profiles SET deleted_at = now() WHERE id = $1", account.business_profile_id
    )
    run_id = await _start_directly(system_pool, temporal_client, settings, account, "gone", 1)
    progress = await wait_for(api, account, str(run_id))
    assert progress["error"]["code"] == "business_profile_not_found"
    assert await ledger_for_run(system_pool, run_id) == []
    assert await balance(api, account) == 2


async def test_refund_survives_database_trouble_and_lands_once(
    api, new_account, servers, system_pool, temporal_client
):
    """Refunds fail for a while (as if the database were in trouble); compensation keeps
    retrying and the refund lands once it can."""
    account = await new_account(credits_granted=2)
    owner = await asyncpg.connect(servers.database_url)
    try:
        await owner.execute(
            """CREATE TABLE IF NOT EXISTS test_refunds_blocked (account_id uuid PRIMARY KEY);
               CREATE OR REPLACE FUNCTION test_block_refunds() RETURNS trigger
               LANGUAGE plpgsql AS $$
               BEGIN
                   IF NEW.kind = 'refund' AND EXISTS (
                       SELECT 1 FROM test_refunds_blocked b WHERE b.account_id = NEW.account_id)
                   THEN RAISE EXCEPTION 'refunds unavailable'; END IF;
                   RETURN NEW;
               END $$;
               DROP TRIGGER IF EXISTS test_block_refunds ON credit_ledger;
               CREATE TRIGGER test_block_refunds BEFORE INSERT ON credit_ledger
                   FOR EACH ROW EXECUTE FUNCTION test_block_refunds();
               GRANT SELECT ON test_refunds_blocked TO oslira_worker;"""
        )
        await owner.execute("INSERT INTO test_refunds_blocked VALUES ($1)", account.account_id)
        run_id = await start_ok(api, account, f"notfound_{uuid4().hex[:8]}")
        await asyncio.sleep(2.5)  # several compensation attempts fail meanwhile
        assert (await ledger_for_run(system_pool, run_id)) == [("charge", -1)]
        # Still in flight, not yet failed: a run ends only once its refund has landed.
        still = await api.get(f"/api/analysis/{run_id}/progress", headers=account.headers)
        assert still.json()["status"] == "processing"

        await owner.execute(
            "DELETE FROM test_refunds_blocked WHERE account_id = $1", account.account_id
        )
        progress = await wait_for(api, account, run_id, timeout=60)
        assert progress["status"] == "failed"
        assert await ledger_for_run(system_pool, run_id) == [("charge", -1), ("refund", 1)]
        assert await balance(api, account) == 2
        await record_history(temporal_client, run_id, "compensation_retried")
    finally:
        await owner.execute(
            """DROP TRIGGER IF EXISTS test_block_refunds ON credit_ledger;
               DROP FUNCTION IF EXISTS test_block_refunds();
               DROP TABLE IF EXISTS test_refunds_blocked;"""
        )
        await owner.close()
