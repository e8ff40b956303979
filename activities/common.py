"""Helpers every activity uses: step timing and heartbeating around provider calls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.models import StepDone, StepRecord
from core.tiers import Step
from db import analyses

log = logging.getLogger(__name__)

RECORD_RUNNING_AFTER = 0.25  # seconds
HEARTBEAT_EVERY = 1.0  # seconds


def expected(error: ApplicationError) -> ApplicationError:
    """Logs an expected outcome (a business failure, a provider's failure that will be
    retried) in one line carrying the run, and returns it to be raised."""
    if error.non_retryable:
        activity.logger.info("%s: %s", error.type, error.message)
    else:
        activity.logger.warning(
            "%s: %s (attempt %d; retried by the step's policy)",
            error.type,
            error.message,
            activity.info().attempt,
        )
    return error


def now() -> datetime:
    return datetime.now(UTC)


def done_since(started_at: datetime) -> StepDone:
    return StepDone(started_at=started_at, finished_at=now(), attempt=activity.info().attempt)


def record(step: Step, done: StepDone) -> StepRecord:
    return StepRecord(
        name=step,
        status="done",
        started_at=done.started_at,
        finished_at=done.finished_at,
        attempt=done.attempt,
    )


def running(step: Step, started_at: datetime) -> StepRecord:
    return StepRecord(
        name=step, status="running", started_at=started_at, attempt=activity.info().attempt
    )


@asynccontextmanager
async def provider_call(
    pool: asyncpg.Pool, run_id: UUID, step: Step, started_at: datetime
) -> AsyncIterator[None]:
    """Wraps a call to a provider: heartbeats so a cancel request reaches it, and records the
    step as running for the progress fallback.

    Both start only once the call has lasted a while, so a fast call costs no database write
    and no heartbeat round trip. The SDK throttles heartbeats to the server; beating every
    second only makes a cancellation arrive as soon as the throttle allows.
    """

    async def record_running() -> None:
        await asyncio.sleep(RECORD_RUNNING_AFTER)
        try:
            async with pool.acquire() as conn:
                await analyses.record_step(conn, run_id, running(step, started_at))
        except Exception:  # progress is best-effort; the call goes on
            log.warning("could not record %s as running for run %s", step, run_id, exc_info=True)

    async def heartbeat() -> None:
        await asyncio.sleep(RECORD_RUNNING_AFTER)
        while True:
            activity.heartbeat()
            await asyncio.sleep(HEARTBEAT_EVERY)

    async def watch() -> None:
        await asyncio.gather(record_running(), heartbeat())

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()
