"""Analysis runs: the `analyses` row, written one way. Each field has one writer:

- what the run is (id, account, business profile, requester, username, tier, cost,
  idempotency key, request hash): the API, once, with `insert_pending` (steps 1-4);
- the progress document (status while in flight, progress, current step, steps, version):
  the workflow's `core.progress.Tracker`, carried by its activities, with `save_progress`;
- the cancellation flag: the API, with `request_cancel` and `mark_not_started`;
- a complete run's outcome (lead, result, cost, credits charged, end): the commit step,
  with `complete`;
- a failed or cancelled run's outcome (error, end): the compensation, with
  `finish_unsuccessful`; the API, for runs that never started (`mark_not_started`,
  `cancel_unstarted`).
"""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID

import asyncpg

from core.progress import Progress, RunError, RunStatus, Step, StepRecord
from db.pool import Connection

IN_FLIGHT_SQL = "status IN ('pending', 'processing')"

_RUN_COLUMNS = """id, account_id, business_profile_id, username, analysis_type, credits_cost,
    status, progress, current_step, steps, error_code, error_message, idempotency_key,
    request_hash, cancel_requested_at, lead_id, result, cost, credits_charged,
    created_at, updated_at, finished_at, progress_version, batch_id, batch_position,
    allowance_month"""


def steps_json(steps: list[StepRecord]) -> dict[str, Any]:
    return {s.name.value: s.model_dump(mode="json", exclude={"name"}) for s in steps}


def steps_from_json(value: dict[str, Any] | None) -> list[StepRecord]:
    value = value or {}
    return [StepRecord(name=step, **value.get(step.value, {})) for step in Step]


def error_of(row: asyncpg.Record) -> RunError | None:
    """The error a run (or a batch) row records, if any."""
    if not row["error_code"]:
        return None
    return RunError(code=row["error_code"], message=row["error_message"] or "")


def progress_of(row: asyncpg.Record) -> Progress:
    """The progress document as the row keeps it."""
    return Progress(
        run_id=row["id"],
        status=row["status"],
        progress=row["progress"],
        current_step=row["current_step"],
        steps=steps_from_json(row["steps"]),
        error=error_of(row),
        version=row["progress_version"],
    )


# --- API side (tenant-scoped connection) ----------------------------------------------


async def insert_pending(
    conn: Connection,
    *,
    account_id: UUID,
    business_profile_id: UUID,
    requested_by: UUID | None,
    username: str,
    analysis_type: str,
    credits_cost: int,
    progress: Progress,
    idempotency_key: str | None,
    request_hash: str,
    allowance_month: date | None = None,
) -> asyncpg.Record:
    """The new run's row; `allowance_month` when a free allowance covers it. Raises
    UniqueViolationError on `analyses_one_in_flight` (the same username in flight) or
    `analyses_idempotency_key` (the key was used)."""
    row = await conn.fetchrow(
        f"""INSERT INTO analyses (id, account_id, business_profile_id, requested_by, username,
                analysis_type, credits_cost, progress, current_step, steps, idempotency_key,
                request_hash, allowance_month)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
            RETURNING {_RUN_COLUMNS}""",
        progress.run_id,
        account_id,
        business_profile_id,
        requested_by,
        username,
        analysis_type,
        credits_cost,
        progress.progress,
        progress.current_step,
        steps_json(progress.steps),
        idempotency_key,
        request_hash,
        allowance_month,
    )
    assert row is not None
    return row


async def get(conn: Connection, run_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_RUN_COLUMNS} FROM analyses WHERE id = $1", run_id)


async def page(
    conn: Connection,
    *,
    statuses: list[str] | None,
    username: str | None,
    analysis_type: str | None,
    business_profile_id: UUID | None,
    limit: int,
    offset: int,
) -> tuple[int, list[asyncpg.Record]]:
    """The tenant's runs, newest first; row level security scopes them to the account."""
    where = """($1::text[] IS NULL OR status = ANY($1)) AND ($2::text IS NULL OR username = $2)
        AND ($3::text IS NULL OR analysis_type = $3)
        AND ($4::uuid IS NULL OR business_profile_id = $4)"""
    filters = (statuses, username, analysis_type, business_profile_id)
    total = await conn.fetchval(f"SELECT count(*) FROM analyses WHERE {where}", *filters)
    rows = await conn.fetch(
        f"""SELECT {_RUN_COLUMNS} FROM analyses WHERE {where}
            ORDER BY created_at DESC, id DESC LIMIT $5 OFFSET $6""",
        *filters,
        limit,
        offset,
    )
    return int(total), rows


async def find_in_flight(
    conn: Connection, account_id: UUID, business_profile_id: UUID, username: str
) -> UUID | None:
    return await conn.fetchval(
        f"""SELECT id FROM analyses
            WHERE account_id = $1 AND business_profile_id = $2 AND username = $3
              AND {IN_FLIGHT_SQL}""",
        account_id,
        business_profile_id,
        username,
    )


async def find_by_idempotency_key(
    conn: Connection, account_id: UUID, key: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM analyses WHERE account_id = $1 AND idempotency_key = $2",
        account_id,
        key,
    )


