"""The account's analytics summary (GET /api/analytics/summary): what its runs did over a
window, read in the tenant's transaction (row level security keeps it to the account).

Runs count by when they were requested (`created_at`), ledger rows by when they were written:
a run requested just before the window and refunded inside it counts its refund, not its
charge, as an accountant would."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from db.pool import Connection


async def runs_by_tier_and_status(
    conn: Connection, start: datetime, end: datetime
) -> list[tuple[str, str, int]]:
    rows = await conn.fetch(
        """SELECT analysis_type, status, count(*) AS n FROM analyses
           WHERE created_at >= $1 AND created_at < $2
           GROUP BY analysis_type, status""",
        start,
        end,
    )
    return [(r["analysis_type"], r["status"], r["n"]) for r in rows]


async def credits(conn: Connection, start: datetime, end: datetime) -> tuple[int, int]:
    """Credits spent (charges, a batch's included) and refunded in the window."""
    row = await conn.fetchrow(
        """SELECT coalesce(sum(-delta) FILTER (WHERE kind = 'charge'), 0) AS spent,
                  coalesce(sum(delta) FILTER (WHERE kind = 'refund'), 0) AS refunded
           FROM credit_ledger WHERE created_at >= $1 AND created_at < $2""",
        start,
        end,
    )
    assert row is not None
    return int(row["spent"]), int(row["refunded"])


async def costs(conn: Connection, start: datetime, end: datetime) -> dict[str, Any]:
    """Provider cost and cache use of the complete runs (the cost each one stored)."""
    row = await conn.fetchrow(
        """SELECT count(*) AS complete,
                  count(*) FILTER (WHERE (cost ->> 'cache_hit')::boolean) AS cache_hits,
                  coalesce(sum((cost ->> 'apify_usd')::numeric), 0) AS apify_usd,
                  coalesce(sum((cost ->> 'ai_usd')::numeric), 0) AS ai_usd,
                  coalesce(sum((cost ->> 'total_usd')::numeric), 0) AS total_usd
           FROM analyses
           WHERE status = 'complete' AND created_at >= $1 AND created_at < $2""",
        start,
        end,
    )
    assert row is not None
    return dict(row)


async def step_durations(
    conn: Connection, start: datetime, end: datetime
) -> list[tuple[str, int, float, float]]:
    """Each step's count, p50 and p95 duration (milliseconds) over the runs where it ran."""
    rows = await conn.fetch(
        """SELECT s.key AS step, count(*) AS n,
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY d.ms) AS p50,
                  percentile_cont(0.95) WITHIN GROUP (ORDER BY d.ms) AS p95
           FROM analyses a
           CROSS JOIN LATERAL jsonb_each(a.steps) s
           CROSS JOIN LATERAL (
               SELECT 1000 * extract(epoch FROM (s.value ->> 'finished_at')::timestamptz
                                                - (s.value ->> 'started_at')::timestamptz) AS ms
           ) d
           WHERE a.created_at >= $1 AND a.created_at < $2
             AND s.value ->> 'status' = 'done'
             AND s.value ->> 'started_at' IS NOT NULL AND s.value ->> 'finished_at' IS NOT NULL
           GROUP BY s.key""",
        start,
        end,
    )
    return [(r["step"], r["n"], float(r["p50"]), float(r["p95"])) for r in rows]


async def errors(conn: Connection, start: datetime, end: datetime) -> dict[str, int]:
    rows = await conn.fetch(
        """SELECT error_code, count(*) AS n FROM analyses
           WHERE status IN ('failed', 'cancelled') AND error_code IS NOT NULL
             AND created_at >= $1 AND created_at < $2
           GROUP BY error_code ORDER BY n DESC, error_code""",
        start,
        end,
    )
    return {r["error_code"]: r["n"] for r in rows}
