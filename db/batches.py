"""Batches and their items (DESIGN.md section 6): the `batches` row and the item runs, which
are `analyses` rows with `batch_id` and `batch_position`.

Who writes what: the API accepts a batch and its items (`insert`), flags it for
cancellation (`request_cancel`) and ends one whose workflow could not start or does not
exist (`mark_not_started`, `cancel_unstarted`); the batch's workflow charges it
(`db.credits.charge_batch` with `start`), ends the items it never started
(`end_unstarted`) and ends it (`finish`); each item's own workflow does the rest of an
item's life, as for a single run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any
from uuid import UUID

import asyncpg

from core.models import BatchItem
from core.progress import Progress
from db.analyses import steps_json
from db.pool import Connection

FINISHED = ("complete", "cancelled", "failed")
ITEM_STATUSES = ("pending", "processing", "complete", "failed", "cancelled")

_BATCH_COLUMNS = """id, account_id, business_profile_id, analysis_type, credits_cost, total,
    rejected, status, idempotency_key, request_hash, cancel_requested_at, error_code,
    error_message, created_at, started_at, finished_at, free_items, allowance_month"""


# --- API side (tenant-scoped connection) ----------------------------------------------


async def find_by_idempotency_key(
    conn: Connection, account_id: UUID, key: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_BATCH_COLUMNS} FROM batches WHERE account_id = $1 AND idempotency_key = $2",
        account_id,
        key,
    )


async def in_flight(
    conn: Connection, account_id: UUID, business_profile_id: UUID, usernames: list[str]
) -> dict[str, UUID]:
    """Which of `usernames` already have a run in flight for the business profile: its id."""
    rows = await conn.fetch(
        """SELECT username, id FROM analyses
           WHERE account_id = $1 AND business_profile_id = $2 AND username = ANY($3::text[])
             AND status IN ('pending', 'processing')""",
        account_id,
        business_profile_id,
        usernames,
    )
    return {row["username"]: row["id"] for row in rows}


async def insert(
    conn: Connection,
    *,
    batch_id: UUID,
    account_id: UUID,
    business_profile_id: UUID,
    requested_by: UUID | None,
    analysis_type: str,
    credits_cost: int,
    items: list[tuple[UUID, str]],
    rejected: list[dict[str, Any]],
    accepted: Progress,
    idempotency_key: str | None,
    request_hash: str,
    free_items: int = 0,
    allowance_month: date | None = None,
) -> asyncpg.Record:
    """The batch's row and one pending run per item, in order; `accepted` is the progress
    document every item starts with (steps 1-4 done). The first `free_items` items are
    promised to the free allowance of `allowance_month`. With no items the batch is
    complete at once. Raises UniqueViolationError when the key was used meanwhile."""
    row = await conn.fetchrow(
        f"""INSERT INTO batches (id, account_id, business_profile_id, requested_by,
                analysis_type, credits_cost, total, rejected, idempotency_key, request_hash,
                status, finished_at, free_items, allowance_month)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                    CASE WHEN $7 = 0 THEN 'complete' ELSE 'pending' END,
                    CASE WHEN $7 = 0 THEN now() END, $11, $12)
            RETURNING {_BATCH_COLUMNS}""",
        batch_id,
        account_id,
        business_profile_id,
        requested_by,
        analysis_type,
        credits_cost,
        len(items),
        rejected,
        idempotency_key,
        request_hash,
        free_items,
        allowance_month if free_items else None,
    )
    assert row is not None
    await conn.execute(
        """INSERT INTO analyses (id, account_id, business_profile_id, requested_by, username,
               analysis_type, credits_cost, progress, current_step, steps, batch_id,
               batch_position, allowance_month)
           SELECT item.id, $3, $4, $5, item.username, $6, $7, $8, $9, $10::jsonb, $11,
                  item.position - 1, CASE WHEN item.position <= $12 THEN $13::date END
           FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS item (id, username, position)""",
        [run_id for run_id, _ in items],
        [username for _, username in items],
        account_id,
        business_profile_id,
        requested_by,
        analysis_type,
        credits_cost,
        accepted.progress,
        accepted.current_step,
        steps_json(accepted.steps),
        batch_id,
        free_items,
        allowance_month,
    )
    return row


async def get(conn: Connection, batch_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = $1", batch_id)


async def page(
    conn: Connection, *, limit: int, offset: int, status: str | None = None
) -> tuple[int, list[asyncpg.Record]]:
    """The account's batches (row level security picks the account), newest first."""
    total = await conn.fetchval(
        "SELECT count(*) FROM batches WHERE $1::text IS NULL OR status = $1", status
    )
    rows = await conn.fetch(
        f"""SELECT {_BATCH_COLUMNS} FROM batches WHERE $1::text IS NULL OR status = $1
            ORDER BY created_at DESC, id LIMIT $2 OFFSET $3""",
        status,
        limit,
        offset,
    )
    return int(total), rows


