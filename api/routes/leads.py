"""Leads: list, read, history, soft delete and restore, and a streamed export."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Path, Query, status
from fastapi.responses import Response, StreamingResponse

from api import examples
from api.deps import Tenant, TenantScope
from api.errors import Conflict, Invalid, NotFound, error_example, responses
from api.pagination import Paging
from api.schemas import (
    NO_NUL,
    ExportFormat,
    LatestAnalysis,
    LeadAnalysis,
    LeadDetail,
    LeadRecord,
    LeadSort,
    Page,
    SortOrder,
    assume_utc,
)
from core.tiers import Tier
from db import analyses, leads
from db.leads import LeadFilter

# Lead paths take `{lead_id:uuid}`: a segment that is no UUID is another resource, so
# `GET /api/leads/analyze` answers 405 (Allow: POST), not a 422 about a lead id.
router = APIRouter(prefix="/api/leads", tags=["leads"])

LeadId = Annotated[UUID, Path(description="The lead's id", examples=[examples.LEAD_ID])]
_LEAD_NOT_FOUND = error_example(404, "lead_not_found", "No such lead.")
EXPORT_CHUNK = 1_000  # leads read per short transaction while an export streams


def lead_filter(
    business_profile_id: Annotated[UUID | None, Query()] = None,
    min_score: Annotated[
        int | None, Query(ge=0, le=100, description="Latest fit score at least this")
    ] = None,
    max_score: Annotated[
        int | None, Query(ge=0, le=100, description="Latest fit score at most this")
    ] = None,
    analysis_type: Annotated[
        Tier | None, Query(description="The tier of the lead's latest analysis")
    ] = None,
    q: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=100,
            description="Part of the username or full name, in any case",
            examples=["geo"],
            json_schema_extra=NO_NUL,
        ),
    ] = None,
    analyzed_after: Annotated[
        datetime | None, Query(description="Last analysed after this moment (UTC if no zone)")
    ] = None,
    analyzed_before: Annotated[
        datetime | None, Query(description="Last analysed before this moment (UTC if no zone)")
    ] = None,
) -> LeadFilter:
    """Bounds are checked one by one; a range that is empty (min_score above max_score)
    matches nothing."""
    if q is not None and "\x00" in q:
        raise Invalid("q must not contain NUL characters.", field="q")
    return LeadFilter(
        business_profile_id=business_profile_id,
        min_score=min_score,
        max_score=max_score,
        analysis_type=analysis_type.value if analysis_type else None,
        q=q,
        analyzed_after=assume_utc(analyzed_after),
        analyzed_before=assume_utc(analyzed_before),
    )


Filters = Annotated[LeadFilter, Depends(lead_filter)]
Sort = Annotated[LeadSort, Query(description="What to sort by")]
Order = Annotated[SortOrder, Query(description="`desc`: newest, highest, most first")]


def _record(row: asyncpg.Record) -> LeadRecord:
    return LeadRecord.model_validate({k: row[k] for k in LeadRecord.model_fields})


@router.get(
    "",
    response_model=Page[LeadRecord],
    summary="The account's leads, filtered, sorted and paged",
    responses=responses(
        422,
        e422=error_example(422, None, "min_score must not be above max_score.", field="min_score"),
    ),
)
async def list_leads(
    scope: Tenant,
    paging: Paging,
    where: Filters,
    sort: Sort = LeadSort.last_analyzed_at,
    order: Order = SortOrder.desc,
) -> Page[LeadRecord]:
    async with scope.transaction() as conn:
        total, rows = await leads.page(
            conn,
            where,
            sort=sort.value,
            descending=order is SortOrder.desc,
            limit=paging.page_size,
            offset=paging.offset,
        )
    return paging.of(total, [_record(r) for r in rows])


# --- export ---------------------------------------------------------------------------------

EXPORT_FIELDS = list(LeadRecord.model_fields)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    """Text from Instagram profiles is anyone's: a cell a spreadsheet would run as a
    formula is quoted with a leading apostrophe (OWASP's advice on CSV injection)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


class _Encoder:
    def __init__(self, fmt: ExportFormat) -> None:
        self.fmt = fmt
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")

    def header(self) -> str:
        if self.fmt is ExportFormat.jsonl:
            return ""
        self._writer.writerow(EXPORT_FIELDS)
        return self._take()

    def rows(self, records: list[LeadRecord]) -> str:
        if self.fmt is ExportFormat.jsonl:
            return "".join(r.model_dump_json() + "\n" for r in records)
        for record in records:
            values = record.model_dump(mode="json")
            self._writer.writerow([_csv_cell(values[name]) for name in EXPORT_FIELDS])
        return self._take()

    def _take(self) -> str:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text


async def _export_chunks(
    scope: TenantScope, where: LeadFilter, sort: str, descending: bool, first: list[asyncpg.Record]
) -> AsyncIterator[list[asyncpg.Record]]:
    rows = first
    while rows:
        yield rows
        if len(rows) < EXPORT_CHUNK:
            return
        last = rows[-1]
        async with scope.transaction() as conn:
            rows = await leads.chunk(
                conn,
                where,
                sort=sort,
                descending=descending,
                after=(last["sort_key"], last["id"]),
                limit=EXPORT_CHUNK,
            )


_EXPORT_MEDIA = {
    ExportFormat.csv: "text/csv; charset=utf-8",
    ExportFormat.jsonl: "application/x-ndjson",
}
_CSV_EXAMPLE = (
    ",".join(EXPORT_FIELDS)
    + "\r\n"
    + ",".join(
        "" if examples.LEAD_RECORD[name] is None else str(examples.LEAD_RECORD[name])
        for name in EXPORT_FIELDS
    )
)


@router.get(
    "/export",
    response_class=StreamingResponse,
    summary="Every lead the filters match, streamed as CSV or JSON lines",
    responses={
        200: {
            "description": "The leads in the chosen order: CSV with a header row, or one JSON "
            "object per line (the fields of a lead in the list)",
            "content": {
                "text/csv": {"schema": {"type": "string"}, "example": _CSV_EXAMPLE},
                "application/x-ndjson": {
                    "schema": {"type": "string"},
                    "example": json.dumps(examples.LEAD_RECORD) + "\n",
                },
            },
        },
        **responses(422),
    },
)
async def export_leads(
    scope: Tenant,
    where: Filters,
    export_format: Annotated[
        ExportFormat, Query(alias="format", description="`csv` (default) or `jsonl`")
    ] = ExportFormat.csv,
    sort: Sort = LeadSort.last_analyzed_at,
    order: Order = SortOrder.desc,
) -> Response:
    """Read a thousand leads at a time, each in a short transaction of its own, and written
    out as they come: however many leads match, neither the API nor the database holds
    more than a thousand of them at once. The first read happens before the answer
    starts, so a database outage answers 503 rather than an empty file."""
    descending = order is SortOrder.desc
    async with scope.transaction() as conn:
        first = await leads.chunk(
            conn, where, sort=sort.value, descending=descending, after=None, limit=EXPORT_CHUNK
        )

    async def body() -> AsyncIterator[str]:
        encoder = _Encoder(export_format)
        yield encoder.header()
        async for rows in _export_chunks(scope, where, sort.value, descending, first):
            yield encoder.rows([_record(r) for r in rows])

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        body(),
        media_type=_EXPORT_MEDIA[export_format],
        headers={
            "Content-Disposition": f'attachment; filename="leads-{stamp}.{export_format.value}"'
        },
    )


