"""The scheduled jobs: schedules created idempotently, each triggered with its effect checked;
the stuck-run sweep failing and refunding a run whose workflow was terminated, exactly once
even when racing the run's own compensation; the ledger check finding a planted violation."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID, uuid4

import asyncpg
import pytest
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.compensation import CompensationActivities
from activities.maintenance import MaintenanceActivities
from core import schedules, temporal
from core.errors import ErrorCode
from core.models import FinishInput, SweepInput
from core.progress import RunError, RunStatus, Tracker
from core.settings import Settings
from core.temporal import workflow_id
from db import accounts, analyses, credits
from db.migrate import migrate
from db.pool import create_pool
from tests.conftest import Account, Servers, app_client, make_settings
from tests.helpers import process_env, run_job, running_worker, start_ok, wait_for


@asynccontextmanager
async def own_stack(
    servers: Servers, **overrides: Any
) -> AsyncIterator[tuple[Settings, Any, Client]]:
    """An API and a worker on a queue of their own (the schedules start workflows there)."""
    settings = make_settings(servers, task_queue=f"jobs-{uuid4().hex[:8]}", **overrides)
    client = await temporal.connect(settings)
    async with running_worker(settings), app_client(settings) as api:
        yield settings, api, client


async def _age(pool: asyncpg.Pool, run_id: str, minutes: int = 10) -> None:
    """The run's row last moved `minutes` ago, by the database's clock."""
    await pool.execute(
        "UPDATE analyses SET updated_at = now() - make_interval(mins => $2) WHERE id = $1::uuid",
        run_id,
        minutes,
    )


async def test_schedules_are_created_once_and_keep_a_pause(servers):
    settings = make_settings(servers, task_queue=f"jobs-{uuid4().hex[:8]}")
    client = await temporal.connect(settings)
    first = await schedules.ensure(client, settings)
    assert first == [f"{settings.task_queue}-{job.name}" for job in schedules.JOBS]
    await schedules.handle(client, settings, "ledger-check").pause(note="test")
    assert await schedules.ensure(client, settings) == first  # again: updated, not doubled
    for job in schedules.JOBS:
        described = await schedules.handle(client, settings, job.name).describe()
        # The server keeps a cron expression as a calendar: minute 0, and hour 4 for the
        # daily check.
        (calendar,) = described.schedule.spec.calendars
        assert [r.start for r in calendar.minute] == [0]
        if job.name == "ledger-check":
            assert [r.start for r in calendar.hour] == [4]
        assert described.schedule.action.workflow == job.workflow  # type: ignore[attr-defined]
        assert described.schedule.state.paused == (job.name == "ledger-check")
    for job in schedules.JOBS:
        await schedules.handle(client, settings, job.name).delete()


async def test_the_sweep_fails_and_refunds_a_run_whose_workflow_was_terminated(
    servers, new_account, system_pool
):
    account = await new_account(credits_granted=10)
    async with own_stack(servers) as (settings, api, client):
        await schedules.ensure(client, settings)
        # Charged and scraping (slow_ takes 10 s) when an operator terminates its workflow.
        charged = await start_ok(api, account, f"slow_{uuid4().hex[:6]}", "deep")
        await wait_for(api, account, charged, {"processing"})
        await client.get_workflow_handle(workflow_id(charged)).terminate("operator")
        # A run whose workflow never started (the API died between its commit and the start).
        lost = await _pending_without_workflow(system_pool, account)
        # A live run in flight as long: left alone.
        live = await start_ok(api, account, f"slow_{uuid4().hex[:6]}", "light")
        await wait_for(api, account, live, {"processing"})
        for run_id in (charged, str(lost), live):
            await _age(system_pool, run_id)

        report = await run_job(client, settings, "stuck-runs", "job_stuck_runs")
        assert {str(r) for r in report["failed"]} >= {charged, str(lost)}
        assert live not in {str(r) for r in report["failed"]}
        again = await run_job(client, settings, "stuck-runs")  # nothing twice
        assert not {charged, str(lost)} & {str(r) for r in again["failed"]}

        progress = await wait_for(api, account, charged)
        assert progress["status"] == "failed"
        assert progress["error"]["code"] == ErrorCode.workflow_lost
        assert (await wait_for(api, account, live))["status"] == "complete"
    rows = await system_pool.fetch(
        """SELECT run_id, kind, delta FROM credit_ledger
           WHERE account_id = $1 AND kind IN ('charge', 'refund') ORDER BY id""",
        account.account_id,
    )
    by_run: dict[str, list[tuple[str, int]]] = {}
    for row in rows:
        by_run.setdefault(str(row["run_id"]), []).append((row["kind"], row["delta"]))
    assert by_run[charged] == [("charge", -3), ("refund", 3)]
    assert str(lost) not in by_run  # never charged, nothing to refund
    assert (
        await system_pool.fetchval("SELECT status FROM analyses WHERE id = $1", lost)
        == RunStatus.failed
    )
    async with system_pool.acquire() as conn:
        assert await credits.balance(conn, account.account_id) == 10 - 1


async def _pending_without_workflow(pool: asyncpg.Pool, account: Account) -> UUID:
    run_id = uuid4()
    progress = Tracker.accepted(run_id, datetime.now(UTC))
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO analyses (id, account_id, business_profile_id, username,
                   analysis_type, credits_cost, progress, current_step, steps)
               VALUES ($1, $2, $3, $4, 'light', 1, $5, $6, $7)""",
            run_id,
            account.account_id,
            account.business_profile_id,
            f"lost_{uuid4().hex[:6]}",
            progress.document.progress,
            progress.document.current_step,
            analyses.steps_json(progress.document.steps),
        )
    return run_id


