"""The scheduled jobs' work: the stuck-run sweep and the ledger check (DESIGN.md section 8)."""

from __future__ import annotations

import logging
from uuid import UUID

import asyncpg
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.common import never_giving_up
from core.errors import ErrorCode, user_message
from core.models import LedgerReport, SweepInput, SweepOutput
from core.progress import IN_FLIGHT, RunError, RunStatus, Tracker
from core.temporal import workflow_id
from db import analyses, batches, credits
from db.pool import connection
from workflows.bulk import bulk_workflow_id

log = logging.getLogger(__name__)


class MaintenanceActivities:
    def __init__(self, pool: asyncpg.Pool, client: Client) -> None:
        self._pool = pool
        self._client = client

    async def _running(self, workflow: str) -> bool:
        """Whether the workflow's latest run is still running; False when there is none."""
        try:
            description = await self._client.get_workflow_handle(workflow).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return description.status == WorkflowExecutionStatus.RUNNING

    @activity.defn
    @never_giving_up
    async def sweep_stuck_runs(self, input: SweepInput) -> SweepOutput:
        """Fails and refunds the runs in flight for longer than `older_than_seconds` whose
        workflow no longer runs (terminated, or never started), each exactly once: under the
        run's row lock, as the workflow's own compensation does, so whichever comes second
        finds the run ended; the refund has its key. An item of a batch counts as stuck only
        when its batch's workflow, which starts it, is not running either."""
        async with connection(self._pool) as conn:
            candidates = await analyses.stale_in_flight(conn, input.older_than_seconds, input.limit)
        failed: list[UUID] = []
        refunded = 0
        for run in candidates:
            activity.heartbeat(str(run["id"]))
            if await self._running(workflow_id(run["id"])):
                continue
            if run["batch_id"] is not None and await self._running(
                bulk_workflow_id(run["batch_id"])
            ):
                continue
            async with connection(self._pool) as conn, conn.transaction():
                row = await analyses.lock(conn, run["id"])
                if row is None or row["status"] not in IN_FLIGHT:
                    continue  # its own compensation got there first
                refund = await credits.refund_run(
                    conn, account_id=row["account_id"], run_id=row["id"]
                )
                progress = Tracker(analyses.progress_of(row))
                error = RunError(
                    code=ErrorCode.workflow_lost,
                    message=user_message(
                        ErrorCode.workflow_lost, username=row["username"], details={}, raw=""
                    ),
                )
                progress.stopping(error, cancelled=False)
                progress.set_status(RunStatus.failed, error)
                await analyses.finish_unsuccessful(conn, progress.document)
            refunded += refund.delta if refund else 0
            failed.append(run["id"])
            log.warning("run %s was stuck with no running workflow: failed and refunded", run["id"])
        ended = await self._end_orphaned_batches(input)
        return SweepOutput(
            checked=len(candidates), failed=failed, refunded_credits=refunded, batches_ended=ended
        )

    async def _end_orphaned_batches(self, input: SweepInput) -> list[UUID]:
        """A batch whose workflow no longer runs, once none of its items is in flight (the
        sweep above ends the stuck ones): `complete` (or `cancelled` when asked) if it had
        started, `failed` if it never did (nothing was charged)."""
        async with connection(self._pool) as conn:
            stale = await batches.stale_unfinished(conn, input.older_than_seconds, input.limit)
        ended: list[UUID] = []
        for batch in stale:
            if await self._running(bulk_workflow_id(batch["id"])):
                continue
            async with connection(self._pool) as conn, conn.transaction():
                row = await batches.lock(conn, batch["id"])
                if row is None or row["status"] not in ("pending", "running"):
                    continue
                if await batches.items_in_flight(conn, batch["id"]):
                    continue  # the next sweep, once its items are ended
                if row["status"] == "pending":
                    await batches.fail(
                        conn,
                        batch["id"],
                        ErrorCode.workflow_lost,
                        "The batch's workflow stopped before it started; nothing was charged.",
                    )
                else:
                    cancelled = row["cancel_requested_at"] is not None
                    await batches.finish(
                        conn, batch["id"], "cancelled" if cancelled else "complete"
                    )
            ended.append(batch["id"])
            log.warning("batch %s had no running workflow: ended", batch["id"])
        return ended

    @activity.defn
    @never_giving_up
    async def check_ledger(self) -> LedgerReport:
        """DESIGN.md section 4's invariants over every account; each violation is logged as
        an error."""
        async with connection(self._pool) as conn:
            violations = await credits.invariant_violations(conn)
        for violation in violations:
            log.error("ledger invariant violated: %s", violation)
        return LedgerReport(violations=violations)
