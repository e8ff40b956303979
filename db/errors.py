"""Which database errors mean "the database is unavailable for now" (retry, or answer 503),
as opposed to a bug in a query (fail, and log a traceback)."""

from __future__ import annotations

import asyncpg


class DatabaseUnavailable(Exception):
    """No connection could be had: the server is down, unreachable or refusing; it may pass."""


# Connection trouble (class 08), a server shutting down, restarting or cancelling (57),
# resource limits such as too many connections (53), serialization failures and deadlocks
# (40). Connecting itself fails with OSError or a timeout, which db.pool.connection turns
# into DatabaseUnavailable, so that an OSError elsewhere is never taken for the database.
UNAVAILABLE: tuple[type[Exception], ...] = (
    DatabaseUnavailable,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.TransactionRollbackError,
)
