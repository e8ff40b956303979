"""The global provider cap, as one worker process takes part in it (DESIGN.md section 6).

A provider call first takes one of its provider's slots, a lease in PostgreSQL
(db/provider_slots.py), and holds it until the call ends, renewing it meanwhile. However many
worker processes there are, at most `cap` calls to a provider are in flight. Slots are
taken the moment they free: a release is NOTIFY'd to every worker, which wakes its waiters at
once; a slot whose worker died comes back when its lease expires, which waiters poll for.

A call that waits for a slot goes on heartbeating, so it can be cancelled while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID, uuid4

import asyncpg

from db import provider_slots
from db.errors import UNAVAILABLE
from db.pool import connection

log = logging.getLogger(__name__)

LEASE_SECONDS = 10.0  # how soon a dead worker's slot comes back
RENEW_EVERY = 3.0
POLL_EVERY = 0.25  # for leases that expired: nobody NOTIFYs those


class ProviderSlots:
    def __init__(self, pool: asyncpg.Pool, dsn: str, caps: dict[str, int]) -> None:
        self._pool = pool
        self._dsn = dsn
        self._caps = caps
        self.worker = f"{os.getpid()}@{socket.gethostname()}"  # as Temporal names a worker
        # Set (and replaced) when a slot frees anywhere: every waiter of this process wakes.
        self._freed = asyncio.Event()
        self._listener: asyncpg.Connection | None = None

    async def start(self) -> None:
        async with connection(self._pool) as conn:
            for provider, cap in self._caps.items():
                await provider_slots.ensure(conn, provider, cap)
        await self._listen()

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()

    @asynccontextmanager
    async def hold(self, provider: str, run_id: UUID) -> AsyncIterator[None]:
        """Waits for a slot of `provider`, holds it while the block runs, then frees it."""
        holder = uuid4()
        slot = await self._take(provider, holder, run_id)
        renewing = asyncio.create_task(self._renew(provider, slot, holder))
        try:
            yield
        finally:
            renewing.cancel()
            try:
                async with connection(self._pool, timeout=2) as conn:
                    await provider_slots.release(conn, provider, slot, holder)
            except Exception as exc:  # the lease expires by itself
                log.warning(
                    "%s slot %d not released (%r); it frees in %.0f s",
                    provider,
                    slot,
                    exc,
                    LEASE_SECONDS,
                )

    async def _take(self, provider: str, holder: UUID, run_id: UUID) -> int:
        cap = self._caps[provider]
        while True:
            freed = self._freed  # taken before trying: a release from now on wakes this waiter
            try:
                async with connection(self._pool) as conn:
                    slot = await provider_slots.acquire(
                        conn, provider, cap, holder, run_id, LEASE_SECONDS, self.worker
                    )
            except UNAVAILABLE as exc:
                log.warning("no %s slot while the database is unavailable: %r", provider, exc)
                slot = None
            if slot is not None:
                return slot
            if self._listener is None or self._listener.is_closed():
                with contextlib.suppress(Exception):
                    await self._listen()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(freed.wait(), POLL_EVERY)

    async def _renew(self, provider: str, slot: int, holder: UUID) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            try:
                async with connection(self._pool, timeout=2) as conn:
                    kept = await provider_slots.renew(conn, provider, slot, holder, LEASE_SECONDS)
            except Exception as exc:
                log.warning("%s slot %d not renewed: %r", provider, slot, exc)
                continue
            if not kept:
                # The call goes on (it is paid for); for a moment the cap may be exceeded.
                log.warning("%s slot %d lease lost (it expired); the call goes on", provider, slot)
                return

    async def _listen(self) -> None:
        self._listener = await asyncpg.connect(self._dsn, timeout=5)
        await self._listener.add_listener(provider_slots.CHANNEL, self._on_freed)

    def _on_freed(self, *_: object) -> None:
        self._freed.set()
        self._freed = asyncio.Event()
