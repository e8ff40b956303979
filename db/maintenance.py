"""What the scheduled cleanup and renewal jobs do to the database (system role)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from uuid import UUID

from db import billing, credits
from db.pool import Connection

PURGE_AFTER_DAYS = 30
WEBHOOK_EVENTS_KEPT_DAYS = 90  # Stripe retries for 3 days: far past any redelivery
PURGE_CHUNK = 1_000  # leads deleted per statement
TOMBSTONE = "Deleted business profile"


@dataclass(frozen=True)
class Purged:
    leads: int
    business_profiles: int
    business_profiles_emptied: int
    webhook_events: int


async def purge(conn: Connection) -> Purged:
    """Hard-deletes, by the database's clock:
    - leads deleted more than 30 days ago; the runs that made them stay (with their ledger
      rows), pointing at no lead. The leads of a deleted business profile are not deleted
      leads: they stay listed, paid for, until deleted themselves;
    - business profiles deleted that long ago that no run, batch or lead refers to; the
      others keep an empty row under a neutral name, since their runs' ledger rows must
      stay;
    - Stripe events applied (or ignored) and received more than 90 days ago. Dead-lettered
      events stay until an operator replays them;
    - AI circuit states unchanged for a day.
    """
    leads = 0
    while True:
        async with conn.transaction():
            ids: list[UUID] = [
                row["id"]
                for row in await conn.fetch(
                    """SELECT id FROM leads
                       WHERE deleted_at < now() - make_interval(days => $1)
                       LIMIT $2 FOR UPDATE SKIP LOCKED""",
                    PURGE_AFTER_DAYS,
                    PURGE_CHUNK,
                )
            ]
            if ids:
                await conn.execute(
                    """UPDATE analyses SET lead_id = NULL, updated_at = now()
                       WHERE lead_id = ANY($1::uuid[])""",
                    ids,
                )
                await conn.execute("DELETE FROM leads WHERE id = ANY($1::uuid[])", ids)
        leads += len(ids)
        if len(ids) < PURGE_CHUNK:
            break
    async with conn.transaction():
        deleted = await conn.fetch(
            """DELETE FROM business_profiles b
               WHERE b.deleted_at < now() - make_interval(days => $1)
                 AND NOT EXISTS (SELECT 1 FROM analyses a WHERE a.business_profile_id = b.id)
                 AND NOT EXISTS (SELECT 1 FROM batches t WHERE t.business_profile_id = b.id)
                 AND NOT EXISTS (SELECT 1 FROM leads l WHERE l.business_profile_id = b.id)
               RETURNING id""",
            PURGE_AFTER_DAYS,
        )
        emptied = await conn.fetch(
            """UPDATE business_profiles
               SET name = $2, description = '', offering = '', target_audience = '',
                   updated_at = now()
               WHERE deleted_at < now() - make_interval(days => $1)
                 AND (name, description, offering, target_audience) <> ($2, '', '', '')
               RETURNING id""",
            PURGE_AFTER_DAYS,
            TOMBSTONE,
        )
    events = await conn.execute(
        """DELETE FROM stripe_events
           WHERE status IN ('processed', 'ignored')
             AND received_at < now() - make_interval(days => $1)""",
        WEBHOOK_EVENTS_KEPT_DAYS,
    )
    # Circuit states a worker recorded and did not change for a day: health ignores them
    # after the breaker's pause already; these are mostly of workers long gone.
    await conn.execute("DELETE FROM provider_circuits WHERE changed_at < now() - interval '1 day'")
    return Purged(
        leads=leads,
        business_profiles=len(deleted),
        business_profiles_emptied=len(emptied),
        webhook_events=int(events.rsplit(" ", 1)[-1]),
    )


async def renewal_period(conn: Connection) -> date:
    period: date = await conn.fetchval("SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date")
    return period


async def renew(conn: Connection, grants: dict[str, int], period: date) -> list[UUID]:
    """Grants each live account of a plan in `grants` its plan's credits for `period`, once
    per account and period (key `renewal:<account>:<period start>`); returns the accounts
    granted now. Accounts billed through a Stripe subscription are left to it."""
    granted = []
    rows = await conn.fetch(
        """SELECT id, plan FROM accounts a
           WHERE deleted_at IS NULL AND plan = ANY($1::text[])
             AND NOT EXISTS (SELECT 1 FROM subscriptions s
                             WHERE s.account_id = a.id AND s.status = ANY($2::text[]))
           ORDER BY id""",
        list(grants),
        list(billing.LIVE),
    )
    for row in rows:
        async with conn.transaction():
            movement = await credits.grant(
                conn,
                account_id=row["id"],
                amount=grants[row["plan"]],
                key=f"renewal:{row['id']}:{period.isoformat()}",
                kind="renewal",
                reference=f"plan:{row['plan']}",
                description=f"{row['plan']} plan credits for {period:%Y-%m}",
            )
        if movement.new:
            granted.append(row["id"])
    return granted
