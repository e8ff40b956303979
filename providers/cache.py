"""The profile cache: where scraped profiles are kept between runs (DESIGN.md section 7).

`ProfileCache` is the interface. `PostgresProfileCache` is the local store used by default;
`S3ProfileCache` keeps each profile as one JSON object in an S3 bucket (AWS S3, Cloudflare
R2, MinIO: boto3 with `endpoint_url`), chosen with `PROFILE_CACHE=s3`.

A profile that cannot be read back (a corrupt or foreign object) is a miss: the run scrapes
and stores it again.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import ValidationError

from core.models import Profile
from core.settings import Settings
from db import profile_cache as sql
from db.pool import connection

log = logging.getLogger(__name__)


def cache_key(username: str) -> str:
    return f"instagram:{username}:v1"


class ProfileCache(Protocol):
    async def get(self, username: str) -> tuple[Profile, datetime] | None:
        """The cached profile and when it was stored, or None."""
        ...

    async def put(self, profile: Profile) -> None: ...

    async def drop(self, username: str) -> bool:
        """Forgets the profile (the next analysis scrapes); whether there was one."""
        ...

    async def purge(self, older_than_seconds: float) -> int:
        """Deletes profiles stored longer ago than that; how many."""
        ...

    async def stats(self, boundaries: list[float]) -> CacheStats:
        """Entries, their total size, and how many fall between each pair of `boundaries`
        (ages in seconds, ascending): len(boundaries) + 1 counts."""
        ...

    async def check(self) -> None:
        """Raises when the store cannot be reached (for /health)."""
        ...


@dataclass(frozen=True)
class CacheStats:
    entries: int
    total_bytes: int
    by_age: list[int]


class PostgresProfileCache:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, username: str) -> tuple[Profile, datetime] | None:
        async with connection(self._pool) as conn:
            found = await sql.get(conn, cache_key(username))
        if found is None:
            return None
        data, stored_at = found
        try:
            return Profile.model_validate(data), stored_at
        except ValidationError:
            log.warning("cached profile of @%s is unreadable: a miss", username)
            return None

    async def put(self, profile: Profile) -> None:
        data = profile.model_dump(mode="json")
        size = len(json.dumps(data, separators=(",", ":")).encode())
        async with connection(self._pool) as conn:
            await sql.put(conn, cache_key(profile.username), data, size)

    async def check(self) -> None:
        async with connection(self._pool, timeout=1) as conn:
            await conn.fetchval("SELECT 1 FROM profile_cache LIMIT 1", timeout=1)

    async def drop(self, username: str) -> bool:
        async with connection(self._pool) as conn:
            return await sql.drop(conn, cache_key(username))

    async def purge(self, older_than_seconds: float) -> int:
        async with connection(self._pool) as conn:
            return await sql.purge(conn, older_than_seconds)

    async def stats(self, boundaries: list[float]) -> CacheStats:
        async with connection(self._pool) as conn:
            rows = await sql.stats(conn, boundaries)
        by_age = [0] * (len(boundaries) + 1)
        for bucket, count, _ in rows:
            by_age[bucket] += count
        return CacheStats(
            entries=sum(by_age), total_bytes=sum(size for _, _, size in rows), by_age=by_age
        )


class S3ProfileCache:
    """One object per profile, `<S3_PREFIX>instagram:<username>:v1`, holding
    `{"stored_at", "profile"}`. boto3 blocks, so each call runs in a thread; its client is
    thread-safe and keeps its connections."""

    def __init__(self, settings: Settings) -> None:
        assert settings.s3_bucket is not None  # the settings refuse s3 without a bucket
        self._bucket = settings.s3_bucket
        self._prefix = settings.s3_prefix
        secret = settings.s3_secret_access_key
        self._s3 = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=(
                settings.s3_access_key_id.get_secret_value() if settings.s3_access_key_id else None
            ),
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            # Brief: a cache that answers slowly is worth less than a scrape.
            config=Config(
                connect_timeout=2,
                read_timeout=5,
                retries={"max_attempts": 2, "mode": "standard"},
            ),
        )

    def _key(self, username: str) -> str:
        return self._prefix + cache_key(username)

    async def get(self, username: str) -> tuple[Profile, datetime] | None:
        def read() -> bytes | None:
            try:
                answer = self._s3.get_object(Bucket=self._bucket, Key=self._key(username))
            except ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                    return None
                raise
            body: bytes = answer["Body"].read()
            return body

        raw = await asyncio.to_thread(read)
        if raw is None:
            return None
        try:
            stored = json.loads(raw)
            stored_at = datetime.fromisoformat(stored["stored_at"])
            if stored_at.tzinfo is None:
                raise ValueError("stored_at has no time zone")
            return Profile.model_validate(stored["profile"]), stored_at
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            log.warning("cached profile of @%s is unreadable (%s): a miss", username, exc)
            return None

    async def put(self, profile: Profile) -> None:
        body = json.dumps(
            {
                "stored_at": datetime.now(UTC).isoformat(),
                "profile": profile.model_dump(mode="json"),
            },
            separators=(",", ":"),
        ).encode()
        await asyncio.to_thread(
            self._s3.put_object,
            Bucket=self._bucket,
            Key=self._key(profile.username),
            Body=body,
            ContentType="application/json",
        )

    async def check(self) -> None:
        await asyncio.to_thread(self._s3.head_bucket, Bucket=self._bucket)

    async def drop(self, username: str) -> bool:
        def delete() -> bool:
            try:
                self._s3.head_object(Bucket=self._bucket, Key=self._key(username))
            except ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                    return False
                raise
            self._s3.delete_object(Bucket=self._bucket, Key=self._key(username))
            return True

        return await asyncio.to_thread(delete)

    async def purge(self, older_than_seconds: float) -> int:
        """Lists the cache's objects and deletes the old ones, 1,000 per request. (A
        bucket lifecycle rule does the same without listing; this works on any S3.)"""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)

        def delete_old() -> int:
            deleted = 0
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=self._prefix + "instagram:"
            )
            for page in pages:
                old = [
                    {"Key": o["Key"]}
                    for o in page.get("Contents", [])
                    if o["LastModified"] < cutoff
                ]
                for start in range(0, len(old), 1000):
                    chunk = old[start : start + 1000]
                    self._s3.delete_objects(Bucket=self._bucket, Delete={"Objects": chunk})
                    deleted += len(chunk)
            return deleted

        return await asyncio.to_thread(delete_old)

    async def stats(self, boundaries: list[float]) -> CacheStats:
        """Lists the cache's objects (a bucket's inventory would spare the listing)."""
        now = datetime.now(UTC)

        def count() -> CacheStats:
            by_age, total = [0] * (len(boundaries) + 1), 0
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=self._prefix + "instagram:"
            )
            for page in pages:
                for item in page.get("Contents", []):
                    age = (now - item["LastModified"]).total_seconds()
                    by_age[bisect.bisect_right(boundaries, age)] += 1
                    total += int(item["Size"])
            return CacheStats(entries=sum(by_age), total_bytes=total, by_age=by_age)

        return await asyncio.to_thread(count)


def _code(error: ClientError) -> str:
    details: dict[str, Any] = error.response.get("Error", {})
    return str(details.get("Code", ""))


def profile_cache(settings: Settings, pool: asyncpg.Pool) -> ProfileCache:
    """The store PROFILE_CACHE names."""
    if settings.profile_cache == "s3":
        return S3ProfileCache(settings)
    return PostgresProfileCache(pool)
