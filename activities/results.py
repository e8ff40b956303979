"""Steps 10-12: upsert the lead, save the analysis and complete the run, in one transaction;
a run the rule-based fallback answered is refunded in it too.

This transaction is the commit point. It takes the run row lock that a cancel request also
takes, so either the cancel lands first (and this step refuses) or the run completes (and
the cancel answers 409): never both.
"""

from __future__ import annotations

import asyncpg
from temporalio import activity

from activities.common import done_since, expected, now, step_activity
from core import metrics
from core.errors import ErrorCode, business_error
from core.models import SaveResultInput, SaveResultOutput
from core.progress import IN_FLIGHT, StepDone, Tracker
from db import allowances, analyses, credits, leads
from db.pool import connection


class ResultActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn
    @step_activity
    async def save_result(self, input: SaveResultInput) -> SaveResultOutput:
        started = now()
        async with connection(self._pool) as conn, conn.transaction():
            run = await analyses.lock(conn, input.run_id)
            if run is None or run["status"] not in IN_FLIGHT or run["cancel_requested_at"]:
                raise expected(business_error(ErrorCode.run_cancelled, "the run was cancelled"))
            score = input.analysis.get("score")
            lead_id = await leads.upsert(
                conn,
                account_id=input.account_id,
                business_profile_id=input.business_profile_id,
                profile=input.profile,
                score=score if isinstance(score, int) else None,
                analysis_id=input.run_id,
            )
            upserted = done_since(started)
            saved = done_since(upserted.finished_at)
            completed = StepDone(
                started_at=saved.finished_at, finished_at=saved.finished_at, attempt=saved.attempt
            )
            progress = Tracker(input.progress)
            progress.completed(upserted, saved, completed)
            free = await allowances.drew(conn, input.run_id)  # charged nothing
            engine = input.analysis.get("engine")
            if engine == "rules":
                # The rule-based fallback answered: the run did not get the AI analysis it
                # paid for. Refunded here, with the run's refund key, so once, and in the
                # transaction that completes it: both land or neither.
                await credits.refund_run(conn, account_id=input.account_id, run_id=input.run_id)
            await analyses.complete(
                conn,
                progress.document,
                lead_id=lead_id,
                result=input.analysis,
                cost=input.cost.model_dump(mode="json"),  # with its totals
                credits_charged=0 if free or engine == "rules" else run["credits_cost"],
                engine=engine if engine in ("ai", "rules") else None,
            )
        # Counted once the commit has landed.
        metrics.ANALYSES_FINISHED.labels(tier=run["analysis_type"], status="complete").inc()
        if not input.cost.cache_hit:
            metrics.PROVIDER_COST.labels(provider="apify").inc(input.cost.apify_usd)
        metrics.PROVIDER_COST.labels(provider="openai").inc(input.cost.ai_usd)
        return SaveResultOutput(
            lead_id=lead_id, upserted=upserted, saved=saved, completed=completed
        )
