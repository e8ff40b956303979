"""Business failures: no retry, a stable error code, and a refund when credits were taken."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest
from temporalio.client import WorkflowExecutionStatus

from core.models import AnalysisInput
from core.temporal import workflow_id
from core.tiers import Tier
from tests.helpers import apify_calls, balance, ledger_for_run, start_ok, step, wait_for
from workflows.analysis import AnalysisWorkflow


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


async def _start_directly(system_pool, temporal_client, settings, account, username, cost) -> UUID:
    """A run whose request row exists but that the API did not vet (a race the workflow
    itself must handle)."""
    run_id = uuid4()
    await system_pool.execute(
        """INSERT INTO analyses (id, account_id, business_profile_id, username, analysis_type,
               credits_cost) VALUES ($1, $2, $3, $4, 'light', $5)""",
        run_id,
        account.account_id,
        account.business_profile_id,
        username,
        cost,
    )
    await temporal_client.start_workflow(
        AnalysisWorkflow.run,
        AnalysisInput(
            run_id=run_id,
            account_id=account.account_id,
            business_profile_id=account.business_profile_id,
            username=username,
            tier=Tier.light,
            credits_cost=cost,
        ),
        id=workflow_id(run_id),
        task_queue=settings.task_queue,
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
