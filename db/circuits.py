"""The AI circuit breakers' states, as workers report them (migration 0021)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from db.pool import Connection, connection

log = logging.getLogger(__name__)


async def record(conn: Connection, *, worker: str, circuit: str, state: str) -> None:
    await conn.execute(
        """INSERT INTO provider_circuits (worker, circuit, state) VALUES ($1, $2, $3)
           ON CONFLICT (worker, circuit) DO UPDATE SET state = excluded.state,
               changed_at = now()""",
        worker,
        circuit,
        state,
    )


async def open_now(conn: Connection, pause_seconds: float) -> list[asyncpg.Record]:
    """Circuits opened within the pause: still open (after it, the next call probes)."""
    return await conn.fetch(
        """SELECT worker, circuit, changed_at FROM provider_circuits
           WHERE state = 'opened' AND changed_at > now() - make_interval(secs => $1)
           ORDER BY changed_at DESC""",
        pause_seconds,
    )


class Reporter:
    """Records a worker's circuit changes as they happen, in order, without making the call
    that changed the state wait; a failed write is logged (health then reads the older
    state until the next change)."""

    def __init__(self, pool: asyncpg.Pool, worker: str) -> None:
        self._pool = pool
        self._worker = worker
        self._order = asyncio.Lock()  # FIFO: writes land in the order the changes came
        self._pending: set[asyncio.Task[None]] = set()

    def __call__(self, circuit: str, state: str) -> None:
        task = asyncio.get_running_loop().create_task(self._record(circuit, state))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _record(self, circuit: str, state: str) -> None:
        async with self._order:
            try:
                async with connection(self._pool, timeout=5) as conn:
                    await record(conn, worker=self._worker, circuit=circuit, state=state)
            except Exception as exc:
                log.warning("could not record circuit %s %s: %s", circuit, state, exc)

    async def close(self) -> None:
        await asyncio.gather(*self._pending, return_exceptions=True)
