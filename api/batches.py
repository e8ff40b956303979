"""A batch's life as the API drives it: accepting it (normalise, reject, hold the credits,
insert the items), starting its workflow, cancelling it.

Like a single run, a batch is accepted in one transaction under the account's promise lock:
what it will charge is checked against the balance less every other promise, so the charge
its workflow takes a moment later cannot fail. Temporal calls are bounded as a whole; a
start that fails ends the batch, uncharged, with 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from api import ratelimit, runs
from api.deps import TemporalHealth, TenantScope
from api.errors import ApiError, Invalid, NotFound, Unavailable
from api.schemas import BulkAnalyzeRequest, instagram_handle
from core import metrics
from core.models import BulkInput
from core.progress import Tracker
from core.settings import Settings
from core.tiers import Tier
from db import batches, business_profiles, credits
from db.pool import Connection
from workflows.bulk import BulkAnalysisWorkflow, bulk_start_options, bulk_workflow_id

log = logging.getLogger(__name__)


class BatchUnaffordable(ApiError):
    status, code = 402, "insufficient_credits"


@dataclass(frozen=True)
class Sorted:
    accepted: list[str]
    invalid: list[str]
    duplicates: int


def sort_usernames(raw: list[str]) -> Sorted:
    """Normalised handles in the order given, repeats collapsed; invalid ones as sent."""
    seen: set[str] = set()
    accepted: list[str] = []
    invalid: list[str] = []
    duplicates = 0
    for value in raw:
        try:
            handle = instagram_handle(value)
        except ValueError:
            invalid.append(value)
            continue
        if handle in seen:
            duplicates += 1
            continue
        seen.add(handle)
        accepted.append(handle)
    return Sorted(accepted=accepted, invalid=invalid, duplicates=duplicates)


async def start(
    scope: TenantScope,
    settings: Settings,
    temporal: Client,
    health: TemporalHealth,
    request: BulkAnalyzeRequest,
    idempotency_key: str | None = None,
) -> tuple[asyncpg.Record, int]:
    """Accepts a batch and starts its workflow; returns its row and how many repeats were
    collapsed. A repeated Idempotency-Key with the same body returns the first batch (and
    starts its workflow if it is still pending: the first request may have died before)."""
    request_hash = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
    names = sort_usernames(request.usernames)
    row = await _accept(scope, settings, health, request, names, request_hash, idempotency_key)
    if row["status"] == "pending":
        await _start_workflow(scope, settings, temporal, health, row)
    return row, names.duplicates


async def _accept(
    scope: TenantScope,
    settings: Settings,
    health: TemporalHealth,
    request: BulkAnalyzeRequest,
    names: Sorted,
    request_hash: str,
    idempotency_key: str | None,
) -> asyncpg.Record:
    cost = settings.credits_for(request.analysis_type)
    batch_id = uuid4()
    async with runs.account_turn(scope.account_id), scope.transaction() as conn:
        if idempotency_key and (
            earlier := await _replay(conn, scope.account_id, idempotency_key, request_hash)
        ):
            return earlier
        if health.server.open:
            raise _not_started()
        if await business_profiles.get_live(conn, request.business_profile_id) is None:
            raise NotFound(
                "No such business profile.",
                code="business_profile_not_found",
                field="business_profile_id",
            )
        try:
            async with conn.transaction():
                # From here to the commit the account's starts take turns (runs.start too),
                # so what is in flight and what is promised cannot change underneath.
                await credits.lock_promises(conn, scope.account_id)
                busy = await batches.in_flight(
                    conn, scope.account_id, request.business_profile_id, names.accepted
                )
                rejected: list[dict[str, Any]] = [
                    {"username": name, "code": "invalid_username", "run_id": None}
                    for name in names.invalid
                ] + [
                    {"username": name, "code": "analysis_in_progress", "run_id": str(busy[name])}
                    for name in names.accepted
                    if name in busy
                ]
                accepted = [name for name in names.accepted if name not in busy]
                if accepted:  # a batch counts its items against the hourly limit
                    await ratelimit.check(
                        conn,
                        settings,
                        scope.account_id,
                        "analyses",
                        len(accepted),
                        scope.rate_limits,
                    )
                month, free = await runs.free_units(
                    conn, scope.account_id, settings, request.analysis_type, len(accepted)
                )
                paid = len(accepted) - free
                funds = await credits.available(conn, scope.account_id)
                if funds.credits < cost * paid:
                    affordable = free + max(funds.credits, 0) // cost
                    funding = (
                        f"The balance of {funds.balance} credits, less {funds.promised} "
                        "promised to runs not yet started,"
                    )
                    if free:
                        funding += f" and {free} free analyses left this month"
                    verb = "pay" if free else "pays"
                    raise BatchUnaffordable(
                        f"{funding} {verb} for {affordable} of the {len(accepted)} "
                        f"{request.analysis_type} analyses ({cost} credits each).",
                        balance=funds.balance,
                        promised=funds.promised,
                        free=free,
                        needed=cost * paid,
                        accepted=len(accepted),
                        affordable=affordable,
                    )
                row = await batches.insert(
                    conn,
                    batch_id=batch_id,
                    account_id=scope.account_id,
                    business_profile_id=request.business_profile_id,
                    requested_by=scope.user_id,
                    analysis_type=request.analysis_type.value,
                    credits_cost=cost,
                    items=[(uuid4(), name) for name in accepted],
                    rejected=rejected,
                    accepted=Tracker.accepted(batch_id, datetime.now(UTC)).document,
                    idempotency_key=idempotency_key,
                    request_hash=request_hash,
                    free_items=free,
                    allowance_month=month,
                )
        except asyncpg.UniqueViolationError:
            # The same key, sent twice at once: the other request's batch.
            if idempotency_key and (
                earlier := await _replay(conn, scope.account_id, idempotency_key, request_hash)
            ):
                return earlier
            raise
    return row  # complete at once when every username was rejected


async def _start_workflow(
    scope: TenantScope,
    settings: Settings,
    temporal: Client,
    health: TemporalHealth,
    row: asyncpg.Record,
) -> None:
    """Starts the pending batch's workflow (once: a second start finds it started); when it
    cannot be, the batch fails uncharged and the request answers 503."""
    batch_id = row["id"]
    batch = BulkInput(
        batch_id=batch_id,
        account_id=row["account_id"],
        business_profile_id=row["business_profile_id"],
        tier=Tier(row["analysis_type"]),
        credits_cost=row["credits_cost"],
        total=row["total"],
        scrape_task_queue=settings.scrape_task_queue,
        provider_budget=runs.provider_budget(settings),
        window=settings.batch_window,
        page_size=settings.batch_page_size,
    )
    await runs.start_workflow(
        temporal,
        settings,
        health,
        BulkAnalysisWorkflow.run,
        batch,
        bulk_start_options(batch, settings.task_queue),
        give_up=lambda: _mark_not_started(scope, batch_id),
        unavailable=_not_started,
    )
    metrics.ANALYSES_STARTED.labels(tier=batch.tier).inc(batch.total)


async def _mark_not_started(scope: TenantScope, batch_id: UUID) -> bool:
    async with scope.transaction() as conn:
        return await batches.mark_not_started(conn, batch_id)


def _not_started() -> Unavailable:
    return Unavailable("The batch could not be started; nothing was charged. Retry later.")


async def _replay(
    conn: Connection, account_id: UUID, key: str, request_hash: str
) -> asyncpg.Record | None:
    row = await batches.find_by_idempotency_key(conn, account_id, key)
    if row is not None and row["request_hash"] != request_hash:
        raise Invalid(
            "This Idempotency-Key was used with a different request.",
            code="idempotency_key_reused",
            field="Idempotency-Key",
        )
    return row


async def cancel(temporal: Client, settings: Settings, scope: TenantScope, batch_id: UUID) -> bool:
    """Asks Temporal to cancel the batch's workflow; True when the batch turned out never to
    have started and was cancelled here. The batch's cancel flag, set before, stands
    whatever happens: its workflow checks it before starting each group of items."""
    try:
        await asyncio.wait_for(
            temporal.get_workflow_handle(bulk_workflow_id(batch_id)).cancel(
                rpc_timeout=timedelta(seconds=settings.temporal_call_timeout_seconds)
            ),
            settings.temporal_call_timeout_seconds,
        )
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            async with scope.transaction() as conn:
                return await batches.cancel_unstarted(conn, batch_id)
        log.warning("cancel of batch %s not delivered to Temporal: %s", batch_id, exc)
    except Exception as exc:
        log.warning("cancel of batch %s not delivered to Temporal: %r", batch_id, exc)
    return False
