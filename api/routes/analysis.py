"""Start, follow, cancel and read analysis runs (steps 1-4 happen here; 5-12 in the workflow)."""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID, uuid4

import asyncpg
from fastapi import APIRouter, Header, Path, Query, Request, status
from pydantic import AfterValidator
from temporalio.client import WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api import examples
from api.deps import SettingsDep, Temporal, Tenant
from api.errors import (
    Conflict,
    InsufficientCredits,
    NotFound,
    Unavailable,
    error_example,
    responses,
)
from api.pagination import Paging
from api.schemas import (
    HANDLE_SCHEMA,
    AnalyzeRequest,
    CancelResponse,
    LeadOut,
    Page,
    ProgressResponse,
    ResultResponse,
    RunAccepted,
    RunSummary,
    instagram_handle,
)
from core.models import AnalysisInput, Progress, RunError, StepRecord
from core.temporal import workflow_id
from core.tiers import API_STEPS, RunStatus, Step, Tier
from db import analyses, business_profiles, credits, leads
from db.pool import Connection
from workflows.analysis import ACCOUNT_ID, ANALYSIS_TYPE, RUN_STATUS, USERNAME, AnalysisWorkflow

log = logging.getLogger(__name__)
router = APIRouter(tags=["analysis"])

RunId = Annotated[
    UUID, Path(description="The run's id, from POST /api/leads/analyze", examples=[examples.RUN_ID])
]
_RUN_NOT_FOUND = error_example(404, "run_not_found", "No such analysis run.")
# OpenAPI links: where the run id a 202 answers with can be used next.
_RUN_LINKS = {
    name: {"operationId": operation, "parameters": {"run_id": "$response.body#/run_id"}}
    for name, operation in (
        ("progress", "get_progress"),
        ("result", "get_result"),
        ("cancel", "cancel_run"),
    )
}


def _links(run_id: UUID) -> dict[str, str]:
    return {
        "progress": f"/api/analysis/{run_id}/progress",
        "result": f"/api/analysis/{run_id}/result",
        "cancel": f"/api/analysis/{run_id}/cancel",
    }


def _accepted(row: asyncpg.Record) -> RunAccepted:
    return RunAccepted(**_accepted_fields(row))


def _accepted_fields(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "run_id": row["id"],
        "links": _links(row["id"]),
        **{name: row[name] for name in RunAccepted.model_fields if name not in ("run_id", "links")},
    }


def _in_progress(username: str, run_id: UUID | None) -> Conflict:
    return Conflict(
        f"@{username} is already being analysed for this business profile.",
        code="analysis_in_progress",
        run_id=run_id,
    )


def _request_hash(body: AnalyzeRequest) -> str:
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


@router.post(
    "/api/leads/analyze",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunAccepted,
    summary="Start an analysis of one Instagram account",
    responses={
        202: {"links": _RUN_LINKS},
        **responses(
            402,
            404,
            409,
            422,
            e404=error_example(
                404,
                "business_profile_not_found",
                "No such business profile.",
                field="business_profile_id",
            ),
            e409=error_example(
                409,
                "analysis_in_progress",
                "@natgeo is already being analysed for this business profile.",
                run_id=examples.RUN_ID,
            ),
            e422=error_example(
                422, None, "username: Value error, must be an Instagram handle", field="username"
            ),
        ),
    },
)
async def start_analysis(
    body: AnalyzeRequest,
    scope: Tenant,
    settings: SettingsDep,
    temporal: Temporal,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1, max_length=255, description="Repeat a request safely: same key, same run"
        ),
    ] = None,
) -> RunAccepted:
    run_id = uuid4()  # step 1
    cost = settings.credits_for(body.analysis_type)
    request_hash = _request_hash(body)
    async with scope.transaction() as conn:
        # The account's requests take turns from here to the commit: each sees the runs the
        # others accepted, so a repeat finds its run (same key, or 409) before any credit
        # check, and the credit check counts what accepted runs will still charge.
        await credits.lock_promises(conn, scope.account_id)
        if idempotency_key and (
            replay := await _replay(conn, scope.account_id, idempotency_key, request_hash)
        ):
            return replay
        if await business_profiles.get_live(conn, body.business_profile_id) is None:
            raise NotFound(
                "No such business profile.",
                code="business_profile_not_found",
                field="business_profile_id",
            )
        if existing := await analyses.find_in_flight(
            conn, scope.account_id, body.business_profile_id, body.username
        ):
            raise _in_progress(body.username, existing)
        # Step 4, the fast check; the charge (step 5) stays the authority.
        funds = await credits.available(conn, scope.account_id)
        if funds.credits < cost:
            raise InsufficientCredits(
                f"The balance of {funds.balance} credits, less {funds.promised} promised to "
                f"runs not yet started, cannot cover {cost} for a {body.analysis_type} "
                "analysis.",
                balance=funds.balance,
                promised=funds.promised,
                credits_cost=cost,
            )
        accepted_at = datetime.now(UTC)
        api_steps = [
            StepRecord(
                name=s, status="done", started_at=accepted_at, finished_at=accepted_at, attempt=1
            )
            for s in API_STEPS
        ]
        try:
            # Steps 2 and 3: the unique index is the last word on duplicates.
            async with conn.transaction():
                await analyses.insert_pending(
                    conn,
                    run_id=run_id,
                    account_id=scope.account_id,
                    business_profile_id=body.business_profile_id,
                    requested_by=scope.user_id,
                    username=body.username,
                    analysis_type=body.analysis_type.value,
                    credits_cost=cost,
                    progress=Step.check_credits.progress_after,
                    current_step=Step.check_credits,
                    steps=api_steps,
                    idempotency_key=idempotency_key,
                    request_hash=request_hash,
                )
        except asyncpg.UniqueViolationError:
            if idempotency_key and (
                replay := await _replay(conn, scope.account_id, idempotency_key, request_hash)
            ):
                return replay
            existing = await analyses.find_in_flight(
                conn, scope.account_id, body.business_profile_id, body.username
            )
            raise _in_progress(body.username, existing) from None
        row = await analyses.get(conn, run_id)
    assert row is not None

    try:
        await temporal.start_workflow(
            AnalysisWorkflow.run,
            AnalysisInput(
                run_id=run_id,
                account_id=scope.account_id,
                business_profile_id=body.business_profile_id,
                username=body.username,
                tier=body.analysis_type,
                credits_cost=cost,
                scrape_task_queue=settings.scrape_task_queue,
            ),
            id=workflow_id(run_id),
            task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(ACCOUNT_ID, str(scope.account_id)),
                    SearchAttributePair(ANALYSIS_TYPE, body.analysis_type.value),
                    SearchAttributePair(USERNAME, body.username),
                    SearchAttributePair(RUN_STATUS, RunStatus.pending.value),
                ]
            ),
            static_summary=f"{body.analysis_type} analysis of @{body.username}",
        )
    except WorkflowAlreadyStartedError:
        pass
    except Exception as exc:
        # The start failed or its answer was lost: make sure the run ends without a charge.
        log.error("could not start workflow for run %s: %r", run_id, exc)
        async with scope.transaction() as conn:
            await analyses.mark_not_started(
                conn, run_id, "not_started", "the analysis could not be started"
            )
        raise Unavailable(
            "The analysis could not be started; nothing was charged. Retry later."
        ) from exc
    return _accepted(row)


