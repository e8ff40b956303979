"""The account's analytics summary (DESIGN.md section 9): runs by status and tier, credits
spent and refunded, provider cost, step durations, cache hit rate and errors, over a window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import Tenant
from api.errors import responses
from api.schemas import (
    AnalyticsSummary,
    CacheUse,
    CreditTotals,
    ProviderCost,
    StepDuration,
    TierCounts,
)
from core.progress import RunStatus
from core.tiers import Tier
from db import analytics

router = APIRouter(tags=["analytics"])

DEFAULT_WINDOW = timedelta(days=30)
_EARLIEST = datetime.min.replace(tzinfo=UTC) + DEFAULT_WINDOW


@router.get(
    "/api/analytics/summary",
    response_model=AnalyticsSummary,
    summary="What the account's analyses did over a window: counts, credits, cost, timings",
    responses=responses(401, 422),
)
async def analytics_summary(
    scope: Tenant,
    start: Annotated[
        datetime | None,
        Query(alias="from", description="Start, inclusive (ISO 8601). Default: `to` - 30 days"),
    ] = None,
    end: Annotated[
        datetime | None, Query(alias="to", description="End, exclusive (ISO 8601). Default: now")
    ] = None,
) -> AnalyticsSummary:
    """Runs count by when they were requested; credits by when the ledger recorded them
    (charges, including batches', and refunds); provider cost and cache use over the complete
    runs; step durations (p50 and p95, in milliseconds) over the steps that ran; errors by
    code over the runs that failed or were cancelled. Times without a zone are UTC; a window
    that ends before it starts holds nothing."""
    end = _utc(end) if end else datetime.now(UTC)
    start = _utc(start) if start else max(end, _EARLIEST) - DEFAULT_WINDOW
    # One snapshot for the five reads, so the figures agree with each other.
    async with scope.transaction(isolation="repeatable_read", readonly=True) as conn:
        counts = await analytics.runs_by_tier_and_status(conn, start, end)
        spent, refunded = await analytics.credits(conn, start, end)
        cost = await analytics.costs(conn, start, end)
        steps = await analytics.step_durations(conn, start, end)
        errors = await analytics.errors(conn, start, end)
    by_status = {status: 0 for status in RunStatus}
    by_tier = {tier: TierCounts() for tier in Tier}
    for tier, status, n in counts:
        by_status[RunStatus(status)] += n
        setattr(by_tier[Tier(tier)], status, getattr(by_tier[Tier(tier)], status) + n)
    complete = int(cost["complete"])
    hits = int(cost["cache_hits"])
    return AnalyticsSummary(
        start=start,
        end=end,
        analyses=sum(by_status.values()),
        by_status=by_status,
        by_tier=by_tier,
        credits=CreditTotals(spent=spent, refunded=refunded, net=spent - refunded),
        provider_cost=ProviderCost(
            apify_usd=float(cost["apify_usd"]),
            ai_usd=float(cost["ai_usd"]),
            total_usd=float(cost["total_usd"]),
        ),
        step_durations={
            name: StepDuration(count=n, p50_ms=round(p50, 1), p95_ms=round(p95, 1))
            for name, n, p50, p95 in sorted(steps)
        },
        cache=CacheUse(
            complete_runs=complete,
            hits=hits,
            hit_rate=round(hits / complete, 4) if complete else None,
        ),
        errors=errors,
    )


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
