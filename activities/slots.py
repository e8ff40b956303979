"""The global provider cap, as one worker process takes part in it (DESIGN.md section 6).

A provider call first gets one of its provider's slots, a lease in PostgreSQL
(db/provider_slots.py), and holds it until the call ends, renewing it meanwhile. However many
worker processes there are, at most `cap` calls to a provider are in flight.

When every slot is held, the call queues in `provider_waiters`. Slots are handed out in a fair
order (accounts in turn, an account's single analyses before its batch items), by whoever frees
one, in the same transaction: no slot idles while work waits. Handing out NOTIFYs every worker;
one task per provider in each worker (the pump) then claims what was handed to its waiters. A
slot whose worker died comes back when its lease expires: pumps with waiters hand those out
every second.

A call that waits for a slot goes on heartbeating (activities.common.provider_call), so it can
be cancelled while it waits; it then leaves the queue, and a slot handed to it meanwhile goes on
to the next waiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID, uuid4

import asyncpg

from core.models import Turn
from db import provider_slots
from db.errors import UNAVAILABLE
from db.pool import Connection, connection
from db.provider_slots import Waiter

log = logging.getLogger(__name__)

LEASE_SECONDS = 10.0  # how soon a dead worker's slot, or queue place, comes back
RENEW_EVERY = 3.0
POLL_EVERY = 1.0  # for leases that expired, and NOTIFYs lost with the listening connection
RETRY_EVERY = 0.5  # when the database cannot be reached
UNKNOWN_ACCOUNT = UUID(int=0)  # calls scheduled before turns existed take theirs together


class ProviderSlots:
    def __init__(self, pool: asyncpg.Pool, dsn: str, caps: dict[str, int]) -> None:
        self._pool = pool
        self._dsn = dsn
        self._caps = caps
        self.worker = f"{os.getpid()}@{socket.gethostname()}"  # as Temporal names a worker
        self._waiting: dict[str, dict[UUID, asyncio.Future[int]]] = {p: {} for p in caps}
        self._wake: dict[str, asyncio.Event] = {}
        self._pumps: list[asyncio.Task[None]] = []
        self._listener: asyncpg.Connection | None = None

    async def start(self) -> None:
        async with connection(self._pool) as conn:
            for provider, cap in self._caps.items():
                await provider_slots.ensure(conn, provider, cap)
        with contextlib.suppress(*UNAVAILABLE):
            await self._listen()
        for provider in self._caps:
            self._wake[provider] = asyncio.Event()
            self._pumps.append(asyncio.create_task(self._pump(provider)))

    async def close(self) -> None:
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()

    @asynccontextmanager
    async def hold(self, provider: str, run_id: UUID, turn: Turn | None) -> AsyncIterator[None]:
        """Waits for a slot of `provider` in the fair order, holds it while the block runs,
        then hands it on."""
        turn = turn or Turn(account_id=UNKNOWN_ACCOUNT)
        priority = provider_slots.BATCH if turn.batch_id else provider_slots.INTERACTIVE
        waiter = Waiter(provider, uuid4(), turn.account_id, priority, run_id, self.worker)
        slot = await self._wait(waiter)
        renewing = asyncio.create_task(self._renew(provider, slot, waiter.holder))
        try:
            yield
        finally:
            renewing.cancel()
            await self._release(provider, slot, waiter.holder)

    async def _wait(self, waiter: Waiter) -> int:
        provider = waiter.provider
        granted: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        # Known to the pump before the queue place exists, so no hand-over is missed.
        self._waiting[provider][waiter.holder] = granted
        try:
            slot = await self._enter(waiter)
            return slot if slot is not None else await granted
        except BaseException:
            if granted.done() and not granted.cancelled():
                await asyncio.shield(self._release(provider, granted.result(), waiter.holder))
            else:
                await asyncio.shield(self._leave(waiter))
            raise
        finally:
            self._waiting[provider].pop(waiter.holder, None)

    async def _enter(self, waiter: Waiter) -> int | None:
        cap = self._caps[waiter.provider]
        while True:
            try:
                async with connection(self._pool) as conn:
                    return await provider_slots.enter(conn, waiter, cap, LEASE_SECONDS)
            except UNAVAILABLE as exc:
                log.warning(
                    "no %s slot while the database is unavailable: %r", waiter.provider, exc
                )
                await asyncio.sleep(RETRY_EVERY)

    async def _leave(self, waiter: Waiter) -> None:
        cap = self._caps[waiter.provider]
        try:
            async with connection(self._pool, timeout=2) as conn:
                await provider_slots.leave(conn, waiter.provider, waiter.holder, cap, LEASE_SECONDS)
        except Exception as exc:  # its place lapses by itself
            log.warning(
                "%s queue place not left (%r); it lapses in %.0f s",
                waiter.provider,
                exc,
                LEASE_SECONDS,
            )

    async def _release(self, provider: str, slot: int, holder: UUID) -> None:
        cap = self._caps[provider]
        try:
            async with connection(self._pool, timeout=2) as conn:
                await provider_slots.release(conn, provider, slot, holder, cap, LEASE_SECONDS)
        except Exception as exc:  # the lease expires by itself
            log.warning(
                "%s slot %d not released (%r); it frees in %.0f s",
                provider,
                slot,
                exc,
                LEASE_SECONDS,
            )

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

    async def _pump(self, provider: str) -> None:
        """Claims the slots handed to this worker's waiters; with waiters, every second also
        hands out expired leases and renews the waiters' queue places."""
        wake, waiting, cap = self._wake[provider], self._waiting[provider], self._caps[provider]
        renewed_at = time.monotonic()
        while True:
            notified = False
            with contextlib.suppress(TimeoutError):
                notified = await asyncio.wait_for(wake.wait(), POLL_EVERY)
            wake.clear()
            if not waiting:
                renewed_at = time.monotonic()
                continue
            try:
                if self._listener is None or self._listener.is_closed():
                    await self._listen()
                async with connection(self._pool, timeout=2) as conn:
                    if not notified:
                        await provider_slots.grant(conn, provider, cap, LEASE_SECONDS)
                    if time.monotonic() - renewed_at > RENEW_EVERY:
                        await provider_slots.keep_waiting(conn, list(waiting), LEASE_SECONDS)
                        renewed_at = time.monotonic()
                    claimed = await provider_slots.claim(conn, list(waiting))
            except Exception as exc:
                log.warning("%s slots not claimed: %r", provider, exc)
                continue
            for holder, slot in claimed.items():
                granted = waiting.get(holder)
                if granted is not None and not granted.done():
                    granted.set_result(slot)
                else:  # its call was cancelled meanwhile: hand the slot on
                    await self._release(provider, slot, holder)

    async def _listen(self) -> None:
        self._listener = await asyncpg.connect(self._dsn, timeout=5)
        await self._listener.add_listener(provider_slots.CHANNEL, self._on_notify)

    def _on_notify(self, _conn: Connection, _pid: int, _channel: str, provider: object) -> None:
        wake = self._wake.get(str(provider))
        if wake is not None:
            wake.set()
