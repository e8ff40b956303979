"""Who is calling: the user and their accounts, or the API key and its account."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import Caller, TenantScope, user_transaction
from api.schemas import MeAccount, MeApiKey, MeResponse, MeUser
from db import accounts, api_keys

router = APIRouter(tags=["accounts"])


@router.get(
    "/api/me",
    response_model=MeResponse,
    summary="The caller: the user with their accounts and role in each, or the API key",
)
async def get_me(request: Request, caller: Caller) -> MeResponse:
    """Needs no X-Account-Id: it is how a client finds which accounts it may name there."""
    pool = request.app.state.pool
    if caller.account_id is not None:  # an API key
        scope = TenantScope(user_id=None, account_id=caller.account_id, role="member", pool=pool)
        async with scope.transaction() as conn:
            account = await accounts.tenant_account(conn)
            key = await api_keys.get(conn, caller.api_key_id)
        return MeResponse(
            user=None,
            api_key=MeApiKey(id=key["id"], name=key["name"]) if key else None,
            accounts=[MeAccount(id=account["id"], name=account["name"], role="member")]
            if account
            else [],
        )
    assert caller.user_id is not None
    async with user_transaction(pool, caller.user_id) as conn:
        user = await accounts.user_of(conn)
        rows = await accounts.accounts_of_user(conn)
    return MeResponse(
        user=MeUser(id=caller.user_id, email=user["email"] if user else None),
        api_key=None,
        accounts=[MeAccount(id=r["id"], name=r["name"], role=r["role"]) for r in rows],
    )
