"""Live progress as Server-Sent Events (DESIGN.md sections 9 and 10).

One `ProgressHub` per API process holds one PostgreSQL connection that LISTENs on the
channel migration 0022's triggers notify (`run:<id>`, `batch:<id>`), and wakes the streams
following that run or batch: however many clients follow, the database sees one listener
per process and one short read per change per stream, never a poll per client.

A stream reads its run's (or batch's) progress when woken, sends it if it changed, and
ends once it is terminal. It also reads at each keep-alive (a comment every
`keepalive_seconds`): if the listening connection was lost, streams still move, only
later, while the hub reconnects. Each event's id is the progress's version (a batch's: how
far it got), so a client that reconnects with `Last-Event-ID` gets only what is newer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import asyncpg

log = logging.getLogger(__name__)

CHANNEL = "oslira_progress"
RECONNECT_SECONDS = 1.0


@dataclass(frozen=True)
class Snapshot:
    """What a stream sends: an event id that grows with the progress, the JSON, and
    whether it is the last."""

    event_id: int
    data: str
    terminal: bool


class ProgressHub:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._followers: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="progress-hub")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def follow(self, key: str) -> Iterator[asyncio.Event]:
        """An event set whenever `key` (`run:<id>`, `batch:<id>`) is announced."""
        woken = asyncio.Event()
        self._followers[key].add(woken)
        try:
            yield woken
        finally:
            self._followers[key].discard(woken)
            if not self._followers[key]:
                del self._followers[key]

    def _announced(self, conn: object, pid: int, channel: str, payload: object) -> None:
        for woken in self._followers.get(str(payload), ()):
            woken.set()

    def _wake_all(self) -> None:
        for followers in self._followers.values():
            for woken in followers:
                woken.set()

    async def _listen(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._announced)
                self.listening.set()
                self._wake_all()  # what changed while nobody listened
                await lost.wait()
                log.warning("progress listener lost its connection; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("progress listener cannot connect (%s); retrying", exc)
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await asyncio.sleep(RECONNECT_SECONDS)


async def stream(
    hub: ProgressHub,
    key: str,
    read: Callable[[], Awaitable[Snapshot]],
    *,
    last_event_id: int | None,
    keepalive_seconds: float,
    disconnected: Callable[[], Awaitable[bool]],
) -> AsyncIterator[str]:
    """The event stream of one run or batch, until it is terminal or the client leaves."""
    last = last_event_id if last_event_id is not None else -1
    with hub.follow(key) as woken:
        yield "retry: 2000\n\n"  # how soon a client reconnects after a drop
        while True:
            woken.clear()  # before reading: a change announced from now on wakes us
            snapshot = await read()
            if snapshot.event_id > last:
                last = snapshot.event_id
                yield f"id: {snapshot.event_id}\nevent: progress\ndata: {snapshot.data}\n\n"
            if snapshot.terminal:
                yield f"event: end\ndata: {json.dumps({'id': snapshot.event_id})}\n\n"
                return
            try:
                await asyncio.wait_for(woken.wait(), keepalive_seconds)
            except TimeoutError:
                if await disconnected():
                    return
                yield ": keep-alive\n\n"
