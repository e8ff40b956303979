"""Start, follow, cancel and read analysis runs (steps 1-4 happen here; 5-12 in the workflow)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Header, Path, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator

from api import events, examples, runs
from api.deps import SettingsDep, Temporal, TemporalState, Tenant
from api.errors import Conflict, NotFound, error_example, responses
from api.pagination import Paging
from api.schemas import (
    HANDLE_SCHEMA,
    AnalyzeRequest,
    CancelResponse,
    LeadWithFigures,
    Page,
    ProfileChangeOut,
    ProgressResponse,
    ResultResponse,
    RunAccepted,
    RunSummary,
    instagram_handle,
)
from core.progress import Progress, RunStatus
from core.settings import Settings
from core.tiers import Tier
from db import analyses, leads

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
        "free": row["allowance_month"] is not None,
        **{
            name: row[name]
            for name in RunAccepted.model_fields
            if name not in ("run_id", "links", "free")
        },
    }


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
    health: TemporalState,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1, max_length=255, description="Repeat a request safely: same key, same run"
        ),
    ] = None,
) -> RunAccepted:
    return _accepted(await runs.start(scope, settings, temporal, health, body, idempotency_key))


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
        error=analyses.error_of(row),
        cancel_requested=row["cancel_requested_at"] is not None,
        finished_at=row["finished_at"],
    )


async def _run(scope: Tenant, run_id: UUID) -> asyncpg.Record:
    async with scope.transaction() as conn:
        row = await analyses.get(conn, run_id)
    if row is None:
        raise NotFound("No such analysis run.", code="run_not_found")
    return row


def _progress_response(document: Progress, row: asyncpg.Record, source: str) -> ProgressResponse:
    return ProgressResponse(
        **document.model_dump(exclude={"version"}),
        cancel_requested=row["cancel_requested_at"] is not None,
        source=source,
    )


@router.get(
    "/api/analysis/{run_id}/progress",
    response_model=ProgressResponse,
    summary="Follow a run: status, percentage and steps",
    responses=responses(404, e404=_RUN_NOT_FOUND),
)
async def get_progress(
    run_id: RunId,
    scope: Tenant,
    temporal: Temporal,
    settings: SettingsDep,
    health: TemporalState,
) -> ProgressResponse:
    row = await _run(scope, run_id)
    if not RunStatus(row["status"]).terminal:
        live = await runs.live_progress(temporal, settings, health, run_id)
        if live is not None:
            return _progress_response(live, row, "workflow")
    return _progress_response(analyses.progress_of(row), row, "database")


SSE_EXAMPLE = (
    "retry: 2000\n\n"
    'id: 3\nevent: progress\ndata: {"run_id": "...", "status": "processing", '
    '"progress": 30, ...}\n\n'
    ": keep-alive\n\n"
    'id: 9\nevent: progress\ndata: {"run_id": "...", "status": "complete", '
    '"progress": 100, ...}\n\n'
    'event: end\ndata: {"id": 9}\n\n'
)


def event_stream_response(description: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": description,
            "content": {
                "text/event-stream": {
                    # Each event, as an EventSource client sees it.
                    "schema": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string", "description": "Resume after it"},
                            "event": {"type": "string", "enum": ["progress", "end"]},
                            "data": {"type": "string", "description": "A JSON document"},
                            "retry": {"type": "integer"},
                        },
                    },
                    "example": SSE_EXAMPLE,
                }
            },
        }
    }


LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        description="Resume after this event id (browsers send it when they reconnect); "
        "an id this stream never sent is ignored",
    ),
]


def event_id(header: str | None) -> int | None:
    try:
        return int(header) if header is not None else None
    except ValueError:
        return None


@router.get(
    "/api/analysis/{run_id}/events",
    response_class=StreamingResponse,
    summary="Follow a run as Server-Sent Events, until it ends",
    responses=event_stream_response(
        "`progress` events (the progress document, as GET .../progress answers it) at every "
        "change, with the progress version as id; `: keep-alive` comments meanwhile; an "
        "`end` event once the run is complete, failed or cancelled, and the stream closes"
    )
    | responses(404, e404=_RUN_NOT_FOUND),
)
async def run_events(
    run_id: RunId,
    scope: Tenant,
    request: Request,
    settings: SettingsDep,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    """Works with `curl -N`. Each change reaches the stream through one database listener per
    API process (PostgreSQL LISTEN/NOTIFY), not a poll per client."""
    await _run(scope, run_id)  # another tenant's run answers 404 before the stream starts

    async def read() -> events.Snapshot:
        row = await _run(scope, run_id)
        document = analyses.progress_of(row)
        body = _progress_response(document, row, "database")
        return events.Snapshot(
            event_id=document.version,
            data=body.model_dump_json(),
            terminal=RunStatus(row["status"]).terminal,
        )

    return events_response(request, settings, f"run:{run_id}", read, last_event_id)


def events_response(
    request: Request,
    settings: Settings,
    key: str,
    read: Callable[[], Awaitable[events.Snapshot]],
    last_event_id: str | None,
) -> StreamingResponse:
    return StreamingResponse(
        events.stream(
            request.app.state.progress_hub,
            key,
            read,
            last_event_id=event_id(last_event_id),
            keepalive_seconds=settings.sse_keepalive_seconds,
            disconnected=request.is_disconnected,
        ),
        media_type="text/event-stream",
        # Proxies must pass events on as they come, not buffer them.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


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
async def cancel_run(
    run_id: RunId, scope: Tenant, temporal: Temporal, settings: SettingsDep
) -> CancelResponse:
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
    if await runs.cancel(temporal, settings, scope, run_id):
        run_status = RunStatus.cancelled
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
        changed = await leads.changes_seen_by(conn, run_id)
    return ResultResponse(
        run_id=row["id"],
        status=row["status"],
        username=row["username"],
        analysis_type=row["analysis_type"],
        business_profile_id=row["business_profile_id"],
        lead=LeadWithFigures.model_validate(dict(lead)) if lead else None,
        analysis=row["result"],
        credits_charged=row["credits_charged"],
        cost=row["cost"],
        changes=[ProfileChangeOut.model_validate(dict(c)) for c in changed],
        steps=analyses.steps_from_json(row["steps"]),
        created_at=row["created_at"],
        finished_at=row["finished_at"],
    )
