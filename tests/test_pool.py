"""A connection lost mid-transaction is the database being unavailable (retried, or 503),
not a bug: the server going away must delay work, never fail it."""

from __future__ import annotations

import pytest

from db.errors import UNAVAILABLE, DatabaseUnavailable
from db.pool import connection


async def test_a_connection_lost_mid_transaction_is_unavailable(system_pool):
    with pytest.raises(DatabaseUnavailable) as raised:
        async with connection(system_pool) as conn, conn.transaction():
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            async with system_pool.acquire() as other:
                assert await other.fetchval("SELECT pg_terminate_backend($1)", pid)
            await conn.fetchval("SELECT 1")
    assert isinstance(raised.value, UNAVAILABLE)
    # The pool goes on with a fresh connection.
    async with connection(system_pool) as conn:
        assert await conn.fetchval("SELECT 1") == 1