@router.get(
    "/api/analysis",
    response_model=Page[RunSummary],
    summary="The account's runs, newest first, filtered and paged",
    responses=responses(
        422,
        e422=error_example(
            422,
            None,
            "status: Input should be 'pending', 'processing', 'complete', 'failed' or 'cancelled'",
            field="status",
        ),
    ),
)
async def list_runs(
    scope: Tenant,
    paging: Paging,
    run_status: Annotated[
        list[RunStatus] | None,
        Query(alias="status", description="Repeat for several: `?status=failed&status=cancelled`"),
    ] = None,
    username: Annotated[
        str | None,
        AfterValidator(instagram_handle),
        Query(
            description="A handle, normalised as when starting a run (`@NatGeo` = `natgeo`)",
            examples=["natgeo"],
            json_schema_extra=HANDLE_SCHEMA,
        ),
    ] = None,
    analysis_type: Annotated[Tier | None, Query()] = None,
    business_profile_id: Annotated[UUID | None, Query()] = None,
) -> Page[RunSummary]:
    async with scope.transaction() as conn:
        total, rows = await analyses.page(
            conn,
            statuses=[s.value for s in run_status] if run_status else None,
            username=username,
            analysis_type=analysis_type.value if analysis_type else None,
            business_profile_id=business_profile_id,
            limit=paging.page_size,
            offset=paging.offset,
        )
    return paging.of(total, [_summary(row) for row in rows])


def _summary(row: asyncpg.Record) -> RunSummary:
    return RunSummary(
        **_accepted_fields(row),
        credits_charged=row["credits_charged"],
        progress=row["progress"],
        current_step=row["current_step"],
        error=_error(row),
        cancel_requested=row["cancel_requested_at"] is not None,
        finished_at=row["finished_at"],
    )


def _error(row: asyncpg.Record) -> RunError | None:
    if not row["error_code"]:
        return None
    return RunError(code=row["error_code"], message=row["error_message"] or "")


async def _replay(
    conn: Connection, account_id: UUID, key: str, request_hash: str
) -> RunAccepted | None:
    row = await analyses.find_by_idempotency_key(conn, account_id, key)
    if row is None:
        return None
    if row["request_hash"] != request_hash:
        raise Conflict(
            "This Idempotency-Key was used with a different request.",
            code="idempotency_key_reused",
            field="Idempotency-Key",
        )
    return _accepted(row)


async def _run(scope: Tenant, run_id: UUID) -> asyncpg.Record:
    async with scope.transaction() as conn:
        row = await analyses.get(conn, run_id)
    if row is None:
        raise NotFound("No such analysis run.", code="run_not_found")
    return row


def _progress_from_row(row: asyncpg.Record) -> ProgressResponse:
    return ProgressResponse(
        run_id=row["id"],
        status=row["status"],
        progress=row["progress"],
        current_step=row["current_step"],
        steps=analyses.steps_from_json(row["steps"]),
        error=_error(row),
        cancel_requested=row["cancel_requested_at"] is not None,
        source="database",
    )


