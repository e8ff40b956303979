"""Leases on the providers' slots, handed out in a fair order: the SQL of the global provider
cap (activities.slots; migrations 0005 and 0006)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from db.pool import Connection

CHANNEL = "provider_slots"  # NOTIFY'd with the provider's name when slots are handed out

INTERACTIVE = 1  # a single analysis somebody waits for
BATCH = 2  # an item of a batch: after the account's interactive work


@dataclass(frozen=True)
class Waiter:
    """Who waits for a slot: `holder` is the lease it will hold."""

    provider: str
    holder: UUID
    account_id: UUID
    priority: int
    run_id: UUID
    worker: str


async def ensure(conn: Connection, provider: str, count: int) -> None:
    """The provider has slots 0..count-1 (a smaller count leaves the others unused)."""
    await conn.execute(
        """INSERT INTO provider_slots (provider, slot)
           SELECT $1, s FROM generate_series(0, $2 - 1) s ON CONFLICT DO NOTHING""",
        provider,
        count,
    )


async def enter(conn: Connection, waiter: Waiter, cap: int, ttl: float) -> int | None:
    """Queues `waiter` and hands out what is free; its slot when it got one at once (it no
    longer waits then), else None: it waits until `claim` finds its slot."""
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO provider_waiters
                   (holder, provider, account_id, priority, run_id, worker, expires_at)
               VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))
               ON CONFLICT (holder) DO NOTHING""",  # a retry after a lost commit
            waiter.holder,
            waiter.provider,
            waiter.account_id,
            waiter.priority,
            waiter.run_id,
            waiter.worker,
            ttl,
        )
        await conn.execute(
            "SELECT provider_slots_grant($1, $2, $3, $4)", waiter.provider, cap, ttl, waiter.holder
        )
        slot: int | None = await conn.fetchval(
            """DELETE FROM provider_waiters WHERE holder = $1 AND slot IS NOT NULL
               RETURNING slot""",
            waiter.holder,
        )
    return slot


async def grant(conn: Connection, provider: str, cap: int, ttl: float) -> int:
    """Hands free slots (released, or whose lease expired) to the next waiters in turn."""
    granted: int = await conn.fetchval(
        "SELECT provider_slots_grant($1, $2, $3)", provider, cap, ttl
    )
    return granted


async def claim(conn: Connection, holders: Iterable[UUID]) -> dict[UUID, int]:
    """The slots handed to any of `holders`, which stop waiting."""
    rows = await conn.fetch(
        """DELETE FROM provider_waiters WHERE holder = ANY($1::uuid[]) AND slot IS NOT NULL
           RETURNING holder, slot""",
        list(holders),
    )
    return {row["holder"]: row["slot"] for row in rows}


async def keep_waiting(conn: Connection, holders: Iterable[UUID], ttl: float) -> None:
    """Renews waiters, which are passed over once their worker stops renewing them."""
    await conn.execute(
        """UPDATE provider_waiters SET expires_at = now() + make_interval(secs => $2)
           WHERE holder = ANY($1::uuid[])""",
        list(holders),
        ttl,
    )


async def leave(conn: Connection, provider: str, holder: UUID, cap: int, ttl: float) -> None:
    """A waiter gives up (its call was cancelled); a slot handed to it meanwhile goes on to
    the next waiter."""
    async with conn.transaction():
        slot: int | None = await conn.fetchval(
            "DELETE FROM provider_waiters WHERE holder = $1 RETURNING slot", holder
        )
        if slot is not None:
            await _free(conn, provider, slot, holder)
            await grant(conn, provider, cap, ttl)


async def renew(conn: Connection, provider: str, slot: int, holder: UUID, ttl: float) -> bool:
    """False when the lease was lost (it expired and another took the slot)."""
    renewed = await conn.fetchval(
        """UPDATE provider_slots SET expires_at = now() + make_interval(secs => $4)
           WHERE provider = $1 AND slot = $2 AND holder = $3 RETURNING true""",
        provider,
        slot,
        holder,
        ttl,
    )
    return bool(renewed)


async def release(
    conn: Connection, provider: str, slot: int, holder: UUID, cap: int, ttl: float
) -> None:
    """Frees the slot and, in the same transaction, hands it to the next waiter."""
    async with conn.transaction():
        if await _free(conn, provider, slot, holder):
            await grant(conn, provider, cap, ttl)


async def _free(conn: Connection, provider: str, slot: int, holder: UUID) -> bool:
    freed = await conn.fetchval(
        """UPDATE provider_slots
           SET holder = NULL, run_id = NULL, worker = NULL, expires_at = NULL
           WHERE provider = $1 AND slot = $2 AND holder = $3 RETURNING true""",
        provider,
        slot,
        holder,
    )
    return bool(freed)


async def in_use(conn: Connection, provider: str) -> int:
    value = await conn.fetchval(
        """SELECT count(*) FROM provider_slots
           WHERE provider = $1 AND holder IS NOT NULL AND expires_at >= now()""",
        provider,
    )
    return int(value)


async def waiting(conn: Connection, provider: str) -> int:
    value = await conn.fetchval(
        """SELECT count(*) FROM provider_waiters
           WHERE provider = $1 AND slot IS NULL AND expires_at >= now()""",
        provider,
    )
    return int(value)
