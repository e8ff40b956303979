"""The batch's own steps (DESIGN.md sections 4 and 6): charge it up front, hand its workflow
the next items, end and refund what it never started, and record its end.

Each runs as a local activity of `BulkAnalysisWorkflow` and, like the compensation, never
gives up: they move credits, and a batch must always reach its end.
"""

from __future__ import annotations

import asyncpg
from temporalio import activity

from activities.common import never_giving_up
from core.errors import ErrorCode
from core.models import (
    BatchRef,
    BatchStarted,
    BatchStatus,
    FinishBatchInput,
    NextItems,
    NextItemsInput,
    StopBatchInput,
    StopBatchOutput,
    UnfinishedInput,
    UnfinishedOutput,
)
from core.settings import Settings
from core.tiers import Tier
from db import allowances, batches, credits
from db.pool import Connection, connection

NEVER_STARTED = "The batch was cancelled before this item started."
STOP_CHUNK = 1000  # items a cancel ends and refunds per transaction


class BatchActivities:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings

    async def _draw(self, conn: Connection, batch: asyncpg.Record) -> int:
        """Draws the units of the free allowance the API promised the batch's first items,
        while the allowance lasts (the plan may have changed since); the items left without
        one are charged credits with the rest. Returns how many items have a unit."""
        if batch["free_items"] == 0:
            return 0
        plan = self._settings.plan(await allowances.account_plan(conn, batch["account_id"]))
        promised = await batches.promised_free(conn, batch["id"], batch["free_items"])
        covered = await allowances.draw(
            conn,
            account_id=batch["account_id"],
            month=batch["allowance_month"],
            action=batch["analysis_type"],
            allowance=plan.allowances.get(Tier(batch["analysis_type"]), 0),
            run_ids=promised,
        )
        return len(covered)

    @activity.defn
    @never_giving_up
    async def start_batch(self, input: BatchRef) -> BatchStarted:
        """Charges the batch its whole cost and makes it `running`, in one transaction.

        A batch cancelled before this ends cancelled, charging nothing; one the balance can
        no longer cover ends failed, its items too. Safe to repeat: a batch already past
        `pending` is reported as it is.
        """
        async with connection(self._pool) as conn, conn.transaction():
            batch = await batches.lock(conn, input.batch_id)
            if batch is None:
                raise LookupError(f"batch {input.batch_id} does not exist")
            if batch["status"] != BatchStatus.pending:
                return BatchStarted(status=BatchStatus(batch["status"]))
            if batch["cancel_requested_at"] is not None:
                await batches.end_unstarted(
                    conn,
                    input.batch_id,
                    0,
                    status="cancelled",
                    code=ErrorCode.run_cancelled,
                    message=NEVER_STARTED,
                )
                await batches.finish(conn, input.batch_id, BatchStatus.cancelled)
                return BatchStarted(status=BatchStatus.cancelled)
            try:
                # One savepoint: a charge the balance cannot pay gives the units back too.
                async with conn.transaction():
                    free = await self._draw(conn, batch)
                    if free < batch["total"]:  # one the allowance covers whole costs nothing
                        await credits.charge_batch(
                            conn,
                            account_id=batch["account_id"],
                            batch_id=input.batch_id,
                            amount=(batch["total"] - free) * batch["credits_cost"],
                        )
            except credits.InsufficientCredits as exc:
                # The API promised these credits, but a refund may have been reversed by an
                # operator meanwhile: nothing is charged and nothing runs.
                message = f"Not enough credits for the batch: {exc}"
                await batches.end_unstarted(
                    conn,
                    input.batch_id,
                    0,
                    status="failed",
                    code=ErrorCode.insufficient_credits,
                    message=message,
                )
                await batches.fail(conn, input.batch_id, ErrorCode.insufficient_credits, message)
                return BatchStarted(status=BatchStatus.failed)
            await batches.start(conn, input.batch_id)
        activity.logger.info("batch %s charged and running", input.batch_id)
        return BatchStarted(status=BatchStatus.running)

    @activity.defn
    @never_giving_up
    async def next_items(self, input: NextItemsInput) -> NextItems:
        """The next items not yet started, and whether the batch was flagged for
        cancellation (the API flags it before asking Temporal, which may be unreachable)."""
        async with connection(self._pool) as conn:
            batch = await batches.get(conn, input.batch_id)
            items = await batches.next_items(conn, input.batch_id, input.from_position, input.limit)
        return NextItems(
            items=items,
            cancel_requested=batch is not None and batch["cancel_requested_at"] is not None,
        )

    @activity.defn
    @never_giving_up
    async def cancel_requested(self, input: BatchRef) -> bool:
        async with connection(self._pool) as conn:
            batch = await batches.get(conn, input.batch_id)
        return batch is not None and batch["cancel_requested_at"] is not None

    @activity.defn
    @never_giving_up
    async def unfinished(self, input: UnfinishedInput) -> UnfinishedOutput:
        async with connection(self._pool) as conn:
            return UnfinishedOutput(run_ids=await batches.unfinished(conn, input.run_ids))

    @activity.defn
    @never_giving_up
    async def stop_batch(self, input: StopBatchInput) -> StopBatchOutput:
        """Ends the items never started, from `from_position` on, cancelled, and refunds
        them: `STOP_CHUNK` items per transaction, each ending and refunding its items
        together, so a retry (a timeout under load with 10,000 items) goes on from the last
        chunk that committed. Safe to repeat: each refund has its own key."""
        cancelled = refunded = 0
        while True:
            async with connection(self._pool) as conn, conn.transaction():
                batch = await batches.lock(conn, input.batch_id)
                if batch is None:
                    raise LookupError(f"batch {input.batch_id} does not exist")
                # The balance before the items, in the order an item's compensation takes.
                await credits.lock_balance(conn, batch["account_id"])
                ended = await batches.end_unstarted(
                    conn,
                    input.batch_id,
                    input.from_position,
                    status="cancelled",
                    code=ErrorCode.run_cancelled,
                    message=NEVER_STARTED,
                    limit=STOP_CHUNK,
                )
                refunded += await credits.refund_items(
                    conn,
                    account_id=batch["account_id"],
                    batch_id=input.batch_id,
                    run_ids=ended,
                    item_cost=batch["credits_cost"],
                )
            cancelled += len(ended)
            if len(ended) < STOP_CHUNK:
                return StopBatchOutput(cancelled=cancelled, refunded_credits=refunded)

    @activity.defn
    @never_giving_up
    async def finish_batch(self, input: FinishBatchInput) -> None:
        async with connection(self._pool) as conn:
            await batches.finish(conn, input.batch_id, input.status)