@dataclass(frozen=True)
class Tally:
    batch: asyncpg.Record
    counts: dict[str, int]
    charged: int
    refunded: int


async def tally(conn: Connection, batch_id: UUID) -> Tally | None:
    """The batch, its items counted by status (kept by triggers: one short read however
    many items) and the credits charged and refunded so far, in one statement; None when
    there is no such batch."""
    row = await conn.fetchrow(
        f"""SELECT {_BATCH_COLUMNS},
                   (SELECT coalesce(jsonb_object_agg(c.status, c.items), '{{}}')
                    FROM batch_counts c WHERE c.batch_id = b.id) AS counts,
                   (SELECT coalesce(-sum(l.delta), 0) FROM credit_ledger l
                    WHERE l.batch_id = b.id AND l.kind = 'charge') AS charged,
                   (SELECT coalesce(sum(l.delta), 0) FROM credit_ledger l
                    WHERE l.batch_id = b.id AND l.kind = 'refund') AS refunded
            FROM batches b WHERE b.id = $1""",
        batch_id,
    )
    if row is None:
        return None
    counts = dict.fromkeys(ITEM_STATUSES, 0) | {k: int(v) for k, v in row["counts"].items()}
    return Tally(
        batch=row, counts=counts, charged=int(row["charged"]), refunded=int(row["refunded"])
    )


async def items_page(
    conn: Connection, batch_id: UUID, *, limit: int, offset: int, status: str | None = None
) -> tuple[int, list[asyncpg.Record]]:
    """A batch's items in their order; the score and summary once complete."""
    total = await conn.fetchval(
        """SELECT coalesce(sum(items), 0) FROM batch_counts
           WHERE batch_id = $1 AND ($2::text IS NULL OR status = $2)""",
        batch_id,
        status,
    )
    rows = await conn.fetch(
        """SELECT id, username, status, error_code, error_message, batch_position,
                  (result ->> 'score')::int AS score, result ->> 'summary' AS summary
           FROM analyses
           WHERE batch_id = $1 AND ($2::text IS NULL OR status = $2)
           ORDER BY batch_position LIMIT $3 OFFSET $4""",
        batch_id,
        status,
        limit,
        offset,
    )
    return int(total), rows


async def request_cancel(conn: Connection, batch_id: UUID) -> asyncpg.Record | None:
    """Flags the batch for cancellation (kept if already flagged); None when it finished."""
    return await conn.fetchrow(
        f"""UPDATE batches SET cancel_requested_at = coalesce(cancel_requested_at, now()),
                updated_at = now()
            WHERE id = $1 AND status IN ('pending', 'running')
            RETURNING {_BATCH_COLUMNS}""",
        batch_id,
    )


async def mark_not_started(conn: Connection, batch_id: UUID) -> bool:
    """Fails a batch whose workflow could not be started, and its items: nothing was charged,
    and its idempotency key is given back for a retry. False when its workflow did start
    meanwhile and charged the batch (a workflow started but not yet charging sees the batch
    failed and stops)."""
    return await _end_unstarted(
        conn,
        batch_id,
        status="failed",
        code="not_started",
        message="The batch could not be started; nothing was charged.",
        release_key=True,
    )


async def cancel_unstarted(conn: Connection, batch_id: UUID) -> bool:
    """Cancels a batch whose workflow does not exist, and its items (nothing was charged).
    False when it is no longer pending."""
    return await _end_unstarted(
        conn,
        batch_id,
        status="cancelled",
        code="run_cancelled",
        message="The batch was cancelled before it started.",
        release_key=False,
    )


async def _end_unstarted(
    conn: Connection, batch_id: UUID, *, status: str, code: str, message: str, release_key: bool
) -> bool:
    ended = await conn.fetchval(
        """UPDATE batches
           SET status = $2, error_code = $3, error_message = $4,
               cancel_requested_at = coalesce(cancel_requested_at, now()),
               idempotency_key = CASE WHEN $5 THEN NULL ELSE idempotency_key END,
               finished_at = now(), updated_at = now()
           WHERE id = $1 AND status = 'pending' RETURNING true""",
        batch_id,
        status,
        code,
        message,
        release_key,
    )
    if not ended:
        return False
    await conn.execute(
        """UPDATE analyses
           SET status = $2, error_code = $3, error_message = $4,
               cancel_requested_at = coalesce(cancel_requested_at, now()),
               finished_at = now(), updated_at = now()
           WHERE batch_id = $1 AND status = 'pending'""",
        batch_id,
        status,
        code,
        message,
    )
    return True


