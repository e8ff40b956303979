"""The account's credits: balance, ledger, monthly usage; and the public price list."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from api.deps import SettingsDep, Tenant
from api.errors import error_example, responses
from api.pagination import Paging
from api.schemas import (
    BalanceResponse,
    LedgerEntry,
    LedgerKind,
    PackageOut,
    Page,
    PlanOut,
    PricingResponse,
    TierPrice,
    TierUsageOut,
    UsageResponse,
    assume_utc,
)
from core.tiers import Tier
from db import allowances, credits

router = APIRouter(prefix="/api/credits", tags=["credits"])

MONTH_PATTERN = r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])$"


@router.get("/balance", response_model=BalanceResponse, summary="Balance")
async def get_balance(scope: Tenant) -> BalanceResponse:
    async with scope.transaction() as conn:
        value = await credits.balance(conn, scope.account_id)
    return BalanceResponse(account_id=scope.account_id, balance=value)


@router.get(
    "/transactions",
    response_model=Page[LedgerEntry],
    responses=responses(
        422, e422=error_example(422, None, "kind: Input should be 'purchase', ...", field="kind")
    ),
    summary="Every credit movement, newest first, filtered and paged",
)
async def list_transactions(
    scope: Tenant,
    paging: Paging,
    kind: Annotated[LedgerKind | None, Query()] = None,
    since: Annotated[
        datetime | None, Query(alias="from", description="From this moment on (UTC if no zone)")
    ] = None,
    until: Annotated[
        datetime | None, Query(alias="to", description="Before this moment (UTC if no zone)")
    ] = None,
    run_id: Annotated[UUID | None, Query(description="Movements of one run")] = None,
    batch_id: Annotated[
        UUID | None, Query(description="Movements of one batch: its charge, its items' refunds")
    ] = None,
) -> Page[LedgerEntry]:
    """`from` is inclusive, `to` exclusive; a range that is empty matches nothing."""
    since, until = assume_utc(since), assume_utc(until)
    where = credits.LedgerFilter(
        kind=kind.value if kind else None,
        since=since,
        until=until,
        run_id=run_id,
        batch_id=batch_id,
    )
    async with scope.transaction() as conn:
        total, rows = await credits.transactions_page(
            conn, scope.account_id, limit=paging.page_size, offset=paging.offset, where=where
        )
    return paging.of(total, [LedgerEntry.model_validate(r) for r in rows])


@router.get(
    "/pricing",
    response_model=PricingResponse,
    summary="What each tier costs, and what each plan gives free (no token needed)",
)
async def get_pricing(settings: SettingsDep) -> PricingResponse:
    """Public: read from configuration, not from any account."""
    return PricingResponse(
        tiers=[TierPrice(analysis_type=t, credits=settings.credits_for(t)) for t in Tier],
        plans=[
            PlanOut(
                id=name,
                **plan.model_dump(exclude={"allowances", "stripe_price"}),
                allowances=plan.allowances,
            )
            for name, plan in settings.plans.items()
        ],
        packages=[
            PackageOut(id=name, **package.model_dump())
            for name, package in settings.packages.items()
        ],
    )


@router.get(
    "/usage",
    response_model=UsageResponse,
    responses=responses(
        422,
        e422=error_example(422, None, "month: String should match pattern", field="month"),
    ),
    summary="A month's runs, credits and free allowance, by tier",
)
async def get_usage(
    scope: Tenant,
    settings: SettingsDep,
    month: Annotated[
        str | None,
        Query(
            pattern=MONTH_PATTERN,
            description="YYYY-MM (UTC); this month when left out",
            examples=["2026-11"],
        ),
    ] = None,
) -> UsageResponse:
    async with scope.transaction() as conn:
        first = date.fromisoformat(f"{month}-01") if month else await allowances.current_month(conn)
        plan_name = await allowances.account_plan(conn, scope.account_id)
        by_tier = await credits.usage(conn, scope.account_id, first)
    plan = settings.plan(plan_name)
    tiers = []
    for tier in Tier:
        used = by_tier[tier.value]
        allowance = plan.allowances.get(tier, 0)
        tiers.append(
            TierUsageOut(
                analysis_type=tier,
                allowance=allowance,
                allowance_left=max(0, allowance - used.allowance_used),
                **vars(used),
            )
        )
    return UsageResponse(
        month=first.strftime("%Y-%m"),
        plan=plan_name,
        credits_spent=sum(t.credits_spent for t in tiers),
        credits_refunded=sum(t.credits_refunded for t in tiers),
        tiers=tiers,
    )
