"""The profile cache: where scraped profiles are kept between runs (DESIGN.md section 7).

`ProfileCache` is the interface; `PostgresProfileCache` is the local store used by default.
An S3 store (boto3) will implement the same two methods.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Protocol

import asyncpg

from core.models import Profile
from db import profile_cache as sql
from db.pool import connection


def cache_key(username: str) -> str:
    return f"instagram:{username}:v1"


class ProfileCache(Protocol):
    async def get(self, username: str) -> tuple[Profile, datetime] | None:
        """The cached profile and when it was stored, or None."""
        ...

    async def put(self, profile: Profile) -> None: ...


class PostgresProfileCache:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, username: str) -> tuple[Profile, datetime] | None:
        async with connection(self._pool) as conn:
            found = await sql.get(conn, cache_key(username))
        if found is None:
            return None
        data, stored_at = found
        return Profile.model_validate(data), stored_at

    async def put(self, profile: Profile) -> None:
        data = profile.model_dump(mode="json")
        size = len(json.dumps(data, separators=(",", ":")).encode())
        async with connection(self._pool) as conn:
            await sql.put(conn, cache_key(profile.username), data, size)
