"""The ledger under retries and concurrency, at the database level."""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

import asyncpg
import pytest

from db import credits
from tests.helpers import insert_run


async def _run_row(pool: asyncpg.Pool, account, cost: int = 1) -> UUID:
    return await insert_run(pool, account, f"u{uuid4().hex[:8]}", cost)


async def _charge(pool: asyncpg.Pool, account, run_id: UUID, cost: int = 1):
    async with pool.acquire() as conn, conn.transaction():
        return await credits.charge_run(
            conn, account_id=account.account_id, run_id=run_id, cost=cost
        )


async def _refund(pool: asyncpg.Pool, account, run_id: UUID):
    async with pool.acquire() as conn, conn.transaction():
        return await credits.refund_run(conn, account_id=account.account_id, run_id=run_id)


async def _mark(pool, run_id, status):
    await pool.execute("UPDATE analyses SET status = $2 WHERE id = $1", run_id, status)


async def test_concurrent_retries_of_one_charge_take_credits_once(new_account, system_pool):
    account = await new_account(credits_granted=5)
    run_id = await _run_row(system_pool, account, 2)
    movements = await asyncio.gather(*(_charge(system_pool, account, run_id, 2) for _ in range(5)))
    assert sum(m.new for m in movements) == 1
    assert {m.balance_after for m in movements} == {3}
    assert (
        await system_pool.fetchval(
            "SELECT balance FROM credit_balances WHERE account_id = $1", account.account_id
        )
        == 3
    )
    await _refund(system_pool, account, run_id)
    await _mark(system_pool, run_id, "failed")


async def test_refund_happens_once_and_only_after_a_charge(new_account, system_pool):
    account = await new_account(credits_granted=4)
    never_charged = await _run_row(system_pool, account)
    assert await _refund(system_pool, account, never_charged) is None
    await _mark(system_pool, never_charged, "failed")

    run_id = await _run_row(system_pool, account, 3)
    await _charge(system_pool, account, run_id, 3)
    refunds = await asyncio.gather(*(_refund(system_pool, account, run_id) for _ in range(4)))
    assert sum(r.new for r in refunds) == 1
    await _mark(system_pool, run_id, "cancelled")
    assert (
        await system_pool.fetchval(
            "SELECT balance FROM credit_balances WHERE account_id = $1", account.account_id
        )
        == 4
    )


async def test_concurrent_charges_never_overdraw(new_account, system_pool):
    account = await new_account(credits_granted=7)
    runs = [await _run_row(system_pool, account, 2) for _ in range(10)]
    results = await asyncio.gather(
        *(_charge(system_pool, account, r, 2) for r in runs), return_exceptions=True
    )
    charged = [
        r for r, result in zip(runs, results, strict=True) if not isinstance(result, Exception)
    ]
    refused = [result for result in results if isinstance(result, Exception)]
    assert len(charged) == 3
    assert all(isinstance(e, credits.InsufficientCredits) for e in refused)
    assert (
        await system_pool.fetchval(
            "SELECT balance FROM credit_balances WHERE account_id = $1", account.account_id
        )
        == 1
    )
    for run_id in runs:
        if run_id in charged:
            await _mark(system_pool, run_id, "processing")
            await system_pool.execute(
                "UPDATE analyses SET status = 'complete', credits_charged = 2 WHERE id = $1",
                run_id,
            )
        else:
            await _mark(system_pool, run_id, "failed")


async def test_ledger_rows_cannot_be_changed_or_removed(new_account, system_pool, servers):
    account = await new_account(credits_granted=1)
    for statement in (
        "UPDATE credit_ledger SET delta = 100 WHERE account_id = $1",
        "DELETE FROM credit_ledger WHERE account_id = $1",
    ):
        with pytest.raises(asyncpg.PostgresError):  # no grant for the worker role
            await system_pool.execute(statement, account.account_id)
    owner = await asyncpg.connect(servers.database_url)
    try:
        with pytest.raises(asyncpg.RaiseError, match="never updated or deleted"):
            await owner.execute(
                "UPDATE credit_ledger SET delta = 100 WHERE account_id = $1", account.account_id
            )
    finally:
        await owner.close()


async def test_balance_check_constraint_refuses_a_negative_balance(new_account, system_pool):
    account = await new_account(credits_granted=1)
    with pytest.raises(asyncpg.CheckViolationError):
        await system_pool.execute(
            "UPDATE credit_balances SET balance = -1 WHERE account_id = $1", account.account_id
        )
