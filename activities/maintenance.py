"""The scheduled jobs' work: the stuck-run sweep and the ledger check (DESIGN.md section 8)."""

from __future__ import annotations

import logging
from uuid import UUID

import asyncpg
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.batches import STOP_CHUNK
from activities.billing import SubscriptionSync, UnusableEvent
from activities.common import never_giving_up
from core.errors import ErrorCode, user_message
from core.models import (
    CleanupReport,
    LedgerReport,
    QueuedEventsReport,
    RenewalReport,
    StripeEventInput,
    SweepInput,
    SweepOutput,
)
from core.progress import IN_FLIGHT, RunError, RunStatus, Tracker
from core.settings import Settings
from core.temporal import workflow_id
from core.tiers import Tier
from db import analyses, batches, billing, credits, maintenance, stripe_events
from db.pool import connection
from providers.cache import PostgresProfileCache, ProfileCache
from providers.errors import ProviderRejected, ProviderUnavailable
from workflows.billing import StripeEventWorkflow, stripe_workflow_id
from workflows.bulk import bulk_workflow_id

log = logging.getLogger(__name__)

QUEUE_AFTER_SECONDS = 60.0  # the webhook starts a stored event's workflow at once
QUEUE_LIMIT = 1_000
ORPHANED_ITEM = "The batch stopped before this item started; it was refunded."