# --- one lead ---------------------------------------------------------------------------------


@router.get(
    "/{lead_id:uuid}",
    response_model=LeadDetail,
    summary="One lead with its latest analysis",
    responses=responses(404, e404=_LEAD_NOT_FOUND),
)
async def get_lead(lead_id: LeadId, scope: Tenant) -> LeadDetail:
    async with scope.transaction() as conn:
        row = await leads.get_live(conn, lead_id)
        if row is None:
            raise NotFound("No such lead.", code="lead_not_found")
        return await _detail(conn, row)


async def _detail(conn: Any, row: asyncpg.Record) -> LeadDetail:
    latest = None
    if row["last_analysis_id"] is not None:
        run = await analyses.get(conn, row["last_analysis_id"])
        if run is not None:
            result = run["result"] or {}
            latest = LatestAnalysis(
                run_id=run["id"],
                analysis_type=run["analysis_type"],
                score=result.get("score"),
                analysis=result,
                credits_charged=run["credits_charged"],
                finished_at=run["finished_at"],
            )
    return LeadDetail(
        **_record(row).model_dump(), engagement=row["engagement"], latest_analysis=latest
    )


@router.get(
    "/{lead_id:uuid}/analyses",
    response_model=Page[LeadAnalysis],
    summary="The runs that analysed a lead, newest first",
    responses=responses(404, e404=_LEAD_NOT_FOUND),
)
async def list_lead_analyses(lead_id: LeadId, scope: Tenant, paging: Paging) -> Page[LeadAnalysis]:
    async with scope.transaction() as conn:
        if await leads.get(conn, lead_id) is None:
            raise NotFound("No such lead.", code="lead_not_found")
        total, rows = await leads.analyses_page(
            conn, lead_id, limit=paging.page_size, offset=paging.offset
        )
    return paging.of(
        total,
        [LeadAnalysis.model_validate({"run_id": r["id"], **dict(r)}) for r in rows],
    )


@router.delete(
    "/{lead_id:uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a lead (restorable for 30 days)",
    responses=responses(
        403,
        404,
        e403=error_example(403, "forbidden", "Only an owner or admin of the account can do this."),
        e404=_LEAD_NOT_FOUND,
    ),
)
async def delete_lead(lead_id: LeadId, scope: Tenant) -> Response:
    """The lead leaves every list and lookup at once; its analyses and the credits they
    cost stay. POST /api/leads/{lead_id}/restore brings it back within 30 days. Owners and
    admins only."""
    scope.require_manager()
    async with scope.transaction() as conn:
        if not await leads.soft_delete(conn, lead_id):
            raise NotFound("No such lead.", code="lead_not_found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{lead_id:uuid}/restore",
    response_model=LeadDetail,
    summary="Bring back a lead deleted less than 30 days ago",
    responses=responses(
        403,
        404,
        409,
        e403=error_example(403, "forbidden", "Only an owner or admin of the account can do this."),
        e404=error_example(
            404, "lead_not_found", "No such lead, or it was deleted more than 30 days ago."
        ),
        e409=error_example(
            409,
            "lead_exists",
            "@natgeo has a live lead for this business profile again: delete it first.",
            lead_id=examples.LEAD_ID,
        ),
    ),
)
async def restore_lead(lead_id: LeadId, scope: Tenant) -> LeadDetail:
    """A lead that is not deleted answers as it is. Owners and admins only."""
    scope.require_manager()
    async with scope.transaction() as conn:
        try:
            row = await leads.restore(conn, lead_id)
        except leads.RestoreConflict as conflict:
            raise Conflict(
                f"@{conflict.username} has a live lead for this business profile again: "
                "delete it first.",
                code="lead_exists",
                lead_id=conflict.live_id,
            ) from None
        if row is None:
            raise NotFound(
                "No such lead, or it was deleted more than 30 days ago.", code="lead_not_found"
            )
        return await _detail(conn, row)
