"""Accounts' Stripe customers and subscriptions (migration 0015)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from core.settings import FREE_PLAN
from db.pool import Connection

# Statuses in which a subscription sets the account's plan: paid, on trial, or in the
# grace of Stripe's payment retries (past due). `unpaid` (retries exhausted) does not.
LIVE = ("active", "trialing", "past_due")


@dataclass(frozen=True)
class SubscriptionState:
    """A subscription as Stripe last answered it."""

    id: str
    account_id: UUID
    customer_id: str
    plan: str
    status: str
    current_period_start: datetime
    current_period_end: datetime
    cancel_at_period_end: bool
    canceled_at: datetime | None


async def customer_of(conn: Connection, account_id: UUID) -> str | None:
    customer: str | None = await conn.fetchval(
        "SELECT stripe_customer_id FROM accounts WHERE id = $1", account_id
    )
    return customer


async def set_customer(conn: Connection, account_id: UUID, customer_id: str) -> str:
    """Records the account's customer unless one was recorded first; answers the one kept."""
    kept = await conn.fetchval("SELECT set_stripe_customer($1, $2)", account_id, customer_id)
    if kept is None:  # a concurrent request recorded one after this statement's snapshot
        kept = await customer_of(conn, account_id)
    if kept is None:
        raise LookupError(f"account {account_id} is not the request's account")
    return str(kept)


async def lock_subscription(conn: Connection, subscription_id: str) -> None:
    """Serialises the handlers of one subscription's events for the transaction."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('subscription:' || $1, 0))",
        subscription_id,
    )


async def store(conn: Connection, state: SubscriptionState) -> None:
    await conn.execute(
        """INSERT INTO subscriptions (id, account_id, customer_id, plan, status,
               current_period_start, current_period_end, cancel_at_period_end, canceled_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (id) DO UPDATE SET plan = excluded.plan, status = excluded.status,
               current_period_start = excluded.current_period_start,
               current_period_end = excluded.current_period_end,
               cancel_at_period_end = excluded.cancel_at_period_end,
               canceled_at = excluded.canceled_at, updated_at = now()""",
        state.id,
        state.account_id,
        state.customer_id,
        state.plan,
        state.status,
        state.current_period_start,
        state.current_period_end,
        state.cancel_at_period_end,
        state.canceled_at,
    )


async def settle_plan(conn: Connection, account_id: UUID, default_plan: str) -> str:
    """The account's plan is its newest live subscription's, or `default_plan` when none
    is live; answers the plan set."""
    plan: str = await conn.fetchval(
        """UPDATE accounts SET plan = coalesce(
               (SELECT s.plan FROM subscriptions s
                WHERE s.account_id = $1 AND s.status = ANY($3::text[])
                ORDER BY s.created_at DESC LIMIT 1), $2)
           WHERE id = $1 RETURNING plan""",
        account_id,
        default_plan,
        list(LIVE),
    )
    return plan


async def current(conn: Connection, account_id: UUID) -> asyncpg.Record | None:
    """The account's newest live subscription, else its newest one."""
    return await conn.fetchrow(
        """SELECT id, plan, status, current_period_start, current_period_end,
                  cancel_at_period_end, canceled_at
           FROM subscriptions WHERE account_id = $1
           ORDER BY status = ANY($2::text[]) DESC, created_at DESC LIMIT 1""",
        account_id,
        list(LIVE),
    )


async def live_ids(conn: Connection) -> list[str]:
    """Every subscription still billing, for the renewal job to re-read."""
    rows = await conn.fetch(
        "SELECT id FROM subscriptions WHERE status = ANY($1::text[]) ORDER BY id", list(LIVE)
    )
    return [r["id"] for r in rows]


async def accounts_billed_by_stripe(conn: Connection) -> list[UUID]:
    rows = await conn.fetch(
        "SELECT DISTINCT account_id FROM subscriptions WHERE status = ANY($1::text[])",
        list(LIVE),
    )
    return [r["account_id"] for r in rows]


async def live_count(conn: Connection, account_id: UUID) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM subscriptions WHERE account_id = $1 AND status = ANY($2::text[])",
        account_id,
        list(LIVE),
    )
    return count


async def forget(conn: Connection, subscription_id: str) -> bool:
    """A subscription Stripe no longer knows ends here (`canceled`), and its account's plan
    is settled again; False when it was never stored."""
    account_id = await conn.fetchval(
        """UPDATE subscriptions SET status = 'canceled', canceled_at = coalesce(canceled_at, now()),
               updated_at = now()
           WHERE id = $1 RETURNING account_id""",
        subscription_id,
    )
    if account_id is None:
        return False
    await settle_plan(conn, account_id, FREE_PLAN)
    return True
