"""Batches: start many analyses at once, follow them, list their items, cancel them
(DESIGN.md section 6). Progress and items are answered from the database alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Header, Path, Query, Request, status
from fastapi.responses import StreamingResponse

from api import batches as batch_api
from api import events, examples
from api.deps import SettingsDep, Temporal, TemporalState, Tenant
from api.errors import Conflict, NotFound, error_example, responses
from api.pagination import Paging
from api.routes.analysis import LastEventId, event_stream_response, events_response
from api.schemas import (
    BatchAccepted,
    BatchCancelResponse,
    BatchItemOut,
    BatchProgress,
    BatchStatusName,
    BatchSummary,
    BulkAnalyzeRequest,
    ItemCounts,
    Page,
    RejectedUsername,
)
from core.progress import RunStatus
from db import analyses, batches

router = APIRouter(prefix="/api/leads/analyze/bulk", tags=["batches"])

BatchId = Annotated[
    UUID,
    Path(
        description="The batch's id, from POST /api/leads/analyze/bulk",
        examples=[examples.BATCH_ID],
    ),
]
_BATCH_NOT_FOUND = error_example(404, "batch_not_found", "No such batch.")
_BATCH_LINKS = {
    name: {"operationId": operation, "parameters": {"batch_id": "$response.body#/batch_id"}}
    for name, operation in (
        ("progress", "get_batch_progress"),
        ("items", "list_batch_items"),
        ("cancel", "cancel_batch"),
    )
}


def _links(batch_id: UUID) -> dict[str, str]:
    base = f"/api/leads/analyze/bulk/{batch_id}"
    return {"progress": f"{base}/progress", "items": f"{base}/items", "cancel": f"{base}/cancel"}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchAccepted,
    summary="Start a batch: up to 10,000 analyses of one tier for one business profile",
    responses={
        202: {"links": _BATCH_LINKS},
        **responses(
            402,
            404,
            422,
            503,
            e402=error_example(
                402,
                "insufficient_credits",
                "The balance of 40 credits, less 0 promised to runs not yet started, pays for "
                "40 of the 120 light analyses (1 credits each).",
                balance=40,
                promised=0,
                needed=120,
                accepted=120,
                affordable=40,
            ),
            e404=error_example(
                404,
                "business_profile_not_found",
                "No such business profile.",
                field="business_profile_id",
            ),
            e422=error_example(
                422,
                "idempotency_key_reused",
                "This Idempotency-Key was used with a different request.",
                field="Idempotency-Key",
            ),
            e503=error_example(
                503,
                "service_unavailable",
                "The batch could not be started; nothing was charged. Retry later.",
            ),
        ),
    },
)
async def start_batch(
    body: BulkAnalyzeRequest,
    scope: Tenant,
    settings: SettingsDep,
    temporal: Temporal,
    health: TemporalState,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            description="Repeat a request safely: same key and body, same batch",
        ),
    ] = None,
) -> BatchAccepted:
    """Usernames are normalised as for one analysis (`@NatGeo` = `natgeo`) and repeats
    collapse into one item. Invalid ones, and ones already being analysed for this business
    profile, come back in `rejected` and cost nothing (when all are, the batch has no items
    and is complete at once). The batch is paid up front for all its items; an item that
    does not complete is refunded. 402 says how many items the credits would pay for."""
    row, duplicates = await batch_api.start(
        scope, settings, temporal, health, body, idempotency_key
    )
    return BatchAccepted(
        batch_id=row["id"],
        status=row["status"],
        analysis_type=row["analysis_type"],
        business_profile_id=row["business_profile_id"],
        total=row["total"],
        duplicates=duplicates,
        rejected=[RejectedUsername.model_validate(r) for r in row["rejected"]],
        credits_cost=row["credits_cost"],
        # Charged up front once it starts, but for the items a free allowance covers; a
        # batch that ended before starting cost nothing.
        credits_charged=0
        if row["started_at"] is None and row["status"] in ("failed", "cancelled")
        else (row["total"] - row["free_items"]) * row["credits_cost"],
        free_items=row["free_items"],
        created_at=row["created_at"],
        links=_links(row["id"]),
    )


@router.get(
    "",
    response_model=Page[BatchSummary],
    summary="The account's batches, newest first",
    responses=responses(
        422,
        e422=error_example(
            422,
            None,
            "status: Input should be 'pending', 'running', 'complete', 'cancelled' or 'failed'",
            field="status",
        ),
    ),
)
async def list_batches(
    scope: Tenant,
    paging: Paging,
    batch_status: Annotated[BatchStatusName | None, Query(alias="status")] = None,
) -> Page[BatchSummary]:
    async with scope.transaction() as conn:
        total, rows = await batches.page(
            conn,
            limit=paging.page_size,
            offset=paging.offset,
            status=batch_status.value if batch_status else None,
        )
    return paging.of(total, [_summary(row) for row in rows])


def _summary(row: asyncpg.Record) -> BatchSummary:
    return BatchSummary(
        batch_id=row["id"],
        status=row["status"],
        analysis_type=row["analysis_type"],
        business_profile_id=row["business_profile_id"],
        total=row["total"],
        credits_cost=row["credits_cost"],
        cancel_requested=row["cancel_requested_at"] is not None,
        error=analyses.error_of(row),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        links=_links(row["id"]),
    )


@router.get(
    "/{batch_id}/progress",
    response_model=BatchProgress,
    summary="Follow a batch: its items counted by status, credits, and an ETA",
    responses=responses(404, e404=_BATCH_NOT_FOUND),
)
async def get_batch_progress(batch_id: BatchId, scope: Tenant) -> BatchProgress:
    """Answered from the database alone, so it works with no worker running."""
    async with scope.transaction() as conn:
        tally = await batches.tally(conn, batch_id)
    if tally is None:
        raise NotFound("No such batch.", code="batch_not_found")
    row, counts = tally.batch, tally.counts
    ended = counts["complete"] + counts["failed"] + counts["cancelled"]
    total = row["total"]
    rate: float | None = None
    eta: datetime | None = None
    if row["started_at"] is not None and ended:
        until = row["finished_at"] or datetime.now(UTC)
        elapsed = (until - row["started_at"]).total_seconds()
        if elapsed > 0:
            rate = round(ended / elapsed, 3)
            if row["finished_at"] is None:
                eta = until + timedelta(seconds=(total - ended) / rate)
    return BatchProgress(
        batch_id=row["id"],
        status=row["status"],
        total=total,
        counts=ItemCounts(**counts),
        progress=ended * 100 // total if total else 100,
        credits_charged=tally.charged,
        credits_refunded=tally.refunded,
        cancel_requested=row["cancel_requested_at"] is not None,
        error=analyses.error_of(row),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        items_per_second=rate,
        eta=eta,
    )


# A batch's event id grows with how far it got: items ended, then its status.
_STATUS_RANK = {"pending": 0, "running": 1, "complete": 2, "cancelled": 3, "failed": 4}
_TERMINAL = frozenset({"complete", "cancelled", "failed"})


@router.get(
    "/{batch_id}/events",
    response_class=StreamingResponse,
    summary="Follow a batch as Server-Sent Events, until it ends",
    responses=event_stream_response(
        "`progress` events (the batch's progress, as GET .../progress answers it) whenever "
        "items end or the batch's status changes; `: keep-alive` comments meanwhile; an "
        "`end` event once the batch is complete, cancelled or failed"
    )
    | responses(404, e404=_BATCH_NOT_FOUND),
)
async def batch_events(
    batch_id: BatchId,
    scope: Tenant,
    request: Request,
    settings: SettingsDep,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    """Works with `curl -N`; one database listener per API process wakes every stream."""
    await get_batch_progress(batch_id, scope)  # another tenant's batch: 404, before streaming

    async def read() -> events.Snapshot:
        progress = await get_batch_progress(batch_id, scope)
        counts = progress.counts
        ended = counts.complete + counts.failed + counts.cancelled
        return events.Snapshot(
            event_id=ended * len(_STATUS_RANK) + _STATUS_RANK[progress.status],
            data=progress.model_dump_json(),
            terminal=progress.status in _TERMINAL,
        )

    return events_response(request, settings, f"batch:{batch_id}", read, last_event_id)


@router.get(
    "/{batch_id}/items",
    response_model=Page[BatchItemOut],
    summary="A batch's items in their order, filtered by status and paged",
    responses=responses(
        404,
        422,
        e404=_BATCH_NOT_FOUND,
        e422=error_example(
            422,
            None,
            "status: Input should be 'pending', 'processing', 'complete', 'failed' or 'cancelled'",
            field="status",
        ),
    ),
)
async def list_batch_items(
    batch_id: BatchId,
    scope: Tenant,
    paging: Paging,
    item_status: Annotated[RunStatus | None, Query(alias="status")] = None,
) -> Page[BatchItemOut]:
    async with scope.transaction() as conn:
        if await batches.get(conn, batch_id) is None:
            raise NotFound("No such batch.", code="batch_not_found")
        total, rows = await batches.items_page(
            conn,
            batch_id,
            limit=paging.page_size,
            offset=paging.offset,
            status=item_status.value if item_status else None,
        )
    return paging.of(
        total,
        [
            BatchItemOut(
                position=row["batch_position"],
                username=row["username"],
                run_id=row["id"],
                status=row["status"],
                error=analyses.error_of(row),
                score=row["score"],
                summary=row["summary"],
            )
            for row in rows
        ],
    )


@router.post(
    "/{batch_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchCancelResponse,
    summary="Cancel a batch: every unfinished item ends cancelled and is refunded",
    responses=responses(
        404,
        409,
        e404=_BATCH_NOT_FOUND,
        e409=error_example(
            409,
            "batch_finished",
            "The batch is already complete; it can no longer be cancelled.",
            status="complete",
        ),
    ),
)
async def cancel_batch(
    batch_id: BatchId, scope: Tenant, temporal: Temporal, settings: SettingsDep
) -> BatchCancelResponse:
    """Items in flight are cancelled through Temporal and refund themselves (one past its
    commit point completes and keeps its charge); items not started never start and are
    refunded. Complete items stay complete. The batch ends `cancelled` once no item is in
    flight; follow it with its progress."""
    async with scope.transaction() as conn:
        row = await batches.request_cancel(conn, batch_id)
        if row is None:
            row = await batches.get(conn, batch_id)
            if row is None:
                raise NotFound("No such batch.", code="batch_not_found")
            raise Conflict(
                f"The batch is already {row['status']}; it can no longer be cancelled.",
                code="batch_finished",
                status=row["status"],
            )
    batch_status = BatchStatusName(row["status"])
    if await batch_api.cancel(temporal, settings, scope, batch_id):
        batch_status = BatchStatusName.cancelled
    return BatchCancelResponse(batch_id=batch_id, status=batch_status)
