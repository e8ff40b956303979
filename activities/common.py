"""What every activity shares: its attempt, its errors sorted into expected outcomes,
database outages and bugs, and heartbeats around provider calls."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from core.errors import (
    DATABASE_UNAVAILABLE,
    PROVIDER_UNAVAILABLE,
    ErrorCode,
    business_error,
    details_of,
    internal_error,
    provider_unavailable,
)
from core.progress import Progress, StepDone
from db import analyses
from db.errors import UNAVAILABLE
from db.pool import connection
from providers.errors import ProfileNotFound, ProfilePrivate, ProviderError, ProviderUnavailable

NOTE_WITHIN = 1.0  # seconds a provider step may spend noting its start
HEARTBEAT_AFTER = 0.25  # seconds
HEARTBEAT_EVERY = 1.0  # seconds

Activity = TypeVar("Activity", bound=Callable[..., Awaitable[Any]])


def now() -> datetime:
    return datetime.now(UTC)


def attempt(attempts_before: int = 0) -> int:
    """The step's attempt: the tries of earlier executions (provider failures the workflow
    counted), plus this execution's own (a lost worker is retried by Temporal)."""
    return attempts_before + activity.info().attempt


def done_since(started_at: datetime, attempts_before: int = 0) -> StepDone:
    return StepDone(started_at=started_at, finished_at=now(), attempt=attempt(attempts_before))


def expected(error: ApplicationError) -> ApplicationError:
    """Logs an expected outcome (a business failure, a provider's failure) in one line
    carrying the run, and returns it to be raised."""
    details = details_of(error)
    tried = f" (attempt {details['attempt']})" if "attempt" in details else ""
    log = activity.logger.warning if error.type == PROVIDER_UNAVAILABLE else activity.logger.info
    log("%s: %s%s", error.type, error.message, tried)
    return error


def provider_failed(error: ProviderError, rejected: ErrorCode, tried: int) -> ApplicationError:
    """What a provider's error means for the step, logged in one line: an answer (no such
    profile, a private one), a refusal (`rejected`: retrying cannot help), or a failure
    that may pass (the workflow counts it against the step's budget)."""
    if isinstance(error, ProviderUnavailable):
        return expected(provider_unavailable(error.provider, error.message, tried))
    code = {ProfileNotFound: ErrorCode.profile_not_found, ProfilePrivate: ErrorCode.profile_private}
    return expected(
        business_error(
            code.get(type(error), rejected), error.message, provider=error.provider, attempt=tried
        )
    )


def step_activity(body: Activity) -> Activity:
    """Sorts what an activity raises: expected outcomes (ApplicationError) and
    cancellation pass as they are; a database that cannot be reached is retried by the
    step's policy (an outage delays a run, it does not fail it); anything else is our bug:
    logged with its traceback, and the run fails, refunded, rather than retrying forever."""
    return _sorting_errors(body, bugs_end_the_run=True)


def never_giving_up(body: Activity) -> Activity:
    """As `step_activity`, for the compensation: a refund is never given up on, so even our
    bug is retried (logged with its traceback each time) until it is fixed."""
    return _sorting_errors(body, bugs_end_the_run=False)


def _sorting_errors(body: Activity, *, bugs_end_the_run: bool) -> Activity:
    @functools.wraps(body)
    async def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return await body(*args, **kwargs)
        except (ApplicationError, asyncio.CancelledError):
            raise
        except UNAVAILABLE as exc:
            activity.logger.warning("database unavailable: %r (attempt %d)", exc, attempt())
            raise ApplicationError(
                f"database unavailable: {exc!r}",
                {"attempt": attempt()},
                type=DATABASE_UNAVAILABLE,
                category=ApplicationErrorCategory.BENIGN,
            ) from exc
        except Exception as exc:
            activity.logger.exception("bug in %s (attempt %d)", body.__name__, attempt())
            if bugs_end_the_run:
                raise internal_error(
                    f"{type(exc).__name__} in {body.__name__}", attempt=attempt()
                ) from exc
            raise

    return run  # type: ignore[return-value]


@asynccontextmanager
async def provider_call() -> AsyncIterator[None]:
    """Wraps a call to a provider: heartbeats, so a cancel request reaches it and a worker
    lost mid-call is noticed. Only once the call has lasted a while: a fast call costs no
    heartbeat round trip. Provider calls never touch the database: an outage of it cannot
    cost a paid call (the workflow keeps their progress)."""

    async def heartbeat() -> None:
        await asyncio.sleep(HEARTBEAT_AFTER)
        while True:
            activity.heartbeat()
            await asyncio.sleep(HEARTBEAT_EVERY)

    beating = asyncio.create_task(heartbeat())
    try:
        yield
    finally:
        beating.cancel()


async def note_progress(pool: asyncpg.Pool | None, progress: Progress | None) -> None:
    """Notes a provider step's start on the run's row, so the database (and the event
    streams it announces to) see it; best-effort and brief (at most NOTE_WITHIN): a paid
    call never waits on, or fails for, the database."""
    if pool is None or progress is None:
        return
    try:
        async with asyncio.timeout(NOTE_WITHIN), connection(pool, timeout=NOTE_WITHIN) as conn:
            await analyses.save_progress(conn, progress)
    except Exception as exc:
        activity.logger.debug("progress not noted (%r): the next step writes it", exc)