async def test_the_sweep_racing_the_runs_own_compensation_refunds_once(
    servers, settings, new_account, system_pool, api
):
    """The sweep and the workflow's compensation, both running at once, several times over
    (activity retries): one refund."""
    account = await new_account(credits_granted=10)
    run_id = await start_ok(api, account, f"slow_{uuid4().hex[:6]}", "xray")
    await wait_for(api, account, run_id, {"processing"})
    client = await temporal.connect(settings)
    await client.get_workflow_handle(workflow_id(run_id)).terminate("operator")
    await _age(system_pool, run_id)
    async with system_pool.acquire() as conn:
        row = await analyses.get(conn, UUID(run_id))
    assert row is not None
    progress = Tracker(analyses.progress_of(row))
    error = RunError(code=ErrorCode.provider_unavailable, message="the provider kept failing")
    progress.stopping(error, cancelled=False)
    progress.set_status(RunStatus.failed, error)

    pool = await create_pool(settings.worker_dsn, min_size=1, max_size=10)
    try:
        sweep = MaintenanceActivities(pool, client, settings)
        compensation = CompensationActivities(pool)
        env = ActivityEnvironment()
        await asyncio.gather(
            *(env.run(sweep.sweep_stuck_runs, SweepInput()) for _ in range(3)),
            *(
                env.run(compensation.finish_unsuccessful, FinishInput(progress=progress.document))
                for _ in range(3)
            ),
        )
    finally:
        await pool.close()
    refunds = await system_pool.fetchval(
        "SELECT count(*) FROM credit_ledger WHERE run_id = $1::uuid AND kind = 'refund'", run_id
    )
    assert refunds == 1
    async with system_pool.acquire() as conn:
        assert await credits.balance(conn, account.account_id) == 10


async def test_the_ledger_check_job_reports_a_planted_violation(servers, system_pool):
    async with own_stack(servers) as (settings, _, client):
        await schedules.ensure(client, settings)
        async with system_pool.acquire() as conn:
            planted = await accounts.create_with_owner(conn, name="Planted", credits_granted=5)
        admin = await asyncpg.connect(servers.database_url)
        try:
            await admin.execute(
                "UPDATE credit_balances SET balance = 7 WHERE account_id = $1", planted.account_id
            )
            report = await run_job(client, settings, "ledger-check", "job_ledger_check")
        finally:
            await admin.execute(
                "UPDATE credit_balances SET balance = 5 WHERE account_id = $1", planted.account_id
            )
            await admin.close()
    mine = [v for v in report["violations"] if str(planted.account_id) in v]
    assert mine and "balance differs from the sum of the ledger" in mine[0]


