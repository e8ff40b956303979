"""Stripe webhook events: stored once by id, processed once, dead-lettered when they keep
failing (migration 0014)."""

from __future__ import annotations

from typing import Any

import asyncpg

from db.pool import Connection


async def receive(
    conn: Connection, event_id: str, event_type: str, payload: dict[str, Any]
) -> bool:
    """Stores the event unless it was stored before; True when it is new."""
    return bool(
        await conn.fetchval(
            "SELECT receive_stripe_event($1, $2, $3)", event_id, event_type, payload
        )
    )


async def lock(conn: Connection, event_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, type, payload, status, attempts FROM stripe_events WHERE id = $1 FOR UPDATE",
        event_id,
    )


async def finish(conn: Connection, event_id: str, status: str) -> None:
    await conn.execute(
        """UPDATE stripe_events SET status = $2, attempts = attempts + 1, last_error = NULL,
               processed_at = now()
           WHERE id = $1""",
        event_id,
        status,
    )


async def fail(conn: Connection, event_id: str, error: str) -> None:
    """The dead-letter state: processing kept failing; `oslira webhooks replay` retries."""
    await conn.execute(
        """UPDATE stripe_events SET status = 'failed', attempts = attempts + 1,
               last_error = $2
           WHERE id = $1 AND status <> 'processed'""",
        event_id,
        error[:2000],
    )


async def failed(conn: Connection, limit: int = 100) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT id, type, attempts, last_error, received_at FROM stripe_events
           WHERE status = 'failed' ORDER BY received_at LIMIT $1""",
        limit,
    )


async def recent(conn: Connection, limit: int = 100) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT id, type, status, attempts, last_error, received_at, processed_at
           FROM stripe_events ORDER BY received_at DESC LIMIT $1""",
        limit,
    )


async def reopen(conn: Connection, event_id: str) -> str | None:
    """A dead-lettered event goes back to `received`, for a replay; answers the status the
    event has now (None: no such event)."""
    status: str | None = await conn.fetchval(
        """UPDATE stripe_events SET status = 'received'
           WHERE id = $1 AND status = 'failed' RETURNING status""",
        event_id,
    )
    if status is None:
        status = await conn.fetchval("SELECT status FROM stripe_events WHERE id = $1", event_id)
    return status


async def unqueued(conn: Connection, *, older_than_seconds: float, limit: int) -> list[str]:
    """Events still waiting to be applied, stored at least that long ago: their workflow
    may never have started (Temporal was out of reach when they came)."""
    rows = await conn.fetch(
        """SELECT id FROM stripe_events
           WHERE status = 'received'
             AND received_at < now() - make_interval(secs => $1)
           ORDER BY received_at LIMIT $2""",
        older_than_seconds,
        limit,
    )
    return [r["id"] for r in rows]
