"""The global provider cap (DESIGN.md section 6): however many workers run, at most N calls
to a provider are in flight, and a slot held by a worker that died comes back by itself."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import asyncpg
import httpx
import pytest

from cli import stack
from db import provider_slots
from providers.apify import APIFY
from tests.conftest import app_client, make_settings
from tests.helpers import ledger_for_run, process_env, start_ok, wait_for


@pytest.fixture
def slow_apify() -> Iterator[str]:
    """Simulators whose scrapes take 0.4 s, so that calls overlap and a cap shows."""
    port = stack.free_port()
    with tempfile.TemporaryDirectory() as home:
        proc = stack.spawn(
            stack.oslira_command("simulate", "--port", str(port)),
            {"SIM_APIFY_LATENCY_MS": "400", "SIM_OPENAI_LATENCY_MS": "10"},
            Path(home) / "simulators.log",
        )
        try:
            stack.wait_for_port("127.0.0.1", port, 30, proc)
            yield f"http://127.0.0.1:{port}"
        finally:
            stack.stop(proc)


async def _apify_stats(simulator: str) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=simulator) as client:
        response = await client.get("/_simulator/apify/stats")
    response.raise_for_status()
    stats: dict[str, int] = response.json()
    return stats


async def test_three_workers_never_exceed_a_cap_of_three_even_when_one_is_killed_holding_slots(
    servers, slow_apify, new_account, system_pool
):
    settings = make_settings(servers, apify_base_url=slow_apify, openai_base_url=f"{slow_apify}/v1")
    account = await new_account(credits_granted=20)
    with tempfile.TemporaryDirectory() as home:
        env = process_env(settings, home, APIFY_MAX_CONCURRENCY="3")
        workers = [
            stack.spawn(stack.oslira_command("worker"), env, Path(home) / f"worker{i}.log")
            for i in range(3)
        ]
        try:
            async with app_client(settings) as api:
                runs = [await start_ok(api, account, f"cap_{uuid4().hex[:10]}") for _ in range(18)]
                # Kill one worker while it holds a slot: its lease must come back by itself.
                held_by = await _a_worker_holding_a_slot(system_pool, workers)
                held_by.send_signal(signal.SIGKILL)
                await asyncio.to_thread(held_by.wait)
                finals = await asyncio.gather(
                    *(wait_for(api, account, run, timeout=120) for run in runs)
                )
        finally:
            for proc in workers:
                await asyncio.to_thread(stack.stop, proc)

    assert [f["status"] for f in finals] == ["complete"] * 18
    for run in runs:
        assert await ledger_for_run(system_pool, run) == [("charge", -1)]
    stats = await _apify_stats(slow_apify)
    # Three workers each run many activities at once: without the cap this reaches 18.
    assert stats["max_in_flight"] == 3, stats
    async with system_pool.acquire() as conn:
        assert await provider_slots.in_use(conn, APIFY) == 0  # every slot given back


async def _a_worker_holding_a_slot(
    pool: asyncpg.Pool, workers: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """One of `workers` that holds a live apify slot now."""
    by_pid = {proc.pid: proc for proc in workers}
    for _ in range(400):
        holders = await pool.fetch(
            """SELECT worker FROM provider_slots
               WHERE provider = $1 AND holder IS NOT NULL AND expires_at > now()""",
            APIFY,
        )
        for row in holders:
            pid = int(row["worker"].split("@")[0])
            if pid in by_pid:
                return by_pid[pid]
        await asyncio.sleep(0.05)
    raise AssertionError("no worker ever held a slot")


# --- the leases themselves ----------------------------------------------------------------


@pytest.fixture
async def provider(system_pool) -> str:
    name = f"test-{uuid4().hex[:8]}"  # a provider of its own: the real ones stay untouched
    async with system_pool.acquire() as conn:
        await provider_slots.ensure(conn, name, 2)
    return name


async def test_slots_run_out_at_the_cap_and_a_release_notifies_and_frees_one(system_pool, provider):
    run_id = uuid4()
    first, second, third = uuid4(), uuid4(), uuid4()
    async with system_pool.acquire() as conn, system_pool.acquire() as listener:
        heard: asyncio.Queue[str] = asyncio.Queue()

        def on_notify(*args: object) -> None:
            heard.put_nowait(str(args[-1]))

        await listener.add_listener(provider_slots.CHANNEL, on_notify)
        a = await provider_slots.acquire(conn, provider, 2, first, run_id, 30, "test")
        b = await provider_slots.acquire(conn, provider, 2, second, run_id, 30, "test")
        assert {a, b} == {0, 1}
        assert await provider_slots.acquire(conn, provider, 2, third, run_id, 30, "test") is None
        assert await provider_slots.in_use(conn, provider) == 2

        assert a is not None
        await provider_slots.release(conn, provider, a, second)  # not its holder: no effect
        assert await provider_slots.in_use(conn, provider) == 2
        await provider_slots.release(conn, provider, a, first)
        assert await asyncio.wait_for(heard.get(), 5) == provider
        assert await provider_slots.acquire(conn, provider, 2, third, run_id, 30, "test") == a
        await listener.remove_listener(provider_slots.CHANNEL, on_notify)


async def test_twenty_takers_at_once_get_exactly_the_five_slots_there_are(
    settings, system_pool, provider
):
    async with system_pool.acquire() as conn:
        await provider_slots.ensure(conn, provider, 5)
    # Twenty connections of their own (the pool has five), all asking at the same moment.
    takers = await asyncio.gather(*(asyncpg.connect(settings.worker_dsn) for _ in range(20)))
    try:
        taken = await asyncio.gather(
            *(
                provider_slots.acquire(conn, provider, 5, uuid4(), uuid4(), 30, "test")
                for conn in takers
            )
        )
    finally:
        await asyncio.gather(*(conn.close() for conn in takers))
    assert sorted(t for t in taken if t is not None) == [0, 1, 2, 3, 4]


async def test_an_expired_lease_is_taken_over_and_its_old_holder_cannot_renew_it(
    system_pool, provider
):
    run_id = uuid4()
    dead, alive = uuid4(), uuid4()
    async with system_pool.acquire() as conn:
        slot = await provider_slots.acquire(conn, provider, 1, dead, run_id, 0.2, "test")
        assert slot == 0
        assert await provider_slots.acquire(conn, provider, 1, alive, run_id, 30, "test") is None
        await asyncio.sleep(0.3)
        assert await provider_slots.in_use(conn, provider) == 0
        assert await provider_slots.acquire(conn, provider, 1, alive, run_id, 30, "test") == 0
        assert not await provider_slots.renew(conn, provider, 0, dead, 30)
        assert await provider_slots.renew(conn, provider, 0, alive, 30)
