"""The scheduled jobs' workflows (DESIGN.md section 8), started by Temporal Schedules
(core/schedules.py): each runs one activity, retried until it succeeds."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.maintenance import MaintenanceActivities
    from core.models import (
        CleanupReport,
        LedgerReport,
        QueuedEventsReport,
        RenewalReport,
        SweepInput,
        SweepOutput,
    )

_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=5))


@workflow.defn(name="StuckRunsWorkflow")
class StuckRunsWorkflow:
    """Hourly: runs and batches in flight whose workflow no longer runs are failed and
    refunded (or ended), once."""

    @workflow.run
    async def run(self, input: SweepInput | None = None) -> SweepOutput:
        return await workflow.execute_activity_method(
            MaintenanceActivities.sweep_stuck_runs,
            input or SweepInput(),
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=timedelta(minutes=2),
            retry_policy=_RETRY,
        )


@workflow.defn(name="LedgerCheckWorkflow")
class LedgerCheckWorkflow:
    """Daily: the ledger invariants over every account; violations are logged as errors
    and returned."""

    @workflow.run
    async def run(self) -> LedgerReport:
        return await workflow.execute_activity_method(
            MaintenanceActivities.check_ledger,
            start_to_close_timeout=timedelta(minutes=30),
            retry_policy=_RETRY,
        )


@workflow.defn(name="CleanupWorkflow")
class CleanupWorkflow:
    """Daily: hard-deletes what was soft-deleted more than 30 days ago, and stale cache
    entries."""

    @workflow.run
    async def run(self) -> CleanupReport:
        return await workflow.execute_activity_method(
            MaintenanceActivities.clean_up,
            start_to_close_timeout=timedelta(minutes=30),
            retry_policy=_RETRY,
        )


@workflow.defn(name="RenewalWorkflow")
class RenewalWorkflow:
    """Monthly: each account's plan credits for the month, once."""

    @workflow.run
    async def run(self) -> RenewalReport:
        return await workflow.execute_activity_method(
            MaintenanceActivities.renew_plans,
            start_to_close_timeout=timedelta(minutes=30),
            retry_policy=_RETRY,
        )


@workflow.defn(name="StripeEventsWorkflow")
class StripeEventsWorkflow:
    """Every 5 minutes: starts the workflow of each stored Stripe event still waiting for
    one (stored while Temporal was out of reach)."""

    @workflow.run
    async def run(self) -> QueuedEventsReport:
        return await workflow.execute_activity_method(
            MaintenanceActivities.queue_stripe_events,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=_RETRY,
        )
