"""The local profile cache table (used when no S3 store is configured)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from db.pool import Connection


async def get(conn: Connection, key: str) -> tuple[dict[str, Any], datetime] | None:
    row = await conn.fetchrow("SELECT profile, stored_at FROM profile_cache WHERE key = $1", key)
    return None if row is None else (row["profile"], row["stored_at"])


async def put(conn: Connection, key: str, profile: dict[str, Any], size: int) -> None:
    await conn.execute(
        """INSERT INTO profile_cache (key, profile, size_bytes) VALUES ($1, $2, $3)
           ON CONFLICT (key) DO UPDATE SET profile = excluded.profile,
               size_bytes = excluded.size_bytes, stored_at = now()""",
        key,
        profile,
        size,
    )


async def drop(conn: Connection, key: str) -> bool:
    return await conn.execute("DELETE FROM profile_cache WHERE key = $1", key) != "DELETE 0"


async def purge(conn: Connection, older_than_seconds: float) -> int:
    status = await conn.execute(
        "DELETE FROM profile_cache WHERE stored_at < now() - make_interval(secs => $1)",
        older_than_seconds,
    )
    return int(status.rsplit(" ", 1)[-1])


async def stats(conn: Connection, boundaries: list[float]) -> list[tuple[int, int, int]]:
    """(age bucket, entries, bytes): bucket 0 is younger than boundaries[0] seconds, the
    last is older than the last boundary."""
    rows = await conn.fetch(
        """SELECT width_bucket(extract(epoch FROM now() - stored_at)::float8, $1::float8[])
                      AS bucket,
                  count(*) AS entries, coalesce(sum(size_bytes), 0) AS bytes
           FROM profile_cache GROUP BY 1""",
        boundaries,
    )
    return [(r["bucket"], r["entries"], int(r["bytes"])) for r in rows]
