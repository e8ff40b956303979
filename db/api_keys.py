"""API keys: per account, kept as a hash, revocable at once."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from core.auth import api_key_hash, new_api_key
from db.pool import Connection

_COLUMNS = "id, name, prefix, created_at, last_used_at, revoked_at"
PREFIX_SHOWN = 12  # characters of the key a listing shows


async def create(
    conn: Connection, *, account_id: UUID, name: str, created_by: UUID | None
) -> tuple[asyncpg.Record, str]:
    """The new key's row and the key itself, which is never stored and never shown again."""
    key = new_api_key()
    row = await conn.fetchrow(
        f"""INSERT INTO api_keys (account_id, name, prefix, key_hash, created_by)
            VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}""",
        account_id,
        name,
        key[:PREFIX_SHOWN],
        api_key_hash(key),
        created_by,
    )
    assert row is not None
    return row, key


async def page(conn: Connection, *, limit: int, offset: int) -> tuple[int, list[asyncpg.Record]]:
    total = await conn.fetchval("SELECT count(*) FROM api_keys")
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM api_keys ORDER BY created_at DESC, id LIMIT $1 OFFSET $2""",
        limit,
        offset,
    )
    return int(total), rows


async def get(conn: Connection, key_id: UUID | None) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)


async def revoke(conn: Connection, key_id: UUID) -> bool:
    """False when there is no such key (in this account); revoking twice is harmless."""
    revoked = await conn.fetchval(
        """UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
           WHERE id = $1 RETURNING true""",
        key_id,
    )
    return bool(revoked)


async def account_of(conn: Connection, key: str) -> tuple[UUID, UUID] | None:
    """The key's id and account while the key is live; None for an unknown or revoked key."""
    row = await conn.fetchrow(
        "SELECT key_id, account_id FROM api_key_account($1)", api_key_hash(key)
    )
    return (row["key_id"], row["account_id"]) if row else None
