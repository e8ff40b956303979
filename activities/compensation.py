"""Compensation: a run that failed or was cancelled gets back what it was charged, once,
and its end is recorded. The workflow runs it; the stuck-run sweeper will too."""

from __future__ import annotations

import asyncpg
from temporalio import activity

from activities.common import never_giving_up
from core import metrics
from core.models import FinishInput, FinishOutput
from core.progress import IN_FLIGHT, RunStatus
from db import analyses, credits
from db.pool import connection


class CompensationActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn
    @never_giving_up
    async def finish_unsuccessful(self, input: FinishInput) -> FinishOutput:
        """Refunds the run if it was charged and records it as failed or cancelled.

        Safe to repeat: the refund has its own idempotency key, and a finished run keeps the
        end it has (a run past its commit point stays complete and keeps its charge).
        """
        run_id = input.progress.run_id
        async with connection(self._pool) as conn, conn.transaction():
            run = await analyses.lock(conn, run_id)
            if run is None:
                return FinishOutput(refunded_credits=0, status=input.progress.status)
            if run["status"] == RunStatus.complete:
                return FinishOutput(
                    refunded_credits=0, status=RunStatus.complete, lead_id=run["lead_id"]
                )
            refund = await credits.refund_run(conn, account_id=run["account_id"], run_id=run_id)
            await analyses.finish_unsuccessful(conn, input.progress)
        # A run that had already ended (the API failed it) keeps the status it has.
        final = input.progress.status if run["status"] in IN_FLIGHT else RunStatus(run["status"])
        if run["status"] in IN_FLIGHT:  # ended now, not by an earlier try
            metrics.ANALYSES_FINISHED.labels(tier=run["analysis_type"], status=final).inc()
        return FinishOutput(refunded_credits=refund.delta if refund else 0, status=final)