# --- worker side (system role) --------------------------------------------------------


async def lock(conn: Connection, batch_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = $1 FOR UPDATE", batch_id
    )


async def promised_free(conn: Connection, batch_id: UUID, free_items: int) -> list[UUID]:
    """The items promised to a free allowance: the first `free_items`, in order."""
    rows = await conn.fetch(
        """SELECT id FROM analyses WHERE batch_id = $1 AND batch_position < $2
           ORDER BY batch_position""",
        batch_id,
        free_items,
    )
    return [row["id"] for row in rows]


async def start(conn: Connection, batch_id: UUID) -> None:
    """The batch is charged: it runs (in the charge's transaction)."""
    await conn.execute(
        """UPDATE batches SET status = 'running', started_at = now(), updated_at = now()
           WHERE id = $1 AND status = 'pending'""",
        batch_id,
    )


async def fail(conn: Connection, batch_id: UUID, code: str, message: str) -> None:
    """The batch could not start (nothing was charged)."""
    await conn.execute(
        """UPDATE batches SET status = 'failed', error_code = $2, error_message = $3,
               finished_at = now(), updated_at = now()
           WHERE id = $1 AND status = 'pending'""",
        batch_id,
        code,
        message,
    )


async def next_items(
    conn: Connection, batch_id: UUID, from_position: int, limit: int
) -> list[BatchItem]:
    """Items not yet started, from `from_position` on, in order (an item ended meanwhile,
    by a cancel before its batch reached it, is passed over)."""
    rows = await conn.fetch(
        """SELECT id, username, batch_position FROM analyses
           WHERE batch_id = $1 AND batch_position >= $2 AND status = 'pending'
           ORDER BY batch_position LIMIT $3""",
        batch_id,
        from_position,
        limit,
    )
    return [
        BatchItem(run_id=row["id"], username=row["username"], position=row["batch_position"])
        for row in rows
    ]


async def end_unstarted(
    conn: Connection,
    batch_id: UUID,
    from_position: int,
    *,
    status: str,
    code: str,
    message: str,
    limit: int | None = None,
) -> list[UUID]:
    """Ends (`cancelled` or `failed`) the pending items the batch never started, from
    `from_position` on, the first `limit` of them (None: all); their ids. The caller refunds
    them in the same transaction."""
    rows = await conn.fetch(
        """UPDATE analyses
           SET status = $5, error_code = $3, error_message = $4,
               cancel_requested_at = coalesce(cancel_requested_at, now()),
               finished_at = now(), updated_at = now()
           WHERE id IN (SELECT id FROM analyses
                        WHERE batch_id = $1 AND batch_position >= $2 AND status = 'pending'
                        ORDER BY batch_position LIMIT $6)
           RETURNING id""",
        batch_id,
        from_position,
        code,
        message,
        status,
        limit,
    )
    return [row["id"] for row in rows]


async def unfinished(conn: Connection, run_ids: list[UUID]) -> list[UUID]:
    """Which of `run_ids` are still in flight."""
    rows = await conn.fetch(
        """SELECT id FROM analyses
           WHERE id = ANY($1::uuid[]) AND status IN ('pending', 'processing')""",
        run_ids,
    )
    return [row["id"] for row in rows]


async def finish(conn: Connection, batch_id: UUID, status: str) -> None:
    await conn.execute(
        """UPDATE batches SET status = $2, finished_at = now(), updated_at = now()
           WHERE id = $1 AND status IN ('pending', 'running')""",
        batch_id,
        status,
    )


async def stale_unfinished(
    conn: Connection, older_than_seconds: float, limit: int
) -> list[asyncpg.Record]:
    """Batches not finished whose row has not moved for `older_than_seconds`."""
    return await conn.fetch(
        """SELECT id FROM batches
           WHERE status IN ('pending', 'running')
             AND updated_at < now() - make_interval(secs => $1)
           ORDER BY updated_at LIMIT $2""",
        older_than_seconds,
        limit,
    )


async def items_in_flight(conn: Connection, batch_id: UUID) -> int:
    return int(
        await conn.fetchval(
            """SELECT coalesce(sum(items), 0) FROM batch_counts
               WHERE batch_id = $1 AND status IN ('pending', 'processing')""",
            batch_id,
        )
    )
