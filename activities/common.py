"""Helpers every activity uses: step timing and heartbeating around provider calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from temporalio import activity

from core.models import StepDone, StepRecord
from core.tiers import Step


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
async def heartbeating(every_seconds: float = 1.0) -> AsyncIterator[None]:
    """Heartbeats while a long provider call runs, so a cancel request reaches it.

    The SDK throttles what it sends to the server; heartbeating often only makes the
    activity learn of a cancellation as soon as the throttle allows.
    """

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(every_seconds)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
