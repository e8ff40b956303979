"""Connection pools: one per process and role, with JSON codecs installed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from db.errors import DatabaseUnavailable

# What query functions take: a plain connection or one borrowed from a pool.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=_dumps, decoder=json.loads, schema="pg_catalog"
        )


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


async def create_pool(
    dsn: str, *, min_size: int = 2, max_size: int = 20, connect_timeout: float = 10
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        # Role, tenant and statement settings are per transaction, so a connection
        # returned to the pool carries nothing over; keep asyncpg's reset anyway.
        command_timeout=30,
        timeout=connect_timeout,
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def connection(pool: asyncpg.Pool, timeout: float | None = None) -> AsyncIterator[Connection]:
    """A pooled connection; failing to get one, or losing it on the way, raises
    DatabaseUnavailable (a connect that is refused, reset or too slow, a server that went
    away mid-transaction), never a bare OSError or TimeoutError."""
    try:
        conn = await pool.acquire(timeout=timeout)
    except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
        raise DatabaseUnavailable(f"no database connection: {exc!r}") from exc
    try:
        yield conn
    except asyncpg.InterfaceError as exc:
        # A connection lost mid-transaction surfaces as the transaction's own complaint
        # ("the underlying connection is closed"), or the pool's, which took the dead
        # connection back meanwhile, hiding the lost connection behind them.
        if _lost(conn):
            raise DatabaseUnavailable(f"the database connection was lost: {exc!r}") from exc
        raise
    finally:
        await pool.release(conn)


def _lost(conn: Connection) -> bool:
    """Whether `conn` died under us (while we held it, only its loss detaches it)."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True  # the pool took the dead connection back already
