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
import time
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import TenantScope
from api.errors import Conflict, NotFound, Unavailable
from api.schemas import AnalyzeRequest
from core.models import AnalysisInput
from core.progress import Progress, Tracker
from core.settings import Settings
from core.temporal import workflow_id
from db import analyses, business_profiles, credits
from db.pool import Connection
from workflows.analysis import AnalysisWorkflow, start_options

log = logging.getLogger(__name__)


async def start(
    scope: TenantScope,
    settings: Settings,
    temporal: Client,
    request: AnalyzeRequest,
    idempotency_key: str | None = None,
) -> asyncpg.Record:
    """Accepts a run for the scope's account and starts its workflow; returns its row.

    A repeated Idempotency-Key returns the run it was first used for. Refusals are raised:
    NotFound (business profile), Conflict (the same username in flight, a key reused for
    another request), credits.InsufficientCredits, Unavailable (Temporal did not take it;
    nothing was charged).
    """
    run_id = uuid4()  # step 1
    cost = settings.credits_for(request.analysis_type)
    request_hash = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
    async with scope.transaction() as conn:
        # The account's requests take turns from here to the commit: each sees the runs the
        # others accepted, so a repeat finds its run (same key, or 409) before any credit
        # check, and the credit check counts what accepted runs will still charge.
        await credits.lock_promises(conn, scope.account_id)
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
        if existing := await analyses.find_in_flight(
            conn, scope.account_id, request.business_profile_id, request.username
        ):
            raise _in_progress(request.username, existing)
        # Step 4, the fast check; the charge (step 5) stays the authority.
        funds = await credits.available(conn, scope.account_id)
        if funds.credits < cost:
            raise credits.InsufficientCredits(funds.balance, cost, promised=funds.promised)
        accepted_at = datetime.now(UTC)
        try:
            # Steps 2 and 3: the unique index is the last word on duplicates.
            async with conn.transaction():
                await analyses.insert_pending(
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
        row = await analyses.get(conn, run_id)
    assert row is not None

    run = AnalysisInput(
        run_id=run_id,
        account_id=scope.account_id,
        business_profile_id=request.business_profile_id,
        username=request.username,
        tier=request.analysis_type,
        credits_cost=cost,
        scrape_task_queue=settings.scrape_task_queue,
        accepted_at=accepted_at,
    )
    try:
        await asyncio.wait_for(
            temporal.start_workflow(
                AnalysisWorkflow.run,
                run,
                **start_options(run, settings.task_queue),
                rpc_timeout=timedelta(seconds=settings.temporal_call_timeout_seconds),
            ),
            settings.temporal_call_timeout_seconds,
        )
    except WorkflowAlreadyStartedError:
        pass
    except Exception as exc:
        # The start failed or its answer was lost: make sure the run ends without a charge.
        log.error("could not start workflow for run %s: %r", run_id, exc)
        async with scope.transaction() as conn:
            await analyses.mark_not_started(
                conn, run_id, "not_started", "The analysis could not be started."
            )
        raise Unavailable(
            "The analysis could not be started; nothing was charged. Retry later."
        ) from exc
    return row


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


def _in_progress(username: str, run_id: UUID | None) -> Conflict:
    return Conflict(
        f"@{username} is already being analysed for this business profile.",
        code="analysis_in_progress",
        run_id=run_id,
    )


class QueryBreaker:
    """Skips workflow queries for a while after one failed for want of a server or worker."""

    def __init__(self) -> None:
        self._open_until = 0.0

    @property
    def open(self) -> bool:
        return time.monotonic() < self._open_until

    def trip(self, seconds: float) -> None:
        self._open_until = time.monotonic() + seconds

    def reset(self) -> None:
        self._open_until = 0.0


async def live_progress(
    temporal: Client, settings: Settings, breaker: QueryBreaker, run_id: UUID
) -> Progress | None:
    """The workflow's own progress document, or None when it cannot answer in time (no
    server, no worker, not started yet): the caller answers from the database."""
    if breaker.open:
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
    except (TimeoutError, RPCError) as exc:
        if isinstance(exc, TimeoutError) or exc.status in (
            RPCStatusCode.DEADLINE_EXCEEDED,
            RPCStatusCode.UNAVAILABLE,
        ):
            breaker.trip(settings.progress_query_backoff_seconds)
        return None
    except Exception:  # a query the workflow cannot answer (a failing workflow task)
        return None
    breaker.reset()
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
