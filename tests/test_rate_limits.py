"""Rate limits per account and family, shared by every API process through PostgreSQL: 429
with Retry-After and RateLimit-* headers, and nothing created or charged when refused."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any
from uuid import uuid4

import asyncpg
import httpx

from tests.conftest import Account, Servers, app_client, make_settings
from tests.helpers import running_api, start

PLANS: dict[str, Any] = {
    "free": {"name": "Free", "analyses_per_hour": 5, "requests_per_minute": 12},
    "pro": {"name": "Pro", "analyses_per_hour": 8, "requests_per_minute": 1_000},
}


async def _clear_of_window_end(servers: Servers, unit: str, margin: float) -> None:
    """Waits for the next window when the current one (by the database's clock) ends within
    `margin` seconds, so a test's hits all land in one window."""
    conn = await asyncpg.connect(servers.database_url)
    try:
        left = await conn.fetchval(
            "SELECT extract(epoch FROM date_trunc($1, now()) + ('1 ' || $1)::interval - now())",
            unit,
        )
    finally:
        await conn.close()
    if left < margin:
        await asyncio.sleep(float(left) + 0.2)


async def test_two_api_processes_share_the_per_minute_limit(servers, new_account):
    account = await new_account()
    settings = make_settings(servers, plans=PLANS)
    await _clear_of_window_end(servers, "minute", 20)
    with running_api(settings) as first, running_api(settings) as second:
        async with httpx.AsyncClient(timeout=10) as client:
            answers = []
            for i in range(16):
                api = first if i % 2 == 0 else second
                answers.append(
                    await client.get(f"{api.url}/api/credits/balance", headers=account.headers)
                )
    assert Counter(a.status_code for a in answers) == {200: 12, 429: 4}
    assert [a.status_code for a in answers[:12]] == [200] * 12  # both processes counted
    remaining = [int(a.headers["RateLimit-Remaining"]) for a in answers[:12]]
    assert remaining == list(range(11, -1, -1))
    refused = answers[12]
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.headers["RateLimit-Limit"] == "12"
    assert refused.headers["RateLimit-Remaining"] == "0"
    reset = int(refused.headers["RateLimit-Reset"])
    assert 1 <= reset <= 60
    assert int(refused.headers["Retry-After"]) == reset


async def _batch(api: httpx.AsyncClient, account: Account, n: int) -> httpx.Response:
    return await api.post(
        "/api/leads/analyze/bulk",
        json={
            "usernames": [f"rl{i}_{uuid4().hex[:6]}" for i in range(n)],
            "analysis_type": "light",
            "business_profile_id": str(account.business_profile_id),
        },
        headers=account.headers,
    )


async def _created(pool: asyncpg.Pool, account: Account) -> tuple[int, int]:
    runs = await pool.fetchval(
        "SELECT count(*) FROM analyses WHERE account_id = $1", account.account_id
    )
    batches = await pool.fetchval(
        "SELECT count(*) FROM batches WHERE account_id = $1", account.account_id
    )
    return runs, batches


async def test_analyses_per_hour_count_batch_items_and_refusals_create_nothing(
    servers, new_account, system_pool
):
    account, pro = await new_account(credits_granted=50), await new_account(credits_granted=50)
    async with system_pool.acquire() as conn:
        await conn.execute("UPDATE accounts SET plan = 'pro' WHERE id = $1", pro.account_id)
    # A queue no worker polls: runs stay pending, promised but not charged.
    settings = make_settings(servers, plans=PLANS, task_queue=f"rl-{uuid4().hex[:8]}")
    await _clear_of_window_end(servers, "hour", 30)
    async with app_client(settings) as api:
        assert (await _batch(api, account, 3)).status_code == 202
        single = await start(api, account, f"one_{uuid4().hex[:6]}")
        assert single.status_code == 202
        assert single.headers["RateLimit-Limit"] == "5"
        assert single.headers["RateLimit-Remaining"] == "1"

        before = await _created(system_pool, account)
        too_many = await _batch(api, account, 2)
        assert too_many.status_code == 429
        error = too_many.json()["error"]
        assert error["code"] == "rate_limited"
        assert "5 analyses an hour; 1 left" in error["message"]
        assert too_many.headers["RateLimit-Remaining"] == "1"
        assert int(too_many.headers["Retry-After"]) >= 1
        assert await _created(system_pool, account) == before

        assert (await start(api, account, f"two_{uuid4().hex[:6]}")).status_code == 202
        refused = await start(api, account, f"three_{uuid4().hex[:6]}")
        assert refused.status_code == 429
        assert refused.headers["RateLimit-Remaining"] == "0"

        # Another plan, another limit; another account, its own count.
        assert (await _batch(api, pro, 8)).status_code == 202
        assert (await _batch(api, pro, 1)).status_code == 429
    runs, batches = await _created(system_pool, account)
    assert (runs, batches) == (5, 1)
    async with system_pool.acquire() as conn:
        promised = await conn.fetchval(
            "SELECT count(*) FROM credit_ledger WHERE account_id = $1 AND kind = 'charge'",
            account.account_id,
        )
    assert promised == 0