@router.get(
    "/api/analysis/{run_id}/progress",
    response_model=ProgressResponse,
    summary="Follow a run: status, percentage and steps",
    responses=responses(404, e404=_RUN_NOT_FOUND),
)
async def get_progress(
    run_id: RunId, scope: Tenant, temporal: Temporal, settings: SettingsDep, request: Request
) -> ProgressResponse:
    row = await _run(scope, run_id)
    if RunStatus(row["status"]).terminal:
        return _progress_from_row(row)
    breaker: QueryBreaker = request.app.state.query_breaker
    if breaker.open:
        return _progress_from_row(row)
    handle: WorkflowHandle[AnalysisWorkflow, object] = temporal.get_workflow_handle_for(
        AnalysisWorkflow.run, workflow_id(run_id)
    )
    try:
        live: Progress = await handle.query(
            AnalysisWorkflow.progress,
            rpc_timeout=timedelta(seconds=settings.progress_query_timeout_seconds),
        )
    except RPCError as exc:
        if exc.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.UNAVAILABLE):
            breaker.trip(settings.progress_query_backoff_seconds)
        return _progress_from_row(row)
    except Exception:  # a query the workflow cannot answer (not started yet, failing task)
        return _progress_from_row(row)
    breaker.reset()
    return ProgressResponse(
        **live.model_dump(),
        cancel_requested=row["cancel_requested_at"] is not None,
        source="workflow",
    )


class QueryBreaker:
    """Skips workflow queries for a while after one timed out (no worker to answer)."""

    def __init__(self) -> None:
        self._open_until = 0.0

    @property
    def open(self) -> bool:
        return time.monotonic() < self._open_until

    def trip(self, seconds: float) -> None:
        self._open_until = time.monotonic() + seconds

    def reset(self) -> None:
        self._open_until = 0.0


@router.post(
    "/api/analysis/{run_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CancelResponse,
    summary="Cancel a run before its commit point; what it was charged is refunded",
    responses=responses(
        404,
        409,
        e404=_RUN_NOT_FOUND,
        e409=error_example(
            409,
            "run_finished",
            "The run is already complete; it can no longer be cancelled.",
            run_id=examples.RUN_ID,
            status="complete",
        ),
    ),
)
async def cancel_run(run_id: RunId, scope: Tenant, temporal: Temporal) -> CancelResponse:
    async with scope.transaction() as conn:
        row = await analyses.request_cancel(conn, run_id)
    if row is None:
        raise NotFound("No such analysis run.", code="run_not_found")
    run_status = RunStatus(row["status"])
    if run_status in (RunStatus.complete, RunStatus.failed):
        raise Conflict(
            f"The run is already {run_status}; it can no longer be cancelled.",
            code="run_finished",
            run_id=run_id,
            status=run_status.value,
        )
    if run_status is RunStatus.cancelled:
        return CancelResponse(run_id=run_id, status=run_status)
    try:
        await temporal.get_workflow_handle(workflow_id(run_id)).cancel()
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            # No workflow (its start failed and was not recorded): nothing to refund.
            async with scope.transaction() as conn:
                if await analyses.cancel_unstarted(conn, run_id):
                    run_status = RunStatus.cancelled
        else:
            log.warning("cancel of run %s not delivered to Temporal: %s", run_id, exc)
    except Exception as exc:
        # The flag on the row stands: the run's charge or commit step sees it and cancels.
        log.warning("cancel of run %s not delivered to Temporal: %r", run_id, exc)
    return CancelResponse(run_id=run_id, status=run_status)


@router.get(
    "/api/analysis/{run_id}/result",
    response_model=ResultResponse,
    summary="The lead and its analysis, once the run is complete",
    responses=responses(
        404,
        409,
        e404=_RUN_NOT_FOUND,
        e409=error_example(
            409,
            "analysis_not_complete",
            "The run is processing, not complete.",
            run_id=examples.RUN_ID,
            status="processing",
        ),
    ),
)
async def get_result(run_id: RunId, scope: Tenant) -> ResultResponse:
    async with scope.transaction() as conn:
        row = await analyses.get(conn, run_id)
        if row is None:
            raise NotFound("No such analysis run.", code="run_not_found")
        if row["status"] != RunStatus.complete:
            raise Conflict(
                f"The run is {row['status']}, not complete.",
                code="analysis_not_complete",
                run_id=run_id,
                status=row["status"],
            )
        lead = await leads.get(conn, row["lead_id"])
    return ResultResponse(
        run_id=row["id"],
        status=row["status"],
        username=row["username"],
        analysis_type=row["analysis_type"],
        business_profile_id=row["business_profile_id"],
        lead=LeadOut.model_validate(dict(lead)) if lead else None,
        analysis=row["result"],
        credits_charged=row["credits_charged"],
        cost=row["cost"],
        steps=analyses.steps_from_json(row["steps"]),
        created_at=row["created_at"],
        finished_at=row["finished_at"],
    )
