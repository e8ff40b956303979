"""Leases on the providers' slots: the SQL of the global provider cap (activities.slots)."""

from __future__ import annotations

from uuid import UUID

from db.pool import Connection

CHANNEL = "provider_slots"  # NOTIFY'd with the provider's name when one of its slots frees


async def ensure(conn: Connection, provider: str, count: int) -> None:
    """The provider has slots 0..count-1 (a smaller count leaves the others unused)."""
    await conn.execute(
        """INSERT INTO provider_slots (provider, slot)
           SELECT $1, s FROM generate_series(0, $2 - 1) s ON CONFLICT DO NOTHING""",
        provider,
        count,
    )


async def acquire(
    conn: Connection,
    provider: str,
    count: int,
    holder: UUID,
    run_id: UUID,
    ttl: float,
    worker: str,
) -> int | None:
    """Takes a free slot (never taken, released, or whose lease expired); None when all
    `count` are held."""
    slot: int | None = await conn.fetchval(
        # The free slot is picked once (a materialized CTE): as a joined subquery the
        # planner may rescan it per row, and a rescan skips the row it has just locked.
        """WITH free AS MATERIALIZED (
               SELECT slot FROM provider_slots
               WHERE provider = $1 AND slot < $2 AND (holder IS NULL OR expires_at < now())
               ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED)
           UPDATE provider_slots s
           SET holder = $3, run_id = $4, worker = $6, acquired_at = now(),
               expires_at = now() + make_interval(secs => $5)
           FROM free
           WHERE s.provider = $1 AND s.slot = free.slot
           RETURNING s.slot""",
        provider,
        count,
        holder,
        run_id,
        ttl,
        worker,
    )
    return slot


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


async def release(conn: Connection, provider: str, slot: int, holder: UUID) -> None:
    await conn.execute(
        """WITH freed AS (
               UPDATE provider_slots
               SET holder = NULL, run_id = NULL, worker = NULL, expires_at = NULL
               WHERE provider = $1 AND slot = $2 AND holder = $3 RETURNING provider)
           SELECT pg_notify($4, provider) FROM freed""",
        provider,
        slot,
        holder,
        CHANNEL,
    )


async def in_use(conn: Connection, provider: str) -> int:
    value = await conn.fetchval(
        """SELECT count(*) FROM provider_slots
           WHERE provider = $1 AND holder IS NOT NULL AND expires_at >= now()""",
        provider,
    )
    return int(value)
