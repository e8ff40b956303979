"""Creating accounts from the command line (and the demo account of `oslira dev`)."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID, uuid4

from db import accounts, business_profiles, credits
from db.pool import Connection

DEMO_BUSINESS = {
    "description": "A boutique fitness studio that partners with creators.",
    "offering": "Paid partnerships and affiliate deals for fitness and wellness creators",
    "target_audience": "Fitness, food and lifestyle creators with engaged audiences",
}


@dataclass(frozen=True)
class NewAccount:
    account_id: UUID
    user_id: UUID
    business_profile_id: UUID


async def create_account(
    conn: Connection, *, name: str, credits_granted: int, email: str | None = None
) -> NewAccount:
    """An account, its owner, a business profile and an opening grant, in one transaction."""
    async with conn.transaction():
        account_id = await accounts.create_account(conn, name)
        user_id = uuid4()
        await accounts.ensure_user(conn, user_id, email)
        await accounts.add_member(conn, account_id, user_id, "owner")
        profile = await business_profiles.create(
            conn, account_id=account_id, name=f"{name} business", **DEMO_BUSINESS
        )
        await credits.open_balance(conn, account_id)
        if credits_granted > 0:
            await credits.grant(
                conn,
                account_id=account_id,
                amount=credits_granted,
                key=f"grant:opening:{account_id}",
                description="opening grant",
            )
    return NewAccount(account_id=account_id, user_id=user_id, business_profile_id=profile["id"])