@pytest.mark.parametrize("planted", [False, True])
async def test_oslira_ledger_check_exits_non_zero_on_a_violation(servers, settings, planted):
    """On a scratch database of its own, so the planted violation harms nothing else."""
    name = f"oslira_scratch_{uuid4().hex[:8]}"
    admin = await asyncpg.connect(servers.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = urlunsplit(urlsplit(servers.database_url)._replace(path=f"/{name}"))
        await migrate(url)
        scratch = await asyncpg.connect(url)
        try:
            async with scratch.transaction():
                made = await accounts.create_with_owner(scratch, name="Scratch", credits_granted=3)
            if planted:
                await scratch.execute(
                    "UPDATE credit_balances SET balance = 9 WHERE account_id = $1",
                    made.account_id,
                )
        finally:
            await scratch.close()
        env = {**os.environ, **process_env(settings, "/tmp", DATABASE_URL=url)}
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "cli.main", "ledger", "check"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    if planted:
        assert result.returncode == 1, result.stdout + result.stderr
        assert "balance differs from the sum of the ledger" in result.stdout
        assert str(made.account_id) in result.stdout
        assert "1 ledger invariant violation" in result.stderr
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "the ledger is sound" in result.stdout


CLEANUP_PLANS: dict[str, Any] = {
    "free": {"name": "Free", "analyses_per_hour": 10**6, "requests_per_minute": 10**6},
    "pro": {"name": "Pro", "monthly_credits": 50},
}


async def test_cleanup_hard_deletes_what_was_deleted_30_days_ago_and_keeps_the_ledger(
    servers, new_account, system_pool
):
    account = await new_account(credits_granted=5)
    async with own_stack(servers) as (settings, api, client):
        await schedules.ensure(client, settings)
        analysed = await start_ok(api, account, f"purged_{uuid4().hex[:6]}")
        await wait_for(api, account, analysed)
        async with system_pool.acquire() as conn:
            lead_of_run = await conn.fetchval(
                "SELECT lead_id FROM analyses WHERE id = $1::uuid", analysed
            )
            await _lead(conn, account, "old_deleted", days_ago=31)
            recent = await _lead(conn, account, "recent_deleted", days_ago=29)
            live = await _lead(conn, account, "live_one", days_ago=None)
            await conn.execute(
                "UPDATE leads SET deleted_at = now() - interval '31 days' WHERE id = $1",
                lead_of_run,
            )
            unused = await conn.fetchval(
                """INSERT INTO business_profiles (account_id, name, deleted_at)
                   VALUES ($1, 'Unused', now() - interval '31 days') RETURNING id""",
                account.account_id,
            )
            await conn.execute(
                """UPDATE business_profiles SET deleted_at = now() - interval '31 days'
                   WHERE id = $1""",
                account.business_profile_id,
            )
            for key, age in (("stale", "3 days"), ("fresh", "1 hour")):
                await conn.execute(
                    f"""INSERT INTO profile_cache (key, profile, size_bytes, stored_at)
                        VALUES ($1, '{{}}', 2, now() - interval '{age}')""",
                    f"test:{key}:{uuid4().hex[:6]}",
                )
            events = {}
            for name, status, age in (
                ("old", "processed", "91 days"),
                ("old_ignored", "ignored", "91 days"),
                ("old_failed", "failed", "91 days"),
                ("recent", "processed", "89 days"),
            ):
                events[name] = f"evt_cleanup_{name}_{uuid4().hex[:8]}"
                await conn.execute(
                    f"""INSERT INTO stripe_events (id, type, payload, status, received_at)
                        VALUES ($1, 'checkout.session.completed', '{{}}', $2,
                                now() - interval '{age}')""",
                    events[name],
                    status,
                )
            ledger_before = await conn.fetch(
                "SELECT id FROM credit_ledger WHERE account_id = $1 ORDER BY id", account.account_id
            )
        report = await run_job(client, settings, "cleanup", "job_cleanup")
    assert report["leads"] >= 2 and report["cache_entries"] >= 1
    assert report["webhook_events"] >= 2
    # Applied events older than 90 days go; a dead letter stays for its operator.
    left = await system_pool.fetch(
        "SELECT id FROM stripe_events WHERE id = ANY($1)", list(events.values())
    )
    assert {r["id"] for r in left} == {events["old_failed"], events["recent"]}
    async with system_pool.acquire() as conn:
        remaining = {
            r["id"]
            for r in await conn.fetch(
                "SELECT id FROM leads WHERE account_id = $1", account.account_id
            )
        }
        # Deleted leads go; the leads of the deleted profile that nobody deleted stay.
        assert remaining == {recent, live}
        assert (
            await conn.fetchval("SELECT lead_id FROM analyses WHERE id = $1::uuid", analysed)
            is None
        )
        assert await conn.fetchval("SELECT 1 FROM business_profiles WHERE id = $1", unused) is None
        kept = await conn.fetchrow(
            "SELECT name, description FROM business_profiles WHERE id = $1",
            account.business_profile_id,
        )
        assert (kept["name"], kept["description"]) == ("Deleted business profile", "")
        assert (
            await conn.fetch(
                "SELECT id FROM credit_ledger WHERE account_id = $1 ORDER BY id", account.account_id
            )
            == ledger_before
        )
        assert not await conn.fetchval(
            "SELECT count(*) FROM profile_cache WHERE key LIKE 'test:stale:%'"
        )
        assert await conn.fetchval(
            "SELECT count(*) FROM profile_cache WHERE key LIKE 'test:fresh:%'"
        )


async def test_the_sweep_ends_a_batch_whose_workflow_was_terminated(
    servers, new_account, system_pool
):
    """An operator terminates a batch's workflow, and the one item it had started: the
    sweep fails and refunds that item, ends the two it never started with their refunds,
    and ends the batch."""
    account = await new_account(credits_granted=10)
    async with own_stack(servers, batch_window=1) as (settings, api, client):
        await schedules.ensure(client, settings)
        response = await api.post(
            "/api/leads/analyze/bulk",
            json={
                "usernames": [f"slow_orphan{i}_{uuid4().hex[:4]}" for i in range(3)],
                "analysis_type": "light",
                "business_profile_id": str(account.business_profile_id),
            },
            headers=account.headers,
        )
        assert response.status_code == 202, response.text
        batch_id = response.json()["batch_id"]
        for _ in range(200):
            started = await system_pool.fetchval(
                """SELECT id FROM analyses
                   WHERE batch_id = $1::uuid AND status = 'processing'""",
                batch_id,
            )
            if started:
                break
            await asyncio.sleep(0.05)
        assert started is not None
        await client.get_workflow_handle(f"bulk-{batch_id}").terminate("operator")
        await client.get_workflow_handle(workflow_id(started)).terminate("operator")
        await system_pool.execute(
            """UPDATE analyses SET updated_at = now() - interval '10 minutes'
               WHERE batch_id = $1::uuid""",
            batch_id,
        )
        await system_pool.execute(
            "UPDATE batches SET updated_at = now() - interval '10 minutes' WHERE id = $1::uuid",
            batch_id,
        )
        report = await run_job(client, settings, "stuck-runs")
        progress = (
            await api.get(f"/api/leads/analyze/bulk/{batch_id}/progress", headers=account.headers)
        ).json()
    assert [str(r) for r in report["failed"]] == [str(started)]
    assert [str(b) for b in report["batches_ended"]] == [batch_id]
    assert progress["status"] == "complete"
    assert progress["counts"]["failed"] == 3
    assert (progress["credits_charged"], progress["credits_refunded"]) == (3, 3)
    async with system_pool.acquire() as conn:
        assert await credits.balance(conn, account.account_id) == 10


async def _lead(
    conn: asyncpg.Connection, account: Account, name: str, days_ago: int | None
) -> UUID:
    lead_id: UUID = await conn.fetchval(
        """INSERT INTO leads (account_id, business_profile_id, username, deleted_at)
           VALUES ($1, $2, $3, CASE WHEN $4::int IS NULL THEN NULL
                                    ELSE now() - make_interval(days => $4::int) END)
           RETURNING id""",
        account.account_id,
        account.business_profile_id,
        f"{name}_{uuid4().hex[:6]}",
        days_ago,
    )
    return lead_id


async def test_renewal_grants_each_plans_credits_once_per_period(servers, new_account, system_pool):
    pro, free = await new_account(credits_granted=1), await new_account(credits_granted=1)
    async with system_pool.acquire() as conn:
        await conn.execute("UPDATE accounts SET plan = 'pro' WHERE id = $1", pro.account_id)
    async with own_stack(servers, plans=CLEANUP_PLANS) as (settings, _, client):
        await schedules.ensure(client, settings)
        first = await run_job(client, settings, "renewal", "job_renewal")
        second = await run_job(client, settings, "renewal")
    assert str(pro.account_id) in {str(a) for a in first["granted"]}
    assert str(pro.account_id) not in {str(a) for a in second["granted"]}
    rows = await system_pool.fetch(
        "SELECT kind, delta, idempotency_key FROM credit_ledger WHERE account_id = $1 ORDER BY id",
        pro.account_id,
    )
    assert [(r["kind"], r["delta"]) for r in rows] == [("grant", 1), ("renewal", 50)]
    assert rows[1]["idempotency_key"] == f"renewal:{pro.account_id}:{first['period']}"
    async with system_pool.acquire() as conn:
        assert await credits.balance(conn, free.account_id) == 1
        assert await credits.balance(conn, pro.account_id) == 51