class MaintenanceActivities:
    def __init__(
        self,
        pool: asyncpg.Pool,
        client: Client,
        settings: Settings,
        cache: ProfileCache | None = None,
    ) -> None:
        self._pool = pool
        self._cache = cache or PostgresProfileCache(pool)
        self._client = client
        self._settings = settings
        self._subscriptions = SubscriptionSync(settings)

    async def _state(self, workflow: str) -> str:
        """`running`, `closed` (terminated, failed, timed out, ...) or `missing` (never
        started): the workflow's latest run."""
        try:
            description = await self._client.get_workflow_handle(workflow).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return "missing"
            raise
        return "running" if description.status == WorkflowExecutionStatus.RUNNING else "closed"

    async def _stuck(self, run: asyncpg.Record) -> bool:
        """Whether nothing will ever end this run. An item of a batch whose workflow was
        never started waits for its batch's workflow, which starts it: checked first, so an
        item started meanwhile is seen running."""
        batch_running = run["batch_id"] is not None and (
            await self._state(bulk_workflow_id(run["batch_id"])) == "running"
        )
        state = await self._state(workflow_id(run["id"]))
        if state == "running":
            return False
        return state == "closed" or not batch_running

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
            if not await self._stuck(run):
                continue
            async with connection(self._pool) as conn, conn.transaction():
                row = await analyses.lock(conn, run["id"])
                if row is None or row["status"] not in IN_FLIGHT:
                    continue  # its own compensation got there first
                refund = await credits.refund_run(
                    conn, account_id=row["account_id"], run_id=row["id"]
                )
                # A run its user had asked to cancel ends cancelled, as it would have.
                cancelled = row["cancel_requested_at"] is not None
                code = ErrorCode.run_cancelled if cancelled else ErrorCode.workflow_lost
                error = RunError(
                    code=code,
                    message=user_message(code, username=row["username"], details={}, raw=""),
                )
                progress = Tracker(analyses.progress_of(row))
                progress.stopping(error, cancelled=cancelled)
                progress.set_status(RunStatus.cancelled if cancelled else RunStatus.failed, error)
                await analyses.finish_unsuccessful(conn, progress.document)
            refunded += refund.delta if refund else 0
            failed.append(run["id"])
            log.warning("run %s was stuck with no running workflow: failed and refunded", run["id"])
        ended = await self._end_orphaned_batches(input)
        return SweepOutput(
            checked=len(candidates), failed=failed, refunded_credits=refunded, batches_ended=ended
        )

    async def _end_orphaned_batches(self, input: SweepInput) -> list[UUID]:
        """A batch whose workflow no longer runs: the items it never started end (`failed`,
        or `cancelled` when the batch was asked to stop) and are refunded, a chunk per
        transaction as a cancel does; the items it started are swept above with the other
        runs. Once none is in flight the batch ends: `complete` (or `cancelled`) if it had
        started, `failed` if it never did (nothing was charged)."""
        async with connection(self._pool) as conn:
            stale = await batches.stale_unfinished(conn, input.older_than_seconds, input.limit)
        ended: list[UUID] = []
        for batch in stale:
            activity.heartbeat(str(batch["id"]))
            if await self._state(bulk_workflow_id(batch["id"])) == "running":
                continue
            while True:
                async with connection(self._pool) as conn, conn.transaction():
                    row = await batches.lock(conn, batch["id"])
                    if row is None or row["status"] not in ("pending", "running"):
                        break
                    cancelled = row["cancel_requested_at"] is not None
                    await credits.lock_balance(conn, row["account_id"])
                    items = await batches.end_unstarted(
                        conn,
                        batch["id"],
                        0,
                        status="cancelled" if cancelled else "failed",
                        code=ErrorCode.run_cancelled if cancelled else ErrorCode.workflow_lost,
                        message=ORPHANED_ITEM,
                        limit=STOP_CHUNK,
                    )
                    await credits.refund_items(
                        conn,
                        account_id=row["account_id"],
                        batch_id=batch["id"],
                        run_ids=items,
                        item_cost=row["credits_cost"],
                    )
                    if len(items) == STOP_CHUNK:
                        continue  # the next chunk, in a transaction of its own
                    if await batches.items_in_flight(conn, batch["id"]):
                        break  # started items still running: a later sweep ends the batch
                    if row["status"] == "pending":
                        await batches.fail(
                            conn,
                            batch["id"],
                            ErrorCode.workflow_lost,
                            "The batch's workflow stopped before it started; nothing was charged.",
                        )
                    else:
                        status = "cancelled" if cancelled else "complete"
                        await batches.finish(conn, batch["id"], status)
                    ended.append(batch["id"])
                    log.warning("batch %s had no running workflow: ended", batch["id"])
                    break
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

    @activity.defn
    @never_giving_up
    async def queue_stripe_events(self) -> QueuedEventsReport:
        """Starts the workflow of each Stripe event stored a minute ago or more and still
        waiting: the webhook answers 200 once an event is stored, even when Temporal is out
        of reach. An event whose workflow runs (retrying) is left to it; one whose workflow
        closed without applying it (terminated) is started again, and applied once."""
        async with connection(self._pool) as conn:
            waiting = await stripe_events.unqueued(
                conn, older_than_seconds=QUEUE_AFTER_SECONDS, limit=QUEUE_LIMIT
            )
        started = []
        for event_id in waiting:
            try:
                await self._client.start_workflow(
                    StripeEventWorkflow.run,
                    StripeEventInput.of(event_id, self._settings),
                    id=stripe_workflow_id(event_id),
                    task_queue=self._settings.task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                )
            except WorkflowAlreadyStartedError:
                continue
            started.append(event_id)
        if started:
            log.warning("started the workflows of %d stored Stripe events", len(started))
        return QueuedEventsReport(started=started)

    @activity.defn
    @never_giving_up
    async def clean_up(self) -> CleanupReport:
        """Hard-deletes what was soft-deleted more than 30 days ago, and stale cache
        entries (db.maintenance.purge); never a ledger row."""
        oldest = max(self._settings.cache_ttl_seconds(tier) for tier in Tier)
        async with connection(self._pool) as conn:
            purged = await maintenance.purge(conn)
        cache_entries = await self._cache.purge(oldest)
        log.info("cleanup: %s, %d cached profiles", purged, cache_entries)
        return CleanupReport(**vars(purged), cache_entries=cache_entries)

    @activity.defn
    @never_giving_up
    async def renew_plans(self) -> RenewalReport:
        """Accounts whose plan is not billed through Stripe get their plan's monthly credits,
        once per account and month. Each subscription billed through Stripe is re-read
        instead: its current period is granted once paid, once per subscription and period,
        whether its invoice's event got there first or not (a lost event is caught here).
        A subscription Stripe cannot be asked about now makes the job try again."""
        grants = {
            name: plan.monthly_credits
            for name, plan in self._settings.plans.items()
            if plan.monthly_credits > 0
        }
        async with connection(self._pool) as conn:
            period = await maintenance.renewal_period(conn)
            granted = await maintenance.renew(conn, grants, period) if grants else []
            subscriptions = await billing.live_ids(conn)
        renewed, unavailable = [], []
        for subscription in subscriptions:
            activity.heartbeat(subscription)
            try:
                async with connection(self._pool) as conn, conn.transaction():
                    if await self._subscriptions.sync(conn, subscription, recent_invoices=True):
                        renewed.append(subscription)
            except ProviderUnavailable as exc:
                unavailable.append(f"{subscription}: {exc.message}")
            except (UnusableEvent, ProviderRejected) as exc:
                # Not this job's to fix (a price no plan has, say): logged, and the other
                # subscriptions go on.
                log.error("renewal of %s: %s", subscription, exc)
            except Exception:
                # Our bug, for this one subscription: the others still get their periods.
                log.exception("renewal of %s failed", subscription)
        log.info(
            "renewal for %s: %d accounts and %d subscriptions granted",
            period,
            len(granted),
            len(renewed),
        )
        if unavailable:
            # Stripe could not be asked: the job runs again (what it granted stays granted).
            raise ApplicationError(
                "Stripe unavailable for " + "; ".join(unavailable), type="StripeUnavailable"
            )
        return RenewalReport(
            period=period.isoformat(), granted=granted, subscriptions_granted=renewed
        )
