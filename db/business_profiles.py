"""Business profiles: who an account sells to and what it offers."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from db.pool import Connection

_COLUMNS = "id, account_id, name, description, offering, target_audience, created_at, updated_at"


async def create(
    conn: Connection,
    *,
    account_id: UUID,
    name: str,
    description: str = "",
    offering: str = "",
    target_audience: str = "",
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"""INSERT INTO business_profiles
                (account_id, name, description, offering, target_audience)
            VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}""",
        account_id,
        name,
        description,
        offering,
        target_audience,
    )
    assert row is not None
    return row


async def get_live(conn: Connection, profile_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM business_profiles WHERE id = $1 AND deleted_at IS NULL",
        profile_id,
    )


async def page(conn: Connection, *, limit: int, offset: int) -> tuple[int, list[asyncpg.Record]]:
    total = await conn.fetchval("SELECT count(*) FROM business_profiles WHERE deleted_at IS NULL")
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM business_profiles WHERE deleted_at IS NULL
            ORDER BY created_at DESC, id LIMIT $1 OFFSET $2""",
        limit,
        offset,
    )
    return int(total), rows


async def replace(
    conn: Connection,
    profile_id: UUID,
    *,
    name: str,
    description: str,
    offering: str,
    target_audience: str,
) -> asyncpg.Record | None:
    """Sets every field of a live profile; None when there is none with this id."""
    return await conn.fetchrow(
        f"""UPDATE business_profiles
            SET name = $2, description = $3, offering = $4, target_audience = $5,
                updated_at = now()
            WHERE id = $1 AND deleted_at IS NULL RETURNING {_COLUMNS}""",
        profile_id,
        name,
        description,
        offering,
        target_audience,
    )


async def soft_delete(conn: Connection, profile_id: UUID) -> bool:
    """False when there is no live profile with this id. Its leads and runs stay; runs not
    yet charged fail at the charge (step 5) and cost nothing."""
    return bool(
        await conn.fetchval(
            """UPDATE business_profiles SET deleted_at = now(), updated_at = now()
               WHERE id = $1 AND deleted_at IS NULL RETURNING true""",
            profile_id,
        )
    )
