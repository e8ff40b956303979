"""The scheduled jobs' workflows (DESIGN.md section 8), started by Temporal Schedules
(core/schedules.py): each runs one activity, retried until it succeeds."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

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


async def _job(activity: Any, within: timedelta = timedelta(minutes=30)) -> Any:
    """A job's one activity, retried until it succeeds."""
    return await workflow.execute_activity_method(
        activity, start_to_close_timeout=within, retry_policy=_RETRY
    )


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
        report: LedgerReport = await _job(MaintenanceActivities.check_ledger)
        return report


@workflow.defn(name="CleanupWorkflow")
class CleanupWorkflow:
    """Daily: hard-deletes what was soft-deleted more than 30 days ago, and stale cache
    entries."""

    @workflow.run
    async def run(self) -> CleanupReport:
        report: CleanupReport = await _job(MaintenanceActivities.clean_up)
        return report


@workflow.defn(name="RenewalWorkflow")
class RenewalWorkflow:
    """Monthly: each account's plan credits for the month, once."""

    @workflow.run
    async def run(self) -> RenewalReport:
        report: RenewalReport = await _job(MaintenanceActivities.renew_plans)
        return report


@workflow.defn(name="StripeEventsWorkflow")
class StripeEventsWorkflow:
    """Every 5 minutes: starts the workflow of each stored Stripe event still waiting for
    one (stored while Temporal was out of reach)."""

    @workflow.run
    async def run(self) -> QueuedEventsReport:
        report: QueuedEventsReport = await _job(
            MaintenanceActivities.queue_stripe_events, timedelta(minutes=5)
        )
        return report
