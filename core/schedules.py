"""Temporal Schedules for the jobs that keep the books (DESIGN.md section 8): created or
updated idempotently by `oslira dev` and `oslira migrate`, visible in the Temporal UI, and
run by hand with `oslira schedules trigger NAME`."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from core.settings import Settings


@dataclass(frozen=True)
class Job:
    name: str
    cron: str  # UTC
    workflow: str
    description: str


JOBS = (
    Job(
        "stuck-runs",
        "0 * * * *",
        "StuckRunsWorkflow",
        "Hourly: fails and refunds runs in flight for 5 minutes whose workflow is not running",
    ),
    Job(
        "ledger-check",
        "0 4 * * *",
        "LedgerCheckWorkflow",
        "Daily: checks the ledger invariants over every account; violations are logged",
    ),
    Job(
        "cleanup",
        "0 2 * * *",
        "CleanupWorkflow",
        "Daily: hard-deletes what was soft-deleted 30 days ago, and stale cache entries",
    ),
    Job(
        "stripe-events",
        "*/5 * * * *",
        "StripeEventsWorkflow",
        "Every 5 minutes: starts the workflow of each stored Stripe event still waiting",
    ),
    Job(
        "renewal",
        "0 3 1 * *",
        "RenewalWorkflow",
        "Monthly: each account's plan credits for the month, once per account and month",
    ),
)
JOBS_BY_NAME = {job.name: job for job in JOBS}


def schedule_id(settings: Settings, job: Job) -> str:
    """Named after the task queue, so stacks sharing a Temporal server keep their own."""
    return f"{settings.task_queue}-{job.name}"


def _schedule(settings: Settings, job: Job) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            job.workflow, id=schedule_id(settings, job), task_queue=settings.task_queue
        ),
        spec=ScheduleSpec(cron_expressions=[job.cron]),
        # A job still running when its next time comes is not started twice.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure(client: Client, settings: Settings) -> list[str]:
    """Creates every job's schedule, or brings an existing one up to date (keeping whether
    an operator paused it); returns their ids."""
    ids = []
    for job in JOBS:
        wanted = _schedule(settings, job)
        sid = schedule_id(settings, job)
        try:
            await client.create_schedule(sid, wanted)
        except ScheduleAlreadyRunningError:

            def update(given: ScheduleUpdateInput, wanted: Schedule = wanted) -> ScheduleUpdate:
                wanted.state = given.description.schedule.state
                return ScheduleUpdate(schedule=wanted)

            await client.get_schedule_handle(sid).update(update)
        ids.append(sid)
    return ids


def handle(client: Client, settings: Settings, name: str) -> ScheduleHandle:
    return client.get_schedule_handle(schedule_id(settings, JOBS_BY_NAME[name]))
