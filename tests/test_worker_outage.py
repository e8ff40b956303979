"""With no worker running, progress still answers; a worker killed mid-run (kill -9) is
replaced and the run completes with exactly one charge."""

from __future__ import annotations

import asyncio
import signal
import tempfile
from uuid import uuid4

import pytest

from cli import stack
from tests.conftest import app_client, make_settings
from tests.helpers import ledger_for_run, process_env, start_ok, step, wait_for


@pytest.fixture
async def lonely(servers):
    """An API whose task queue no worker polls (yet)."""
    settings = make_settings(servers, task_queue=f"lonely-{uuid4().hex[:8]}")
    async with app_client(settings) as client:
        yield settings, client


async def test_progress_answers_from_the_database_when_no_worker_runs(lonely, new_account):
    settings, api = lonely
    account = await new_account()
    run_id = await start_ok(api, account, f"orphan_{uuid4().hex[:8]}")

    for _ in range(3):
        response = await api.get(f"/api/analysis/{run_id}/progress", headers=account.headers)
        assert response.status_code == 200
        body = response.json()
        assert body["source"] == "database"
        assert body["status"] == "pending"
        assert body["progress"] == 15
        assert step(body, "check_credits")["status"] == "done"

    # A worker arriving later picks the run up.
    with tempfile.TemporaryDirectory() as home:
        worker = stack.spawn(stack.oslira_command("worker"), process_env(settings, home))
        try:
            assert (await wait_for(api, account, run_id, timeout=60))["status"] == "complete"
        finally:
            await asyncio.to_thread(stack.stop, worker)


async def test_worker_killed_mid_run_is_replaced_and_the_run_charges_once(
    lonely, new_account, system_pool
):
    settings, api = lonely
    account = await new_account(credits_granted=3)
    with tempfile.TemporaryDirectory() as home:
        env = process_env(settings, home)
        first = stack.spawn(stack.oslira_command("worker"), env)
        second = None
        try:
            run_id = await start_ok(api, account, f"slow_{uuid4().hex[:8]}", "deep")
            await wait_for(
                api,
                account,
                run_id,
                {"processing"},
                timeout=30,
                predicate=lambda p: step(p, "scrape_profile")["status"] == "running",
            )
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait)

            during = await api.get(f"/api/analysis/{run_id}/progress", headers=account.headers)
            assert during.status_code == 200
            assert during.json()["status"] == "processing"

            second = stack.spawn(stack.oslira_command("worker"), env)
            final = await wait_for(api, account, run_id, timeout=90)
        finally:
            for proc in (first, second):
                if proc is not None:
                    await asyncio.to_thread(stack.stop, proc)

    assert final["status"] == "complete", final
    assert step(final, "scrape_profile")["attempt"] == 2
    assert await ledger_for_run(system_pool, run_id) == [("charge", -3)]
