"""Accounts, users and memberships."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from core.settings import FREE_PLAN
from db import business_profiles, credits
from db.pool import Connection


@dataclass(frozen=True)
class NewAccount:
    account_id: UUID
    user_id: UUID
    business_profile_id: UUID


async def create_with_owner(
    conn: Connection,
    *,
    name: str,
    credits_granted: int,
    email: str | None = None,
    business: dict[str, str] | None = None,
    plan: str = FREE_PLAN,
) -> NewAccount:
    """An account, its owner, a first business profile (named after the account unless
    `business` says otherwise) and an opening grant, in one transaction."""
    async with conn.transaction():
        account_id = await create_account(conn, name, plan)
        user_id = uuid4()
        await ensure_user(conn, user_id, email)
        await add_member(conn, account_id, user_id, "owner")
        profile = await business_profiles.create(
            conn, account_id=account_id, **({"name": name} | (business or {}))
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


async def create_account(conn: Connection, name: str, plan: str = FREE_PLAN) -> UUID:
    account_id: UUID = await conn.fetchval(
        "INSERT INTO accounts (name, plan) VALUES ($1, $2) RETURNING id", name, plan
    )
    return account_id


async def ensure_user(conn: Connection, user_id: UUID, email: str | None = None) -> None:
    await conn.execute(
        "INSERT INTO users (id, email) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        user_id,
        email,
    )


async def add_member(
    conn: Connection, account_id: UUID, user_id: UUID, role: str = "owner"
) -> None:
    await conn.execute(
        """INSERT INTO account_members (account_id, user_id, role) VALUES ($1, $2, $3)
           ON CONFLICT (account_id, user_id) DO UPDATE SET role = excluded.role""",
        account_id,
        user_id,
        role,
    )


async def memberships(conn: Connection, user_id: UUID) -> list[asyncpg.Record]:
    """The user's live accounts and role in each, oldest first; one statement, needing no
    tenant set (a function with its owner's rights, migration 0009)."""
    return await conn.fetch("SELECT account_id, role FROM user_accounts($1)", user_id)


async def email_taken(conn: Connection, email: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM users WHERE lower(email) = $1", email.lower()))


async def user_exists(conn: Connection, user_id: UUID) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM users WHERE id = $1", user_id))


async def account_exists(conn: Connection, account_id: UUID) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM accounts WHERE id = $1 AND deleted_at IS NULL", account_id
        )
    )


async def overview(conn: Connection) -> list[dict[str, Any]]:
    """Every live account with its balance and member count, newest first (system role)."""
    rows = await conn.fetch(
        """SELECT a.id AS account_id, a.name, a.created_at,
                  coalesce(b.balance, 0) AS balance,
                  (SELECT count(*) FROM account_members m WHERE m.account_id = a.id) AS members
           FROM accounts a LEFT JOIN credit_balances b ON b.account_id = a.id
           WHERE a.deleted_at IS NULL
           ORDER BY a.created_at DESC, a.id"""
    )
    return [dict(r) for r in rows]


async def user_of(conn: Connection) -> asyncpg.Record | None:
    """The signed-in user (app.user_id) as the users table has them."""
    return await conn.fetchrow("SELECT id, email FROM users WHERE id = app_user_id()")


async def accounts_of_user(conn: Connection) -> list[asyncpg.Record]:
    """The signed-in user's live accounts with their role, oldest membership first."""
    return await conn.fetch(
        """SELECT a.id, a.name, m.role FROM account_members m
           JOIN accounts a ON a.id = m.account_id
           WHERE m.user_id = app_user_id() AND a.deleted_at IS NULL
           ORDER BY m.created_at, a.id"""
    )


async def tenant_account(conn: Connection) -> asyncpg.Record | None:
    """The account of the current tenant transaction (app.account_id)."""
    return await conn.fetchrow(
        "SELECT id, name FROM accounts WHERE id = app_account_id() AND deleted_at IS NULL"
    )
