"""Free monthly allowances: a run covered by its plan's allowance charges nothing and draws one
unit of the month (UTC); a run that fails or is cancelled gives it back; concurrent starts
never promise more than is left; batches draw the same way; usage and pricing say so."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

from core.settings import Settings
from db import credits
from tests.conftest import Account, Servers, app_client, make_settings
from tests.helpers import running_worker, start, start_ok, wait_for

PLANS: dict[str, Any] = {
    "free": {"name": "Free", "allowances": {"light": 5}},
    "pro": {"name": "Pro", "allowances": {"light": 2, "deep": 1}, "analyses_per_hour": 900},
    "mini": {"name": "Mini", "allowances": {"light": 1}},
}


@asynccontextmanager
async def stack(servers: Servers, *, worker: bool = True) -> AsyncIterator[tuple[Settings, Any]]:
    """An API (and a worker, unless held back) on a queue of their own, with PLANS."""
    settings = make_settings(servers, task_queue=f"allow-{uuid4().hex[:8]}", plans=PLANS)
    async with app_client(settings) as api:
        if not worker:
            yield settings, api
            return
        async with running_worker(settings):
            yield settings, api


async def _units(pool: asyncpg.Pool, account: Account) -> Counter[str]:
    """Units kept (drawn, not given back) by tier, any month."""
    rows = await pool.fetch(
        "SELECT action FROM allowance_uses WHERE account_id = $1 AND returned_at IS NULL",
        account.account_id,
    )
    return Counter(r["action"] for r in rows)


async def _balance(pool: asyncpg.Pool, account: Account) -> int:
    async with pool.acquire() as conn:
        return await credits.balance(conn, account.account_id)


async def test_fifty_concurrent_starts_take_five_units_and_ten_credits(
    servers, new_account, system_pool
):
    account = await new_account(credits_granted=10)
    async with stack(servers, worker=False) as (settings, api):
        answers = await asyncio.gather(
            *(start(api, account, f"crowd_{i:02d}_{uuid4().hex[:4]}") for i in range(50))
        )
        statuses = Counter(a.status_code for a in answers)
        assert statuses == {202: 15, 402: 35}
        accepted = [a.json() for a in answers if a.status_code == 202]
        assert Counter(a["free"] for a in accepted) == {True: 5, False: 10}
        # Nothing is drawn or charged before the runs start.
        assert await _units(system_pool, account) == {}
        assert await _balance(system_pool, account) == 10

        async with running_worker(settings):
            for run in accepted:
                done = await wait_for(api, account, run["run_id"])
                assert done["status"] == "complete", done
        summaries = (
            await api.get("/api/analysis", params={"page_size": 50}, headers=account.headers)
        ).json()["data"]
    assert sorted(s["credits_charged"] for s in summaries) == [0] * 5 + [1] * 10
    assert await _units(system_pool, account) == {"light": 5}
    assert await _balance(system_pool, account) == 0


async def test_a_failed_or_cancelled_run_gives_its_unit_back(servers, new_account, system_pool):
    account = await new_account(credits_granted=0)
    async with stack(servers) as (_, api):
        failed = await start(api, account, f"notfound_{uuid4().hex[:6]}")
        assert failed.json()["free"] is True
        done = await wait_for(api, account, failed.json()["run_id"])
        assert done["status"] == "failed"
        assert await _units(system_pool, account) == {}

        slow = await start(api, account, f"slow_{uuid4().hex[:6]}")
        run_id = slow.json()["run_id"]
        await wait_for(api, account, run_id, {"processing"}, predicate=_scraping)
        assert await _units(system_pool, account) == {"light": 1}
        cancelled = await api.post(f"/api/analysis/{run_id}/cancel", headers=account.headers)
        assert cancelled.status_code == 202
        assert (await wait_for(api, account, run_id))["status"] == "cancelled"
        assert await _units(system_pool, account) == {}

        # With no credits at all, the five units are still there to use.
        runs = [await start(api, account, f"after_{i}_{uuid4().hex[:4]}") for i in range(6)]
        assert [r.status_code for r in runs] == [202] * 5 + [402]
        for r in runs[:5]:
            assert (await wait_for(api, account, r.json()["run_id"]))["status"] == "complete"
        usage = (await api.get("/api/credits/usage", headers=account.headers)).json()
    light = next(t for t in usage["tiers"] if t["analysis_type"] == "light")
    assert (light["runs"], light["complete"], light["failed"], light["cancelled"]) == (7, 5, 1, 1)
    assert (light["allowance"], light["allowance_used"], light["allowance_left"]) == (5, 5, 0)
    assert (light["credits_spent"], light["credits_refunded"]) == (0, 0)
    async with system_pool.acquire() as conn:
        returned = await conn.fetchval(
            """SELECT count(*) FROM allowance_uses
               WHERE account_id = $1 AND returned_at IS NOT NULL""",
            account.account_id,
        )
    assert returned == 2


def _scraping(progress: dict[str, Any]) -> bool:
    return progress["current_step"] == "scrape_profile"


async def test_a_new_month_brings_fresh_units(servers, new_account, system_pool):
    account = await new_account(credits_granted=1)
    async with system_pool.acquire() as conn:
        await conn.execute("UPDATE accounts SET plan = 'pro' WHERE id = $1", account.account_id)
    async with stack(servers) as (_, api):
        runs = [await start(api, account, f"month_{i}_{uuid4().hex[:4]}") for i in range(4)]
        assert [r.status_code for r in runs] == [202, 202, 202, 402]
        assert [r.json()["free"] for r in runs[:3]] == [True, True, False]
        for r in runs[:3]:
            await wait_for(api, account, r.json()["run_id"])

        # The month turns: the units drawn so far become last month's. Arranged as the
        # superuser, with triggers off for the session, since nothing else may move a unit.
        admin = await asyncpg.connect(servers.database_url)
        try:
            await admin.execute("SET session_replication_role = replica")
            await admin.execute(
                """UPDATE allowance_uses SET month = (month - interval '1 month')::date
                   WHERE account_id = $1""",
                account.account_id,
            )
        finally:
            await admin.close()
        fresh = await start(api, account, f"fresh_{uuid4().hex[:4]}")
        assert fresh.status_code == 202 and fresh.json()["free"] is True
        await wait_for(api, account, fresh.json()["run_id"])
        now = (await api.get("/api/credits/usage", headers=account.headers)).json()
        month = now["month"]
        year, number = (int(part) for part in month.split("-"))
        previous = f"{year - (number == 1)}-{(number - 2) % 12 + 1:02d}"
        before = await api.get(
            "/api/credits/usage", params={"month": previous}, headers=account.headers
        )
    assert now["plan"] == "pro"
    light_now = next(t for t in now["tiers"] if t["analysis_type"] == "light")
    assert (light_now["allowance_used"], light_now["allowance_left"]) == (1, 1)
    light_before = next(t for t in before.json()["tiers"] if t["analysis_type"] == "light")
    assert light_before["allowance_used"] == 2
    assert await _balance(system_pool, account) == 0


async def test_batches_draw_on_the_allowance_and_refund_what_fails(
    servers, new_account, system_pool
):
    account = await new_account(credits_granted=3)
    async with stack(servers) as (_, api):
        # The first five items are free (the allowance), the other three paid; one of each
        # kind fails.
        names = [f"b{i}_{uuid4().hex[:4]}" for i in range(8)]
        names[1] = f"notfound_{uuid4().hex[:4]}"
        names[6] = f"notfound_{uuid4().hex[:4]}"
        response = await api.post(
            "/api/leads/analyze/bulk",
            json={
                "usernames": names,
                "analysis_type": "light",
                "business_profile_id": str(account.business_profile_id),
            },
            headers=account.headers,
        )
        assert response.status_code == 202, response.text
        batch = response.json()
        assert (batch["total"], batch["free_items"], batch["credits_charged"]) == (8, 5, 3)
        batch_id = batch["batch_id"]
        for _ in range(300):
            progress = await api.get(
                f"/api/leads/analyze/bulk/{batch_id}/progress", headers=account.headers
            )
            if progress.json()["status"] == "complete":
                break
            await asyncio.sleep(0.1)
        body = progress.json()
        assert body["counts"]["complete"] == 6 and body["counts"]["failed"] == 2
        assert (body["credits_charged"], body["credits_refunded"]) == (3, 1)
        # A batch the balance cannot pay past the allowance: 402 says what would.
        refused = await api.post(
            "/api/leads/analyze/bulk",
            json={
                "usernames": [f"more_{i}_{uuid4().hex[:4]}" for i in range(3)],
                "analysis_type": "light",
                "business_profile_id": str(account.business_profile_id),
            },
            headers=account.headers,
        )
    assert await _units(system_pool, account) == {"light": 4}
    assert await _balance(system_pool, account) == 1
    assert refused.status_code == 402
    error = refused.json()["error"]
    assert (error["free"], error["affordable"], error["accepted"]) == (1, 2, 3)


async def test_an_allowance_spent_meanwhile_charges_credits_instead(
    servers, new_account, system_pool
):
    """The API promised a unit, then the plan lost its allowance before the run started:
    the charge step, the authority, charges credits instead."""
    account = await new_account(credits_granted=5)
    async with stack(servers, worker=False) as (settings, api):
        promised = await start(api, account, f"promised_{uuid4().hex[:4]}")
        assert promised.json()["free"] is True
        # The same queue, and plans with no allowance.
        poorer = make_settings(servers, task_queue=settings.task_queue)
        async with running_worker(poorer):
            done = await wait_for(api, account, promised.json()["run_id"])
    assert done["status"] == "complete"
    assert await _units(system_pool, account) == {}
    assert await _balance(system_pool, account) == 4


async def test_a_batch_the_credits_no_longer_pay_for_keeps_no_unit(
    servers, new_account, system_pool
):
    """Promised two free items and two paid; the plan shrinks to one free item before the
    batch starts, so its charge (three credits on a balance of two) fails: the batch fails,
    and the unit its charge step drew first is not kept."""
    account = await new_account(credits_granted=2)
    async with system_pool.acquire() as conn:
        await conn.execute("UPDATE accounts SET plan = 'pro' WHERE id = $1", account.account_id)
    async with stack(servers, worker=False) as (settings, api):
        response = await api.post(
            "/api/leads/analyze/bulk",
            json={
                "usernames": [f"shrink{i}_{uuid4().hex[:4]}" for i in range(4)],
                "analysis_type": "light",
                "business_profile_id": str(account.business_profile_id),
            },
            headers=account.headers,
        )
        assert response.status_code == 202, response.text
        assert (response.json()["free_items"], response.json()["credits_charged"]) == (2, 2)
        async with system_pool.acquire() as conn:
            await conn.execute(
                "UPDATE accounts SET plan = 'mini' WHERE id = $1", account.account_id
            )
        batch_id = response.json()["batch_id"]
        async with running_worker(settings):
            for _ in range(100):
                progress = (
                    await api.get(
                        f"/api/leads/analyze/bulk/{batch_id}/progress", headers=account.headers
                    )
                ).json()
                if progress["status"] == "failed":
                    break
                await asyncio.sleep(0.1)
    assert progress["status"] == "failed", progress
    assert progress["error"]["code"] == "insufficient_credits"
    assert progress["counts"]["failed"] == 4
    assert await _units(system_pool, account) == {}
    assert await _balance(system_pool, account) == 2


async def test_pricing_is_public_and_from_configuration(servers):
    async with stack(servers, worker=False) as (_, api):
        response = await api.get("/api/credits/pricing")
    assert response.status_code == 200
    body = response.json()
    assert body["tiers"] == [
        {"analysis_type": "light", "credits": 1},
        {"analysis_type": "deep", "credits": 3},
        {"analysis_type": "xray", "credits": 5},
    ]
    plans = {plan["id"]: plan for plan in body["plans"]}
    assert plans["free"]["allowances"] == {"light": 5}
    assert plans["pro"]["allowances"] == {"light": 2, "deep": 1}
    assert plans["pro"]["analyses_per_hour"] == 900
    assert plans["mini"]["allowances"] == {"light": 1}


@pytest.mark.parametrize("month", ["2026-13", "26-11", "0000-01", "2026-1"])
async def test_usage_refuses_a_month_it_cannot_read(api, new_account, month):
    account = await new_account()
    response = await api.get("/api/credits/usage", params={"month": month}, headers=account.headers)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "month"


async def test_transactions_filter_by_kind_dates_run_and_batch(api, new_account, system_pool):
    account = await new_account(credits_granted=10)
    first = await start_ok(api, account, f"tx_{uuid4().hex[:6]}")
    await wait_for(api, account, first)
    failed = await start_ok(api, account, f"notfound_{uuid4().hex[:6]}")
    await wait_for(api, account, failed)

    async def kinds(**params: Any) -> list[tuple[str, int]]:
        response = await api.get(
            "/api/credits/transactions", params=params, headers=account.headers
        )
        assert response.status_code == 200, response.text
        return [(e["kind"], e["delta"]) for e in response.json()["data"]]

    assert await kinds() == [("refund", 1), ("charge", -1), ("charge", -1), ("grant", 10)]
    assert await kinds(kind="charge") == [("charge", -1), ("charge", -1)]
    assert await kinds(run_id=failed) == [("refund", 1), ("charge", -1)]
    assert await kinds(run_id=str(uuid4())) == []
    assert await kinds(batch_id=str(uuid4())) == []
    entries = (await api.get("/api/credits/transactions", headers=account.headers)).json()["data"]
    grant_at = entries[-1]["created_at"]
    assert await kinds(to=grant_at) == []
    assert await kinds(**{"from": grant_at, "kind": "grant"}) == [("grant", 10)]
    assert await kinds(**{"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}) == []
    wrong = await api.get(
        "/api/credits/transactions", params={"kind": "gift"}, headers=account.headers
    )
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "kind"