async def request_cancel(conn: Connection, run_id: UUID) -> asyncpg.Record | None:
    """Flags an in-flight run as cancelled by its owner; the commit step honours the flag.

    Returns the row as it is after the update, or None when the run does not exist. The
    row lock makes this and the commit step (which locks the row with `lock`) mutually
    exclusive: one of the two wins, never both.
    """
    row = await conn.fetchrow(
        f"""UPDATE analyses
            SET cancel_requested_at = coalesce(cancel_requested_at, now()), updated_at = now()
            WHERE id = $1 AND {IN_FLIGHT_SQL}
            RETURNING {_RUN_COLUMNS}""",
        run_id,
    )
    return row if row is not None else await get(conn, run_id)


async def mark_not_started(conn: Connection, run_id: UUID, code: str, message: str) -> bool:
    """Starting the workflow failed, or may have failed (a lost answer): a run still pending
    is failed, flagged (so a workflow that did start refuses to charge it) and gives its
    idempotency key back, so the client can retry with the same key.

    False when the run is no longer pending: its workflow did start and charged it, and the
    run goes on.
    """
    failed = await conn.fetchval(
        """UPDATE analyses
           SET cancel_requested_at = coalesce(cancel_requested_at, now()), status = 'failed',
               error_code = $2, error_message = $3, finished_at = now(),
               idempotency_key = NULL, updated_at = now()
           WHERE id = $1 AND status = 'pending'
           RETURNING true""",
        run_id,
        code,
        message,
    )
    return bool(failed)


async def cancel_unstarted(conn: Connection, run_id: UUID) -> bool:
    """Cancels a run whose workflow does not exist: nothing was or will be charged.

    False when the run was no longer pending (its workflow did start meanwhile), or is an
    item of a batch: its batch paid for it, and the item's own workflow, which the batch
    starts in its turn, sees the cancel flag, ends it cancelled and refunds it.
    """
    cancelled = await conn.fetchval(
        """UPDATE analyses
           SET status = 'cancelled', error_code = 'run_cancelled',
               error_message = 'cancelled before it started', updated_at = now(),
               finished_at = now()
           WHERE id = $1 AND status = 'pending' AND batch_id IS NULL
           RETURNING true""",
        run_id,
    )
    return bool(cancelled)


# --- worker side (system role) --------------------------------------------------------


async def lock(conn: Connection, run_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM analyses WHERE id = $1 FOR UPDATE", run_id
    )


async def save_progress(conn: Connection, progress: Progress) -> None:
    """Keeps the workflow's progress document for when it cannot be asked.

    Only a newer document replaces the kept one, and never on a finished run, whatever
    order retried activities write in.
    """
    await conn.execute(
        f"""UPDATE analyses
            SET status = $2, progress = $3, current_step = $4, steps = $5,
                progress_version = $6, updated_at = now()
            WHERE id = $1 AND {IN_FLIGHT_SQL} AND progress_version < $6""",
        progress.run_id,
        progress.status,
        progress.progress,
        progress.current_step,
        steps_json(progress.steps),
        progress.version,
    )


async def complete(
    conn: Connection,
    progress: Progress,
    *,
    lead_id: UUID,
    result: dict[str, Any],
    cost: dict[str, Any],
    credits_charged: int,
    engine: str | None = None,
) -> None:
    """The commit point's write: the run is complete, with its result and final progress."""
    await conn.execute(
        """UPDATE analyses
           SET status = 'complete', progress = $2, current_step = $3, steps = $4,
               progress_version = $5, lead_id = $6, result = $7, cost = $8,
               credits_charged = $9, engine = $10, updated_at = now(), finished_at = now()
           WHERE id = $1""",
        progress.run_id,
        progress.progress,
        progress.current_step,
        steps_json(progress.steps),
        progress.version,
        lead_id,
        result,
        cost,
        credits_charged,
        engine,
    )


async def finish_unsuccessful(conn: Connection, progress: Progress) -> None:
    """Records the end of a failed or cancelled run; a run already finished keeps its end."""
    assert progress.status in (RunStatus.failed, RunStatus.cancelled) and progress.error
    await conn.execute(
        f"""UPDATE analyses
            SET status = $2, error_code = $3, error_message = $4, steps = $5,
                progress_version = $6, credits_charged = 0, updated_at = now(),
                finished_at = now()
            WHERE id = $1 AND {IN_FLIGHT_SQL}""",
        progress.run_id,
        progress.status,
        progress.error.code,
        progress.error.message,
        steps_json(progress.steps),
        progress.version,
    )


async def stale_in_flight(
    conn: Connection, older_than_seconds: float, limit: int
) -> list[asyncpg.Record]:
    """Runs in flight whose row has not moved for `older_than_seconds`, oldest first (the
    stuck-run sweep's candidates; a live workflow touches its row at every step). Items a
    batch has not started are left to the batch's own sweep: a long batch has thousands,
    which would crowd the stuck runs out."""
    return await conn.fetch(
        f"""SELECT id, account_id, batch_id FROM analyses
            WHERE {IN_FLIGHT_SQL} AND updated_at < now() - make_interval(secs => $1)
              AND NOT (batch_id IS NOT NULL AND status = 'pending')
            ORDER BY updated_at LIMIT $2""",
        older_than_seconds,
        limit,
    )
