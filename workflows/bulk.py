"""BulkAnalysisWorkflow: one batch (DESIGN.md section 6), its items run as child
`AnalysisWorkflow`s through a sliding window.

- The batch is charged up front by its first step; an item is then an ordinary run that
  its batch has paid for: it refunds itself if it fails or is cancelled.
- At most `window` items are in flight; each finished item lets the next one start, so the
  provider slots (activities.slots) always have work waiting while items remain.
- Children are started with ABANDON: they outlive this workflow's runs, so the workflow can
  continue as new every `page_size` started items (or when Temporal suggests it), carrying
  where it stopped and what is still in flight. An item's position only moves forward, and
  children are started with REJECT_DUPLICATE, so no item starts twice across crashes,
  restarts and continue-as-new.
- Items started by this run are followed through their handles; items carried over from an
  earlier run are looked up in the database every few seconds until they end.
- Cancelled: the items never started end cancelled and are refunded in one step, those in
  flight are cancelled through Temporal (each refunds itself unless already past its commit
  point), and the batch ends `cancelled` once none is left in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, TypeVar
from uuid import UUID

from temporalio import workflow
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from activities.batches import BatchActivities
    from core.models import (
        AnalysisInput,
        BatchItem,
        BatchRef,
        BatchStatus,
        BulkInput,
        BulkOutcome,
        FinishBatchInput,
        NextItemsInput,
        StopBatchInput,
        UnfinishedInput,
    )
    from core.temporal import workflow_id
    from workflows.analysis import (
        BATCH_ID,
        DB_RETRY,
        DB_TIMEOUT,
        AnalysisWorkflow,
        shielded,
        start_options,
    )

T = TypeVar("T")

ACCOUNT_ID = SearchAttributeKey.for_keyword("AccountId")

# How often items carried over continue-as-new are looked up while in flight: at first, and
# at most (the pause doubles while none ends, so a long wait adds few history events).
CARRIED_POLL = timedelta(seconds=2)
CARRIED_POLL_MAX = timedelta(seconds=30)
# How often the batch's cancel flag is read (the API sets it before asking Temporal, which it
# may not reach): while items are being started, and while waiting for room.
FLAG_CHECK = timedelta(seconds=10)
# Items read from the database at a time.
READ_AHEAD = 200
# Items started together. Fifty children started at once make their first workflow tasks
# contend on the workers, so the first scrape waits for all of them; in groups, the first
# group's scrapes start while the next groups are started.
START_GROUP = 10


def bulk_workflow_id(batch_id: UUID) -> str:
    return f"bulk-{batch_id}"


def bulk_start_options(input: BulkInput, task_queue: str) -> dict[str, Any]:
    return {
        "id": bulk_workflow_id(input.batch_id),
        "task_queue": task_queue,
        "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
        "search_attributes": TypedSearchAttributes(
            [
                SearchAttributePair(ACCOUNT_ID, str(input.account_id)),
                SearchAttributePair(BATCH_ID, str(input.batch_id)),
            ]
        ),
        "static_summary": f"batch of {input.total} {input.tier} analyses",
    }


@workflow.defn
class BulkAnalysisWorkflow:
    @workflow.init
    def __init__(self, input: BulkInput) -> None:
        self._input = input
        self._next = input.next_position
        self._started = input.started
        self._mine: dict[UUID, asyncio.Task[None]] = {}  # started by this run
        self._carried: set[UUID] = set(input.in_flight)  # started by an earlier run
        self._queue: list[BatchItem] = []
        self._exhausted = False
        self._flag_checked_at = workflow.now()
        self._poll = CARRIED_POLL

    @workflow.run
    async def run(self, input: BulkInput) -> BulkOutcome:
        try:
            if not input.charged:
                # Not interrupted by a cancel: the charge lands or not, then the cancel
                # refunds what it must.
                started = await _unbroken(
                    self._local(
                        BatchActivities.start_batch, BatchRef(batch_id=input.batch_id), "charge"
                    )
                )
                if started.status is not BatchStatus.running:
                    self._details(started.status)
                    return BulkOutcome(batch_id=input.batch_id, status=started.status)
            return await self._slide(input)
        except asyncio.CancelledError:
            await shielded(self._cancel(input))
            raise

    async def _slide(self, input: BulkInput) -> BulkOutcome:
        started_here = 0
        while True:
            self._details(BatchStatus.running)
            while self._in_flight < input.window and started_here < input.page_size:
                items = await self._take(
                    min(
                        input.window - self._in_flight,
                        input.page_size - started_here,
                        START_GROUP,
                    )
                )
                if items is None:  # flagged, and Temporal's cancel has not come (yet)
                    return await self._cancel_flagged(input)
                if not items:
                    break
                # Starts are not interrupted half-way by a cancel (an item whose start was
                # withdrawn would be neither in flight nor left to cancel): it comes after.
                await _unbroken(asyncio.gather(*(self._start(input, item) for item in items)))
                started_here += len(items)
            if self._exhausted and not self._queue and self._in_flight == 0:
                break
            left_to_start = not (self._exhausted and not self._queue)
            if workflow.info().is_continue_as_new_suggested() or (
                started_here >= input.page_size and left_to_start
            ):
                self._continue_as_new(input)
            if not await self._wait_for_room(input, check_flag=True):
                return await self._cancel_flagged(input)
        await self._local(
            BatchActivities.finish_batch,
            FinishBatchInput(batch_id=input.batch_id, status=BatchStatus.complete),
            "complete",
        )
        self._details(BatchStatus.complete)
        return BulkOutcome(batch_id=input.batch_id, status=BatchStatus.complete)

    @property
    def _in_flight(self) -> int:
        return len(self._mine) + len(self._carried)

    async def _take(self, wanted: int) -> list[BatchItem] | None:
        """Up to `wanted` items to start next, read ahead from the database; None when the
        batch was flagged for cancellation."""
        if not self._queue and not self._exhausted:
            page = await self._local(
                BatchActivities.next_items,
                NextItemsInput(
                    batch_id=self._input.batch_id, from_position=self._next, limit=READ_AHEAD
                ),
                "read next items",
            )
            self._flag_checked_at = workflow.now()
            if page.cancel_requested:
                return None
            self._queue = page.items
            self._exhausted = len(page.items) < READ_AHEAD
        elif self._queue and self._flag_due() and await self._flagged():
            return None
        taken, self._queue = self._queue[:wanted], self._queue[wanted:]
        return taken

    async def _start(self, input: BulkInput, item: BatchItem) -> None:
        run = AnalysisInput(
            run_id=item.run_id,
            account_id=input.account_id,
            business_profile_id=input.business_profile_id,
            username=item.username,
            tier=input.tier,
            credits_cost=input.credits_cost,
            scrape_task_queue=input.scrape_task_queue,
            provider_budget=input.provider_budget,
            batch_id=input.batch_id,
        )
        # Past this item from here on, whatever the start's answer: never started twice.
        self._next = max(self._next, item.position + 1)
        self._started += 1
        options = start_options(run, workflow.info().task_queue)
        try:
            child = await workflow.start_child_workflow(
                AnalysisWorkflow.run,
                run,
                id=options["id"],
                task_queue=options["task_queue"],
                id_reuse_policy=options["id_reuse_policy"],
                search_attributes=options["search_attributes"],
                static_summary=options["static_summary"],
                priority=options["priority"],
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
            )
        except WorkflowAlreadyStartedError:
            # Started before (it cannot be, by the position; but if it is, follow it).
            self._carried.add(item.run_id)
            return

        async def follow() -> None:
            try:
                await child
            except BaseException:  # failed or cancelled: it refunded itself
                pass
            finally:
                self._mine.pop(item.run_id, None)

        self._mine[item.run_id] = asyncio.create_task(follow())

    async def _wait_for_room(self, input: BulkInput, *, check_flag: bool = False) -> bool:
        """Until an item ends and makes room in the window (or the last ones end), looking
        up the items carried over and the cancel flag now and then; False when the batch
        was found flagged for cancellation."""
        before = self._in_flight
        timeout = self._poll if self._carried else FLAG_CHECK if check_flag else None
        try:
            await workflow.wait_condition(lambda: self._in_flight < before, timeout=timeout)
            self._poll = CARRIED_POLL
        except TimeoutError:
            if self._carried:
                still = await self._local(
                    BatchActivities.unfinished,
                    UnfinishedInput(run_ids=sorted(self._carried)),
                    "items carried over still in flight",
                )
                if len(still.run_ids) < len(self._carried):
                    self._poll = CARRIED_POLL
                else:
                    self._poll = min(self._poll * 2, CARRIED_POLL_MAX)
                self._carried = set(still.run_ids)
        return not (check_flag and self._flag_due() and await self._flagged())

    def _flag_due(self) -> bool:
        return workflow.now() - self._flag_checked_at >= FLAG_CHECK

    async def _flagged(self) -> bool:
        self._flag_checked_at = workflow.now()
        flagged: bool = await self._local(
            BatchActivities.cancel_requested,
            BatchRef(batch_id=self._input.batch_id),
            "read the cancel flag",
        )
        return flagged

    async def _cancel_flagged(self, input: BulkInput) -> BulkOutcome:
        """Flagged by the API, which could not reach Temporal: cancelled as if it had."""
        await shielded(self._cancel(input))
        return BulkOutcome(batch_id=input.batch_id, status=BatchStatus.cancelled)

    def _continue_as_new(self, input: BulkInput) -> None:
        carried = sorted(self._carried | set(self._mine))
        workflow.continue_as_new(
            input.model_copy(
                update={
                    "charged": True,
                    "next_position": self._next,
                    "in_flight": carried,
                    "started": self._started,
                }
            )
        )

    async def _cancel(self, input: BulkInput) -> None:
        """Ends every unfinished item cancelled; then the batch."""
        self._details(BatchStatus.running, stopping=True)
        await self._local(
            BatchActivities.stop_batch,
            StopBatchInput(batch_id=input.batch_id, from_position=self._next),
            "cancel and refund the items never started",
        )

        async def cancel(run_id: UUID) -> None:
            try:
                await workflow.get_external_workflow_handle(workflow_id(run_id)).cancel()
            except Exception as exc:  # it had finished
                workflow.logger.debug("item %s not cancelled: %s", run_id, exc)

        await asyncio.gather(*(cancel(r) for r in sorted(self._carried | set(self._mine))))
        while self._in_flight:
            await self._wait_for_room(input)
        await self._local(
            BatchActivities.finish_batch,
            FinishBatchInput(batch_id=input.batch_id, status=BatchStatus.cancelled),
            "cancelled",
        )
        self._details(BatchStatus.cancelled)

    async def _local(self, method: Any, arg: Any, summary: str) -> Any:
        return await workflow.execute_local_activity_method(
            method,
            arg,
            start_to_close_timeout=DB_TIMEOUT,
            retry_policy=DB_RETRY,
            summary=summary,
        )

    def _details(self, status: BatchStatus, *, stopping: bool = False) -> None:
        total = self._input.total
        done = self._started - self._in_flight
        state = "cancelling" if stopping else str(status)
        workflow.set_current_details(
            f"**{state}** — {done}/{total} items finished, {self._in_flight} in flight, "
            f"{total - self._started} not started"
        )


async def _unbroken(awaitable: Awaitable[T]) -> T:
    """Runs to the end; a cancel that arrives meanwhile is raised once it has."""
    result, cancel_requested = await shielded(awaitable)
    if cancel_requested:
        raise asyncio.CancelledError()
    return result
