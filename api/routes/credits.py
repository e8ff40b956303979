"""The account's credit balance and its ledger."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Tenant
from api.errors import responses
from api.pagination import Paging
from api.schemas import BalanceResponse, LedgerEntry, Page
from db import credits

router = APIRouter(prefix="/api/credits", tags=["credits"])


@router.get("/balance", response_model=BalanceResponse, summary="Balance")
async def get_balance(scope: Tenant) -> BalanceResponse:
    async with scope.transaction() as conn:
        value = await credits.balance(conn, scope.account_id)
    return BalanceResponse(account_id=scope.account_id, balance=value)


@router.get(
    "/transactions",
    response_model=Page[LedgerEntry],
    responses=responses(422),
    summary="Every credit movement, newest first",
)
async def list_transactions(scope: Tenant, paging: Paging) -> Page[LedgerEntry]:
    async with scope.transaction() as conn:
        total, rows = await credits.transactions_page(
            conn, scope.account_id, limit=paging.page_size, offset=paging.offset
        )
    return paging.of(total, [LedgerEntry.model_validate(r) for r in rows])
