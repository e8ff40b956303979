"""A run's life as the API drives it: starting it (steps 1-4 and the workflow start), asking
its workflow for progress, cancelling it.

`start` is the one way a run starts: the route, the tests and bulk batches use it. Every
call to Temporal here is bounded as a whole (the client would otherwise retry for about
ten seconds whatever its per-attempt timeout), so no request stalls when Temporal is down:
progress falls back to the database at once, a start answers 503 and charges nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api import ratelimit
from api.deps import TemporalHealth, TenantScope
from api.errors import Conflict, NotFound, Unavailable
from api.schemas import AnalyzeRequest
from core import metrics
from core.models import AnalysisInput, ProviderBudget
from core.progress import Progress, Tracker
from core.settings import Settings
from core.temporal import workflow_id
from core.tiers import Tier
from db import allowances, analyses, business_profiles, credits
from db.pool import Connection
from workflows.analysis import AnalysisWorkflow, start_options

log = logging.getLogger(__name__)


async def free_units(
    conn: Connection, account_id: UUID, settings: Settings, tier: Tier, wanted: int
) -> tuple[date | None, int]:
    """How many of `wanted` analyses of `tier` this month's free allowance still covers,
    once what is drawn and promised is counted, and that month (the caller holds the
    account's lock): runs want one, batches their accepted items."""
    plan = settings.plan(await allowances.account_plan(conn, account_id))
    allowance = plan.allowances.get(tier, 0)
    if allowance <= 0 or wanted == 0:
        return None, 0
    month = await allowances.current_month(conn)
    left = allowance - await allowances.committed(conn, account_id, month, tier.value)
    return month, max(0, min(left, wanted))


async def start(
    scope: TenantScope,
    settings: Settings,
    temporal: Client,
    health: TemporalHealth,
    request: AnalyzeRequest,
    idempotency_key: str | None = None,
) -> asyncpg.Record:
    """Accepts a run for the scope's account and starts its workflow; returns its row.

    A repeated Idempotency-Key returns the run it was first used for. Refusals are raised:
    NotFound (business profile), Conflict (the same username in flight, a key reused for
    another request), credits.InsufficientCredits, Unavailable (Temporal did not take it;
    nothing was charged).
    """
    if health.server.open:
        raise _not_started()
    run_id = uuid4()  # step 1
    cost = settings.credits_for(request.analysis_type)
    request_hash = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
    # Requests of one account queue here, in the process, rather than each holding a
    # pooled connection while it waits for the account's lock in the database.
    async with account_turn(scope.account_id), scope.transaction() as conn:
        if idempotency_key and (
            earlier := await _replay(conn, scope.account_id, idempotency_key, request_hash)
        ):
            return earlier
        if await business_profiles.get_live(conn, request.business_profile_id) is None:
            raise NotFound(
                "No such business profile.",
                code="business_profile_not_found",
                field="business_profile_id",
            )
        accepted_at = datetime.now(UTC)
        try:
            async with conn.transaction():
                # The account's requests take turns from here to the commit, a few
                # milliseconds: the insert (steps 2 and 3) meets the unique indexes first,
                # so a repeat finds its run (same key) or a 409 (same username in flight),
                # then step 4 checks that the balance covers every accepted run, this one
                # included, before any is charged. The charge (step 5) stays the authority.
                await credits.lock_promises(conn, scope.account_id)
                await ratelimit.check(
                    conn, settings, scope.account_id, "analyses", 1, scope.rate_limits
                )
                month, free = await free_units(
                    conn, scope.account_id, settings, request.analysis_type, 1
                )
                row = await analyses.insert_pending(
                    conn,
                    account_id=scope.account_id,
                    business_profile_id=request.business_profile_id,
                    requested_by=scope.user_id,
                    username=request.username,
                    analysis_type=request.analysis_type.value,
                    credits_cost=cost,
                    progress=Tracker.accepted(run_id, accepted_at).document,
                    idempotency_key=idempotency_key,
                    request_hash=request_hash,
                    allowance_month=month if free else None,
                )
                funds = await credits.available(conn, scope.account_id)
                if not free and funds.credits < 0:
                    raise credits.InsufficientCredits(
                        funds.balance, cost, promised=funds.promised - cost
                    )
        except asyncpg.UniqueViolationError:
            if idempotency_key and (
                earlier := await _replay(conn, scope.account_id, idempotency_key, request_hash)
            ):
                return earlier
            existing = await analyses.find_in_flight(
                conn, scope.account_id, request.business_profile_id, request.username
            )
            raise _in_progress(request.username, existing) from None

    run = AnalysisInput(
        run_id=run_id,
        account_id=scope.account_id,
        business_profile_id=request.business_profile_id,
        username=request.username,
        tier=request.analysis_type,
        credits_cost=cost,
        scrape_task_queue=settings.scrape_task_queue,
        accepted_at=accepted_at,
        provider_budget=provider_budget(settings),
    )
    await start_workflow(
        temporal,
        settings,
        health,
        AnalysisWorkflow.run,
        run,
        start_options(run, settings.task_queue),
        give_up=lambda: _mark_not_started(scope, run_id),
        unavailable=_not_started,
    )
    metrics.ANALYSES_STARTED.labels(tier=request.analysis_type).inc()
    return row


def provider_budget(settings: Settings) -> ProviderBudget:
    """The provider budget runs start with (fixed per run, like its cost)."""
    return ProviderBudget(
        attempts=settings.provider_attempts,
        first_pause_seconds=settings.provider_first_pause_seconds,
        max_pause_seconds=settings.provider_max_pause_seconds,
    )


async def start_workflow(
    temporal: Client,
    settings: Settings,
    health: TemporalHealth,
    workflow: Any,
    arg: Any,
    options: dict[str, Any],
    *,
    give_up: Callable[[], Awaitable[bool]],
    unavailable: Callable[[], Unavailable],
) -> None:
    """Starts a workflow, bounded as a whole; a start already made counts as made.

    When the start failed, or its answer was lost, or the request was cancelled meanwhile
    (the API stopping), `give_up` ends what was accepted unless its workflow did start and
    charge it (it answers whether it ended it): then `unavailable()` is raised (503).
    """
    try:
        await asyncio.wait_for(
            temporal.start_workflow(
                workflow,
                arg,
                **options,
                rpc_timeout=timedelta(seconds=settings.temporal_call_timeout_seconds),
            ),
            settings.temporal_call_timeout_seconds,
        )
    except WorkflowAlreadyStartedError:
        pass
    except (Exception, asyncio.CancelledError) as exc:
        log.error("could not start workflow %s: %r", options["id"], exc)
        if unreachable(exc):
            health.server.trip(settings.temporal_unreachable_backoff_seconds)
        ended = await asyncio.shield(give_up())
        if isinstance(exc, asyncio.CancelledError):
            raise
        if ended:
            raise unavailable() from exc


async def _mark_not_started(scope: TenantScope, run_id: UUID) -> bool:
    async with scope.transaction() as conn:
        return await analyses.mark_not_started(
            conn, run_id, "not_started", "The analysis could not be started."
        )


def unreachable(error: BaseException) -> bool:
    """The server could not be reached: refused, down, or never connected (a lazy client's
    first connection fails with a RuntimeError)."""
    if isinstance(error, RPCError):
        return error.status is RPCStatusCode.UNAVAILABLE
    return isinstance(error, RuntimeError)


def _not_started() -> Unavailable:
    return Unavailable("The analysis could not be started; nothing was charged. Retry later.")


async def _replay(
    conn: Connection, account_id: UUID, key: str, request_hash: str
) -> asyncpg.Record | None:
    row = await analyses.find_by_idempotency_key(conn, account_id, key)
    if row is not None and row["request_hash"] != request_hash:
        raise Conflict(
            "This Idempotency-Key was used with a different request.",
            code="idempotency_key_reused",
            field="Idempotency-Key",
        )
    return row


_TURNS = [asyncio.Lock() for _ in range(64)]


def account_turn(account_id: UUID) -> asyncio.Lock:
    """The in-process lock an account's starts take turns on (64 stripes: accounts sharing
    one wait a few milliseconds for each other; the database lock is the one that counts)."""
    return _TURNS[account_id.int % len(_TURNS)]


def _in_progress(username: str, run_id: UUID | None) -> Conflict:
    return Conflict(
        f"@{username} is already being analysed for this business profile.",
        code="analysis_in_progress",
        run_id=run_id,
    )


async def live_progress(
    temporal: Client, settings: Settings, health: TemporalHealth, run_id: UUID
) -> Progress | None:
    """The workflow's own progress document, or None when it cannot answer in time (no
    server, no worker, not started yet): the caller answers from the database."""
    if health.server.open or health.queries.open:
        return None
    handle: WorkflowHandle[AnalysisWorkflow, object] = temporal.get_workflow_handle_for(
        AnalysisWorkflow.run, workflow_id(run_id)
    )
    timeout = settings.progress_query_timeout_seconds
    try:
        live: Progress = await asyncio.wait_for(
            handle.query(AnalysisWorkflow.progress, rpc_timeout=timedelta(seconds=timeout)),
            timeout,
        )
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError):
        return None  # the workflow cannot answer (a failing workflow task)
    except Exception as exc:
        if unreachable(exc):
            health.server.trip(settings.temporal_unreachable_backoff_seconds)
        else:  # a timeout: no worker to answer
            health.queries.trip(settings.progress_query_backoff_seconds)
        return None
    health.queries.reset()
    return live


async def cancel(temporal: Client, settings: Settings, scope: TenantScope, run_id: UUID) -> bool:
    """Asks Temporal to cancel the run's workflow; True when the run turned out never to
    have started and was cancelled here. The run's cancel flag, set before, stands whatever
    happens: its charge or commit step sees it."""
    try:
        await asyncio.wait_for(
            temporal.get_workflow_handle(workflow_id(run_id)).cancel(
                rpc_timeout=timedelta(seconds=settings.temporal_call_timeout_seconds)
            ),
            settings.temporal_call_timeout_seconds,
        )
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            # No workflow (its start failed and was not recorded): nothing to refund.
            async with scope.transaction() as conn:
                return await analyses.cancel_unstarted(conn, run_id)
        log.warning("cancel of run %s not delivered to Temporal: %s", run_id, exc)
    except Exception as exc:
        log.warning("cancel of run %s not delivered to Temporal: %r", run_id, exc)
    return False
