"""Free monthly allowances (DESIGN.md sections 4 and 8): so many analyses of a tier a month
(UTC) that charge nothing, per plan.

The API promises a unit when it accepts a run (`analyses.allowance_month`) or a batch
(`batches.free_items`), counting what is drawn and what is promised under the account's
lock. The charge step, in a worker, is the authority: it draws the unit (`draw`), or
charges credits instead when the allowance was spent meanwhile. A run that fails or is
cancelled gives its unit back (`give_back`), once.
"""

from __future__ import annotations

from datetime import date
from uuid import UUID

from core.settings import FREE_PLAN
from db.pool import Connection


async def current_month(conn: Connection) -> date:
    """The first day of the month (UTC) by the database's clock."""
    month: date = await conn.fetchval("SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date")
    return month


async def account_plan(conn: Connection, account_id: UUID) -> str:
    plan: str | None = await conn.fetchval("SELECT plan FROM accounts WHERE id = $1", account_id)
    return plan or FREE_PLAN


async def committed(conn: Connection, account_id: UUID, month: date, action: str) -> int:
    """Units of `month` drawn and kept, plus those promised to runs and batches accepted
    but not yet charged, read in one snapshot (a run draws as it leaves `pending`)."""
    value = await conn.fetchval(
        """SELECT (SELECT count(*) FROM allowance_uses
                   WHERE account_id = $1 AND month = $2 AND action = $3
                     AND returned_at IS NULL)
                + (SELECT count(*) FROM analyses
                   WHERE account_id = $1 AND status = 'pending' AND allowance_month = $2
                     AND analysis_type = $3 AND batch_id IS NULL
                     AND cancel_requested_at IS NULL)
                + (SELECT coalesce(sum(free_items), 0) FROM batches
                   WHERE account_id = $1 AND status = 'pending' AND allowance_month = $2
                     AND analysis_type = $3 AND cancel_requested_at IS NULL)""",
        account_id,
        month,
        action,
    )
    return int(value)


async def _lock(conn: Connection, account_id: UUID, month: date, action: str) -> None:
    """Serialises, until the transaction ends, the draws on one allowance."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('allowance:' || $1 || ':' || $2, 0))",
        f"{account_id}:{month.isoformat()}",
        action,
    )


async def draw(
    conn: Connection,
    *,
    account_id: UUID,
    month: date,
    action: str,
    allowance: int,
    run_ids: list[UUID],
) -> list[UUID]:
    """Draws one unit for each run, in order, while the allowance lasts; returns the runs
    that have a unit (drawn now, or by an earlier attempt: a repeat changes nothing)."""
    await _lock(conn, account_id, month, action)
    already = {
        row["run_id"]
        for row in await conn.fetch(
            "SELECT run_id FROM allowance_uses WHERE run_id = ANY($1::uuid[])", run_ids
        )
    }
    used = int(
        await conn.fetchval(
            """SELECT count(*) FROM allowance_uses
               WHERE account_id = $1 AND month = $2 AND action = $3 AND returned_at IS NULL""",
            account_id,
            month,
            action,
        )
    )
    fresh = [r for r in run_ids if r not in already][: max(0, allowance - used)]
    if fresh:
        await conn.execute(
            """INSERT INTO allowance_uses (run_id, account_id, month, action, allowance)
               SELECT run, $2, $3, $4, $5 FROM unnest($1::uuid[]) AS run""",
            fresh,
            account_id,
            month,
            action,
            allowance,
        )
    covered = already | set(fresh)
    return [r for r in run_ids if r in covered]


async def drew(conn: Connection, run_id: UUID) -> bool:
    """Whether the run holds a unit it has not given back."""
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM allowance_uses WHERE run_id = $1 AND returned_at IS NULL", run_id
        )
    )


async def funded(conn: Connection, run_ids: list[UUID]) -> set[UUID]:
    """The runs among these that drew a unit, given back since or not: they were never
    charged credits, so they are never refunded any."""
    rows = await conn.fetch(
        "SELECT run_id FROM allowance_uses WHERE run_id = ANY($1::uuid[])", run_ids
    )
    return {row["run_id"] for row in rows}


async def give_back(conn: Connection, run_ids: list[UUID]) -> int:
    """Gives back the units these runs hold, each once (a repeat changes nothing);
    returns how many came back now."""
    status = await conn.execute(
        """UPDATE allowance_uses SET returned_at = now()
           WHERE run_id = ANY($1::uuid[]) AND returned_at IS NULL""",
        run_ids,
    )
    return int(status.rsplit(" ", 1)[-1])
